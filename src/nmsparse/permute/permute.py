"""``permute_``: reorder a model's free channels so the pattern's optimal masks keep more, without changing the
model's function.

Run it *before* pruning (``prune_``, ``prune_oneshot_``, ``adaprune_``): the permutation is baked into the
weights, so the model stays an ordinary model (its ``state_dict`` keys and shapes are unchanged; it saves and
loads with ``save_pretrained``/``from_pretrained`` or ``load_state_dict``) and the pruning that follows sees the
permuted layers.

Which layer's pattern a chain serves: the chain's channels are the output rows of its producers (e.g. ``up`` and
``gate``) and the input columns of its consumers (``down``). For plain ``n:m`` only the consumers' columns group
into stripes, so the search maximises the consumers' retained saliency (the producers' rows are free for them).
For ``n:m-T`` the producers' row blocks and the consumers' column stripes are both tiled, so the search maximises
the sum over *every* member of its retained fraction (each layer's kept saliency divided by its dense total, so
a wide layer does not outweigh a narrow one): one column search on the stacked matrix
``[producers' weights transposed; consumers' columns]``, whose aligned tiles are exactly the members' tiles. A
layer's other dimension (e.g. ``up``'s columns, the residual stream) stays as it is unless it belongs to another
chain (the residual stream is one, with ``residual=True``); for ``-T`` the chains are visited ``passes`` times,
so the row and column orders of a layer in two chains are refined alternately.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from .._calibration import feed, materialise, token_mask, token_rows
from .._logging import logger
from ..errors import ConfigError, InputError
from ..layout import fits
from ..pattern import NMPattern, PatternLike
from .graph import Chain, apply_permutation, chain_block, find_chains, matrix_of, permute_matrix, residual_chain
from .search import permute_columns, retained_fast

__all__ = [
    "permute_",
    "PermuteReport",
    "ChainReport",
    "LayerGain",
    "compute_scores",
    "input_statistics",
    "plan_permutations",
]

ScoreFn = Callable[[str, nn.Module], torch.Tensor]


@dataclass
class LayerGain:
    """Retained saliency of one layer's optimal mask before/after, and its dense total (same units)."""

    name: str
    before: float
    after: float
    total: float

    @property
    def before_fraction(self) -> float:
        return self.before / self.total if self.total > 0 else 0.0

    @property
    def after_fraction(self) -> float:
        return self.after / self.total if self.total > 0 else 0.0


@dataclass
class ChainReport:
    """One permuted chain: its members, the rule that made it legal, and whether its order changed."""

    name: str
    size: int
    members: list[str]
    rule: str
    moved: int
    seconds: float


@dataclass
class PermuteReport:
    """What :func:`permute_` did: chains permuted, per-layer gains, layers left alone and why."""

    pattern: str
    scores: str
    chains: list[ChainReport] = field(default_factory=list)
    layers: list[LayerGain] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0
    check_max_abs_diff: float | None = None
    permutations: dict[str, list[int]] = field(default_factory=dict)

    @property
    def before(self) -> float:
        """Mean retained fraction over the scored layers before the permutations."""
        return sum(g.before_fraction for g in self.layers) / max(1, len(self.layers))

    @property
    def after(self) -> float:
        return sum(g.after_fraction for g in self.layers) / max(1, len(self.layers))

    def summary(self) -> str:
        lines = [
            f"permute_ {self.pattern} ({self.scores} scores): {len(self.chains)} chains, {len(self.layers)} "
            f"scored layers, retained {self.before:.4f} -> {self.after:.4f} of the dense saliency (mean per "
            f"layer), {self.seconds:.1f} s"
        ]
        for g in self.layers:
            lines.append(f"  {g.name:<40} {g.before_fraction:.4f} -> {g.after_fraction:.4f}")
        if self.skipped:
            lines.append(f"  not permuted ({len(self.skipped)}):")
            lines += [f"    {name}: {why}" for name, why in self.skipped.items()]
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out.pop("permutations")
        out["before"], out["after"] = self.before, self.after
        return out


# ------------------------------------------------------------------------------------------- scores


def input_statistics(
    model: nn.Module,
    names: Iterable[str],
    calibration: Iterable[Any],
    *,
    gram: bool = False,
    ignore_padding: bool = True,
) -> dict[str, torch.Tensor]:
    """Per layer, the squared norm of every input channel over the calibration tokens (``gram``: ``X^T X``).

    Forward hooks on the named layers; the model runs once per batch under ``torch.no_grad()``. A ``Conv2d``'s
    channels are summed over batch and positions. Padding tokens (``attention_mask == 0``) are left out unless
    ``ignore_padding=False``, as :func:`nmsparse.prune_oneshot_` leaves them out of its statistics.
    """
    modules = dict(model.named_modules())
    stats: dict[str, torch.Tensor] = {}
    handles = []
    token: torch.Tensor | None = None  # the real tokens of the batch being run

    def hook(name: str) -> Callable[..., None]:
        def fn(module: nn.Module, args: tuple[Any, ...], _out: Any) -> None:
            x = args[0].detach().float()
            keep = None if isinstance(module, nn.Conv2d) else token_rows(x, token)
            if isinstance(module, nn.Conv2d):
                x = x.transpose(1, -1)
            x = x.reshape(-1, x.shape[-1])
            x = x if keep is None else x[keep]
            value = x.T @ x if gram else (x * x).sum(0)
            stats[name] = value if name not in stats else stats[name] + value

        return fn

    for name in names:
        handles.append(modules[name].register_forward_hook(hook(name)))
    try:
        with torch.no_grad():
            for batch in materialise(calibration, where="permute_"):
                token = token_mask(batch) if ignore_padding else None
                feed(model, batch)
    finally:
        for h in handles:
            h.remove()
    return stats


def compute_scores(
    model: nn.Module,
    names: Iterable[str],
    scores: str | ScoreFn,
    calibration: Iterable[Any] | None,
    *,
    ignore_padding: bool = True,
) -> dict[str, torch.Tensor]:
    """Saliency matrices ``[out, K]`` (matrix views) of the named layers: ``"magnitude"`` ``|w|``, ``"wanda"``
    ``|w| * ||x_j||``, ``"sparsegpt"`` ``w^2 / [H^-1]_jj`` (1% damping), or a callable ``(name, module) ->``
    tensor of the weight's shape."""
    names = list(names)
    modules = dict(model.named_modules())
    if callable(scores):
        out = {}
        for name in names:
            value = scores(name, modules[name])
            if not isinstance(value, torch.Tensor) or value.shape != modules[name].weight.shape:
                raise ConfigError(
                    f"permute_: the score function returned {type(value).__name__} for {name}; "
                    f"expected a tensor of the weight's shape {tuple(modules[name].weight.shape)}"
                )
            out[name] = matrix_of(modules[name], value.float().abs())
        return out
    if scores == "magnitude":
        return {name: matrix_of(modules[name]).float().abs() for name in names}
    if scores not in ("wanda", "sparsegpt"):
        raise ConfigError(f"permute_: scores must be 'magnitude', 'wanda', 'sparsegpt' or a callable, got {scores!r}")
    if calibration is None:
        raise ConfigError(
            f"permute_: scores={scores!r} needs calibration batches (input statistics); pass "
            f"calibration=... or use scores='magnitude'"
        )
    stats = input_statistics(model, names, calibration, gram=scores == "sparsegpt", ignore_padding=ignore_padding)
    out = {}
    for name in names:
        module = modules[name]
        w = matrix_of(module).float()
        stat = stats.get(name)
        if stat is None:
            raise InputError(f"permute_: layer {name} saw no calibration input (is it used in the forward pass?)")
        if scores == "wanda":
            norms = stat.sqrt()
        else:
            H = stat.double()
            damp = 0.01 * H.diagonal().mean().clamp_min(1e-12)
            dead = H.diagonal() == 0
            H[dead, dead] = 1.0
            H += damp * torch.eye(H.shape[0], dtype=H.dtype, device=H.device)
            norms = (1.0 / torch.linalg.inv(H).diagonal()).float()
        positions = w.shape[1] // norms.numel()
        per_column = norms.repeat(positions)  # conv: channel fastest within each kernel position
        out[name] = (w.abs() if scores == "wanda" else w * w) * per_column
    return out


# ------------------------------------------------------------------------------------------- permute_


def _has_masks(model: nn.Module) -> bool:
    from torch.nn.utils import parametrize

    return any(parametrize.is_parametrized(m) for m in model.modules())


def plan_permutations(
    model: nn.Module, pattern: PatternLike, *, residual: bool = False
) -> tuple[list[Chain], dict[str, str]]:
    """The chains :func:`permute_` would permute for ``pattern`` and the layers it leaves alone (with reasons)."""
    p = NMPattern.parse(pattern)
    chains, skipped = find_chains(model)
    if residual:
        stream = residual_chain(model)
        if stream is None:
            skipped["residual stream"] = "not a known causal-LM family (GPT-2, LLaMA): left alone"
        else:
            chains.append(stream)
            covered = {m.name for m in stream.members}
            for name in list(skipped):
                if name in covered:
                    reason = skipped[name]
                    parts = [x for x in reason.split("; ") if not x.startswith(("rows: no known rule", "columns:"))]
                    if parts:
                        skipped[name] = "; ".join(parts)
                    else:
                        del skipped[name]
    kept = []
    for chain in chains:
        if chain.size % p.m or chain.size < 2 * p.m:
            for member in chain.members:
                skipped.setdefault(
                    member.name,
                    f"chain {chain.name}: {chain.size} channels is not a multiple of {p.m} with at least two groups",
                )
            continue
        kept.append(chain)
    return kept, skipped


def _fits(module: nn.Module, pattern: NMPattern) -> bool:
    return fits(tuple(matrix_of(module).shape), pattern)


def _outputs(model: nn.Module, batch: Any) -> list[torch.Tensor]:
    with torch.no_grad():
        out = feed(model, batch)
    if isinstance(out, torch.Tensor):
        return [out.detach().clone()]
    if isinstance(out, dict) or hasattr(out, "values"):
        out = list(out.values())
    if isinstance(out, (tuple, list)):
        return [o.detach().clone() for o in out if isinstance(o, torch.Tensor)]
    return []


def permute_(
    model: nn.Module,
    pattern: PatternLike,
    calibration: Iterable[Any] | None = None,
    *,
    scores: str | ScoreFn = "magnitude",
    layers: Iterable[str] | None = None,
    passes: int | None = None,
    rounds: int | None = None,
    exact_rounds: int | None = None,
    sweeps: int | None = None,
    seed: int = 0,
    max_seconds_per_chain: float | None = None,
    residual: bool = False,
    ignore_padding: bool = True,
    check: bool = True,
    atol: float = 1e-4,
    rtol: float = 1e-4,
) -> PermuteReport:
    """Permute a model's free channels so ``pattern``'s optimal masks keep more saliency; the function is unchanged.

    Finds the legal permutations from the model's structure (:func:`nmsparse.permute.graph.find_chains`: MLP
    intermediate channels, attention value heads with their output-projection columns, conv -> BN -> conv chains),
    searches each chain's order with the layers' scores (:mod:`nmsparse.permute.search`), and reorders the weights,
    biases and batch-norm parameters and statistics in place. Call it before any pruning verb; the pruning then
    sees the permuted weights.

    Args:
        model: a model without masks (call it before ``prune_``/``prune_oneshot_``); changed in place.
        pattern: the pattern that will be pruned to, ``"2:4"``, ``"4:8-T"``, ...
        calibration: batches the model accepts (``model(batch)``, ``model(**batch)`` or ``model(*batch)``);
            needed for ``scores="wanda"``/``"sparsegpt"``; when given, the first batch also checks that the
            outputs are unchanged (``check``).
        scores: ``"magnitude"`` (``|w|``), ``"wanda"`` (``|w| * ||x||``), ``"sparsegpt"`` (``w^2 / [H^-1]_jj``) or
            a callable ``(name, module) -> tensor`` of the weight's shape.
        layers: names of the layers that will be pruned (their scores drive the search); default: every
            ``Linear``/``Conv2d``/``Conv1D`` in a chain whose shape takes the pattern.
        passes: visits of every chain (default 1 for plain ``n:m``, 2 for ``-T``: rows and columns alternate).
        rounds, exact_rounds, sweeps: search effort per chain (see :func:`nmsparse.permute.search_permutation`).
        seed: search seed (deterministic for a seed).
        max_seconds_per_chain: *optional* time cap per chain search.
        residual: also permute the residual stream's hidden dimension (one permutation shared by the embeddings,
            every norm, every projection reading or writing the stream and the LM head; GPT-2 and LLaMA causal LMs,
            :func:`nmsparse.permute.graph.residual_chain`). The logits are unchanged; hidden states a caller reads
            from inside the model are permuted.
        ignore_padding: leave padding tokens (``attention_mask == 0`` of a mapping batch) out of the ``"wanda"`` and
            ``"sparsegpt"`` input statistics, as :func:`nmsparse.prune_oneshot_` does.
        check: with calibration, compare the model's outputs on the first batch before and after; on a mismatch
            beyond ``atol``/``rtol`` the weights are restored and ``ConfigError`` is raised.

    Returns:
        :class:`PermuteReport`: chains, retained saliency per scored layer before/after, layers left alone and why.

    Raises:
        ConfigError: the model already has masks; unknown ``scores``; outputs changed (a bug: the model is restored).
        InputError: empty calibration.

    Example:
        >>> import torch, nmsparse
        >>> net = torch.nn.Sequential(torch.nn.Linear(16, 64), torch.nn.ReLU(), torch.nn.Linear(64, 16))
        >>> x = torch.randn(4, 16); y = net(x)
        >>> report = nmsparse.permute_(net, "2:4", [x])
        >>> torch.allclose(net(x), y, atol=1e-5), report.after >= report.before
        (True, True)
    """
    began = time.perf_counter()
    p = NMPattern.parse(pattern)
    if not isinstance(model, nn.Module):
        raise ConfigError(f"permute_: model must be a torch.nn.Module, got {type(model).__name__}")
    if _has_masks(model):
        raise ConfigError(
            "permute_: the model already has masks (parametrizations); permute the dense model, then prune it"
        )
    if not (callable(scores) or scores in ("magnitude", "wanda", "sparsegpt")):
        raise ConfigError(f"permute_: scores must be 'magnitude', 'wanda', 'sparsegpt' or a callable, got {scores!r}")
    batches = None if calibration is None else materialise(calibration, where="permute_")
    chains, skipped = plan_permutations(model, p, residual=residual)
    modules = dict(model.named_modules())
    in_chains = {m.name for c in chains for m in c.members if m.role in ("in", "out")}
    wanted = set(layers) if layers is not None else None
    scored = sorted(name for name in in_chains if (wanted is None or name in wanted) and _fits(modules[name], p))
    for name in sorted(in_chains - set(scored)):
        if wanted is not None and name not in wanted:
            continue
        skipped.setdefault(name, f"its shape does not take {p}: permuted with its chain but not scored")
    report = PermuteReport(pattern=str(p), scores=scores if isinstance(scores, str) else "callable")
    if not chains:
        report.skipped = skipped
        report.seconds = time.perf_counter() - began
        return report
    reference = _outputs(model, batches[0]) if check and batches else None
    saved = {k: v.detach().clone() for k, v in model.state_dict().items()}
    # the search runs on CPU (a model on an accelerator: its statistics there, the scores moved once)
    S = {
        name: value.cpu()
        for name, value in compute_scores(model, scored, scores, batches, ignore_padding=ignore_padding).items()
    }
    start = {name: retained_fast(S[name], p) for name in scored}
    totals = {name: float(S[name].sum(dtype=torch.float64)) for name in scored}
    passes = passes if passes is not None else (2 if p.transposable else 1)
    moved: dict[str, int] = {}
    seconds: dict[str, float] = {}
    perms: dict[str, torch.Tensor] = {c.name: torch.arange(c.size) for c in chains}
    try:
        for k in range(max(1, passes)):
            for chain in chains:
                t0 = time.perf_counter()
                parts = []
                for member in chain.members:
                    if member.name not in S or member.role not in ("in", "out"):
                        continue
                    if member.role == "out" and not p.transposable:
                        continue  # plain n:m: a producer's row order does not matter to its own mask
                    block = chain_block(S[member.name], modules[member.name], member, chain.size)
                    if p.transposable and block.shape[0] % p.m:
                        continue
                    parts.append(block / max(totals[member.name], 1e-30))
                if not parts:
                    continue
                stacked = torch.cat(parts, dim=0)
                perm, _ = permute_columns(
                    stacked,
                    p,
                    rounds=rounds,
                    exact_rounds=exact_rounds,
                    seed=seed + k,
                    max_seconds=max_seconds_per_chain,
                    sweeps=sweeps,
                )
                if bool((perm != torch.arange(chain.size)).any()):
                    apply_permutation(model, chain, perm)
                    for member in chain.members:
                        if member.name in S and member.role in ("in", "out"):
                            S[member.name] = permute_matrix(S[member.name], modules[member.name], member, perm)
                    perms[chain.name] = perms[chain.name][perm]
                    moved[chain.name] = moved.get(chain.name, 0) + int((perm != torch.arange(chain.size)).sum())
                seconds[chain.name] = seconds.get(chain.name, 0.0) + time.perf_counter() - t0
        if reference is not None and batches:
            after = _outputs(model, batches[0])
            diff = max((float((a - b).abs().max()) for a, b in zip(after, reference)), default=0.0)
            report.check_max_abs_diff = diff
            if len(after) != len(reference) or not all(
                torch.allclose(a, b, atol=atol, rtol=rtol) for a, b in zip(after, reference)
            ):
                raise ConfigError(
                    f"permute_: the outputs changed after permuting (max |diff| {diff:.3g}); the "
                    f"model was restored. This is a bug in the chain rules for this architecture; "
                    f"please report it"
                )
    except BaseException:
        model.load_state_dict(saved)
        raise
    for chain in chains:
        report.chains.append(
            ChainReport(
                chain.name,
                chain.size,
                [f"{m.name}:{m.role}" for m in chain.members],
                chain.rule,
                moved.get(chain.name, 0),
                seconds.get(chain.name, 0.0),
            )
        )
        if moved.get(chain.name):
            report.permutations[chain.name] = perms[chain.name].tolist()
    for name in scored:
        report.layers.append(LayerGain(name, start[name], retained_fast(S[name], p), totals[name]))
    report.skipped = skipped
    report.seconds = time.perf_counter() - began
    logger.info("permute_ %s: %d chains, retained %.4f -> %.4f", p, len(chains), report.before, report.after)
    return report
