"""``nmsparse adaprune ARGS``: an alias of ``nmsparse oneshot --algorithm adaprune ARGS`` (kept for one release).

Same flags, same model sources and the same run (:mod:`nmsparse.cli.oneshot`); the report is written to
``adaprune.json``. ``--calibration-size`` is the former spelling of ``--calibration-samples``.
"""

from __future__ import annotations

import argparse

from . import oneshot


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "adaprune",
        help="alias of 'nmsparse oneshot --algorithm adaprune' (AdaPrune: masks, then every layer "
        "fitted to the dense model's output)",
        description="Alias of 'nmsparse oneshot --algorithm adaprune' (same flags and model sources; the report "
        "is adaprune.json): masks with absorb-mean, then every layer's kept weights fitted to the dense "
        "model's output on a small calibration set, then batch-norm statistics re-estimated.",
    )
    oneshot.add_arguments(parser, algorithm="adaprune")
    parser.set_defaults(report_file="adaprune.json")
    return parser


run = oneshot.run
