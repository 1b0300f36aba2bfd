"""Every benchmark script runs in --smoke mode, so none can rot unnoticed; results go to a temporary folder."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = sorted((Path(__file__).resolve().parent.parent / "benchmarks").glob("bench_*.py"))


@pytest.mark.slow
@pytest.mark.parametrize("script", BENCHMARKS, ids=lambda p: p.name)
def test_benchmark_smoke(script, tmp_path):
    # The kernel tests switch Triton's interpreter on for this process; a benchmark runs as a user would, without it.
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    result = subprocess.run(
        [sys.executable, str(script), "--smoke", "--out", str(tmp_path / "results")],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=tmp_path,
        env=env,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    assert result.stdout.strip(), "a benchmark prints its table"


DEVICE_CHECK = BENCHMARKS[0].parent / "device_check.sh"


def _device_check(tmp_path: Path, **extra: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("TRITON_INTERPRET", "PLAN_ONLY")}
    env.update({"PYTHON": sys.executable, "OUT": str(tmp_path / "out"), "CUDA_VISIBLE_DEVICES": "", **extra})
    return subprocess.run(
        ["bash", str(DEVICE_CHECK)], capture_output=True, text=True, timeout=300, cwd=tmp_path, env=env
    )


def test_device_check_plan_fits_the_budget(tmp_path):
    """The step limits plus the kill graces stay within 450 s (issue 18), in the issue's order."""
    result = _device_check(tmp_path, PLAN_ONLY="1")
    assert result.returncode == 0, result.stdout + result.stderr
    total = int(result.stdout.split("total: ")[1].split()[0])
    assert total <= 450
    order = [
        "versions",
        "anatomy",
        "sparse-linear-tests",
        "bench_linear",
        "bench_train_step",
        "bench_kernels",
        "kernel-tests",
    ]
    positions = [result.stdout.index(f" {name} ") for name in order]
    assert positions == sorted(positions)


@pytest.mark.slow
def test_device_check_cpu_rehearsal(tmp_path):
    """Without CUDA the script rehearses every step in seconds, prints its plan and table, and exits 0."""
    result = _device_check(tmp_path)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "device_check plan" in result.stdout and "no CUDA: rehearsal only" in result.stdout
    table = result.stdout.split("device_check summary")[-1]
    assert table.count("rehearsed") == 7 and "FAIL" not in table
    files = [p for p in (tmp_path / "out").rglob("*") if p.is_file()]
    assert 0 < len(files) <= 8
