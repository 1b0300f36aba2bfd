"""End-to-end ``nmsparse train``: artefacts, summary, resume == uninterrupted, static fine-tuning, bad inputs."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

import nmsparse
from nmsparse.cli.main import main
from nmsparse.io import load_state_dict
from nmsparse.recipes.train import TrainConfig, build_data, build_model, run_training
from nmsparse.recipes.train.checkpoint import read_model_metadata
from nmsparse.recipes.train.trainer import Trainer

# Tiny but real: the digits CNN at width 8 (conv2 16x72, conv3 16x144 take 4:8-T), 4 steps per epoch.
@pytest.fixture(autouse=True)
def _restore_runtime(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The commands set torch's thread count and NUMBA_THREADING_LAYER: undo both after each test."""
    monkeypatch.setenv("NUMBA_THREADING_LAYER", os.environ.get("NUMBA_THREADING_LAYER", "workqueue"))
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


TINY = ["--width", "8", "--epochs", "2", "--steps-per-epoch", "4", "--batch-size", "32", "--no-progress"]
TIMING_KEYS = {"epoch_seconds", "refresh_seconds"}


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
    for name in ("config.yaml", "metrics.jsonl", "model.safetensors", "trainer_state.pt", "curves.png",
                 "summary.json", "baseline/model.safetensors", "baseline/metrics.jsonl"):
        assert (out / name).is_file(), name
    assert (out / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list(out.rglob("*.tmp"))

    summary = json.loads((out / "summary.json").read_text())
    for key in ("pattern", "test_accuracy", "baseline_test_accuracy", "mask_valid", "refresh_overhead",
                "wall_seconds"):
        assert key in summary
    assert summary["pattern"] == "4:8-T" and summary["mask_valid"] is True
    assert 0.0 <= summary["test_accuracy"] <= 100.0 and 0.0 <= summary["baseline_test_accuracy"] <= 100.0
    assert summary["accuracy_gap"] == pytest.approx(summary["baseline_test_accuracy"] - summary["test_accuracy"])
    assert summary["steps"] == 8 and summary["refreshes"] == 2  # refreshed at steps 3 and 6
    assert summary["refresh_overhead"] >= 0.0 and summary["wall_seconds"] > 0.0
    assert summary["sparse_layers"] == ["conv2", "conv3"] and set(summary["dense_layers"]) == {"conv1", "fc"}
    assert summary["mask_density"] == pytest.approx(0.5, abs=0.03)

    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1, 2] and records[-1]["step"] == 8
    assert records[-1]["test_accuracy"] == summary["test_accuracy"]
    assert records[-1]["refreshes"] == 2

    # The checkpoint reloads into a fresh model (masks attached from the file) and reproduces the accuracy.
    assert read_model_metadata(out / "model.safetensors")["model"] == "cnn"
    state = load_state_dict(out / "model.safetensors")
    assert "conv2.parametrizations.weight.0.mask" in state and "fc.weight" in state
    cfg = TrainConfig(width=8)
    data = build_data(cfg)
    model = nmsparse.load_pruned_state_dict_(
        build_model("cnn", in_channels=1, num_classes=10, image_size=8, width=8), state).eval()
    with torch.no_grad():
        accuracy = 100.0 * float((model(data.test.images).argmax(1) == data.test.labels).float().mean())
    assert accuracy == pytest.approx(summary["test_accuracy"], abs=1e-6)
    assert nmsparse.is_nm_sparse(model.conv2.weight, "4:8-T") and nmsparse.is_nm_sparse(model.conv3.weight, "4:8-T")


def _tensors(path: Path) -> dict[str, torch.Tensor]:
    return load_state_dict(path)


def test_resume_equals_uninterrupted(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # 3 epochs of 4 steps, refresh every 3 steps (refreshes straddle the interruption), augmentation on.
    # Bit-equality needs the same CPU thread count in every session (reductions split by thread): the command
    # resumes on 1 thread (TrainConfig.threads=None for the cnn), so the library runs below use 1 as well.
    torch.set_num_threads(1)
    cfg = TrainConfig(width=8, epochs=3, steps_per_epoch=4, batch_size=32, refresh_every=3,
                      initial_method="greedy", baseline=False)
    full = run_training(cfg, tmp_path / "full", progress=False)
    assert full is not None

    assert run_training(cfg, tmp_path / "cut", progress=False, stop_after_epoch=1) is None
    assert not (tmp_path / "cut" / "summary.json").exists()
    code, stdout, _ = _cli(["train", "--resume", str(tmp_path / "cut"), "--no-progress"], capsys)
    assert code == 0 and "resuming" in stdout

    a, b = _tensors(tmp_path / "full" / "model.safetensors"), _tensors(tmp_path / "cut" / "model.safetensors")
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key  # bit-identical weights, masks and batch-norm statistics
    lines = [[{k: v for k, v in json.loads(line).items() if k not in TIMING_KEYS}
              for line in (tmp_path / run / "metrics.jsonl").read_text().splitlines()] for run in ("full", "cut")]
    assert lines[0] == lines[1] and len(lines[0]) == 3
    resumed = json.loads((tmp_path / "cut" / "summary.json").read_text())
    assert resumed["test_accuracy"] == full["test_accuracy"] and resumed["refreshes"] == full["refreshes"] == 4
    assert resumed["mask_checksum"] == full["mask_checksum"] and resumed["resumed"] is True


def test_static_fine_tune_from_a_dense_checkpoint(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    dense_cfg = TrainConfig(width=8, epochs=1, steps_per_epoch=4, batch_size=32, mode="dense", baseline=False)
    run_training(dense_cfg, tmp_path / "dense", progress=False)
    init = tmp_path / "dense" / "model.safetensors"
    code, stdout, _ = _cli(["train", *TINY, "--mode", "static", "--pattern", "2:4-T", "--init", str(init),
                            "--no-baseline", "--out", str(tmp_path / "static")], capsys)
    assert code == 0 and "masks computed once with exact" in stdout

    dense_state = load_state_dict(init)
    static_state = load_state_dict(tmp_path / "static" / "model.safetensors")
    summary = json.loads((tmp_path / "static" / "summary.json").read_text())
    assert summary["mode"] == "static" and summary["mask_valid"] is True and summary["refreshes"] == 0
    for layer in ("conv2", "conv3"):
        # Masks are the exact 2:4-T masks of the trained dense weights, and stayed fixed while fine-tuning.
        expected = nmsparse.find_mask(dense_state[f"{layer}.weight"], "2:4-T", method="exact")
        mask = static_state[f"{layer}.parametrizations.weight.0.mask"]
        assert torch.equal(mask, expected), layer
        fine_tuned = static_state[f"{layer}.parametrizations.weight.original"]
        assert not torch.equal(fine_tuned[mask], dense_state[f"{layer}.weight"][mask])  # it did train
    assert "conv1.weight" in static_state and "fc.weight" in static_state  # kept dense (keep_first_last)


def test_static_from_a_pruned_checkpoint_starts_from_the_masked_weights(tmp_path: Path) -> None:
    sparse_cfg = TrainConfig(width=8, epochs=1, steps_per_epoch=2, batch_size=32, baseline=False,
                             initial_method="greedy")
    run_training(sparse_cfg, tmp_path / "sparse", progress=False)
    cfg = TrainConfig(width=8, epochs=1, steps_per_epoch=1, batch_size=32, mode="static", pattern="2:4",
                      init=str(tmp_path / "sparse" / "model.safetensors"), baseline=False)
    trainer = Trainer(cfg)
    source = load_state_dict(tmp_path / "sparse" / "model.safetensors")
    masked = (source["conv2.parametrizations.weight.original"] * source["conv2.parametrizations.weight.0.mask"])
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
    run_training(TrainConfig(model="mlp", width=8, epochs=1, steps_per_epoch=1, mode="dense", baseline=False),
                 tmp_path / "mlp", progress=False)
    init = str(tmp_path / "mlp" / "model.safetensors")
    code, _, err = _cli(["train", *TINY, "--mode", "static", "--init", init, "--out", str(tmp_path / "o")], capsys)
    _one_line_error(code, err, "holds a 'mlp' model but this run builds 'cnn'")
    # Same model name, other shapes (width 16 vs 8): named, with the fix.
    code, _, err = _cli(["train", *TINY, "--model", "mlp", "--width", "16", "--mode", "static", "--init", init,
                         "--out", str(tmp_path / "o2")], capsys)
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
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "config.yaml").write_text("epochs: 1\n")
    code, _, err = _cli(["train", "--resume", str(run_dir)], capsys)
    _one_line_error(code, err, "holds no checkpoint")
    code, _, err = _cli(["train", "--resume", str(run_dir), "--lr", "0.3"], capsys)
    _one_line_error(code, err, "drop --lr")
    code, _, err = _cli(["train", *TINY, "--out", str(run_dir)], capsys)
    _one_line_error(code, err, "already holds a run")


def test_trainer_keeps_the_callers_thread_count() -> None:
    # numba's OpenMP layer, when the solvers run on it, resets torch's OpenMP thread count (1 -> all cores);
    # the trainer puts the caller's count back after every mask computation.
    torch.set_num_threads(1)
    trainer = Trainer(TrainConfig(width=8, epochs=1, steps_per_epoch=3, batch_size=32, refresh_every=1,
                                  baseline=False))
    assert torch.get_num_threads() == 1
    assert trainer.fit().refreshes == 3
    assert torch.get_num_threads() == 1
