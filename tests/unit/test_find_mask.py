import itertools

import pytest
import torch

import nmsparse
from nmsparse.errors import ConfigError, InputError, PatternError, ShapeError
from nmsparse.layout import from_matrix, to_matrix


def reference_topn(matrix: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """Plain-Python per-group top-n: sort each group by (-score, index)."""
    out = torch.zeros(matrix.shape, dtype=torch.bool)
    for r in range(matrix.shape[0]):
        for g in range(0, matrix.shape[1], m):
            scores = matrix[r, g:g + m].tolist()
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
        [1, 1, 0, 0], [1, 1, 0, 0], [0, 0, 1, 1], [0, 0, 1, 1]]


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
    [((4, 6), "2:4", "reduction dimension"), ((6, 8), "4:8-T", "output dimension"), ((4,), "2:4", "1-D"),
     ((2, 4, 4), "2:4", "3-D"), ((0, 4), "2:4", "empty"), ((8, 3, 3, 3), "2:4", r"in\*kh\*kw")],
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
    with pytest.raises(InputError, match="torch.Tensor"):
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
        assert torch.equal(nmsparse.find_mask(w, pattern, method=method),
                           nmsparse.find_mask(w.clone(), pattern, method=method))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("pattern, method", [("2:4", "auto"), ("4:8-T", "greedy"), ("2:4-T", "exact"),
                                             ("4:8-T", "exact")])
def test_cuda_matches_cpu(pattern, method):
    w = torch.randn(64, 128)
    mask = nmsparse.find_mask(w.cuda(), pattern, method=method)
    assert mask.device.type == "cuda"
    assert torch.equal(mask.cpu(), nmsparse.find_mask(w, pattern, method=method))
