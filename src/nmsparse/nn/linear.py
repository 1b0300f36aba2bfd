"""``SparseLinear``: a drop-in ``nn.Linear`` whose forward and input-gradient products run on 2:4 sparse tensor cores.

Training a layer costs three products: forward ``Y = X W^T``, input gradient ``dX = dY W`` and weight gradient
``dW = dY^T X``. With a transposable 2:4 mask (``"2:4-T"``) both ``W`` and ``W^T`` are 2:4, so the first two run
on NVIDIA's sparse tensor cores (cuSPARSELt, sm80+, fp16/bf16) and only ``dW`` stays dense.

The dense master weight stays a plain :class:`~torch.nn.Parameter` and the mask a bool buffer, so optimizers,
``model.to``, DDP and checkpoints work as for ``nn.Linear``. Each time the weight or the mask changed (checked with
tensor version counters, i.e. once per optimizer step) the next forward re-packs ``W`` and ``W^T`` together with
``torch.sparse.SparseSemiStructuredTensorCUSPARSELT.prune_dense_static_sort`` applied to ``where(mask, W, 0)``.

Why the greedy packer keeps exactly the mask's weights: it visits the 16 entries of each aligned 4x4 tile in
descending ``|w|`` and takes an entry while its row and its column hold fewer than 2. On ``where(mask, W, 0)``
every non-zero entry is a kept one, they all come before the zeros, and together they never exceed 2 per row or
column (the mask is 2:4-T), so every non-zero is taken. Exact zeros of ``W`` at kept positions may lose their
slot to a masked zero: the packed matrix is still exactly ``where(mask, W, 0)`` (zeros either way), which is all
the products use. torch's own bitmask is never used for gradients; ``self.mask`` is.

Where the sparse path cannot run (CPU, fp32, no cuSPARSELt, a pattern other than 2:4-T, a shape that is not a
multiple of 128) the layer computes the masked dense product with the same gradient rules, so it can be tested
and used anywhere.
"""

from __future__ import annotations

import math
import warnings
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize

from ..errors import BackendUnavailableError, ConfigError, InputError, MaskMismatchError
from ..kernels._capability import cusparselt_reason
from ..metrics import is_nm_sparse
from ..pattern import NMPattern, PatternLike
from .parametrize import NMMask, _as_bool_mask
from .sharding import bump_generation, gather_rows, install_forward_hook, is_dtensor
from .state import is_raw

__all__ = ["SparseLinear", "sparse_unavailable_reason", "direct_cslt_reason", "SPARSE_PATTERN", "SHAPE_MULTIPLE"]

Mode = Literal["static", "straight-through"]
Backend = Literal["auto", "sparse", "dense"]

#: The one pattern NVIDIA sparse tensor cores run in both products.
SPARSE_PATTERN = NMPattern(2, 4, transposable=True)
#: Both weight dimensions must be multiples of this for torch's fused 2:4-T packer (cuSPARSELt metadata layout).
SHAPE_MULTIPLE = 128
_SPARSE_DTYPES = (torch.float16, torch.bfloat16)
_MODES = ("static", "straight-through")
_BACKENDS = ("auto", "sparse", "dense")
_PROBE_CACHE: dict[tuple[str, str], str | None] = {}
_DIRECT_CACHE: dict[tuple[str, str], str | None] = {}
#: cuSPARSELt algorithm id per (device, dtype, packed shape, dense rows, bias): searched once per shape.
_ALG_CACHE: dict[tuple[Any, ...], int] = {}
#: Call ``torch._cslt_sparse_mm`` directly (row-major output, no tensor-subclass dispatch) where the probe passes;
#: ``False`` forces the tensor-subclass route (``F.linear(x, Ws)`` / ``torch.mm(dY, Ws)``) everywhere.
DIRECT_CSLT = True
#: Search the fastest cuSPARSELt algorithm (``torch._cslt_sparse_mm_search``) the first time a shape runs.
ALGORITHM_SEARCH = True
#: cuSPARSELt's fp16/bf16 dense operand needs a multiple of 8 rows (tokens); fewer are zero-padded.
_CSLT_ROW_MULTIPLE = 8


# ------------------------------------------------------------------------------------------- state-dict keys


def _pruned_linear_keys(bias: bool) -> dict[str, str]:
    """Role (weight, mask, extra, bias) -> state-dict key of an ``nn.Linear`` pruned by :func:`nmsparse.prune_`.

    The layout of a pruned layer, in its state-dict order: :class:`~nmsparse.NMMask` is the first (index 0)
    parametrization of ``weight`` (torch stores the dense value as ``original``, the mask buffer and the extra
    state under the index), and the bias sits behind :class:`~nmsparse.nn.parametrize.KeepOrder` so that the
    parameter order stays as it was (``test_state_dict_keys_match_a_pruned_linear_and_load_both_ways`` checks
    them against a layer pruned by ``prune_``).
    """
    keys = {
        "weight": "parametrizations.weight.original",
        "mask": "parametrizations.weight.0.mask",
        "extra": "parametrizations.weight.0._extra_state",
    }
    if bias:
        keys["bias"] = "parametrizations.bias.original"
    return keys


# ------------------------------------------------------------------------------------------- capability


_DEVICE_CACHE: dict[tuple[str, torch.dtype], str | None] = {}


def _device_reason(device: torch.device, dtype: torch.dtype) -> str | None:
    """Why this torch build / device / dtype cannot run 2:4 sparse products, or ``None`` (no shape check, no probe).

    Cached per (device, dtype): it runs on every forward.
    """
    key = (str(device), dtype)
    if key not in _DEVICE_CACHE:
        _DEVICE_CACHE[key] = _device_reason_uncached(device, dtype)
    return _DEVICE_CACHE[key]


def _device_reason_uncached(device: torch.device, dtype: torch.dtype) -> str | None:
    if device.type != "cuda":
        return f"no CUDA: tensors are on {device.type} (sparse tensor cores need an NVIDIA GPU)"
    if not torch.cuda.is_available():
        return "no CUDA: torch.cuda.is_available() is False"
    if dtype not in _SPARSE_DTYPES:
        return f"dtype {str(dtype).replace('torch.', '')} is not fp16/bf16 (2:4 sparse products need half precision)"
    reason = cusparselt_reason(device)  # compute capability and the torch build: the package's one probe
    if reason is not None:
        return reason
    if not hasattr(torch, "_sparse_semi_structured_tile"):
        return f"this torch build ({torch.__version__}) lacks torch._sparse_semi_structured_tile (fused 2:4-T packing)"
    return None


def _probe(device: torch.device, dtype: torch.dtype) -> str | None:
    """Run one tiny pack + forward + dX on ``device`` and compare with the dense product (cached per device/dtype)."""
    key = (str(device), str(dtype))
    if key in _PROBE_CACHE:
        return _PROBE_CACHE[key]
    reason: str | None = None
    try:
        gen = torch.Generator(device="cpu").manual_seed(0)
        w = torch.randn(SHAPE_MULTIPLE, SHAPE_MULTIPLE, generator=gen)
        from ..solvers import find_mask

        mask = find_mask(w, SPARSE_PATTERN, method="exact")
        w = (w * mask).to(device=device, dtype=dtype)
        x = torch.randn(64, SHAPE_MULTIPLE, generator=gen).to(device=device, dtype=dtype)
        packed = _pack(w, mask.to(device))
        y = F.linear(x, packed)
        dx = torch.mm(x, packed)  # x stands in for dY (square weight)
        ref_y, ref_dx = x @ w.t(), x @ w
        for name, got, ref in (("forward", y, ref_y), ("dX", dx, ref_dx)):
            err = float((got.float() - ref.float()).norm() / ref.float().norm().clamp_min(1e-12))
            if not err < 2e-2:
                reason = f"cuSPARSELt self-test failed: {name} relative error {err:.2e} on {device}"
                break
    except Exception as exc:  # noqa: BLE001 - any failure of the sparse stack means: do not use it here
        first_line = str(exc).splitlines()[0][:160] if str(exc) else ""
        reason = f"cuSPARSELt self-test raised {type(exc).__name__}: {first_line}"
    _PROBE_CACHE[key] = reason
    return reason


def sparse_unavailable_reason(
    device: torch.device | str,
    dtype: torch.dtype,
    *,
    in_features: int | None = None,
    out_features: int | None = None,
    pattern: PatternLike = SPARSE_PATTERN,
) -> str | None:
    """One-line reason why a 2:4 sparse linear cannot run here, or ``None`` when it can.

    Checks, in order: the pattern (only 2:4-T runs both products sparse), CUDA, dtype (fp16/bf16), compute
    capability (sm80+), cuSPARSELt in the torch build, the weight shape (multiples of 128 for torch's fused
    packer), and finally a tiny self-test on the device (cached per device and dtype).

    Args:
        device: where the layer would run.
        dtype: compute dtype.
        in_features: *optional* input size to check.
        out_features: *optional* output size to check.
        pattern: the layer's mask pattern.

    Example:
        >>> import torch
        >>> from nmsparse.nn.linear import sparse_unavailable_reason
        >>> sparse_unavailable_reason("cpu", torch.bfloat16)
        'no CUDA: tensors are on cpu (sparse tensor cores need an NVIDIA GPU)'
        >>> sparse_unavailable_reason("cpu", torch.bfloat16, pattern="4:8-T")[:40]
        'pattern 4:8-T runs masked-dense: only 2:'
    """
    pattern = NMPattern.parse(pattern)
    if pattern != SPARSE_PATTERN:
        return (
            f"pattern {pattern} runs masked-dense: only 2:4-T runs on sparse tensor cores in both the forward "
            f"and the input-gradient product"
        )
    device = torch.device(device)
    reason = _device_reason(device, dtype)
    if reason is not None:
        return reason
    for name, size in (("in_features", in_features), ("out_features", out_features)):
        if size is not None and size % SHAPE_MULTIPLE:
            return f"{name}={size} is not a multiple of {SHAPE_MULTIPLE} (needed by the fused 2:4-T packer)"
    return _probe(device, dtype)


# ------------------------------------------------------------------------------------------- packing


def _masked_for_packing(weight: torch.Tensor, mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``where(mask, W, 0)`` in ``dtype``, contiguous: the tensor handed to torch's greedy 2:4-T packer.

    ``where`` rather than ``W * mask`` so that a non-finite master value at a pruned position cannot leak in.
    """
    w = weight.detach()
    if w.dtype != dtype:
        w = w.to(dtype)
    return torch.where(mask, w, torch.zeros((), dtype=dtype, device=w.device)).contiguous()


def _pack(masked: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Pack a 2:4-T-masked matrix and its transpose for cuSPARSELt in one call (see the module docstring)."""
    from torch.sparse import SparseSemiStructuredTensorCUSPARSELT

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*prototype stage.*")
        return SparseSemiStructuredTensorCUSPARSELT.prune_dense_static_sort(
            masked, algorithm="largest_abs_values_greedy"
        )


def _alg_key(values: torch.Tensor, dense: torch.Tensor, bias: torch.Tensor | None) -> tuple[Any, ...]:
    return (str(values.device), values.dtype, tuple(values.shape), int(dense.shape[0]), bias is not None)


def _cslt_algorithm(values: torch.Tensor, dense: torch.Tensor, bias: torch.Tensor | None) -> int:
    """cuSPARSELt algorithm id for ``values @ dense^T`` at this shape: searched once, then cached (0 on failure)."""
    key = _alg_key(values, dense, bias)
    alg = _ALG_CACHE.get(key)
    if alg is None:
        alg = 0
        search = getattr(torch, "_cslt_sparse_mm_search", None)
        capturing = values.is_cuda and torch.cuda.is_current_stream_capturing()
        if ALGORITHM_SEARCH and search is not None and not capturing:
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    found = search(values, dense.t(), bias, transpose_result=True)
                alg = int(found[0] if isinstance(found, (tuple, list)) else found)
            except Exception:  # noqa: BLE001 - the default algorithm always works
                alg = 0
        _ALG_CACHE[key] = alg
    return alg


def _cslt_mm(values: torch.Tensor, dense: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """``dense @ A^T (+ bias)`` as a row-major ``[rows, A.rows]`` tensor, ``A`` = the cuSPARSELt-packed ``values``.

    One ``torch._cslt_sparse_mm(values, dense.t(), bias, transpose_result=True)``: the forward with the packed
    ``W`` and ``dX`` with the packed ``W^T`` (no tensor-subclass dispatch, no custom op, row-major output on torch
    2.11 to 2.13). Rows of ``dense`` are zero-padded to a multiple of 8 where needed.
    """
    rows = int(dense.shape[0])
    pad = (-rows) % _CSLT_ROW_MULTIPLE
    if pad:
        dense = F.pad(dense, (0, 0, 0, pad))
    alg = _cslt_algorithm(values, dense, bias)
    try:
        out = torch._cslt_sparse_mm(values, dense.t(), bias, transpose_result=True, alg_id=alg)
    except RuntimeError:
        if alg == 0:
            raise
        _ALG_CACHE[_alg_key(values, dense, bias)] = 0  # a searched id the plan rejects: the default from now on
        out = torch._cslt_sparse_mm(values, dense.t(), bias, transpose_result=True, alg_id=0)
    return out[:rows] if pad else out


def _is_direct(packed: Any) -> bool:
    """Whether ``packed`` carries the raw cuSPARSELt tensors of ``W`` and ``W^T`` the direct route needs."""
    return getattr(packed, "packed", None) is not None and getattr(packed, "packed_t", None) is not None


def direct_cslt_reason(device: torch.device | str, dtype: torch.dtype) -> str | None:
    """Why :class:`SparseLinear` uses the tensor-subclass route rather than ``torch._cslt_sparse_mm``, or ``None``.

    The direct route (``_cslt_sparse_mm(W_packed, x.t(), bias, transpose_result=True)`` forward, the same with
    the packed ``W^T`` for ``dX``) skips the subclass's Python dispatch and custom op and always returns a
    row-major result. It is used where a tiny self-test of both products passes (cached per device and dtype);
    elsewhere the class route (``F.linear(x, Ws)``, ``torch.mm(dY, Ws)``) stays as the fallback.

    Example:
        >>> import torch
        >>> from nmsparse.nn.linear import direct_cslt_reason
        >>> direct_cslt_reason("cpu", torch.bfloat16)[:8]
        'no CUDA:'
    """
    if not DIRECT_CSLT:
        return "nmsparse.nn.linear.DIRECT_CSLT is False (tensor-subclass route forced)"
    device = torch.device(device)
    reason = _device_reason(device, dtype)
    if reason is not None:
        return reason
    if not hasattr(torch, "_cslt_sparse_mm"):
        return f"this torch build ({torch.__version__}) lacks torch._cslt_sparse_mm"
    key = (str(device), str(dtype))
    if key not in _DIRECT_CACHE:
        _DIRECT_CACHE[key] = _direct_probe(device, dtype)
    return _DIRECT_CACHE[key]


def _direct_probe(device: torch.device, dtype: torch.dtype) -> str | None:
    try:
        gen = torch.Generator(device="cpu").manual_seed(1)
        w = torch.randn(SHAPE_MULTIPLE, 2 * SHAPE_MULTIPLE, generator=gen)
        from ..solvers import find_mask

        mask = find_mask(w, SPARSE_PATTERN, method="exact")
        w = (w * mask).to(device=device, dtype=dtype)
        packed: Any = _pack(w)
        if not _is_direct(packed):
            return "the packed tensor has no raw packed / packed_t tensors"
        x = torch.randn(60, 2 * SHAPE_MULTIPLE, generator=gen).to(device=device, dtype=dtype)  # 60: padded rows
        dy = torch.randn(60, SHAPE_MULTIPLE, generator=gen).to(device=device, dtype=dtype)
        y, dx = _cslt_mm(packed.packed, x, None), _cslt_mm(packed.packed_t, dy, None)
        for name, got, ref in (("forward", y, x @ w.t()), ("dX", dx, dy @ w)):
            if tuple(got.shape) != tuple(ref.shape) or not got.is_contiguous():
                return f"direct {name} gave shape {tuple(got.shape)}, strides {got.stride()} (want row-major)"
            err = float((got.float() - ref.float()).norm() / ref.float().norm().clamp_min(1e-12))
            if not err < 2e-2:
                return f"direct {name} self-test: relative error {err:.2e}"
    except Exception as exc:  # noqa: BLE001 - any failure means: use the class route
        first_line = str(exc).splitlines()[0][:160] if str(exc) else ""
        return f"direct self-test raised {type(exc).__name__}: {first_line}"
    return None


_EAGER_FORWARD: list[Any] = []


def _eager_forward() -> Any:
    """``SparseLinear._forward`` under ``torch.compiler.disable`` (made on first use: importing torch._dynamo
    costs most of a second, which CPU-only users need not pay)."""
    if not _EAGER_FORWARD:
        _EAGER_FORWARD.append(torch.compiler.disable(SparseLinear._forward))
    return _EAGER_FORWARD[0]


def _version_of(t: torch.Tensor) -> int | None:
    """``t._version``, or ``None`` for an inference tensor (made under ``inference_mode``: no version counter).

    Inference tensors cannot be written outside ``inference_mode``; a re-pack after writing one inside it needs
    :meth:`SparseLinear.invalidate_` (or a new tensor: the data pointer is part of the key).
    """
    return None if t.is_inference() else t._version


def greedy_tile_keep(x: torch.Tensor) -> torch.Tensor:
    """Torch twin of torch's ``largest_abs_values_greedy`` 4x4 tile rule (reference for tests and docs).

    In every aligned 4x4 tile the 16 entries are visited in descending ``|x|`` and an entry is kept while its
    row and its column hold fewer than 2 kept entries. Ties are visited in ascending flat index within the tile;
    torch's CUDA kernel orders ties with a sorting network, so on ties the two may keep different (equal-valued)
    entries. Every property nmsparse relies on (see the module docstring) holds for any tie order.

    Args:
        x: ``[rows, cols]`` tensor, both multiples of 4.

    Returns:
        ``torch.bool`` tensor of ``x``'s shape: the entries the rule keeps.

    Example:
        >>> import torch
        >>> from nmsparse.nn.linear import greedy_tile_keep
        >>> x = torch.tensor([[9., 1, 7, 4], [1, 2, 3, 0], [8, 3, 5, 4], [1, 2, 6, 2]])
        >>> greedy_tile_keep(x).int().tolist()
        [[1, 0, 1, 0], [0, 1, 0, 1], [1, 0, 0, 1], [0, 1, 1, 0]]
    """
    rows, cols = x.shape
    if rows % 4 or cols % 4:
        raise InputError(f"greedy_tile_keep: both dimensions must be multiples of 4, got {tuple(x.shape)}")
    tiles = x.detach().abs().reshape(rows // 4, 4, cols // 4, 4).permute(0, 2, 1, 3).reshape(-1, 16)
    order = torch.sort(tiles, dim=1, descending=True, stable=True).indices
    count = tiles.shape[0]
    row_n = torch.zeros(count, 4, dtype=torch.int64, device=x.device)
    col_n = torch.zeros(count, 4, dtype=torch.int64, device=x.device)
    keep = torch.zeros(count, 16, dtype=torch.bool, device=x.device)
    idx = torch.arange(count, device=x.device)
    for step in range(16):
        flat = order[:, step]
        r, c = flat // 4, flat % 4
        take = (row_n[idx, r] < 2) & (col_n[idx, c] < 2)
        keep[idx, flat] = take
        row_n[idx, r] += take.long()
        col_n[idx, c] += take.long()
    return keep.reshape(rows // 4, cols // 4, 4, 4).permute(0, 2, 1, 3).reshape(rows, cols)


# ------------------------------------------------------------------------------------------- autograd


class _SparseLinearFunction(torch.autograd.Function):
    """``Y = X (W*M)^T + b``; ``dX = dY (W*M)``; ``dW`` = masked (static) or straight-through + SR-STE decay.

    ``packed_box[0]`` is the cuSPARSELt tensor of ``where(M, W, 0)`` (with its transpose) or ``None`` for the masked
    dense path; ``packed_box[1]`` (optional, default ``False``) chooses the direct ``torch._cslt_sparse_mm`` route
    over the tensor-subclass one (see :func:`direct_cslt_reason`). Everything runs in ``weight.dtype`` of the
    compute weight; the returned ``dW`` has the master weight's dtype.
    """

    @staticmethod
    def forward(
        ctx: Any,
        x: torch.Tensor,
        weight: torch.Tensor,
        mask: torch.Tensor,
        bias: torch.Tensor | None,
        packed_box: tuple[Any, ...],
        compute_dtype: torch.dtype,
        straight_through: bool,
        decay: float,
    ) -> torch.Tensor:
        packed = packed_box[0]
        direct = packed is not None and len(packed_box) > 1 and bool(packed_box[1])
        shape = x.shape
        x2d = x.reshape(-1, shape[-1])
        b = None if bias is None else bias.to(compute_dtype)
        if direct:
            y = _cslt_mm(packed.packed, x2d.contiguous(), b)
            masked = None
        elif packed is not None:
            y = F.linear(x2d.contiguous(), packed, b)
            masked = None
        else:
            w = weight if weight.dtype == compute_dtype else weight.to(compute_dtype)
            masked = w * mask
            y = F.linear(x2d, masked, b)
        ctx.packed = packed
        ctx.direct = direct
        ctx.straight_through = straight_through
        ctx.decay = decay
        ctx.has_bias = bias is not None
        ctx.weight_dtype = weight.dtype
        ctx.bias_dtype = None if bias is None else bias.dtype
        ctx.x_shape = shape
        saved_weight = weight if (straight_through and decay) else None
        ctx.save_for_backward(x2d, mask, masked, saved_weight)
        return y.reshape(*shape[:-1], y.shape[-1])

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        x2d, mask, masked, weight = ctx.saved_tensors
        g2d = grad.reshape(-1, grad.shape[-1])
        grad_x = grad_w = grad_b = None
        if ctx.needs_input_grad[0]:
            if ctx.direct:
                grad_x = _cslt_mm(ctx.packed.packed_t, g2d.contiguous(), None)
            elif ctx.packed is not None:
                grad_x = torch.mm(g2d.contiguous(), ctx.packed)
            else:
                grad_x = g2d.mm(masked)
            grad_x = grad_x.reshape(ctx.x_shape)
        if ctx.needs_input_grad[1]:
            grad_w = g2d.t().mm(x2d)
            if grad_w.dtype != ctx.weight_dtype:
                grad_w = grad_w.to(ctx.weight_dtype)
            if not ctx.straight_through:
                grad_w = grad_w * mask
            elif ctx.decay:
                grad_w = torch.addcmul(grad_w, weight, ~mask, value=ctx.decay)
        if ctx.has_bias and ctx.needs_input_grad[3]:
            grad_b = g2d.sum(0)
            if grad_b.dtype != ctx.bias_dtype:
                grad_b = grad_b.to(ctx.bias_dtype)
        return grad_x, grad_w, None, grad_b, None, None, None, None


# ------------------------------------------------------------------------------------------- module


def _check_mode(mode: object, where: str) -> Mode:
    if mode not in _MODES:
        raise ConfigError(f"{where}: mode must be one of {list(_MODES)}, got {mode!r}")
    return mode  # type: ignore[return-value]


def _check_decay(decay: object, mode: str, where: str) -> float:
    if isinstance(decay, bool) or not isinstance(decay, (int, float)) or not math.isfinite(decay) or decay < 0:
        raise ConfigError(f"{where}: decay must be a finite number >= 0 (SR-STE uses 2e-4), got {decay!r}")
    if decay and mode != "straight-through":
        raise ConfigError(
            f"{where}: decay={decay:g} needs mode='straight-through' (static masks give pruned "
            f"weights no gradient); pass mode='straight-through' or decay=0"
        )
    return float(decay)


def _check_backend(backend: object, where: str) -> Backend:
    if backend not in _BACKENDS:
        raise ConfigError(f"{where}: backend must be one of {list(_BACKENDS)}, got {backend!r}")
    return backend  # type: ignore[return-value]


class SparseLinear(nn.Module):
    """Linear layer with an n:m mask whose 2:4-T products run on sparse tensor cores where that is possible.

    Same constructor, attributes (``in_features``, ``out_features``, ``weight``, ``bias``) and call as
    :class:`torch.nn.Linear`, plus a bool ``mask`` buffer (``True`` = keep). The layer computes
    ``x @ (weight * mask).T + bias`` with these gradients:

    * ``dX = dY (W * mask)``; with 2:4-T on a capable GPU from the packed ``W^T`` on sparse tensor cores.
    * ``dW = dY^T X`` (dense), then ``* mask`` in ``mode="static"`` (fine-tuning: pruned weights never change
      through the loss), or passed straight through in ``mode="straight-through"`` (dynamic sparse training)
      plus the SR-STE term ``decay * (~mask) * W``: exactly :class:`~nmsparse.NMMask`'s rules.

    Sparse path (``backend="auto"`` where possible, ``"sparse"`` to require it): pattern 2:4-T, CUDA sm80+,
    fp16/bf16 (the weight's dtype, or the autocast dtype), cuSPARSELt in the torch build, both dimensions
    multiples of 128. Anywhere else, and always with ``backend="dense"``, the masked dense product runs with the
    same math. :attr:`sparse_reason` says which path runs and why.

    The packed ``W``/``W^T`` are cached and rebuilt (one elementwise masking pass, then one call that packs
    both) on the first forward after the weight or the mask changed (tensor version counters: optimizer steps,
    ``load_state_dict`` and in-place mask refreshes all count). Writing through ``weight.data`` bypasses the
    counters: call :meth:`invalidate_` then.

    State dict keys are those of an ``nn.Linear`` pruned by nmsparse (``parametrizations.weight.original``,
    ``parametrizations.weight.0.mask``, ``bias``), so checkpoints load in either direction.

    Args:
        in_features: input size.
        out_features: output size.
        bias: learn an additive bias.
        device: parameter device.
        dtype: parameter dtype.
        pattern: mask pattern, ``"2:4-T"`` by default (others run masked-dense).
        mode: ``"static"`` or ``"straight-through"``.
        decay: SR-STE decay on pruned weights (``mode="straight-through"`` only).
        mask: *optional* initial mask; by default the exact mask of the initial weight.
        backend: ``"auto"``, ``"sparse"`` (raise :class:`~nmsparse.errors.BackendUnavailableError` where the
            sparse path cannot run) or ``"dense"`` (always masked-dense).

    Raises:
        ConfigError: bad mode, decay or backend.
        PatternError: unparseable pattern.
        ShapeError: a weight shape that cannot take the pattern.
        MaskMismatchError: a mask of the wrong shape, non-0/1 values, or one that breaks the pattern.

    Example:
        >>> import torch, nmsparse
        >>> from nmsparse.nn import SparseLinear
        >>> dense = torch.nn.Linear(16, 8)
        >>> layer = SparseLinear.from_dense(dense, pattern="2:4-T")
        >>> layer.weight is dense.weight, nmsparse.is_nm_sparse(layer.mask, "2:4-T")
        (True, True)
        >>> x = torch.randn(3, 16)
        >>> torch.allclose(layer(x), torch.nn.functional.linear(x, dense.weight * layer.mask, dense.bias))
        True
        >>> layer.sparse_reason
        'no CUDA: tensors are on cpu (sparse tensor cores need an NVIDIA GPU)'
    """

    in_features: int
    out_features: int
    mask: torch.Tensor

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        device: Any = None,
        dtype: torch.dtype | None = None,
        *,
        pattern: PatternLike = "2:4-T",
        mode: Mode = "static",
        decay: float = 0.0,
        mask: torch.Tensor | None = None,
        backend: Backend = "auto",
    ) -> None:
        super().__init__()
        factory = {"device": device, "dtype": dtype}
        self.in_features = int(in_features)
        self.out_features = int(out_features)
        self.weight = nn.Parameter(torch.empty((self.out_features, self.in_features), **factory))
        if bias:
            self.bias = nn.Parameter(torch.empty(self.out_features, **factory))
        else:
            self.register_parameter("bias", None)
        self._init_config(pattern, mode, decay, backend)
        nn.Linear.reset_parameters(self)  # type: ignore[arg-type]  # same initialisation as nn.Linear
        if mask is None:
            mask = self._solve_mask(self.weight.detach(), method="exact")
        self.register_buffer("mask", self._checked_mask(mask).to(self.weight.device), persistent=True)

    # ----------------------------------------------------------------------------------- construction

    def _init_config(self, pattern: PatternLike, mode: Mode, decay: float, backend: Backend) -> None:
        self.pattern = NMPattern.parse(pattern)
        self.mode: Mode = _check_mode(mode, "SparseLinear")
        self.decay = _check_decay(decay, self.mode, "SparseLinear")
        self.backend: Backend = _check_backend(backend, "SparseLinear")
        self._linked: tuple[NMMask, ...] = ()  # an NMMask whose mask tensor this layer shares (see from_dense)
        self._packed: torch.Tensor | None = None
        self._packed_key: tuple[Any, ...] | None = None
        self._epoch = 0
        bump_generation()  # nmsparse's FSDP2 pre-hook looks for masked layers again
        install_forward_hook()
        self.repacks = 0

    @classmethod
    def from_dense(
        cls,
        linear: nn.Linear,
        pattern: PatternLike | None = None,
        *,
        mode: Mode | None = None,
        decay: float | None = None,
        mask: torch.Tensor | None = None,
        method: str = "exact",
        backend: Backend = "auto",
    ) -> SparseLinear:
        """Make a ``SparseLinear`` that shares ``linear``'s parameters (the same Parameter objects).

        A plain ``nn.Linear`` gets a mask from :func:`~nmsparse.find_mask` (``method``) unless ``mask`` is given.
        An ``nn.Linear`` pruned by nmsparse (an :class:`~nmsparse.NMMask` parametrization, e.g. from
        :func:`~nmsparse.prune_` or :class:`~nmsparse.DynamicSparsifier`) keeps its mask, pattern, mode and decay,
        and the new layer **shares** the mask tensor and the dense weight with it: a
        ``DynamicSparsifier`` that holds the old module keeps refreshing the new layer's mask in place, and
        optimizers keep their parameters.

        Args:
            linear: the layer to convert (left in place; not modified).
            pattern: mask pattern (default: the NMMask's pattern, else ``"2:4-T"``).
            mode: ``"static"`` or ``"straight-through"`` (default: the NMMask's, else ``"static"``).
            decay: SR-STE decay (default: the NMMask's, else 0).
            mask: *optional* mask to use (plain ``nn.Linear`` only).
            method: :func:`~nmsparse.find_mask` method for a plain layer's mask.
            backend: see the class docstring.

        Raises:
            ConfigError: ``linear`` is not an ``nn.Linear``, carries other parametrizations, or its NMMask
                disagrees with an explicit ``pattern``/``mode``/``mask``.

        Example:
            >>> import torch, nmsparse
            >>> model = torch.nn.Sequential(torch.nn.Linear(8, 8))
            >>> sparsifier = nmsparse.DynamicSparsifier(model, "2:4-T", initial_method="greedy")
            >>> layer = nmsparse.nn.SparseLinear.from_dense(model[0])
            >>> layer.mode, layer.mask is model[0].parametrizations.weight[0].mask
            ('straight-through', True)
        """
        if not isinstance(linear, nn.Linear):
            raise ConfigError(f"SparseLinear.from_dense: expected an nn.Linear, got {type(linear).__name__}")
        nm = None
        src: Any = linear  # parametrized attributes are invisible to type checkers
        weight: Any
        if parametrize.is_parametrized(linear, "weight"):
            plist = src.parametrizations.weight
            nms = [p for p in plist if isinstance(p, NMMask)]
            if len(plist) != 1 or not nms:
                raise ConfigError(
                    f"SparseLinear.from_dense: the layer's weight carries parametrizations other than one nmsparse "
                    f"NMMask ({[type(p).__name__ for p in plist]}); remove them first"
                )
            nm = nms[0]
            weight = plist.original
        else:
            weight = linear.weight
        self = cls.__new__(cls)
        nn.Module.__init__(self)
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.weight = weight
        if parametrize.is_parametrized(linear, "bias"):  # nmsparse may park the bias behind an identity
            self.register_parameter("bias", src.parametrizations.bias.original)
        else:
            self.register_parameter("bias", linear.bias)
        if nm is not None:
            nm_mode: Mode = "straight-through" if nm.straight_through else "static"
            nm_pattern = nm.pattern
            if nm_pattern is None:
                nm_pattern = SPARSE_PATTERN if is_nm_sparse(nm.mask, SPARSE_PATTERN) else None
            if pattern is not None and nm_pattern is not None and NMPattern.parse(pattern) != nm_pattern:
                raise ConfigError(
                    f"SparseLinear.from_dense: the layer is pruned with {nm_pattern}, not {pattern}; "
                    f"leave pattern=None to keep its mask"
                )
            if mode is not None and mode != nm_mode:
                raise ConfigError(
                    f"SparseLinear.from_dense: the layer's mask is {nm_mode}, not {mode}; leave mode=None to keep it"
                )
            if mask is not None:
                raise ConfigError("SparseLinear.from_dense: the layer already has a mask; pass mask=None")
            if nm_pattern is None:
                raise ConfigError(
                    "SparseLinear.from_dense: the layer's NMMask has no recorded pattern and its mask "
                    "is not 2:4-T; pass the pattern it was made for"
                )
            self._init_config(nm_pattern, nm_mode, nm.decay if decay is None else decay, backend)
            self.register_buffer("mask", nm.mask, persistent=True)
            self._checked_mask(nm.mask)
            self._linked = (nm,)
            return self
        self._init_config(
            "2:4-T" if pattern is None else pattern,
            "static" if mode is None else mode,
            0.0 if decay is None else decay,
            backend,
        )
        if mask is None:
            mask = self._solve_mask(weight.detach(), method=method)
        self.register_buffer("mask", self._checked_mask(mask).to(weight.device), persistent=True)
        return self

    def _solve_mask(self, weight: torch.Tensor, *, method: str) -> torch.Tensor:
        from ..solvers import find_mask

        return find_mask(weight, self.pattern, method=method, progress=False)

    def _checked_mask(self, mask: torch.Tensor) -> torch.Tensor:
        if not isinstance(mask, torch.Tensor):
            raise MaskMismatchError(f"SparseLinear: mask must be a torch.Tensor, got {type(mask).__name__}")
        if tuple(mask.shape) != (self.out_features, self.in_features):
            raise MaskMismatchError(
                f"SparseLinear: mask of shape {tuple(mask.shape)} does not fit the weight "
                f"{(self.out_features, self.in_features)}"
            )
        bool_mask = _as_bool_mask(mask, where="SparseLinear")
        if not is_nm_sparse(bool_mask, self.pattern):
            raise MaskMismatchError(
                f"SparseLinear: the mask breaks pattern {self.pattern}; compute it with "
                f"nmsparse.find_mask(weight, '{self.pattern}')"
            )
        return bool_mask

    # ----------------------------------------------------------------------------------- properties

    @property
    def straight_through(self) -> bool:
        """Whether the weight gradient passes straight through the mask (``mode="straight-through"``)."""
        return self.mode == "straight-through"

    def _current_decay(self) -> float:
        # A linked NMMask (DynamicSparsifier.load_state_dict may call set_decay on it) has the last word.
        return self._linked[0].decay if self._linked else self.decay

    def set_decay(self, decay: float) -> None:
        """Change the SR-STE decay (validated like the constructor argument; also on a linked NMMask)."""
        self.decay = _check_decay(decay, self.mode, "SparseLinear.set_decay")
        if self._linked:
            self._linked[0].set_decay(self.decay)

    def compute_dtype(self, x: torch.Tensor | None = None) -> torch.dtype:
        """The dtype the products run in: the autocast dtype when autocast is on for the device, else the weight's."""
        device_type = (x.device if x is not None else self.weight.device).type
        if torch.is_autocast_enabled(device_type):
            return torch.get_autocast_dtype(device_type)
        return self.weight.dtype

    @property
    def sparse_reason(self) -> str | None:
        """``None`` when forwards run on sparse tensor cores here, else a one-line reason (masked-dense runs)."""
        if self.backend == "dense":
            return "backend='dense' (masked-dense by choice)"
        return sparse_unavailable_reason(
            self.weight.device,
            self.compute_dtype(),
            in_features=self.in_features,
            out_features=self.out_features,
            pattern=self.pattern,
        )

    # ----------------------------------------------------------------------------------- packing cache

    def invalidate_(self) -> None:
        """Drop the packed weights; the next sparse forward re-packs (needed only after writes via ``.data``)."""
        self._epoch += 1
        self._packed = None
        self._packed_key = None

    def packed_weight(self, dtype: torch.dtype | None = None) -> torch.Tensor:
        """The cuSPARSELt-packed ``where(mask, W, 0)`` (and its transpose) in ``dtype``, re-packed only on change.

        Raises:
            BackendUnavailableError: the sparse path cannot run here (the reason is in the message).
        """
        dtype = self.weight.dtype if dtype is None else dtype
        reason = sparse_unavailable_reason(
            self.weight.device,
            dtype,
            in_features=self.in_features,
            out_features=self.out_features,
            pattern=self.pattern,
        )
        if reason is not None:
            raise BackendUnavailableError(f"SparseLinear: sparse path unavailable: {reason}")
        return self._packed_for(dtype)

    def _cache_key(self, dtype: torch.dtype) -> tuple[Any, ...]:
        w, m = self.weight, self.mask
        return (_version_of(w), _version_of(m), w.data_ptr(), m.data_ptr(), w.device, dtype, self._epoch)

    def _packed_for(self, dtype: torch.dtype) -> torch.Tensor:
        key = self._cache_key(dtype)
        if self._packed is None or self._packed_key != key:
            self._packed = None  # free the old packed tensors before allocating new ones
            with torch.no_grad():
                self._packed = _pack(_masked_for_packing(self.weight, self.mask, dtype))
            self._packed_key = key
            self.repacks += 1
        return self._packed

    # ----------------------------------------------------------------------------------- forward

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x @ (weight * mask).T + bias`` (sparse tensor cores where :attr:`sparse_reason` is ``None``).

        On CUDA the forward runs outside ``torch.compile`` (``torch.compiler.disable``: a graph break around the
        layer) until compiling the sparse path is tested; the masked-dense CPU path stays traceable.
        """
        if x.is_cuda and self.backend != "dense":
            return self._forward_eager(x)
        return self._forward(x)

    def _forward_eager(self, x: torch.Tensor) -> torch.Tensor:
        return _eager_forward()(self, x)

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = self.compute_dtype(x)
        autocast = torch.is_autocast_enabled(x.device.type)
        if autocast and x.is_floating_point():
            x = x.to(dtype)
        elif x.dtype != dtype:
            raise InputError(
                f"SparseLinear: input dtype {x.dtype} does not match the weight dtype {dtype}; cast "
                f"the input (x.to({dtype})) or run under torch.autocast"
            )
        packed = None
        if self.backend != "dense":
            reason = None if x.device == self.weight.device else f"input on {x.device}, weight on {self.weight.device}"
            if reason is None:
                reason = sparse_unavailable_reason(
                    x.device, dtype, in_features=self.in_features, out_features=self.out_features, pattern=self.pattern
                )
            if reason is None:
                packed = self._packed_for(dtype)
            elif self.backend == "sparse":
                raise BackendUnavailableError(
                    f"SparseLinear(backend='sparse'): {reason}; use backend='auto' to "
                    f"fall back to the masked dense product"
                )
        mask, straight_through, decay = self.mask, self.straight_through, self._current_decay()
        owner = self._shard_owner(create=False)
        if owner is not None and owner.shard is not None and not is_dtensor(self.weight):
            packed = None  # FSDP2 gathers a new weight every forward: masked-dense (docs/distributed.md)
            if owner.shard.stashed:
                # gathered from masked shards; the gradient rule runs on the shard after the reduce-scatter
                mask = torch.ones((), dtype=torch.bool, device=self.weight.device).expand(self.weight.shape)
                straight_through, decay = True, 0.0
            else:
                mask = gather_rows(owner.local_mask(), owner.shard)
        direct = packed is not None and _is_direct(packed) and direct_cslt_reason(x.device, dtype) is None
        with torch.autocast(x.device.type, enabled=False):
            return _SparseLinearFunction.apply(
                x, self.weight, mask, self.bias, (packed, direct), dtype, straight_through, decay
            )

    # ----------------------------------------------------------------------------------- FSDP2

    def _shard_owner(self, *, create: bool = True) -> NMMask | None:
        """The :class:`NMMask` that shards this layer's mask under FSDP2 (the linked one, or a private one)."""
        if self._linked:
            return self._linked[0]
        owner = self.__dict__.get("_shard_nm")
        if owner is None and create:
            owner = self._as_nmmask()
            object.__setattr__(self, "_shard_nm", owner)
        if owner is not None:
            owner.straight_through, owner.decay = self.straight_through, self._current_decay()
        return owner

    def prepare_shard_(self, *, stash: bool = True) -> None:
        """Follow FSDP2's sharding of ``weight`` (this rank's mask rows only) and, with ``stash``, mask the local
        shard before FSDP gathers it. Called by nmsparse's forward pre-hook (see :mod:`nmsparse.nn.sharding`)."""
        if not is_dtensor(self.weight):
            return
        owner = self._shard_owner()
        assert owner is not None
        owner.adopt_sharding(self.weight)
        self._buffers["mask"] = owner.mask
        if stash:
            owner.stash()

    # ----------------------------------------------------------------------------------- masks

    @torch.no_grad()
    def refresh_mask_(self, method: str = "exact") -> float:
        """Recompute the mask from the live weight, in place, and return the fraction of entries that changed.

        Straight-through layers score the dense ``|W|`` (pruned weights may come back); static layers score
        ``|W * mask|`` (pruned weights stay pruned), by :func:`~nmsparse.find_mask` with ``method`` (whose registry
        runs the one-pass exact 2:4-T Triton kernel for CUDA weights where triton is installed).
        The mask tensor is overwritten, not replaced, so a linked :class:`~nmsparse.NMMask` sees the new mask too.

        Example:
            >>> import torch
            >>> from nmsparse.nn import SparseLinear
            >>> layer = SparseLinear(8, 8, mode="straight-through")
            >>> with torch.no_grad():
            ...     _ = layer.weight.mul_(-1.5)
            >>> layer.refresh_mask_()
            0.0
        """
        live = self.weight.detach() if self.straight_through else self.weight.detach() * self.mask
        new = self._solve_mask(live, method=method).to(self.mask.device)
        changed = float((new != self.mask).sum()) / max(new.numel(), 1)
        self.mask.copy_(new)
        return changed

    def set_mask_(self, mask: torch.Tensor) -> None:
        """Overwrite the mask in place (checked: shape, 0/1 values, pattern)."""
        with torch.no_grad():
            self.mask.copy_(self._checked_mask(mask).to(self.mask.device))

    def to_linear(self) -> nn.Linear:
        """A plain ``nn.Linear`` with ``weight * mask`` baked in (new parameters; for export)."""
        out = nn.Linear(
            self.in_features,
            self.out_features,
            bias=self.bias is not None,
            device=self.weight.device,
            dtype=self.weight.dtype,
        )
        with torch.no_grad():
            out.weight.copy_(self.weight * self.mask)
            if self.bias is not None:
                out.bias.copy_(self.bias)
        return out

    # ----------------------------------------------------------------------------------- module plumbing

    def _apply(self, fn: Any, recurse: bool = True) -> SparseLinear:
        super()._apply(fn, recurse)
        if self._linked:  # keep sharing the mask with the linked NMMask after .to()/.cuda()
            self._linked[0]._buffers["mask"] = self._buffers["mask"]
        self.invalidate_()
        return self

    def _save_to_state_dict(self, destination: dict[str, Any], prefix: str, keep_vars: bool) -> None:
        def value(t: torch.Tensor) -> torch.Tensor:
            return t if keep_vars else t.detach()

        self.prepare_shard_(stash=False)
        owner = self._shard_owner(create=False)
        if owner is not None:
            owner.unstash()  # FSDP2: the dense values back into the local shard (see NMMask.stash)
        if not is_raw():  # the dense layer's keys, weight = effective weight (see nmsparse.nn.state)
            if owner is not None and owner.shard is not None:
                destination[prefix + "weight"] = owner.effective_weight(self.weight)
            else:
                with torch.no_grad():
                    destination[prefix + "weight"] = self.weight.detach() * self.mask
            if self.bias is not None:
                destination[prefix + "bias"] = value(self.bias)
            return
        for role, key in _pruned_linear_keys(self.bias is not None).items():
            if role == "weight":
                destination[prefix + key] = value(self.weight)
            elif role == "mask":
                destination[prefix + key] = value(self.mask)
            elif role == "extra":
                destination[prefix + key] = self._as_nmmask().get_extra_state()
            elif role == "bias" and self.bias is not None:
                destination[prefix + key] = value(self.bias)

    def as_nmmask(self) -> NMMask:
        """An :class:`~nmsparse.NMMask` that shares this layer's mask tensor (the linked one, when there is one).

        What nmsparse's mask tools need to treat this layer like a pruned ``nn.Linear``: its ``mask`` (writes
        through ``mask.copy_`` reach the layer), ``pattern``, ``straight_through`` and ``decay``.

        Example:
            >>> from nmsparse.nn import SparseLinear
            >>> layer = SparseLinear(8, 8)
            >>> layer.as_nmmask().mask.data_ptr() == layer.mask.data_ptr()
            True
        """
        if self._linked:
            return self._linked[0]
        return NMMask(
            self.mask, straight_through=self.straight_through, decay=self._current_decay(), pattern=self.pattern
        )

    def _as_nmmask(self) -> NMMask:
        return NMMask(
            self.mask, straight_through=self.straight_through, decay=self._current_decay(), pattern=self.pattern
        )

    def _load_from_state_dict(
        self,
        state_dict: dict[str, Any],
        prefix: str,
        local_metadata: dict[str, Any],
        strict: bool,
        missing_keys: list[str],
        unexpected_keys: list[str],
        error_msgs: list[str],
    ) -> None:
        keys = _pruned_linear_keys(self.bias is not None)
        renames = {prefix + keys["weight"]: prefix + "weight", prefix + keys["mask"]: prefix + "mask"}
        if "bias" in keys and keys["bias"] != "bias":
            renames[prefix + keys["bias"]] = prefix + "bias"
        public = {v: k for k, v in renames.items()}
        for old, new in renames.items():
            if old in state_dict:
                state_dict[new] = state_dict.pop(old)
        if prefix + "weight" in state_dict and prefix + "mask" not in state_dict:
            # the dense layer's keys: the layer keeps its mask (see nmsparse.nn.state)
            nm = self._as_nmmask()
            state_dict[prefix + "weight"] = nm.dense_from_effective(state_dict[prefix + "weight"], self.weight)
            state_dict[prefix + "mask"] = self.mask
        extra = state_dict.pop(prefix + keys["extra"], None) if "extra" in keys else None
        mask_value = state_dict.get(prefix + "mask")
        if isinstance(mask_value, torch.Tensor) and tuple(mask_value.shape) == tuple(self.mask.shape):
            try:
                self._checked_mask(mask_value)
            except MaskMismatchError as exc:
                error_msgs.append(f"{prefix + keys['mask']}: {exc}")
        first_missing = len(missing_keys)
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )
        missing_keys[first_missing:] = [public.get(k, k) for k in missing_keys[first_missing:]]
        if extra is not None:
            try:  # validated the way NMMask validates its own saved state, then adopted: mode and decay
                saved = NMMask(self.mask, pattern=self.pattern)
                saved.set_extra_state(extra)
                self.mode = "straight-through" if saved.straight_through else "static"
                self.decay = saved.decay
                if self._linked:
                    self._linked[0].straight_through, self._linked[0].decay = saved.straight_through, saved.decay
            except Exception as exc:  # noqa: BLE001 - reported through load_state_dict's error list
                error_msgs.append(f"{prefix + keys['extra']}: {exc}")
        self.invalidate_()

    def extra_repr(self) -> str:
        parts = [
            f"in_features={self.in_features}",
            f"out_features={self.out_features}",
            f"bias={self.bias is not None}",
            f"pattern={self.pattern}",
            f"mode={self.mode}",
        ]
        if self._current_decay():
            parts.append(f"decay={self._current_decay():g}")
        if self.backend != "auto":
            parts.append(f"backend={self.backend}")
        return ", ".join(parts)
