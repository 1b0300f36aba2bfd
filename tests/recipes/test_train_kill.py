"""``nmsparse train`` killed with SIGKILL right after its checkpoint files change, resumed, equals an uninterrupted run.

Fault 2 of issue 7: the weights and the trainer state used to be two files replaced one after the other, so a kill
between them resumed epoch-k weights with epoch-(k-1) optimizer state and silently retrained an epoch. Now each
trainer's checkpoint is one file replaced atomically, and resume reconciles metrics.jsonl with it.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from nmsparse.testing import run_tensors

pytestmark = pytest.mark.slow

ARGS = [
    "--width",
    "8",
    "--epochs",
    "2",
    "--steps-per-epoch",
    "3",
    "--batch-size",
    "32",
    "--refresh-every",
    "2",
    "--initial-method",
    "greedy",
    "--no-progress",
]
TIMING_KEYS = {"epoch_seconds", "refresh_seconds"}
WATCHED = ("checkpoint.safetensors", "baseline/checkpoint.safetensors")


def _env() -> dict[str, str]:
    env = dict(os.environ, OMP_NUM_THREADS="1", NUMBA_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    env.pop("NMSPARSE_DEBUG", None)
    return env


def _stamp(path: Path) -> tuple[int, int] | None:
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    return st.st_ino, st.st_mtime_ns


def _train(argv: list[str], run_dir: Path, *, kill_after_changes: int | None, timeout: float = 240.0) -> int | None:
    """Run ``nmsparse train``; SIGKILL it right after the ``kill_after_changes``-th checkpoint change.

    ``kill_after_changes=0`` kills as soon as the run directory's marker exists (inside the first epoch).
    Returns the exit code, or ``None`` when it was killed.
    """
    proc = subprocess.Popen(
        [sys.executable, "-m", "nmsparse", "train", *argv],
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    seen = {name: _stamp(run_dir / name) for name in WATCHED}
    changes = 0
    deadline = time.monotonic() + timeout
    try:
        while proc.poll() is None:
            if time.monotonic() > deadline:
                raise AssertionError(f"nmsparse train did not finish in {timeout} s")
            if kill_after_changes == 0 and (run_dir / "run.json").exists():
                proc.send_signal(signal.SIGKILL)
                proc.wait()
                return None
            if kill_after_changes:
                for name in WATCHED:
                    now = _stamp(run_dir / name)
                    if now != seen[name]:
                        seen[name] = now
                        changes += 1
                if changes >= kill_after_changes:
                    proc.send_signal(signal.SIGKILL)
                    proc.wait()
                    return None
            time.sleep(0.002)
    finally:
        if proc.poll() is None:
            proc.kill()
        output = proc.stdout.read() if proc.stdout else ""
        if proc.stdout:
            proc.stdout.close()
    assert proc.returncode == 0, output
    return proc.returncode


def _metrics(path: Path) -> list[dict]:
    return [
        {k: v for k, v in json.loads(line).items() if k not in TIMING_KEYS} for line in path.read_text().splitlines()
    ]


def test_sigkill_after_checkpoint_changes_then_resume_is_bit_identical(tmp_path: Path) -> None:
    # The uninterrupted run in a process of its own with the environment of the killed sessions: run in the test
    # process it inherited whatever earlier tests left there (thread settings), and in a full-suite run its
    # weights then differed from the sessions' in the last bits.
    full = tmp_path / "full"
    assert _train([*ARGS, "--out", str(full)], full, kill_after_changes=None) == 0

    cut = tmp_path / "cut"
    # 4 checkpoint changes in all (sparse epochs 1-2, baseline epochs 1-2). Killed inside the first epoch (no
    # checkpoint yet), then right after the 1st change of the next session (sparse epoch 1, before its metrics
    # line may be written), then after the 2nd change of the next (the sparse run's last checkpoint, its model
    # file and the baseline's first epoch lie between): every kill lands right after a checkpoint changed.
    assert _train([*ARGS, "--out", str(cut)], cut, kill_after_changes=0) is None
    assert _train(["--resume", str(cut), "--no-progress"], cut, kill_after_changes=1) is None
    assert _train(["--resume", str(cut), "--no-progress"], cut, kill_after_changes=2) is None
    assert _train(["--resume", str(cut), "--no-progress"], cut, kill_after_changes=None) == 0

    assert not list(cut.rglob("*.tmp")), "temporary files of interrupted writes are cleaned up"
    for name in (
        "checkpoint.safetensors",
        "baseline/checkpoint.safetensors",
        "model.safetensors",
        "baseline/model.safetensors",
    ):
        a, b = run_tensors(full / name), run_tensors(cut / name)
        assert a.keys() == b.keys(), name
        for key in a:
            assert torch.equal(a[key], b[key]), (name, key)
    for name in ("metrics.jsonl", "baseline/metrics.jsonl"):
        assert _metrics(full / name) == _metrics(cut / name), name
    done, resumed = (json.loads((d / "summary.json").read_text()) for d in (full, cut))
    for key in ("test_accuracy", "baseline_test_accuracy", "mask_checksum", "refreshes", "steps", "test_loss"):
        assert done[key] == resumed[key], key
