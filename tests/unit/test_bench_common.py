"""benchmarks/common.py writes results only where told, atomically, with normal file modes."""

from __future__ import annotations

import importlib.util
import json
import os
import stat
from pathlib import Path

COMMON = Path(__file__).resolve().parents[2] / "benchmarks" / "common.py"


def _common():
    spec = importlib.util.spec_from_file_location("bench_common", COMMON)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_write_result_goes_to_the_given_folder_only(tmp_path: Path) -> None:
    common = _common()
    before = sorted(common.RESULTS.glob("*")) if common.RESULTS.exists() else []
    old_umask = os.umask(0o022)
    try:
        path = common.write_result("unit", {"rows": [1, 2]}, tmp_path / "out")
    finally:
        os.umask(old_umask)
    assert path == tmp_path / "out" / "unit.json"
    assert json.loads(path.read_text()) == {"rows": [1, 2]}
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert sorted(p.name for p in path.parent.iterdir()) == ["unit.json"]  # no temporary left
    assert (sorted(common.RESULTS.glob("*")) if common.RESULTS.exists() else []) == before


def test_out_argument_defaults_to_the_results_folder() -> None:
    import argparse

    common = _common()
    parser = argparse.ArgumentParser()
    common.add_out_argument(parser)
    assert parser.parse_args([]).out is None
    assert parser.parse_args(["--out", "x"]).out == Path("x")
