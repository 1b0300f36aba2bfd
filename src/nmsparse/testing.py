"""Helpers for testing masks and mask solvers: validity checks, independent optimal-block references, toy models.

The reference solvers (networkx min-cost flow, scipy's HiGHS LP, brute force) are slow, plain per-block code
that shares nothing with nmsparse's own solvers, so they can check them. networkx and scipy are imported
lazily, inside the functions that need them (``pip install nmsparse[test]``).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from functools import cache

import numpy as np
import torch
from torch import nn

from .errors import InputError
from .layout import check_fits, to_blocks, to_matrix
from .pattern import NMPattern, PatternLike

__all__ = [
    "assert_valid_mask",
    "block_value",
    "bruteforce_block_optimum",
    "linprog_block_optimum",
    "linprog_blocks_optimum",
    "networkx_block_optimum",
    "toy_mlp",
    "ToyCNN",
    "tiny_gpt2",
    "tiny_llama",
]

#: Largest block side :func:`bruteforce_block_optimum` accepts (C(5, 2)^5 = 100,000 row choices at m = 5).
BRUTEFORCE_MAX_M = 5
#: Blocks stacked into one LP by :func:`linprog_blocks_optimum`.
_LP_BATCH = 128


def _as_block(block: torch.Tensor | np.ndarray | Sequence[Sequence[float]], n: int, where: str) -> np.ndarray:
    if isinstance(block, torch.Tensor):
        array = block.detach().to(device="cpu", dtype=torch.float64).numpy()
    else:
        array = np.asarray(block, dtype=np.float64)
    if array.ndim != 2 or array.shape[0] != array.shape[1] or array.shape[0] < 2:
        raise InputError(f"{where}: expected a square [m, m] block with m >= 2, got shape {array.shape}")
    if not np.isfinite(array).all():
        raise InputError(f"{where}: the block holds non-finite values; references need finite scores")
    m = array.shape[0]
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n < m:
        raise InputError(f"{where}: need an int n with 1 <= n < m={m}, got {n!r}")
    return array


def block_value(block: torch.Tensor | np.ndarray, mask: torch.Tensor | np.ndarray) -> float:
    """Sum of the kept scores of one block, in float64 (``math.fsum``, so independent of summation order)."""
    import math

    if isinstance(block, torch.Tensor):
        scores = block.detach().cpu().double().numpy()
    else:
        scores = np.asarray(block, dtype=np.float64)
    keep = mask.detach().cpu().numpy() if isinstance(mask, torch.Tensor) else np.asarray(mask)
    return math.fsum(scores[keep.astype(bool)].tolist())


def networkx_block_optimum(
    block: torch.Tensor | np.ndarray, n: int, *, exact_n: bool = True
) -> tuple[float, torch.Tensor]:
    """Optimal ``n``-per-row-and-column mask of one ``m x m`` block by networkx's network simplex.

    Min-cost flow: source -> row (capacity ``n``), row -> column (capacity 1, cost ``-score``), column -> sink
    (capacity ``n``), flow ``n * m``. Costs must be integers for networkx to be exact, so the float64 scores
    are scaled by a power of two that makes every one of them an integer: no rounding at all (Python ints).
    With ``exact_n=False`` each row also has a zero-cost bypass arc to the sink (capacity ``n``), so rows and
    columns keep *at most* ``n``.

    Args:
        block: ``[m, m]`` finite scores (tensor or array).
        n: kept per row and column, ``1 <= n < m``.
        exact_n: exactly ``n`` (default) or at most ``n`` per row and column.

    Returns:
        ``(value, mask)``: the optimal kept sum (float64) and a ``torch.bool [m, m]`` mask achieving it.

    Example:
        >>> value, mask = networkx_block_optimum([[3.0, 1.0], [2.0, 5.0]], 1)
        >>> value, mask.int().tolist()
        (8.0, [[1, 0], [0, 1]])
    """
    import networkx as nx

    scores = _as_block(block, n, "networkx_block_optimum")
    m = scores.shape[0]
    ratios = [float(v).as_integer_ratio() for v in scores.ravel()]
    denominator = max(q for _, q in ratios)  # every q is a power of two, so all divide the largest
    costs = [-(p * (denominator // q)) for p, q in ratios]
    graph = nx.DiGraph()
    graph.add_node("source", demand=-n * m)
    graph.add_node("sink", demand=n * m)
    for i in range(m):
        graph.add_edge("source", ("row", i), capacity=n, weight=0)
        graph.add_edge(("col", i), "sink", capacity=n, weight=0)
        if not exact_n:
            graph.add_edge(("row", i), "sink", capacity=n, weight=0)
    for i in range(m):
        for j in range(m):
            graph.add_edge(("row", i), ("col", j), capacity=1, weight=costs[i * m + j])
    flow = nx.min_cost_flow(graph)
    mask = torch.zeros(m, m, dtype=torch.bool)
    for i in range(m):
        for j in range(m):
            mask[i, j] = flow[("row", i)][("col", j)] == 1
    return block_value(scores, mask), mask


def _lp_constraints(m: int, count: int):  # noqa: ANN202 - scipy sparse matrix
    from scipy import sparse

    # Variables: block-major, then row-major inside a block. Rows 0..m-1 of each block: row sums; m..2m-1:
    # column sums. Block-diagonal, and each block is a bipartite incidence matrix: totally unimodular.
    cells = np.arange(m * m)
    rows = np.concatenate([cells // m, m + cells % m])
    cols = np.concatenate([cells, cells])
    single = sparse.coo_matrix((np.ones(2 * m * m), (rows, cols)), shape=(2 * m, m * m))
    return sparse.block_diag([single] * count, format="csr")


def linprog_blocks_optimum(
    blocks: torch.Tensor | np.ndarray, n: int, *, exact_n: bool = True
) -> tuple[np.ndarray, torch.Tensor]:
    """Optimal masks of many ``m x m`` blocks at once by one LP (scipy HiGHS dual simplex).

    The blocks' LPs are independent, so batches of them are stacked into one block-diagonal LP, which HiGHS
    solves far faster than one call per block. The constraint matrix is totally unimodular, so the vertex
    solution the simplex returns is integral: an optimal mask, not only an optimal value.

    Args:
        blocks: ``[B, m, m]`` finite scores.
        n: kept per row and column, ``1 <= n < m``.
        exact_n: rows and columns sum to exactly ``n`` (default) or to at most ``n``.

    Returns:
        ``(values, masks)``: float64 array ``[B]`` of optimal kept sums and ``torch.bool [B, m, m]`` masks.

    Raises:
        AssertionError: if HiGHS fails or returns a fractional solution (it should never).

    Example:
        >>> values, masks = linprog_blocks_optimum(torch.eye(4).expand(3, 4, 4), 1)
        >>> values.tolist()
        [4.0, 4.0, 4.0]
    """
    from scipy.optimize import linprog

    if isinstance(blocks, torch.Tensor):
        array = blocks.detach().to(device="cpu", dtype=torch.float64).numpy()
    else:
        array = np.asarray(blocks, dtype=np.float64)
    if array.ndim != 3 or array.shape[1] != array.shape[2]:
        raise InputError(f"linprog_blocks_optimum: expected [B, m, m] blocks, got shape {array.shape}")
    count, m, _ = array.shape
    if count == 0:
        return np.zeros(0), torch.zeros(0, m, m, dtype=torch.bool)
    _as_block(np.eye(m), n, "linprog_blocks_optimum")  # checks m and n
    if not np.isfinite(array).all():
        raise InputError("linprog_blocks_optimum: the blocks hold non-finite values; use finite scores")
    # Per-block power-of-two scaling (exact) keeps HiGHS's tolerances meaningful for huge or tiny scores.
    amax = np.abs(array).reshape(count, -1).max(axis=1)
    exponent = np.frexp(np.where(amax > 0, amax, 1.0))[1]
    scaled = np.ldexp(array, -exponent[:, None, None])
    solution = np.empty((count, m * m))
    for start in range(0, count, _LP_BATCH):  # batches: the simplex slows down on very large stacked LPs
        part = scaled[start : start + _LP_BATCH]
        size = part.shape[0]
        matrix, bound = _lp_constraints(m, size), np.full(2 * m * size, float(n))
        limits = {"A_eq": matrix, "b_eq": bound} if exact_n else {"A_ub": matrix, "b_ub": bound}
        result = linprog(-part.ravel(), **limits, bounds=(0.0, 1.0), method="highs-ds")
        assert result.status == 0, f"linprog_blocks_optimum: HiGHS failed: {result.message}"
        solution[start : start + size] = result.x.reshape(size, m * m)
    assert np.abs(solution - np.round(solution)).max() < 1e-6, "HiGHS returned a fractional vertex"
    masks = torch.from_numpy(solution.reshape(count, m, m) > 0.5)
    values = np.array([block_value(array[index], masks[index]) for index in range(count)])
    return values, masks


def linprog_block_optimum(
    block: torch.Tensor | np.ndarray, n: int, *, exact_n: bool = True
) -> tuple[float, torch.Tensor]:
    """Optimal ``n``-per-row-and-column mask of one ``m x m`` block by scipy's HiGHS LP.

    Args:
        block: ``[m, m]`` finite scores.
        n: kept per row and column, ``1 <= n < m``.
        exact_n: exactly ``n`` (default) or at most ``n`` per row and column.

    Returns:
        ``(value, mask)`` as :func:`networkx_block_optimum`.

    Example:
        >>> value, mask = linprog_block_optimum([[3.0, 1.0], [2.0, 5.0]], 1)
        >>> value
        8.0
    """
    scores = _as_block(block, n, "linprog_block_optimum")
    values, masks = linprog_blocks_optimum(scores[None], n, exact_n=exact_n)
    return float(values[0]), masks[0]


def bruteforce_block_optimum(block: torch.Tensor | np.ndarray, n: int) -> tuple[float, torch.Tensor]:
    """Optimal mask of one small block by trying every mask with ``n`` per row and column.

    Ties between exactly equal sums go to the mask keeping the lower flat indices (the largest bit vector,
    flat index 0 most significant), the rule of ``find_mask(..., method="exact")`` for ``m = 4``.

    Args:
        block: ``[m, m]`` finite scores, ``m <= 5``.
        n: kept per row and column, ``1 <= n < m``.

    Returns:
        ``(value, mask)`` as :func:`networkx_block_optimum` (the value summed with ``math.fsum``).

    Example:
        >>> value, mask = bruteforce_block_optimum([[1.0, 1.0], [1.0, 1.0]], 1)
        >>> value, mask.int().tolist()
        (2.0, [[1, 0], [0, 1]])
    """
    import math

    scores = _as_block(block, n, "bruteforce_block_optimum")
    m = scores.shape[0]
    if m > BRUTEFORCE_MAX_M:
        raise InputError(f"bruteforce_block_optimum: m={m} is too large to enumerate; need m <= {BRUTEFORCE_MAX_M}")
    best_value, best_mask = -math.inf, None
    for mask in _all_block_masks(m, n):  # lower flat indices first, so only a strictly larger sum wins
        value = math.fsum(scores[mask].tolist())
        if value > best_value:
            best_value, best_mask = value, mask
    assert best_mask is not None  # at least one valid mask exists for 1 <= n < m
    return best_value, torch.from_numpy(best_mask.copy())


@cache
def _all_block_masks(m: int, n: int) -> tuple[np.ndarray, ...]:
    """Every ``m x m`` mask with ``n`` per row and column, largest bit vector (flat index 0 first) first."""
    choices = [np.isin(np.arange(m), combo) for combo in itertools.combinations(range(m), n)]
    masks = [np.stack(rows) for rows in itertools.product(choices, repeat=m)]
    masks = [mask for mask in masks if (mask.sum(axis=0) == n).all()]
    masks.sort(key=lambda mask: tuple(mask.ravel().tolist()), reverse=True)
    return tuple(masks)


def _first_bad(counts: torch.Tensor, bad: torch.Tensor) -> tuple[int, int, int]:
    flat = int(bad.reshape(-1).nonzero()[0])
    width = counts.shape[-1]
    return flat // width, flat % width, int(counts.reshape(-1)[flat])


def assert_valid_mask(
    mask: torch.Tensor, pattern: PatternLike, *, exact_n: bool = False, shape: Sequence[int] | None = None
) -> None:
    """Assert that ``mask`` is a valid mask for ``pattern``, with a message that locates the first violation.

    Checks: ``torch.bool`` dtype; the shape (``shape`` when given, and one that can take the pattern); at most
    ``n`` kept per group of ``m`` along the reduction dimension (plain patterns) or per row and per column of
    every aligned ``m x m`` block of the matrix view (transposable patterns); with ``exact_n=True``, exactly
    ``n``.

    Args:
        mask: ``[out, in]`` or ``[out, in, kh, kw]`` mask.
        pattern: ``"2:4"``, ``"4:8-T"``, ... or an :class:`~nmsparse.NMPattern`.
        exact_n: require exactly ``n`` (what ``method="exact"`` and ``"greedy-repair"`` guarantee).
        shape: expected shape (usually the weight's).

    Raises:
        AssertionError: on the first failed check.

    Example:
        >>> import torch
        >>> assert_valid_mask(torch.tensor([[True, False, True, False]]), "2:4", exact_n=True)
        >>> assert_valid_mask(torch.ones(1, 4, dtype=torch.bool), "2:4")
        Traceback (most recent call last):
        ...
        AssertionError: mask violates 2:4: 1 of 1 groups keep more than 2; first: group 0 (row 0, cols 0-3): 4
    """
    pattern = NMPattern.parse(pattern)
    assert isinstance(mask, torch.Tensor), f"mask must be a torch.Tensor, got {type(mask).__name__}"
    assert mask.dtype == torch.bool, f"mask must be torch.bool, got {mask.dtype}"
    if shape is not None:
        assert tuple(mask.shape) == tuple(shape), f"mask shape {tuple(mask.shape)} != expected {tuple(shape)}"
    check_fits(mask.shape, pattern, where="assert_valid_mask")
    n, m = pattern.n, pattern.m
    matrix = to_matrix(mask)  # (rows, K)
    rows, cols = matrix.shape
    word = "exactly" if exact_n else "at most"
    if not pattern.transposable:
        counts = matrix.reshape(rows, cols // m, m).sum(dim=-1)  # (rows, K/m)
        bad = counts != n if exact_n else counts > n
        if bool(bad.any()):
            row, group, count = _first_bad(counts, bad)
            relation = f"other than {n}" if exact_n else f"more than {n}"
            first, last = group * m, group * m + m - 1
            raise AssertionError(
                f"mask violates {pattern}: {int(bad.sum())} of {counts.numel()} groups keep {relation}; "
                f"first: group {row * (cols // m) + group} (row {row}, cols {first}-{last}): {count}"
            )
        return
    blocks = to_blocks(matrix, m)  # (B, m, m)
    per_block_cols = cols // m
    for axis, label in ((2, "row"), (1, "column")):
        counts = blocks.sum(dim=axis)  # (B, m)
        bad = counts != n if exact_n else counts > n
        if bool(bad.any()):
            block, index, count = _first_bad(counts, bad)
            r0, c0 = (block // per_block_cols) * m, (block % per_block_cols) * m
            relation = f"other than {n}" if exact_n else f"more than {n}"
            raise AssertionError(
                f"mask violates {pattern} ({word} {n} per block row and column): {int(bad.sum())} block "
                f"{label}s of {counts.numel()} keep {relation}; first: block {block} (matrix rows "
                f"{r0}..{r0 + m - 1}, columns {c0}..{c0 + m - 1}), {label} {index} keeps {count}"
            )


# ----------------------------------------------------------------------- training-run files (helper C's tests)


def run_tensors(path: str) -> dict[str, torch.Tensor]:
    """Every tensor of a safetensors file of a training run (``checkpoint.safetensors``, ``model.safetensors``).

    Used to compare runs bit for bit (an interrupted-and-resumed run against an uninterrupted one).
    """
    from safetensors.torch import load_file

    return load_file(str(path))


# ----------------------------------------------------------------------------------------------- toy models


def toy_mlp() -> nn.Sequential:
    """``Linear(32, 64) - ReLU - Linear(64, 32) - ReLU - Linear(32, 8)``: every layer takes 2:4, 4:8 and 4:8-T.

    Example:
        >>> [name for name, _ in toy_mlp().named_children()]
        ['0', '1', '2', '3', '4']
    """
    return nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 8))


class ToyCNN(nn.Module):
    """Every kind of conv layer pruning must handle (shapes chosen against 2:4, 2:4-T and 4:8-T).

    ``stem`` (K = 27) fits no pattern, ``depthwise`` (K = 9) neither, ``head`` (3 outputs) only plain ones;
    ``grouped`` and ``narrow_groups`` are grouped convs; ``conv1d`` is an ``nn.Conv1d`` (K = 3 * 16).

    Example:
        >>> import torch
        >>> ToyCNN()(torch.randn(2, 3, 8, 8)).shape
        torch.Size([2, 3])
    """

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, padding=1)
        self.conv = nn.Conv2d(16, 16, 3, padding=1)
        self.grouped = nn.Conv2d(16, 16, 3, padding=1, groups=2)
        self.narrow_groups = nn.Conv2d(16, 16, 1, groups=2)
        self.depthwise = nn.Conv2d(16, 16, 3, padding=1, groups=16)
        self.conv1d = nn.Conv1d(16, 16, 3, padding=1)
        self.fc = nn.Linear(16, 16)
        self.head = nn.Linear(16, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.stem(x))
        x = torch.relu(self.conv(x))
        x = torch.relu(self.grouped(x))
        x = torch.relu(self.narrow_groups(x))
        x = torch.relu(self.depthwise(x))
        x = torch.relu(self.conv1d(x.flatten(2))).mean(dim=2)
        return self.head(torch.relu(self.fc(x)))


def tiny_gpt2(
    *, n_embd: int = 32, n_layer: int = 1, n_head: int = 2, vocab_size: int = 64, n_positions: int = 16, seed: int = 0
) -> nn.Module:
    """A tiny ``transformers`` ``GPT2LMHeadModel`` built from a config (no download), in eval mode.

    Its linears are ``Conv1D`` layers (weights stored ``[in, out]``) and its ``lm_head`` is tied to ``wte``.
    Needs ``transformers``.
    """
    import transformers

    torch.manual_seed(seed)
    config = transformers.GPT2Config(
        n_embd=n_embd,
        n_layer=n_layer,
        n_head=n_head,
        vocab_size=vocab_size,
        n_positions=n_positions,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        bos_token_id=0,
        eos_token_id=0,
    )
    return transformers.GPT2LMHeadModel(config).eval()


def tiny_llama(
    *,
    hidden_size: int = 32,
    intermediate_size: int = 64,
    num_hidden_layers: int = 1,
    num_attention_heads: int = 2,
    num_key_value_heads: int = 1,
    head_dim: int | None = None,
    vocab_size: int = 64,
    max_position_embeddings: int = 32,
    pad_token_id: int | None = None,
    tie_word_embeddings: bool = False,
    seed: int | None = 0,
) -> nn.Module:
    """A tiny ``transformers`` ``LlamaForCausalLM`` built from a config (no download), in eval mode.

    Grouped-query attention by default (``num_key_value_heads < num_attention_heads``); ``head_dim`` defaults to
    ``hidden_size / num_attention_heads``. ``seed``: ``torch.manual_seed`` before the weights are drawn (``None``:
    the caller's random state). Needs ``transformers``.
    """
    import transformers

    if seed is not None:
        torch.manual_seed(seed)
    config = transformers.LlamaConfig(
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        num_hidden_layers=num_hidden_layers,
        num_attention_heads=num_attention_heads,
        num_key_value_heads=num_key_value_heads,
        head_dim=head_dim or hidden_size // num_attention_heads,
        vocab_size=vocab_size,
        max_position_embeddings=max_position_embeddings,
        bos_token_id=0,
        eos_token_id=0,
        pad_token_id=pad_token_id,
        tie_word_embeddings=tie_word_embeddings,
    )
    return transformers.LlamaForCausalLM(config).eval()


def masked_linear_twin(layer: nn.Module) -> nn.Linear:
    """A masked dense ``nn.Linear`` (:class:`~nmsparse.NMMask` parametrization) with a copy of a
    :class:`~nmsparse.SparseLinear`'s weights, mask, mode and decay: the reference its fast paths are tested against.

    Example:
        >>> from nmsparse.nn import SparseLinear
        >>> layer = SparseLinear(8, 8)
        >>> x = torch.randn(2, 8)
        >>> torch.allclose(masked_linear_twin(layer)(x), layer(x))
        True
    """
    from torch.nn.utils import parametrize

    from .nn.parametrize import NMMask

    weight: torch.Tensor = layer.weight  # type: ignore[assignment]
    bias: torch.Tensor | None = layer.bias  # type: ignore[assignment]
    twin = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None, dtype=weight.dtype, device=weight.device)
    with torch.no_grad():
        twin.weight.copy_(weight)
        if bias is not None:
            twin.bias.copy_(bias)
    mask: torch.Tensor = layer.mask  # type: ignore[assignment]
    parametrize.register_parametrization(
        twin,
        "weight",
        NMMask(mask.clone(), straight_through=bool(layer.straight_through), decay=float(layer.decay)),  # type: ignore[arg-type]
        unsafe=True,
    )
    return twin
