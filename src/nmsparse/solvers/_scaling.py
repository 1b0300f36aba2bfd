"""Per-block power-of-two rescaling: :func:`nmsparse.kernels._scaling.scale_blocks` (one implementation)."""

from __future__ import annotations

from ..kernels._scaling import scale_blocks

__all__ = ["scale_blocks"]
