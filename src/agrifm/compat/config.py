"""Read a published (OpenMMLab-style) ``.py`` config without executing it.

Only literal data is accepted: top-level assignments of numbers, (raw) strings,
None/True/False, lists, tuples, dicts, ``dict(...)`` calls, references to earlier names,
arithmetic (``img_size // 16``) and string concatenation. Paths inside are kept as strings
and never opened. Anything else is an error naming the line.
"""

from __future__ import annotations

import ast
import operator
from pathlib import Path
from typing import Any
from agrifm.errors import AgrifmError

__all__ = ["load_official_config", "parse_official_config", "ConfigSyntaxError"]

_BINOPS = {
    ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod, ast.Pow: operator.pow,
}
_UNARY = {ast.USub: operator.neg, ast.UAdd: operator.pos}


class ConfigSyntaxError(AgrifmError, ValueError):
    """A construct the safe config reader does not evaluate."""


class _Evaluator:
    def __init__(self, source_name: str) -> None:
        self.names: dict[str, Any] = {}
        self.source_name = source_name

    def fail(self, node: ast.AST, what: str) -> ConfigSyntaxError:
        line = getattr(node, "lineno", "?")
        return ConfigSyntaxError(f"{self.source_name}, line {line}: {what} is not supported (configs are read, never executed)")

    def eval(self, node: ast.AST) -> Any:
        if isinstance(node, ast.Constant):
            if isinstance(node.value, (int, float, str, bool, type(None))):
                return node.value
            raise self.fail(node, f"constant {node.value!r}")
        if isinstance(node, ast.List):
            return [self.eval(e) for e in node.elts]
        if isinstance(node, ast.Tuple):
            return tuple(self.eval(e) for e in node.elts)
        if isinstance(node, ast.Dict):
            if any(k is None for k in node.keys):
                raise self.fail(node, "dict unpacking (**)")
            return {self.eval(k): self.eval(v) for k, v in zip(node.keys, node.values)}
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
            try:
                return _BINOPS[type(node.op)](left, right)
            except Exception as exc:  # e.g. str + int
                raise self.fail(node, f"arithmetic {ast.unparse(node)!r} ({exc})") from None
        if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
            return _UNARY[type(node.op)](self.eval(node.operand))
        raise self.fail(node, f"expression {ast.unparse(node)!r}")

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


def parse_official_config(text: str, source_name: str = "<config>") -> dict[str, Any]:
    """Evaluate the literal assignments of a config's source text."""
    try:
        tree = ast.parse(text, filename=source_name)
    except SyntaxError as exc:
        raise ConfigSyntaxError(f"{source_name}, line {exc.lineno}: not valid Python ({exc.msg})") from None
    return _Evaluator(source_name).run(tree)


def load_official_config(path: str | Path) -> dict[str, Any]:
    """Read a published ``.py`` config file into a dict of its top-level names."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file not found: {path}")
    return parse_official_config(path.read_text(encoding="utf-8"), str(path))
