"""All pictures of one checkpoint: load the encoder (and the MAE objective if any), pick images, plot."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from sslvit.checkpoint import (
    load_checkpoint,
    load_strict,
    model_from_metadata,
    read_metadata,
    read_state_dict,
)
from sslvit.config import from_dict
from sslvit.data import build_loader, ensure_digits_shards, eval_transform
from sslvit.data.stats import normalization
from sslvit.data.transforms import normalize
from sslvit.files import OBJECTIVE_FILE
from sslvit.objectives import build_objective, config_class
from sslvit.viz import analysis, plots


def load_objective(path: str | Path, mean: list[float], std: list[float]) -> nn.Module:
    """Rebuild a full objective (encoder + decoder) from an ``objective.safetensors``, strictly."""
    meta = read_metadata(path)
    if meta.get("kind") != "objective" or not isinstance(meta.get("objective"), dict):
        raise ValueError(
            f"{path} is not an sslvit objective checkpoint (metadata sslvit.kind != 'objective')"
        )
    cfg = from_dict(meta["objective"], cls=config_class(meta["objective"].get("name", "")))
    objective = build_objective(cfg, model_from_metadata(path, meta.get("model")), mean, std)
    state, _ = read_state_dict(path)
    load_strict(objective, state, str(path))
    return objective.eval()


def load_images(
    data: str | None, image_size: int, count: int, digits_image_size: int | None = None, seed: int = 0
) -> torch.Tensor:
    """``count`` images of the shards ``data`` (default: the digits val split) -> uint8 (N, 3, S, S)."""
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


def _attention_figures(model: nn.Module, images: torch.Tensor, x: torch.Tensor, show: int, out: Path) -> dict[str, Path]:
    """Mean attention distance over all of ``x`` (normalised (N, 3, H, W)) and the rollout of the first
    ``show`` images (``images``: the same, unnormalised, for display)."""
    grid, patch, prefix = tuple(model.patch_grid), int(model.patch_size), model.num_prefix_tokens
    total: torch.Tensor | float = 0.0
    first_maps: list[torch.Tensor] = []
    for chunk in x.split(max(16, show)):  # bounded memory: (chunk, heads, T, T) per block at a time
        maps = analysis.attention_maps(model, chunk)
        total = total + analysis.attention_distances(maps, grid, patch, prefix) * len(chunk)
        first_maps = first_maps or [m[:show] for m in maps]
    size = int(model.img_size[0])
    figures = {"attention_distance": plots.plot_attention_distance(total / len(x), out, size, patch, len(x))}
    rollout = analysis.rollout_maps(analysis.attention_rollout(first_maps), grid, prefix)
    query = "class token" if prefix else "mean patch"
    shown = images[:show].float() / 255 if images.dtype == torch.uint8 else images[:show].float()
    figures["attention_rollout"] = plots.plot_rollout(shown, rollout, out, query)
    return figures


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
    skipped: dict[str, str] | None = None,
) -> dict[str, Path]:
    """Write every figure that applies to ``checkpoint`` into ``out_dir``; returns figure name -> PNG.

    ``images`` (uint8 (N, 3, H, W) at the model's input size) replace loading ``num_images`` from
    ``data``. Mean attention distances use all of them; rollout and reconstructions the first
    ``num_show``. Reconstructions need an objective with a ``reconstruct`` method (MAE):
    ``objective``, or ``objective.safetensors`` next to the checkpoint, or the checkpoint itself
    when it is one. A figure that does not apply to the encoder (attention maps of a backbone
    without full attention, a position table it does not have) is left out and its one-line reason
    put in ``skipped`` (figure name -> reason) when given.
    """
    skipped = {} if skipped is None else skipped
    checkpoint, out = Path(checkpoint), Path(out_dir)
    meta = read_metadata(checkpoint)
    model = load_checkpoint(checkpoint).eval()
    mean, std, _ = normalization(meta)
    grid, size = tuple(model.patch_grid), int(model.img_size[0])
    if images is None:
        digits_size = ((meta.get("config") or {}).get("data") or {}).get("digits_image_size")
        images = load_images(data, size, num_images, digits_size, seed)
    x = normalize(images, mean, std)
    show = min(num_show, len(images))
    figures: dict[str, Path] = {}
    if "attention_maps" in model.supports:
        figures.update(_attention_figures(model, images, x, show, out))
    else:
        reason = model.lacks.get("attention_maps", "no attention maps")
        skipped["attention_distance"] = skipped["attention_rollout"] = reason
    patch_pos = model.pos_table()
    if patch_pos is not None:
        sim = analysis.pos_embed_similarity(patch_pos.detach(), grid)
        figures["pos_embed_similarity"] = plots.plot_pos_embed_similarity(sim, out)
    else:
        skipped["pos_embed_similarity"] = f"{model.describe()} has no position table over the patch grid"
    filters = model.patch_filters()
    if filters is not None:
        comps, explained = analysis.patch_embed_components(filters, k=28)
        figures["patch_embed_pcs"] = plots.plot_patch_embed_pcs(comps, explained, out)
    else:
        skipped["patch_embed_pcs"] = f"{model.describe()} has no first convolution to show"
    if objective is None and meta.get("kind") == "objective":
        objective = checkpoint
    if objective is None and (checkpoint.parent / OBJECTIVE_FILE).is_file():
        objective = checkpoint.parent / OBJECTIVE_FILE
    if objective is not None:
        obj = load_objective(objective, mean, std)
        if hasattr(obj, "reconstruct") and obj.masker is not None:
            mask = obj.masker(show, torch.Generator().manual_seed(seed))["mask"]
            rec = obj.reconstruct(images[:show], mask)
            figures["mae_reconstructions"] = plots.plot_reconstructions(rec, out, float(obj.mask_ratio))
        else:
            skipped["mae_reconstructions"] = f"the {obj.name} objective does not reconstruct pixels"
    return figures
