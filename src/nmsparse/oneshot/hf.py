"""Deprecated alias of :mod:`nmsparse.hf`, kept for one release (Hugging Face I/O is not the calibration engine)."""

import warnings

from ..hf import *  # noqa: F403
from ..hf import __all__  # noqa: F401

warnings.warn("nmsparse.oneshot.hf moved to nmsparse.hf; import it from there", DeprecationWarning, stacklevel=2)
