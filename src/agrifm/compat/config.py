"""Read a published (OpenMMLab-style) ``.py`` config without executing it.

Only literal data is accepted: top-level assignments of numbers, (raw) strings,
None/True/False, lists, tuples, dicts, ``dict(...)`` calls, references to earlier names,
arithmetic (``img_size // 16``) and string concatenation. Arithmetic is bounded before it is
computed (no ``9 ** 9 ** 9``, no billion-fold repeats), and so are nesting and file size.
``_base_ = [...]`` files are read the same way and merged as OpenMMLab does (dicts merge key
by key, ``_delete_=True`` replaces; everything else is replaced). Paths inside are kept as
strings and never opened. Anything else is an error naming the file and line.
"""

from __future__ import annotations

import ast
import operator
from pathlib import Path
from typing import Any

from agrifm.compat.errors import CompatError

__all__ = ["load_official_config", "parse_official_config", "ConfigSyntaxError", "merge_config"]

_BINOPS = {
    ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod, ast.Pow: operator.pow,
}
_UNARY = {ast.USub: operator.neg, ast.UAdd: operator.pos}

MAX_INT_BITS = 256  # no config number needs more
MAX_LENGTH = 1_000_000  # elements of a list/tuple or characters of a string built by arithmetic
MAX_DEPTH = 100  # nesting of expressions
MAX_BYTES = 4_000_000  # size of one config file
MAX_BUILT = 20_000_000  # elements built by arithmetic over a whole file
MAX_BASES = 32  # _base_ files read for one config (inheritance chains and fan-out together)


class ConfigSyntaxError(CompatError):
    """A construct the safe config reader does not evaluate."""


def _bits(x: Any) -> int:
    return abs(x).bit_length() if isinstance(x, int) else 0


def _sized(x: Any) -> bool:
    return isinstance(x, (str, list, tuple))


def _check_arithmetic(op: ast.operator, left: Any, right: Any) -> str | None:
    """Why ``left op right`` would be too big to compute, or None (checked before computing)."""
    if isinstance(op, ast.Pow) and isinstance(left, int) and isinstance(right, int) and right > 0:
        if max(1, _bits(left)) * right > MAX_INT_BITS and abs(left) > 1:
            return f"a power with more than {MAX_INT_BITS} bits"
    if isinstance(op, ast.Mult):
        if isinstance(left, int) and isinstance(right, int) and _bits(left) + _bits(right) > MAX_INT_BITS:
            return f"a product with more than {MAX_INT_BITS} bits"
        for seq, n in ((left, right), (right, left)):
            if _sized(seq) and isinstance(n, int) and len(seq) * max(n, 0) > MAX_LENGTH:
                return f"a repeat longer than {MAX_LENGTH:,}"
    if isinstance(op, ast.Add) and _sized(left) and _sized(right) and len(left) + len(right) > MAX_LENGTH:
        return f"a concatenation longer than {MAX_LENGTH:,}"
    if isinstance(op, ast.Mod) and isinstance(left, str):
        return "string formatting with %"
    if isinstance(op, (ast.Add, ast.Sub)) and max(_bits(left), _bits(right)) > MAX_INT_BITS:
        return f"a number with more than {MAX_INT_BITS} bits"
    return None


class _Evaluator:
    def __init__(self, source_name: str) -> None:
        self.names: dict[str, Any] = {}
        self.source_name = source_name
        self.depth = 0
        self.built = 0  # elements built by sequence arithmetic so far

    def fail(self, node: ast.AST, what: str) -> ConfigSyntaxError:
        line = getattr(node, "lineno", "?")
        return ConfigSyntaxError(f"{self.source_name}, line {line}: {what} is not supported (configs are read, never executed)")

    def eval(self, node: ast.AST) -> Any:
        self.depth += 1
        try:
            if self.depth > MAX_DEPTH:
                raise self.fail(node, f"nesting deeper than {MAX_DEPTH} levels")
            return self._eval(node)
        finally:
            self.depth -= 1

    def _eval(self, node: ast.AST) -> Any:
        if isinstance(node, ast.Constant):
            if isinstance(node.value, (int, float, str, bool, type(None))):
                if isinstance(node.value, int) and _bits(node.value) > MAX_INT_BITS:
                    raise self.fail(node, f"a number with more than {MAX_INT_BITS} bits")
                return node.value
            raise self.fail(node, f"constant {node.value!r}")
        if isinstance(node, ast.List):
            return [self.eval(e) for e in node.elts]
        if isinstance(node, ast.Tuple):
            return tuple(self.eval(e) for e in node.elts)
        if isinstance(node, ast.Dict):
            if any(k is None for k in node.keys):
                raise self.fail(node, "dict unpacking (**)")
            out = {}
            for k, v in zip(node.keys, node.values):
                key = self.eval(k)
                if isinstance(key, (list, dict)):
                    raise self.fail(node, f"a dict key of type {type(key).__name__}")
                out[key] = self.eval(v)
            return out
        if isinstance(node, ast.Name):
            if node.id not in self.names:
                raise self.fail(node, f"reference to undefined name {node.id!r}")
            return self.names[node.id]
        if isinstance(node, ast.Call):
            if not (isinstance(node.func, ast.Name) and node.func.id == "dict") or node.args:
                raise self.fail(node, f"call {ast.unparse(node.func)}(...)")
            out = {}
            for kw in node.keywords:
                if kw.arg is None:
                    raise self.fail(node, "dict(**...) unpacking")
                out[kw.arg] = self.eval(kw.value)
            return out
        if isinstance(node, ast.BinOp) and type(node.op) in _BINOPS:
            left, right = self.eval(node.left), self.eval(node.right)
            too_big = _check_arithmetic(node.op, left, right)
            if too_big:
                raise self.fail(node, f"{too_big} ({ast.unparse(node)[:60]!r})")
            try:
                value = _BINOPS[type(node.op)](left, right)
            except Exception as exc:  # e.g. str + int, 1 / 0, float overflow
                raise self.fail(node, f"arithmetic {ast.unparse(node)[:60]!r} ({exc})") from None
            if _sized(value):
                self.built += len(value)
                if self.built > MAX_BUILT:
                    raise self.fail(node, f"building more than {MAX_BUILT:,} elements by arithmetic")
            return value
        if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
            value = self.eval(node.operand)
            if not isinstance(value, (int, float)) or isinstance(value, bool):
                raise self.fail(node, f"sign of a {type(value).__name__}")
            return _UNARY[type(node.op)](value)
        raise self.fail(node, f"expression {ast.unparse(node)[:60]!r}")

    def run(self, tree: ast.Module) -> dict[str, Any]:
        for stmt in tree.body:
            if isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Constant) and isinstance(stmt.value.value, str):
                continue  # docstring
            if isinstance(stmt, ast.Assign):
                value = self.eval(stmt.value)
                for target in stmt.targets:
                    if not isinstance(target, ast.Name):
                        raise self.fail(stmt, f"assignment to {ast.unparse(target)!r}")
                    self.names[target.id] = value
                continue
            if isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name) and stmt.value is not None:
                self.names[stmt.target.id] = self.eval(stmt.value)
                continue
            raise self.fail(stmt, f"statement {type(stmt).__name__} ({ast.unparse(stmt).splitlines()[0][:60]!r})")
        return self.names


def merge_config(base: dict[str, Any], child: dict[str, Any]) -> dict[str, Any]:
    """OpenMMLab inheritance: dicts merge key by key (``_delete_=True`` replaces), other values replace."""
    out = dict(base)
    for key, value in child.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict) and not value.get("_delete_", False):
            out[key] = merge_config(out[key], value)
        else:
            out[key] = _strip_delete(value)
    return out


def _strip_delete(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _strip_delete(v) for k, v in value.items() if k != "_delete_"}
    return value


def parse_official_config(text: str, source_name: str = "<config>", *, _seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """Evaluate the literal assignments of a config's source text (``_base_`` files relative to ``source_name``)."""
    if len(text) > MAX_BYTES:
        raise ConfigSyntaxError(f"{source_name}: {len(text):,} characters; a config is at most {MAX_BYTES:,}")
    try:
        tree = ast.parse(text, filename=source_name)
    except (SyntaxError, RecursionError, MemoryError) as exc:
        line = getattr(exc, "lineno", "?")
        raise ConfigSyntaxError(f"{source_name}, line {line}: not valid Python ({getattr(exc, 'msg', 'too deeply nested')})") from None
    names = _Evaluator(source_name).run(tree)
    bases = names.pop("_base_", None)
    if bases is None:
        return names
    if isinstance(bases, str):
        bases = [bases]
    if not isinstance(bases, (list, tuple)) or not all(isinstance(b, str) for b in bases):
        raise ConfigSyntaxError(f"{source_name}: _base_ must be a file name or a list of file names, got {bases!r}")
    merged: dict[str, Any] = {}
    folder = Path(source_name).parent
    for base in bases:
        path = (folder / base).resolve()
        if path in _seen:
            raise ConfigSyntaxError(f"{source_name}: _base_ {base!r} inherits from itself")
        if len(_seen) >= MAX_BASES:
            raise ConfigSyntaxError(f"{source_name}: more than {MAX_BASES} levels of _base_ inheritance")
        base_names = _read(path, f"{source_name}: _base_ {base!r}", _seen + (path,))
        overlap = sorted(set(merged) & set(base_names))
        if overlap:
            raise ConfigSyntaxError(f"{source_name}: _base_ files both define {overlap}")
        merged.update(base_names)
    return merge_config(merged, names)


def _read(path: Path, what: str, seen: tuple[Path, ...]) -> dict[str, Any]:
    if not path.is_file():
        raise CompatError(f"{what}: config file not found: {path}")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise CompatError(f"{what}: cannot read {path} as UTF-8 text ({exc})") from None
    return parse_official_config(text, str(path), _seen=seen)


def load_official_config(path: str | Path) -> dict[str, Any]:
    """Read a published ``.py`` config file into a dict of its top-level names (``_base_`` merged)."""
    path = Path(path)
    return _read(path, str(path), (path.resolve(),))
