"""The exact transposable solver against independent references (scipy HiGHS LP, networkx, brute force)."""

from __future__ import annotations

import math
import sys
import warnings

import numpy as np
import pytest
import torch

import nmsparse
from nmsparse.errors import InputError, PatternError
from nmsparse.layout import to_blocks, to_matrix
from nmsparse.solvers import exact
from nmsparse.solvers.enumerate import valid_block_masks
from nmsparse.testing import (
    assert_valid_mask,
    bruteforce_block_optimum,
    linprog_blocks_optimum,
    networkx_block_optimum,
)

RTOL = 1e-6  # optimum values agree within 1e-6 of the block's total |score|


def _values(blocks: torch.Tensor, masks: torch.Tensor) -> np.ndarray:
    return (blocks.double() * masks).sum(dim=(1, 2)).numpy()


def _assert_exactly_n(masks: torch.Tensor, n: int) -> None:
    assert masks.dtype == torch.bool
    assert bool((masks.sum(dim=2) == n).all()), "a block row keeps other than n"
    assert bool((masks.sum(dim=1) == n).all()), "a block column keeps other than n"


def _assert_same_optimum(blocks: torch.Tensor, ours: np.ndarray, reference: np.ndarray) -> None:
    scale = blocks.double().abs().sum(dim=(1, 2)).numpy()
    gap = np.abs(ours - reference)
    worst = int(np.argmax(gap - RTOL * scale))
    assert (gap <= RTOL * scale).all(), (
        f"block {worst}: exact kept {ours[worst]!r}, reference optimum {reference[worst]!r}"
    )


def _check_against_linprog(blocks: torch.Tensor, n: int) -> torch.Tensor:
    masks = exact.exact_blocks(blocks, n)
    _assert_exactly_n(masks, n)
    reference, ref_masks = linprog_blocks_optimum(blocks, n)
    _assert_exactly_n(ref_masks, n)
    _assert_same_optimum(blocks, _values(blocks, masks), reference)
    return masks


# --- m = 4: enumeration ---------------------------------------------------------------------------


@pytest.mark.parametrize(("n", "count"), [(1, 24), (2, 90), (3, 24)])
def test_m4_enumerates_every_valid_block(n: int, count: int) -> None:
    patterns = valid_block_masks(4, n)
    assert patterns.shape == (count, 4, 4)
    _assert_exactly_n(patterns, n)
    codes = [int("".join(str(int(v)) for v in p.reshape(-1).tolist()), 2) for p in patterns]
    assert codes == sorted(codes, reverse=True) and len(set(codes)) == count  # lower flat indices first


def test_m4_ties_keep_lower_flat_indices() -> None:
    mask = nmsparse.find_mask(torch.ones(4, 4), "2:4-T", method="exact")
    assert mask.int().tolist() == [[1, 1, 0, 0], [1, 1, 0, 0], [0, 0, 1, 1], [0, 0, 1, 1]]


@pytest.mark.parametrize("n", [1, 2, 3])
def test_m4_matches_bruteforce_bit_for_bit(n: int) -> None:
    # Small integers: many exact ties, and float64 sums of them are exact, so the tie rule is testable.
    blocks = torch.randint(0, 4, (150, 4, 4)).float()
    blocks[:50] = torch.randn(50, 4, 4)  # and some continuous scores
    masks = exact.exact_blocks(blocks, n)
    for index, block in enumerate(blocks):
        value, reference = bruteforce_block_optimum(block, n)
        assert torch.equal(masks[index], reference), f"block {index}: {block.tolist()}"


@pytest.mark.parametrize("n", [1, 2, 3])
def test_m4_matches_linprog(n: int) -> None:
    _check_against_linprog(torch.randn(2000, 4, 4).abs(), n)


# --- m >= 8: min-cost flow ------------------------------------------------------------------------


@pytest.mark.parametrize("n", range(1, 8))
def test_m8_matches_linprog(n: int) -> None:
    _check_against_linprog(torch.randn(1000, 8, 8).abs(), n)


@pytest.mark.parametrize("n", [1, 4, 8, 11, 15])
def test_m16_matches_linprog(n: int) -> None:
    _check_against_linprog(torch.randn(150, 16, 16).abs(), n)


@pytest.mark.parametrize("n", [1, 16, 24])
def test_m32_matches_linprog(n: int) -> None:
    _check_against_linprog(torch.randn(6, 32, 32).abs(), n)


@pytest.mark.parametrize(
    ("m", "ns", "count"), [(4, (1, 2, 3), 10), (8, range(1, 8), 12), (16, (3, 8, 13), 4), (32, (16,), 1)]
)
def test_matches_networkx(m: int, ns: range | tuple[int, ...], count: int) -> None:
    for n in ns:
        blocks = torch.randn(count, m, m)  # signed scores: exactly n per row and column still binds
        masks = exact.exact_blocks(blocks, n)
        _assert_exactly_n(masks, n)
        reference = np.array([networkx_block_optimum(block, n)[0] for block in blocks])
        _assert_same_optimum(blocks, _values(blocks, masks), reference)


# --- adversarial scores ---------------------------------------------------------------------------


def _adversarial(kind: str, count: int, m: int, generator: torch.Generator) -> torch.Tensor:
    shape = (count, m, m)
    if kind == "all-equal":
        return torch.full(shape, 0.5)
    if kind == "few-distinct":
        return torch.randint(0, 3, shape, generator=generator).float()
    if kind == "mostly-zero":
        values = torch.randn(shape, generator=generator).abs()
        return values * (torch.rand(shape, generator=generator) < 0.1)
    if kind == "all-zero":
        return torch.zeros(shape)
    if kind == "cauchy":
        return torch.empty(shape).cauchy_(generator=generator).abs()
    if kind == "negative":
        return -torch.rand(shape, generator=generator)
    if kind == "signed":
        return torch.randn(shape, generator=generator)
    if kind == "integer":
        return torch.randint(-1000, 1000, shape, generator=generator).double()
    if kind == "huge-fp32":
        return torch.rand(shape, generator=generator) * 3e38
    if kind == "huge-fp64":
        return torch.rand(shape, generator=generator, dtype=torch.float64) * 1e305
    if kind == "tiny-fp32":  # subnormal floats
        return torch.rand(shape, generator=generator) * 1e-40
    if kind == "tiny-fp64":
        return torch.rand(shape, generator=generator, dtype=torch.float64) * 1e-300
    if kind == "mixed-scale":
        return (
            torch.randn(shape, generator=generator, dtype=torch.float64)
            * 10.0 ** torch.randint(-30, 30, shape, generator=generator).double()
        )
    raise AssertionError(kind)


ADVERSARIAL = [
    "all-equal",
    "few-distinct",
    "mostly-zero",
    "all-zero",
    "cauchy",
    "negative",
    "signed",
    "integer",
    "huge-fp32",
    "huge-fp64",
    "tiny-fp32",
    "tiny-fp64",
    "mixed-scale",
]


@pytest.mark.parametrize("kind", ADVERSARIAL)
@pytest.mark.parametrize(("m", "n"), [(4, 2), (8, 3), (8, 4), (8, 6), (16, 8)])
def test_adversarial_scores(kind: str, m: int, n: int) -> None:
    generator = torch.Generator().manual_seed(1234)
    blocks = _adversarial(kind, 60 if m < 16 else 10, m, generator)
    _check_against_linprog(blocks, n)


@pytest.mark.parametrize("pattern", ["2:4-T", "4:8-T", "8:16-T"])
def test_fp16_and_bf16_weights(pattern: str) -> None:
    p = nmsparse.NMPattern.parse(pattern)
    weight = torch.randn(2 * p.m, 3 * p.m)
    for dtype in (torch.float16, torch.bfloat16):
        low = weight.to(dtype)
        mask = nmsparse.find_mask(low, pattern, method="exact")
        assert_valid_mask(mask, pattern, exact_n=True, shape=low.shape)
        blocks = to_blocks(low.float().abs(), p.m)
        reference, _ = linprog_blocks_optimum(blocks, p.n)
        _assert_same_optimum(blocks, _values(blocks, to_blocks(mask, p.m)), reference)


# --- at most n per row and column -----------------------------------------------------------------


@pytest.mark.parametrize(("m", "n"), [(4, 1), (4, 2), (4, 3), (8, 2), (8, 4), (8, 6), (16, 8), (32, 16)])
@pytest.mark.parametrize("kind", ["abs", "signed", "few-distinct"])
def test_at_most_matches_linprog(m: int, n: int, kind: str) -> None:
    count = {4: 400, 8: 300, 16: 40, 32: 3}[m]
    blocks = torch.randn(count, m, m)
    if kind == "abs":
        blocks = blocks.abs()
    elif kind == "few-distinct":
        blocks = torch.randint(-1, 3, (count, m, m)).float()
    relaxed = exact.exact_blocks(blocks, n, at_most=True)
    assert bool((relaxed.sum(dim=1) <= n).all() and (relaxed.sum(dim=2) <= n).all())
    reference, _ = linprog_blocks_optimum(blocks, n, exact_n=False)
    ours = _values(blocks, relaxed)
    _assert_same_optimum(blocks, ours, reference)
    assert (ours >= _values(blocks, exact.exact_blocks(blocks, n)) - 1e-9).all()  # a relaxation keeps more


def test_at_most_can_beat_exactly_n_on_positive_scores() -> None:
    # Row 0 and column 3 stay short: the entry that would fill both, (0, 3), is already kept.
    block = torch.tensor(
        [
            [
                [0.708, 0.104, 1.161, 1.340],
                [1.873, 1.241, 2.034, 0.136],
                [0.501, 0.808, 1.298, 0.025],
                [1.252, 0.889, 0.724, 0.431],
            ]
        ]
    )
    relaxed = exact.exact_blocks(block, 2, at_most=True)
    strict = exact.exact_blocks(block, 2)
    assert relaxed[0].int().tolist() == [[0, 0, 0, 1], [1, 0, 1, 0], [0, 1, 1, 0], [1, 1, 0, 0]]
    assert float(_values(block, relaxed)[0]) == pytest.approx(9.494, abs=1e-3)
    assert float(_values(block, strict)[0]) == pytest.approx(9.405, abs=1e-3)
    assert networkx_block_optimum(block[0], 2, exact_n=False)[0] == pytest.approx(9.494, abs=1e-3)


def test_at_most_matches_networkx() -> None:
    for m, n in ((4, 2), (8, 3), (8, 5), (16, 8)):
        blocks = torch.randn(6, m, m)
        ours = _values(blocks, exact.exact_blocks(blocks, n, at_most=True))
        reference = np.array([networkx_block_optimum(block, n, exact_n=False)[0] for block in blocks])
        _assert_same_optimum(blocks, ours, reference)


# --- the compiled kernel --------------------------------------------------------------------------


@pytest.mark.parametrize(("m", "ns", "count"), [(8, range(1, 8), 40), (16, (2, 8, 13), 10), (5, (2, 3), 20)])
def test_kernel_matches_python_twin_bit_for_bit(m: int, ns: range | tuple[int, ...], count: int) -> None:
    kernel = exact.flow_kernel()
    if exact.KERNEL_INFO["backend"] != "numba":
        pytest.skip("numba is not installed: the kernel is its Python twin")
    for n in ns:
        blocks = torch.randn(count, m, m, dtype=torch.float64)
        blocks[: count // 4] = torch.randint(0, 3, (count // 4, m, m)).double()  # ties
        for at_most in (False, True):
            compiled = np.zeros((count, m, m), dtype=np.bool_)
            python = np.zeros((count, m, m), dtype=np.bool_)
            kernel(blocks.numpy(), n, at_most, compiled)
            kernel.py_func(blocks.numpy(), n, at_most, python)
            assert np.array_equal(compiled, python), f"m={m}, n={n}, at_most={at_most}"


def _scale_kinds(count: int, m: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Blocks for issue 15's scale skip: ties, signed zeros, subnormals, mixed and extreme scales, and blocks whose
    largest and smallest |score| sit at or next to the thresholds of the skip (1, 2**64, 2**-900)."""
    shape = (count, m, m)
    ints = rng.integers(-2, 3, shape).astype(np.float64)
    ints[ints == 0] = rng.choice([0.0, -0.0], int((ints == 0).sum()))
    edges = rng.random(shape)
    top = rng.choice([0.5, 1.0 - 2.0**-53, 1.0, 2.0, 2.0**64 - 2.0**11, 2.0**64, 2.0**63, 2.0**900], count)
    edges *= top[:, None, None]
    edges[:, 0, 0] = top
    edges[:, m - 1, m - 1] = rng.choice(
        [2.0**-900, 2.0**-900 * (1 - 2.0**-53), 2.0**-901, 2.0**-1000, 5e-324, 0.0], count
    )
    edges *= rng.choice([-1.0, 1.0], shape)
    exponents = rng.choice([-1074, -1060, -1022, -950, -901, -900, -899, -100, -1, 0, 1, 60, 64, 65, 900, 1020], shape)
    subnormal = rng.random(shape) * 1e-308
    some = rng.random(shape) < 0.3
    subnormal[some] = 5e-324 * rng.integers(0, 4, int(some.sum()))
    spikes = rng.random(shape) * 1e-3
    spikes[rng.random(shape) < 0.1] = 1e300
    return [
        rng.standard_normal(shape),
        rng.integers(0, 3, shape).astype(np.float64),  # ties
        ints,
        np.ones(shape) + rng.integers(-2, 3, shape) * 2.0**-52,  # near ties
        np.zeros(shape),
        rng.random(shape) * 1e-310,
        subnormal,
        rng.standard_normal(shape) * 10.0 ** rng.integers(-30, 30, shape),
        rng.standard_normal(shape) * np.ldexp(1.0, exponents),
        rng.random(shape) * 1.7e308,
        rng.integers(0, 4, shape).astype(np.float64) * 2.0**1000,
        spikes,
        edges,
        (rng.standard_normal(shape).astype(np.float32) ** 2).astype(np.float64),  # SparseGPT-like, float32 ties
    ]


@pytest.mark.parametrize(("m", "ns", "count"), [(8, range(1, 8), 150), (16, (1, 6, 8, 13), 12), (5, (2, 3), 40)])
def test_kernels_equal_the_always_scaled_arithmetic(m: int, ns: range | tuple[int, ...], count: int) -> None:
    # Issue 15: the kernels skip the per-block power-of-two scale where it provably changes nothing, and m = 8 with
    # exactly n runs its own kernel. Reference: the general kernel on blocks already scaled by numpy to a largest
    # |score| in [0.5, 1) (the kernel then leaves them as they are: the arithmetic before the skip, step for step).
    kernel = exact.flow_kernel()
    kernel8 = exact.flow8_kernel()
    rng = np.random.default_rng(15 + m)
    for kind, blocks in enumerate(_scale_kinds(count, m, rng)):
        amax = np.abs(blocks).max(axis=(1, 2))
        shift = np.where(amax > 0.0, -np.frexp(amax)[1], 0)
        scaled = np.ldexp(blocks, shift[:, None, None])
        for n in ns:
            for at_most in (False, True):
                reference = np.zeros(blocks.shape, dtype=np.bool_)
                kernel(scaled, n, at_most, reference)
                got = np.zeros(blocks.shape, dtype=np.bool_)
                kernel(blocks, n, at_most, got)
                assert np.array_equal(got, reference), f"general: m={m}, n={n}, at_most={at_most}, kind={kind}"
                if m != 8 or at_most:
                    continue
                fast = np.zeros(blocks.shape, dtype=np.bool_)
                kernel8(blocks, n, fast)
                assert np.array_equal(fast, reference), f"m=8 kernel: n={n}, kind={kind}"
                twin = np.zeros(blocks.shape, dtype=np.bool_)
                exact._flow_blocks_np(blocks, n, twin)
                assert np.array_equal(twin, reference), f"numpy twin: n={n}, kind={kind}"
                python = np.zeros((6, m, m), dtype=np.bool_)
                exact._flow8_py(blocks[:6], n, python)  # the m = 8 kernel's own Python run
                assert np.array_equal(python, reference[:6]), f"m=8 kernel in Python: n={n}, kind={kind}"


def test_m8_kernel_serves_flow_blocks_and_exact_blocks() -> None:
    blocks = torch.randn(64, 8, 8, dtype=torch.float64)
    blocks[:16] = torch.randint(0, 3, (16, 8, 8)).double()
    general = exact.flow_kernel()
    for n in (1, 4, 6):
        reference = np.zeros(blocks.shape, dtype=np.bool_)
        general(blocks.numpy(), n, False, reference)
        assert torch.equal(exact.exact_blocks(blocks, n), torch.from_numpy(reference))
        assert torch.equal(exact.flow_blocks(blocks.float(), n, compiled=False), torch.from_numpy(reference))
    assert exact._KERNEL8 is not None and isinstance(exact.KERNEL_INFO["compile_m8_s"], float)


def test_kernel_reports_compile_time() -> None:
    exact.flow_kernel()
    info = exact.KERNEL_INFO
    assert info["backend"] in ("numba", "python")
    if info["backend"] == "python":
        assert info["compile_s"] == 0.0  # nothing to compile
    else:  # flow_kernel times the first call of the compiled kernel before returning it
        assert isinstance(info["compile_s"], float) and math.isfinite(info["compile_s"])


def test_python_fallback_without_numba(monkeypatch: pytest.MonkeyPatch) -> None:
    blocks = torch.randn(20, 8, 8)
    expected = exact.exact_blocks(blocks, 4)
    expected_relaxed = exact.exact_blocks(blocks, 4, at_most=True)
    monkeypatch.setattr(exact, "_KERNEL", None)
    monkeypatch.setattr(exact, "_KERNEL8", None)
    monkeypatch.setattr(exact, "KERNEL_INFO", {})
    monkeypatch.setitem(sys.modules, "numba", None)  # makes `import numba` raise ImportError
    with pytest.warns(RuntimeWarning, match="numba is not importable"):
        fallback = exact.exact_blocks(blocks, 4)
        assert torch.equal(exact.exact_blocks(blocks, 4, at_most=True), expected_relaxed)
    assert exact.KERNEL_INFO["backend"] == "python"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # warned once, not on every call
        exact.exact_blocks(blocks, 4)
    assert torch.equal(fallback, expected)


# --- find_mask integration ------------------------------------------------------------------------


@pytest.mark.parametrize("pattern", ["2:4-T", "4:8-T", "8:16-T"])
def test_deterministic(pattern: str) -> None:
    weight = torch.randn(64, 128)
    weight[:16] = torch.randint(0, 3, (16, 128)).float()  # ties
    first = nmsparse.find_mask(weight, pattern, method="exact")
    second = nmsparse.find_mask(weight.clone(), pattern, method="exact")
    assert torch.equal(first, second)


@pytest.mark.parametrize("pattern", ["1:4-T", "2:4-T", "4:8-T", "6:8-T", "8:16-T"])
def test_conv_weight(pattern: str) -> None:
    p = nmsparse.NMPattern.parse(pattern)
    weight = torch.randn(2 * p.m, p.m, 3, 3)
    mask = nmsparse.find_mask(weight, pattern, method="exact")
    assert_valid_mask(mask, pattern, exact_n=True, shape=weight.shape)
    # Blocks span output channels x (kh, kw, in) of the matrix view; each one is optimal.
    blocks = to_blocks(to_matrix(weight.abs()), p.m)
    mask_blocks = to_blocks(to_matrix(mask), p.m)
    reference, _ = linprog_blocks_optimum(blocks, p.n)
    _assert_same_optimum(blocks, _values(blocks, mask_blocks), reference)
    assert torch.equal(mask_blocks, exact.exact_blocks(blocks, p.n))


@pytest.mark.parametrize("pattern", ["2:4-T", "4:8-T"])
def test_parameter_weight(pattern: str) -> None:
    layer = torch.nn.Linear(16, 8 if pattern == "4:8-T" else 4)
    mask = nmsparse.find_mask(layer.weight, pattern, method="exact")
    assert_valid_mask(mask, pattern, exact_n=True, shape=layer.weight.shape)
    assert not mask.requires_grad


def test_scores_replace_magnitude() -> None:
    weight = torch.randn(8, 8)
    scores = -weight  # signed scores: the mask must follow them, not |weight|
    mask = nmsparse.find_mask(weight, "4:8-T", method="exact", scores=scores)
    assert_valid_mask(mask, "4:8-T", exact_n=True)
    reference, _ = linprog_blocks_optimum(scores[None], 4)
    assert abs(float((scores.double() * mask).sum()) - reference[0]) <= RTOL * float(scores.abs().sum())


def test_exact_keeps_at_least_plain_greedy() -> None:
    weight = torch.randn(64, 64)
    for pattern in ("2:4-T", "4:8-T", "8:16-T"):
        kept = nmsparse.retained_magnitude(weight, nmsparse.find_mask(weight, pattern, method="exact"))
        greedy = nmsparse.retained_magnitude(weight, nmsparse.find_mask(weight, pattern, method="greedy"))
        plain = nmsparse.retained_magnitude(weight, nmsparse.find_mask(weight, pattern.removesuffix("-T")))
        assert greedy <= kept <= plain


def test_progress_bar_does_not_change_the_mask() -> None:
    weight = torch.randn(16, 32)
    quiet = exact.exact_matrix(weight.abs(), nmsparse.NMPattern.parse("4:8-T"), progress=False)
    loud = exact.exact_matrix(weight.abs(), nmsparse.NMPattern.parse("4:8-T"), progress=True)
    assert torch.equal(quiet, loud)


def test_exact_blocks_rejects_bad_input() -> None:
    with pytest.raises(PatternError, match="1 <= n < m=8"):
        exact.exact_blocks(torch.rand(2, 8, 8), 8)
    with pytest.raises(PatternError, match="1 <= n < m=8"):
        exact.exact_blocks(torch.rand(2, 8, 8), 0)
    with pytest.raises(InputError, match=r"\[B, m, m\]"):
        exact.exact_blocks(torch.rand(8, 8), 4)
    with pytest.raises(InputError, match="floating"):
        exact.exact_blocks(torch.ones(2, 8, 8, dtype=torch.int64), 4)
    assert exact.exact_blocks(torch.rand(0, 8, 8), 4).shape == (0, 8, 8)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("pattern", ["2:4-T", "4:8-T"])
def test_cuda_matches_cpu(pattern: str) -> None:
    weight = torch.randn(64, 128)
    cpu = nmsparse.find_mask(weight, pattern, method="exact")
    cuda = nmsparse.find_mask(weight.cuda(), pattern, method="exact")
    assert cuda.device.type == "cuda"
    p = nmsparse.NMPattern.parse(pattern)
    blocks = to_blocks(weight.abs(), p.m)
    on_cuda = _values(blocks, to_blocks(cuda.cpu(), p.m))
    np.testing.assert_allclose(on_cuda, _values(blocks, to_blocks(cpu, p.m)), rtol=1e-6)


# --- extreme float64 (issue 7) -----------------------------------------------------------


def _scaled_optimum(blocks: torch.Tensor, masks: torch.Tensor, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Kept sums of ``masks`` and the reference optimum, both on the blocks scaled by one power of two per block
    (exact up to the last bits of values 2^1022 times below the block's largest), where sums cannot overflow."""
    array = blocks.double().numpy()
    amax = np.abs(array).reshape(array.shape[0], -1).max(axis=1)
    exponent = np.frexp(np.where(amax > 0, amax, 1.0))[1]
    scaled = torch.from_numpy(np.ldexp(array, -exponent[:, None, None]))
    reference, _ = linprog_blocks_optimum(scaled, n)
    return _values(scaled, masks), reference


@pytest.mark.parametrize("pattern", ["4:8-T", "2:8-T", "6:8-T", "8:16-T", "2:4-T"])
def test_subnormal_maximum_gives_valid_optimal_mask(pattern: str) -> None:
    # Regression: the per-block scale 2**-e overflowed to inf for a subnormal maximum (e = -1063), so every
    # score became inf or NaN and the 4:8-T mask kept all 8 of the first four columns ([8,8,8,8,0,0,0,0]).
    p = nmsparse.NMPattern.parse(pattern)
    one = torch.zeros(p.m, p.m, dtype=torch.float64)
    one[3 % p.m, 5 % p.m] = 1e-320
    generator = torch.Generator().manual_seed(7)
    weights = [
        one,
        torch.rand(p.m, 2 * p.m, dtype=torch.float64, generator=generator) * 1e-310,
        torch.rand(2 * p.m, p.m, dtype=torch.float64, generator=generator) * 5e-324 * 1000,
    ]
    for weight in weights:
        mask = nmsparse.find_mask(weight, pattern, method="exact")
        assert_valid_mask(mask, pattern, exact_n=True, shape=weight.shape)
        blocks = to_blocks(weight.abs(), p.m)
        ours, reference = _scaled_optimum(blocks, to_blocks(mask, p.m), p.n)
        _assert_same_optimum(blocks * 0 + 1, ours, reference)  # scaled blocks: |score| <= 1 per entry
        assert torch.isfinite(torch.tensor(nmsparse.retained_magnitude(weight, mask)))


@pytest.mark.parametrize("pattern", ["2:4-T", "1:4-T", "3:4-T", "4:8-T", "8:16-T"])
def test_near_overflow_float64_is_optimal(pattern: str) -> None:
    # Regression: for m = 4 the float64 sums of values near 1e308 overflowed to inf, argmax then took the first
    # valid mask (kept 0.90 of the optimum), and retained_magnitude returned NaN (inf / inf).
    p = nmsparse.NMPattern.parse(pattern)
    generator = torch.Generator().manual_seed(11)
    weight = torch.rand(4 * p.m, 4 * p.m, dtype=torch.float64, generator=generator) * 1.7976931348623157e308
    weight[0, : p.m] = torch.finfo(torch.float64).max  # and exact ties at the maximum
    mask = nmsparse.find_mask(weight, pattern, method="exact")
    assert_valid_mask(mask, pattern, exact_n=True, shape=weight.shape)
    blocks = to_blocks(weight, p.m)
    ours, reference = _scaled_optimum(blocks, to_blocks(mask, p.m), p.n)
    np.testing.assert_allclose(ours, reference, rtol=1e-12)
    if p.m == 4:  # bit-equal to brute force on the scaled blocks (same tie rule)
        scaled = torch.from_numpy(np.ldexp(blocks.numpy(), -1024))
        for index in range(4):
            assert torch.equal(to_blocks(mask, 4)[index], bruteforce_block_optimum(scaled[index], p.n)[1])
    kept = nmsparse.retained_magnitude(weight, mask)
    assert p.density < kept < 1.0
    at_most = exact.exact_blocks(blocks, p.n, at_most=True)
    assert bool((at_most.sum(1) <= p.n).all() and (at_most.sum(2) <= p.n).all())
    assert (_scaled_optimum(blocks, at_most, p.n)[0] >= ours - 1e-12).all()


def test_mixed_extremes_in_one_weight() -> None:
    # Blocks of wildly different scales side by side: each block is solved at its own scale.
    weight = torch.rand(16, 16, dtype=torch.float64)
    weight[:8, :8] *= 1e-315
    weight[8:, 8:] *= 1e307
    weight[:8, 8:] = -weight[:8, 8:] * 1e300
    for pattern in ("2:4-T", "4:8-T"):
        p = nmsparse.NMPattern.parse(pattern)
        mask = nmsparse.find_mask(weight, pattern, method="exact", scores=weight)
        assert_valid_mask(mask, pattern, exact_n=True)
        blocks = to_blocks(weight, p.m)
        ours, reference = _scaled_optimum(blocks, to_blocks(mask, p.m), p.n)
        np.testing.assert_allclose(ours, reference, rtol=1e-12, atol=1e-12)
