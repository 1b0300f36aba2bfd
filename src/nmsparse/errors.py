"""Exception hierarchy of nmsparse.

Every error mixes in the matching built-in, so ``except ValueError`` keeps working, and every message says
where the problem is, what was expected, what was found and how to fix it.
"""

from __future__ import annotations

__all__ = [
    "NMSparseError",
    "PatternError",
    "ShapeError",
    "InputError",
    "ConfigError",
    "MaskMismatchError",
    "BackendUnavailableError",
    "OverwriteError",
    "CheckpointError",
    "SolverError",
]


class NMSparseError(Exception):
    """Base class of every error raised on purpose by nmsparse."""


class PatternError(NMSparseError, ValueError):
    """A pattern string or object that nmsparse cannot parse or does not support."""


class ShapeError(NMSparseError, ValueError):
    """A tensor whose shape cannot take the requested pattern (rank, empty, size not a multiple of m)."""


class InputError(NMSparseError, ValueError):
    """A tensor or file with bad content: non-finite values, wrong dtype, corrupt or missing file."""


class ConfigError(NMSparseError, ValueError):
    """An invalid option value (method name, count, range)."""


class MaskMismatchError(NMSparseError, ValueError):
    """Masks that do not fit the model or tensors they are applied to."""


class BackendUnavailableError(NMSparseError, RuntimeError):
    """A requested backend or piece of hardware is not available here."""


class OverwriteError(NMSparseError, FileExistsError):
    """A command or function would replace a file it did not create; pass ``overwrite=True`` / ``--overwrite``."""


class CheckpointError(InputError):
    """A checkpoint or run directory that is incomplete, inconsistent or from another run."""


class SolverError(NMSparseError, RuntimeError):
    """A registered mask solver returned a result that breaks the solver contract (a bug in that solver)."""
