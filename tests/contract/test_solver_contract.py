"""The solver contract: every registered (method, backend) goes through the same checks.

A new solver is tested by registering it. For each registration that can run here, on every pattern it declares
(from a fixed list), every score dtype, Linear and Conv2d layouts and adversarial inputs (ties, all zeros,
negative scores, subnormals, values near the dtype's maximum, tiny and non-contiguous tensors):

* the mask is ``torch.bool``, of the weight's shape, on the weight's device, and obeys the pattern (exactly ``n``
  where the solver declares ``exactly_n``), checked here independently of ``find_mask``'s own check;
* two calls give the same mask;
* exact solvers reach the optimum of an independent reference: brute force over every block mask for ``m = 4``,
  scipy's HiGHS LP for larger blocks, the sorted top-n for plain groups (values compared on every block scaled by
  a power of two, so sums cannot overflow);
* backends of ``topn``, ``greedy``, ``greedy-repair`` and ``exact`` at m = 4 (whose tie rule is defined) are
  bit-equal to the torch one.

GPU backends are included where registered (``nmsparse.solvers._kernels``) and runnable.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import nmsparse
from nmsparse.errors import SolverError
from nmsparse.layout import to_blocks, to_matrix
from nmsparse.pattern import NMPattern
from nmsparse.solvers import SolverSpec, find_mask, list_solvers, registered_solver
from nmsparse.solvers._kernels import register_gpu_solvers
from nmsparse.solvers.greedy import greedy_matrix
from nmsparse.testing import assert_valid_mask, bruteforce_block_optimum, linprog_blocks_optimum

register_gpu_solvers()  # again for CPU tensors when TRITON_INTERPRET=1 was set after nmsparse was imported

#: Patterns run with every kind of input and dtype ...
PATTERNS = ["2:4", "4:8", "2:4-T", "3:4-T", "4:8-T", "6:8-T"]
#: ... and patterns run on fewer inputs (m = 16 blocks are slower to solve and to check against the LP).
LIGHT_PATTERNS = ["1:4", "8:16", "1:4-T", "8:16-T"]
LIGHT_KINDS = ["gaussian", "ties", "huge"]
DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.float64]
KINDS = [
    "gaussian",
    "ties",
    "zeros",
    "negative-scores",
    "signed-scores",
    "subnormal",
    "huge",
    "tiny-shape",
    "non-contiguous",
    "conv2d",
]
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
#: Kept sums may differ from the reference by this fraction of the block's total |score| (fp32 sums on GPUs).
RTOL = 2e-6


def _cases(patterns: list[str]) -> list[tuple[SolverSpec, str]]:
    cases = []
    for spec in list_solvers():
        for pattern in patterns:
            p = NMPattern.parse(pattern)
            if (p.transposable and spec.transposable) or (not p.transposable and spec.plain):
                if spec.ms is None or p.m in spec.ms:
                    cases.append((spec, pattern))
    return cases


CASES = _cases(PATTERNS)
LIGHT_CASES = _cases(LIGHT_PATTERNS)


def _params(cases: list[tuple[SolverSpec, str]]) -> list[object]:
    """The cases as pytest params. Triton on a CPU runs in its interpreter, 0.3 s a case (9 s of the fast loop):
    marked slow, so ``make test`` runs it and ``make test-fast`` leaves it to ``tests/kernels``' bit-equality checks
    of the same kernels."""
    return [
        pytest.param(
            spec,
            pattern,
            id=f"{spec.label}-{pattern}",
            marks=[pytest.mark.slow] if spec.backend == "triton" and not torch.cuda.is_available() else [],
        )
        for spec, pattern in cases
    ]


def _weight(
    kind: str, pattern: NMPattern, dtype: torch.dtype, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``(weight, scores or None)`` of ``kind`` in ``dtype`` for ``pattern``."""
    m = pattern.m
    rows = m if pattern.transposable else 2
    shape = (rows * 2, 2 * m)
    finfo = torch.finfo(dtype)
    base = torch.randn(shape, generator=generator, dtype=torch.float64)
    scores = None
    if kind == "ties":
        weight = torch.randint(-2, 3, shape, generator=generator).double()
    elif kind == "zeros":
        weight = torch.zeros(shape, dtype=torch.float64)
    elif kind == "negative-scores":
        weight = base
        scores = -torch.rand(shape, generator=generator, dtype=torch.float64)
    elif kind == "signed-scores":
        weight = base
        scores = torch.randn(shape, generator=generator, dtype=torch.float64)
    elif kind == "subnormal":  # every value, the largest included, below the dtype's smallest normal
        weight = torch.rand(shape, generator=generator, dtype=torch.float64) * finfo.tiny
        weight[0, 0] = 0.0
    elif kind == "huge":  # near the dtype's maximum, with exact ties at the maximum
        weight = (torch.rand(shape, generator=generator, dtype=torch.float64) * 0.5 + 0.5) * finfo.max
        weight[0, :m] = finfo.max
        weight[1] *= -1
    elif kind == "tiny-shape":
        weight = torch.randn((m, m) if pattern.transposable else (1, m), generator=generator, dtype=torch.float64)
    elif kind == "non-contiguous":
        weight = torch.randn(shape[::-1], generator=generator, dtype=torch.float64).t()
    elif kind == "conv2d":
        weight = torch.randn(shape[0], m, 3, 3, generator=generator, dtype=torch.float64)
    else:
        weight = base
    weight = weight.to(dtype)
    if kind == "non-contiguous":
        assert not weight.is_contiguous()
    if scores is not None:
        scores = scores.to(dtype)
    assert bool(torch.isfinite(weight).all())
    return weight, scores


def _scaled(groups: np.ndarray) -> np.ndarray:
    """Every group/block (first axis) scaled by a power of two to a largest |value| in [0.5, 1)."""
    flat = groups.reshape(groups.shape[0], -1)
    amax = np.abs(flat).max(axis=1)
    exponent = np.frexp(np.where(amax > 0, amax, 1.0))[1]
    return np.ldexp(groups, -exponent.reshape((-1,) + (1,) * (groups.ndim - 1)))


def _assert_optimal(importance: torch.Tensor, mask: torch.Tensor, pattern: NMPattern, label: str) -> None:
    """Kept sum of every block (group) equals the reference optimum (exactly n per row and column / group)."""
    matrix = to_matrix(importance).to(torch.float64).cpu()
    keep = to_matrix(mask).cpu()
    if pattern.transposable:
        blocks = _scaled(to_blocks(matrix, pattern.m).numpy())
        masks = to_blocks(keep, pattern.m).numpy()
        if pattern.m == 4:
            reference = np.array([bruteforce_block_optimum(block, pattern.n)[0] for block in blocks])
        else:
            reference = linprog_blocks_optimum(blocks, pattern.n)[0]
    else:
        blocks = _scaled(matrix.reshape(-1, pattern.m).numpy())
        masks = keep.reshape(-1, pattern.m).numpy()
        reference = -np.sort(-blocks, axis=1)[:, : pattern.n].sum(axis=1)
    axes = tuple(range(1, blocks.ndim))
    ours = (blocks * masks).sum(axis=axes)
    tolerance = RTOL * np.abs(blocks).sum(axis=axes) + 1e-300
    gap = np.abs(ours - reference)
    worst = int(np.argmax(gap - tolerance))
    assert (gap <= tolerance).all(), (
        f"{label} {pattern}: block {worst} keeps {ours[worst]!r}, the optimum is {reference[worst]!r}"
    )


def _run(spec: SolverSpec, pattern_text: str, kind: str, dtype: torch.dtype, device: str) -> torch.Tensor | None:
    pattern = NMPattern.parse(pattern_text)
    if spec.why_not(pattern, device, dtype) is not None:
        return None
    generator = torch.Generator().manual_seed(abs(hash((pattern_text, kind, str(dtype)))) % (2**31))
    weight, scores = _weight(kind, pattern, dtype, generator)
    weight = weight.to(device)
    scores = None if scores is None else scores.to(device)
    call = {"method": spec.name, "backend": spec.backend, "scores": scores, "progress": False}
    mask = find_mask(weight, pattern, **call)
    # find_mask checked the result; check again independently of it.
    assert mask.dtype == torch.bool and mask.shape == weight.shape and mask.device == weight.device
    assert_valid_mask(mask, pattern, exact_n=spec.exactly_n, shape=weight.shape)
    assert torch.equal(mask, find_mask(weight.clone(), pattern, **call)), f"{spec.label}: not deterministic"
    if spec.exact:
        importance = weight.abs() if scores is None else scores
        _assert_optimal(importance, mask, pattern, spec.label)
    return mask


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(("spec", "pattern"), _params(CASES))
def test_solver_contract(spec: SolverSpec, pattern: str, kind: str) -> None:
    _run_everywhere(spec, pattern, kind, DTYPES if kind != "conv2d" else [torch.float32])


@pytest.mark.parametrize("kind", LIGHT_KINDS)
@pytest.mark.parametrize(("spec", "pattern"), _params(LIGHT_CASES))
def test_solver_contract_more_patterns(spec: SolverSpec, pattern: str, kind: str) -> None:
    _run_everywhere(spec, pattern, kind, [torch.float32, torch.float64])


def _run_everywhere(spec: SolverSpec, pattern: str, kind: str, dtypes: list[torch.dtype]) -> None:
    ran = 0
    for device in DEVICES:
        for dtype in dtypes:
            ran += _run(spec, pattern, kind, dtype, device) is not None
    if not ran:
        pytest.skip(f"{spec.label} cannot run {pattern} on {DEVICES} here")


TWIN_METHODS = ["topn", "greedy", "greedy-repair"]


TWIN_CASES = [
    (method, pattern)
    for method in TWIN_METHODS
    for pattern in (["2:4", "4:8", "3:8"] if method == "topn" else ["2:4-T", "4:8-T", "8:16-T"])
]
# exact with m = 4 has a tie rule too (the mask keeping the lower flat indices): exact/torch is the Triton twin.
TWIN_CASES += [("exact", pattern) for pattern in ["1:4-T", "2:4-T", "3:4-T"]]


@pytest.mark.parametrize(("method", "pattern"), TWIN_CASES)
@pytest.mark.parametrize("device", DEVICES)
def test_backends_of_a_tie_ruled_method_are_bit_equal(method: str, pattern: str, device: str) -> None:
    p = NMPattern.parse(pattern)
    specs = [s for s in list_solvers(method) if s.why_not(p, device, torch.float32) is None]
    reference = next((s for s in specs if s.backend == "torch"), None)
    if reference is None or len(specs) < 2:
        pytest.skip(f"{method} {pattern}: fewer than two backends on {device}")
    generator = torch.Generator().manual_seed(3)
    weight = torch.randn(4 * p.m, 6 * p.m, generator=generator)
    weight[: 2 * p.m] = weight[: 2 * p.m].round()  # ties
    weight = weight.to(device)
    expected = find_mask(weight, pattern, method=method, backend="torch")
    for spec in specs:
        assert torch.equal(find_mask(weight, pattern, method=method, backend=spec.backend), expected), spec.label


def test_every_builtin_is_covered() -> None:
    covered = {spec.label for spec, _ in CASES + LIGHT_CASES}
    assert {
        "topn/torch",
        "exact/torch",
        "exact/numba",
        "exact/python",
        "greedy/torch",
        "greedy/numba",
        "greedy-repair/torch",
        "greedy-repair/numba",
    } <= covered
    missing = {spec.label for spec in list_solvers()} - covered
    assert not missing, f"registered solvers that take none of the contract's patterns: {sorted(missing)}"


# --- the contract catches bad solvers -----------------------------------------------------------------------


def test_a_deliberately_wrong_solver_raises_solver_error() -> None:
    def one_bad_block(scores: torch.Tensor, pattern: NMPattern, progress: bool | None) -> torch.Tensor:
        mask = greedy_matrix(scores, pattern)
        mask[: pattern.m, : pattern.m] = True  # block 0 keeps everything
        return mask

    with registered_solver("wrong", one_bad_block, backend="test", transposable=True) as spec:
        with pytest.raises(SolverError, match=r"wrong/test.*invalid 4:8-T mask.*block 0"):
            find_mask(torch.randn(16, 16), "4:8-T", method="wrong")
        with pytest.raises(SolverError, match="wrong/test"):
            _run(spec, "2:4-T", "gaussian", torch.float32, "cpu")
    assert all(s.label != "wrong/test" for s in list_solvers())


def test_a_suboptimal_solver_claiming_exact_fails_the_contract() -> None:
    with registered_solver("fake-exact", greedy_matrix, backend="test", transposable=True, exact=True) as spec:
        with pytest.raises(AssertionError, match="the optimum is"):
            for kind in ("gaussian", "ties"):  # greedy misses the optimum on some of these blocks
                for seed_pattern in ("4:8-T", "8:16-T", "2:4-T"):
                    _run(spec, seed_pattern, kind, torch.float64, "cpu")


def test_a_nondeterministic_solver_fails_the_contract() -> None:
    calls = []

    def flaky(scores: torch.Tensor, pattern: NMPattern, progress: bool | None) -> torch.Tensor:
        calls.append(1)
        shift = len(calls) % 2
        mask = torch.zeros(scores.shape, dtype=torch.bool)
        mask.view(-1, pattern.m)[:, shift : shift + pattern.n] = True
        return mask

    with registered_solver("flaky", flaky, backend="test", plain=True, exactly_n=True) as spec:
        with pytest.raises(AssertionError, match="not deterministic"):
            _run(spec, "2:4", "gaussian", torch.float32, "cpu")


def test_reference_sanity() -> None:
    # The scaled comparison really compares: a block whose optimum keeps the diagonal.
    pattern = NMPattern.parse("1:4-T")
    scores = torch.eye(4, dtype=torch.float64) * 1e308 + 1.0
    _assert_optimal(scores, torch.eye(4, dtype=torch.bool), pattern, "eye")
    with pytest.raises(AssertionError):
        _assert_optimal(scores, torch.eye(4, dtype=torch.bool).roll(1, dims=1), pattern, "shifted")
    assert math.isclose(float(nmsparse.retained_magnitude(scores, torch.eye(4, dtype=torch.bool))), 1.0)
