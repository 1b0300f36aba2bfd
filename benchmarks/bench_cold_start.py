"""The first mask of a fresh machine: cold (empty numba cache, fresh process), cache-warm (fresh process, cache
filled by the cold one) and steady (later calls in one process) times of ``find_mask`` for the README's patterns.

    python benchmarks/bench_cold_start.py            # every README pattern, 3 fresh processes each
    python benchmarks/bench_cold_start.py --smoke    # 4:8-T exact and greedy, one process each
    python benchmarks/bench_cold_start.py --smoke --out /tmp/results   # result JSON only there

Every measurement runs in its own Python process (``sys.executable``) with ``NUMBA_CACHE_DIR`` pointing to a
fresh temporary folder, so the compile (or cache load) of numba's kernels is what the first call pays; the import
of torch and nmsparse is timed apart. Weight: the README's ``torch.randn(512, 1024)``.
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
CASES = [("2:4", "auto"), ("2:4-T", "auto"), ("4:8-T", "auto"), ("8:16-T", "auto"), ("2:4-T", "greedy"),
         ("4:8-T", "greedy")]
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
try:  # steady means compiled: a greedy first call compiles on a background thread (torch meanwhile)
    from nmsparse.solvers.greedy_cpu import wait_compiled
except ImportError:  # nmsparse before issue 16
    wait_compiled = None
if wait_compiled is not None:
    wait_compiled()
steady = []
for _ in range(steady_repeats):
    start = time.perf_counter()
    nmsparse.find_mask(w, pattern, method=method)
    steady.append(time.perf_counter() - start)
print(json.dumps({"import_s": imported, "first_s": first, "steady_s": statistics.median(steady) if steady else None}))
"""


def _child(pattern: str, method: str, cache: str, steady_repeats: int) -> dict[str, float]:
    env = {**os.environ, "NUMBA_CACHE_DIR": cache}
    result = subprocess.run([sys.executable, "-c", _CHILD, pattern, method, str(steady_repeats)], env=env,
                            capture_output=True, text=True, check=False, timeout=600)
    if result.returncode != 0:
        raise RuntimeError(f"{pattern} {method}: child failed:\n{result.stderr[-2000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="4:8-T exact and greedy, one process each")
    parser.add_argument("--repeats", type=int, default=3, help="fresh cold/warm process pairs per case")
    parser.add_argument("--steady", type=int, default=20, help="calls timed after the first (median)")
    parser.add_argument("--cases", nargs="+", default=None, metavar="PATTERN:METHOD",
                        help="cases to run, e.g. 4:8-T:auto 4:8-T:greedy (default: every README pattern)")
    add_out_argument(parser)
    args = parser.parse_args(argv)
    cases = SMOKE_CASES if args.smoke else CASES
    if args.cases:
        cases = [tuple(case.rsplit(":", 1)) for case in args.cases]  # type: ignore[misc]
    repeats = 1 if args.smoke else args.repeats
    steady_repeats = 3 if args.smoke else args.steady
    env = environment()
    print_environment(env)
    rows = []
    print(f"{'pattern':<8} {'method':<7} {'cold s':>7} {'cache-warm s':>13} {'steady ms':>10} {'import s':>9}")
    for pattern, method in cases:
        cold, warm, steady, imports = [], [], [], []
        for _ in range(repeats):
            with tempfile.TemporaryDirectory(prefix="nmsparse-numba-cache-") as cache:
                first = _child(pattern, method, cache, 0)
                second = _child(pattern, method, cache, steady_repeats)
            cold.append(first["first_s"])
            warm.append(second["first_s"])
            steady.append(second["steady_s"])
            imports.append(first["import_s"])
        row = {"pattern": pattern, "method": method, "cold_s": statistics.median(cold),
               "cache_warm_s": statistics.median(warm), "steady_s": statistics.median(steady),
               "import_s": statistics.median(imports), "cold_all_s": cold, "repeats": repeats}
        rows.append(row)
        print(f"{pattern:<8} {method:<7} {row['cold_s']:>7.2f} {row['cache_warm_s']:>13.2f} "
              f"{row['steady_s'] * 1000:>10.1f} {row['import_s']:>9.2f}", flush=True)
    path = write_result("cold_start" + ("_smoke" if args.smoke else ""), {"environment": env, "rows": rows},
                        args.out)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
