"""Shared fixtures of the evaluator tests: tiny checkpoints and the digits corpus (one CPU thread per
test comes from tests/conftest.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from sslvit.checkpoint import save_model
from sslvit.models import create_model


@pytest.fixture
def pico_checkpoint(tmp_path: Path) -> Path:
    """A randomly initialised vit_pico_patch4 (32 px, width 32, depth 2) saved as an sslvit encoder."""
    torch.manual_seed(0)
    model = create_model("vit_pico_patch4")
    return save_model(model, tmp_path / "ckpt" / "model.safetensors", model.get_config())


@pytest.fixture(scope="session")
def digits(tmp_path_factory) -> dict[str, str]:
    """The built-in digits corpus (32 px), built once per test session: split -> shard directory."""
    from sslvit.data import ensure_digits_shards

    paths = ensure_digits_shards(tmp_path_factory.mktemp("digits") / "digits", image_size=32)
    return {split: str(path) for split, path in paths.items()}
