"""Tiny objectives and batches for the objective tests (16 px images, 4 px patches: a 4x4 grid)."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch

from sslvit.models import create_model
from sslvit.objectives import Objective, build_objective, objective_config

MEAN, STD = (0.5, 0.4, 0.3), (0.25, 0.2, 0.3)
TINY_DECODER = dict(decoder_depth=1, decoder_dim=16, decoder_heads=2)


def tiny_objective(name: str, encoder_kwargs: dict | None = None, **cfg_kwargs) -> Objective:
    """An objective over vit_pico_patch4 at 16 px (16 patches)."""
    torch.manual_seed(0)
    if name == "mae":
        cfg_kwargs = {**TINY_DECODER, **cfg_kwargs}
    if name == "simmim":
        cfg_kwargs.setdefault("mask_patch_size", 8)
    if name == "supervised":
        cfg_kwargs.setdefault("num_classes", 5)
    if name == "data2vec2":  # the pico ViT has 2 blocks
        cfg_kwargs = {"top_k": 2, "num_masks": 2, "decoder_dim": 32, "decoder_layers": 1, **cfg_kwargs}
    encoder = create_model("vit_pico_patch4", img_size=16, **(encoder_kwargs or {}))
    return build_objective(objective_config(name, **cfg_kwargs), encoder, MEAN, STD)


def tiny_batch(objective: Objective, n: int = 4, seed: int = 0) -> dict[str, torch.Tensor]:
    """uint8 images, labels, all-valid flags and the objective's masks from a seeded generator."""
    g = torch.Generator().manual_seed(seed)
    batch = {
        "image": torch.randint(0, 256, (n, 3, 16, 16), generator=g, dtype=torch.uint8),
        "label": torch.arange(n) % 5,
        "valid": torch.ones(n, dtype=torch.bool),
    }
    if objective.masker is not None:
        batch.update(objective.masker(n, g))
    return batch


@pytest.fixture
def make_objective() -> Callable[..., Objective]:
    return tiny_objective


@pytest.fixture
def make_batch() -> Callable[..., dict[str, torch.Tensor]]:
    return tiny_batch
