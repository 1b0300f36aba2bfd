"""Shared benchmark helpers: environment capture, medians, result files. Stdlib + torch only."""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import torch

RESULTS = Path(__file__).resolve().parent / "results"


def environment(device: str = "cpu") -> dict[str, object]:
    """Machine, library versions and git commit, to print beside every table."""
    try:
        commit = (
            subprocess.run(
                ["git", "rev-parse", "--short", "HEAD"],
                capture_output=True,
                text=True,
                cwd=Path(__file__).parent,
                check=False,
            ).stdout.strip()
            or "unknown"
        )
    except OSError:
        commit = "unknown"
    env: dict[str, object] = {
        "machine": platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "commit": commit,
        "device": device,
    }
    if device.startswith("cuda") and torch.cuda.is_available():
        env["gpu"] = torch.cuda.get_device_name(0)
    return env


def median_seconds(fn: Callable[[], object], *, repeats: int, warmup: int = 1) -> float:
    """Median wall time of ``fn`` over ``repeats`` runs after ``warmup`` runs (CUDA synchronised)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def add_out_argument(parser: argparse.ArgumentParser) -> None:
    """``--out DIR``: where result files go (default ``benchmarks/results/``, git-ignored)."""
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        metavar="DIR",
        help=f"folder for the result files (default: {RESULTS}, git-ignored); nothing else is written",
    )


def write_result(name: str, payload: dict[str, object], out_dir: Path | str | None = None) -> Path:
    """Write ``payload`` as JSON to ``<out_dir>/<name>.json`` (default ``benchmarks/results/``) and return the path.

    The file appears whole or not at all (written beside, then renamed), with the mode a plain ``open`` gives.
    """
    folder = RESULTS if out_dir is None else Path(out_dir)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.json"
    temporary = folder / f".{name}.json.{os.getpid()}.tmp"
    try:
        with open(temporary, "x", encoding="utf-8") as handle:
            handle.write(json.dumps(payload, indent=2, default=str))
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)
    return path


def print_environment(env: dict[str, object]) -> None:
    print("environment: " + ", ".join(f"{k}={v}" for k, v in env.items()))
