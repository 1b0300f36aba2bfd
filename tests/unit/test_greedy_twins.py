"""The compiled CPU greedy kernel and the vectorised torch greedy are twins: masks bit-equal."""

import pytest
import torch

from nmsparse.solvers.greedy import greedy_blocks, repair_blocks
from nmsparse.solvers.greedy_cpu import greedy_blocks_cpu


@pytest.mark.parametrize("m, n", [(4, 1), (4, 2), (4, 3), (8, 2), (8, 4), (8, 6), (16, 8), (32, 16)])
@pytest.mark.parametrize("kind", ["gaussian", "ties", "zeros"])
def test_compiled_greedy_equals_torch_greedy(m, n, kind):
    torch.manual_seed(m * 10 + n)
    blocks = torch.randn(300 if m < 32 else 20, m, m)
    if kind == "ties":
        blocks = blocks.round()
    elif kind == "zeros":
        blocks = blocks * (torch.rand_like(blocks) < 0.1)
    blocks = blocks.abs()
    assert torch.equal(greedy_blocks_cpu(blocks, n), greedy_blocks(blocks, n))
    assert torch.equal(greedy_blocks_cpu(blocks.double(), n), greedy_blocks(blocks, n))


@pytest.mark.parametrize("m, n", [(4, 2), (8, 4), (8, 3), (16, 8)])
def test_repair_reaches_exactly_n_and_only_adds_value(m, n):
    torch.manual_seed(m + n)
    blocks = torch.rand(500, m, m)
    greedy = greedy_blocks(blocks, n)
    repaired = repair_blocks(blocks, greedy, n)
    assert (repaired.sum(1) == n).all() and (repaired.sum(2) == n).all()
    # blocks that greedy already filled are left alone
    short = (greedy.sum(2) < n).any(1)
    assert short.any(), "the test needs some greedy blocks with short rows"
    unchanged = ~short
    assert torch.equal(repaired[unchanged], greedy[unchanged])
