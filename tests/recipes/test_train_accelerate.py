"""``nmsparse train --accelerate``: ``nmsparse.accelerate_`` on the pruned Linear layers, reported, and on a CPU
(where nothing can run on sparse tensor cores) a run identical to one without it."""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from nmsparse.cli.main import main
from nmsparse.recipes.classify import TrainConfig, load_config, run_training
from nmsparse.recipes.classify.summary import RunSummary
from nmsparse.recipes.lm import LMTrainConfig
from nmsparse.recipes.lm.data import build_lm_data
from nmsparse.recipes.lm.task import LMTrainer
from nmsparse.testing import run_tensors

TIMING_KEYS = {"epoch_seconds", "refresh_seconds", "seconds"}
TIMING_SUMMARY = {
    "wall_seconds",
    "train_seconds",
    "baseline_train_seconds",
    "sparse_run_seconds",
    "baseline_run_seconds",
    "compile_seconds",
    "refresh_seconds",
    "refresh_overhead",
}


@pytest.fixture(autouse=True)
def _restore_runtime(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[None]:
    """The commands set torch's thread count and NUMBA_THREADING_LAYER; the timing cache goes to tmp_path."""
    monkeypatch.setenv("NUMBA_THREADING_LAYER", os.environ.get("NUMBA_THREADING_LAYER", "workqueue"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def _tiny(**overrides: Any) -> TrainConfig:
    values: dict[str, Any] = dict(width=8, epochs=1, steps_per_epoch=2, batch_size=32, device="cpu", threads=1)
    values.update(overrides)
    return TrainConfig(**values)


def _history(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: v for k, v in r.items() if k not in TIMING_KEYS} for r in records]


def _same_results(a: dict[str, Any], b: dict[str, Any]) -> None:
    for key in (
        "test_accuracy",
        "test_loss",
        "baseline_test_accuracy",
        "mask_checksum",
        "mask_density",
        "sparse_layers",
        "dense_layers",
        "steps",
        "refreshes",
    ):
        assert a[key] == b[key], key


def test_config_field_and_flag() -> None:
    assert TrainConfig().accelerate is False and LMTrainConfig().accelerate is False
    assert TrainConfig.from_dict(_tiny(accelerate=True).to_dict()).accelerate is True
    assert load_config(None, accelerate=True).accelerate is True
    from nmsparse.errors import ConfigError

    with pytest.raises(ConfigError):
        TrainConfig(accelerate="yes")  # type: ignore[arg-type]


@pytest.mark.parametrize("model,pattern", [("cnn", "2:4-T"), ("mlp", "4:8-T")])
def test_accelerate_on_cpu_reports_every_linear_and_changes_nothing(tmp_path: Path, model: str, pattern: str) -> None:
    torch.set_num_threads(1)
    plain = run_training(_tiny(model=model, pattern=pattern, keep_first_last=True), tmp_path / "plain", progress=False)
    fast = run_training(
        _tiny(model=model, pattern=pattern, keep_first_last=True, accelerate=True), tmp_path / "fast", progress=False
    )
    assert plain is not None and fast is not None
    assert plain.acceleration is None and plain.baseline_acceleration is None
    _same_results(plain.to_dict(), fast.to_dict())
    assert RunSummary.from_dict(fast.to_dict()) == fast
    for name in ("model.safetensors", "baseline/model.safetensors"):
        a, b = run_tensors(str(tmp_path / "plain" / name)), run_tensors(str(tmp_path / "fast" / name))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name
    for name in ("metrics.jsonl", "baseline/metrics.jsonl"):
        rows = [
            [json.loads(line) for line in (tmp_path / run / name).read_text().splitlines()] for run in ("plain", "fast")
        ]
        assert _history(rows[0]) == _history(rows[1]), name

    report = json.loads((tmp_path / "fast" / "summary.json").read_text())["acceleration"]
    assert report == fast.acceleration and report["pattern"] == pattern
    linears = [n for n, m in _linear_names(model)]
    assert list(report["layers"]) == linears
    for name, layer in report["layers"].items():
        assert not layer["swapped"] and layer["reason"], name
        if name in fast.sparse_layers:
            assert layer["pattern"] == pattern
            assert not layer["reason"].startswith("not pruned")
        else:
            assert layer["reason"].startswith("not pruned by this run"), (name, layer["reason"])
    if model == "mlp":  # the CNN's one Linear (its head) is kept dense; the MLP's middle layer is pruned
        assert "fc2" in fast.sparse_layers and "2:4-T" in report["layers"]["fc2"]["reason"]  # 4:8-T stays dense
    assert fast.baseline_acceleration == {"pattern": None, "reason": "dense baseline: not accelerated", "layers": {}}


def _linear_names(model: str) -> list[tuple[str, torch.nn.Module]]:
    from nmsparse.recipes.classify.models import build_model

    net = build_model(model, in_channels=1, num_classes=10, image_size=8, width=8)
    return [(n, m) for n, m in net.named_modules() if isinstance(m, torch.nn.Linear)]


def test_dense_and_unstructured_runs_record_why(tmp_path: Path) -> None:
    torch.set_num_threads(1)
    dense = run_training(_tiny(mode="dense", accelerate=True), tmp_path / "dense", progress=False)
    assert dense is not None and dense.acceleration is not None
    assert dense.acceleration["reason"].endswith("not accelerated") and not dense.acceleration["layers"]
    loose = run_training(_tiny(pattern="unstructured", accelerate=True, baseline=False), tmp_path / "u", progress=False)
    assert loose is not None and loose.acceleration is not None
    assert "unstructured" in loose.acceleration["reason"]


def test_cli_accelerate_flag(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    tiny = [
        "--width",
        "8",
        "--epochs",
        "1",
        "--steps-per-epoch",
        "2",
        "--batch-size",
        "32",
        "--no-progress",
        "--device",
        "cpu",
        "--pattern",
        "2:4-T",
    ]
    assert main(["train", *tiny, "--out", str(tmp_path / "plain")]) == 0
    with warnings.catch_warnings():  # the recipe calls accelerate_ with its current arguments
        warnings.simplefilter("error", DeprecationWarning)
        assert main(["train", *tiny, "--accelerate", "--out", str(tmp_path / "fast")]) == 0
    capsys.readouterr()
    plain = json.loads((tmp_path / "plain" / "summary.json").read_text())
    fast = json.loads((tmp_path / "fast" / "summary.json").read_text())
    _same_results(plain, fast)
    assert plain["acceleration"] is None
    layers = fast["acceleration"]["layers"]
    assert list(layers) == [n for n, _ in _linear_names("cnn")]
    assert all(not d["swapped"] and d["reason"] for d in layers.values())
    assert fast["baseline_acceleration"]["reason"] == "dense baseline: not accelerated"
    assert "accelerate: true" in (tmp_path / "fast" / "config.yaml").read_text()
    assert main(["train", *tiny, "--no-accelerate", "--out", str(tmp_path / "off")]) == 0
    assert json.loads((tmp_path / "off" / "summary.json").read_text())["acceleration"] is None


def test_lm_trainer_accelerate_on_cpu() -> None:
    config = LMTrainConfig(
        sources=("topics",),
        d_model=32,
        n_layer=1,
        n_head=2,
        context=32,
        steps=2,
        warmup_steps=1,
        batch_size=2,
        eval_every=2,
        eval_tokens=256,
        pattern="2:4-T",
        threads=1,
        device="cpu",
    )
    data = build_lm_data(sources=config.sources, heldout_permille=config.heldout_permille)
    plain = LMTrainer(config, data, structure="2:4-T", progress=False).fit()
    fast_trainer = LMTrainer(config.replace(accelerate=True), data, structure="2:4-T", progress=False)
    fast = fast_trainer.fit()
    assert plain.acceleration is None and fast.acceleration is not None
    assert fast.heldout_loss == plain.heldout_loss and _history(fast.history) == _history(plain.history)
    layers = fast.acceleration["layers"]
    assert set(fast.sparse_layers) <= set(layers) and "lm_head" in layers
    assert all(not d["swapped"] and d["reason"] for d in layers.values())
    assert layers["lm_head"]["reason"].startswith("not pruned by this run")
    dense = LMTrainer(config.replace(accelerate=True), data, structure="dense", section="baseline", progress=False)
    assert dense.acceleration == {"pattern": None, "reason": "dense baseline: not accelerated", "layers": {}}
