"""TrainConfig validation, YAML round trips, shipped recipes and the learning-rate schedule."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from nmsparse.errors import ConfigError, InputError
from nmsparse.recipes.classify import TrainConfig, learning_rate, list_recipes, load_config
from nmsparse.recipes.classify.config import config_to_yaml


def test_defaults_are_the_documented_main_job() -> None:
    cfg = TrainConfig()
    assert (cfg.data, cfg.model, cfg.mode, cfg.pattern, cfg.baseline) == ("digits", "cnn", "dynamic", "4:8-T", True)
    assert cfg.structure == "4:8-T" and cfg.sparse


def test_dict_and_yaml_round_trip(tmp_path: Path) -> None:
    cfg = TrainConfig(pattern="2:4", exclude=["fc"], milestones=[3, 5], schedule="step", epochs=7)
    assert cfg.exclude == ("fc",) and cfg.milestones == (3, 5)
    assert TrainConfig.from_dict(cfg.to_dict()) == cfg
    path = tmp_path / "c.yaml"
    path.write_text(config_to_yaml(cfg))
    assert load_config(path) == cfg
    assert cfg.to_dict()["version"] == 1


def test_flags_override_yaml(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("epochs: 7\nlr: 0.5\n")
    cfg = load_config(path, lr=0.01, seed=None)
    assert (cfg.epochs, cfg.lr, cfg.seed) == (7, 0.01, 0)


def test_pattern_is_normalised() -> None:
    assert TrainConfig(pattern="4:8-t").pattern == "4:8-T"
    assert TrainConfig(pattern="Unstructured").pattern == "unstructured"


def test_unknown_yaml_key_names_it_and_suggests(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("epoch: 3\n")
    with pytest.raises(ConfigError, match=r"unknown setting 'epoch' \(did you mean 'epochs'\?\)"):
        load_config(path)


def test_invalid_yaml_and_non_mapping(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("epochs: [1, 2\n")
    with pytest.raises(InputError, match="not valid YAML"):
        load_config(bad)
    bad.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="expected a mapping"):
        load_config(bad)
    with pytest.raises(InputError, match="neither a file nor a shipped recipe"):
        load_config(tmp_path / "missing.yaml")


@pytest.mark.parametrize(
    ("changes", "names"),
    [
        ({"epochs": 0}, "epochs"),
        ({"epochs": 2.5}, "epochs"),
        ({"lr": -1.0}, "lr"),
        ({"lr": float("nan")}, "lr"),
        ({"batch_size": True}, "batch_size"),
        ({"mode": "sparse"}, "mode"),
        ({"schedule": "linear"}, "schedule"),
        ({"pattern": "4:3"}, "pattern"),
        ({"method": "magic"}, "method"),
        ({"initial_method": "topn"}, "initial_method"),
        ({"test_fraction": 1.0}, "test_fraction"),
        ({"schedule": "step"}, "milestones"),
        ({"milestones": [5, 3], "schedule": "step"}, "milestones"),
        ({"device": "tpu"}, "device"),
        ({"momentum": 0.0}, "nesterov"),
        ({"mode": "static"}, "init"),
        ({"num_classes": 1}, "num_classes"),
        ({"include": [1]}, "include"),
        ({"threads": 0}, "threads"),
    ],
)
def test_bad_values_name_the_setting(changes: dict, names: str) -> None:
    with pytest.raises(ConfigError, match=names):
        TrainConfig(**changes)


def test_replace_rejects_unknown_keys() -> None:
    with pytest.raises(ConfigError, match="did you mean 'lr'"):
        TrainConfig().replace(lrr=0.1)


def test_newer_config_version_is_refused() -> None:
    with pytest.raises(ConfigError, match="version 99"):
        TrainConfig.from_dict({"version": 99})


# ------------------------------------------------------------------------------------------------ recipes


def test_shipped_recipes_exist() -> None:
    assert {
        "resnet18_imagenet_4x8t_dynamic",
        "resnet50_imagenet_4x8t_dynamic",
        "resnet18_imagenet_4x8t_static",
        "resnet50_imagenet_4x8t_static",
        "digits_cnn_4x8t_dynamic",
    } <= set(list_recipes())


@pytest.mark.parametrize("model", ["resnet18", "resnet50"])
def test_dynamic_recipe_is_the_papers(model: str) -> None:
    cfg = load_config(f"{model}_imagenet_4x8t_dynamic")
    assert cfg.model == model and cfg.mode == "dynamic" and cfg.pattern == "4:8-T"
    assert (cfg.epochs, cfg.batch_size, cfg.lr, cfg.schedule, cfg.warmup_epochs) == (120, 512, 0.2, "cosine", 5)
    assert (cfg.weight_decay, cfg.momentum, cfg.nesterov, cfg.label_smoothing) == (5e-5, 0.9, False, 0.0)
    assert (cfg.method, cfg.initial_method, cfg.refresh_every, cfg.decay) == ("greedy", "exact", 40, 2e-4)
    assert cfg.keep_first_last and cfg.image_size == 224


@pytest.mark.parametrize("model", ["resnet18", "resnet50"])
def test_static_recipe_is_the_papers_and_needs_init(model: str) -> None:
    with pytest.raises(ConfigError, match="init"):
        load_config(f"{model}_imagenet_4x8t_static")
    cfg = load_config(f"{model}_imagenet_4x8t_static", init="dense.safetensors")
    assert cfg.mode == "static" and cfg.pattern == "4:8-T" and cfg.initial_method == "exact"
    assert (cfg.epochs, cfg.lr, cfg.schedule, cfg.milestones, cfg.gamma) == (90, 0.1, "step", (30, 60, 80), 0.1)
    assert (cfg.weight_decay, cfg.momentum, cfg.label_smoothing) == (1e-4, 0.9, 0.0)


def test_digits_recipe_is_the_defaults_with_first_and_last_dense() -> None:
    # keep_first_last defaults to False as everywhere in nmsparse; the shipped recipe sets it explicitly.
    assert TrainConfig().keep_first_last is False
    assert load_config("digits_cnn_4x8t_dynamic") == TrainConfig(keep_first_last=True)


def test_every_shipped_recipe_sets_keep_first_last_explicitly() -> None:
    from nmsparse.recipes.classify.config import read_config_file

    for name in list_recipes():
        values, _ = read_config_file(name)
        assert "keep_first_last" in values, name
        assert isinstance(values["pattern"], str), name


def test_unquoted_yaml_pattern_says_quote_it(tmp_path: Path) -> None:
    """Fault 9: YAML 1.1 reads `pattern: 2:4` as the base-60 integer 124."""
    path = tmp_path / "c.yaml"
    path.write_text("pattern: 2:4\n")
    with pytest.raises(
        ConfigError,
        match=r"got 124 \(YAML reads an unquoted 2:4 as the base-60 integer 124: "
        r"quote it, pattern: '2:4'\)",
    ):
        load_config(path)
    path.write_text("pattern: '2:4'\n")
    assert load_config(path).pattern == "2:4"


def test_every_setting_has_a_generated_flag() -> None:
    """No hand-kept flag tables: each TrainConfig field is a flag of train and compare, with help and default."""
    import argparse
    import dataclasses

    from nmsparse.cli import compare, train
    from nmsparse.cli._flags import explicit_overrides

    for module in (train, compare):
        parser = module.add_parser(argparse.ArgumentParser().add_subparsers())
        text = parser.format_help()
        for f in dataclasses.fields(TrainConfig):
            flag = "--" + f.name.replace("_", "-")
            assert flag in text, (module.__name__, flag)
        for flag in (
            "--split-seed",
            "--fake-samples",
            "--nesterov",
            "--milestones",
            "--gamma",
            "--eval-batch-size",
            "--sync-bn",
            "--threads",
            "--progress",
            "--overwrite",
            "--task",
        ):
            assert flag in text, flag  # the seven fields that had no flag before, and the run options
    parser = train.add_parser(argparse.ArgumentParser().add_subparsers())
    args = parser.parse_args(
        [
            "--no-nesterov",
            "--milestones",
            "3",
            "5",
            "--steps-per-epoch",
            "none",
            "--eval-batch-size",
            "17",
            "--no-sync-bn",
            "--split-seed",
            "2",
        ]
    )
    assert explicit_overrides(args, TrainConfig) == {
        "nesterov": False,
        "milestones": (3, 5),
        "steps_per_epoch": None,
        "eval_batch_size": 17,
        "sync_bn": False,
        "split_seed": 2,
    }


# ----------------------------------------------------------------------------------------------- schedule


def test_cosine_schedule_with_warmup() -> None:
    cfg = TrainConfig(epochs=10, lr=0.2, warmup_epochs=2, schedule="cosine")
    spe = 10
    lrs = [learning_rate(cfg, step, spe) for step in range(100)]
    assert lrs[0] == pytest.approx(0.2 / 20) and lrs[19] == pytest.approx(0.2)
    assert all(b > a for a, b in zip(lrs[:19], lrs[1:20]))  # warm-up rises
    assert all(b <= a for a, b in zip(lrs[20:], lrs[21:]))  # then decays
    assert lrs[60] == pytest.approx(0.2 * 0.5 * (1 + math.cos(math.pi * 40 / 80)))
    assert lrs[-1] < 1e-3


def test_step_schedule() -> None:
    cfg = TrainConfig(epochs=90, lr=0.1, warmup_epochs=0, schedule="step", milestones=[30, 60, 80])
    spe = 4
    assert learning_rate(cfg, 0, spe) == pytest.approx(0.1)
    assert learning_rate(cfg, 30 * spe - 1, spe) == pytest.approx(0.1)
    assert learning_rate(cfg, 30 * spe, spe) == pytest.approx(0.01)
    assert learning_rate(cfg, 60 * spe, spe) == pytest.approx(0.001)
    assert learning_rate(cfg, 89 * spe, spe) == pytest.approx(0.0001)


def test_thread_defaults_do_not_oversubscribe(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fault 14: 1 thread for the small models, at most min(cores, 4) otherwise; numba follows torch."""
    import os

    import torch

    from nmsparse.cli._runtime import configure_runtime, default_threads

    monkeypatch.setenv("NUMBA_THREADING_LAYER", os.environ.get("NUMBA_THREADING_LAYER", "workqueue"))
    assert default_threads("cnn") == default_threads("mlp") == 1
    from nmsparse.cli import _runtime

    monkeypatch.setattr(_runtime, "usable_cores", lambda: 64)
    assert default_threads("resnet50") == 4
    monkeypatch.setattr(_runtime, "usable_cores", lambda: 2)
    assert default_threads("resnet50") == 2
    numba = pytest.importorskip("numba")
    before, numba_before = torch.get_num_threads(), numba.get_num_threads()
    try:
        assert configure_runtime(None, "cnn") == 1 and torch.get_num_threads() == 1
        assert numba.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
        numba.set_num_threads(numba_before)
