"""Properties the suite states by example elsewhere, checked on generated inputs (hypothesis).

- every method's mask is valid for any finite input, for plain and transposable patterns: ties, zeros, negative
  values, subnormal and near-overflow magnitudes, float16/32/64;
- ``exact`` keeps at least what ``greedy-repair`` keeps (both keep exactly n; exact is optimal), and ``greedy``
  keeps at least half of the optimum and no more than the optimum under its own "at most n" rule;
- a weight stored as Linear ``[out, in]``, as transformers' ``Conv1D`` ``[in, out]`` or as a Conv2d
  ``[out, in, kh, kw]`` with the same matrix view gets the same mask, in its own layout;
- masks files and pruned checkpoints round-trip masks and weights bit for bit.

Examples per test come from the hypothesis profile in ``tests/conftest.py`` ("ci": few and derandomized, so runs
are fast and repeatable; ``HYPOTHESIS_PROFILE=dev`` for a longer random search).
"""

from __future__ import annotations

import functools
import math
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import nmsparse
from nmsparse.io import load_masks, load_pruned_, save_masks, save_pruned
from nmsparse.layout import from_matrix, to_blocks
from nmsparse.nn.state import raw_state_dict

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from hypothesis.extra.numpy import arrays  # noqa: E402

PLAIN = ["1:4", "2:4", "3:4", "2:8", "4:8"]
TRANSPOSABLE = ["1:4-T", "2:4-T", "3:4-T", "2:8-T", "4:8-T"]
SETTINGS = settings(deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

_WIDTH = {np.float16: 16, np.float32: 32, np.float64: 64}


def _elements(dtype: type) -> st.SearchStrategy[float]:
    """Finite values of ``dtype``: anything, ties among a few values, subnormal-small or near-overflow."""
    width = _WIDTH[dtype]
    finfo = np.finfo(dtype)
    big = float(finfo.max)
    small = float(finfo.smallest_subnormal) * 64
    return st.one_of(
        st.floats(min_value=-big, max_value=big, width=width),
        st.sampled_from([0.0, 1.0, -1.0, 2.0, -0.5]),
        st.floats(min_value=-small, max_value=small, allow_subnormal=True, width=width),
        st.tuples(st.floats(min_value=big / 4, max_value=big, width=width), st.booleans()).map(
            lambda pair: pair[0] if pair[1] else -pair[0]
        ),
    )


@st.composite
def weights(draw: st.DrawFn, m: int, transposable: bool, dtypes: tuple[type, ...] = tuple(_WIDTH)) -> torch.Tensor:
    """A finite ``[rows, K]`` weight that can take an ``n:m`` (``transposable``: ``n:m-T``) pattern."""
    dtype = draw(st.sampled_from(dtypes))
    rows = m * draw(st.integers(1, 2)) if transposable else draw(st.integers(1, 5))
    cols = m * draw(st.integers(1, 2))
    return torch.from_numpy(draw(arrays(dtype, (rows, cols), elements=_elements(dtype))))


def _group_counts(mask: torch.Tensor, m: int) -> torch.Tensor:
    return mask.reshape(mask.shape[0], -1, m).sum(-1)


def _block_counts(mask: torch.Tensor, m: int) -> tuple[torch.Tensor, torch.Tensor]:
    blocks = to_blocks(mask, m)
    return blocks.sum(-1), blocks.sum(-2)


# ------------------------------------------------------------------------------------------- valid masks


@SETTINGS
@given(data=st.data(), pattern=st.sampled_from(PLAIN + TRANSPOSABLE))
def test_every_method_gives_a_valid_mask_for_any_finite_input(data: st.DataObject, pattern: str) -> None:
    parsed = nmsparse.NMPattern.parse(pattern)
    weight = data.draw(weights(parsed.m, parsed.transposable))
    methods = ["auto", "exact", "greedy", "greedy-repair"] + ([] if parsed.transposable else ["topn"])
    for method in methods:
        mask = nmsparse.find_mask(weight, pattern, method=method)
        assert mask.dtype == torch.bool and mask.shape == weight.shape, method
        assert nmsparse.is_nm_sparse(mask, pattern), method
        if not parsed.transposable:  # every method is the optimal top-n: exactly n per group
            assert bool((_group_counts(mask, parsed.m) == parsed.n).all()), method
        elif method != "greedy":  # exact and greedy-repair keep exactly n per row and column of each block
            rows, cols = _block_counts(mask, parsed.m)
            assert bool((rows == parsed.n).all() and (cols == parsed.n).all()), method
        assert math.isfinite(nmsparse.retained_magnitude(weight, mask)), method


# ------------------------------------------------------------------------------------------- exact >= greedy


def _scaled_block_values(weight: torch.Tensor, masks: list[torch.Tensor], m: int) -> list[torch.Tensor]:
    """Kept ``|w|`` per block for each mask, after one power-of-two scaling (exact) that keeps sums finite."""
    magnitude = weight.double().abs()
    top = float(magnitude.max())
    scaled = magnitude * 2.0 ** -math.frexp(top)[1] if top > 0 else magnitude
    blocks = to_blocks(scaled, m)
    return [(blocks * to_blocks(mask, m)).sum(dim=(1, 2)) for mask in masks]


@functools.cache
def _at_most_n_masks(n: int) -> torch.Tensor:
    """Every 4x4 0/1 matrix with at most ``n`` per row and per column, as ``[count, 16]`` float64."""
    grid = (torch.arange(1 << 16).unsqueeze(1) >> torch.arange(16)) & 1  # every 16-bit pattern, one bit per entry
    blocks = grid.reshape(-1, 4, 4)
    keep = (blocks.sum(-1) <= n).all(-1) & (blocks.sum(-2) <= n).all(-1)
    return grid[keep].double()


@SETTINGS
@given(data=st.data(), pattern=st.sampled_from(TRANSPOSABLE))
def test_exact_keeps_at_least_greedy_which_keeps_at_least_half(data: st.DataObject, pattern: str) -> None:
    parsed = nmsparse.NMPattern.parse(pattern)
    m, n = parsed.m, parsed.n
    weight = data.draw(weights(m, transposable=True))
    masks = [nmsparse.find_mask(weight, pattern, method=method) for method in ("exact", "greedy-repair", "greedy")]
    exact, repaired, greedy = _scaled_block_values(weight, masks, m)
    (total,) = _scaled_block_values(weight, [torch.ones_like(masks[0])], m)
    tolerance = 1e-6 * total + 1e-300
    assert bool((exact >= repaired - tolerance).all()), "greedy-repair beat the exact solver"
    assert bool((greedy >= 0.5 * exact - tolerance).all()), "greedy kept less than half of exact"
    assert bool((repaired >= 0.5 * exact - tolerance).all()), "greedy-repair kept less than half of exact"
    if m == 4:
        # greedy keeps at most n per row and column: its guarantee is against the optimum under that rule, which
        # can exceed the exactly-n optimum. All such 4x4 masks are enumerated here, independently of the solvers.
        magnitude = weight.double().abs()
        top = float(magnitude.max())
        scaled = magnitude * 2.0 ** -math.frexp(top)[1] if top > 0 else magnitude
        relaxed = (to_blocks(scaled, 4).reshape(-1, 16) @ _at_most_n_masks(n).T).max(dim=1).values
        assert bool((relaxed >= exact - tolerance).all())
        assert bool((relaxed >= greedy - tolerance).all()), "greedy beat the at-most-n optimum"
        assert bool((greedy >= 0.5 * relaxed - tolerance).all()), "greedy kept less than half of the optimum"


# ------------------------------------------------------------------------------------------- layouts


class Conv1D(nn.Module):
    """transformers' ``Conv1D`` in miniature: a linear layer whose weight is stored ``[in, out]``."""

    def __init__(self, nf: int, nx: int) -> None:
        super().__init__()
        self.nf = nf
        self.weight = nn.Parameter(torch.zeros(nx, nf))
        self.bias = nn.Parameter(torch.zeros(nf))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x @ self.weight + self.bias


def _split(cols: int, draw: st.DrawFn) -> tuple[int, int, int]:
    """``(in, kh, kw)`` with ``kh * kw * in == cols``."""
    divisors = [d for d in range(1, cols + 1) if cols % d == 0]
    kh = draw(st.sampled_from(divisors))
    kw = draw(st.sampled_from([d for d in divisors if (cols // kh) % d == 0]))
    return cols // (kh * kw), kh, kw


@SETTINGS
@given(
    data=st.data(),
    pattern=st.sampled_from(PLAIN + TRANSPOSABLE),
    method=st.sampled_from(["auto", "exact", "greedy", "greedy-repair"]),
)
def test_the_three_layouts_of_a_weight_get_the_same_mask(data: st.DataObject, pattern: str, method: str) -> None:
    parsed = nmsparse.NMPattern.parse(pattern)
    matrix = data.draw(weights(parsed.m, parsed.transposable, dtypes=(np.float32, np.float64)))
    rows, cols = matrix.shape
    cin, kh, kw = _split(cols, data.draw)
    expected = nmsparse.find_mask(matrix, pattern, method=method)

    # find_mask on the stored tensors: Linear [out, in] and Conv2d [out, in, kh, kw] with that matrix view
    conv_weight = from_matrix(matrix, (rows, cin, kh, kw))
    conv_mask = nmsparse.find_mask(conv_weight, pattern, method=method)
    assert torch.equal(conv_mask, from_matrix(expected, conv_weight.shape))

    # prune_ on the three kinds of layer, each storing the same matrix in its own layout
    linear = nn.Linear(cols, rows).to(matrix.dtype)
    conv = nn.Conv2d(cin, rows, (kh, kw)).to(matrix.dtype)
    transposed = Conv1D(rows, cols).to(matrix.dtype)
    with torch.no_grad():
        linear.weight.copy_(matrix)
        conv.weight.copy_(conv_weight)
        transposed.weight.copy_(matrix.t())
    for layer, want in (
        (linear, expected),
        (conv, from_matrix(expected, conv_weight.shape)),
        (transposed, expected.t()),
    ):
        report = nmsparse.prune_(layer, pattern, method=method, progress=False)
        assert [(pruned.name, pruned.transposed) for pruned in report.pruned] == [("", layer is transposed)]
        assert torch.equal(nmsparse.get_masks(report.model)["weight"], want), type(layer).__name__


# ------------------------------------------------------------------------------------------- round trips


@SETTINGS
@given(data=st.data(), pattern=st.sampled_from(PLAIN + TRANSPOSABLE))
def test_masks_files_round_trip(data: st.DataObject, pattern: str) -> None:
    parsed = nmsparse.NMPattern.parse(pattern)
    masks = {}
    for index in range(data.draw(st.integers(1, 3))):
        weight = data.draw(weights(parsed.m, parsed.transposable))
        if data.draw(st.booleans()):  # also a 4-D conv weight's mask
            weight = weight.reshape(weight.shape[0], -1, 1, parsed.m)
        masks[f"layers.{index}.weight"] = nmsparse.find_mask(weight, pattern, method="greedy")
    with tempfile.TemporaryDirectory() as folder:
        path = save_masks(masks, Path(folder) / "masks.safetensors", pattern=pattern)
        loaded = load_masks(path)
    assert list(loaded) == list(masks) and loaded.pattern == parsed
    for name, mask in masks.items():
        assert loaded[name].dtype == torch.bool and torch.equal(loaded[name], mask), name


@SETTINGS
@given(data=st.data(), pattern=st.sampled_from(PLAIN + TRANSPOSABLE), straight_through=st.booleans())
def test_pruned_checkpoints_round_trip_masks_and_weights(
    data: st.DataObject, pattern: str, straight_through: bool
) -> None:
    parsed = nmsparse.NMPattern.parse(pattern)
    first = data.draw(weights(parsed.m, parsed.transposable, dtypes=(np.float32, np.float64)))
    rows, cols = first.shape
    hidden = parsed.m * data.draw(st.integers(1, 2))

    def build() -> nn.Sequential:
        return nn.Sequential(nn.Linear(cols, rows), nn.ReLU(), nn.Linear(rows, hidden)).to(first.dtype)

    model = build()
    with torch.no_grad():
        model[0].weight.copy_(first)
    report = nmsparse.prune_(model, pattern, method="greedy", straight_through=straight_through, progress=False)
    assert report.model is model and "0.weight" in nmsparse.get_masks(model)
    with tempfile.TemporaryDirectory() as folder:
        path = save_pruned(model, Path(folder) / "pruned.safetensors")
        fresh = load_pruned_(build(), path)
    before, after = nmsparse.get_masks(model), nmsparse.get_masks(fresh)
    assert list(after) == list(before)
    assert all(torch.equal(after[name], mask) for name, mask in before.items())
    with raw_state_dict():  # the dense weights behind the masks too, and the mode
        raw_before, raw_after = model.state_dict(), fresh.state_dict()
    assert list(raw_after) == list(raw_before)
    for key, value in raw_before.items():
        if isinstance(value, torch.Tensor):
            assert torch.equal(raw_after[key], value), key
    assert fresh[0].parametrizations.weight[0].straight_through == straight_through
