"""Figures on a matplotlib Agg canvas (no pyplot state); each writes ``NAME.png`` and ``NAME.json``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure


def _save(fig: Figure, out_dir: Path, name: str, numbers: dict[str, Any]) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    FigureCanvasAgg(fig)
    png = out_dir / f"{name}.png"
    fig.savefig(png, dpi=110, bbox_inches="tight")
    (out_dir / f"{name}.json").write_text(json.dumps(numbers, indent=1) + "\n")
    return png


def plot_attention_distance(
    dist: torch.Tensor, out_dir: Path, image_size: int, patch_size: int, num_images: int
) -> Path:
    """Scatter of every head's mean attention distance (pixels) against block index; dist: (depth, heads)."""
    depth, heads = dist.shape
    fig = Figure(figsize=(5.5, 4))
    ax = fig.add_subplot()
    for h in range(heads):
        ax.scatter(torch.arange(1, depth + 1), dist[:, h], s=18, alpha=0.8, label=f"head {h}")
    ax.set_xlabel("network depth (block)")
    ax.set_ylabel("mean attention distance (pixels)")
    ax.set_title(
        f"Mean attention distance, {num_images} images ({image_size}px, patch {patch_size})", fontsize=9
    )
    ax.set_xticks(range(1, depth + 1))
    ax.set_ylim(0, image_size * 2**0.5 / 2)
    if heads <= 16:
        ax.legend(fontsize=7, ncol=2, loc="lower right")
    ax.grid(alpha=0.3)
    numbers = {
        "distance_px": dist.tolist(),
        "image_size": image_size,
        "patch_size": patch_size,
        "num_images": num_images,
        "definition": "per patch query: sum over patch keys of attention x centre distance (px), averaged "
        "over queries and images; class token excluded, attention renormalised over patch keys",
    }
    return _save(fig, out_dir, "attention_distance", numbers)


def plot_pos_embed_similarity(sim: torch.Tensor, out_dir: Path) -> Path:
    """Grid of grids: tile (i, j) is the cosine similarity of patch (i, j)'s embedding with all positions.

    sim: (gh, gw, gh, gw); tiles are separated by a one-pixel gap.
    """
    gh, gw = sim.shape[:2]
    mosaic = torch.full((gh * (gh + 1) - 1, gw * (gw + 1) - 1), float("nan"))
    for i in range(gh):
        for j in range(gw):
            mosaic[i * (gh + 1) : i * (gh + 1) + gh, j * (gw + 1) : j * (gw + 1) + gw] = sim[i, j]
    fig = Figure(figsize=(6, 5.4))
    ax = fig.add_subplot()
    im = ax.imshow(mosaic.numpy(), cmap="viridis", vmin=-1, vmax=1, interpolation="nearest")
    ax.set_xticks(
        [j * (gw + 1) + gw / 2 - 0.5 for j in range(gw)], [str(j + 1) for j in range(gw)], fontsize=7
    )
    ax.set_yticks(
        [i * (gh + 1) + gh / 2 - 0.5 for i in range(gh)], [str(i + 1) for i in range(gh)], fontsize=7
    )
    ax.set_xlabel("input patch column")
    ax.set_ylabel("input patch row")
    ax.set_title("Position embedding similarity", fontsize=10)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="cosine similarity")
    own = sim.reshape(gh * gw, gh * gw).argmax(dim=1) == torch.arange(gh * gw)
    numbers = {
        "grid": [gh, gw],
        "similarity": sim.tolist(),
        "peaks_at_own_position": float(own.float().mean()),
    }
    return _save(fig, out_dir, "pos_embed_similarity", numbers)


def _rgb(images: torch.Tensor) -> torch.Tensor:
    """(N, C, H, W) in [0, 1] -> (N, 3, H, W) clamped; one channel is repeated, more than three cut."""
    images = images.detach().float().cpu().clamp(0, 1)
    return images.expand(-1, 3, -1, -1) if images.shape[1] == 1 else images[:, :3]


def _mosaic(images: torch.Tensor, cols: int, gap: int = 1) -> Any:
    """(N, C, H, W) in [0, 1] -> one (rows * (H + gap) - gap, cols * (W + gap) - gap, 3) array, white gaps."""
    images = _rgb(images)
    n, _, h, w = images.shape
    rows = (n + cols - 1) // cols
    out = torch.ones(3, rows * (h + gap) - gap, cols * (w + gap) - gap)
    for i in range(n):
        r, c = divmod(i, cols)
        out[:, r * (h + gap) : r * (h + gap) + h, c * (w + gap) : c * (w + gap) + w] = images[i]
    return out.permute(1, 2, 0).numpy()


def _heat(maps: torch.Tensor) -> torch.Tensor:
    """(N, H, W) in [0, 1] -> (N, 3, H, W) RGB through the inferno colour map."""
    from matplotlib import colormaps

    rgb = colormaps["inferno"](maps.detach().float().cpu().clamp(0, 1).numpy())[..., :3]
    return torch.from_numpy(rgb).float().permute(0, 3, 1, 2)


def _strips(rows: list[tuple[str, torch.Tensor]], title: str) -> Figure:
    """One labelled image strip per row; each row (N, C, H, W) in [0, 1]."""
    n, _, h, w = rows[0][1].shape
    gap = max(1, w // 16)
    fig = Figure(figsize=(min(1.1 * n, 14) + 1.0, (1.1 * min(1.1 * n, 14) / n + 0.25) * len(rows) + 0.4))
    fig.suptitle(title, fontsize=10)
    for r, (label, imgs) in enumerate(rows):
        ax = fig.add_subplot(len(rows), 1, r + 1)
        ax.imshow(_mosaic(imgs, n, gap), interpolation="nearest")
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_ylabel(label, fontsize=8)
        for side in ax.spines.values():
            side.set_visible(False)
    return fig


def plot_patch_embed_pcs(components: torch.Tensor, explained: torch.Tensor, out_dir: Path) -> Path:
    """Top principal components of the patch-embedding filters: components (k, C, p, p), min-max scaled.

    Each tile is one component shown as an RGB patch, labelled with its share of the filters' variance.
    """
    k, _, p, _ = components.shape
    cols = min(7, k)
    rows = (k + cols - 1) // cols
    flat = components.float().flatten(1)
    lo, hi = flat.amin(1)[:, None, None, None], flat.amax(1)[:, None, None, None]
    tiles = (components.float() - lo) / (hi - lo).clamp_min(1e-12)
    gap = max(1, p // 3)
    fig = Figure(figsize=(1.0 * cols + 0.4, 1.05 * rows + 0.6))
    ax = fig.add_subplot()
    ax.imshow(_mosaic(tiles, cols, gap), interpolation="nearest")
    for i in range(k):
        r, c = divmod(i, cols)
        x, y = c * (p + gap) + (p - 1) / 2, r * (p + gap) - 0.6
        ax.text(x, y, f"{100 * explained[i]:.1f}%", fontsize=6, ha="center", va="bottom")
    ax.set_title(f"RGB embedding filters (first {k} principal components)", fontsize=10, pad=14)
    ax.axis("off")
    numbers = {"explained_variance_ratio": explained.tolist(), "components": components.tolist()}
    return _save(fig, out_dir, "patch_embed_pcs", numbers)


def plot_reconstructions(rec: dict[str, torch.Tensor], out_dir: Path, mask_ratio: float) -> Path:
    """Rows: original, masked input, reconstruction, reconstruction with the visible patches pasted back.

    rec: MAE ``reconstruct`` output, "image"/"pred"/"pasted" (N, 3, H, W) in [0, 1], "mask_img" (N, 1, H, W).
    """
    image, mask = rec["image"], rec["mask_img"]
    rows = [
        ("original", image),
        ("masked input", image * (1 - mask) + 0.5 * mask),
        ("reconstruction", rec["pred"]),
        ("+ visible patches", rec["pasted"]),
    ]
    fig = _strips(rows, f"MAE reconstructions ({100 * mask_ratio:.0f}% of patches hidden, grey)")
    err = ((rec["pred"] - image) ** 2 * mask).sum() / (mask.sum() * image.shape[1]).clamp_min(1)
    numbers = {"mask_ratio": mask_ratio, "num_images": image.shape[0], "hidden_pixel_mse_01": float(err)}
    return _save(fig, out_dir, "mae_reconstructions", numbers)


def plot_rollout(images: torch.Tensor, maps: torch.Tensor, out_dir: Path, query: str = "class token") -> Path:
    """Rows: images (N, C, H, W) in [0, 1], their rollout maps (N, gh, gw), and the maps over the images.

    Each map is min-max scaled on its own (upsampled bilinearly for the overlay); the JSON keeps the
    unscaled shares, which sum to 1 per image.
    """
    n, _, h, w = images.shape
    lo, hi = maps.flatten(1).amin(1)[:, None, None], maps.flatten(1).amax(1)[:, None, None]
    scaled = ((maps - lo) / (hi - lo).clamp_min(1e-12)).float()
    blocky = F.interpolate(scaled[:, None], size=(h, w), mode="nearest")[:, 0]
    smooth = F.interpolate(scaled[:, None], size=(h, w), mode="bilinear", align_corners=False)[:, 0]
    overlay = 0.45 * _rgb(images) + 0.55 * _heat(smooth)
    rows = [("image", images), ("rollout", _heat(blocky)), ("overlay", overlay)]
    fig = _strips(rows, f"Attention rollout ({query} to patches; each map min-max scaled)")
    numbers = {
        "maps": maps.tolist(),
        "num_images": n,
        "definition": f"{query} row of the attention rollout (0.5 A + 0.5 I, heads averaged, "
        "layers multiplied), restricted to the patches and renormalised",
    }
    return _save(fig, out_dir, "attention_rollout", numbers)
