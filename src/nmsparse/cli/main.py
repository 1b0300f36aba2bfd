"""Entry point of the ``nmsparse`` command: parses, dispatches to one command module, turns errors into exit 2.

Each command lives in its own module ``nmsparse.cli.<name>`` with ``add_parser(subparsers)`` and
``run(args) -> int``; the modules hold no library logic, only argument handling and printing.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from collections.abc import Sequence

from .._version import __version__
from ..errors import NMSparseError

#: Command modules, in the order ``nmsparse --help`` lists them.
COMMANDS = ("train", "compare", "mask", "export", "diversity", "demo", "adaprune", "oneshot", "info")

#: Commands that run data-parallel under ``torchrun`` (every other one would run once per process, all writing
#: the same files, so it refuses). ``train`` runs DDP (``--task classify``) or FSDP2 / DDP (``--task lm``).
DATA_PARALLEL_COMMANDS = frozenset({"train"})


def torchrun_world_size() -> int:
    """``WORLD_SIZE`` as ``torchrun`` sets it (1 when unset or unreadable)."""
    try:
        return int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        return 1


def refuse_data_parallel(what: str) -> None:
    """Raise :class:`CLIError` when started by ``torchrun`` with more than one process.

    Args:
        what: the command as the user typed it (``"nmsparse compare"``), for the message.
    """
    world_size = torchrun_world_size()
    if world_size > 1:
        raise CLIError(
            f"{what} runs in one process, but WORLD_SIZE={world_size} (torchrun): every process would "
            f"write the same files; run it without torchrun (data-parallel runs: nmsparse train)"
        )


class CLIError(NMSparseError):
    """A bad command-line input (missing file, bad option combination)."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="nmsparse", description="N:M and transposable N:M sparsity for PyTorch.")
    parser.add_argument("--version", action="version", version=f"nmsparse {__version__}")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks and debug logging")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        module = importlib.import_module(f"{__package__}.{name}")
        sub = module.add_parser(subparsers)
        sub.add_argument(
            "--debug", action="store_true", default=argparse.SUPPRESS, help="show full tracebacks and debug logging"
        )
        sub.set_defaults(_run=module.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI with ``argv`` (default: ``sys.argv[1:]``) and return the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    debug = bool(getattr(args, "debug", False))
    logging.basicConfig(level=logging.DEBUG if debug else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if getattr(args, "_run", None) is None:
        parser.print_help()
        return 2
    try:
        if args.command not in DATA_PARALLEL_COMMANDS:
            refuse_data_parallel(f"nmsparse {args.command}")
        return int(args._run(args) or 0)
    except KeyboardInterrupt:
        print("nmsparse: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # output piped into `head` and closed early: not an error of the command
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except (NMSparseError, OSError) as exc:  # the library's own errors and file errors; bugs keep their traceback
        if debug:
            raise
        message = " ".join(str(exc).split()) or type(exc).__name__
        print(f"nmsparse {args.command}: error: {message}", file=sys.stderr)
        return 2
