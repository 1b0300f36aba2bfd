"""End-to-end ``nmsparse train``: artefacts, summary, resume == uninterrupted, static fine-tuning, bad inputs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import nmsparse
from nmsparse.cli.main import main
from nmsparse.io import load_pruned_, load_state_dict
from nmsparse.recipes.classify import TrainConfig, build_data, run_training
from nmsparse.recipes.classify.checkpoint import read_model_metadata
from nmsparse.recipes.classify.models import build_model
from nmsparse.recipes.classify.trainer import Trainer
from nmsparse.testing import run_tensors

pytestmark = pytest.mark.usefixtures("restore_runtime")  # tests/conftest.py

# Tiny but real: the digits CNN at width 8 (conv2 16x72, conv3 16x144 take 4:8-T), 4 steps per epoch.
TINY = ["--width", "8", "--epochs", "2", "--steps-per-epoch", "4", "--batch-size", "32", "--no-progress"]
TIMING_KEYS = {"epoch_seconds", "refresh_seconds"}


def load_run_model(path: Path, *, width: int = 8) -> torch.nn.Module:
    """The CNN that ``nmsparse train`` saved as ``model.safetensors``, masks re-attached by the library's loader."""
    return load_pruned_(build_model("cnn", in_channels=1, num_classes=10, image_size=8, width=width), path)


def _cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_train_writes_every_artefact_with_sane_values(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run"
    code, stdout, _ = _cli(["train", *TINY, "--refresh-every", "3", "--out", str(out)], capsys)
    assert code == 0
    assert "test accuracy" in stdout and "dense baseline" in stdout and "masks valid        yes" in stdout
    assert "on cpu, 1 thread ->" in stdout  # the small CNN runs on one thread by default
    for name in (
        "run.json",
        "config.yaml",
        "metrics.jsonl",
        "model.safetensors",
        "checkpoint.safetensors",
        "curves.png",
        "summary.json",
        "baseline/model.safetensors",
        "baseline/metrics.jsonl",
        "baseline/checkpoint.safetensors",
    ):
        assert (out / name).is_file(), name
    assert not (out / "trainer_state.pt").exists(), "one checkpoint file, no separate trainer state"
    assert (out / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list(out.rglob("*.tmp"))
    assert "kernel compile/load before training" in stdout and "left dense       conv1" in stdout

    summary = json.loads((out / "summary.json").read_text())
    for key in ("pattern", "test_accuracy", "baseline_test_accuracy", "mask_valid", "refresh_overhead", "wall_seconds"):
        assert key in summary
    assert summary["pattern"] == "4:8-T" and summary["mask_valid"] is True
    assert 0.0 <= summary["test_accuracy"] <= 100.0 and 0.0 <= summary["baseline_test_accuracy"] <= 100.0
    assert summary["accuracy_gap"] == pytest.approx(summary["baseline_test_accuracy"] - summary["test_accuracy"])
    assert summary["steps"] == 8 and summary["refreshes"] == 2  # refreshed at steps 3 and 6
    assert summary["refresh_overhead"] >= 0.0 and summary["wall_seconds"] > 0.0
    assert summary["sparse_layers"] == ["conv2", "conv3"] and set(summary["dense_layers"]) == {"conv1", "fc"}
    assert summary["mask_density"] == pytest.approx(0.5, abs=0.03)
    assert summary["compile_seconds"] >= 0.0 and summary["threads"] == 1 and summary["version"] == 2
    from nmsparse.recipes.classify import RunSummary

    assert RunSummary.from_dict(summary).to_dict() == summary  # typed summary round trip

    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1, 2] and records[-1]["step"] == 8
    assert records[-1]["test_accuracy"] == summary["test_accuracy"]
    assert records[-1]["refreshes"] == 2

    # The model file reloads into a fresh model (masks attached from the file) and reproduces the accuracy.
    assert read_model_metadata(out / "model.safetensors")["model"] == "cnn"
    cfg = TrainConfig(width=8)
    data = build_data(cfg)
    model = load_run_model(out / "model.safetensors", width=8).eval()
    assert hasattr(model.conv2, "parametrizations") and not hasattr(model.fc, "parametrizations")
    with torch.no_grad():
        accuracy = 100.0 * float((model(data.test.images).argmax(1) == data.test.labels).float().mean())
    assert accuracy == pytest.approx(summary["test_accuracy"], abs=1e-6)
    assert nmsparse.is_nm_sparse(model.conv2.weight, "4:8-T") and nmsparse.is_nm_sparse(model.conv3.weight, "4:8-T")


@pytest.mark.slow  # several whole runs; tests/recipes/test_train_rundir.py covers the logic fast
def test_resume_equals_uninterrupted(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # 3 epochs of 4 steps, refresh every 3 steps (refreshes straddle the interruption), augmentation on.
    # Bit-equality needs the same CPU thread count in every session (reductions split by thread): the command
    # resumes on 1 thread (TrainConfig.threads=None for the cnn), so the library runs below use 1 as well.
    torch.set_num_threads(1)
    cfg = TrainConfig(
        width=8, epochs=3, steps_per_epoch=4, batch_size=32, refresh_every=3, initial_method="greedy", baseline=False
    )
    full = run_training(cfg, tmp_path / "full", progress=False)
    assert full is not None

    assert run_training(cfg, tmp_path / "cut", progress=False, stop_after_epoch=1) is None
    assert not (tmp_path / "cut" / "summary.json").exists()
    code, stdout, _ = _cli(["train", "--resume", str(tmp_path / "cut"), "--no-progress"], capsys)
    assert code == 0 and "resuming" in stdout

    for name in ("model.safetensors", "checkpoint.safetensors"):
        a, b = run_tensors(tmp_path / "full" / name), run_tensors(tmp_path / "cut" / name)
        assert a.keys() == b.keys()
        for key in a:  # bit-identical weights, masks, batch-norm statistics, optimizer moments, RNG states
            assert torch.equal(a[key], b[key]), (name, key)
    lines = [
        [
            {k: v for k, v in json.loads(line).items() if k not in TIMING_KEYS}
            for line in (tmp_path / run / "metrics.jsonl").read_text().splitlines()
        ]
        for run in ("full", "cut")
    ]
    assert lines[0] == lines[1] and len(lines[0]) == 3
    resumed = json.loads((tmp_path / "cut" / "summary.json").read_text())
    assert resumed["test_accuracy"] == full.test_accuracy and resumed["refreshes"] == full.refreshes == 4
    assert resumed["mask_checksum"] == full.mask_checksum and resumed["resumed"] is True


def test_static_fine_tune_from_a_dense_checkpoint(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    dense_cfg = TrainConfig(width=8, epochs=1, steps_per_epoch=4, batch_size=32, mode="dense", baseline=False)
    run_training(dense_cfg, tmp_path / "dense", progress=False)
    init = tmp_path / "dense" / "model.safetensors"
    code, stdout, _ = _cli(
        [
            "train",
            *TINY,
            "--mode",
            "static",
            "--pattern",
            "2:4-T",
            "--init",
            str(init),
            "--no-baseline",
            "--out",
            str(tmp_path / "static"),
        ],
        capsys,
    )
    assert code == 0 and "masks computed once with exact" in stdout

    dense_state = load_state_dict(init)
    static = load_run_model(tmp_path / "static" / "model.safetensors", width=8)
    summary = json.loads((tmp_path / "static" / "summary.json").read_text())
    assert summary["mode"] == "static" and summary["mask_valid"] is True and summary["refreshes"] == 0
    for layer in ("conv2", "conv3"):
        # Masks are the exact 2:4-T masks of the trained dense weights, and stayed fixed while fine-tuning.
        expected = nmsparse.find_mask(dense_state[f"{layer}.weight"], "2:4-T", method="exact")
        module = getattr(static, layer)
        mask = module.parametrizations.weight[0].mask
        assert torch.equal(mask, expected), layer
        fine_tuned = module.parametrizations.weight.original.detach()
        assert not torch.equal(fine_tuned[mask], dense_state[f"{layer}.weight"][mask])  # it did train
    assert not hasattr(static.conv1, "parametrizations") and not hasattr(static.fc, "parametrizations")


def test_static_from_a_pruned_checkpoint_starts_from_the_masked_weights(tmp_path: Path) -> None:
    sparse_cfg = TrainConfig(
        width=8, epochs=1, steps_per_epoch=2, batch_size=32, baseline=False, initial_method="greedy"
    )
    run_training(sparse_cfg, tmp_path / "sparse", progress=False)
    cfg = TrainConfig(
        width=8,
        epochs=1,
        steps_per_epoch=1,
        batch_size=32,
        mode="static",
        pattern="2:4",
        init=str(tmp_path / "sparse" / "model.safetensors"),
        baseline=False,
    )
    trainer = Trainer(cfg)
    source = load_run_model(tmp_path / "sparse" / "model.safetensors", width=8)
    masked = source.conv2.weight.detach()  # the source's masked weights
    assert torch.equal(trainer.model.conv2.weight, masked * trainer.model.conv2.parametrizations.weight[0].mask)


# ---------------------------------------------------------------------------------------------- bad inputs


def _one_line_error(code: int, err: str, needle: str) -> None:
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("nmsparse "), err
    assert needle in lines[0], lines[0]


def test_missing_data_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = _cli(["train", *TINY, "--data", str(tmp_path / "nowhere"), "--out", str(tmp_path / "o")], capsys)
    _one_line_error(code, err, "does not exist")
    assert not (tmp_path / "o").exists()  # nothing written before the inputs are checked


def test_init_checkpoint_of_another_model(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run_training(
        TrainConfig(model="mlp", width=8, epochs=1, steps_per_epoch=1, mode="dense", baseline=False),
        tmp_path / "mlp",
        progress=False,
    )
    init = str(tmp_path / "mlp" / "model.safetensors")
    code, _, err = _cli(["train", *TINY, "--mode", "static", "--init", init, "--out", str(tmp_path / "o")], capsys)
    _one_line_error(code, err, "holds a 'mlp' model but this run builds 'cnn'")
    # Same model name, other shapes (width 16 vs 8): named, with the fix.
    code, _, err = _cli(
        [
            "train",
            *TINY,
            "--model",
            "mlp",
            "--width",
            "16",
            "--mode",
            "static",
            "--init",
            init,
            "--out",
            str(tmp_path / "o2"),
        ],
        capsys,
    )
    _one_line_error(code, err, "does not fit model 'mlp'")


def test_pattern_that_fits_no_layer(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = _cli(["train", *TINY, "--pattern", "16:32-T", "--out", str(tmp_path / "o")], capsys)
    _one_line_error(code, err, "no layer of the model can take pattern 16:32-T")
    assert not (tmp_path / "o").exists()


def test_bad_yaml_key(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "c.yaml"
    config.write_text("epochs: 1\nlearning_rate: 0.1\n")
    code, _, err = _cli(["train", "--config", str(config), "--out", str(tmp_path / "o")], capsys)
    _one_line_error(code, err, "unknown setting 'learning_rate'")


def test_resume_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = _cli(["train", "--resume", str(tmp_path / "missing")], capsys)
    _one_line_error(code, err, "does not exist")
    (tmp_path / "empty").mkdir()
    code, _, err = _cli(["train", "--resume", str(tmp_path / "empty")], capsys)
    _one_line_error(code, err, "holds no config.yaml")
    code, _, err = _cli(["train", "--resume", str(tmp_path / "empty"), "--lr", "0.3"], capsys)
    _one_line_error(code, err, "drop --lr")
    code, _, err = _cli(["train", "--resume", str(tmp_path / "empty"), "--width", "8", "--config", "x.yaml"], capsys)
    _one_line_error(code, err, "drop --width, --config")


@pytest.mark.slow  # several whole runs; tests/recipes/test_train_rundir.py covers the logic fast
def test_run_killed_in_its_first_epoch_is_not_stuck(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Fault 3: a run directory without a checkpoint resumes from nothing, and the same --out restarts it."""
    run_dir = tmp_path / "run"
    code, _, _ = _cli(["train", *TINY, "--epochs", "1", "--no-baseline", "--out", str(run_dir)], capsys)
    assert code == 0
    reference = json.loads((run_dir / "summary.json").read_text())
    for name in ("checkpoint.safetensors", "metrics.jsonl", "summary.json", "model.safetensors", "curves.png"):
        (run_dir / name).unlink()  # = killed in epoch 1: marker and config written, no checkpoint yet
    code, stdout, _ = _cli(["train", "--resume", str(run_dir), "--no-progress"], capsys)
    assert code == 0 and "resuming" in stdout
    assert json.loads((run_dir / "summary.json").read_text())["test_accuracy"] == reference["test_accuracy"]
    for name in ("checkpoint.safetensors", "metrics.jsonl", "summary.json", "model.safetensors", "curves.png"):
        (run_dir / name).unlink()
    code, stdout, _ = _cli(["train", *TINY, "--epochs", "1", "--no-baseline", "--out", str(run_dir)], capsys)
    assert code == 0 and "restarting (no checkpoint yet)" in stdout
    assert json.loads((run_dir / "summary.json").read_text())["test_accuracy"] == reference["test_accuracy"]


@pytest.mark.slow  # several whole runs; tests/recipes/test_train_rundir.py covers the logic fast
def test_no_silent_overwrites(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Fault 5: compare --out on a train run, --resume on a finished run, train --out on any run: refused."""
    run_dir = tmp_path / "run"
    code, _, _ = _cli(["train", *TINY, "--epochs", "1", "--no-baseline", "--out", str(run_dir)], capsys)
    assert code == 0
    before = {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file()}

    code, _, err = _cli(["compare", *TINY, "--epochs", "1", "--structures", "dense", "--out", str(run_dir)], capsys)
    _one_line_error(code, err, "holds a finished classify run")
    code, _, err = _cli(["train", "--resume", str(run_dir), "--no-progress"], capsys)
    _one_line_error(code, err, "finished already")
    code, _, err = _cli(["train", *TINY, "--out", str(run_dir)], capsys)
    _one_line_error(code, err, "--overwrite")
    assert {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file()} == before, "nothing was touched"

    # A user's own file where a run would write: refused too, and left as it was.
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "config.yaml").write_text("my notes\n")
    code, _, err = _cli(["train", *TINY, "--out", str(mine)], capsys)
    _one_line_error(code, err, "nmsparse did not create")
    assert (mine / "config.yaml").read_text() == "my notes\n"
    # ... unless the user says so.
    code, _, _ = _cli(["train", *TINY, "--epochs", "1", "--no-baseline", "--out", str(mine), "--overwrite"], capsys)
    assert code == 0 and (mine / "config.yaml").read_text() != "my notes\n"


def test_failed_compare_writes_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "cmp"
    code, _, err = _cli(["compare", *TINY, "--structures", "dense", "16:32-T", "--out", str(out)], capsys)
    _one_line_error(code, err, "16:32-T")
    code, _, err = _cli(
        ["compare", *TINY, "--structures", "2:4", "--data", str(tmp_path / "nowhere"), "--out", str(out)], capsys
    )
    _one_line_error(code, err, "does not exist")
    assert not out.exists()


def test_lm_flags_do_not_apply_to_classification(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from nmsparse.cli.train import lm_config_class

    lm = lm_config_class()
    if lm is None:
        pytest.skip("nmsparse.recipes.lm.LMTrainConfig is not available")
    import dataclasses

    from nmsparse.recipes.classify import TrainConfig

    only_lm = sorted(set(f.name for f in dataclasses.fields(lm)) - set(f.name for f in dataclasses.fields(TrainConfig)))
    assert only_lm, "LMTrainConfig has settings of its own"
    field = dataclasses.fields(lm)[[f.name for f in dataclasses.fields(lm)].index(only_lm[0])]
    flag = "--" + field.name.replace("_", "-")
    value = "--no-" + field.name.replace("_", "-") if field.type in (bool, "bool") else None
    argv = ["train", *TINY, value] if value else ["train", *TINY, flag, str(field.default)]
    code, _, err = _cli([*argv, "--out", str(tmp_path / "o")], capsys)
    _one_line_error(code, err, "does not apply to --task classify")


def test_trainer_keeps_the_callers_thread_count() -> None:
    # numba's OpenMP layer, when the solvers run on it, resets torch's OpenMP thread count (1 -> all cores);
    # the trainer puts the caller's count back after every mask computation.
    torch.set_num_threads(1)
    trainer = Trainer(TrainConfig(width=8, epochs=1, steps_per_epoch=3, batch_size=32, refresh_every=1, baseline=False))
    assert torch.get_num_threads() == 1
    assert trainer.fit().refreshes == 3
    assert torch.get_num_threads() == 1
