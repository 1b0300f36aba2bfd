"""accelerate_: which Linear layers are swapped for SparseLinear, and the reason given for every other one."""

from __future__ import annotations

import copy
import json
import logging
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.nn.utils import parametrize

import nmsparse
from nmsparse import accelerate as acc
from nmsparse.accelerate import AccelerationReport, accelerate_, refresh_masks_
from nmsparse.errors import ConfigError
from nmsparse.nn import NMMask, SparseLinear


def _mlp() -> nn.Sequential:
    return nn.Sequential(nn.Linear(128, 256), nn.GELU(), nn.Linear(256, 128), nn.GELU(), nn.Linear(128, 6))


@pytest.fixture
def fresh_cache(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(acc, "_MEMORY_CACHE", {})


def test_cpu_reports_every_layer_not_swapped_with_the_reason() -> None:
    model = _mlp()
    before = [type(m) for m in model]
    report = accelerate_(model, tokens=4096)
    assert [type(m) for m in model] == before
    assert list(report.layers) == ["0", "2", "4"]
    assert report.kept["0"] == "no CUDA: tensors are on cpu (sparse tensor cores need an NVIDIA GPU)"
    assert "cannot take 2:4-T" in report.kept["4"], "the 6-output layer's shape is reported first"
    assert not report.swapped
    text = report.describe()
    assert "0 layer(s) on sparse tensor cores" in text and "not swapped: no CUDA" in text
    assert "4:8-T and larger masks stay masked-dense" in text
    json.dumps(report.to_dict())


def test_force_swaps_to_masked_dense_with_the_same_function() -> None:
    model = nmsparse.prune_(_mlp(), "2:4-T").model
    ref = copy.deepcopy(model)
    report = accelerate_(model, force=True)
    assert report.model is model, "the report holds the model, changed in place"
    assert isinstance(model[0], SparseLinear) and isinstance(model[2], SparseLinear)
    assert isinstance(model[4], nn.Linear), "6 outputs cannot take 2:4-T, even forced"
    assert report.swapped["0"].reason.startswith("forced: runs masked-dense (no CUDA")
    assert not report.accelerated
    x = torch.randn(5, 128)
    torch.testing.assert_close(model(x), ref(x))
    assert model.state_dict().keys() == ref.state_dict().keys()


def test_four_eight_t_stays_masked_dense_and_says_why() -> None:
    model = nn.Sequential(nn.Linear(128, 128))
    # a valid 4:8-T mask without a solver (row i of every 8x8 block keeps columns i..i+3 mod 8): no JIT compile
    block = torch.tensor([[(c - r) % 8 < 4 for c in range(8)] for r in range(8)])
    mask = block.repeat(16, 16)
    assert nmsparse.is_nm_sparse(mask, "4:8-T")
    parametrize.register_parametrization(model[0], "weight", NMMask(mask, pattern="4:8-T"), unsafe=True)
    report = accelerate_(model, tokens=1024)
    assert "pattern 4:8-T runs masked-dense: only 2:4-T" in report.kept["0"]
    assert report.layers["0"].pattern == "4:8-T"
    report = accelerate_(model, force=True)
    assert isinstance(model[0], SparseLinear) and model[0].pattern == nmsparse.NMPattern.parse("4:8-T")
    assert "only 2:4-T" in report.swapped["0"].reason


def test_include_exclude_and_non_linear_models() -> None:
    model = _mlp()
    report = accelerate_(model, include=["0", "2"], exclude="2", force=True)
    assert list(report.layers) == ["0"] and isinstance(model[0], SparseLinear)
    assert isinstance(model[2], nn.Linear)
    assert accelerate_(nn.Sequential(nn.Conv2d(3, 8, 3))).layers == {}


def test_a_bare_linear_model_is_replaced_and_returned_in_the_report() -> None:
    layer = nn.Linear(128, 128)
    report = accelerate_(layer, force=True)
    assert isinstance(report.model, SparseLinear) and list(report.swapped) == [""]
    assert dict(layer.named_children()) == {}, "the old layer gets no child named ''"
    x = torch.randn(3, 128)
    assert report.model(x).shape == (3, 128)
    assert "model" not in report.to_dict() and "model=" not in repr(report)


def test_progress_has_one_name_and_the_old_one_warns() -> None:
    report = accelerate_(_mlp(), tokens=8, progress=False)
    assert list(report.layers) == ["0", "2", "4"]
    with pytest.warns(DeprecationWarning, match="progress_bar= is deprecated; use progress="):
        accelerate_(_mlp(), tokens=8, progress_bar=False)


def test_argument_errors() -> None:
    model = _mlp()
    with pytest.raises(ConfigError, match="min_speedup must be"):
        accelerate_(model, min_speedup=-1)
    with pytest.raises(ConfigError, match="tokens must be an int"):
        accelerate_(model, tokens=0)
    with pytest.raises(ConfigError, match="dtype must be a torch.dtype"):
        accelerate_(model, dtype="bf16")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="force and training must be bools"):
        accelerate_(model, force=1)  # type: ignore[arg-type]


def test_dynamic_sparsifier_refreshes_the_accelerated_layers() -> None:
    model = nn.Sequential(nn.Linear(128, 128), nn.ReLU(), nn.Linear(128, 128))
    sparsifier = nmsparse.DynamicSparsifier(model, "2:4-T", initial_method="exact", method="exact", refresh_every=1)
    accelerate_(model, force=True)
    layer = model[0]
    assert isinstance(layer, SparseLinear) and layer.mode == "straight-through"
    with torch.no_grad():
        layer.weight[~layer.mask] = 50.0  # the pruned weights take over at the next refresh
    before = layer.mask.clone()
    sparsifier.step()
    assert not torch.equal(before, layer.mask) and nmsparse.is_nm_sparse(layer.mask, "2:4-T")


def test_refresh_masks_on_plain_accelerated_layers() -> None:
    model = _mlp()
    accelerate_(model, force=True, mode="straight-through", decay=1e-4, method="exact")
    assert model[0].mode == "straight-through" and model[0].decay == 1e-4
    with torch.no_grad():
        model[0].weight[~model[0].mask] = 50.0
    assert refresh_masks_(model) > 0


# ------------------------------------------------------------------- the GPU decision path, with fake timings


@pytest.fixture
def fake_gpu(monkeypatch: pytest.MonkeyPatch, fresh_cache: None) -> list[tuple[int, int, int]]:
    """The probe says 'capable'; measure_linear returns 2x for wide layers and 0.5x for narrow ones."""
    calls: list[tuple[int, int, int]] = []

    def fake_measure(
        tokens: int, in_f: int, out_f: int, dtype: torch.dtype, device: object, *, training: bool = True, **_: object
    ) -> tuple[float, float]:
        calls.append((tokens, in_f, out_f))
        return (2.0, 1.0) if max(in_f, out_f) >= 256 else (1.0, 2.0)

    monkeypatch.setattr(acc, "sparse_unavailable_reason", lambda *a, **k: None)
    monkeypatch.setattr(acc, "measure_linear", fake_measure)
    monkeypatch.setattr(acc, "_environment_key", lambda device: "FakeGPU|torch x|cusparselt y")
    return calls


def test_decides_per_shape_from_measurements(fake_gpu: list[tuple[int, int, int]]) -> None:
    model = nn.Sequential(nn.Linear(128, 256), nn.GELU(), nn.Linear(256, 128), nn.Linear(128, 128))
    report = accelerate_(model, tokens=2048)
    assert set(report.accelerated) == {"0", "2"}
    assert isinstance(model[0], SparseLinear) and isinstance(model[3], nn.Linear)
    kept = report.kept["3"]
    assert kept.startswith("measured 0.50x (dense 1.000 ms, sparse 2.000 ms at 2048 tokens, re-packing included)")
    assert kept.endswith("< min_speedup 1.05")
    assert report.layers["0"].speedup == 2.0
    assert len(fake_gpu) == 3
    accelerate_(nn.Sequential(nn.Linear(128, 256)), tokens=2048)
    assert len(fake_gpu) == 3, "same shape: the in-memory cache answers"


def test_tokens_are_needed_and_recorded_from_a_sample(fake_gpu: list[tuple[int, int, int]]) -> None:
    model = nn.Sequential(nn.Linear(128, 256))
    with pytest.raises(ConfigError, match="token count is unknown; pass tokens="):
        accelerate_(model)
    report = accelerate_(model, sample=torch.randn(4, 16, 128))
    assert report.layers["0"].tokens == 64 and fake_gpu[-1] == (64, 128, 256)
    report = accelerate_(nn.Sequential(nn.Linear(128, 256)), tokens={"0": 512})
    assert report.layers["0"].tokens == 512


def test_timing_cache_file_is_written_reused_and_survives_corruption(
    fake_gpu: list[tuple[int, int, int]],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    path = tmp_path / "cache" / "timings.json"
    accelerate_(nn.Sequential(nn.Linear(128, 256)), tokens=1024, cache_file=path)
    data = json.loads(path.read_text())
    assert data["version"] == 1 and len(data["timings"]) == 1
    monkeypatch.setattr(acc, "_MEMORY_CACHE", {})
    accelerate_(nn.Sequential(nn.Linear(128, 256)), tokens=1024, cache_file=path)
    assert len(fake_gpu) == 1, "the file answered"
    path.write_text("{not json")
    monkeypatch.setattr(acc, "_MEMORY_CACHE", {})
    with caplog.at_level(logging.WARNING, logger="nmsparse"):
        accelerate_(nn.Sequential(nn.Linear(128, 256)), tokens=1024, cache_file=path)
    assert "ignoring unreadable timing cache" in caplog.text and len(fake_gpu) == 2
    assert json.loads(path.read_text())["version"] == 1


def test_default_cache_file_follows_xdg(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert acc.default_cache_file() == tmp_path / "nmsparse" / "accelerate-timings.json"


def test_measure_linear_runs_on_cpu() -> None:
    dense_ms, sparse_ms = acc.measure_linear(16, 32, 32, torch.float32, "cpu", warmup=1, repeats=3)
    assert dense_ms > 0 and sparse_ms > 0
    dense_ms, sparse_ms = acc.measure_linear(16, 32, 32, torch.float32, "cpu", training=False, warmup=1, repeats=3)
    assert dense_ms > 0 and sparse_ms > 0


def test_report_type() -> None:
    report = accelerate_(_mlp(), tokens=8)
    assert isinstance(report, AccelerationReport) and str(report) == report.describe()


@pytest.mark.gpu
def test_cuda_small_layers_stay_dense_and_decisions_follow_the_measurement(fresh_cache: None) -> None:
    if acc.sparse_unavailable_reason("cuda", torch.bfloat16, in_features=128, out_features=128) is not None:
        pytest.skip(acc.sparse_unavailable_reason("cuda", torch.bfloat16, in_features=128, out_features=128))
    model = nn.Sequential(nn.Linear(4096, 16384), nn.GELU(), nn.Linear(16384, 4096), nn.Linear(4096, 256))
    model = model.cuda().to(torch.bfloat16)
    nmsparse.prune_(model, "2:4-T")
    report = accelerate_(model, tokens=8192)
    print(report.describe())
    for name, decision in report.layers.items():
        assert decision.speedup is not None, name
        assert decision.swapped == (decision.speedup >= 1.05), name
    assert not report.layers["3"].swapped, "a 256-output product is far too small for the sparse fixed cost"
    x = torch.randn(64, 4096, device="cuda", dtype=torch.bfloat16)
    model(x).float().sum().backward()


def test_lazy_linear_is_reported_not_crashed() -> None:
    model = nn.Sequential(nn.LazyLinear(8))
    report = accelerate_(model, force=True)
    assert "not initialised" in report.kept["0"]
