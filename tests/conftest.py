"""Shared fixtures.  Nothing here queries a GPU at import time."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("DENDRITIC_DATA_DIR", str(REPO.parent / "shared" / "data"))


@pytest.fixture
def cuda_device():
    """A CUDA device, or skip: GPU tests are marked ``gpu`` and skip through this fixture."""
    if not torch.cuda.is_available():
        pytest.skip("no CUDA GPU on this machine")
    return torch.device("cuda")


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
