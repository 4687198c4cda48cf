"""``sslvit probe --protocol mae``: MAE's linear probe (``main_linprobe.py``), as published.

A ``BatchNorm1d(affine=False, eps=1e-6)`` and a linear layer (truncated-normal weights, std 0.01,
zero bias) on the frozen encoder's pooled feature, trained with LARS (momentum 0.9, trust
coefficient 0.001, no weight decay) at lr = blr x batch / 256 (blr 0.1, batch 16384), a linear
warmup of 10 epochs and a half-cycle cosine to 0 over 90 epochs, updated every step (MAE's
``adjust_learning_rate``). The feature is the class token after the final norm (``pool=auto``
on an encoder with a class token; MAE's ``--cls_token``), else the encoder's own pooling. Every epoch draws new crops (MAE's one-draw RandomResizedCrop(0.08, 1),
bicubic, and a horizontal flip) and runs them through the frozen encoder, so no training feature
is cached; the validation features (resize to image_size / crop_pct, centre crop) are. Each
process takes batch / world_size images of a step; the head is synchronised as DDP does (its
BatchNorm statistics are per process, as in MAE). Incomplete last batches are dropped (MAE's
``drop_last``).
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F
from accelerate import Accelerator
from torch import nn

from sslvit.config import ConfigError, opt
from sslvit.data.stream import build_loader
from sslvit.data.transforms import probe_transform
from sslvit.errors import InputError
from sslvit.evaluate.common import (
    EvalConfig,
    encoder_image_size,
    load_encoder,
    output_dir,
    topk_accuracy,
    write_metrics,
)
from sslvit.evaluate.features import (
    encode,
    features_for_config,
    resolve_normalization,
    resolve_split,
    samples_read,
)
from sslvit.progress import progress, say
from sslvit.training.lars import LARS
from sslvit.training.optim import lr_at, set_lr


@dataclass
class MaeProbeOptions:
    """The ``mae`` section of ``sslvit probe``: MAE's linear-probe settings (FINETUNE.md, ViT-B)."""

    batch_size: int = opt(16384, "images per step over all processes (MAE: 512 per GPU x 32 GPUs), split "
                                 "evenly over the processes", ge=1)
    blr: float = opt(0.1, "base learning rate: lr = blr x batch_size / 256", gt=0)
    epochs: int = opt(90, "passes over the training split, each with new crops through the frozen encoder "
                          "(MAE: 90 for ViT-B, 50 for ViT-L / ViT-H)", ge=1)
    warmup_epochs: int = opt(10, "linear warmup from 0, then a half-cycle cosine to min_lr", ge=0)
    min_lr: float = opt(0.0, "learning rate at the end of the cosine", ge=0)
    weight_decay: float = opt(0.0, "LARS weight decay of the linear weights (the bias takes none)", ge=0)
    momentum: float = opt(0.9, "LARS momentum", ge=0, lt=1)
    trust_coefficient: float = opt(0.001, "LARS trust coefficient", gt=0)
    head_init_std: float = opt(0.01, "std of the linear layer's truncated-normal weights; its bias starts at 0",
                               gt=0)
    crop_scale: tuple[float, float] = opt((0.08, 1.0), "area range of the training RandomResizedCrop", gt=0, le=1)
    hflip: bool = opt(True, "random horizontal flip of the training crops")


def probe_head(dim: int, num_classes: int, init_std: float, seed: int) -> nn.Sequential:
    """MAE's probe head: (N, dim) -> BatchNorm1d(affine=False) -> Linear -> (N, num_classes)."""
    linear = nn.Linear(dim, num_classes)
    with torch.no_grad():
        nn.init.trunc_normal_(linear.weight, std=init_std, a=-2.0, b=2.0,
                              generator=torch.Generator().manual_seed(seed))
        linear.bias.zero_()
    return nn.Sequential(nn.BatchNorm1d(dim, affine=False, eps=1e-6), linear)


def _train_loader(cfg: EvalConfig, opts: MaeProbeOptions, spec: str, image_size: int,
                  accelerator: Accelerator) -> Any:
    world = accelerator.num_processes
    if opts.batch_size % world:
        raise ConfigError(f"mae.batch_size: {opts.batch_size} images per step do not split evenly over "
                          f"{world} processes")
    try:
        return build_loader(spec, batch_size=opts.batch_size // world,
                            transform=probe_transform(image_size, tuple(opts.crop_scale), opts.hflip),
                            num_workers=cfg.num_workers, mode="finite", seed=cfg.seed,
                            rank=accelerator.process_index, world_size=world, need_labels=True,
                            shuffle=True, drop_last=True)
    except InputError as err:
        raise InputError(f"{err}; --protocol mae steps over mae.batch_size={opts.batch_size} images (MAE's "
                         f"16384 needs an ImageNet-sized split): set --mae.batch_size to at most the "
                         f"training split's size") from None


def _step_features(encoder: nn.Module, images: torch.Tensor, mean: torch.Tensor, std: torch.Tensor,
                   cfg: EvalConfig, accelerator: Accelerator) -> torch.Tensor:
    """uint8 images (B, 3, H, W) -> frozen features (B, F) float32, encoded cfg.batch_size at a time."""
    parts = []
    with torch.no_grad():
        for chunk in images.split(cfg.batch_size):
            x = (chunk.to(accelerator.device, non_blocking=True).float() / 255.0 - mean) / std
            with accelerator.autocast():
                parts.append(encode(encoder, x, cfg.pool, cfg.last_k).float())
    return torch.cat(parts)


def run_mae_probe(cfg: EvalConfig, opts: MaeProbeOptions) -> dict[str, Any]:
    """Train MAE's probe head on fresh crops every epoch, report the validation split.

    ``cfg`` holds the options every evaluator shares (checkpoint, data, pool, batch size, workers),
    ``opts`` the protocol's own. Writes ``<out_dir>/linear_probe_mae.json`` from the main process
    and returns the metrics dict.
    """
    start = time.time()
    accelerator = Accelerator(cpu=not torch.cuda.is_available())
    encoder = load_encoder(cfg)
    image_size = cfg.image_size or encoder_image_size(encoder)
    if image_size != encoder_image_size(encoder):
        encoder = load_encoder(cfg, img_size=image_size)
    if cfg.pool == "auto" and encoder.num_prefix_tokens > 0:
        cfg = dataclasses.replace(cfg, pool="token")  # MAE's probe reads the class token (--cls_token)
    feats = features_for_config(cfg, accelerator, splits=("val",))
    val_x, val_y = feats["val"]["x"].to(accelerator.device), feats["val"]["y"].to(accelerator.device)
    encoder = encoder.to(accelerator.device).eval().requires_grad_(False)
    train_spec = resolve_split(cfg.train, "train", cfg, accelerator)
    mean, std = resolve_normalization(cfg.checkpoint, cfg.mean, cfg.std, train_spec)
    mean_t = torch.tensor(mean, device=accelerator.device).view(1, -1, 1, 1)
    std_t = torch.tensor(std, device=accelerator.device).view(1, -1, 1, 1)
    loader = _train_loader(cfg, opts, train_spec, image_size, accelerator)
    num_classes = max(int(loader.cfg.num_classes or 0), int(val_y.max().item()) + 1)

    steps_per_epoch = len(loader)
    total, warmup = opts.epochs * steps_per_epoch, opts.warmup_epochs * steps_per_epoch
    peak_lr = opts.blr * opts.batch_size / 256
    head = probe_head(val_x.shape[1], num_classes, opts.head_init_std, cfg.seed).to(accelerator.device)
    optimizer = LARS(head.parameters(), lr=0.0, weight_decay=opts.weight_decay, momentum=opts.momentum,
                     trust_coefficient=opts.trust_coefficient)
    head = accelerator.prepare_model(head)
    say(f"probe --protocol mae: {opts.epochs} epochs x {steps_per_epoch} steps of {opts.batch_size} images "
        f"({opts.batch_size // accelerator.num_processes} per process), LARS, peak lr {peak_lr:g} "
        f"(blr {opts.blr:g}), warmup {opts.warmup_epochs} epochs; crops redrawn every epoch through the "
        f"frozen encoder")
    history, step, first_pass = [], 0, None
    bar = progress(range(opts.epochs), desc="probe (mae protocol)", unit="epoch")
    for epoch in bar:
        loader.set_epoch(epoch)
        head.train()
        loss_sum, seen, read = torch.zeros((), device=accelerator.device), 0, 0
        for batch in loader:
            set_lr(optimizer, lr_at(step, peak_lr, total, warmup, opts.min_lr))
            keep = batch["valid"].bool()
            labels = batch["label"][keep].long().to(accelerator.device)
            if labels.numel() and int(labels.max()) >= num_classes:
                raise InputError(f"train split {train_spec!r}: label {int(labels.max())} outside the "
                                 f"{num_classes} classes of the validation split and manifest")
            x = _step_features(encoder, batch["image"][keep], mean_t, std_t, cfg, accelerator)
            loss = F.cross_entropy(head(x), labels)
            if not torch.isfinite(loss):
                raise RuntimeError(f"probe --protocol mae: loss {loss.item()} at epoch {epoch}, step {step}; "
                                   f"lower --mae.blr (now {opts.blr:g})")
            optimizer.zero_grad(set_to_none=True)
            accelerator.backward(loss)
            optimizer.step()
            loss_sum += loss.detach() * labels.numel()
            seen, read, step = seen + labels.numel(), read + int(keep.sum()), step + 1
        if first_pass is None:
            first_pass = samples_read(loader, read, accelerator)
            lost = {k: n for k, n in first_pass["skipped"].items() if k not in ("dropped_last", "dropped_extra")}
            if lost:
                say(f"warning: the train split {train_spec} gave {read} of its {first_pass['expected']} "
                    f"samples; skipped by reason: {lost}")
        mean_loss = (loss_sum / max(1, seen)).item()
        history.append({"epoch": epoch, "loss": round(mean_loss, 6), "lr": optimizer.param_groups[0]["lr"]})
        bar.set_postfix(loss=f"{mean_loss:.4f}")
    loader.close()

    head.eval()
    with torch.no_grad():
        logits = torch.cat([head(val_x[i : i + 4096]) for i in range(0, val_x.shape[0], 4096)])
    accuracy = topk_accuracy(logits, val_y)
    describe = feats["describe"]
    describe["data"]["train"] = train_spec
    describe["data"]["train_samples"] = first_pass
    metrics = {
        "evaluator": "linear_probe",
        **describe,
        "protocol": {"name": "mae", **asdict(opts), "crop_scale": list(opts.crop_scale), "optimizer": "lars",
                     "lr": peak_lr, "steps": step, "steps_per_epoch": steps_per_epoch,
                     "batch_per_process": opts.batch_size // accelerator.num_processes,
                     "num_processes": accelerator.num_processes},
        "num_classes": num_classes,
        "num_train": steps_per_epoch * opts.batch_size,
        "num_val": int(val_x.shape[0]),
        "val_top1": accuracy["top1"],
        "val_top5": accuracy["top5"],
        "history": history,
        "seconds": round(time.time() - start, 2),
    }
    if accelerator.is_main_process:
        metrics["metrics_path"] = str(write_metrics(output_dir(cfg) / "linear_probe_mae.json", metrics))
    return metrics
