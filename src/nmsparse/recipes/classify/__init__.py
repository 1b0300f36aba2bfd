"""The image-classification recipe (``nmsparse train classify``, ``nmsparse compare classify``): data, models, the
epoch loop, comparisons.

It plugs into the run loop both recipes share (:mod:`nmsparse.recipes._run`: device, seeds, schedules, the run
directory with resume, ``--accelerate``, summaries; :mod:`nmsparse.recipes.rundir`, :mod:`nmsparse.recipes.plots`,
:mod:`nmsparse.recipes.distributed`). Needs the ``train`` extra (scikit-learn for the built-in digits, matplotlib
for plots, PyYAML for configs).
"""

from __future__ import annotations

from ..distributed import DistContext, check_masks_identical, init_distributed, mask_checksum
from ..rundir import Checkpoint, RunDir
from ..unstructured import UnstructuredSparsifier, magnitude_mask
from .compare import DEFAULT_STRUCTURES, CompareResult, compare_structures
from .config import CONFIG_VERSION, UNSTRUCTURED, TrainConfig, list_recipes, load_config, recipe_path
from .data import DataBundle, build_data
from .models import build_model, list_models
from .summary import RunSummary, TrainerResult
from .trainer import RunResult, Trainer, learning_rate, resume_config, run_training

__all__ = [
    "TrainConfig",
    "CONFIG_VERSION",
    "UNSTRUCTURED",
    "load_config",
    "list_recipes",
    "recipe_path",
    "DataBundle",
    "build_data",
    "build_model",
    "list_models",
    "Trainer",
    "RunResult",
    "TrainerResult",
    "RunSummary",
    "RunDir",
    "Checkpoint",
    "run_training",
    "resume_config",
    "learning_rate",
    "DistContext",
    "init_distributed",
    "mask_checksum",
    "check_masks_identical",
    "UnstructuredSparsifier",
    "magnitude_mask",
    "compare_structures",
    "CompareResult",
    "DEFAULT_STRUCTURES",
]
