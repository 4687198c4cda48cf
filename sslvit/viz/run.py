"""All pictures of one checkpoint: load the encoder (and the MAE objective if any), pick images, plot."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from sslvit.viz import analysis, plots


def load_objective(path: str | Path, mean: list[float], std: list[float]) -> nn.Module:
    """Rebuild a full objective (encoder + decoder) from an ``objective.safetensors``, strictly."""
    from sslvit.checkpoint import read_metadata, read_state_dict
    from sslvit.config import ObjectiveConfig, from_dict
    from sslvit.hub.export import load_strict
    from sslvit.models import build_model
    from sslvit.objectives import build_objective

    meta = read_metadata(path)
    if meta.get("kind") != "objective" or not isinstance(meta.get("objective"), dict):
        raise ValueError(
            f"{path} is not an sslvit objective checkpoint (metadata sslvit.kind != 'objective')"
        )
    cfg = from_dict(meta["objective"], cls=ObjectiveConfig)
    objective = build_objective(cfg, build_model(meta["model"]), mean, std)
    state, _ = read_state_dict(path)
    load_strict(objective, state, str(path))
    return objective.eval()


def load_images(
    data: str | None, image_size: int, count: int, digits_image_size: int | None = None, seed: int = 0
) -> torch.Tensor:
    """``count`` images of the shards ``data`` (default: the digits val split) -> uint8 (N, 3, S, S)."""
    from sslvit.data import build_loader, ensure_digits_shards, eval_transform

    if not data:
        data = str(ensure_digits_shards(image_size=digits_image_size or image_size)["val"])
    loader = build_loader(
        data,
        batch_size=count,
        transform=eval_transform(image_size, crop_pct=1.0),
        num_workers=0,
        mode="finite",
        seed=seed,
        shuffle=False,
        rank=0,
        world_size=1,
    )
    images = []
    for batch in loader:
        images.append(batch["image"][batch["valid"]] if "valid" in batch else batch["image"])
        if sum(len(b) for b in images) >= count:
            break
    if not images:
        raise ValueError(f"no images could be read from {data}")
    return torch.cat(images)[:count]


def visualize(
    checkpoint: str | Path,
    out_dir: str | Path,
    *,
    data: str | None = None,
    objective: str | Path | None = None,
    images: torch.Tensor | None = None,
    num_images: int = 64,
    num_show: int = 8,
    seed: int = 0,
) -> dict[str, Path]:
    """Write every figure for ``checkpoint`` into ``out_dir``; returns figure name -> PNG path.

    ``images`` (uint8 (N, 3, H, W) at the model's input size) replace loading ``num_images`` from
    ``data``. Mean attention distances use all of them; rollout and reconstructions the first
    ``num_show``. Reconstructions need an MAE objective: ``objective``, or ``objective.safetensors``
    next to the checkpoint, or the checkpoint itself when it is one.
    """
    from sslvit.checkpoint import load_checkpoint, read_metadata
    from sslvit.data.transforms import normalize
    from sslvit.hub.export import normalization

    checkpoint, out = Path(checkpoint), Path(out_dir)
    meta = read_metadata(checkpoint)
    model = load_checkpoint(checkpoint).eval()
    mean, std, _ = normalization(meta)
    grid, patch = tuple(model.patch_embed.grid_size), int(model.patch_embed.patch_size)
    size, prefix = grid[0] * patch, model.num_prefix_tokens
    if images is None:
        digits_size = ((meta.get("config") or {}).get("data") or {}).get("digits_image_size")
        images = load_images(data, size, num_images, digits_size, seed)
    x = normalize(images, mean, std)
    show = min(num_show, len(images))
    total: torch.Tensor | float = 0.0
    first_maps: list[torch.Tensor] = []
    for chunk in x.split(max(16, show)):  # bounded memory: (chunk, heads, T, T) per block at a time
        maps = analysis.attention_maps(model, chunk)
        total = total + analysis.attention_distances(maps, grid, patch, prefix) * len(chunk)
        first_maps = first_maps or [m[:show] for m in maps]
    figures = {"attention_distance": plots.plot_attention_distance(total / len(x), out, size, patch, len(x))}
    _, patch_pos = model.get_pos_embed()
    if patch_pos is not None:
        sim = analysis.pos_embed_similarity(patch_pos.detach(), grid)
        figures["pos_embed_similarity"] = plots.plot_pos_embed_similarity(sim, out)
    comps, explained = analysis.patch_embed_components(model.patch_embed.proj.weight, k=28)
    figures["patch_embed_pcs"] = plots.plot_patch_embed_pcs(comps, explained, out)
    rollout = analysis.rollout_maps(analysis.attention_rollout(first_maps), grid, prefix)
    query = "class token" if prefix else "mean patch"
    shown = images[:show].float() / 255 if images.dtype == torch.uint8 else images[:show].float()
    figures["attention_rollout"] = plots.plot_rollout(shown, rollout, out, query)
    if objective is None and meta.get("kind") == "objective":
        objective = checkpoint
    if objective is None and (checkpoint.parent / "objective.safetensors").is_file():
        objective = checkpoint.parent / "objective.safetensors"
    if objective is not None:
        obj = load_objective(objective, mean, std)
        if hasattr(obj, "reconstruct") and obj.masker is not None:
            mask = obj.masker(show, torch.Generator().manual_seed(seed))["mask"]
            rec = obj.reconstruct(images[:show], mask)
            figures["mae_reconstructions"] = plots.plot_reconstructions(rec, out, float(obj.mask_ratio))
    return figures
