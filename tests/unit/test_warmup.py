"""``nmsparse.solvers.warmup``: kernels are compiled (or loaded) before timed work (issue 7)."""

from __future__ import annotations

import subprocess
import sys
import time

import torch

from nmsparse.solvers import exact, greedy_cpu, registered_solver, warmup
from nmsparse.solvers.topn import topn_matrix


def test_warmup_runs_every_selected_solver_on_tiny_inputs():
    start = time.perf_counter()
    times = warmup(["2:4-T", "4:8-T"], ["exact", "greedy"])
    wall = time.perf_counter() - start
    labels = {key.split()[0] for key in times}
    assert {"exact/torch", "exact/numba", "greedy/torch", "greedy/numba"} <= labels
    assert not any(key.startswith(("topn/", "greedy-repair/")) for key in times)
    assert all(key.endswith("float32") for key in times)
    assert 0.0 < sum(times.values()) <= wall  # each entry times its own solver run, inside this call
    # compiled (or loaded from the cache); 4:8-T exact runs the m = 8 kernel (issue 15), not the general one
    assert exact._KERNEL8 is not None and greedy_cpu._KERNEL is not None
    assert "exact/torch 4:8-T float32" not in times  # exact/torch takes m = 4 only


def test_warmup_reaches_registered_solvers_and_dtypes():
    seen = []

    def record(scores, pattern, progress):
        seen.append((str(pattern), scores.dtype, tuple(scores.shape)))
        return topn_matrix(scores, pattern)

    with registered_solver("rec", record, backend="test", plain=True):
        times = warmup(["2:4", "8:16"], ["rec"], dtypes=(torch.float32, torch.float64))
    assert seen == [
        ("2:4", torch.float32, (4, 4)),
        ("2:4", torch.float64, (4, 4)),
        ("8:16", torch.float32, (16, 16)),
        ("8:16", torch.float64, (16, 16)),
    ]
    assert sorted(times) == sorted(f"rec/test {p} {d}" for p in ("2:4", "8:16") for d in ("float32", "float64"))


def test_after_warmup_the_first_mask_does_not_compile():
    # In a fresh process: warmup, then the first find_mask of each compiled path must not trigger numba's
    # compiler again (its dispatcher lists one signature per compiled type and nothing is added afterwards).
    code = (
        "import torch, nmsparse\n"
        "from nmsparse.solvers import warmup, exact, greedy_cpu\n"
        "warmup(['4:8-T'], ['exact', 'greedy'])\n"
        "before = (len(exact._KERNEL8.signatures), len(greedy_cpu._KERNEL.signatures))\n"
        "nmsparse.find_mask(torch.randn(64, 64), '4:8-T', method='exact')\n"
        "nmsparse.find_mask(torch.randn(64, 64), '4:8-T', method='greedy')\n"
        "after = (len(exact._KERNEL8.signatures), len(greedy_cpu._KERNEL.signatures))\n"
        "assert before == after == (1, 1), (before, after)\n"
        "print('ok')\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr[-3000:]
