"""Frozen-encoder features: extraction split across ranks, gathering, and an on-disk cache.

A feature is the class token, the average of the patch tokens, or both, taken after the final norm
from each of the last ``k`` blocks and concatenated. Extraction runs the encoder once per split in
eval mode; each rank reads its own shards and the features are gathered on every rank. The result
is cached as safetensors under ``<out_dir>/features/``, keyed by the checkpoint's sha256, the data
and the feature options.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import gather_object
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from sslvit.checkpoint import checkpoint_sha256, read_metadata
from sslvit.data.hf import resolve_spec
from sslvit.data.stats import normalization
from sslvit.data.stream import build_loader
from sslvit.data.transforms import eval_transform
from sslvit.errors import InputError
from sslvit.evaluate.common import EvalConfig, encoder_image_size, load_encoder, output_dir
from sslvit.progress import progress, say
from sslvit.training.data import default_shards


@torch.no_grad()
def encode(encoder: nn.Module, images: torch.Tensor, pool: str = "auto", last_k: int = 1) -> torch.Tensor:
    """Features of normalised images (N, C, H, W) -> (N, last_k * F') with F' the pooled width.

    The outputs of the last ``last_k`` blocks each go through the encoder's final norm and are
    pooled (``auto``: the encoder's own pooling); blocks are concatenated from the earliest to the last.
    """
    if not 1 <= last_k <= encoder.num_feature_blocks:
        raise ValueError(f"last_k must be in 1..{encoder.num_feature_blocks}, got {last_k}")
    how = None if pool == "auto" else pool
    outs = [encoder.forward_features(images)] if last_k == 1 else encoder.forward_blocks(images, last_k)
    return torch.cat([encoder.pool(t, how) for t in outs], dim=-1)


@torch.no_grad()
def extract_features(
    encoder: nn.Module,
    loader: Any,
    mean: tuple[float, ...],
    std: tuple[float, ...],
    pool: str = "auto",
    last_k: int = 1,
    accelerator: Accelerator | None = None,
    desc: str = "features",
    leave: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Run ``encoder`` over every batch of ``loader`` and gather the results from all ranks.

    A progress bar labelled ``desc`` counts the batches on the main process (``leave=False``: cleared
    when done).

    Batches hold "image" uint8 (N, 3, H, W) (or float in [0, 1]), "label" (N,) and optionally
    "valid" (N,) (False for padding repeats, dropped). Returns features (M, F) float32 and labels
    (M,) int64 on the CPU, identical on every rank.
    """
    device = accelerator.device if accelerator is not None else next(encoder.parameters()).device
    encoder = encoder.to(device).eval()
    mean_t = torch.tensor(mean, device=device).view(1, -1, 1, 1)
    std_t = torch.tensor(std, device=device).view(1, -1, 1, 1)
    feats, labels, valid = [], [], []
    for batch in progress(loader, desc=desc, unit="batch", leave=leave):
        images = batch["image"].to(device, non_blocking=True)
        images = images.float() / 255.0 if images.dtype == torch.uint8 else images.float()
        with accelerator.autocast() if accelerator is not None else nullcontext():
            feats.append(encode(encoder, (images - mean_t) / std_t, pool, last_k).float().cpu())
        labels.append(batch["label"].long().cpu())
        keep = batch.get("valid")
        valid.append(keep.bool().cpu() if keep is not None else torch.ones_like(labels[-1], dtype=torch.bool))
    if not feats:
        width = encode(encoder, torch.zeros(1, 3, *_image_hw(encoder), device=device), pool, last_k).shape[1]
        feats, labels, valid = [torch.zeros(0, width)], [torch.zeros(0, dtype=torch.long)], [torch.zeros(0, dtype=torch.bool)]
    x, y, ok = torch.cat(feats), torch.cat(labels), torch.cat(valid)
    if accelerator is not None and accelerator.num_processes > 1:
        x, y, ok = gather_rows(accelerator, x), gather_rows(accelerator, y), gather_rows(accelerator, ok.to(torch.uint8))
    return x[ok.bool()], y[ok.bool()]


def gather_rows(accelerator: Accelerator, t: torch.Tensor, chunk: int = 65536) -> torch.Tensor:
    """Concatenate every rank's CPU tensor (n_r, ...) along dim 0 on every rank, padded rows included.

    Rows are padded with zeros to the longest rank and moved through the device ``chunk`` rows at a
    time, so device memory stays bounded. Returns (world_size * max n_r, ...) on the CPU.
    """
    counts = accelerator.gather(torch.tensor([t.shape[0]], device=accelerator.device))
    longest = int(counts.max().item())
    padded = torch.cat([t, t.new_zeros(longest - t.shape[0], *t.shape[1:])])
    parts: list[list[torch.Tensor]] = [[] for _ in range(accelerator.num_processes)]
    for start in range(0, max(longest, 1), chunk):
        piece = accelerator.gather(padded[start : start + chunk].to(accelerator.device).contiguous()).cpu()
        for rank, rows in enumerate(piece.chunk(accelerator.num_processes)):
            parts[rank].append(rows)
    return torch.cat([torch.cat(p) for p in parts])


def samples_read(loader: Any, read: int, accelerator: Accelerator) -> dict[str, Any]:
    """What one pass of ``loader`` gave: the samples it should hold (its counts), those read and
    the skipped ones by reason (every rank's together; a lost shard counts the samples its manifest
    gave it as ``unreadable_shard_samples``)."""
    skipped: Counter = Counter(loader.stats or {})
    if accelerator.num_processes > 1:
        skipped = sum((Counter(s) for s in gather_object([dict(skipped)])), Counter())
    return {"expected": loader.num_samples, "read": read, "skipped": dict(sorted(skipped.items()))}


def _image_hw(encoder: nn.Module) -> tuple[int, int]:
    size = encoder_image_size(encoder)
    return size, size


def _everyone_has(accelerator: Accelerator, path: Path) -> bool:
    """Whether every rank sees ``path`` (so all ranks take the same branch and no collective hangs)."""
    here = torch.tensor([int(path.is_file())], device=accelerator.device)
    return bool(accelerator.gather(here).min().item()) if accelerator.num_processes > 1 else bool(here.item())


def data_identity(spec: str) -> dict[str, Any]:
    """What identifies a shard spec for the cache: the spec and, for local paths, file sizes and times."""
    path = Path(spec)
    files = []
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.is_file() and not p.name.startswith("."))
    elif path.is_file():
        files = [path]
    return {"spec": spec, "files": [[p.name, p.stat().st_size, p.stat().st_mtime_ns] for p in files]}


def resolve_split(spec: str, split: str, cfg: EvalConfig, accelerator: Accelerator | None) -> str:
    """A shard spec for ``spec``: "" = the built-in digits ``split``; a built-in corpus split
    (``fashion-mnist:test``) is its folder, built once; "hf:NAME[:SPLIT]" is converted once into
    shards under ``<out_dir>/hf_shards/``; anything else is returned as is."""
    if not spec:
        return default_shards(split, cfg.digits_image_size, accelerator)

    return resolve_spec(spec, output_dir(cfg) / "hf_shards", accelerator)


def resolve_normalization(
    checkpoint: str,
    mean: tuple[float, ...] | None,
    std: tuple[float, ...] | None,
    train_spec: str,
) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Pixel mean / std: ``mean`` / ``std`` when given, else what the checkpoint records
    (:func:`sslvit.data.stats.normalization`, with ``train_spec``'s manifest as the last sslvit
    fallback), else ImageNet's (foreign checkpoints)."""
    if mean is not None and std is not None:
        return tuple(mean), tuple(std)
    found_mean, found_std, _ = normalization(read_metadata(checkpoint), (train_spec,))
    return found_mean, found_std


def make_eval_loader(spec: str, image_size: int, batch_size: int, num_workers: int,
                     accelerator: Accelerator | None, crop_pct: float = 0.875) -> Any:
    """A finite, unshuffled, labelled loader over ``spec`` for this rank with the eval transform."""
    rank = accelerator.process_index if accelerator is not None else 0
    world = accelerator.num_processes if accelerator is not None else 1
    return build_loader(spec, batch_size=batch_size, transform=eval_transform(image_size, crop_pct),
                        num_workers=num_workers, mode="finite", seed=0, rank=rank, world_size=world,
                        need_labels=True, shuffle=False, shuffle_buffer=0)


def features_for_config(cfg: EvalConfig, accelerator: Accelerator | None = None,
                        splits: tuple[str, ...] = ("train", "val")) -> dict[str, Any]:
    """Features of the ``splits`` of ``cfg`` ("train", "val"; from the cache when present).

    Returns ``{"train": {"x": (N, F), "y": (N,)}, "val": {...}, "describe": {checkpoint, data,
    features}, "is_main": bool}``; the same tensors on every rank.
    """
    accelerator = accelerator or Accelerator(cpu=not torch.cuda.is_available())
    encoder = load_encoder(cfg)
    image_size = cfg.image_size or encoder_image_size(encoder)
    if image_size != encoder_image_size(encoder):
        encoder = load_encoder(cfg, img_size=image_size)
    specs = {"train": resolve_split(cfg.train, "train", cfg, accelerator),
             "val": resolve_split(cfg.val, "val", cfg, accelerator)}
    mean, std = resolve_normalization(cfg.checkpoint, cfg.mean, cfg.std, specs["train"])
    options = {"pool": cfg.pool, "last_k": cfg.last_k, "image_size": image_size, "crop_pct": cfg.crop_pct,
               "mean": list(mean), "std": list(std)}
    checkpoint = {"path": str(Path(cfg.checkpoint).resolve()), "sha256": checkpoint_sha256(cfg.checkpoint),
                  "model": encoder.get_config()}
    out: dict[str, Any] = {"is_main": accelerator.is_main_process,
                           "describe": {"checkpoint": checkpoint, "data": {}, "features": options}}
    cache_dir = output_dir(cfg) / "features"
    for split, spec in specs.items():
        if split not in splits:
            continue
        identity = data_identity(spec)
        out["describe"]["data"][split] = str(Path(spec).resolve()) if Path(spec).exists() else spec
        key = hashlib.sha256(json.dumps([checkpoint["sha256"], identity, options], sort_keys=True).encode())
        path = cache_dir / f"features-{key.hexdigest()[:20]}.safetensors"
        if cfg.cache and _everyone_has(accelerator, path):
            tensors = load_file(str(path))
            out[split] = {"x": tensors["x"], "y": tensors["y"]}
            with safe_open(str(path), framework="pt") as f:
                samples = (f.metadata() or {}).get("sslvit.samples")
            if samples:
                out["describe"]["data"][f"{split}_samples"] = json.loads(samples)
            continue
        loader = make_eval_loader(spec, image_size, cfg.batch_size, cfg.num_workers, accelerator, cfg.crop_pct)
        x, y = extract_features(encoder, loader, mean, std, cfg.pool, cfg.last_k, accelerator, f"features {split}")
        out["describe"]["data"][f"{split}_samples"] = read = samples_read(loader, x.shape[0], accelerator)
        if read["skipped"]:
            say(f"warning: the {split} split {spec} gave {read['read']} of its {read['expected']} samples; "
                f"skipped by reason: {read['skipped']}")
        if x.shape[0] == 0:
            raise InputError(f"{split} split {spec!r} gave no labelled samples")
        out[split] = {"x": x, "y": y}
        if cfg.cache and accelerator.is_main_process:
            cache_dir.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".{path.name}.tmp")
            save_file({"x": x.contiguous(), "y": y.contiguous()}, str(tmp),
                      metadata={"sslvit.features": json.dumps({**identity, **options}),
                                "sslvit.samples": json.dumps(read)})
            tmp.replace(path)
        accelerator.wait_for_everyone()
    return out
