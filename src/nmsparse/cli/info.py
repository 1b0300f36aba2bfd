"""``nmsparse info``: versions and available backends."""

from __future__ import annotations

import argparse
import importlib.util
import platform

import torch

from .._version import __version__
from ..solvers import list_methods, list_solvers
from ._table import format_table


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    return subparsers.add_parser(
        "info",
        help="print versions and available backends",
        description="Print versions, devices and available mask backends.",
    )


def _version(module: str) -> str:
    if importlib.util.find_spec(module) is None:
        return "not installed"
    try:
        from importlib.metadata import version

        return version(module)
    except Exception:  # noqa: BLE001 - a package without metadata still counts as installed
        return "installed"


def run(args: argparse.Namespace) -> int:
    print(f"nmsparse   {__version__}")
    print(f"python     {platform.python_version()} ({platform.machine()}, {platform.system()})")
    print(f"torch      {torch.__version__} (threads: {torch.get_num_threads()})")
    for name in ("numpy", "numba", "safetensors", "triton", "scipy", "networkx"):
        print(f"{name:<10} {_version(name)}")
    print("\nbackends:")
    print(
        "  cpu        yes (torch; compiled numba kernels for exact and greedy transposable masks)"
        if importlib.util.find_spec("numba")
        else "  cpu        yes (torch only: numba missing, exact m>=8 is slow)"
    )
    if torch.cuda.is_available():
        name = torch.cuda.get_device_name(0)
        major, minor = torch.cuda.get_device_capability(0)
        print(f"  cuda       yes: {torch.cuda.device_count()} device(s), {name}, capability {major}.{minor}")
        cusparselt = getattr(torch.backends, "cusparselt", None)
        has_lt = bool(cusparselt and cusparselt.is_available())
        print(f"  cusparselt {'yes' if has_lt else 'no'}")
    else:
        print("  cuda       no")
    print(f"\nmask methods: {', '.join(list_methods())}")
    rows = []
    for spec in list_solvers():
        kinds = "/".join(k for k, on in (("plain", spec.plain), ("-T", spec.transposable)) if on)
        rows.append(
            [
                spec.label,
                kinds,
                "any" if spec.ms is None else ",".join(map(str, sorted(spec.ms))),
                "any" if spec.devices is None else ",".join(sorted(spec.devices)),
                "exact" if spec.exact else "approx",
                "yes" if spec.is_available() else "no",
                spec.priority,
            ]
        )
    print("solvers (find_mask(method=..., backend=...); backend='auto' takes the highest priority that can run):")
    print(
        format_table(
            ["method/backend", "patterns", "m", "devices", "optimal", "available", "priority"], rows, align="lllllrr"
        )
    )
    return 0
