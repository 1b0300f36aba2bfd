"""``accelerate_``: swap a model's Linear layers for :class:`~nmsparse.nn.SparseLinear` where 2:4-T really is faster.

Only **2:4** runs on NVIDIA sparse tensor cores, so only **2:4-T** masks speed up both the forward and the
input-gradient product; 4:8-T and larger masks stay masked-dense (every such layer is reported with that reason).
Even at 2:4-T, small products run *slower* sparse (plain torch calls measured about 0.4 ms more per sparse call
on an H200, synchronised after every call, so probably host time), so the choice is made per shape
``(tokens, in, out, dtype, mode, bias)`` by a measured micro-benchmark of one layer's forward + ``dX`` + ``dW``
(with the per-step re-packing), cached in memory and optionally in a JSON file.

The micro-benchmark is fair to both sides (issue 18): one shared warm-up of at least 100 ms of work (clocks ramp
up before either side is timed), then dense and sparse repeats interleaved, alternating which goes first; the
decision uses *pipelined* times (several consecutive calls between two clock reads, as in a training step, where
host time overlaps device time), and the synchronised single-call times and the spread are reported beside.
"""

from __future__ import annotations

import fnmatch
import json
import math
import os
import statistics
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal, overload

import torch
from torch import nn
from torch.nn.utils import parametrize

from ._logging import logger, renamed_progress
from ._logging import progress as with_progress
from ._version import __version__
from .errors import ConfigError
from .io import atomic_path
from .nn.linear import SparseLinear, sparse_unavailable_reason
from .nn.parametrize import NMMask
from .pattern import NMPattern, PatternLike

__all__ = [
    "accelerate_",
    "AccelerationReport",
    "LayerDecision",
    "LinearTiming",
    "measure_linear",
    "default_cache_file",
    "refresh_masks_",
    "step_gain_ceiling",
    "PATTERN_NOTE",
]

#: What every report says about patterns other than 2:4-T.
PATTERN_NOTE = (
    "only 2:4-T runs on NVIDIA sparse tensor cores (forward and input gradient); 4:8-T and larger "
    "masks stay masked-dense"
)

_CACHE_VERSION = 1
_MEMORY_CACHE: dict[str, dict[str, float]] = {}
#: Shared warm-up of the micro-benchmark: at least this many milliseconds of dense and sparse work, alternating.
WARMUP_MS = 100.0


# ----------------------------------------------------------------------------------------------- report


@dataclass
class LayerDecision:
    """What :func:`accelerate_` did with one Linear layer, and why.

    Attributes:
        name: qualified module name.
        out_features: weight rows.
        in_features: weight columns.
        pattern: the layer's mask pattern (``None`` for a plain layer without a mask pattern to use).
        dtype: compute dtype.
        tokens: rows of the 2-D input per call used for the decision (``None``: not measured).
        swapped: replaced by a :class:`~nmsparse.nn.SparseLinear`.
        sparse: the swapped layer runs on sparse tensor cores (``False``: forced, masked-dense).
        reason: one line: why it was swapped or kept.
        dense_ms: measured dense forward+backward time (ms per call, pipelined), when measured.
        sparse_ms: measured sparse forward+backward time incl. re-packing (ms per call, pipelined), when measured.
        dense_sync_ms: the same dense call synchronised on its own (host and device time not overlapped).
        sparse_sync_ms: the same sparse call synchronised on its own.
        spread: relative spread ``(max - min) / median`` of the pipelined repeats (the larger side's).
        predicted_speedup: what the forward ratio alone predicts for the measured call (forward and ``dX`` at the
            forward ratio, ``dW`` unchanged, equal shares, no re-pack): compare with :attr:`speedup`.
        forward_speedup: the measured forward-only ratio (dense / sparse, pipelined) behind the prediction.
    """

    name: str
    out_features: int
    in_features: int
    pattern: str | None
    dtype: str
    tokens: int | None
    swapped: bool
    sparse: bool
    reason: str
    dense_ms: float | None = None
    sparse_ms: float | None = None
    dense_sync_ms: float | None = None
    sparse_sync_ms: float | None = None
    spread: float | None = None
    predicted_speedup: float | None = None
    forward_speedup: float | None = None

    @property
    def speedup(self) -> float | None:
        """Dense time over sparse time, when both were measured."""
        if self.dense_ms is None or not self.sparse_ms:
            return None
        return self.dense_ms / self.sparse_ms


@dataclass
class AccelerationReport:
    """Result of :func:`accelerate_`: one :class:`LayerDecision` per Linear layer considered.

    Attributes:
        pattern: the pattern asked for.
        min_speedup: the threshold used.
        layers: qualified name -> decision, in model order.
        note: the pattern note (:data:`PATTERN_NOTE`).
        model: the model after the swaps (the model passed in, changed in place; a bare ``nn.Linear`` passed as
            the model is itself replaced, so use ``report.model``); not part of :meth:`to_dict` or ``repr``.
    """

    pattern: str
    min_speedup: float
    layers: dict[str, LayerDecision] = field(default_factory=dict)
    note: str = PATTERN_NOTE
    model: nn.Module | None = field(default=None, repr=False, compare=False)

    @property
    def swapped(self) -> dict[str, LayerDecision]:
        """Layers replaced by SparseLinear."""
        return {k: v for k, v in self.layers.items() if v.swapped}

    @property
    def accelerated(self) -> dict[str, LayerDecision]:
        """Swapped layers that run on sparse tensor cores."""
        return {k: v for k, v in self.layers.items() if v.swapped and v.sparse}

    @property
    def kept(self) -> dict[str, str]:
        """Layers left as they were -> reason."""
        return {k: v.reason for k, v in self.layers.items() if not v.swapped}

    def describe(self) -> str:
        """Multi-line summary: a count line, one line per layer, and the pattern note."""
        lines = [
            f"accelerate_ {self.pattern}: {len(self.accelerated)} layer(s) on sparse tensor cores, "
            f"{len(self.swapped) - len(self.accelerated)} swapped masked-dense, {len(self.kept)} not swapped"
        ]
        for name, d in self.layers.items():
            tag = "swapped" if d.swapped else "not swapped"
            lines.append(f"  {name} [{d.out_features}x{d.in_features} {d.dtype}]: {tag}: {d.reason}")
        lines.append(f"note: {self.note}")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict (for run files)."""
        return {
            "pattern": self.pattern,
            "min_speedup": self.min_speedup,
            "note": self.note,
            "layers": {k: {**asdict(v), "speedup": v.speedup} for k, v in self.layers.items()},
        }

    def __str__(self) -> str:
        return self.describe()


# ----------------------------------------------------------------------------------------------- timing


def default_cache_file() -> Path:
    """``$XDG_CACHE_HOME/nmsparse/accelerate-timings.json`` (``~/.cache/...`` when the variable is unset)."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "nmsparse" / "accelerate-timings.json"


def _environment_key(device: torch.device) -> str:
    cusparselt = getattr(torch.backends, "cusparselt", None)
    version = cusparselt.version() if cusparselt is not None and cusparselt.is_available() else None
    return f"{torch.cuda.get_device_name(device)}|torch {torch.__version__}|cusparselt {version}"


def _read_cache(path: Path) -> dict[str, dict[str, float]]:
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        logger.warning("accelerate_: ignoring unreadable timing cache %s (%s); it will be rewritten", path, exc)
        return {}
    if not isinstance(data, dict) or data.get("version") != _CACHE_VERSION or not isinstance(data.get("timings"), dict):
        logger.warning("accelerate_: ignoring timing cache %s of another format; it will be rewritten", path)
        return {}
    return {
        k: v
        for k, v in data["timings"].items()
        if isinstance(v, dict) and all(isinstance(v.get(x), (int, float)) for x in ("dense_ms", "sparse_ms"))
    }


def _write_cache(path: Path, timings: Mapping[str, Mapping[str, float]]) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps({"version": _CACHE_VERSION, "timings": dict(timings)}, indent=1, sort_keys=True))


def _time_ms(fn: Callable[[], object], *, warmup: int, repeats: int, device: torch.device) -> float:
    """Median milliseconds of ``fn`` (CUDA events on CUDA, wall clock elsewhere)."""
    for _ in range(warmup):
        fn()
    times = []
    if device.type == "cuda":
        for _ in range(repeats):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
    else:
        import time

        for _ in range(repeats):
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def _periodic_2_4_t_mask(out_features: int, in_features: int, device: torch.device) -> torch.Tensor:
    """A valid 2:4-T mask (the product's speed does not depend on which one)."""
    tile = torch.tensor([[1, 1, 0, 0], [0, 0, 1, 1], [1, 1, 0, 0], [0, 0, 1, 1]], dtype=torch.bool)
    return tile.repeat(out_features // 4, in_features // 4).to(device)


class _Clock:
    """Times callables on one device: pipelined runs of consecutive calls and synchronised single calls (ms)."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"

    def pipelined_ms(self, fn: Callable[[], object], calls: int) -> float:
        """Milliseconds per call of ``calls`` back-to-back calls (CUDA: between two events, host time hidden)."""
        if self.cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            for _ in range(calls):
                fn()
            end.record()
            end.synchronize()
            return float(start.elapsed_time(end)) / calls
        import time

        t0 = time.perf_counter()
        for _ in range(calls):
            fn()
        return (time.perf_counter() - t0) * 1e3 / calls

    def synchronised_ms(self, fn: Callable[[], object]) -> float:
        """Wall milliseconds of one call with the device drained before and after (host + device, serialised)."""
        import time

        if self.cuda:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        if self.cuda:
            torch.cuda.synchronize()
        return (time.perf_counter() - t0) * 1e3


@dataclass
class LinearTiming:
    """What :func:`measure_linear` measured for one shape (milliseconds per call).

    Attributes:
        dense_ms: median pipelined dense time (the decision uses the pipelined times).
        sparse_ms: median pipelined sparse time.
        dense_sync_ms: median synchronised dense time (one call, device drained before and after).
        sparse_sync_ms: median synchronised sparse time.
        dense_spread: ``(max - min) / median`` of the dense pipelined repeats.
        sparse_spread: the same for the sparse side.
        forward_speedup: dense / sparse pipelined forward-only time, where measured.
        warmup_ms: work done in the shared warm-up.
        repeats: interleaved repeats per side.
    """

    dense_ms: float
    sparse_ms: float
    dense_sync_ms: float
    sparse_sync_ms: float
    dense_spread: float
    sparse_spread: float
    forward_speedup: float | None
    warmup_ms: float
    repeats: int

    @property
    def speedup(self) -> float:
        """Pipelined dense time over sparse time."""
        return self.dense_ms / self.sparse_ms if self.sparse_ms else 0.0

    @property
    def sync_speedup(self) -> float:
        """Synchronised dense time over sparse time (what a sync after every call shows)."""
        return self.dense_sync_ms / self.sparse_sync_ms if self.sparse_sync_ms else 0.0


def _spread(values: Sequence[float]) -> float:
    middle = statistics.median(values)
    return (max(values) - min(values)) / middle if middle > 0 else 0.0


def _fair_times(
    dense: Callable[[], object],
    sparse: Callable[[], object],
    *,
    clock: Any,
    warmup_ms: float,
    repeats: int,
    calls: int,
    max_warmup_rounds: int = 10_000,
) -> dict[str, float]:
    """Shared warm-up, then interleaved repeats (the side that goes first alternates); medians and spreads.

    The warm-up alternates one dense and one sparse call until both together have done ``warmup_ms`` of work
    (clock ramp-up, allocator, cuSPARSELt plans). Each repeat times ``calls`` consecutive calls pipelined, and one
    call synchronised, per side.
    """
    spent, rounds = 0.0, 0
    while spent < warmup_ms and rounds < max_warmup_rounds:
        spent += clock.pipelined_ms(dense, 1) + clock.pipelined_ms(sparse, 1)
        rounds += 1
    times: dict[str, list[float]] = {"dense": [], "sparse": [], "dense_sync": [], "sparse_sync": []}
    for r in range(repeats):
        order = (("dense", dense), ("sparse", sparse)) if r % 2 == 0 else (("sparse", sparse), ("dense", dense))
        for side, fn in order:
            times[side].append(clock.pipelined_ms(fn, calls))
            times[f"{side}_sync"].append(clock.synchronised_ms(fn))
    out = {k: statistics.median(v) for k, v in times.items()}
    out["dense_spread"], out["sparse_spread"] = _spread(times["dense"]), _spread(times["sparse"])
    out["warmup_ms"] = spent
    return out


@overload
def measure_linear(
    tokens: int,
    in_features: int,
    out_features: int,
    dtype: torch.dtype = ...,
    device: torch.device | str = ...,
    *,
    training: bool = ...,
    warmup: int = ...,
    repeats: int = ...,
    mode: str = ...,
    bias: bool = ...,
    calls: int = ...,
    warmup_ms: float | None = ...,
    detail: Literal[False] = ...,
    clock: Any = ...,
) -> tuple[float, float]: ...


@overload
def measure_linear(
    tokens: int,
    in_features: int,
    out_features: int,
    dtype: torch.dtype = ...,
    device: torch.device | str = ...,
    *,
    training: bool = ...,
    warmup: int = ...,
    repeats: int = ...,
    mode: str = ...,
    bias: bool = ...,
    calls: int = ...,
    warmup_ms: float | None = ...,
    detail: Literal[True],
    clock: Any = ...,
) -> LinearTiming: ...


def measure_linear(
    tokens: int,
    in_features: int,
    out_features: int,
    dtype: torch.dtype = torch.bfloat16,
    device: torch.device | str = "cuda",
    *,
    training: bool = True,
    warmup: int = 5,
    repeats: int = 20,
    mode: str = "static",
    bias: bool = False,
    calls: int = 5,
    warmup_ms: float | None = None,
    detail: bool = False,
    clock: Any = None,
) -> tuple[float, float] | LinearTiming:
    """Milliseconds per call of one layer step, dense ``nn.Linear`` vs :class:`~nmsparse.nn.SparseLinear`, same run.

    ``training=True``: forward + backward (``dX`` and ``dW``) of a ``[tokens, in]`` input, the sparse side
    re-packing ``W``/``W^T`` every step as after an optimizer step. ``training=False``: forward only, packed once.
    On a device where the sparse path cannot run the "sparse" side is the masked-dense fallback.

    Fair to both sides: ``warmup`` alternating calls each and at least ``warmup_ms`` (default :data:`WARMUP_MS`)
    of shared work first, then ``repeats`` interleaved repeats; each repeat times ``calls`` consecutive calls
    (pipelined: the returned medians) and one synchronised call. The forward-only ratio is timed the same way
    (a third of the repeats) for the predicted gain.

    Args:
        tokens: input rows. in_features, out_features: the weight's shape. dtype, device: where it runs.
        training: time forward + backward with re-packing (else the forward only).
        warmup: alternating untimed calls before the timed warm-up.
        repeats: interleaved repeats per side.
        mode: the SparseLinear's mode. bias: with a bias.
        calls: consecutive calls per pipelined timing.
        warmup_ms: shared warm-up work in ms (default :data:`WARMUP_MS`).
        detail: return a :class:`LinearTiming` instead of ``(dense_ms, sparse_ms)``.
        clock: *optional* timer with ``pipelined_ms(fn, calls)`` and ``synchronised_ms(fn)`` (tests).

    Returns:
        ``(dense_ms, sparse_ms)``, pipelined medians; with ``detail=True`` a :class:`LinearTiming`.

    Example:
        >>> from nmsparse.accelerate import measure_linear
        >>> dense_ms, sparse_ms = measure_linear(8, 16, 16, torch.float32, "cpu", warmup=1, repeats=2,
        ...                                      warmup_ms=0)
        >>> dense_ms > 0 and sparse_ms > 0
        True
    """
    device = torch.device(device)
    gen = torch.Generator(device="cpu").manual_seed(0)
    dense = nn.Linear(in_features, out_features, bias=bias, device=device, dtype=dtype)
    with torch.no_grad():
        dense.weight.copy_(torch.randn(out_features, in_features, generator=gen).to(dtype))
    mask = _periodic_2_4_t_mask(out_features, in_features, device)
    sparse = SparseLinear.from_dense(dense, mask=mask, mode=mode)  # type: ignore[arg-type]
    x = torch.randn(tokens, in_features, generator=gen).to(device=device, dtype=dtype).requires_grad_(training)
    dy = torch.randn(tokens, out_features, generator=gen).to(device=device, dtype=dtype)

    def step(layer: nn.Module, repack: bool, backward: bool) -> Callable[[], object]:
        def run() -> object:
            if repack:
                sparse.invalidate_()
            if not backward:
                with torch.no_grad():
                    return layer(x)
            dense.weight.grad = None
            x.grad = None
            y = layer(x)
            y.backward(dy)
            return y

        return run

    dense_fn, sparse_fn = step(dense, False, training), step(sparse, training, training)
    for _ in range(warmup):
        dense_fn()
        sparse_fn()
    timer = _Clock(device) if clock is None else clock
    main = _fair_times(
        dense_fn,
        sparse_fn,
        clock=timer,
        warmup_ms=WARMUP_MS if warmup_ms is None else warmup_ms,
        repeats=repeats,
        calls=calls,
    )
    forward_speedup: float | None = None
    if training:
        fwd = _fair_times(
            step(dense, False, False),
            step(sparse, False, False),
            clock=timer,
            warmup_ms=0.0,
            repeats=max(2, repeats // 3),
            calls=calls,
        )
        forward_speedup = fwd["dense"] / fwd["sparse"] if fwd["sparse"] else None
    timing = LinearTiming(
        main["dense"],
        main["sparse"],
        main["dense_sync"],
        main["sparse_sync"],
        main["dense_spread"],
        main["sparse_spread"],
        forward_speedup,
        main["warmup_ms"],
        repeats,
    )
    if detail:
        return timing
    return timing.dense_ms, timing.sparse_ms


def predicted_layer_speedup(forward_speedup: float | None, *, training: bool) -> float | None:
    """What the forward ratio alone predicts for a layer call: forward and ``dX`` at that ratio, ``dW`` dense.

    Three equal products (same FLOPs), no re-pack, no fixed costs: ``3 / (2 / r + 1)`` for a training call, ``r``
    for a forward-only one. The gap to the measured call is the re-pack and per-call overhead.

    Example:
        >>> from nmsparse.accelerate import predicted_layer_speedup
        >>> round(predicted_layer_speedup(2.0, training=True), 3)
        1.5
    """
    if forward_speedup is None or forward_speedup <= 0:
        return None
    return 3.0 / (2.0 / forward_speedup + 1.0) if training else forward_speedup


def step_gain_ceiling(
    linear_share: float,
    forward_ratio: float,
    dx_ratio: float | None = None,
    *,
    dw_ratio: float = 1.0,
    overhead_share: float = 0.0,
) -> float:
    """Ceiling of a training step's speed-up from accelerating its linear layers (Amdahl's law, three products).

    A step spends ``linear_share`` of its dense time in linear layers, split evenly over the forward, ``dX`` and
    ``dW`` products (they have the same FLOPs); sparse tensor cores divide the forward by ``forward_ratio`` and
    ``dX`` by ``dx_ratio`` (default: the forward's), ``dW`` by ``dw_ratio`` (1: it stays dense); re-packing, mask
    refreshes and other added work cost ``overhead_share`` of the dense step. The rest of the step is unchanged.

    ``step_gain_ceiling(1.0, 2.0)`` is the textbook 1.5x: every product of the step in linears, a perfect 2x on
    two of three, nothing else. A decoder step at d_model 2048 spends about 60% in its linears, which run about
    1.3x faster: ``step_gain_ceiling(0.6, 1.3)`` is about 1.10x, before re-packing.

    Example:
        >>> from nmsparse.accelerate import step_gain_ceiling
        >>> round(step_gain_ceiling(1.0, 2.0), 3), round(step_gain_ceiling(0.6, 1.3), 3)
        (1.5, 1.102)
    """
    for name, value in (("linear_share", linear_share), ("overhead_share", overhead_share)):
        if not 0.0 <= value <= 1.0 and not (name == "overhead_share" and value >= 0):
            raise ConfigError(f"step_gain_ceiling: {name} must be in [0, 1], got {value!r}")
    dx = forward_ratio if dx_ratio is None else dx_ratio
    if min(forward_ratio, dx, dw_ratio) <= 0:
        raise ConfigError("step_gain_ceiling: ratios must be > 0")
    linears = linear_share * (1.0 / forward_ratio + 1.0 / dx + 1.0 / dw_ratio) / 3.0
    return 1.0 / ((1.0 - linear_share) + linears + overhead_share)


def _measured(
    tokens: int,
    in_features: int,
    out_features: int,
    dtype: torch.dtype,
    device: torch.device,
    *,
    training: bool,
    cache_path: Path | None,
    cache: dict[str, dict[str, float]],
    mode: str = "static",
    bias: bool = False,
) -> dict[str, float]:
    key = (
        f"{_environment_key(device)}|nmsparse {__version__}|{str(dtype).replace('torch.', '')}|"
        f"{tokens}x{in_features}x{out_features}|{'train' if training else 'infer'}|{mode}|"
        f"{'bias' if bias else 'no-bias'}"
    )
    if key not in cache:
        result = measure_linear(
            tokens, in_features, out_features, dtype, device, training=training, mode=mode, bias=bias, detail=True
        )
        if isinstance(result, LinearTiming):
            entry = {
                "dense_ms": result.dense_ms,
                "sparse_ms": result.sparse_ms,
                "dense_sync_ms": result.dense_sync_ms,
                "sparse_sync_ms": result.sparse_sync_ms,
                "spread": max(result.dense_spread, result.sparse_spread),
            }
            predicted = predicted_layer_speedup(result.forward_speedup, training=training)
            if predicted is not None:
                entry["predicted_speedup"] = predicted
            if result.forward_speedup is not None:
                entry["forward_speedup"] = result.forward_speedup
        else:  # a plain (dense_ms, sparse_ms) pair
            entry = {"dense_ms": float(result[0]), "sparse_ms": float(result[1])}
        cache[key] = entry
        _MEMORY_CACHE[key] = cache[key]
        if cache_path is not None:
            _write_cache(cache_path, cache)
    return {k: float(v) for k, v in cache[key].items() if isinstance(v, (int, float))}


# ----------------------------------------------------------------------------------------------- swap


def _mask_of(module: Any) -> NMMask | None:
    if not parametrize.is_parametrized(module, "weight"):
        return None
    for p in module.parametrizations.weight:
        if isinstance(p, NMMask):
            return p
    return None


def _record_tokens(model: nn.Module, names: Sequence[str], sample: Any) -> dict[str, int]:
    """Rows of the 2-D input each named Linear sees in one forward of ``sample`` (no grad)."""
    modules = dict(model.named_modules())
    seen: dict[str, int] = {}
    handles = []
    for name in names:

        def hook(module: nn.Module, inputs: tuple[Any, ...], name: str = name) -> None:
            x = inputs[0]
            seen[name] = max(seen.get(name, 0), int(x.numel() // x.shape[-1]))

        handles.append(modules[name].register_forward_pre_hook(hook))
    try:
        with torch.no_grad():
            if isinstance(sample, Mapping):
                model(**sample)
            elif isinstance(sample, tuple):
                model(*sample)
            else:
                model(sample)
    finally:
        for h in handles:
            h.remove()
    return seen


def _set_child(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)


def _check_number(name: str, value: object, *, minimum: float, integer: bool = False) -> None:
    ok = not isinstance(value, bool) and isinstance(value, int if integer else (int, float))
    if not ok or not math.isfinite(float(value)) or float(value) < minimum:  # type: ignore[arg-type]
        kind = "an int" if integer else "a finite number"
        raise ConfigError(f"accelerate_: {name} must be {kind} >= {minimum:g}, got {value!r}")


def accelerate_(
    model: nn.Module,
    *,
    pattern: PatternLike = "2:4-T",
    min_speedup: float = 1.05,
    tokens: int | Mapping[str, int] | None = None,
    sample: Any = None,
    dtype: torch.dtype | None = None,
    include: Sequence[str] | None = None,
    exclude: Sequence[str] | None = None,
    mode: str | None = None,
    decay: float | None = None,
    method: str = "exact",
    training: bool = True,
    cache_file: str | os.PathLike[str] | bool | None = None,
    force: bool = False,
    progress: bool | None = None,
    progress_bar: bool | None = None,
) -> AccelerationReport:
    """Swap ``nn.Linear`` layers for :class:`~nmsparse.nn.SparseLinear` where 2:4 sparse tensor cores are faster.

    For every ``nn.Linear`` (selected by ``include``/``exclude`` globs on qualified names):

    1. its pattern: an nmsparse-pruned layer (:func:`~nmsparse.prune_`, :class:`~nmsparse.DynamicSparsifier`)
       keeps its own mask and pattern; a plain layer gets ``pattern`` and a mask from ``method``;
    2. a capability probe (:func:`~nmsparse.nn.linear.sparse_unavailable_reason`): pattern 2:4-T, CUDA, sm80+,
       fp16/bf16, cuSPARSELt in the torch build, both dimensions multiples of 128, a tiny self-test;
    3. a measured micro-benchmark at the layer's shape (``tokens`` rows per call, from ``tokens`` or one forward
       of ``sample``): swapped when the pipelined dense time / sparse time (re-packing included when
       ``training``; shared warm-up, interleaved repeats, see :func:`measure_linear`) is at least
       ``min_speedup``. The report gives the synchronised ratio, the spread and the gain predicted from the
       forward ratio beside it. Timings are cached per GPU, torch, cuSPARSELt and nmsparse version, dtype,
       shape, mode and bias, in memory and, with ``cache_file``, in a JSON file.

    Swapped layers share the old layer's Parameter objects (optimizers keep working) and, when pruned, its mask
    tensor (a ``DynamicSparsifier`` created before keeps refreshing it). Call it after moving the model to its
    GPU and dtype, after pruning, and before wrapping in DDP or compiling.

    Args:
        model: the model; modified in place (a bare ``nn.Linear`` is replaced: take ``report.model``).
        pattern: pattern for plain (unpruned) layers; only ``"2:4-T"`` accelerates.
        min_speedup: swap only when the measured speed-up reaches this.
        tokens: rows of each layer's 2-D input per call (batch x sequence), one int or per-layer-name ints.
        sample: *optional* example input (tensor, tuple of args or dict of kwargs) run once to record tokens.
        dtype: compute dtype (default: each weight's dtype; pass the autocast dtype when training under autocast).
        include: *optional* fnmatch globs of layer names to consider.
        exclude: *optional* fnmatch globs of layer names to leave alone.
        mode: ``"static"`` or ``"straight-through"`` for plain layers (pruned layers keep theirs).
        decay: SR-STE decay for plain layers in straight-through mode.
        method: :func:`~nmsparse.find_mask` method for plain layers' masks.
        training: decide on forward + backward with re-packing (``False``: forward only).
        cache_file: ``None``/``False``: in-memory cache only; ``True``: :func:`default_cache_file`; or a path.
        force: swap every layer that can take the pattern, whatever the probe or timing says (layers that cannot
            run sparse compute masked-dense; for tests and CPU runs).
        progress: show a progress bar over the layers (``None``: on a terminal only).
        progress_bar: deprecated name of ``progress``.

    Returns:
        An :class:`AccelerationReport` naming every layer considered and why it was or was not swapped, with the
        model as ``.model``.

    Raises:
        ConfigError: bad arguments, or a capable GPU layer whose token count is unknown (pass ``tokens`` or
            ``sample``).

    Example:
        >>> import torch
        >>> from nmsparse.accelerate import accelerate_
        >>> model = torch.nn.Sequential(torch.nn.Linear(256, 512), torch.nn.GELU(), torch.nn.Linear(512, 256))
        >>> report = accelerate_(model, tokens=4096)
        >>> print(report.kept["0"])
        no CUDA: tensors are on cpu (sparse tensor cores need an NVIDIA GPU)
        >>> report = accelerate_(model, force=True)  # masked-dense SparseLinear, for testing
        >>> type(report.model[0]).__name__, len(report.swapped), report.model is model
        ('SparseLinear', 2, True)
    """
    progress = renamed_progress(progress, progress_bar, where="accelerate_")
    target = NMPattern.parse(pattern)
    _check_number("min_speedup", min_speedup, minimum=0.0)
    if tokens is not None and not isinstance(tokens, Mapping):
        _check_number("tokens", tokens, minimum=1, integer=True)
    if not isinstance(force, bool) or not isinstance(training, bool):
        raise ConfigError(f"accelerate_: force and training must be bools, got {force!r} and {training!r}")
    if dtype is not None and not isinstance(dtype, torch.dtype):
        raise ConfigError(f"accelerate_: dtype must be a torch.dtype such as torch.bfloat16, got {dtype!r}")
    include_globs = [include] if isinstance(include, str) else (None if include is None else list(include))
    exclude_globs = [exclude] if isinstance(exclude, str) else list(exclude or ())

    candidates: dict[str, nn.Linear] = {}
    report = AccelerationReport(pattern=str(target), min_speedup=float(min_speedup), model=model)
    for name, module in model.named_modules():
        if not isinstance(module, nn.Linear):
            continue
        if include_globs is not None and not any(fnmatch.fnmatchcase(name, g) for g in include_globs):
            continue
        if any(fnmatch.fnmatchcase(name, g) for g in exclude_globs):
            continue
        candidates[name] = module
    if not candidates:
        logger.info("accelerate_: the model has no nn.Linear layer to consider")
        return report

    seen_tokens: dict[str, int] = {}
    if sample is not None:
        seen_tokens = _record_tokens(model, list(candidates), sample)
    if isinstance(tokens, Mapping):
        for key, value in tokens.items():
            _check_number(f"tokens[{key!r}]", value, minimum=1, integer=True)
        seen_tokens.update(tokens)

    cache_path: Path | None
    if cache_file is None or cache_file is False:
        cache_path = None
    elif cache_file is True:
        cache_path = default_cache_file()
    else:
        cache_path = Path(cache_file)
    cache: dict[str, dict[str, float]] = dict(_MEMORY_CACHE)
    if cache_path is not None:
        cache.update(_read_cache(cache_path))

    replaced: dict[int, SparseLinear] = {}
    mod: Any  # parametrized attributes are invisible to type checkers
    for name, mod in with_progress(
        candidates.items(), desc="accelerate_", total=len(candidates), unit="layer", enabled=progress
    ):
        nm = _mask_of(mod)
        weight: torch.Tensor = mod.parametrizations.weight.original if nm is not None else mod.weight
        if isinstance(weight, nn.parameter.UninitializedParameter):
            report.layers[name] = LayerDecision(
                name,
                0,
                0,
                None,
                "unknown",
                None,
                False,
                False,
                "lazy layer whose weight is not initialised; run one forward first",
            )
            continue
        out_f, in_f = int(weight.shape[0]), int(weight.shape[1])
        layer_pattern = target if nm is None else nm.pattern
        compute = weight.dtype if dtype is None else dtype
        decision = LayerDecision(
            name,
            out_f,
            in_f,
            None if layer_pattern is None else str(layer_pattern),
            str(compute).replace("torch.", ""),
            None,
            False,
            False,
            "",
        )
        report.layers[name] = decision
        if id(mod) in replaced:
            _set_child(model, name, replaced[id(mod)])
            decision.swapped, decision.reason = True, "shared module, swapped with its first occurrence"
            decision.sparse = replaced[id(mod)].sparse_reason is None
            continue
        if nm is not None and len(mod.parametrizations.weight) != 1:
            decision.reason = "its weight carries parametrizations besides the nmsparse mask"
            continue
        if layer_pattern is None:
            decision.reason = "pruned without a recorded pattern; re-prune with nmsparse.prune_(..., pattern)"
            continue
        if out_f % layer_pattern.m or in_f % layer_pattern.m:
            decision.reason = (
                f"weight {out_f}x{in_f} cannot take {layer_pattern} (both dimensions must be "
                f"multiples of {layer_pattern.m})"
            )
            continue
        if parametrize.is_parametrized(mod) and any(k not in ("weight", "bias") for k in mod.parametrizations.keys()):
            decision.reason = "other tensors of the layer are parametrized"
            continue
        reason = sparse_unavailable_reason(
            weight.device, compute, in_features=in_f, out_features=out_f, pattern=layer_pattern
        )
        if reason is None:
            count = seen_tokens.get(name, tokens if isinstance(tokens, int) else None)
            decision.tokens = count
            if count is None and not force:
                raise ConfigError(
                    f"accelerate_: layer {name!r} can run sparse but its token count is unknown; pass tokens= "
                    f"(rows of its 2-D input per call, e.g. batch*sequence) or sample= (an example input)"
                )
            if count is not None:
                layer_mode = (
                    ("straight-through" if nm.straight_through else "static") if nm is not None else (mode or "static")
                )
                has_bias = getattr(mod, "bias", None) is not None
                entry = _measured(
                    count,
                    in_f,
                    out_f,
                    compute,
                    weight.device,
                    training=training,
                    cache_path=cache_path,
                    cache=cache,
                    mode=layer_mode,
                    bias=has_bias,
                )
                decision.dense_ms, decision.sparse_ms = entry["dense_ms"], entry["sparse_ms"]
                decision.dense_sync_ms = entry.get("dense_sync_ms")
                decision.sparse_sync_ms = entry.get("sparse_sync_ms")
                decision.spread = entry.get("spread")
                decision.predicted_speedup = entry.get("predicted_speedup")
                decision.forward_speedup = entry.get("forward_speedup")
                speed = decision.speedup or 0.0
                timing = (
                    f"measured {speed:.2f}x (dense {decision.dense_ms:.3f} ms, sparse "
                    f"{decision.sparse_ms:.3f} ms at {count} tokens"
                    f"{', re-packing included' if training else ', forward only'})"
                )
                extra = []
                if decision.dense_sync_ms and decision.sparse_sync_ms:
                    extra.append(f"pipelined; synchronised {decision.dense_sync_ms / decision.sparse_sync_ms:.2f}x")
                if decision.spread is not None:
                    extra.append(f"spread {decision.spread:.0%}")
                if decision.predicted_speedup is not None:
                    extra.append(f"predicted {decision.predicted_speedup:.2f}x from the forward ratio")
                if extra:
                    timing += f" [{'; '.join(extra)}]"
                if speed < min_speedup and not force:
                    decision.reason = f"{timing} < min_speedup {min_speedup:g}"
                    continue
                if speed < min_speedup:
                    timing = f"forced: {timing} < min_speedup {min_speedup:g}"
                decision.reason = timing
            else:
                decision.reason = "forced (not measured: token count unknown)"
            decision.sparse = True
        elif force:
            decision.reason = f"forced: runs masked-dense ({reason})"
        else:
            decision.reason = reason
            continue
        new = SparseLinear.from_dense(
            mod,
            None if nm is not None else layer_pattern,
            mode=None if nm is not None else (mode or "static"),  # type: ignore[arg-type]
            decay=None if nm is not None else decay,
            method=method,
        )
        if name:
            _set_child(model, name, new)
        else:  # the model itself is the layer: the caller takes the new one from the report
            report.model = new
        replaced[id(mod)] = new
        decision.swapped = True
    summary = report.describe()
    logger.info("%s", summary)
    return report


@torch.no_grad()
def refresh_masks_(model: nn.Module, method: str = "exact") -> float:
    """Refresh the mask of every :class:`~nmsparse.nn.SparseLinear` in ``model`` from its live weight.

    For SparseLinear layers made from plain Linear layers (a model pruned with a
    :class:`~nmsparse.DynamicSparsifier` before :func:`accelerate_` is refreshed by that sparsifier). Call it
    every ``k`` optimizer steps.

    Returns:
        Fraction of mask entries (over all layers) that changed.

    Example:
        >>> import torch
        >>> from nmsparse.accelerate import refresh_masks_
        >>> from nmsparse.nn import SparseLinear
        >>> refresh_masks_(torch.nn.Sequential(SparseLinear(8, 8, mode="straight-through")))
        0.0
    """
    changed = total = 0.0
    for module in model.modules():
        if isinstance(module, SparseLinear):
            changed += module.refresh_mask_(method) * module.mask.numel()
            total += module.mask.numel()
    return changed / total if total else 0.0
