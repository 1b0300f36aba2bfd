import pytest
import torch

import nmsparse
from nmsparse.errors import InputError, MaskMismatchError, ShapeError


def test_is_nm_sparse_counts_nonzeros_of_weights_and_masks():
    w = torch.tensor([[1.0, 0.0, 2.0, 0.0, 0.0, 0.0, 0.0, 3.0]])
    assert nmsparse.is_nm_sparse(w, "2:4")
    assert nmsparse.is_nm_sparse(w != 0, "2:4")
    assert not nmsparse.is_nm_sparse(w, "1:4")
    assert nmsparse.is_nm_sparse(torch.zeros(4, 8), "1:4")  # at most n


def test_is_nm_sparse_transposable_checks_columns_too():
    rows_only = torch.tensor([[1, 1, 0, 0]] * 4, dtype=torch.bool)  # every row 2:4, columns 0 and 1 hold 4
    assert nmsparse.is_nm_sparse(rows_only, "2:4")
    assert not nmsparse.is_nm_sparse(rows_only, "2:4-T")
    diagonal = torch.tensor([[1, 1, 0, 0], [0, 1, 1, 0], [0, 0, 1, 1], [1, 0, 0, 1]], dtype=torch.bool)
    assert nmsparse.is_nm_sparse(diagonal, "2:4-T")


def test_is_nm_sparse_block_columns():
    mask = torch.tensor([[1, 1, 0, 0], [1, 1, 0, 0], [0, 0, 1, 1], [0, 0, 1, 1]] * 2, dtype=torch.bool)
    assert nmsparse.is_nm_sparse(mask, "2:4-T")
    bad = mask.clone()
    bad[0, 2] = True
    bad[0, 1] = False  # row 0 still has 2, column 2 of block 0 now has 3
    assert not nmsparse.is_nm_sparse(bad, "2:4-T")


def test_is_nm_sparse_conv_and_errors():
    w = torch.randn(8, 8, 3, 3)
    assert nmsparse.is_nm_sparse(nmsparse.find_mask(w, "4:8-T", method="greedy"), "4:8-T")
    with pytest.raises(ShapeError):
        nmsparse.is_nm_sparse(torch.ones(4, 6), "2:4")


def test_retained_magnitude():
    w = torch.tensor([[3.0, -1.0, 0.0, 4.0]])
    assert nmsparse.retained_magnitude(w, torch.tensor([[True, False, False, True]])) == pytest.approx(7 / 8)
    assert nmsparse.retained_magnitude(torch.zeros(2, 4), torch.zeros(2, 4, dtype=torch.bool)) == 1.0
    with pytest.raises(MaskMismatchError, match="does not match"):
        nmsparse.retained_magnitude(w, torch.ones(2, 2, dtype=torch.bool))


def test_gaussian_kept_fractions_match_the_known_values():
    # Row-only n:m on Gaussian weights keeps 0.7445 (2:4) and 0.7683 (4:8) of |w|
    torch.manual_seed(0)
    w = torch.randn(1024, 1024)
    assert nmsparse.retained_magnitude(w, nmsparse.find_mask(w, "2:4")) == pytest.approx(0.7445, abs=2e-3)
    assert nmsparse.retained_magnitude(w, nmsparse.find_mask(w, "4:8")) == pytest.approx(0.7683, abs=2e-3)


def test_retained_magnitude_is_finite_for_extreme_float64():
    # Regression (issue 7): the float64 sum of values near 1e308 overflowed and inf / inf gave NaN.
    big = torch.full((2, 4), torch.finfo(torch.float64).max, dtype=torch.float64)
    mask = torch.tensor([[True, True, False, False]] * 2)
    assert nmsparse.retained_magnitude(big, mask) == 0.5
    tiny = torch.zeros(4, 4, dtype=torch.float64)
    tiny[0, 0], tiny[1, 1] = 1e-320, 3e-320
    assert nmsparse.retained_magnitude(tiny, tiny != 0) == 1.0
    assert nmsparse.retained_magnitude(tiny, torch.eye(4, dtype=torch.bool) & (tiny == 1e-320)) == pytest.approx(0.25)
    with pytest.raises(InputError, match="non-finite"):
        nmsparse.retained_magnitude(torch.tensor([1.0, float("inf")]), torch.tensor([True, False]))


def test_is_nm_sparse_on_meta_and_sparse_tensors_says_how_to_fix():
    with pytest.raises(InputError, match="meta device"):
        nmsparse.is_nm_sparse(torch.empty(4, 4, device="meta"), "2:4")
    with pytest.raises(InputError, match=r"to_dense\(\)"):
        nmsparse.is_nm_sparse(torch.eye(4).to_sparse(), "2:4")
