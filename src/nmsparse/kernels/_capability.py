"""What this process can run: Triton, CUDA and its compute capability, cuSPARSELt.

Every probe is lazy and cached: importing :mod:`nmsparse.kernels` imports neither triton nor initialises CUDA
(``torch.cuda.is_available()`` is only called inside a probe, and it does not create a CUDA context). Each
probe that can fail returns a one-line reason, so a backend that cannot run says why.

``TRITON_INTERPRET=1`` runs Triton kernels through Triton's interpreter on CPU tensors (slow; for tests on
tiny shapes). Without it, Triton kernels need a CUDA device.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import cache

import torch

__all__ = [
    "triton_installed",
    "has_triton",
    "triton_reason",
    "triton_interpret",
    "cuda_capability",
    "has_cusparselt",
    "cusparselt_reason",
    "triton_runnable",
    "Capabilities",
    "capabilities",
]


@cache
def _triton_import_error() -> str | None:
    try:
        import triton  # noqa: F401
        import triton.language  # noqa: F401
    except Exception as exc:  # ImportError, or a broken install raising anything at import
        return f"triton is not importable ({type(exc).__name__}: {exc}); install it with pip install 'nmsparse[triton]'"
    return None


@cache
def triton_installed() -> bool:
    """Whether a ``triton`` package is installed, checked without importing it (cheap; for registries)."""
    import importlib.util

    return importlib.util.find_spec("triton") is not None


def has_triton() -> bool:
    """Whether ``import triton`` works (cached; imports triton on the first call only).

    Example:
        >>> isinstance(has_triton(), bool)
        True
    """
    return _triton_import_error() is None


def triton_reason() -> str | None:
    """``None`` when triton imports, else one line saying why not and how to fix it."""
    return _triton_import_error()


def triton_interpret() -> bool:
    """Whether Triton runs in interpreter mode (``TRITON_INTERPRET=1``, read now, not cached)."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


@cache
def cuda_capability() -> tuple[int, int] | None:
    """``(major, minor)`` of CUDA device 0, or ``None`` without CUDA (cached; the first call may init CUDA).

    Example:
        >>> cap = cuda_capability()
        >>> cap is None or len(cap) == 2
        True
    """
    if not torch.cuda.is_available():
        return None
    major, minor = torch.cuda.get_device_capability(0)
    return int(major), int(minor)


def triton_runnable(device: torch.device | str) -> str | None:
    """``None`` when Triton kernels can run on tensors of ``device``, else the one-line reason why not.

    CUDA tensors need triton and a device of compute capability 7.0 or newer; CPU tensors need triton and
    ``TRITON_INTERPRET=1`` (the interpreter, for tests).
    """
    reason = triton_reason()
    if reason is not None:
        return reason
    device = torch.device(device)
    if device.type == "cuda":
        if triton_interpret():
            return "TRITON_INTERPRET=1 is set, so Triton runs on CPU tensors only; unset it to run on CUDA"
        cap = cuda_capability()
        if cap is None:
            return "no CUDA device is visible (torch.cuda.is_available() is False)"
        if cap < (7, 0):
            return f"Triton needs a CUDA device of compute capability >= 7.0, found {cap[0]}.{cap[1]}"
        return None
    if device.type == "cpu":
        if triton_interpret():
            return None
        return (
            "Triton kernels run on CUDA tensors; for CPU tensors set TRITON_INTERPRET=1 (the interpreter, "
            "slow) or use backend='torch'"
        )
    return f"Triton kernels run on CUDA tensors, got a tensor on {device.type!r}; use backend='torch'"


@cache
def _cusparselt_error(index: int) -> str | None:
    if not torch.cuda.is_available():
        return "no CUDA: torch.cuda.is_available() is False"
    major, minor = torch.cuda.get_device_capability(index)
    if major < 8:
        return f"GPU {torch.cuda.get_device_name(index)} is sm{major}{minor}; 2:4 sparse tensor cores need sm80+"
    backends = getattr(torch.backends, "cusparselt", None)
    if backends is None or not backends.is_available():
        return f"this torch build ({torch.__version__}) has no cuSPARSELt (torch.backends.cusparselt)"
    return None


def _device_index(device: torch.device | str | int | None) -> int:
    if device is None:
        return 0
    if isinstance(device, int):
        return device
    device = torch.device(device)
    if device.index is not None:
        return device.index
    return torch.cuda.current_device() if torch.cuda.is_available() else 0


def has_cusparselt(device: torch.device | str | int | None = None) -> bool:
    """Whether torch's cuSPARSELt backend can run on ``device`` (default: CUDA device 0): CUDA sm80+ and a torch
    built with it (cached per device)."""
    return cusparselt_reason(device) is None


def cusparselt_reason(device: torch.device | str | int | None = None) -> str | None:
    """``None`` when cuSPARSELt can run on CUDA ``device`` (default: device 0), else one line saying why not.

    The one cuSPARSELt capability probe of the package (:mod:`nmsparse.nn.linear` asks it too). Cached per device.
    """
    return _cusparselt_error(_device_index(device))


@dataclass(frozen=True)
class Capabilities:
    """A snapshot of what this process can run (see :func:`capabilities`)."""

    torch_version: str
    triton_version: str | None
    triton_interpret: bool
    cuda_capability: tuple[int, int] | None
    device_name: str | None
    cusparselt_version: int | None
    reasons: dict[str, str]

    def summary(self) -> str:
        """One line, e.g. ``torch 2.11.0, triton 3.6.0, CUDA 9.0 (NVIDIA H200), cuSPARSELt 800``."""
        parts = [f"torch {self.torch_version}", f"triton {self.triton_version or 'absent'}"]
        if self.cuda_capability is None:
            parts.append("no CUDA")
        else:
            parts.append(f"CUDA {self.cuda_capability[0]}.{self.cuda_capability[1]} ({self.device_name})")
        parts.append(f"cuSPARSELt {self.cusparselt_version}" if self.cusparselt_version else "no cuSPARSELt")
        if self.triton_interpret:
            parts.append("TRITON_INTERPRET=1")
        return ", ".join(parts)


def capabilities() -> Capabilities:
    """Probe everything once (may initialise CUDA) and return a :class:`Capabilities` snapshot.

    Example:
        >>> caps = capabilities()
        >>> caps.torch_version == torch.__version__
        True
    """
    triton_version = None
    if has_triton():
        import triton

        triton_version = str(triton.__version__)
    cap = cuda_capability()
    name = torch.cuda.get_device_name(0) if cap is not None else None
    version = None
    if has_cusparselt():
        try:
            raw = torch.backends.cusparselt.version()
            version = None if raw is None else int(raw)
        except Exception:  # a build that reports availability but no version
            version = None
    reasons = {}
    for key, reason in (("triton", triton_reason()), ("cusparselt", cusparselt_reason())):
        if reason is not None:
            reasons[key] = reason
    return Capabilities(torch.__version__, triton_version, triton_interpret(), cap, name, version, reasons)
