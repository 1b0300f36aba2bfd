"""The first mask of a fresh machine: cold (empty numba cache, fresh process), cache-warm (fresh process, cache
filled by the cold one) and steady (later calls in one process) times of ``find_mask`` for the README's patterns.

    python benchmarks/bench_cold_start.py            # every README pattern, 3 fresh process pairs each
    python benchmarks/bench_cold_start.py --baseline /tmp/old/src   # and an older nmsparse, interleaved
    python benchmarks/bench_cold_start.py --smoke    # 4:8-T exact and greedy, one process each
    python benchmarks/bench_cold_start.py --smoke --out /tmp/results   # result JSON only there

Every measurement runs in its own Python process (``sys.executable``) with ``NUMBA_CACHE_DIR`` pointing to a
fresh temporary folder, so the compile (or cache load) of numba's kernels is what the first call pays; the import
of torch and nmsparse is timed apart. The cold process also times a second call made right after the first (a
first call may answer while the kernel compiles in the background: the second call shares the machine with that
compile). Steady: the median of ``--steady`` calls in the cache-warm process, once every background compile is
done. Weight: the README's ``torch.randn(512, 1024)``.

``--baseline SRC`` runs every measurement a second time with ``SRC`` (the ``src`` folder of another checkout,
e.g. ``git worktree add /tmp/old 63e4ca8``) first on ``PYTHONPATH``, alternating with this checkout, so both see
the same load; the table then shows both and the ratio of steady times. The load average (1 minute) is printed
with every row: on a shared machine, compare rows of one run, not runs.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import add_out_argument, environment, print_environment, write_result  # noqa: E402

#: (pattern, method) pairs the README uses: find_mask's default for each pattern, and greedy refreshes.
CASES = [
    ("2:4", "auto"),
    ("4:8", "auto"),
    ("2:4-T", "auto"),
    ("4:8-T", "auto"),
    ("8:16-T", "auto"),
    ("2:4-T", "greedy"),
    ("4:8-T", "greedy"),
]
SMOKE_CASES = [("4:8-T", "auto"), ("4:8-T", "greedy")]

_CHILD = r"""
import json, statistics, sys, time
start = time.perf_counter()
import torch, nmsparse
imported = time.perf_counter() - start
pattern, method, steady_repeats = sys.argv[1], sys.argv[2], int(sys.argv[3])
torch.manual_seed(0)
w = torch.randn(512, 1024)
start = time.perf_counter()
mask = nmsparse.find_mask(w, pattern, method=method)
first = time.perf_counter() - start
assert nmsparse.is_nm_sparse(mask, pattern)
start = time.perf_counter()
again = nmsparse.find_mask(w, pattern, method=method)
second = time.perf_counter() - start
assert torch.equal(again, mask)
try:  # steady means compiled: a first call may compile in the background (issue 16)
    from nmsparse.solvers._threads import wait_builds
except ImportError:
    try:
        from nmsparse.solvers.greedy_cpu import wait_compiled as wait_builds
    except ImportError:  # nmsparse before issue 16
        wait_builds = None
if wait_builds is not None:
    wait_builds()
steady = []
for _ in range(steady_repeats):
    start = time.perf_counter()
    nmsparse.find_mask(w, pattern, method=method)
    steady.append(time.perf_counter() - start)
print(json.dumps({"import_s": imported, "first_s": first, "second_s": second,
                  "steady_s": statistics.median(steady) if steady else None, "source": nmsparse.__file__}))
"""


def _child(pattern: str, method: str, cache: str, steady_repeats: int, src: str | None) -> dict[str, float]:
    env = {**os.environ, "NUMBA_CACHE_DIR": cache}
    if src is not None:
        env["PYTHONPATH"] = os.pathsep.join(p for p in (src, os.environ.get("PYTHONPATH")) if p)
    result = subprocess.run(
        [sys.executable, "-c", _CHILD, pattern, method, str(steady_repeats)],
        env=env,
        capture_output=True,
        text=True,
        check=False,
        timeout=600,
    )
    if result.returncode != 0:
        raise RuntimeError(f"{pattern} {method}: child failed:\n{result.stderr[-2000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def _measure(pattern: str, method: str, steady_repeats: int, src: str | None) -> dict[str, float]:
    """One cold process, then one cache-warm process on the cache the cold one filled."""
    with tempfile.TemporaryDirectory(prefix="nmsparse-numba-cache-") as cache:
        first = _child(pattern, method, cache, 0, src)
        second = _child(pattern, method, cache, steady_repeats, src)
    if src is not None and not str(first["source"]).startswith(str(Path(src).resolve())):
        raise RuntimeError(f"--baseline {src}: the child imported {first['source']} instead")
    return {
        "cold_s": first["first_s"],
        "second_s": first["second_s"],
        "cache_warm_s": second["first_s"],
        "steady_s": second["steady_s"],
        "import_s": first["import_s"],
        "load": os.getloadavg()[0],
    }


def _summary(runs: list[dict[str, float]]) -> dict[str, object]:
    row: dict[str, object] = {key: statistics.median(run[key] for run in runs) for key in runs[0]}
    row["cold_all_s"] = [run["cold_s"] for run in runs]
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="4:8-T exact and greedy, one process each")
    parser.add_argument("--repeats", type=int, default=3, help="fresh cold/warm process pairs per case")
    parser.add_argument("--steady", type=int, default=20, help="calls timed after the first (median)")
    parser.add_argument(
        "--cases",
        nargs="+",
        default=None,
        metavar="PATTERN:METHOD",
        help="cases to run, e.g. 4:8-T:auto 4:8-T:greedy (default: every README pattern)",
    )
    parser.add_argument(
        "--baseline",
        default=None,
        metavar="SRC",
        help="also run the nmsparse package in SRC (another checkout's src folder), interleaved",
    )
    add_out_argument(parser)
    args = parser.parse_args(argv)
    cases = SMOKE_CASES if args.smoke else CASES
    if args.cases:
        cases = [tuple(case.rsplit(":", 1)) for case in args.cases]  # type: ignore[misc]
    repeats = 1 if args.smoke else args.repeats
    steady_repeats = 3 if args.smoke else args.steady
    baseline = str(Path(args.baseline).resolve()) if args.baseline else None
    env = environment()
    print_environment(env)
    if baseline:
        print(f"baseline: {baseline} (columns 'old'); steady ratio = this checkout / baseline")
    rows = []
    head = f"{'pattern':<8} {'method':<7} {'cold s':>7} {'2nd s':>6} {'cache-warm s':>12} {'steady ms':>10}"
    if baseline:
        head += f" | {'old cold s':>10} {'old warm s':>10} {'old steady ms':>13} {'steady ratio':>12}"
    print(head + f" {'import s':>8} {'load':>5}")
    for pattern, method in cases:
        new_runs, old_runs = [], []
        for _ in range(repeats):  # alternate, so both see the same load
            new_runs.append(_measure(pattern, method, steady_repeats, None))
            if baseline:
                old_runs.append(_measure(pattern, method, steady_repeats, baseline))
        row = {"pattern": pattern, "method": method, "repeats": repeats, **_summary(new_runs)}
        line = (
            f"{pattern:<8} {method:<7} {row['cold_s']:>7.2f} {row['second_s']:>6.2f} {row['cache_warm_s']:>12.2f} "
            f"{row['steady_s'] * 1000:>10.1f}"
        )
        if baseline:
            old = _summary(old_runs)
            row["baseline"] = old
            ratio = row["steady_s"] / old["steady_s"]  # type: ignore[operator]
            line += (
                f" | {old['cold_s']:>10.2f} {old['cache_warm_s']:>10.2f} {old['steady_s'] * 1000:>13.1f} {ratio:>12.2f}"
            )
        rows.append(row)
        print(line + f" {row['import_s']:>8.2f} {row['load']:>5.1f}", flush=True)
    path = write_result(
        "cold_start" + ("_smoke" if args.smoke else ""),
        {"environment": env, "baseline": baseline, "rows": rows},
        args.out,
    )
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
