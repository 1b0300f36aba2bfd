"""The run loop both recipes share (``recipes/_run.py``) and the per-task commands ``nmsparse train|compare
classify|lm`` (issue 15, part 3)."""

from __future__ import annotations

import argparse
import math

import pytest
import torch

from nmsparse.cli import compare, train
from nmsparse.cli.main import main
from nmsparse.errors import ConfigError
from nmsparse.recipes import _run
from nmsparse.recipes.classify import TrainConfig, learning_rate
from nmsparse.recipes.lm import LMTrainConfig
from nmsparse.recipes.lm.task import learning_rate as lm_learning_rate


def _old_classify_cosine(cfg: TrainConfig, step: int, steps_per_epoch: int) -> float:
    """The cosine schedule as ``recipes/train/trainer.py`` wrote it before the shared loop."""
    warmup = int(round(cfg.warmup_epochs * steps_per_epoch))
    if step < warmup:
        return cfg.lr * (step + 1) / warmup
    total = cfg.epochs * steps_per_epoch
    fraction = (step - warmup) / max(1, total - warmup)
    return cfg.lr * 0.5 * (1.0 + math.cos(math.pi * min(1.0, fraction)))


def _old_lm(cfg: LMTrainConfig, step: int) -> float:
    """The LM schedule as ``recipes/lm/task.py`` wrote it before the shared loop."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    span = max(1, cfg.steps - 1 - cfg.warmup_steps)
    progress = min(1.0, (step - cfg.warmup_steps) / span)
    floor = cfg.min_lr_ratio
    return cfg.lr * (floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress)))


@pytest.mark.parametrize("lr, warmup_epochs, spe", [(0.1, 2.0, 17), (0.37, 0.0, 5), (1e-3, 0.5, 1)])
def test_shared_schedule_is_bit_identical_to_the_classify_one(lr, warmup_epochs, spe):
    cfg = TrainConfig(lr=lr, warmup_epochs=warmup_epochs, epochs=7)
    assert [learning_rate(cfg, s, spe) for s in range(7 * spe + 3)] == [
        _old_classify_cosine(cfg, s, spe) for s in range(7 * spe + 3)
    ]


@pytest.mark.parametrize("steps, warmup, floor", [(400, 20, 0.1), (9, 0, 0.0), (5, 4, 0.5)])
def test_shared_schedule_is_bit_identical_to_the_lm_one(steps, warmup, floor):
    cfg = LMTrainConfig(steps=steps, warmup_steps=warmup, lr=3e-3, min_lr_ratio=floor)
    assert [lm_learning_rate(cfg, s) for s in range(steps + 2)] == [_old_lm(cfg, s) for s in range(steps + 2)]


def test_device_and_seeds():
    assert _run.resolve_device("cpu") == torch.device("cpu")
    if not torch.cuda.is_available():
        assert _run.resolve_device("auto") == torch.device("cpu")
        with pytest.raises(ConfigError, match="CUDA is not available"):
            _run.resolve_device("cuda:0")
    _run.seed_everything(3)
    first = torch.rand(2)
    _run.seed_everything(3)
    assert torch.equal(first, torch.rand(2))


def test_settings_that_differ_are_named():
    _run.check_same_settings({"lr": 0.1, "seed": 0}, {"lr": 0.1, "seed": 0}, where="x.yaml")
    with pytest.raises(ConfigError, match=r"settings differ from the run's x.yaml \(\['seed'\]\)"):
        _run.check_same_settings({"lr": 0.1, "seed": 1}, {"lr": 0.1, "seed": 0}, where="x.yaml")


def _help(module, *argv: str) -> str:
    parser = module.add_parser(argparse.ArgumentParser(prog="nmsparse").add_subparsers())
    tasks = parser._task_parsers()
    return tasks[argv[0]].format_help() if argv else parser.format_help()


@pytest.mark.parametrize("module", [train, compare])
def test_each_task_shows_its_own_flags(module):
    classify, lm = _help(module, "classify"), _help(module, "lm")
    assert "--epochs" in classify and "--width" in classify and "--steps " not in classify
    assert "--steps" in lm and "--d-model" in lm and "--epochs" not in lm and "--width" not in lm
    assert "CONFIG:" not in classify + lm, "metavars name the setting, not argparse's dest"


@pytest.mark.parametrize(
    "argv, task",
    [
        ([], "classify"),
        (["lm"], "lm"),
        (["--task", "lm"], "lm"),
        (["--steps", "5", "--task=lm"], "lm"),
        (["classify", "--task", "classify"], "classify"),
    ],
)
def test_the_task_comes_from_the_subcommand_or_task_flag(argv, task):
    parser = train.add_parser(argparse.ArgumentParser(prog="nmsparse").add_subparsers())
    assert parser.parse_args(argv).task == task


@pytest.mark.parametrize(
    "argv, message",
    [
        (["train", "lm", "--epochs", "3", "--print-config"], "--epochs flag does not apply to --task lm"),
        (["train", "--task", "lm", "--width", "3", "--print-config"], "--width flag does not apply to --task lm"),
        (["compare", "classify", "--steps", "3", "--print-config"], "--steps flag does not apply to --task classify"),
        (["train", "lm", "--task", "classify"], "the task is lm but --task says classify"),
        (["train", "--task", "vision"], "invalid choice: 'vision'"),
    ],
)
def test_task_errors_are_one_line_and_exit_2(capsys, argv, message):
    assert main(argv) == 2 if argv[-1] == "--print-config" else _exits_2(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err


def _exits_2(argv: list[str]) -> bool:
    with pytest.raises(SystemExit) as exc:
        main(argv)
    return exc.value.code == 2


def test_resume_takes_the_task_of_the_run(tmp_path, capsys):
    from nmsparse.recipes.rundir import RunDir

    run = RunDir.prepare(tmp_path / "run", task="lm")
    run.create(config_text="steps: 4\n", config_hash="x")
    parser = train.add_parser(argparse.ArgumentParser(prog="nmsparse").add_subparsers())
    assert parser.parse_args(["--resume", str(tmp_path / "run")]).task == "lm"
    assert main(["train", "classify", "--resume", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "is a run of the lm task; resume it with nmsparse train lm --resume" in err[0], err
