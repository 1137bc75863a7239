"""Shared fixtures: the ../shared test data and a single torch thread."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

torch.set_num_threads(1)

ROOT = Path(__file__).resolve().parent.parent


def shared_dir() -> Path:
    """The shared test data folder: env ``XPORTRAIT_SHARED``, default ``../shared`` beside the project."""
    return Path(os.environ.get("XPORTRAIT_SHARED", ROOT.parent / "shared")).resolve()


@pytest.fixture(scope="session")
def shared() -> Path:
    """Path to the shared test data; skips the test with a clear reason when it is absent."""
    path = shared_dir()
    if not (path / "golden").is_dir():
        pytest.skip(f"shared test data not found at {path} (set XPORTRAIT_SHARED to its folder)")
    return path


@pytest.fixture(scope="session")
def golden(shared: Path) -> Path:
    return shared / "golden"


@pytest.fixture(scope="session")
def media(shared: Path) -> Path:
    return shared / "media"
