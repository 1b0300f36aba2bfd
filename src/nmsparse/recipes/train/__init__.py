"""Training workflow on top of the model-mask API: data, models, the trainer, checkpoints, comparisons, DDP.

Needs the ``train`` extra (scikit-learn for the built-in digits, matplotlib for plots, PyYAML for configs).
"""

from __future__ import annotations

from .compare import DEFAULT_STRUCTURES, CompareResult, compare_structures
from .config import CONFIG_VERSION, UNSTRUCTURED, TrainConfig, list_recipes, load_config, recipe_path
from .data import DataBundle, build_data
from .distributed import DistContext, check_masks_identical, init_distributed, mask_checksum
from .models import build_model, list_models
from .rundir import Checkpoint, RunDir
from .summary import RunSummary, TrainerResult
from .trainer import RunResult, Trainer, learning_rate, resume_config, run_training
from .unstructured import UnstructuredSparsifier, magnitude_mask

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
