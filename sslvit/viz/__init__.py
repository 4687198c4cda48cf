"""Pictures of a trained ViT, after figure 7 of the ViT paper, plus MAE reconstructions and attention rollout.

    from sslvit.viz import visualize
    visualize("runs/NAME/model.safetensors", "runs/NAME/figures")

writes ``attention_distance``, ``pos_embed_similarity``, ``patch_embed_pcs``, ``attention_rollout`` and
(with an MAE objective checkpoint) ``mae_reconstructions``, each as ``.png`` and ``.json``. The tensor
functions behind them live in :mod:`sslvit.viz.analysis`.
"""

from __future__ import annotations

from sslvit.viz.analysis import (
    attention_distances,
    attention_rollout,
    mean_attention_distance,
    patch_centers,
    patch_embed_components,
    pos_embed_similarity,
    rollout_maps,
)
from sslvit.viz.run import load_objective, visualize

__all__ = [
    "attention_distances",
    "attention_rollout",
    "load_objective",
    "mean_attention_distance",
    "patch_centers",
    "patch_embed_components",
    "pos_embed_similarity",
    "rollout_maps",
    "visualize",
]
