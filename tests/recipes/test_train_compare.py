"""``nmsparse compare`` on a tiny setting: table, compare.json, plot, exact diversity, identical seeds."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import nmsparse
from nmsparse.cli.main import main
from nmsparse.errors import ConfigError
from nmsparse.recipes.classify import TrainConfig
from nmsparse.recipes.classify.checkpoint import read_model_metadata
from nmsparse.recipes.classify.compare import compare_structures

pytestmark = pytest.mark.usefixtures("restore_runtime")  # tests/conftest.py


TINY = [
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
]


def test_compare_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    structures = ["dense", "2:4", "4:8-T", "unstructured"]
    code = main(["compare", *TINY, "--structures", *structures, "--out", str(tmp_path / "cmp")])
    stdout = capsys.readouterr().out
    assert code == 0
    for name in structures:
        assert any(line.strip().startswith(name + " ") for line in stdout.splitlines()), name
    payload = json.loads((tmp_path / "cmp" / "compare.json").read_text())
    assert payload["reference_numel"] == 4096 and payload["seeds"] == [0]
    rows = {row["structure"]: row for row in payload["rows"]}
    assert list(rows) == structures
    assert rows["dense"]["log10_mask_diversity"] is None and rows["dense"]["mask_valid"] is None
    for name in structures[1:]:
        assert rows[name]["log10_mask_diversity"] == pytest.approx(nmsparse.log10_mask_diversity(name, 4096))
        assert rows[name]["mask_valid"] is True
        assert 0.0 <= rows[name]["test_accuracy"] <= 100.0
    # the ordering the paper predicts from diversity: unstructured > 2:4 > 4:8-T
    assert (
        rows["unstructured"]["log10_mask_diversity"]
        > rows["2:4"]["log10_mask_diversity"]
        > rows["4:8-T"]["log10_mask_diversity"]
    )
    assert (tmp_path / "cmp" / "compare.png").read_bytes()[:4] == b"\x89PNG"
    seeds = {
        json.loads(read_model_metadata(tmp_path / "cmp" / slug / "model.safetensors")["config"])["seed"]
        for slug in ("dense", "2x4", "4x8-T", "unstructured")
    }
    assert seeds == {0}


def test_compare_several_seeds_reports_spread(tmp_path: Path) -> None:
    cfg = TrainConfig(width=8, epochs=1, steps_per_epoch=2, batch_size=32, initial_method="greedy")
    result = compare_structures(cfg, structures=["dense", "2:4"], seeds=[0, 1], out_dir=tmp_path, progress=False)
    assert result.seeds == [0, 1]
    for row in result.rows:
        assert len(row["accuracies"]) == 2 and row["test_accuracy_std"] >= 0.0
        assert row["test_accuracy"] == pytest.approx(sum(row["accuracies"]) / 2)
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_dir()) == [
        "2x4-seed0",
        "2x4-seed1",
        "dense-seed0",
        "dense-seed1",
    ]


def test_compare_rejects_bad_structures() -> None:
    with pytest.raises(ConfigError, match="structure '3:2'"):
        compare_structures(TrainConfig(), structures=["dense", "3:2"])
    with pytest.raises(ConfigError, match="repeat"):
        compare_structures(TrainConfig(), structures=["2:4", "2:4"])
