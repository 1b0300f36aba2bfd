"""Shared pytest set-up.

- every test starts from the same random state, so failures reproduce;
- markers ``gpu`` (needs CUDA), ``triton`` (needs an importable Triton) and ``slow`` (long; ``pytest -m "not slow"``
  is the fast loop) are skipped with a reason naming what is missing;
- hypothesis keeps no example database, and numba caches compiled kernels outside the source tree, in the user's
  cache folder (``$XDG_CACHE_HOME`` or ``~/.cache``, then ``nmsparse-tests/numba``), kept between runs: only the
  first run on a machine compiles them (about 12 s of the fast loop); ``NUMBA_CACHE_DIR`` overrides it. A check at
  the end of the session fails the run if the tests wrote any file into the source tree.
"""

from __future__ import annotations

import importlib.util
import os
import random
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
os.environ.setdefault(
    "NUMBA_CACHE_DIR",
    str(Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "nmsparse-tests" / "numba"),
)

try:
    from hypothesis import settings

    # "ci" (the default): few examples, derandomized, so every run checks the same inputs in a few seconds;
    # "dev": a longer random search (HYPOTHESIS_PROFILE=dev).
    settings.register_profile("ci", max_examples=20, deadline=None, database=None, derandomize=True)
    settings.register_profile("dev", max_examples=400, deadline=None, database=None)
    settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))
except ImportError:  # pragma: no cover - hypothesis is in the test extra
    pass


def _tree_files() -> set[str] | None:
    """Untracked files (ignored ones included) under the source folders, or None outside a git checkout."""
    try:
        out = subprocess.run(
            [
                "git",
                "status",
                "--porcelain",
                "--ignored",
                "--untracked-files=all",
                "--",
                "src",
                "tests",
                "benchmarks",
                "docs",
            ],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    return {
        line[3:]
        for line in out.splitlines()
        if line[:2] in ("??", "!!")
        and "__pycache__" not in line
        and not line.endswith((".pyc", ".egg-info/"))
        and ".egg-info/" not in line
    }


def pytest_sessionstart(session: pytest.Session) -> None:
    session.config._nmsparse_tree_before = _tree_files()  # type: ignore[attr-defined]


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    before = getattr(session.config, "_nmsparse_tree_before", None)
    after = _tree_files()
    if before is None or after is None or hasattr(session.config, "workerinput"):
        return
    written = sorted(after - before)
    if written:
        print(f"\nERROR: the tests wrote into the source tree: {written[:10]}")
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    skip_gpu = pytest.mark.skip(reason="needs a CUDA device (torch.cuda.is_available() is False)")
    skip_triton = pytest.mark.skip(reason="needs Triton (pip install 'nmsparse[triton]')")
    has_cuda = torch.cuda.is_available()
    has_triton = importlib.util.find_spec("triton") is not None
    for item in items:
        if "gpu" in item.keywords and not has_cuda:
            item.add_marker(skip_gpu)
        if "triton" in item.keywords and not has_triton:
            item.add_marker(skip_triton)


@pytest.fixture(autouse=True)
def _seed_everything() -> None:
    """Seed Python's, NumPy's and torch's global generators before each test."""
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)


@pytest.fixture
def restore_runtime(monkeypatch: pytest.MonkeyPatch):
    """The commands set torch's thread count and NUMBA_THREADING_LAYER: undo both after the test."""
    monkeypatch.setenv("NUMBA_THREADING_LAYER", os.environ.get("NUMBA_THREADING_LAYER", "workqueue"))
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def one_torch_thread():
    """Run a test with one torch thread (small models are faster so on a shared 2-core machine), then restore."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
