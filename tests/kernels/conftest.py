"""Kernel tests: Triton kernels run through Triton's interpreter on CPU tensors when no CUDA device is visible.

``TRITON_INTERPRET`` must be set before triton itself is imported (``triton.jit`` reads it when it decorates,
and triton.language's own helpers such as ``tl.max`` are decorated at import), so it is set here, at
collection, without importing triton, and only when CUDA is absent: on a GPU machine the same tests run the
compiled kernels on CUDA tensors. A process that imported triton earlier without it cannot run the
interpreter; CI can export ``TRITON_INTERPRET=1`` itself to be safe.
"""

from __future__ import annotations

import importlib.util
import os

import pytest
import torch


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "triton: runs a Triton kernel (interpreter on CPU, compiled on CUDA)")


if importlib.util.find_spec("triton") is not None and not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
