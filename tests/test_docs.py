"""The documentation cannot go stale: every docstring example in the package runs (doctest), and every ```python
block of README.md and docs/*.md runs too (in a temporary folder; a block right after a ``<!-- no-run -->`` line
is shown, not run: use that only for code that needs a GPU or a user's own files)."""

from __future__ import annotations

import doctest
import importlib
import os
import pkgutil
import re
from pathlib import Path

import pytest

import nmsparse

ROOT = Path(__file__).resolve().parent.parent
MODULES = sorted(
    m.name for m in pkgutil.walk_packages(nmsparse.__path__, "nmsparse.") if not m.name.endswith("__main__")
)
_BLOCK = re.compile(r"(?P<skip><!-- no-run -->\s*\n)?```python\n(?P<code>.*?)\n```", re.DOTALL)


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    try:
        module = importlib.import_module(name)
    except ImportError as exc:  # an optional dependency of that module is missing here
        pytest.skip(f"{name} needs an optional dependency: {exc}")
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE, verbose=False)
    assert result.failed == 0, f"{result.failed} docstring example(s) failed in {name}"


def _markdown_blocks() -> list:
    blocks = []
    for page in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        for i, match in enumerate(_BLOCK.finditer(page.read_text(encoding="utf-8"))):
            if not match.group("skip"):
                where = f"{page.relative_to(ROOT)}#{i}"
                blocks.append(pytest.param(where, match.group("code"), id=where))
    return blocks


@pytest.mark.parametrize(("where", "code"), _markdown_blocks())
def test_markdown_examples_run(where, code, tmp_path, monkeypatch, one_torch_thread):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("NMSPARSE_PROGRESS", "0")
    # dont_inherit: run each block as a reader would, without this file's `from __future__ import annotations`
    exec(compile(code, where, "exec", dont_inherit=True), {"__name__": "__docs__"})  # noqa: S102 - our own docs
    assert os.getcwd() == str(tmp_path)
