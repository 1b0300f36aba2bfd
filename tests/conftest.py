"""Shared pytest set-up: every test starts from the same random state, so failures reproduce."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch


@pytest.fixture(autouse=True)
def _seed_everything() -> None:
    """Seed Python's, NumPy's and torch's global generators before each test."""
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)
