"""The README's code blocks work as printed.

Every fenced block carries a marker comment on the line before it:
``<!-- readme-test: run -->`` (executed here: cheap commands and the Python snippet),
``<!-- readme-test: check (why) -->`` (not executed: every ``agrifm`` command must exist and every
option it uses must be one its ``--help`` lists) or ``<!-- readme-test: skip (why) -->`` (covered
by another test; options are still checked, Python still compiles).
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from functools import lru_cache
from pathlib import Path

import pytest

from conftest import ROOT

README = ROOT / "README.md"
_BLOCK = re.compile(r"^(?:<!-- readme-test: (?P<mode>\w+)(?P<why>[^>]*)-->\n)?```(?P<lang>\w*)\n(?P<code>.*?)^```", re.S | re.M)


def _blocks() -> list[dict]:
    text = README.read_text(encoding="utf-8")
    return [dict(m.groupdict(), line=text[: m.start()].count("\n") + 1) for m in _BLOCK.finditer(text)]


BLOCKS = _blocks()


def _ids(blocks: list[dict]) -> list[str]:
    return [f"README.md:{b['line']}:{b['lang']}" for b in blocks]


@pytest.fixture(scope="module")
def shim(tmp_path_factory) -> dict[str, str]:
    """An environment where ``agrifm`` and ``python`` are this interpreter on this checkout."""
    bin_dir = tmp_path_factory.mktemp("bin")
    for name, cmd in (("agrifm", f'"{sys.executable}" -m agrifm.cli'), ("python", f'"{sys.executable}"')):
        exe = bin_dir / name
        exe.write_text(f'#!/bin/sh\nexec {cmd} "$@"\n')
        exe.chmod(0o755)
    src = str(ROOT / "src")
    return dict(os.environ, PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
                PYTHONPATH=os.pathsep.join(filter(None, [src, os.environ.get("PYTHONPATH")])))


def test_every_block_says_how_it_is_tested() -> None:
    assert len(BLOCKS) >= 8
    for b in BLOCKS:
        assert b["mode"] in ("run", "check", "skip"), f"README.md:{b['line']}: block without a readme-test marker"
        assert b["lang"] in ("bash", "python"), f"README.md:{b['line']}: unknown block language {b['lang']!r}"
        if b["mode"] != "run":
            assert b["why"].strip(" ()"), f"README.md:{b['line']}: say why the block is not run"


def _commands(code: str) -> list[list[str]]:
    """Shell commands of a block: continuations joined, comments dropped, split on && and ;."""
    joined = re.sub(r"\\\n\s*", " ", code)
    out = []
    for line in joined.splitlines():
        line = line.split(" #", 1)[0].strip()
        if not line or line.startswith("#"):
            continue
        for part in re.split(r"&&|;", line):
            if part.strip():
                out.append(shlex.split(part))
    return out


@lru_cache(maxsize=None)
def _help(program: tuple[str, ...]) -> str:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT / "src"), os.environ.get("PYTHONPATH")])))
    r = subprocess.run([sys.executable, *program, "--help"], capture_output=True, text=True, cwd=ROOT, env=env, timeout=300)
    assert r.returncode == 0, f"{' '.join(program)} --help failed: {r.stderr[-2000:]}"
    return r.stdout


def _program(argv: list[str]) -> tuple[tuple[str, ...], list[str]] | None:
    """(the program whose --help lists the options, the options used) of an agrifm or python command."""
    if argv[0] in ("agrifm", ".venv/bin/agrifm"):
        if len(argv) < 2 or argv[1].startswith("-"):
            return None
        from agrifm.cli import COMMANDS

        assert argv[1] in COMMANDS, f"unknown command agrifm {argv[1]}"
        return ("-m", "agrifm.cli", argv[1]), argv[2:]
    if argv[0] in ("python", ".venv/bin/python") and len(argv) > 1 and argv[1].endswith(".py"):
        return (argv[1],), argv[2:]
    return None


@pytest.mark.parametrize("block", [b for b in BLOCKS if b["lang"] == "bash"], ids=_ids([b for b in BLOCKS if b["lang"] == "bash"]))
def test_commands_use_options_that_exist(block: dict) -> None:
    for argv in _commands(block["code"]):
        found = _program(argv)
        if found is None:
            continue
        program, args = found
        text = _help(program)
        for opt in (a.split("=", 1)[0] for a in args if a.startswith("--")):
            if opt == "--help":
                continue
            assert re.search(rf"(?<![\w-]){re.escape(opt)}(?![\w-])", text), \
                f"README.md:{block['line']}: {' '.join(argv[:2])} has no option {opt}"


RUN_BASH = [b for b in BLOCKS if b["mode"] == "run" and b["lang"] == "bash"]


@pytest.mark.parametrize("block", RUN_BASH, ids=_ids(RUN_BASH))
def test_bash_blocks_run(block: dict, shim: dict[str, str]) -> None:
    r = subprocess.run(["bash", "-euo", "pipefail", "-c", block["code"]], capture_output=True, text=True,
                       cwd=ROOT, env=shim, timeout=600)
    assert r.returncode == 0, f"README.md:{block['line']}:\n{r.stdout[-2000:]}\n{r.stderr[-3000:]}"


PYTHON = [b for b in BLOCKS if b["lang"] == "python"]


@pytest.mark.parametrize("block", PYTHON, ids=_ids(PYTHON))
def test_python_blocks_compile_and_the_runnable_ones_run(block: dict, shim: dict[str, str]) -> None:
    compile(block["code"], f"README.md:{block['line']}", "exec")
    if block["mode"] != "run":
        return
    r = subprocess.run([sys.executable, "-c", block["code"]], capture_output=True, text=True, cwd=ROOT, env=shim,
                       timeout=600)
    assert r.returncode == 0, f"README.md:{block['line']}:\n{r.stderr[-3000:]}"


def test_readme_links_resolve() -> None:
    text = README.read_text(encoding="utf-8")
    for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text):
        if "://" not in target:
            assert (ROOT / target).exists(), f"README links to {target}, which does not exist"
