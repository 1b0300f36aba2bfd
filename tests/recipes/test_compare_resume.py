"""Issue 16, item 6: a killed ``nmsparse compare`` (either task) continues with ``--resume DIR``, bit-identically."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from nmsparse.cli.main import main

CLASSIFY = [
    "--width",
    "8",
    "--epochs",
    "1",
    "--steps-per-epoch",
    "3",
    "--batch-size",
    "32",
    "--initial-method",
    "greedy",
    "--no-progress",
    "--structures",
    "dense",
    "2:4",
    "--seeds",
    "0",
    "1",
]
LM = [
    "--task",
    "lm",
    "--sources",
    "topics",
    "--d-model",
    "32",
    "--n-layer",
    "1",
    "--n-head",
    "2",
    "--context",
    "32",
    "--batch-size",
    "8",
    "--steps",
    "8",
    "--warmup-steps",
    "2",
    "--eval-every",
    "4",
    "--eval-tokens",
    "256",
    "--refresh-every",
    "4",
    "--threads",
    "1",
    "--no-progress",
    "--structures",
    "dense",
    "2:4-T",
    "--seeds",
    "3",
]


pytestmark = pytest.mark.usefixtures("restore_runtime")  # tests/conftest.py


def _kill_after_first_run(monkeypatch: pytest.MonkeyPatch, owner: type) -> None:
    """The second run of the comparison is interrupted (as a kill between two runs would stop it)."""
    original = owner.fit
    calls = []

    def fit(self, *args, **kwargs):  # noqa: ANN001, ANN202
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return original(self, *args, **kwargs)

    monkeypatch.setattr(owner, "fit", fit)


def _rows(folder: Path, key: str) -> list:
    return [(row["structure"], row[key]) for row in json.loads((folder / "compare.json").read_text())["rows"]]


@pytest.mark.parametrize("task", ["classify", "lm"])
def test_compare_run_resumes_a_killed_comparison(tmp_path, monkeypatch, capsys, task):
    if task == "classify":
        from nmsparse.recipes.classify.trainer import Trainer as owner

        argv, key = CLASSIFY, "accuracies"
    else:
        from nmsparse.recipes.lm.task import LMTrainer as owner

        argv, key = LM, "heldout_losses"
    assert main(["compare", *argv, "--out", str(tmp_path / "whole")]) == 0
    with monkeypatch.context() as patch:
        _kill_after_first_run(patch, owner)
        assert main(["compare", *argv, "--out", str(tmp_path / "cut")]) == 130
    plan = json.loads((tmp_path / "cut" / "compare_plan.json").read_text())
    assert plan["seeds"] == ([0, 1] if task == "classify" else [3])
    capsys.readouterr()
    # the structures and seeds come from the folder: others are refused with one line
    assert main(["compare", "--resume", str(tmp_path / "cut"), "--seeds", "7"]) == 2
    err = capsys.readouterr().err
    assert "seeds" in err and len(err.strip().splitlines()) == 1
    assert main(["compare", "--resume", str(tmp_path / "cut"), "--no-progress"]) == 0
    assert _rows(tmp_path / "cut", key) == _rows(tmp_path / "whole", key)


@pytest.mark.parametrize("task", ["classify", "lm"])
def test_check_fits_refuses_a_structure_no_layer_takes_before_writing(tmp_path, capsys, task):
    # item 14: a comparison that failed on its second structure left config.yaml and run.json (and the first run)
    if task == "classify":
        argv = [
            "--width",
            "8",
            "--epochs",
            "1",
            "--steps-per-epoch",
            "2",
            "--batch-size",
            "32",
            "--no-progress",
            "--structures",
            "dense",
            "64:128",
        ]
    else:
        argv = LM[: LM.index("--structures")] + ["--d-model", "24", "--structures", "dense", "8:16-T"]
    assert main(["compare", *argv, "--out", str(tmp_path / "cmp")]) == 2
    err = capsys.readouterr().err
    assert "no layer of the model can take" in err and "Traceback" not in err
    assert not (tmp_path / "cmp").exists()


@pytest.mark.parametrize(
    "extra",
    [
        ["--task", "lm", "--mode", "static"],
        ["--structures", "dense", "3:2"],
        ["--seeds", "1", "1"],
        ["--reference-numel", "100"],
    ],
)
def test_run_print_config_refuses_what_the_run_refuses(capsys, extra):
    # item 14: --print-config printed settings that the run then refused
    assert main(["compare", *extra, "--print-config"]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and len(captured.err.strip().splitlines()) == 1
