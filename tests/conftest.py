"""Shared fixtures: offline hub, the demo data beside the repo, a tiny I2VGen-XL saved to disk once, and the
kitten clip inverted with it (at the `STEPS` of the test module asking)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
# One torch/OpenMP thread, here and in every server or CLI process a test starts (they inherit it): the tests'
# models are tiny, all overhead and no arithmetic, and with several threads on a small, busy machine they spin at
# barriers (a CLI bench test: 21 s with the default threads on 2 busy cores, 9 s with one). A caller's own setting
# wins.
os.environ.setdefault("OMP_NUM_THREADS", "1")

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


@pytest.fixture(scope="session")
def tiny_backbone_env(tmp_path_factory) -> dict[str, str]:
    """Tiny random SEINE and ConsistI2V folders (the real writers), made once per session, as the app's env vars."""
    from anyv2v.backbones import backbone_class

    root = tmp_path_factory.mktemp("backbone-models")
    env = {}
    for name in ("seine", "consisti2v"):
        cls = backbone_class(name)
        cls.make_random_model(str(root / f"tiny-{name}"))
        env[cls.model_env] = str(root / f"tiny-{name}")
    return env


@pytest.fixture(scope="session")
def backbone(tiny_model):
    from anyv2v.pipeline import BACKBONES

    return BACKBONES.get(str(tiny_model))


@pytest.fixture(scope="module")
def kitten(request, tiny_model, demo, tmp_path_factory):
    """The prepared kitten clip, its edited frame and its inversion at the module's STEPS (sampling tests)."""
    from collections import Counter

    from anyv2v.cache import InversionCache
    from anyv2v.pipeline import BACKBONES, get_inversion, prepare_clip, prepare_edit_image

    from .engine_helpers import small_config

    config = small_config(tiny_model, tmp_path_factory.mktemp("cache"), request.module.STEPS)
    clip = prepare_clip(demo / "kitten.mp4", config)
    edited, _ = prepare_edit_image(demo / "edited" / "kitten__dog.png", clip, config)
    inversion, _ = get_inversion(BACKBONES.get(str(tiny_model)), clip, config, InversionCache(config.cache_dir, 2**30), Counter())
    return config, clip, edited, inversion


@pytest.fixture(scope="module")
def single_thread_editor_models():
    """For editor test modules: one torch thread, and no tiny model kept alive into other modules.

    Tiny models are all overhead and no arithmetic: with several OpenMP threads on a small, busy CI machine
    they spend most of their time spinning at barriers (measured 100x slower).
    """
    import torch

    from editors.base import MODEL_CACHE

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
    MODEL_CACHE.clear()
