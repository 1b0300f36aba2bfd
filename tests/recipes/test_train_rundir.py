"""Run directories: one-file atomic checkpoints, verified resume, no silent overwrites (recipes/rundir.py)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from nmsparse.errors import CheckpointError, InputError, OverwriteError
from nmsparse.recipes.rundir import (
    CHECKPOINT_FILE,
    METRICS_FILE,
    Checkpoint,
    RunDir,
    config_hash,
    pack_state,
    unpack_state,
)


def _ckpt(epoch: int, digest: str = "h1") -> Checkpoint:
    return Checkpoint(
        epoch=epoch,
        config_hash=digest,
        tensors={"w": torch.full((2,), float(epoch))},
        tensor_metadata={"w": "x"},
        state={"step": epoch * 4},
        history=[{"epoch": e, "loss": 1.0 / e} for e in range(1, epoch + 1)],
    )


def _new(path: Path, **kw) -> RunDir:
    run = RunDir.prepare(path, task="classify", sections=("baseline",), outputs=("curves.png",), **kw)
    run.create(config_text="epochs: 3\n", config_hash="h1")
    return run


def test_pack_state_round_trips_optimizer_rng_and_nested_values() -> None:
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    model(torch.randn(4, 3)).sum().backward()
    opt.step()
    state = {
        "optimizer": opt.state_dict(),
        "rng": torch.get_rng_state(),
        "np": np.arange(3, dtype=np.uint32),
        "py": (3, tuple(range(5)), None),
        "nan": float("nan"),
        "int_keys": {0: "a", 7: [1, 2.5]},
    }
    tensors, skeleton = pack_state(state)
    back = unpack_state(tensors, json.loads(json.dumps(skeleton)))
    assert back["py"] == (3, (0, 1, 2, 3, 4), None) and back["int_keys"] == {0: "a", 7: [1, 2.5]}
    assert np.array_equal(back["np"], state["np"]) and back["np"].dtype == np.uint32
    assert torch.equal(back["rng"], state["rng"]) and np.isnan(back["nan"])
    fresh = torch.optim.Adam(model.parameters(), lr=1e-3)
    fresh.load_state_dict(back["optimizer"])  # loads, and the moments are the same tensors' values
    for key, value in opt.state_dict()["state"][0].items():
        assert torch.equal(torch.as_tensor(value), torch.as_tensor(fresh.state_dict()["state"][0][key])), key
    with pytest.raises(TypeError, match="cannot store a object"):
        pack_state({"x": object()})
    with pytest.raises(CheckpointError, match="missing"):
        unpack_state({}, {"__tensor__": "state/0"})


def test_checkpoint_round_trip_and_metrics_follow_it(tmp_path: Path) -> None:
    run = _new(tmp_path / "run")
    run.save_checkpoint(_ckpt(2))
    assert [json.loads(x)["epoch"] for x in (run.path / METRICS_FILE).read_text().splitlines()] == [1, 2]
    ckpt = run.load_checkpoint(config_hash="h1")
    assert ckpt is not None and ckpt.epoch == 2 and ckpt.state == {"step": 8} and ckpt.task == "classify"
    assert torch.equal(ckpt.tensors["w"], torch.full((2,), 2.0)) and ckpt.tensor_metadata == {"w": "x"}
    assert run.load_checkpoint("baseline") is None


def test_metrics_lines_past_the_checkpoint_are_dropped_and_missing_ones_restored(tmp_path: Path) -> None:
    run = _new(tmp_path / "run")
    run.save_checkpoint(_ckpt(2))
    metrics = run.path / METRICS_FILE
    # Killed after the metrics of epoch 3 but before its checkpoint (an order a task might use):
    metrics.write_text(metrics.read_text() + json.dumps({"epoch": 3, "loss": 0.3}) + "\n")
    assert run.load_checkpoint(config_hash="h1").epoch == 2
    assert len(metrics.read_text().splitlines()) == 2
    # Killed after the checkpoint but before the metrics rewrite:
    metrics.write_text(json.dumps({"epoch": 1, "loss": 1.0}) + "\n")
    run.load_checkpoint(config_hash="h1")
    assert len(metrics.read_text().splitlines()) == 2
    metrics.write_text(json.dumps({"epoch": 1, "loss": 99.0}) + "\n")
    with pytest.raises(CheckpointError, match="record 1 disagrees"):
        run.load_checkpoint(config_hash="h1")


def test_checkpoint_of_other_settings_or_format_is_refused(tmp_path: Path) -> None:
    run = _new(tmp_path / "run")
    run.save_checkpoint(_ckpt(1))
    with pytest.raises(CheckpointError, match="other settings"):
        run.load_checkpoint(config_hash="h2")
    from safetensors.torch import save_file

    save_file({"w": torch.ones(1)}, str(run.path / CHECKPOINT_FILE), metadata={"format": "other"})
    with pytest.raises(CheckpointError, match="not an nmsparse checkpoint"):
        run.load_checkpoint()
    (run.path / CHECKPOINT_FILE).write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="not a readable checkpoint"):
        run.load_checkpoint()


def test_prepare_refuses_files_nmsparse_did_not_write(tmp_path: Path) -> None:
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "config.yaml").write_text("my notes\n")
    (folder / "other.txt").write_text("untouched\n")
    with pytest.raises(OverwriteError, match="nmsparse did not create"):
        RunDir.prepare(folder, task="classify")
    assert (folder / "config.yaml").read_text() == "my notes\n"
    _new(folder, overwrite=True)
    assert (folder / "config.yaml").read_text() == "epochs: 3\n" and (folder / "other.txt").is_file()
    (tmp_path / "file").write_text("x")
    with pytest.raises(InputError, match="not a directory"):
        RunDir.prepare(tmp_path / "file", task="classify")


def test_uncheckpointed_run_restarts_and_checkpointed_one_is_refused(tmp_path: Path) -> None:
    """Fault 3: a run killed in its first epoch can be started again with the same --out."""
    run = _new(tmp_path / "run")
    again = RunDir.prepare(run.path, task="classify", sections=("baseline",))
    assert again.restarting
    with pytest.raises(OverwriteError, match="not a lm one"):
        RunDir.prepare(run.path, task="lm")
    run.save_checkpoint(_ckpt(1))
    with pytest.raises(OverwriteError, match="continue it with --resume"):
        RunDir.prepare(run.path, task="classify")
    run.write_summary({"done": True})
    with pytest.raises(OverwriteError, match="finished"):
        RunDir.prepare(run.path, task="classify")


def test_open_resume_cases(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="does not exist"):
        RunDir.open_resume(tmp_path / "nowhere", task="classify")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="holds no config.yaml"):
        RunDir.open_resume(tmp_path / "empty", task="classify")
    run = _new(tmp_path / "run")
    (run.path / "config.yaml").unlink()  # killed between the marker and the config: restored from the marker
    # Fault 3: no checkpoint yet = resume from nothing.
    resumed = RunDir.open_resume(run.path, task="classify")
    assert resumed.load_checkpoint() is None and resumed.config_path.read_text() == "epochs: 3\n"
    with pytest.raises(InputError, match="is a classify run, not a lm one"):
        RunDir.open_resume(run.path, task="lm")
    (run.path / ".checkpoint.safetensors.abc123.tmp").write_bytes(b"half")
    (run.path / "baseline").mkdir()
    (run.path / "baseline" / ".metrics.jsonl.x.tmp").write_text("half")
    RunDir.open_resume(run.path, task="classify", sections=("baseline",))
    assert not list(run.path.rglob("*.tmp")), "leftover temporary files are removed"
    run.write_summary({"done": True})
    before = (run.path / "summary.json").read_text()
    with pytest.raises(OverwriteError, match="finished already"):
        RunDir.open_resume(run.path, task="classify")
    assert (run.path / "summary.json").read_text() == before
    assert RunDir.open_resume(run.path, task="classify", overwrite=True).resuming


def test_legacy_run_directory_is_recognised(tmp_path: Path) -> None:
    folder = tmp_path / "old"
    folder.mkdir()
    (folder / "config.yaml").write_text("epochs: 1\n")
    (folder / "trainer_state.pt").write_bytes(b"x")
    with pytest.raises(CheckpointError, match="older nmsparse"):
        RunDir.open_resume(folder, task="classify")
    with pytest.raises(OverwriteError, match="--overwrite"):
        RunDir.prepare(folder, task="classify")


def test_config_hash_is_order_independent() -> None:
    assert config_hash({"a": 1, "b": [1, 2]}) == config_hash({"b": [1, 2], "a": 1})
    assert config_hash({"a": 1}) != config_hash({"a": 2}) and len(config_hash({})) == 16
