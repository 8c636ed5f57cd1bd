"""Shared test fixtures: deterministic seeds, thread limits and the real-data directory."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]


def pytest_configure(config):
    # Tests use small tensors: one intra-op thread is fastest and does not oversubscribe the
    # cores when pytest-xdist workers or subprocesses run side by side.
    torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield


def real_data_dir() -> Path:
    """The shared real data (EIM_DATA_DIR, default ../shared/data); skips the calling test if
    missing, except under CI=true, where a missing data directory fails it."""
    path = Path(os.environ.get("EIM_DATA_DIR", REPO.parent / "shared" / "data"))
    if not path.is_dir():
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"real data directory {path} is missing (set EIM_DATA_DIR)")
        pytest.skip(f"real data directory {path} is missing (set EIM_DATA_DIR)")
    return path


@pytest.fixture
def data_dir() -> Path:
    """The shared real data directory (see :func:`real_data_dir`)."""
    return real_data_dir()


def quiet_trainer(root, **kwargs):
    """A quiet CPU Trainer for tests (no logger, checkpoints, bar or sanity check unless asked)."""
    import lightning as L

    defaults = dict(
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=root,
        num_sanity_val_steps=0,
    )
    defaults.update(kwargs)
    return L.Trainer(**defaults)


@pytest.fixture
def make_trainer(tmp_path):
    """A factory of :func:`quiet_trainer` in the test's temporary directory."""
    return lambda **kwargs: quiet_trainer(tmp_path, **kwargs)
