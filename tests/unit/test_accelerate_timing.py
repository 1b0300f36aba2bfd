"""accelerate_'s micro-benchmark (issue 18): shared warm-up, interleaved repeats, pipelined decision, cache key,
predicted vs measured gain; and the step-gain calculator. Timers are injected, so this runs on CPU."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import nn

import nmsparse
from nmsparse import accelerate as acc
from nmsparse.accelerate import LinearTiming, accelerate_, predicted_layer_speedup, step_gain_ceiling
from nmsparse.errors import ConfigError


class ScriptedClock:
    """Records which side ran, in order; returns fixed per-call times (dense 2 ms, sparse 1 ms pipelined)."""

    def __init__(self, pipelined: dict[str, float], synchronised: dict[str, float]) -> None:
        self.pipelined, self.synchronised = pipelined, synchronised
        self.log: list[tuple[str, str, int]] = []

    def pipelined_ms(self, fn: Any, calls: int) -> float:
        side = fn()
        self.log.append(("pipelined", side, calls))
        return self.pipelined[side]

    def synchronised_ms(self, fn: Any) -> float:
        side = fn()
        self.log.append(("sync", side, 1))
        return self.synchronised[side]


def test_shared_warmup_then_interleaved_repeats_alternating_order() -> None:
    clock = ScriptedClock({"dense": 2.0, "sparse": 1.0}, {"dense": 2.5, "sparse": 3.0})
    out = acc._fair_times(lambda: "dense", lambda: "sparse", clock=clock, warmup_ms=100.0, repeats=4, calls=5)
    warm = [e for e in clock.log if e[2] == 1 and e[0] == "pipelined"]
    assert len(warm) == 2 * 34, "alternating pairs until >= 100 ms of work (34 x 3 ms)"
    assert [side for _, side, _ in warm[:4]] == ["dense", "sparse", "dense", "sparse"]
    assert out["warmup_ms"] >= 100.0
    timed = [(kind, side) for kind, side, calls in clock.log[len(warm) :]]
    assert timed[:4] == [("pipelined", "dense"), ("sync", "dense"), ("pipelined", "sparse"), ("sync", "sparse")]
    assert timed[4:8] == [("pipelined", "sparse"), ("sync", "sparse"), ("pipelined", "dense"), ("sync", "dense")]
    assert all(calls == 5 for kind, _, calls in clock.log[len(warm) :] if kind == "pipelined")
    assert (out["dense"], out["sparse"], out["dense_sync"], out["sparse_sync"]) == (2.0, 1.0, 2.5, 3.0)
    assert out["dense_spread"] == out["sparse_spread"] == 0.0


def test_spread_is_stored() -> None:
    values = iter([1.0, 1.0, 1.2, 0.8, 1.0, 1.0, 1.1, 0.9])

    class Noisy(ScriptedClock):
        def pipelined_ms(self, fn: Any, calls: int) -> float:
            fn()
            return next(values)

    out = acc._fair_times(
        lambda: "dense",
        lambda: "sparse",
        clock=Noisy({}, {"dense": 1.0, "sparse": 1.0}),
        warmup_ms=0.0,
        repeats=4,
        calls=2,
    )
    # order: d s | s d | d s | s d  ->  dense 1.0 0.8 1.0 0.9, sparse 1.0 1.2 1.0 1.1
    assert out["dense"] == pytest.approx(0.95) and out["dense_spread"] == pytest.approx(0.2 / 0.95)
    assert out["sparse"] == pytest.approx(1.05) and out["sparse_spread"] == pytest.approx(0.2 / 1.05)


def test_measure_linear_with_an_injected_clock_reports_both_timings() -> None:
    class LayerClock:
        def __init__(self) -> None:
            self.calls = 0

        def pipelined_ms(self, fn: Any, calls: int) -> float:
            self.calls += 1
            fn()
            return 1.0

        def synchronised_ms(self, fn: Any) -> float:
            fn()
            return 2.0

    clock = LayerClock()
    timing = acc.measure_linear(
        8, 16, 16, torch.float32, "cpu", warmup=1, repeats=3, warmup_ms=0.0, detail=True, clock=clock
    )
    assert isinstance(timing, LinearTiming)
    assert (timing.dense_ms, timing.sparse_ms, timing.dense_sync_ms, timing.sparse_sync_ms) == (1.0, 1.0, 2.0, 2.0)
    assert timing.forward_speedup == 1.0 and timing.speedup == 1.0 and timing.sync_speedup == 1.0
    assert clock.calls == 2 * 3 + 2 * 2, "three training repeats and two forward-only repeats per side"
    pair = acc.measure_linear(8, 16, 16, torch.float32, "cpu", warmup=0, repeats=2, warmup_ms=0.0, clock=clock)
    assert pair == (1.0, 1.0)


@pytest.fixture
def fake_gpu_timing(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    """Capable probe; pipelined 1.25x, synchronised 0.8x (host time charged to the sparse side), forward 1.5x."""
    calls: list[dict[str, Any]] = []

    def fake_measure(tokens: int, in_f: int, out_f: int, dtype: torch.dtype, device: object, **kw: Any) -> Any:
        calls.append({"shape": (tokens, in_f, out_f), **kw})
        return LinearTiming(
            dense_ms=2.5,
            sparse_ms=2.0,
            dense_sync_ms=2.4,
            sparse_sync_ms=3.0,
            dense_spread=0.02,
            sparse_spread=0.04,
            forward_speedup=1.5,
            warmup_ms=120.0,
            repeats=20,
        )

    monkeypatch.setattr(acc, "_MEMORY_CACHE", {})
    monkeypatch.setattr(acc, "sparse_unavailable_reason", lambda *a, **k: None)
    monkeypatch.setattr(acc, "measure_linear", fake_measure)
    monkeypatch.setattr(acc, "_environment_key", lambda device: "FakeGPU|torch x|cusparselt y")
    return calls


def test_decision_uses_pipelined_times_and_reports_predicted_and_measured(
    fake_gpu_timing: list[dict[str, Any]],
) -> None:
    model = nn.Sequential(nn.Linear(128, 256), nn.Linear(256, 128, bias=False))
    report = accelerate_(model, tokens=1024)
    first = report.layers["0"]
    assert first.swapped and first.speedup == 1.25, "pipelined 1.25x >= 1.05 although synchronised says 0.80x"
    assert first.dense_sync_ms == 2.4 and first.sparse_sync_ms == 3.0 and first.spread == 0.04
    assert first.predicted_speedup == pytest.approx(3 / (2 / 1.5 + 1))
    assert "synchronised 0.80x" in first.reason and "spread 4%" in first.reason
    assert "predicted 1.29x from the forward ratio" in first.reason
    assert report.to_dict()["layers"]["0"]["predicted_speedup"] == pytest.approx(1.2857, abs=1e-4)
    assert [c["bias"] for c in fake_gpu_timing] == [True, False] and fake_gpu_timing[0]["mode"] == "static"


def test_cache_key_names_version_mode_and_bias(fake_gpu_timing: list[dict[str, Any]]) -> None:
    accelerate_(nn.Sequential(nn.Linear(128, 256)), tokens=1024)
    accelerate_(nn.Sequential(nn.Linear(128, 256, bias=False)), tokens=1024)
    accelerate_(nn.Sequential(nn.Linear(128, 256)), tokens=1024, mode="straight-through")
    accelerate_(nn.Sequential(nn.Linear(128, 256)), tokens=1024)
    assert len(fake_gpu_timing) == 3, "bias and mode are part of the key; the fourth call hits the cache"
    keys = list(acc._MEMORY_CACHE)
    assert all(f"nmsparse {nmsparse.__version__}" in k for k in keys)
    assert {k.rsplit("|", 2)[1] for k in keys} == {"static", "straight-through"}
    assert {k.rsplit("|", 1)[1] for k in keys} == {"bias", "no-bias"}


def test_gain_model() -> None:
    assert step_gain_ceiling(1.0, 2.0) == pytest.approx(1.5), "the textbook ceiling: all linears, 2x on two of three"
    assert step_gain_ceiling(0.6, 1.3) == pytest.approx(1.102, abs=1e-3), "a step ~60% in linears at ~1.3x gains ~1.10x"
    assert step_gain_ceiling(0.6, 1.4, 1.3, overhead_share=0.02) < step_gain_ceiling(0.6, 1.4, 1.3)
    assert step_gain_ceiling(0.0, 5.0) == 1.0
    assert predicted_layer_speedup(2.0, training=True) == pytest.approx(1.5)
    assert predicted_layer_speedup(1.3, training=False) == 1.3 and predicted_layer_speedup(None, training=True) is None
    with pytest.raises(ConfigError):
        step_gain_ceiling(1.5, 2.0)
    with pytest.raises(ConfigError):
        step_gain_ceiling(0.5, 0.0)
