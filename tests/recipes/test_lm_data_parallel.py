"""``nmsparse train --task lm`` under ``torchrun --nproc_per_node 2`` (gloo on localhost): FSDP2 and DDP against one
process, and ``--resume`` of an interrupted two-process run.

The decoder is tiny (d_model 36, one block) so the four launches take seconds each. d_model 36 makes FSDP2's
row shards of ``c_attn`` (108 rows -> 54 per rank) and ``c_proj`` (36 -> 18) break 2:4-T's 4-row blocks (the
mask code's gather path), while ``c_fc`` (144 -> 72) stays aligned (its local path).

Tolerance of "equals one process": dropout is 0 and the global batch of 8 splits into 2 x 4 rows, so a step's
gradient is the one-process gradient up to float32 summation order. AdamW divides by the gradients' root mean
square, which magnifies those differences where a gradient is near zero: after 8 steps at lr 1e-2 the weights
differed by at most 5.8e-6 (DDP) and 7.1e-6 (FSDP2) when this test was written. It allows 1e-4, 1% of one step's
update; the masks must be identical and the held-out losses agree to 1e-6 relative (measured: at most 3e-8).
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

from nmsparse.recipes.lm import LMTrainConfig, run_lm_training
from nmsparse.testing import run_tensors

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not dist.is_available() or not dist.is_gloo_available(), reason="torch.distributed with gloo is not available"
    ),
]

SETTINGS = dict(
    sources=("topics",),
    d_model=36,
    n_layer=1,
    n_head=2,
    context=32,
    batch_size=8,
    steps=8,
    warmup_steps=1,
    lr=1e-2,
    eval_every=4,
    eval_tokens=512,
    eval_batch_size=64,
    pattern="2:4-T",
    method="exact",
    initial_method="exact",
    refresh_every=3,
    baseline=False,
    threads=1,
    device="cpu",
)
STOP_AT = 4  # the interrupted run stops at its first checkpoint


def _env() -> dict[str, str]:
    env = dict(os.environ, OMP_NUM_THREADS="1", NUMBA_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    env.pop("NMSPARSE_DEBUG", None)
    return env


def _torchrun(args: list[str], cwd: Path, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", *args]
    result = subprocess.run(command, cwd=cwd, env=_env(), capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-6000:]
    return result


def _flags(settings: dict[str, object]) -> list[str]:
    out: list[str] = []
    for key, value in settings.items():
        name = "--" + key.replace("_", "-")
        if isinstance(value, bool):
            out.append(name if value else "--no-" + key.replace("_", "-"))
        elif isinstance(value, tuple):
            out += [name, *map(str, value)]
        else:
            out += [name, str(value)]
    return out


def _train(tmp: Path, name: str, parallel: str) -> Path:
    out = tmp / name
    result = _torchrun(
        [
            "-m",
            "nmsparse",
            "train",
            "--task",
            "lm",
            *_flags(SETTINGS),
            "--parallel",
            parallel,
            "--no-progress",
            "--out",
            str(out),
        ],
        cwd=tmp,
    )
    assert result.stdout.count("held-out loss") == 1, result.stdout  # only rank 0 prints
    assert f"2 processes ({parallel})" in result.stdout
    return out


def _model_tensors(run: Path) -> dict[str, torch.Tensor]:
    return {k: v for k, v in run_tensors(str(run / "checkpoint.safetensors")).items() if not k.startswith("state/")}


@pytest.fixture(scope="module")
def single(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The one-process run (one thread, as each torchrun worker)."""
    threads = torch.get_num_threads()
    out = tmp_path_factory.mktemp("lm_single") / "run"
    try:
        run_lm_training(LMTrainConfig(**SETTINGS), out, progress=False)
    finally:
        torch.set_num_threads(threads)
    yield out


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The uninterrupted two-process runs, one per engine, trained when a test first asks for one."""
    return {}


def _run_of(runs: dict[str, Path], parallel: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    if parallel not in runs:
        runs[parallel] = _train(tmp_path_factory.mktemp(f"lm_{parallel}"), parallel, parallel)
    return runs[parallel]


def _assert_same_training(parallel_run: Path, single: Path) -> None:
    a, b = json.loads((parallel_run / "summary.json").read_text()), json.loads((single / "summary.json").read_text())
    assert a["world_size"] == 2 and b["world_size"] == 1
    assert a["mask_valid"] is True and a["refreshes"] == b["refreshes"] == 2
    assert a["heldout_loss"] == pytest.approx(b["heldout_loss"], rel=1e-6)
    for x, y in zip(a["history"], b["history"], strict=True):
        assert x["train_loss"] == pytest.approx(y["train_loss"], rel=1e-6)
        assert x["heldout_loss"] == pytest.approx(y["heldout_loss"], rel=1e-6)
    ta, tb = _model_tensors(parallel_run), _model_tensors(single)
    assert ta.keys() == tb.keys() and any(t.dtype == torch.bool for t in ta.values())
    for key in ta:
        if ta[key].dtype == torch.bool:
            assert torch.equal(ta[key], tb[key]), key  # identical masks
        else:
            torch.testing.assert_close(ta[key], tb[key], rtol=0, atol=1e-4, msg=key)
    # Rank 0 alone wrote: nothing but the run directory next to it.
    assert [p.name for p in parallel_run.parent.iterdir()] == [parallel_run.name]


@pytest.mark.parametrize("parallel", ["ddp", "fsdp"])
def test_two_processes_match_one(
    parallel: str, runs: dict[str, Path], single: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    run = _run_of(runs, parallel, tmp_path_factory)
    _assert_same_training(run, single)
    assert (run / "hf" / "config.json").is_file()  # the model (gathered under FSDP2), exported once


INTERRUPT = textwrap.dedent(
    """
    import json, sys
    from pathlib import Path
    from nmsparse.recipes.lm.config import LMTrainConfig, lm_config_to_yaml
    from nmsparse.recipes.lm.data import build_lm_data
    from nmsparse.recipes.lm.task import BASELINE_DIR, LMTrainer, TASK
    from nmsparse.recipes.distributed import init_distributed, shutdown_distributed
    from nmsparse.recipes.rundir import RunDir, config_hash

    out, parallel, settings, stop = Path(sys.argv[1]), sys.argv[2], json.loads(sys.argv[3]), int(sys.argv[4])
    config = LMTrainConfig.from_dict(settings)
    ctx = init_distributed(device="cpu")
    run = RunDir.prepare(out, task=TASK, outputs=("curves.png", "hf"), sections=(BASELINE_DIR,))
    digest = config_hash(config.to_dict())
    trainer = LMTrainer(config, build_lm_data(sources=config.sources), structure=config.structure, run=run,
                        digest=digest, progress=False, dist=ctx, parallel=parallel)
    if ctx.is_main:
        run.create(config_text=lm_config_to_yaml(config), config_hash=digest)
    trainer.fit(stop_after_step=stop)  # like a kill right after the checkpoint of step `stop`
    shutdown_distributed(ctx, completed=True)
    """
)


@pytest.mark.parametrize("parallel", ["ddp", "fsdp"])
def test_resume_after_interruption_is_bit_identical(
    parallel: str, tmp_path: Path, runs: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> None:
    whole_run = _run_of(runs, parallel, tmp_path_factory)
    script = tmp_path / "interrupt.py"
    script.write_text(INTERRUPT)
    out = tmp_path / "cut"
    settings = {k: list(v) if isinstance(v, tuple) else v for k, v in SETTINGS.items()}
    _torchrun([str(script), str(out), parallel, json.dumps(settings), str(STOP_AT)], cwd=tmp_path)
    assert not (out / "summary.json").exists()
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 1
    flags = [] if parallel == "fsdp" else ["--parallel", parallel]  # fsdp: the default under torchrun
    result = _torchrun(["-m", "nmsparse", "train", "--resume", str(out), *flags, "--no-progress"], cwd=tmp_path)
    assert f"resuming on 2 processes ({parallel}" in result.stdout
    resumed = run_tensors(str(out / "checkpoint.safetensors"))
    whole = run_tensors(str(whole_run / "checkpoint.safetensors"))
    assert resumed.keys() == whole.keys()
    for key in resumed:  # weights, masks, AdamW moments, per-rank RNG states
        assert torch.equal(resumed[key], whole[key]), key
    a, b = json.loads((out / "summary.json").read_text()), json.loads((whole_run / "summary.json").read_text())
    assert a["heldout_loss"] == b["heldout_loss"]
    assert [r["heldout_loss"] for r in a["history"]] == [r["heldout_loss"] for r in b["history"]]


def test_a_transformers_folder_fine_tunes_on_two_processes_as_on_one(tmp_path: Path) -> None:
    """``--model hf:FOLDER`` (a tiny LLaMA, bytes, ``--data``) under FSDP2 ends where one process ends."""
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.LlamaConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        vocab_size=256,
        max_position_embeddings=64,
    )
    transformers.LlamaForCausalLM(config).save_pretrained(str(tmp_path / "llama"))
    words = "the quick brown fox jumps over a lazy dog while sparse masks keep half of every block".split()
    (tmp_path / "data.txt").write_text(
        "\n\n".join(" ".join(words[(i * 7 + j) % len(words)] for j in range(20)) for i in range(120)), encoding="utf-8"
    )
    flags = [
        "--task",
        "lm",
        "--model",
        f"hf:{tmp_path / 'llama'}",
        "--data",
        str(tmp_path / "data.txt"),
        "--steps",
        "6",
        "--warmup-steps",
        "1",
        "--eval-every",
        "3",
        "--batch-size",
        "4",
        "--context",
        "16",
        "--eval-tokens",
        "256",
        "--lr",
        "1e-3",
        "--pattern",
        "2:4-T",
        "--refresh-every",
        "2",
        "--threads",
        "1",
        "--no-baseline",
        "--no-progress",
    ]
    single = subprocess.run(
        [sys.executable, "-m", "nmsparse", "train", *flags, "--out", str(tmp_path / "one")],
        cwd=tmp_path,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert single.returncode == 0, single.stderr[-3000:]
    _torchrun(["-m", "nmsparse", "train", *flags, "--out", str(tmp_path / "two")], cwd=tmp_path)
    one, two = (json.loads((tmp_path / run / "summary.json").read_text()) for run in ("one", "two"))
    assert two["world_size"] == 2 and two["mask_valid"] is True
    assert two["heldout_loss"] == pytest.approx(one["heldout_loss"], rel=1e-6)
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path / "two" / "hf"))
    reference = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path / "one" / "hf"))
    ids = torch.randint(0, 256, (1, 8))
    with torch.no_grad():
        torch.testing.assert_close(reloaded(ids).logits, reference(ids).logits, rtol=0, atol=1e-4)
