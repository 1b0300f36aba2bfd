"""CPU threads and progress bars of every long command: one default that does not oversubscribe, set once."""

from __future__ import annotations

import argparse
import os

from ..errors import ConfigError

#: Models small enough that one CPU thread is fastest (see ``TrainConfig.threads``).
SMALL_MODELS = ("cnn", "mlp")
#: Thread cap of the default: more threads than this only add synchronisation on shared machines.
MAX_DEFAULT_THREADS = 4


def usable_cores() -> int:
    """Cores this process may run on (its CPU affinity), else ``os.cpu_count()``."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def default_threads(model: str | None = None) -> int:
    """Thread default that does not oversubscribe: 1 for the small models, else ``min(usable cores, 4)``."""
    if model in SMALL_MODELS:
        return 1
    return max(1, min(usable_cores(), MAX_DEFAULT_THREADS))


def configure_runtime(threads: int | None, model: str | None = None) -> int:
    """Apply the command's CPU thread count to torch and numba; returns the torch thread count.

    ``threads=None`` uses :func:`default_threads`. numba's default OpenMP threading layer (used by the compiled
    mask solvers) shares the OpenMP runtime with torch: a solver call resets torch's thread count and leaves
    worker threads that compete with torch's (a dynamic-sparse epoch of the digits CNN took 7x longer on a busy
    2-core machine). The ``workqueue`` layer has neither effect; a ``NUMBA_THREADING_LAYER`` set by the user is
    respected. numba's thread count is set to match torch's. Only effective before the first solver call, hence
    done first thing. The library itself never changes these global settings.
    """
    import torch

    if threads is not None and threads < 1:
        raise ConfigError(f"--threads must be >= 1, got {threads}")
    os.environ.setdefault("NUMBA_THREADING_LAYER", "workqueue")
    count = default_threads(model) if threads is None else threads
    torch.set_num_threads(count)
    try:
        import numba
    except ImportError:
        pass
    else:
        numba.set_num_threads(max(1, min(count, int(getattr(numba.config, "NUMBA_NUM_THREADS", count)))))
        torch.set_num_threads(count)  # starting numba's threading layer can reset torch's count
    return torch.get_num_threads()


def add_runtime_arguments(parser: argparse.ArgumentParser) -> None:
    """``--threads N`` and ``--progress/--no-progress``, for commands that have no config dataclass of their own."""
    parser.add_argument(
        "--threads", type=int, default=None, metavar="N", help="CPU threads of torch and numba (default: min(cores, 4))"
    )
    parser.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="progress bars (default: when stderr is a terminal)",
    )
