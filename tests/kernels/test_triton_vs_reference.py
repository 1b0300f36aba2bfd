"""Every Triton mask kernel against its torch twin (masks bit-equal), and the twins against the CPU solvers.

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
from nmsparse.errors import BackendUnavailableError, ConfigError, InputError, PatternError, ShapeError
from nmsparse.kernels import reference as ref
from nmsparse.layout import from_blocks, to_blocks

HAVE_TRITON = K.has_triton()
CUDA = torch.cuda.is_available()
DEVICE = "cuda" if CUDA else "cpu"
needs_triton = [pytest.mark.triton, pytest.mark.skipif(not HAVE_TRITON, reason="triton is not importable")]
DTYPES = [torch.float32, torch.float16, torch.bfloat16]


def mixed_scores(rows: int, cols: int, *, seed: int, m: int, dtype: torch.dtype = torch.float32,
                 signed: bool = False) -> torch.Tensor:
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


def test_generated_kernel_file_is_current() -> None:
    from nmsparse.kernels._gen_exact24 import TARGET, render

    assert TARGET.read_text() == render(), "run: python -m nmsparse.kernels._gen_exact24"


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
    got = K.exact_n_4_t(scores, n, backend="triton")
    assert got.dtype == torch.bool and got.shape == scores.shape and got.is_contiguous()
    assert torch.equal(got, ref.exact_4_t_reference(scores, n))


@pytest.mark.parametrize("backend", ["torch", pytest.param("triton", marks=needs_triton)])
def test_exact24_float64_extremes_stay_optimal(backend: str) -> None:
    from nmsparse.solvers.enumerate import enumerate_blocks

    base = mixed_scores(8, 8, seed=2, m=4, dtype=torch.float64)
    for scale in (1e307, 1e-310):  # sums overflow to inf / subnormals round without the per-block scaling
        scores = (base * scale).to(DEVICE)
        got = K.exact_2_4_t(scores, backend=backend)
        assert torch.equal(got, K.exact_2_4_t(scores, backend="torch"))
        want = from_blocks(enumerate_blocks(to_blocks(base, 4).contiguous(), 2), 8, 8)  # the unscaled problem
        assert torch.equal(got.cpu(), want)


@pytest.mark.triton
@pytest.mark.skipif(not HAVE_TRITON, reason="triton is not importable")
@pytest.mark.parametrize("layout", ["transposed", "sliced"])
def test_exact24_triton_non_contiguous(layout: str) -> None:
    base = mixed_scores(24, 16, seed=3, m=4).to(DEVICE)
    scores = base.t() if layout == "transposed" else base[:, 4:12]
    assert not scores.is_contiguous()
    assert torch.equal(K.exact_2_4_t(scores, backend="triton"), ref.exact_2_4_t_reference(scores))


@pytest.mark.triton
@pytest.mark.skipif(not HAVE_TRITON, reason="triton is not importable")
@pytest.mark.parametrize("dtype", DTYPES)
def test_exact24_masked_triton_bit_equal(dtype: torch.dtype) -> None:
    w = mixed_scores(12, 16, seed=11, m=4, dtype=dtype, signed=True).to(DEVICE)
    w = torch.where(torch.rand(w.shape, device=w.device) < 0.5, -w, w)
    mask, masked = K.exact_2_4_t_masked(w, backend="triton")
    mask_ref, masked_ref = ref.exact_2_4_t_masked_reference(w)
    assert torch.equal(mask, mask_ref)
    assert masked.dtype == dtype and torch.equal(masked, masked_ref)
    assert torch.equal(torch.signbit(masked), torch.signbit(masked_ref))


@pytest.mark.triton
@pytest.mark.skipif(not HAVE_TRITON, reason="triton is not importable")
@pytest.mark.parametrize(("n", "m", "dtype"), [(2, 4, torch.float32), (1, 4, torch.float16), (3, 4, torch.bfloat16),
                                               (4, 8, torch.float32), (2, 8, torch.bfloat16), (6, 8, torch.float16)])
def test_greedy_triton_bit_equal(n: int, m: int, dtype: torch.dtype) -> None:
    scores = mixed_scores(5 * m, 2 * m, seed=n * m, m=m, dtype=dtype, signed=True).to(DEVICE)
    got = K.greedy_nm_t(scores, n, m, backend="triton")
    want = ref.greedy_t_reference(scores, n, m)
    assert torch.equal(got, want)
    assert torch.equal(want.cpu(), greedy_solver_mask(scores, n, m))


@pytest.mark.triton
@pytest.mark.skipif(not HAVE_TRITON, reason="triton is not importable")
def test_greedy_triton_m16_and_non_contiguous() -> None:
    base = mixed_scores(32, 16, seed=5, m=16, signed=True).to(DEVICE)
    scores = base.t()  # [16, 32], non-contiguous: two blocks, one program
    assert torch.equal(K.greedy_nm_t(scores, 8, 16, backend="triton"), ref.greedy_t_reference(scores, 8, 16))


@pytest.mark.triton
@pytest.mark.skipif(not HAVE_TRITON, reason="triton is not importable")
@pytest.mark.parametrize(("n", "m", "dtype"), [(2, 4, torch.float32), (2, 4, torch.bfloat16), (1, 4, torch.float16),
                                               (4, 8, torch.float32), (8, 16, torch.bfloat16), (2, 6, torch.float32),
                                               (3, 5, torch.float16)])
def test_topn_triton_bit_equal(n: int, m: int, dtype: torch.dtype) -> None:
    scores = mixed_scores(10, 4 * m, seed=m, m=1, dtype=dtype, signed=True).to(DEVICE)
    got = K.topn_nm(scores, n, m, backend="triton")
    assert torch.equal(got, ref.topn_reference(scores, n, m))
    sliced = mixed_scores(6, 6 * m, seed=m + 1, m=1, dtype=dtype).to(DEVICE)[:, m:5 * m]
    assert torch.equal(K.topn_nm(sliced, n, m, backend="triton"), ref.topn_reference(sliced, n, m))


@pytest.mark.triton
@pytest.mark.skipif(not HAVE_TRITON, reason="triton is not importable")
@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_absolute_reads_the_weight_itself(backend: str) -> None:
    w = mixed_scores(8, 16, seed=4, m=4, dtype=torch.bfloat16, signed=True).to(DEVICE)
    w = torch.where(torch.arange(w.numel(), device=w.device).reshape(w.shape) % 3 == 0, -w, w)
    assert torch.equal(K.exact_2_4_t(w, absolute=True, backend=backend), ref.exact_2_4_t_reference(w.abs()))
    assert torch.equal(K.greedy_nm_t(w, 4, 8, absolute=True, backend=backend), ref.greedy_t_reference(w.abs(), 4, 8))
    assert torch.equal(K.topn_nm(w, 2, 4, absolute=True, backend=backend), ref.topn_reference(w.abs(), 2, 4))


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
    assert torch.equal(K.topn_nm(s, 2, 4, backend="triton"), ref.topn_reference(s, 2, 4))
    assert torch.equal(K.greedy_nm_t(s, 2, 4, backend="triton"), ref.greedy_t_reference(s, 2, 4))
    assert torch.equal(K.exact_2_4_t(s, backend="triton"), ref.exact_2_4_t_reference(s))
    mask, masked = K.exact_2_4_t_masked(s, backend="triton")
    assert torch.equal(masked, ref.exact_2_4_t_masked_reference(s)[1])
    block = s[:, :8].contiguous()
    assert torch.equal(K.exact_nm_t(block, 4, 8, backend="triton"), K.exact_nm_t(block, 4, 8, backend="torch"))


def test_topn_twin_keeps_lower_index_on_ties_including_signed_zeros() -> None:
    scores = torch.tensor([[0.0, -0.0, 0.0, -0.0], [-1.0, -1.0, -1.0, -1.0]])
    assert ref.topn_reference(scores, 2, 4).int().tolist() == [[1, 1, 0, 0], [1, 1, 0, 0]]


# ------------------------------------------------------------------------------- exact flow on the device


def _block_value(blocks: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return (blocks.double() * mask).sum(dim=(1, 2))


@pytest.mark.parametrize(("n", "m"), [(4, 8), (2, 8), (6, 8), (1, 8), (8, 16), (3, 16)])
def test_flow_torch_reaches_the_cpu_optimum(n: int, m: int) -> None:
    from nmsparse.kernels.exact_flow import flow_blocks_torch
    from nmsparse.solvers.exact import exact_blocks

    gen = torch.Generator().manual_seed(n * m)
    count = 400 if m == 8 else 100
    blocks = torch.cat([
        torch.randn(count, m, m, generator=gen),
        torch.randn(count, m, m, generator=gen).abs(),
        torch.randint(0, 3, (count, m, m), generator=gen).float(),  # many ties
        torch.zeros(4, m, m),
        -torch.randint(0, 4, (count, m, m), generator=gen).float(),
        torch.randn(count, m, m, generator=gen) * torch.logspace(-30, 30, m * m).reshape(1, m, m),
    ])
    got = flow_blocks_torch(blocks, n, chunk=257)  # several chunks
    assert (got.sum(dim=1) == n).all() and (got.sum(dim=2) == n).all()
    want = exact_blocks(blocks, n)
    gv, wv = _block_value(blocks, got), _block_value(blocks, want)
    assert torch.allclose(gv, wv, rtol=1e-12, atol=0), float((gv - wv).abs().max())
    randn = slice(0, count)
    assert torch.equal(got[randn], want[randn])  # no ties: the optimum is unique


@pytest.mark.triton
@pytest.mark.skipif(not HAVE_TRITON, reason="triton is not importable")
@pytest.mark.parametrize(("n", "dtype"), [(4, torch.float32), (6, torch.float64),
                                          pytest.param(2, torch.bfloat16, marks=pytest.mark.slow),
                                          pytest.param(1, torch.float16, marks=pytest.mark.slow)])
def test_flow_triton_bit_equal_to_torch_flow(n: int, dtype: torch.dtype) -> None:
    from nmsparse.solvers.exact import exact_blocks

    scores = mixed_scores(16, 16, seed=n, m=8, dtype=dtype, signed=True).to(DEVICE)  # Gaussian and tied blocks
    if dtype == torch.float64:
        scores[:8, :8] *= 1e-310  # subnormal fp64: the host-side scaling keeps the kernel equal to its twin
    got = K.exact_nm_t(scores, n, 8, backend="triton")
    want = K.exact_nm_t(scores, n, 8, backend="torch")
    assert torch.equal(got, want)
    blocks = to_blocks(scores.double().cpu(), 8)
    assert torch.allclose(_block_value(blocks, to_blocks(got.cpu(), 8)),
                          _block_value(blocks, exact_blocks(blocks, n)), rtol=1e-12, atol=0)


@pytest.mark.slow  # ~10 s in the interpreter
@pytest.mark.triton
@pytest.mark.skipif(not HAVE_TRITON, reason="triton is not importable")
def test_flow_triton_m16_bit_equal_to_torch_flow() -> None:
    scores = mixed_scores(16, 16, seed=9, m=16, signed=True).to(DEVICE)
    assert torch.equal(K.exact_nm_t(scores, 8, 16, backend="triton"), K.exact_nm_t(scores, 8, 16, backend="torch"))


def test_flow_torch_matches_linprog() -> None:
    from nmsparse.kernels.exact_flow import flow_blocks_torch
    from nmsparse.testing import linprog_blocks_optimum

    blocks = torch.randn(64, 8, 8, generator=torch.Generator().manual_seed(2))
    got = flow_blocks_torch(blocks, 4)
    values, _ = linprog_blocks_optimum(blocks, 4)
    optimum = torch.from_numpy(values)
    assert torch.allclose(_block_value(blocks, got), optimum, rtol=1e-9, atol=1e-9)


def test_exact_nm_t_dispatch_and_errors() -> None:
    scores = torch.rand(16, 24)
    mask = K.exact_nm_t(scores, 4, 8, backend="torch")
    assert torch.equal(mask, from_blocks(
        __import__("nmsparse.solvers.exact", fromlist=["exact_blocks"]).exact_blocks(to_blocks(scores, 8), 4), 16, 24))
    with pytest.raises(BackendUnavailableError, match=r"takes m in \(8, 16\), got m=32"):
        K.exact_nm_t(torch.rand(32, 32), 16, 32, backend="triton")
    with pytest.raises(ShapeError, match="multiples of 8"):
        K.exact_nm_t(torch.rand(12, 16), 4, 8)
    with pytest.raises(PatternError):
        K.exact_nm_t(scores, 8, 8)


# ------------------------------------------------------------------------------------- backends and errors


def test_auto_backend_on_cpu_is_torch_and_unknown_backend_raises() -> None:
    assert K.resolve_backend("auto", torch.zeros(4, 4), where="t") == "torch"
    with pytest.raises(ConfigError, match="'auto', 'torch' or 'triton'"):
        K.exact_2_4_t(torch.rand(4, 4), backend="cuda")


def test_triton_backend_on_cpu_without_interpreter_says_why(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(BackendUnavailableError, match="backend 'triton' cannot run here: "):
        K.exact_2_4_t(torch.rand(4, 4), backend="triton")


def test_bad_inputs_raise_clear_errors() -> None:
    with pytest.raises(ShapeError, match="multiples of 4"):
        K.exact_2_4_t(torch.rand(6, 8))
    with pytest.raises(ShapeError, match="2-D"):
        K.exact_2_4_t(torch.rand(4, 4, 4))
    with pytest.raises(InputError, match="float32, float16"):
        K.exact_2_4_t(torch.ones(4, 4, dtype=torch.int32))
    with pytest.raises(InputError, match="inf or NaN"):
        K.greedy_nm_t(torch.full((8, 8), float("nan")), 4, 8)
    with pytest.raises(PatternError):
        K.exact_n_4_t(torch.rand(4, 4), 4)
    with pytest.raises(ShapeError, match="multiples of 4"):
        K.topn_nm(torch.rand(3, 6), 2, 4)


@pytest.mark.slow  # a fresh interpreter importing torch: 5-15 s on a busy 2-core machine
def test_import_is_lazy() -> None:
    code = ("import sys, torch, nmsparse.kernels as k; k.has_cusparselt; "
            "assert 'triton' not in sys.modules, 'triton imported'; "
            "assert not torch.cuda.is_initialized(), 'CUDA initialised'")
    env = {key: value for key, value in os.environ.items() if key != "TRITON_INTERPRET"}
    subprocess.run([sys.executable, "-c", code], check=True, env=env, timeout=120)


def test_capabilities_summary_names_torch() -> None:
    caps = K.capabilities()
    assert caps.summary().startswith(f"torch {torch.__version__}")
    assert (caps.triton_version is None) == (not HAVE_TRITON)


# ------------------------------------------------------------------------------------ registry integration


@pytest.mark.triton
@pytest.mark.skipif(not HAVE_TRITON, reason="triton is not importable")
@pytest.mark.parametrize(("pattern", "method"), [("2:4-T", "exact"), ("4:8-T", "greedy"), ("2:4", "topn"),
                                                 ("2:4-T", "greedy"), ("4:8-T", "exact")])
def test_find_mask_triton_backend_matches_torch(pattern: str, method: str) -> None:
    from nmsparse import find_mask

    K.register_kernels()
    weight = mixed_scores(16, 16, seed=1, m=8, signed=True).to(DEVICE)
    got = find_mask(weight, pattern, method=method, backend="triton")
    want = find_mask(weight, pattern, method=method, backend="numba" if pattern == "4:8-T" and method == "exact"
                     else "torch")
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
    mask, masked = K.exact_2_4_t_masked(w, backend="triton")
    mask_ref, masked_ref = ref.exact_2_4_t_masked_reference(w)
    assert torch.equal(mask, mask_ref) and torch.equal(masked, masked_ref)
    sample = w[:512, :512].abs().float().cpu()
    assert torch.equal(mask[:512, :512].cpu(), enumerate_mask(sample, 2))
    ties = torch.randint(0, 3, (1024, 1024), device="cuda").to(dtype)
    assert torch.equal(K.exact_2_4_t(ties, backend="triton"), ref.exact_2_4_t_reference(ties))


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA or not HAVE_TRITON, reason="needs a CUDA device and triton")
@pytest.mark.parametrize(("n", "m"), [(2, 4), (4, 8), (8, 16)])
def test_gpu_greedy_and_topn_full_size(n: int, m: int) -> None:
    s = torch.randn(2048, 2048, device="cuda", dtype=torch.bfloat16)
    assert torch.equal(K.greedy_nm_t(s, n, m, backend="triton"), ref.greedy_t_reference(s, n, m))
    ties = torch.randint(0, 3, (1024, 1024), device="cuda").float()
    assert torch.equal(K.greedy_nm_t(ties, n, m, backend="triton"), ref.greedy_t_reference(ties, n, m))
    assert torch.equal(K.topn_nm(s, n, m, backend="triton"), ref.topn_reference(s, n, m))


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA or not HAVE_TRITON, reason="needs a CUDA device and triton")
@pytest.mark.parametrize(("n", "m"), [(4, 8), (2, 8), (8, 16)])
def test_gpu_flow_triton_full_size(n: int, m: int) -> None:
    s = torch.randn(2048, 2048, device="cuda", dtype=torch.bfloat16)
    got = K.exact_nm_t(s, n, m, absolute=True, backend="triton")
    assert torch.equal(got, K.exact_nm_t(s, n, m, absolute=True, backend="torch"))
    ties = torch.randint(0, 3, (512, 512), device="cuda").float()
    assert torch.equal(K.exact_nm_t(ties, n, m, backend="triton"), K.exact_nm_t(ties, n, m, backend="torch"))


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs a CUDA device")
@pytest.mark.parametrize(("n", "m"), [(4, 8), (8, 16)])
def test_gpu_flow_same_mask_as_cpu_and_cpu_optimum(n: int, m: int) -> None:
    from nmsparse.kernels.exact_flow import flow_blocks_torch
    from nmsparse.solvers.exact import exact_blocks

    blocks = torch.cat([torch.randn(20000, m, m), torch.randint(0, 3, (5000, m, m)).float()])
    on_gpu = flow_blocks_torch(blocks.cuda(), n).cpu()
    assert torch.equal(on_gpu, flow_blocks_torch(blocks, n))
    assert torch.allclose(_block_value(blocks, on_gpu), _block_value(blocks, exact_blocks(blocks, n)),
                          rtol=1e-12, atol=0)
