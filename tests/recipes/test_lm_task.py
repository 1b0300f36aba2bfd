"""The LM recipe's training loop, run directory, resume and comparison, on a tiny decoder (CPU, seconds)."""

from __future__ import annotations

import json
import math
import statistics

import pytest
import torch

import nmsparse
from nmsparse.errors import CheckpointError, ConfigError, OverwriteError
from nmsparse.recipes.lm import LMTrainConfig, compare_lm, run_lm_training
from nmsparse.recipes.lm.config import load_lm_config
from nmsparse.recipes.lm.data import build_lm_data
from nmsparse.recipes.lm.model import load_hf
from nmsparse.recipes.lm.task import LMTrainer, heldout_loss
from nmsparse.recipes.rundir import RunDir, config_hash

# 2:4-T with the torch enumeration solver for initial masks and refreshes: no numba compilation in these tests.
TINY = dict(
    sources=("topics",),
    d_model=32,
    n_layer=1,
    n_head=2,
    context=32,
    batch_size=8,
    steps=24,
    warmup_steps=2,
    lr=1e-2,
    eval_every=8,
    eval_tokens=512,
    eval_batch_size=64,
    pattern="2:4-T",
    method="exact",
    initial_method="exact",
    refresh_every=4,
    threads=1,
)


@pytest.fixture(scope="module")
def data():
    return build_lm_data(sources=("topics",))


def _config(**changes: object) -> LMTrainConfig:
    return LMTrainConfig(**{**TINY, **changes})


def test_decoder_trains_and_masks_stay_valid_through_refreshes(data) -> None:
    trainer = LMTrainer(_config(), data, structure="2:4-T", progress=False)
    start = heldout_loss(trainer.model, data, context=32)
    assert abs(start - math.log(256)) < 0.1  # an untrained byte model is close to uniform
    result = trainer.fit()
    assert result.completed and result.step == 24 and len(result.history) == 3
    assert result.heldout_loss < start - 1.0  # the loss falls well below uniform
    assert result.refreshes == 6 and any(r["mask_changed"] > 0 for r in result.history)
    assert result.mask_valid and result.mask_density == 0.5
    masks = nmsparse.get_masks(trainer.model)
    assert len(masks) == 4 and all(nmsparse.is_nm_sparse(m, "2:4-T") for m in masks.values())
    assert all(not k.startswith(("lm_head", "transformer.wte", "transformer.wpe")) for k in masks)


def test_unstructured_structure_keeps_half_of_each_layer(data) -> None:
    result = LMTrainer(_config(steps=8), data, structure="unstructured", progress=False).fit()
    assert result.mask_valid and result.mask_density == 0.5


def test_resume_after_interruption_is_bit_identical(tmp_path, data) -> None:
    config = _config()
    digest = config_hash(config.to_dict())

    def trainer(path):
        run = (
            RunDir.prepare(path, task="lm") if not (path / "run.json").exists() else RunDir.open_resume(path, task="lm")
        )
        if not (path / "run.json").exists():
            run.create(config_text="x: 1\n", config_hash=digest)
        return LMTrainer(config, data, structure="2:4-T", run=run, digest=digest, progress=False)

    whole = trainer(tmp_path / "whole").fit()
    first = trainer(tmp_path / "cut").fit(stop_after_step=8)
    assert not first.completed and first.step == 8
    # A leftover temporary file of an interrupted write is cleaned up on resume.
    (tmp_path / "cut" / ".checkpoint.safetensors.x.tmp").write_bytes(b"partial")
    resumed_trainer = trainer(tmp_path / "cut")
    resumed = resumed_trainer.fit(resume=True)
    assert resumed.completed and resumed.heldout_loss == whole.heldout_loss
    assert [r["heldout_loss"] for r in resumed.history] == [r["heldout_loss"] for r in whole.history]
    assert not (tmp_path / "cut" / ".checkpoint.safetensors.x.tmp").exists()
    lines = (tmp_path / "cut" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["step"] for x in lines] == [8, 16, 24]


def test_resume_refuses_a_checkpoint_of_other_settings(tmp_path, data) -> None:
    config = _config()
    run = RunDir.prepare(tmp_path / "r", task="lm")
    run.create(config_text="x: 1\n", config_hash="a")
    LMTrainer(config, data, structure="2:4-T", run=run, digest="a", progress=False).fit(stop_after_step=8)
    other = LMTrainer(
        config, data, structure="2:4-T", run=RunDir.open_resume(tmp_path / "r", task="lm"), digest="b", progress=False
    )
    with pytest.raises(CheckpointError, match="other settings"):
        other.fit(resume=True)


@pytest.mark.slow
def test_run_lm_training_writes_the_run_and_a_loadable_dense_model(tmp_path, data, capsys) -> None:
    from nmsparse.hf import load_causal_lm, perplexity

    out = tmp_path / "run"
    summary = run_lm_training(_config(), out, progress=False)
    assert summary.mask_valid and summary.baseline_heldout_loss is not None
    assert summary.loss_gap_percent == pytest.approx(
        100 * (summary.heldout_loss - summary.baseline_heldout_loss) / summary.baseline_heldout_loss
    )
    assert summary.data["corpus_sha256"] == data.corpus_sha256
    for name in (
        "run.json",
        "config.yaml",
        "checkpoint.safetensors",
        "metrics.jsonl",
        "baseline/metrics.jsonl",
        "baseline/checkpoint.safetensors",
        "curves.png",
        "summary.json",
        "hf/config.json",
        "baseline/hf/model.safetensors",
    ):
        assert (out / name).exists(), name
    assert load_lm_config(out / "config.yaml") == _config()
    from nmsparse.cli.main import main

    capsys.readouterr()
    assert main(["train", "--resume", str(out), "--print-config"]) == 0  # the resumed run's settings, unchanged
    assert LMTrainConfig.from_dict(__import__("yaml").safe_load(capsys.readouterr().out)) == _config()
    assert json.loads((out / "summary.json").read_text())["heldout_loss"] == summary.heldout_loss
    # The dense folder is a normal transformers model: its held-out perplexity is the one the run reported.
    hf = load_causal_lm(out / summary.baseline_hf_folder)
    ppl = perplexity(hf, data.heldout, context=32, batch_size=64)
    assert ppl == pytest.approx(summary.baseline_heldout_perplexity, rel=1e-5)
    # The sparse folder holds the masked weights: zeros in the 2:4-T pattern.
    sparse = load_hf(out / "hf")
    assert nmsparse.is_nm_sparse(sparse.transformer.h[0].mlp.c_fc.weight != 0, "2:4-T")
    with pytest.raises(OverwriteError, match="finished"):
        run_lm_training(_config(), out, progress=False)
    with pytest.raises(OverwriteError, match="finished already"):
        run_lm_training(None, out, resume=True, progress=False)


@pytest.mark.slow
def test_run_lm_training_resumes_an_interrupted_run(tmp_path, data) -> None:
    out = tmp_path / "run"
    config = _config(steps=16)
    whole = run_lm_training(config, tmp_path / "whole", progress=False)
    # Interrupt: only the sparse trainer's first checkpoint exists (as after a kill).
    run = RunDir.prepare(out, task="lm", outputs=("curves.png", "hf"), sections=("baseline",))
    from nmsparse.recipes.lm.config import lm_config_to_yaml

    digest = config_hash(config.to_dict())
    run.create(config_text=lm_config_to_yaml(config), config_hash=digest)
    LMTrainer(config, data, structure="2:4-T", run=run, digest=digest, progress=False).fit(stop_after_step=8)
    with pytest.raises(OverwriteError, match="--resume"):
        run_lm_training(config, out, progress=False)
    resumed = run_lm_training(None, out, resume=True, progress=False)
    assert resumed.heldout_loss == whole.heldout_loss
    assert resumed.baseline_heldout_loss == whole.baseline_heldout_loss
    with pytest.raises(ConfigError, match="settings differ"):
        run_lm_training(config.replace(lr=0.5), tmp_path / "whole", resume=True, overwrite=True, progress=False)


@pytest.mark.slow
def test_compare_reports_loss_next_to_exact_diversity_with_seed_spread(tmp_path, data) -> None:
    seen = []
    result = compare_lm(
        _config(steps=8, eval_every=8),
        tmp_path / "cmp",
        structures=["dense", "2:4", "2:4-T"],
        seeds=[0, 1],
        progress=False,
        on_run_end=seen.append,
    )
    assert len(seen) == 6
    rows = {r["structure"]: r for r in result.rows}
    assert rows["dense"]["log10_mask_diversity"] is None
    assert rows["2:4"]["log10_mask_diversity"] == pytest.approx(nmsparse.log10_mask_diversity("2:4", 4096))
    assert rows["2:4"]["log10_mask_diversity"] > rows["2:4-T"]["log10_mask_diversity"]
    for row in rows.values():
        assert len(row["heldout_losses"]) == 2 and row["heldout_loss_std"] > 0
        assert row["heldout_perplexity"] == pytest.approx(math.exp(row["heldout_loss"]))
    assert rows["dense"]["loss_gap_percent"] == 0.0
    assert rows["dense"]["loss_gap_percents"] == [0.0, 0.0] and rows["dense"]["loss_gap_percent_std"] == 0.0
    for seed, (loss, dense) in enumerate(zip(rows["2:4"]["heldout_losses"], rows["dense"]["heldout_losses"])):
        assert rows["2:4"]["loss_gap_percents"][seed] == pytest.approx(100 * (loss - dense) / dense)
    assert rows["2:4-T"]["mask_valid"] is True
    pairs = {frozenset(key.split(" vs ")) for key in result.separation}
    assert pairs == {frozenset(p) for p in [("dense", "2:4"), ("dense", "2:4-T"), ("2:4", "2:4-T")]}
    payload = json.loads((tmp_path / "cmp" / "compare.json").read_text())
    assert payload["separation"] == result.separation
    assert payload["paired_separation"] == result.paired_separation
    assert set(result.paired_separation) == set(result.separation)
    assert payload["data"]["corpus_sha256"] == data.corpus_sha256 and len(payload["rows"]) == 3
    assert (tmp_path / "cmp" / "compare.png").stat().st_size > 0
    assert (tmp_path / "cmp" / "2x4-T-seed1" / "checkpoint.safetensors").is_file()


def test_separation_needs_a_gap_wider_than_the_seed_spread_and_several_seeds() -> None:
    from nmsparse.recipes.lm.compare import separation

    def row(name: str, losses: list[float]) -> dict[str, object]:
        return {
            "structure": name,
            "heldout_loss": statistics.fmean(losses),
            "heldout_losses": losses,
            "heldout_loss_std": statistics.stdev(losses) if len(losses) > 1 else 0.0,
        }

    rows = [row("4:8-T", [2.60, 2.62, 2.64]), row("dense", [2.50, 2.51, 2.52]), row("2:4", [2.61, 2.63, 2.59])]
    assert separation(rows) == {"dense vs 2:4": True, "dense vs 4:8-T": True, "2:4 vs 4:8-T": False}
    assert separation([row("dense", [2.5]), row("2:4", [2.6])]) == {}  # one seed: no noise estimate


def test_paired_separation_cancels_what_a_seed_does_to_every_structure() -> None:
    from nmsparse.recipes.lm.compare import paired_separation

    def row(name: str, losses: list[float]) -> dict[str, object]:
        return {"structure": name, "heldout_loss": statistics.fmean(losses), "heldout_losses": losses}

    # Seeds move both structures together (spread 0.1), the difference is steady: only the paired test sees it.
    a, b = row("2:4", [2.40, 2.50, 2.60]), row("2:4-T", [2.41, 2.512, 2.609])
    paired = paired_separation([b, a])
    assert list(paired) == ["2:4 vs 2:4-T"]
    assert paired["2:4 vs 2:4-T"]["separates"] and paired["2:4 vs 2:4-T"]["difference"] == pytest.approx(0.031 / 3)
    assert paired["2:4 vs 2:4-T"]["t"] == pytest.approx(0.031 / 3 / (statistics.stdev([0.01, 0.012, 0.009]) / 3**0.5))
    from nmsparse.recipes.lm.compare import separation

    assert separation([{**a, "heldout_loss_std": 0.1}, {**b, "heldout_loss_std": 0.1}]) == {"2:4 vs 2:4-T": False}
    # Differences that change sign do not separate; identical runs neither; a constant gap does.
    noisy = paired_separation([a, row("4:8", [2.45, 2.48, 2.61])])
    assert not next(iter(noisy.values()))["separates"]
    assert paired_separation([a, row("same", [2.40, 2.50, 2.60])]) == {
        "2:4 vs same": {"difference": 0.0, "t": None, "separates": False}
    }
    exact = paired_separation([row("x", [1.0, 2.0, 3.0]), row("y", [1.5, 2.5, 3.5])])
    assert exact == {"x vs y": {"difference": 0.5, "t": None, "separates": True}}
    json.dumps(exact, allow_nan=False)  # compare.json stays strict JSON
    assert paired_separation([a, row("shifted", [2.45, 2.55, 2.65])])["2:4 vs shifted"]["separates"]
    # One seed, or rows with different numbers of seeds: nothing to test.
    assert paired_separation([row("dense", [2.5]), row("2:4", [2.6])]) == {}
    assert paired_separation([a, row("2:4-T", [2.5, 2.6])]) == {}


def test_t_critical_values_match_scipy() -> None:
    from scipy import stats

    from nmsparse.recipes.lm.compare import t_critical_95

    for df in range(1, 300):
        assert t_critical_95(df) == pytest.approx(stats.t.ppf(0.975, df), abs=1e-4), df
    with pytest.raises(ValueError, match=">= 1"):
        t_critical_95(0)


def test_compare_refuses_bad_structures_and_seeds() -> None:
    with pytest.raises(ConfigError, match="structure"):
        compare_lm(_config(), structures=["3:2"])
    with pytest.raises(ConfigError, match="seeds"):
        compare_lm(_config(), structures=["dense"], seeds=[0, 0])


def test_config_refuses_bad_values_with_the_fix() -> None:
    with pytest.raises(ConfigError, match="quote it"):
        LMTrainConfig(pattern=124)
    with pytest.raises(ConfigError, match="warmup_steps"):
        LMTrainConfig(steps=10, warmup_steps=10)
    with pytest.raises(ConfigError, match="did you mean 'steps'"):
        LMTrainConfig.from_dict({"stpes": 3})
    assert torch.get_num_threads() >= 1


def test_shipped_lm_recipes_load_and_the_default_one_is_the_config_default() -> None:
    from nmsparse.recipes.lm.config import lm_recipe_path

    assert load_lm_config(lm_recipe_path("lm_decoder_4x8t_dynamic")) == LMTrainConfig()
    large = load_lm_config(lm_recipe_path("lm_decoder_large_4x8t_dynamic"))
    assert large.d_model > LMTrainConfig().d_model and large.structure == "4:8-T"
    assert load_lm_config("lm_decoder_4x8t_dynamic", steps=50) == LMTrainConfig(steps=50)


def test_load_lm_config_names_what_is_wrong_with_a_file(tmp_path) -> None:
    from nmsparse.errors import InputError

    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="expected a mapping"):
        load_lm_config(tmp_path / "list.yaml")
    (tmp_path / "broken.yaml").write_text("steps: [1\n")
    with pytest.raises(InputError, match="not valid YAML"):
        load_lm_config(tmp_path / "broken.yaml")
    with pytest.raises(InputError, match="neither a file nor a shipped recipe"):
        load_lm_config(tmp_path / "missing.yaml")
    (tmp_path / "typo.yaml").write_text("stpes: 3\n")
    with pytest.raises(ConfigError, match="did you mean 'steps'"):
        load_lm_config(tmp_path / "typo.yaml")


def test_keep_first_last_leaves_the_first_block_linear_dense(data) -> None:
    # The model's first Linear is block 0's c_attn; its last is the head, which is never sparse here anyway.
    trainer = LMTrainer(_config(n_layer=2, keep_first_last=True), data, structure="2:4-T", progress=False)
    assert "transformer.h.0.attn.c_attn" not in trainer.sparse_layers
    assert len(trainer.sparse_layers) == 7


@pytest.mark.slow
def test_compare_resumes_after_an_interruption(tmp_path, data) -> None:
    config = _config(steps=8, eval_every=4)
    kwargs = dict(structures=["dense", "2:4-T"], seeds=[0], progress=False)
    whole = compare_lm(config, tmp_path / "whole", **kwargs)

    class Killed(Exception):
        pass

    def kill(record):
        raise Killed

    with pytest.raises(Killed):  # stops right after the first run, as a kill between two runs would
        compare_lm(config, tmp_path / "cut", on_run_end=kill, **kwargs)
    with pytest.raises(OverwriteError, match="--resume"):
        compare_lm(config, tmp_path / "cut", **kwargs)
    resumed = compare_lm(None, tmp_path / "cut", resume=True, **kwargs)
    assert [r["heldout_losses"] for r in resumed.rows] == [r["heldout_losses"] for r in whole.rows]
    with pytest.raises(OverwriteError, match="finished already"):
        compare_lm(None, tmp_path / "cut", resume=True, **kwargs)


def test_run_without_transformers_skips_only_the_hf_export(tmp_path, data, monkeypatch) -> None:
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "transformers" else real(name, *a)
    )
    summary = run_lm_training(_config(steps=4, eval_every=4, baseline=False), tmp_path / "run", progress=False)
    assert summary.hf_folder is None and summary.baseline_hf_folder is None
    assert not (tmp_path / "run" / "hf").exists() and (tmp_path / "run" / "summary.json").is_file()


def test_compare_table_prints_both_separation_tests(capsys) -> None:
    from nmsparse.cli.compare import _print_lm_table
    from nmsparse.recipes.lm.compare import LMCompareResult, paired_separation, separation

    def row(name: str, losses: list[float], md: float | None) -> dict[str, object]:
        return {
            "structure": name,
            "heldout_loss": statistics.fmean(losses),
            "heldout_losses": losses,
            "heldout_loss_std": statistics.stdev(losses),
            "heldout_perplexity": math.exp(statistics.fmean(losses)),
            "log10_mask_diversity": md,
            "loss_gap_percent": None,
            "loss_gap_percent_std": None,
            "mask_valid": None if md is None else True,
            "train_seconds": 1.0,
        }

    rows = [
        row("dense", [2.40, 2.50, 2.60], None),
        row("2:4", [2.41, 2.512, 2.609], 796.8),
        row("2:4-T", [2.50, 2.45, 2.66], 500.3),
    ]
    _print_lm_table(
        LMCompareResult(
            rows=rows,
            reference_numel=4096,
            seeds=[0, 1, 2],
            out_dir=None,
            spearman_loss_vs_diversity=None,
            separation=separation(rows),
            paired_separation=paired_separation(rows),
        )
    )
    out = capsys.readouterr().out
    assert "sum of the stds): 0 of 3 pairs" in out
    assert "paired t-test of the per-seed differences (95%, 3 seeds): 1 of 3 pairs: dense vs 2:4 (t " in out
