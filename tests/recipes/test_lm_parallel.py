"""The data-parallel pieces of the LM recipe that need no process group (the torchrun runs are in
tests/recipes/test_lm_data_parallel.py)."""

from __future__ import annotations

import pytest
import torch

from nmsparse.errors import ConfigError
from nmsparse.recipes.distributed import DistContext
from nmsparse.recipes.lm.data import build_lm_data
from nmsparse.recipes.lm.model import GPT, GPTConfig
from nmsparse.recipes.lm.parallel import (
    check_parallel,
    decoder_blocks,
    full_tensors,
    local_rows,
    sharded_heldout_loss,
    wrap_model,
)
from nmsparse.recipes.lm.task import heldout_loss


def test_each_rank_keeps_its_contiguous_rows_of_the_global_batch() -> None:
    batch = torch.arange(8).view(8, 1)
    parts = [local_rows(batch, DistContext(rank=r, world_size=4)) for r in range(4)]
    assert torch.equal(torch.cat(parts), batch) and all(p.shape == (2, 1) for p in parts)
    assert local_rows(batch, DistContext()) is batch


def test_bad_engine_or_uneven_batch_is_refused_with_the_fix() -> None:
    with pytest.raises(ConfigError, match="multiple of 3"):
        check_parallel("fsdp", 16, DistContext(rank=0, world_size=3))
    with pytest.raises(ConfigError, match="parallel must be one of"):
        check_parallel("zero3", 16, DistContext(rank=0, world_size=2))
    check_parallel("ddp", 16, DistContext(rank=0, world_size=2))


def test_fsdp_shards_the_decoder_blocks_one_by_one() -> None:
    model = GPT(GPTConfig(context=8, d_model=16, n_layer=3, n_head=2))
    assert decoder_blocks(model) == list(model.transformer.h)
    assert decoder_blocks(torch.nn.Sequential(torch.nn.Linear(2, 2))) == []
    assert wrap_model(model, "fsdp", DistContext(), torch.device("cpu")) is model  # one process: unchanged


def test_one_rank_heldout_loss_equals_the_single_process_one() -> None:
    data = build_lm_data(sources=("topics",))
    torch.manual_seed(0)
    model = GPT(GPTConfig(context=32, d_model=16, n_layer=1, n_head=2))
    expected = heldout_loss(model, data, context=32, batch_size=16, max_tokens=2000)
    got = sharded_heldout_loss(model, data, context=32, batch_size=16, max_tokens=2000, ctx=DistContext())
    assert got == pytest.approx(expected, rel=1e-6)


def test_full_tensors_leaves_plain_values_alone() -> None:
    state = {"a": torch.ones(2), "b": [1, (torch.zeros(1), "x")]}
    out = full_tensors(state)
    assert torch.equal(out["a"], state["a"]) and out["b"][1][1] == "x"
