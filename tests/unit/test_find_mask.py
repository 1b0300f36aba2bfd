import itertools

import pytest
import torch

import nmsparse
from nmsparse.errors import BackendUnavailableError, ConfigError, InputError, PatternError, ShapeError, SolverError
from nmsparse.layout import from_matrix, to_matrix
from nmsparse.solvers import available_backends, list_methods, list_solvers, registered_solver
from nmsparse.solvers.topn import topn_matrix


def reference_topn(matrix: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """Plain-Python per-group top-n: sort each group by (-score, index)."""
    out = torch.zeros(matrix.shape, dtype=torch.bool)
    for r in range(matrix.shape[0]):
        for g in range(0, matrix.shape[1], m):
            scores = matrix[r, g : g + m].tolist()
            order = sorted(range(m), key=lambda i: (-scores[i], i))
            for i in order[:n]:
                out[r, g + i] = True
    return out


@pytest.mark.parametrize("n, m", [(1, 4), (2, 4), (3, 4), (2, 8), (4, 8), (1, 2), (8, 16)])
def test_topn_matches_reference_with_ties(n, m):
    torch.manual_seed(n * 100 + m)
    w = torch.randint(-3, 4, (6, 4 * m)).float()  # many ties and zeros
    mask = nmsparse.find_mask(w, f"{n}:{m}")
    assert torch.equal(mask, reference_topn(w.abs(), n, m))
    assert nmsparse.is_nm_sparse(mask, f"{n}:{m}")
    assert int(mask.sum()) == w.numel() * n // m


def test_ties_go_to_lower_index():
    w = torch.ones(2, 8)
    assert nmsparse.find_mask(w, "2:4").int().tolist() == [[1, 1, 0, 0, 1, 1, 0, 0]] * 2
    assert nmsparse.find_mask(torch.zeros(4, 4), "2:4-T", method="greedy").int().tolist() == [
        [1, 1, 0, 0],
        [1, 1, 0, 0],
        [0, 0, 1, 1],
        [0, 0, 1, 1],
    ]


def test_conv_weight_uses_nhwc_matrix_view():
    torch.manual_seed(0)
    w = torch.randn(8, 8, 3, 3)
    mask = nmsparse.find_mask(w, "2:4")
    assert mask.shape == w.shape and mask.dtype == torch.bool
    # groups run along input channels: for every (out, kh, kw), each 4 consecutive input channels keep 2
    assert (mask.permute(0, 2, 3, 1).reshape(-1, 4).sum(1) == 2).all()
    assert torch.equal(to_matrix(mask), reference_topn(to_matrix(w.abs()), 2, 4))
    assert torch.equal(from_matrix(to_matrix(w), w.shape), w)


@pytest.mark.parametrize("method", ["exact", "greedy", "greedy-repair"])
def test_plain_patterns_give_topn_for_every_method(method):
    w = torch.randn(8, 16)
    assert torch.equal(nmsparse.find_mask(w, "2:4", method=method), nmsparse.find_mask(w, "2:4"))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
@pytest.mark.parametrize("pattern, method", [("2:4", "auto"), ("4:8-T", "greedy"), ("4:8-T", "greedy-repair")])
def test_dtypes(dtype, pattern, method):
    torch.manual_seed(1)
    w = torch.randn(16, 32).to(dtype)
    mask = nmsparse.find_mask(w, pattern, method=method)
    assert mask.dtype == torch.bool and mask.shape == w.shape
    assert nmsparse.is_nm_sparse(mask, pattern)
    assert torch.equal(mask, nmsparse.find_mask(w.float(), pattern, method=method))


def test_scores_replace_magnitude():
    w = torch.tensor([[4.0, 3.0, 2.0, 1.0]])
    scores = torch.tensor([[0.0, 0.0, 1.0, 1.0]])
    assert nmsparse.find_mask(w, "2:4", scores=scores).int().tolist() == [[0, 0, 1, 1]]
    with pytest.raises(ShapeError, match="scores must have the weight's shape"):
        nmsparse.find_mask(w, "2:4", scores=torch.ones(1, 8))


def test_greedy_blocks_transposable_and_repair_fills():
    torch.manual_seed(2)
    w = torch.randn(64, 64)
    greedy = nmsparse.find_mask(w, "4:8-T", method="greedy")
    repaired = nmsparse.find_mask(w, "4:8-T", method="greedy-repair")
    assert nmsparse.is_nm_sparse(greedy, "4:8-T") and nmsparse.is_nm_sparse(repaired, "4:8-T")
    assert int(repaired.sum()) == w.numel() // 2
    assert nmsparse.retained_magnitude(w, repaired) >= nmsparse.retained_magnitude(w, greedy)


@pytest.mark.parametrize(
    "shape, pattern, match",
    [
        ((4, 6), "2:4", "reduction dimension"),
        ((6, 8), "4:8-T", "output dimension"),
        ((4,), "2:4", "1-D"),
        ((2, 4, 4, 4, 4), "2:4", "5-D"),
        ((0, 4), "2:4", "empty"),
        ((8, 3, 3, 3), "2:4", r"in\*kh\*kw"),
    ],
)
def test_shape_errors(shape, pattern, match):
    with pytest.raises(ShapeError, match=match):
        nmsparse.find_mask(torch.ones(shape), pattern)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_values_are_refused(bad):
    w = torch.ones(4, 4)
    w[1, 2] = bad
    with pytest.raises(InputError, match="non-finite"):
        nmsparse.find_mask(w, "2:4")


def test_bad_inputs():
    with pytest.raises(InputError, match="floating point"):
        nmsparse.find_mask(torch.ones(4, 4, dtype=torch.int64), "2:4")
    with pytest.raises(InputError, match=r"torch.Tensor.*torch.as_tensor"):
        nmsparse.find_mask([[1.0] * 4], "2:4")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="unknown method 'fast'.*greedy"):
        nmsparse.find_mask(torch.ones(4, 4), "2:4-T", method="fast")
    with pytest.raises(ConfigError, match="does not make transposable"):
        nmsparse.find_mask(torch.ones(4, 4), "2:4-T", method="topn")
    with pytest.raises(PatternError):
        nmsparse.find_mask(torch.ones(4, 4), "2:4-X")


def test_deterministic():
    torch.manual_seed(3)
    w = torch.randn(32, 64).round(decimals=1)
    for pattern, method in itertools.product(["2:4", "4:8-T"], ["auto", "greedy", "greedy-repair"]):
        assert torch.equal(
            nmsparse.find_mask(w, pattern, method=method), nmsparse.find_mask(w.clone(), pattern, method=method)
        )


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize(
    "pattern, method", [("2:4", "auto"), ("4:8-T", "greedy"), ("2:4-T", "exact"), ("4:8-T", "exact")]
)
def test_cuda_matches_cpu(pattern, method):
    w = torch.randn(64, 128)
    mask = nmsparse.find_mask(w.cuda(), pattern, method=method)
    assert mask.device.type == "cuda"
    assert torch.equal(mask.cpu(), nmsparse.find_mask(w, pattern, method=method))


# --- registry dispatch (issue 7: the registry is the only dispatcher) ---------------------------------------


def test_every_builtin_method_is_registered_with_its_capabilities():
    labels = {spec.label for spec in list_solvers()}
    assert {
        "topn/torch",
        "exact/torch",
        "exact/numba",
        "exact/python",
        "greedy/torch",
        "greedy/numba",
        "greedy-repair/torch",
        "greedy-repair/numba",
    } <= labels
    assert list_methods()[0] == "auto" and {"topn", "exact", "greedy", "greedy-repair"} <= set(list_methods())
    topn = next(s for s in list_solvers("topn"))
    assert topn.plain and not topn.transposable and topn.exact and topn.exactly_n
    assert "torch" in available_backends("cpu") and "numba" in available_backends("cpu")
    assert available_backends("meta") == sorted({s.backend for s in list_solvers() if s.devices is None})


def test_plain_topn_goes_through_the_registry():
    # Regression: find_mask called topn_matrix directly for plain patterns, so a registered topn was ignored.
    def reversed_topn(scores, pattern, progress):  # a valid mask that differs from top-n: keeps the smallest
        return topn_matrix(-scores, pattern)

    w = torch.arange(8.0).reshape(1, 8)
    with registered_solver("topn", reversed_topn, backend="test", plain=True, exactly_n=True, priority=100):
        assert nmsparse.find_mask(w, "2:4").int().tolist() == [[1, 1, 0, 0, 1, 1, 0, 0]]
        assert nmsparse.find_mask(w, "2:4", backend="torch").int().tolist() == [[0, 0, 1, 1, 0, 0, 1, 1]]
    assert nmsparse.find_mask(w, "2:4").int().tolist() == [[0, 0, 1, 1, 0, 0, 1, 1]]


@pytest.mark.parametrize("pattern", ["2:4-T", "4:8-T", "8:16-T"])
@pytest.mark.parametrize("method", ["greedy", "greedy-repair"])
def test_numba_and_torch_backends_are_bit_equal(pattern, method):
    torch.manual_seed(5)
    w = torch.randn(32, 48)
    w[:8] = w[:8].round()  # ties
    assert torch.equal(
        nmsparse.find_mask(w, pattern, method=method, backend="numba"),
        nmsparse.find_mask(w, pattern, method=method, backend="torch"),
    )


def test_exact_python_backend_matches_numba():
    w = torch.randn(16, 32)
    w[:8] = w[:8].round()
    assert torch.equal(
        nmsparse.find_mask(w, "4:8-T", method="exact", backend="python"),
        nmsparse.find_mask(w, "4:8-T", method="exact", backend="numba"),
    )


def test_auto_backend_prefers_the_compiled_kernels_on_cpu(monkeypatch):
    import dataclasses

    from nmsparse.solvers import registry

    def chosen(method, pattern, device="cpu"):
        return registry.select_solver(method, "auto", nmsparse.NMPattern.parse(pattern), device, torch.float32).label

    assert chosen("greedy", "4:8-T") == "greedy/numba"
    assert chosen("greedy", "4:8-T", "cuda") in ("greedy/torch", "greedy/triton")  # numba: CPU only
    assert chosen("exact", "2:4-T") == "exact/torch"
    assert chosen("exact", "4:8-T") == "exact/numba"
    for key, spec in list(registry._SOLVERS.items()):  # as without numba installed
        if spec.backend == "numba":
            monkeypatch.setitem(registry._SOLVERS, key, dataclasses.replace(spec, available=lambda: False))
    # without numba the batched torch flow (registered with the GPU kernels) beats the pure-Python fallback
    assert chosen("exact", "4:8-T") == "exact/torch-flow"
    assert chosen("greedy", "4:8-T") == "greedy/torch"
    with pytest.raises(BackendUnavailableError, match=r"not available.*backends that can: .*'python'"):
        nmsparse.find_mask(torch.randn(8, 8), "4:8-T", method="exact", backend="numba")


def test_explicit_backend_that_cannot_run_lists_the_choices():
    with pytest.raises(BackendUnavailableError, match=r"exact/torch: m in \[4\] only.*'numba'"):
        nmsparse.find_mask(torch.randn(8, 8), "4:8-T", method="exact", backend="torch")
    with pytest.raises(BackendUnavailableError, match="has no 'numba' backend"):
        nmsparse.find_mask(torch.randn(4, 4), "2:4", method="topn", backend="numba")
    with pytest.raises(ConfigError, match="unknown backend 'cuda-magic'"):
        nmsparse.find_mask(torch.randn(4, 4), "2:4", backend="cuda-magic")
    with pytest.raises(ConfigError, match="backend must be a string"):
        nmsparse.find_mask(torch.randn(4, 4), "2:4", backend=None)  # type: ignore[arg-type]


def _shifted(scores, pattern, progress):  # keeps n per group, but shifted into the next group: invalid rows
    return topn_matrix(scores, pattern).roll(1, dims=1) | topn_matrix(scores, pattern)


@pytest.mark.parametrize(
    ("fn", "match"),
    [
        (lambda s, p, g: topn_matrix(s, p).int(), "dtype torch.int32"),
        (lambda s, p, g: topn_matrix(s, p)[:, :4], r"shape \(4, 4\)"),
        (lambda s, p, g: topn_matrix(s, p).tolist(), "list, not a torch.Tensor"),
        (lambda s, p, g: torch.ones(s.shape, dtype=torch.bool), "break 'at most 2 of 4'.*group 0 .* keeps 4"),
        (lambda s, p, g: torch.zeros(s.shape, dtype=torch.bool, device="meta"), "on meta"),
    ],
)
def test_a_wrong_solver_raises_solver_error_naming_it(fn, match):
    with registered_solver("broken", fn, backend="test", plain=True):
        with pytest.raises(SolverError, match=f"broken/test.*{match}"):
            nmsparse.find_mask(torch.randn(4, 8), "2:4", method="broken")
    assert "broken" not in list_methods()


def test_exactly_n_is_checked_when_declared():
    def at_most(scores, pattern, progress):
        mask = topn_matrix(scores, pattern)
        mask[0] = False
        return mask

    with registered_solver("lazy", at_most, backend="test", plain=True, exactly_n=True):
        with pytest.raises(SolverError, match="exactly 2 of 4"):
            nmsparse.find_mask(torch.randn(4, 8), "2:4", method="lazy")
    with registered_solver("lazy", at_most, backend="test", plain=True):  # at most n: fine
        assert nmsparse.find_mask(torch.randn(4, 8), "2:4", method="lazy")[0].sum() == 0


def test_transposable_columns_are_checked():
    def rows_only(scores, pattern, progress):  # n per row, but every block column 0..n-1
        mask = torch.zeros(scores.shape, dtype=torch.bool)
        mask.view(scores.shape[0], -1, pattern.m)[..., : pattern.n] = True
        return mask

    with registered_solver("rows", rows_only, backend="test", transposable=True):
        with pytest.raises(SolverError, match=r"column\(s\) break 'at most 2 of 4'"):
            nmsparse.find_mask(torch.randn(8, 8), "2:4-T", method="rows")


def test_register_solver_rejects_bad_declarations():
    from nmsparse.solvers import register_solver

    with pytest.raises(ConfigError, match="already registered"):
        register_solver("topn", topn_matrix, plain=True)
    with pytest.raises(ConfigError, match="plain=True and/or transposable=True"):
        register_solver("nothing", topn_matrix)
    with pytest.raises(ConfigError, match="other than 'auto'"):
        register_solver("auto", topn_matrix, plain=True)
    with pytest.raises(ConfigError, match="dtypes"):
        register_solver("ints", topn_matrix, plain=True, dtypes=(torch.int32,))
    with pytest.raises(ConfigError, match="no solver nothing/torch"):
        nmsparse.solvers.unregister_solver("nothing")


def test_dtype_declaration_widens_half_precision_only():
    seen = []

    def record(scores, pattern, progress):
        seen.append(scores.dtype)
        return topn_matrix(scores, pattern)

    with registered_solver("rec", record, backend="test", plain=True, dtypes=(torch.float32,)):
        for dtype in (torch.float16, torch.bfloat16, torch.float32):
            nmsparse.find_mask(torch.randn(2, 4).to(dtype), "2:4", method="rec")
        assert seen == [torch.float32] * 3
        with pytest.raises(BackendUnavailableError, match=r"dtypes \['float32'\] only"):
            nmsparse.find_mask(torch.randn(2, 4, dtype=torch.float64), "2:4", method="rec", backend="test")


# --- inputs from other libraries become nmsparse errors (issue 7) ----------------------------------


@pytest.mark.parametrize("fn", ["find_mask", "is_nm_sparse", "retained_magnitude"])
@pytest.mark.filterwarnings("ignore:Sparse CSR tensor support is in beta")  # torch's notice when building one
def test_meta_sparse_and_non_tensors_give_input_errors(fn):
    import numpy as np

    def call(x):
        if fn == "find_mask":
            return nmsparse.find_mask(x, "2:4")
        if fn == "is_nm_sparse":
            return nmsparse.is_nm_sparse(x, "2:4")
        return nmsparse.retained_magnitude(x, torch.ones(4, 4, dtype=torch.bool))

    dense = torch.randn(4, 4)
    for bad, match in [
        (torch.empty(4, 4, device="meta"), "meta device.*to_empty"),
        (dense.to_sparse(), r"sparse_coo tensor.*to_dense\(\)"),
        (dense.to_sparse_csr(), r"sparse_csr tensor.*to_dense\(\)"),
        (dense.tolist(), r"got list; convert it with torch.as_tensor"),
        (dense.numpy(), r"got ndarray; convert it with torch.as_tensor"),
    ]:
        with pytest.raises(InputError, match=match):
            call(bad)
    with pytest.raises(InputError, match="mask must be a torch.Tensor"):
        nmsparse.retained_magnitude(dense, np.ones((4, 4), dtype=bool))  # type: ignore[arg-type]


def test_demo_command_takes_a_backend(capsys):
    from nmsparse.cli.main import main

    assert main(["demo", "--runs", "4:8-T:exact", "--backend", "torch"]) == 2
    assert "backend 'torch' cannot run exact 4:8-T" in capsys.readouterr().err
