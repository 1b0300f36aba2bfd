"""Data-parallel ``nmsparse train`` under ``torchrun`` with 2 CPU processes (gloo on localhost).

Tolerance of "DDP matches one process": the MLP has no batch norm, augmentation is off and the global batch is
split evenly, so each DDP step averages two half-batch mean gradients where one process takes one full-batch
mean. The only difference is float32 summation order (about 1e-7 relative per step): after 8 steps the weights
agreed to 2e-8 when this test was written; the test allows 1e-5, and requires identical masks (greedy refreshes
on |W|) and test accuracy within 2 of 719 images.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

from nmsparse.io import load_state_dict
from nmsparse.recipes.classify import TrainConfig, run_training

pytestmark = pytest.mark.skipif(
    not dist.is_available() or not dist.is_gloo_available(), reason="torch.distributed with gloo is not available"
)

SETTINGS = dict(
    model="mlp",
    width=8,
    epochs=2,
    steps_per_epoch=4,
    batch_size=32,
    refresh_every=3,
    initial_method="greedy",
    augment=False,
    keep_first_last=False,
    baseline=False,
    device="cpu",
)


def _torchrun(args: list[str], cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", *args]
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def _flag(key: str, value: object) -> list[str]:
    name = "--" + key.replace("_", "-")
    if isinstance(value, bool):
        return [name if value else "--no-" + key.replace("_", "-")]
    return [name, str(value)]


@pytest.fixture
def one_thread() -> Iterator[None]:
    """Run the single-process reference on one thread, as each torchrun worker does; restore afterwards."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_two_processes_match_one(tmp_path: Path, one_thread: None) -> None:
    flags = [f for key, value in SETTINGS.items() for f in _flag(key, value)]
    result = _torchrun(
        ["-m", "nmsparse", "train", *flags, "--no-progress", "--out", str(tmp_path / "ddp")], cwd=tmp_path
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    assert result.stdout.count("nmsparse train: mlp on") == 1  # only rank 0 prints
    assert "2 process(es)" in result.stdout
    ddp = json.loads((tmp_path / "ddp" / "summary.json").read_text())
    assert ddp["world_size"] == 2 and ddp["mask_valid"] is True and ddp["refreshes"] == 2

    single = run_training(TrainConfig(**SETTINGS), tmp_path / "single", progress=False)
    assert single is not None
    assert ddp["mask_checksum"] == single.mask_checksum  # identical masks, also identical to one process
    assert abs(ddp["test_accuracy"] - single.test_accuracy) <= 0.3  # at most 2 of 719 images flip
    a = load_state_dict(tmp_path / "ddp" / "model.safetensors")
    b = load_state_dict(tmp_path / "single" / "model.safetensors")
    assert a.keys() == b.keys()
    for key in a:
        if a[key].dtype == torch.bool:
            assert torch.equal(a[key], b[key]), key
        else:
            torch.testing.assert_close(a[key], b[key], rtol=0, atol=1e-5, msg=key)
    # Only rank 0 wrote: no stray files from rank 1 next to the run directory.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ddp", "single"]


MISMATCH_SCRIPT = textwrap.dedent(
    """
    import torch, torch.distributed as dist, nmsparse
    from nmsparse.errors import MaskMismatchError
    from nmsparse.recipes.distributed import init_distributed, check_masks_identical

    ctx = init_distributed(device="cpu")
    torch.manual_seed(0)
    model = nmsparse.prune_(torch.nn.Sequential(torch.nn.Linear(16, 16)), "2:4").model
    check_masks_identical(model, ctx, where="same")  # identical: passes
    if ctx.rank == 1:
        mask = model[0].parametrizations.weight[0].mask
        mask[0] = mask[0].roll(1)
    try:
        check_masks_identical(model, ctx, where="after divergence")
    except MaskMismatchError as exc:
        print(f"rank {ctx.rank} caught: {exc}")
    dist.barrier()  # tearing gloo down while the other rank still works can abort it
    dist.destroy_process_group()
    """
)


def test_diverging_masks_fail_loudly(tmp_path: Path) -> None:
    script = tmp_path / "mismatch.py"
    script.write_text(MISMATCH_SCRIPT)
    result = _torchrun([str(script)], cwd=tmp_path)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    for rank in (0, 1):
        assert f"rank {rank} caught: after divergence: masks differ between ranks" in result.stdout
    assert "ranks [1] disagree with rank 0" in result.stdout
