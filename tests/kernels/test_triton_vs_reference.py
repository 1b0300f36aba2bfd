"""Every Triton mask kernel against its torch twin (masks bit-equal), and the twins against the CPU solvers.

The kernels are reached the way users reach them, through the solver registry (``find_mask(..., backend=)``,
one validation); the deprecated ``nmsparse.kernels.<fn>(backend=)`` aliases are checked to warn and forward.
On a CPU machine the kernels run under ``TRITON_INTERPRET=1`` (set by this folder's conftest) on tiny shapes;
with CUDA they run compiled, and the ``gpu`` tests add full-size checks.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

import nmsparse.kernels as K
from nmsparse import find_mask
from nmsparse.errors import BackendUnavailableError, ConfigError, InputError, PatternError, ShapeError
from nmsparse.kernels import reference as ref
from nmsparse.layout import from_blocks, to_blocks
from nmsparse.solvers.registry import resolve

HAVE_TRITON = K.has_triton()
if HAVE_TRITON:  # this folder's conftest set TRITON_INTERPRET after nmsparse registered its solvers
    from nmsparse.solvers._kernels import register_gpu_solvers

    register_gpu_solvers()
CUDA = torch.cuda.is_available()
DEVICE = "cuda" if CUDA else "cpu"
needs_triton = [pytest.mark.triton, pytest.mark.skipif(not HAVE_TRITON, reason="triton is not importable")]
DTYPES = [torch.float32, torch.float16, torch.bfloat16]


def mixed_scores(
    rows: int, cols: int, *, seed: int, m: int, dtype: torch.dtype = torch.float32, signed: bool = False
) -> torch.Tensor:
    """A matrix whose block rows are of different kinds: Gaussian, ties (small integers), zeros, negatives."""
    gen = torch.Generator().manual_seed(seed)
    parts = []
    kinds = ["gauss", "ties", "zeros", "neg", "gauss_signed" if signed else "gauss"]
    for i in range(rows // m):
        kind = kinds[i % len(kinds)]
        if kind == "gauss":
            part = torch.randn(m, cols, generator=gen).abs()
        elif kind == "gauss_signed":
            part = torch.randn(m, cols, generator=gen)
        elif kind == "ties":
            part = torch.randint(0, 3, (m, cols), generator=gen).float()
        elif kind == "zeros":
            part = torch.zeros(m, cols)
            part[0, 0] = 1.0  # one block with a single non-zero
        else:
            part = -torch.randint(0, 4, (m, cols), generator=gen).float() * 0.5
        parts.append(part)
    return torch.cat(parts).to(dtype)


def enumerate_mask(scores: torch.Tensor, n: int) -> torch.Tensor:
    from nmsparse.solvers.enumerate import enumerate_blocks

    rows, cols = scores.shape
    blocks = to_blocks(scores.float().cpu(), 4).contiguous()
    return from_blocks(enumerate_blocks(blocks, n), rows, cols)


def solve(scores: torch.Tensor, pattern: str, method: str, backend: str, *, absolute: bool = False) -> torch.Tensor:
    """``find_mask`` on a score matrix (``absolute``: of ``|scores|``), as the registry runs a kernel."""
    return find_mask(scores, pattern, method=method, backend=backend, scores=scores.abs() if absolute else scores)


def exact_t(scores: torch.Tensor, n: int, m: int, backend: str, *, absolute: bool = False) -> torch.Tensor:
    torch_backend = "torch" if m == 4 else "torch-flow"
    return solve(scores, f"{n}:{m}-T", "exact", torch_backend if backend == "torch" else backend, absolute=absolute)


def greedy_twin(scores: torch.Tensor, n: int, m: int) -> torch.Tensor:
    return solve(scores, f"{n}:{m}-T", "greedy", "torch")


def topn_twin(scores: torch.Tensor, n: int, m: int) -> torch.Tensor:
    return solve(scores, f"{n}:{m}", "topn", "torch")


def greedy_solver_mask(scores: torch.Tensor, n: int, m: int) -> torch.Tensor:
    from nmsparse.solvers.greedy import greedy_blocks

    rows, cols = scores.shape
    return from_blocks(greedy_blocks(to_blocks(scores.float().cpu(), m).contiguous(), n), rows, cols)


# --------------------------------------------------------------------------------------- twins vs CPU solvers


@pytest.mark.parametrize("n", [1, 2, 3])
@pytest.mark.parametrize("signed", [False, True])
def test_exact4_twin_is_the_enumeration_solver(n: int, signed: bool) -> None:
    scores = mixed_scores(40, 48, seed=n, m=4, signed=signed)
    assert torch.equal(ref.exact_4_t_reference(scores, n), enumerate_mask(scores, n))


def test_exact4_candidates_are_the_valid_masks_in_solver_order() -> None:
    from nmsparse.solvers.enumerate import valid_block_masks

    for n in (1, 2, 3):
        codes = [c[4] for c in ref.exact4_candidates(n)]
        masks = valid_block_masks(4, n).reshape(-1, 16).long()
        weights = 2 ** torch.arange(15, -1, -1)
        assert codes == (masks * weights).sum(dim=1).tolist()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("m", [2, 3, 4])
def test_one_exact_enumeration_serves_the_solver_and_the_twin(m: int, dtype: torch.dtype) -> None:
    # solvers.enumerate and exact/torch run the twin itself: one implementation, the same mask
    from nmsparse.solvers.enumerate import enumerate_blocks

    gen = torch.Generator().manual_seed(m)
    blocks = torch.cat(
        [
            torch.randn(300, m, m, generator=gen),
            torch.randint(0, 3, (300, m, m), generator=gen).float(),
            torch.zeros(2, m, m),
        ]
    ).to(dtype)
    for n in range(1, m):
        got = ref.exact_enum_blocks(blocks, n)
        assert torch.equal(got, enumerate_blocks(blocks, n))
        assert (got.sum(dim=1) == n).all() and (got.sum(dim=2) == n).all()
        if m == 4:
            rows = blocks.shape[0] * 4
            matrix = from_blocks(blocks, rows, 4)
            assert torch.equal(from_blocks(got, rows, 4), ref.exact_4_t_reference(matrix, n))
            if dtype in (torch.float32, torch.float64):
                assert torch.equal(from_blocks(got, rows, 4), exact_t(matrix, n, 4, "torch"))


def test_masked_twin_zeroes_pruned_entries_with_positive_zero() -> None:
    w = -torch.rand(8, 8) - 0.1
    mask, masked = ref.exact_2_4_t_masked_reference(w)
    assert torch.equal(mask, enumerate_mask(w.abs(), 2))
    assert torch.equal(masked[mask], w[mask])
    assert not torch.signbit(masked[~mask]).any()


# ------------------------------------------------------------------------------------------- Triton vs twins


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n", [1, 2, 3])
@pytest.mark.parametrize(("rows", "cols"), [(4, 4), (20, 12)])
def test_exact4_triton_bit_equal(dtype: torch.dtype, n: int, rows: int, cols: int, request) -> None:
    for mark in needs_triton:
        request.applymarker(mark)
    if not HAVE_TRITON:
        pytest.skip("triton is not importable")
    scores = mixed_scores(rows, cols, seed=7 * n + rows, m=4, dtype=dtype, signed=True).to(DEVICE)
    got = exact_t(scores, n, 4, "triton")
    assert got.dtype == torch.bool and got.shape == scores.shape and got.is_contiguous()
    assert torch.equal(got, ref.exact_4_t_reference(scores, n))
    from nmsparse.kernels.triton_kernels import exact4_triton

    assert torch.equal(exact4_triton(scores, n, absolute=False), got)  # the plain kernel function


@pytest.mark.parametrize("backend", ["torch", pytest.param("triton", marks=needs_triton)])
def test_exact24_float64_extremes_stay_optimal(backend: str) -> None:
    from nmsparse.solvers.enumerate import enumerate_blocks

    base = mixed_scores(8, 8, seed=2, m=4, dtype=torch.float64)
    for scale in (1e307, 1e-310):  # sums overflow to inf / subnormals round without the per-block scaling
        scores = (base * scale).to(DEVICE)
        got = exact_t(scores, 2, 4, backend)
        assert torch.equal(got, ref.exact_2_4_t_reference(scores))
        want = from_blocks(enumerate_blocks(to_blocks(base, 4).contiguous(), 2), 8, 8)  # the unscaled problem
        assert torch.equal(got.cpu(), want)


@pytest.mark.triton
@pytest.mark.skipif(not HAVE_TRITON, reason="triton is not importable")
@pytest.mark.parametrize("layout", ["transposed", "sliced"])
def test_exact24_triton_non_contiguous(layout: str) -> None:
    base = mixed_scores(24, 16, seed=3, m=4).to(DEVICE)
    scores = base.t() if layout == "transposed" else base[:, 4:12]
    assert not scores.is_contiguous()
    from nmsparse.kernels.triton_kernels import exact4_triton

    assert torch.equal(exact4_triton(scores, 2, absolute=False), ref.exact_2_4_t_reference(scores))


@pytest.mark.triton
@pytest.mark.skipif(not HAVE_TRITON, reason="triton is not importable")
@pytest.mark.parametrize("dtype", DTYPES)
def test_exact24_masked_triton_bit_equal(dtype: torch.dtype) -> None:
    w = mixed_scores(12, 16, seed=11, m=4, dtype=dtype, signed=True).to(DEVICE)
    w = torch.where(torch.rand(w.shape, device=w.device) < 0.5, -w, w)
    from nmsparse.kernels.triton_kernels import exact4_triton

    masked = torch.empty_like(w)
    mask = exact4_triton(w, 2, absolute=True, out=masked)
    mask_ref, masked_ref = ref.exact_2_4_t_masked_reference(w)
    assert torch.equal(mask, mask_ref)
    assert masked.dtype == dtype and torch.equal(masked, masked_ref)
    assert torch.equal(torch.signbit(masked), torch.signbit(masked_ref))


@pytest.mark.triton
@pytest.mark.skipif(not HAVE_TRITON, reason="triton is not importable")
@pytest.mark.parametrize(
    ("n", "m", "dtype"),
    [
        (2, 4, torch.float32),
        (1, 4, torch.float16),
        (3, 4, torch.bfloat16),
        (4, 8, torch.float32),
        (2, 8, torch.bfloat16),
        (6, 8, torch.float16),
    ],
)
def test_greedy_triton_bit_equal(n: int, m: int, dtype: torch.dtype) -> None:
    scores = mixed_scores(5 * m, 2 * m, seed=n * m, m=m, dtype=dtype, signed=True).to(DEVICE)
    got = solve(scores, f"{n}:{m}-T", "greedy", "triton")
    want = greedy_twin(scores, n, m)
    assert torch.equal(got, want)
    assert torch.equal(want.cpu(), greedy_solver_mask(scores, n, m))


@pytest.mark.triton
@pytest.mark.skipif(not HAVE_TRITON, reason="triton is not importable")
def test_greedy_triton_m16_and_non_contiguous() -> None:
    base = mixed_scores(32, 16, seed=5, m=16, signed=True).to(DEVICE)
    scores = base.t()  # [16, 32], non-contiguous: two blocks, one program
    from nmsparse.kernels.triton_kernels import greedy_t_triton

    assert torch.equal(greedy_t_triton(scores, 8, 16), greedy_twin(scores, 8, 16))


@pytest.mark.triton
@pytest.mark.skipif(not HAVE_TRITON, reason="triton is not importable")
@pytest.mark.parametrize(
    ("n", "m", "dtype"),
    [
        (2, 4, torch.float32),
        (2, 4, torch.bfloat16),
        (1, 4, torch.float16),
        (4, 8, torch.float32),
        (8, 16, torch.bfloat16),
        (2, 6, torch.float32),
        (3, 5, torch.float16),
    ],
)
def test_topn_triton_bit_equal(n: int, m: int, dtype: torch.dtype) -> None:
    scores = mixed_scores(10, 4 * m, seed=m, m=1, dtype=dtype, signed=True).to(DEVICE)
    got = solve(scores, f"{n}:{m}", "topn", "triton")
    assert torch.equal(got, topn_twin(scores, n, m))
    from nmsparse.kernels.triton_kernels import topn_triton

    sliced = mixed_scores(6, 6 * m, seed=m + 1, m=1, dtype=dtype).to(DEVICE)[:, m : 5 * m]
    assert torch.equal(topn_triton(sliced, n, m), topn_twin(sliced, n, m))


@pytest.mark.triton
@pytest.mark.skipif(not HAVE_TRITON, reason="triton is not importable")
def test_absolute_reads_the_weight_itself() -> None:
    from nmsparse.kernels.triton_kernels import exact4_triton, greedy_t_triton, topn_triton

    w = mixed_scores(8, 16, seed=4, m=4, dtype=torch.bfloat16, signed=True).to(DEVICE)
    w = torch.where(torch.arange(w.numel(), device=w.device).reshape(w.shape) % 3 == 0, -w, w)
    assert torch.equal(exact4_triton(w, 2, absolute=True), ref.exact_2_4_t_reference(w.abs()))
    assert torch.equal(greedy_t_triton(w, 4, 8, absolute=True), greedy_twin(w.abs(), 4, 8))
    assert torch.equal(topn_triton(w, 2, 4, absolute=True), topn_twin(w.abs(), 2, 4))


@pytest.mark.triton
@pytest.mark.skipif(not HAVE_TRITON, reason="triton is not importable")
@pytest.mark.parametrize("dtype", [*DTYPES, torch.float64])
def test_subnormal_scores_rank_exactly(dtype: torch.dtype) -> None:
    # Regression: bf16 subnormals compared as floats were flushed to zero (ties), so top-n, greedy and exact
    # kept the wrong entries; keys from the bits (and bf16 widened by a shift) rank them exactly.
    gen = torch.Generator().manual_seed(3)
    s = (torch.rand(8, 16, generator=gen, dtype=torch.float64) * torch.finfo(dtype).tiny).to(dtype)
    s[0, 0] = 0.0
    s[1] *= -1
    s = s.to(DEVICE)
    from nmsparse.kernels.triton_kernels import exact4_triton

    assert torch.equal(solve(s, "2:4", "topn", "triton"), topn_twin(s, 2, 4))
    assert torch.equal(solve(s, "2:4-T", "greedy", "triton"), greedy_twin(s, 2, 4))
    assert torch.equal(exact_t(s, 2, 4, "triton"), ref.exact_2_4_t_reference(s))
    masked = torch.empty_like(s)
    exact4_triton(s, 2, absolute=True, out=masked)
    assert torch.equal(masked, ref.exact_2_4_t_masked_reference(s)[1])
    block = s[:, :8].contiguous()
    assert torch.equal(exact_t(block, 4, 8, "triton"), exact_t(block, 4, 8, "torch"))


def test_topn_twin_keeps_lower_index_on_ties_including_signed_zeros() -> None:
    scores = torch.tensor([[0.0, -0.0, 0.0, -0.0], [-1.0, -1.0, -1.0, -1.0]])
    assert topn_twin(scores, 2, 4).int().tolist() == [[1, 1, 0, 0], [1, 1, 0, 0]]


# ------------------------------------------------------------------------------- exact flow on the device


def _block_value(blocks: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return (blocks.double() * mask).sum(dim=(1, 2))


@pytest.mark.parametrize(("n", "m"), [(4, 8), (2, 8), (6, 8), (1, 8), (8, 16), (3, 16)])
def test_flow_torch_reaches_the_cpu_optimum(n: int, m: int) -> None:
    from nmsparse.kernels.exact_flow import flow_blocks_torch
    from nmsparse.solvers.exact import exact_blocks

    gen = torch.Generator().manual_seed(n * m)
    count = 400 if m == 8 else 100
    blocks = torch.cat(
        [
            torch.randn(count, m, m, generator=gen),
            torch.randn(count, m, m, generator=gen).abs(),
            torch.randint(0, 3, (count, m, m), generator=gen).float(),  # many ties
            torch.zeros(4, m, m),
            -torch.randint(0, 4, (count, m, m), generator=gen).float(),
            torch.randn(count, m, m, generator=gen) * torch.logspace(-30, 30, m * m).reshape(1, m, m),
        ]
    )
    got = flow_blocks_torch(blocks, n, chunk=257)  # several chunks
    assert (got.sum(dim=1) == n).all() and (got.sum(dim=2) == n).all()
    want = exact_blocks(blocks, n)
    gv, wv = _block_value(blocks, got), _block_value(blocks, want)
    assert torch.allclose(gv, wv, rtol=1e-12, atol=0), float((gv - wv).abs().max())
    randn = slice(0, count)
    assert torch.equal(got[randn], want[randn])  # no ties: the optimum is unique


@pytest.mark.triton
@pytest.mark.skipif(not HAVE_TRITON, reason="triton is not importable")
@pytest.mark.parametrize(
    ("n", "dtype"),
    [
        (4, torch.float32),
        (6, torch.float64),
        pytest.param(2, torch.bfloat16, marks=pytest.mark.slow),
        pytest.param(1, torch.float16, marks=pytest.mark.slow),
    ],
)
def test_flow_triton_bit_equal_to_torch_flow(n: int, dtype: torch.dtype) -> None:
    from nmsparse.solvers.exact import exact_blocks

    scores = mixed_scores(16, 16, seed=n, m=8, dtype=dtype, signed=True).to(DEVICE)  # Gaussian and tied blocks
    if dtype == torch.float64:
        scores[:8, :8] *= 1e-310  # subnormal fp64: the host-side scaling keeps the kernel equal to its twin
    got = exact_t(scores, n, 8, "triton")
    want = exact_t(scores, n, 8, "torch")
    assert torch.equal(got, want)
    blocks = to_blocks(scores.double().cpu(), 8)
    assert torch.allclose(
        _block_value(blocks, to_blocks(got.cpu(), 8)), _block_value(blocks, exact_blocks(blocks, n)), rtol=1e-12, atol=0
    )


@pytest.mark.slow  # ~10 s in the interpreter
@pytest.mark.triton
@pytest.mark.skipif(not HAVE_TRITON, reason="triton is not importable")
def test_flow_triton_m16_bit_equal_to_torch_flow() -> None:
    scores = mixed_scores(16, 16, seed=9, m=16, signed=True).to(DEVICE)
    assert torch.equal(exact_t(scores, 8, 16, "triton"), exact_t(scores, 8, 16, "torch"))


def test_flow_torch_matches_linprog() -> None:
    from nmsparse.kernels.exact_flow import flow_blocks_torch
    from nmsparse.testing import linprog_blocks_optimum

    blocks = torch.randn(64, 8, 8, generator=torch.Generator().manual_seed(2))
    got = flow_blocks_torch(blocks, 4)
    values, _ = linprog_blocks_optimum(blocks, 4)
    optimum = torch.from_numpy(values)
    assert torch.allclose(_block_value(blocks, got), optimum, rtol=1e-9, atol=1e-9)


def test_exact_flow_dispatch_and_errors() -> None:
    from nmsparse.solvers.exact import exact_blocks

    scores = torch.rand(16, 24)
    mask = exact_t(scores, 4, 8, "torch")
    assert torch.equal(mask, from_blocks(exact_blocks(to_blocks(scores, 8), 4), 16, 24))
    with pytest.raises(BackendUnavailableError, match=r"exact/triton: m in \[4, 8, 16\] only"):
        exact_t(torch.rand(32, 32), 16, 32, "triton")
    with pytest.raises(ShapeError, match="not a multiple of m=8"):
        exact_t(torch.rand(12, 16), 4, 8, "torch")
    with pytest.raises(PatternError):
        exact_t(scores, 8, 8, "torch")


# ------------------------------------------------------------------------------------- backends and errors


def test_triton_backend_on_cpu_without_interpreter_says_why(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(BackendUnavailableError, match="backend 'triton' cannot run"):
        exact_t(torch.rand(4, 4), 2, 4, "triton")


def test_resolve_validates_once_and_returns_the_plain_solver() -> None:
    scores = mixed_scores(8, 16, seed=5, m=4)
    solver = resolve("exact", "2:4-T", "cpu", torch.float16)
    assert solver.spec.label == "exact/torch" and solver.dtype == torch.float32
    assert torch.equal(solver(scores), find_mask(scores, "2:4-T"))
    assert torch.equal(resolve("auto", "2:4", "cpu")(scores), find_mask(scores, "2:4"))
    with pytest.raises(ConfigError, match="does not make transposable masks"):
        resolve("topn", "2:4-T", "cpu")
    with pytest.raises(BackendUnavailableError, match=r"greedy/triton: devices \["):
        resolve("greedy", "2:4-T", "meta", backend="triton")


# ------------------------------------------------------------------------------ deprecated kernels aliases


def test_deprecated_aliases_warn_and_forward_to_the_registry() -> None:
    w = mixed_scores(8, 16, seed=6, m=8, signed=True)
    cases = [
        (lambda: K.exact_2_4_t(w), ref.exact_2_4_t_reference(w)),
        (lambda: K.exact_2_4_t(w, absolute=True, backend="torch"), ref.exact_2_4_t_reference(w.abs())),
        (lambda: K.exact_n_4_t(w, 3), ref.exact_4_t_reference(w, 3)),
        (lambda: K.exact_nm_t(w, 4, 8), exact_t(w, 4, 8, "torch")),
        (lambda: K.greedy_nm_t(w, 2, 4), greedy_twin(w, 2, 4)),
        (lambda: K.topn_nm(w, 2, 4, absolute=True), topn_twin(w.abs(), 2, 4)),
    ]
    for call, want in cases:
        with pytest.warns(DeprecationWarning, match="deprecated and will be removed"):
            got = call()
        assert torch.equal(got, want)
    with pytest.warns(DeprecationWarning):
        mask, masked = K.exact_2_4_t_masked(w)
    assert torch.equal(mask, ref.exact_2_4_t_reference(w.abs())) and torch.equal(masked, torch.where(mask, w, 0.0))
    with pytest.warns(DeprecationWarning):
        assert K.resolve_backend("auto", torch.zeros(4, 4), where="t") == "torch"
    with pytest.warns(DeprecationWarning):
        assert isinstance(K.register_kernels(), list)


def test_deprecated_aliases_raise_the_registry_errors() -> None:
    with pytest.warns(DeprecationWarning), pytest.raises(ConfigError, match="'auto', 'torch' or 'triton'"):
        K.exact_2_4_t(torch.rand(4, 4), backend="cuda")
    with pytest.warns(DeprecationWarning), pytest.raises(ShapeError, match="not a multiple of m=4"):
        K.exact_2_4_t(torch.rand(6, 8))
    with pytest.warns(DeprecationWarning), pytest.raises(InputError, match="inf or NaN"):
        K.greedy_nm_t(torch.full((8, 8), float("nan")), 4, 8)
    with pytest.warns(DeprecationWarning), pytest.raises(InputError):
        K.exact_2_4_t(torch.ones(4, 4, dtype=torch.int32))
    with pytest.warns(DeprecationWarning), pytest.raises(PatternError):
        K.exact_n_4_t(torch.rand(4, 4), 4)


@pytest.mark.slow  # a fresh interpreter importing torch: 5-15 s on a busy 2-core machine
def test_import_is_lazy() -> None:
    code = (
        "import sys, torch, nmsparse.kernels as k; k.has_cusparselt; "
        "assert 'triton' not in sys.modules, 'triton imported'; "
        "assert not torch.cuda.is_initialized(), 'CUDA initialised'"
    )
    env = {key: value for key, value in os.environ.items() if key != "TRITON_INTERPRET"}
    subprocess.run([sys.executable, "-c", code], check=True, env=env, timeout=120)


def test_capabilities_summary_names_torch() -> None:
    caps = K.capabilities()
    assert caps.summary().startswith(f"torch {torch.__version__}")
    assert (caps.triton_version is None) == (not HAVE_TRITON)


# ------------------------------------------------------------------------------------ registry integration


@pytest.mark.triton
@pytest.mark.skipif(not HAVE_TRITON, reason="triton is not importable")
@pytest.mark.parametrize(
    ("pattern", "method"),
    [("2:4-T", "exact"), ("4:8-T", "greedy"), ("2:4", "topn"), ("2:4-T", "greedy"), ("4:8-T", "exact")],
)
def test_find_mask_triton_backend_matches_torch(pattern: str, method: str) -> None:
    weight = mixed_scores(16, 16, seed=1, m=8, signed=True).to(DEVICE)
    got = find_mask(weight, pattern, method=method, backend="triton")
    want = find_mask(
        weight, pattern, method=method, backend="numba" if pattern == "4:8-T" and method == "exact" else "torch"
    )
    if method == "exact":  # the same optimum (the numba flow may pick another optimal mask on ties)
        blocks = to_blocks(weight.abs().double().cpu(), int(pattern.split(":")[1][0]))
        m = blocks.shape[-1]
        got_value = _block_value(blocks, to_blocks(got.cpu(), m))
        assert torch.allclose(got_value, _block_value(blocks, to_blocks(want.cpu(), m)), rtol=1e-12, atol=0)
    else:
        assert torch.equal(got, want)


# ------------------------------------------------------------------------------------------ full size, GPU


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA or not HAVE_TRITON, reason="needs a CUDA device and triton")
@pytest.mark.parametrize("dtype", DTYPES)
def test_gpu_exact24_full_size(dtype: torch.dtype) -> None:
    w = torch.randn(4096, 4096, device="cuda", dtype=dtype)
    from nmsparse.kernels.triton_kernels import exact4_triton

    masked = torch.empty_like(w)
    mask = exact4_triton(w, 2, absolute=True, out=masked)
    mask_ref, masked_ref = ref.exact_2_4_t_masked_reference(w)
    assert torch.equal(mask, mask_ref) and torch.equal(masked, masked_ref)
    sample = w[:512, :512].abs().float().cpu()
    assert torch.equal(mask[:512, :512].cpu(), enumerate_mask(sample, 2))
    ties = torch.randint(0, 3, (1024, 1024), device="cuda").to(dtype)
    assert torch.equal(exact_t(ties, 2, 4, "triton"), ref.exact_2_4_t_reference(ties))
    assert torch.equal(exact_t(ties, 2, 4, "triton"), exact_t(ties, 2, 4, "torch"))  # exact/torch on CUDA too


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA or not HAVE_TRITON, reason="needs a CUDA device and triton")
@pytest.mark.parametrize(("n", "m"), [(2, 4), (4, 8), (8, 16)])
def test_gpu_greedy_and_topn_full_size(n: int, m: int) -> None:
    s = torch.randn(2048, 2048, device="cuda", dtype=torch.bfloat16)
    assert torch.equal(solve(s, f"{n}:{m}-T", "greedy", "triton"), greedy_twin(s, n, m))
    ties = torch.randint(0, 3, (1024, 1024), device="cuda").float()
    assert torch.equal(solve(ties, f"{n}:{m}-T", "greedy", "triton"), greedy_twin(ties, n, m))
    assert torch.equal(solve(s, f"{n}:{m}", "topn", "triton"), topn_twin(s, n, m))


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA or not HAVE_TRITON, reason="needs a CUDA device and triton")
@pytest.mark.parametrize(("n", "m"), [(4, 8), (2, 8), (8, 16)])
def test_gpu_flow_triton_full_size(n: int, m: int) -> None:
    s = torch.randn(2048, 2048, device="cuda", dtype=torch.bfloat16)
    got = exact_t(s, n, m, "triton", absolute=True)
    assert torch.equal(got, exact_t(s, n, m, "torch", absolute=True))
    ties = torch.randint(0, 3, (512, 512), device="cuda").float()
    assert torch.equal(exact_t(ties, n, m, "triton"), exact_t(ties, n, m, "torch"))


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs a CUDA device")
@pytest.mark.parametrize(("n", "m"), [(4, 8), (8, 16)])
def test_gpu_flow_same_mask_as_cpu_and_cpu_optimum(n: int, m: int) -> None:
    from nmsparse.kernels.exact_flow import flow_blocks_torch
    from nmsparse.solvers.exact import exact_blocks

    blocks = torch.cat([torch.randn(20000, m, m), torch.randint(0, 3, (5000, m, m)).float()])
    on_gpu = flow_blocks_torch(blocks.cuda(), n).cpu()
    assert torch.equal(on_gpu, flow_blocks_torch(blocks, n))
    assert torch.allclose(
        _block_value(blocks, on_gpu), _block_value(blocks, exact_blocks(blocks, n)), rtol=1e-12, atol=0
    )
