"""Shared fixtures: offline hub, the demo data beside the repo, a tiny I2VGen-XL saved to disk once."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO.parent / "shared" / "data" / "demo"


@pytest.fixture(scope="session")
def demo() -> Path:
    if not DEMO.is_dir():
        pytest.fail(f"demo data not found at {DEMO}; the repo must sit beside shared/")
    return DEMO


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    """A tiny random I2VGen-XL in diffusers layout, loaded by tests through the real loader."""
    from anyv2v.tiny import make_tiny_model

    return make_tiny_model(tmp_path_factory.mktemp("models") / "tiny-i2vgen-xl")
