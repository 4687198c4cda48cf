"""Full fine-tuning of a pretrained encoder with a fresh classification head, validated every epoch.

Built on :func:`sslvit.training.train` with the supervised objective (label smoothing, MixUp, CutMix),
the fine-tune training transform (RandomResizedCrop + flip + RandAugment + random erasing,
``finetune.rand_augment`` / ``finetune.reprob``; validation uses resize + centre crop) and
layer-wise learning-rate decay (``optim.layer_decay``; the encoder's own ``layer_id``: embeddings
are layer 0, blocks count up with depth (across stages for Swin and PoolFormer), the final norm and
head are ``num_layers``, so a parameter's lr is ``peak * decay ** (num_layers - layer)``). Drop path comes from ``model.drop_path_rate``; a
``data.image_size`` other than the checkpoint's resamples the position embeddings. ``hf:`` data
specs are converted once into shards under ``<train.out_dir>/hf_shards/``. Labels that the train or
val manifest records beyond the head's classes are refused before any training. The run
directory is a normal run (``model.safetensors``, ``config.yaml``, ``metrics.jsonl``) plus
``finetune.json`` with the validation history.
"""

from __future__ import annotations

import dataclasses
import time
from contextlib import nullcontext
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, ClassVar

import torch
from accelerate import Accelerator, PartialState
from accelerate.utils import set_seed
from torch import nn

from sslvit.checkpoint import checkpoint_sha256, load_checkpoint
from sslvit.config import (
    ConfigError,
    DataConfig,
    ModelConfig,
    ObjectiveConfig,
    OptimConfig,
    TrainConfig,
    check_sections,
)
from sslvit.data.hf import resolve_spec
from sslvit.data.stream import load_manifest
from sslvit.evaluate.common import encoder_image_size, opt, write_metrics
from sslvit.evaluate.features import make_eval_loader, resolve_normalization
from sslvit.evaluate.online import online_hooks
from sslvit.objectives import objective_class, objective_config
from sslvit.training import EpochContext, train
from sslvit.training.config import RunConfig
from sslvit.training.data import (
    check_label_range,
    default_shards,
    hf_cache_dir,
    read_manifest,
    stage_transform,
)
from sslvit.training.launch import resolve_grad_accum


@dataclass
class FinetuneOptions:
    """What to fine-tune and how to validate it."""

    checkpoint: str = opt("", "pretrained encoder: sslvit .safetensors or a plain ViT state dict "
                              "(.safetensors / .pth); model.name names its variant when not inferable")
    eval_batch_size: int = opt(128, "images per process per validation batch", ge=1)
    eval_crop_pct: float = opt(0.875, "validation transform: resize to image_size / crop_pct, centre crop",
                                gt=0, le=1)
    rand_augment: str = opt("rand-m9-mstd0.5-inc1", "training RandAugment in timm's syntax (rand-m<magnitude>-"
                                                    "n<ops>-mstd<std>-inc<0|1>-p<prob>); '' = off")
    reprob: float = opt(0.25, "training random-erasing probability (one rectangle of per-pixel noise); 0 = off",
                         ge=0, le=1)
    head_init_std: float = opt(0.02, "std of the fresh head's truncated-normal weights (MAE's fine-tune: 2e-5; "
                                     "timm's: 0.02); 0 = all zeros (the ViT paper's fine-tune); its bias starts "
                                     "at 0", ge=0)


@dataclass
class FinetuneConfig(RunConfig):
    """A run config plus a ``finetune`` section. The defaults fine-tune a small encoder on the built-in
    digits corpus in minutes on a CPU (20 epochs, batch 32, peak lr 1e-3, layer decay 0.75, drop path
    0.1, label smoothing 0.1; MixUp / CutMix, RandAugment and random erasing off, as they slow such
    short runs down); the ImageNet recipe, with all of them on, is
    sslvit/configs/finetune_mae_vit_base.yaml. Its training loader uses the fine-tune transform
    (``stage = "finetune"``, see :mod:`sslvit.training.data`)."""

    stage: ClassVar[str] = "finetune"

    data: DataConfig = field(default_factory=lambda: DataConfig(batch_size=32, crop_scale=(0.5, 1.0), hflip=False))
    model: ModelConfig = field(default_factory=lambda: ModelConfig(name="", drop_path_rate=0.1))
    objective: ObjectiveConfig = field(default_factory=lambda: objective_config(
        "supervised", label_smoothing=0.1, mixup_alpha=0.0, cutmix_alpha=0.0))
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(
        base_lr=8e-3, weight_decay=0.05, betas=(0.9, 0.999), warmup_epochs=3, layer_decay=0.75))
    train: TrainConfig = field(default_factory=lambda: TrainConfig(epochs=20, log_every=20))
    finetune: FinetuneOptions = field(default_factory=lambda: FinetuneOptions(rand_augment="", reprob=0.0))


@torch.no_grad()
def evaluate_classifier(
    model: nn.Module,
    loader: Any,
    mean: tuple[float, ...],
    std: tuple[float, ...],
    accelerator: Accelerator | None = None,
) -> dict[str, float]:
    """Top-1 / top-5 (percent) of ``model``'s logits over a labelled loader, summed over all ranks.

    Batches hold "image" uint8 (N, 3, H, W), "label" (N,), optionally "valid" (N,); the model maps
    normalised images to logits (N, C). The model's train/eval mode is restored afterwards.
    """
    device = accelerator.device if accelerator is not None else next(model.parameters()).device
    was_training = model.training
    model.eval()
    mean_t = torch.tensor(mean, device=device).view(1, -1, 1, 1)
    std_t = torch.tensor(std, device=device).view(1, -1, 1, 1)
    counts = torch.zeros(3, device=device, dtype=torch.float64)  # top-1 hits, top-5 hits, samples
    for batch in loader:
        images = batch["image"].to(device, non_blocking=True)
        images = images.float() / 255.0 if images.dtype == torch.uint8 else images.float()
        labels = batch["label"].to(device).long()
        keep = batch["valid"].to(device).bool() if "valid" in batch else torch.ones_like(labels, dtype=torch.bool)
        with accelerator.autocast() if accelerator is not None else nullcontext():
            logits = model((images - mean_t) / std_t).float()
        top = logits.topk(min(5, logits.shape[1]), dim=1).indices
        hit5 = (top == labels[:, None]).any(dim=1) & keep
        hit1 = (top[:, 0] == labels) & keep
        counts += torch.stack([hit1.sum(), hit5.sum(), keep.sum()]).double()
    if accelerator is not None and accelerator.num_processes > 1:
        counts = accelerator.reduce(counts, reduction="sum")
    model.train(was_training)
    total = max(1.0, counts[2].item())
    return {"top1": 100.0 * counts[0].item() / total, "top5": 100.0 * counts[1].item() / total,
            "samples": int(counts[2].item())}


FINETUNE_MODEL_OPTIONS = ("global_pool", "pos_embed", "fc_norm")  # model.* keys a fine-tune may change


def init_head(encoder: nn.Module, std: float) -> None:
    """Initialise the fresh classification head(s) (every linear layer of ``head`` and ``head_dist``,
    whatever the family wraps it in): truncated-normal weights of ``std`` (cut at +-2, as timm's
    ``trunc_normal_``), or zeros with ``std`` 0 (the ViT paper's zero-initialised head), zero bias.
    An encoder without one is an error, so the setting is never ignored."""
    if not std >= 0:
        raise ConfigError(f"finetune.head_init_std: {std!r} is out of range; allowed: >= 0 (0 = zeros)")
    linears = [m for name in ("head", "head_dist") if isinstance(getattr(encoder, name, None), nn.Module)
               for m in getattr(encoder, name).modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise ConfigError(f"finetune.head_init_std: {type(encoder).__name__} has no linear classification head")
    for linear in linears:
        if std == 0:
            nn.init.zeros_(linear.weight)
        else:
            nn.init.trunc_normal_(linear.weight, std=std)
        if linear.bias is not None:
            nn.init.zeros_(linear.bias)


def set_head_type(encoder: nn.Module, num_classes: int, head_type: str) -> None:
    """Give ``encoder`` a fresh ``head_type`` head of ``num_classes``: 'linear' drops a pretrained
    pre-logits layer too, so the whole head is one linear layer (the ViT paper's fine-tune, vit_jax's
    drop-head variant). Families without the option are an error, so the setting is never ignored."""
    if not hasattr(encoder, "pre_logits") or not hasattr(encoder, "reset_classifier"):
        raise ConfigError(f"model.head_type: {type(encoder).__name__} has no head_type option (ViT and hybrid "
                          "encoders have); leave it null")
    encoder.reset_classifier(num_classes, head_type)


def num_classes_of(spec: str) -> int:
    """Number of classes recorded in the manifest of the shards ``spec`` (0 when unknown)."""
    try:
        manifest = load_manifest(spec) or {}
    except (FileNotFoundError, ValueError, OSError):
        return 0
    if manifest.get("num_classes"):
        return int(manifest["num_classes"])
    classes = manifest.get("classes") or manifest.get("class_names")
    return len(classes) if classes else 0


def prepare_finetune(cfg: FinetuneConfig) -> tuple[FinetuneConfig, nn.Module, dict[str, Any]]:
    """Resolve data, classes and normalisation, and load the encoder with a fresh ``num_classes`` head.

    Returns the completed config (``objective.num_classes``, ``data.mean``/``std``, ``model.name`` set),
    the encoder (its new head initialised from ``train.seed``) and a description of the inputs
    (checkpoint path + sha256, data specs).
    """
    check_sections(cfg)  # what loading the config checks, for one built in code
    if not cfg.finetune.checkpoint:
        raise ConfigError("finetune.checkpoint: required (--checkpoint PATH)")
    if not objective_class(cfg.objective.name).needs_labels:
        raise ConfigError(f"objective.name: fine-tuning needs an objective that trains on labels "
                          f"(such as 'supervised'), got {cfg.objective.name!r}")
    for key in ("rand_augment", "reprob"):
        if getattr(cfg.objective, key, None):
            raise ConfigError(f"objective.{key}: a fine-tune's augmentation is finetune.{key}; "
                              f"objective.{key} ({getattr(cfg.objective, key)!r}) would be ignored")
    try:
        stage_transform(cfg, "finetune")  # a bad finetune.rand_augment / finetune.reprob fails here
    except ValueError as err:
        raise ConfigError(f"finetune.rand_augment / finetune.reprob: {err}") from None
    state = PartialState()
    train_spec = cfg.data.train_shards or default_shards("train", cfg.data.digits_image_size, state)
    val_spec = cfg.data.val_shards or default_shards("val", cfg.data.digits_image_size, state)
    train_spec = resolve_spec(train_spec, hf_cache_dir(cfg), state)
    val_spec = resolve_spec(val_spec, hf_cache_dir(cfg), state)
    key = "objective.num_classes" if cfg.objective.num_classes or not cfg.model.num_classes else "model.num_classes"
    classes = cfg.objective.num_classes or cfg.model.num_classes or num_classes_of(train_spec)
    if classes <= 0:
        raise ConfigError(f"objective.num_classes: the manifest of {train_spec!r} does not record the "
                          "number of classes; set objective.num_classes")
    for spec in (train_spec, val_spec):
        check_label_range(read_manifest(spec), classes, spec, key)
    set_seed(cfg.train.seed)  # the fresh head's initialisation, so a run repeats exactly
    overrides: dict[str, Any] = {"num_classes": classes, "drop_path_rate": cfg.model.drop_path_rate}
    for key in FINETUNE_MODEL_OPTIONS:
        if getattr(cfg.model, key) is not None:
            overrides[key] = getattr(cfg.model, key)
    encoder = load_checkpoint(cfg.finetune.checkpoint, model_name=cfg.model.name or None, **overrides)
    if cfg.model.head_type is not None:
        set_head_type(encoder, classes, cfg.model.head_type)
    init_head(encoder, cfg.finetune.head_init_std)
    size = cfg.model.img_size or cfg.data.image_size
    if size != encoder_image_size(encoder):
        encoder.set_img_size(size)
    mean, std = resolve_normalization(cfg.finetune.checkpoint, cfg.data.mean, cfg.data.std, train_spec)
    cfg = replace(
        cfg,
        data=replace(cfg.data, mean=tuple(mean), std=tuple(std)),
        model=replace(cfg.model, name=cfg.model.name or getattr(encoder, "arch", None) or "vit",
                      num_classes=classes, img_size=size),
        objective=replace(cfg.objective, num_classes=classes),
    )
    describe = {"checkpoint": {"path": str(Path(cfg.finetune.checkpoint).resolve()),
                               "sha256": checkpoint_sha256(cfg.finetune.checkpoint)},
                "data": {k: str(Path(v).resolve()) if Path(v).exists() else v
                         for k, v in (("train", train_spec), ("val", val_spec))},
                "num_classes": classes}
    return cfg, encoder.train(), describe


def run_finetune(cfg: FinetuneConfig) -> dict[str, Any]:
    """Fine-tune, validating on the val split after every epoch; write ``<run_dir>/finetune.json``.

    Returns the metrics dict (``val_top1`` / ``val_top5`` of the final model, ``best_val_top1``,
    ``history``, ``model_path``, ``metrics_path`` on the main process).
    """
    start = time.time()
    cfg, encoder, describe = prepare_finetune(cfg)
    mean, std = cfg.data.mean, cfg.data.std
    history: list[dict[str, Any]] = []
    loaders: dict[str, Any] = {}

    def validate(ctx: EpochContext) -> dict[str, float]:
        loaders["accelerator"] = ctx.accelerator
        if "val" not in loaders:
            loaders["val"] = make_eval_loader(describe["data"]["val"], cfg.model.img_size, cfg.finetune.eval_batch_size,
                                              cfg.data.num_workers, ctx.accelerator, cfg.finetune.eval_crop_pct)
        result = evaluate_classifier(ctx.encoder, loaders["val"], mean, std, ctx.accelerator)
        history.append({"epoch": ctx.epoch, "step": ctx.step, "val_top1": result["top1"], "val_top5": result["top5"]})
        ctx.accelerator.print(f"epoch {ctx.epoch} step {ctx.step}: val top-1 {result['top1']:.2f}%")
        return {"val_top1": result["top1"], "val_top5": result["top5"]}

    result = train(cfg, encoder=encoder, on_epoch_end=validate, desc="finetune", hooks=online_hooks(cfg))
    state = PartialState()
    if not history or history[-1]["step"] != result.steps:
        accelerator = loaders.get("accelerator") or Accelerator()
        final = load_checkpoint(result.model_path).to(accelerator.device)
        loader = make_eval_loader(describe["data"]["val"], cfg.model.img_size, cfg.finetune.eval_batch_size,
                                  cfg.data.num_workers, accelerator, cfg.finetune.eval_crop_pct)
        scores = evaluate_classifier(final, loader, mean, std, accelerator)
        history.append({"epoch": None, "step": result.steps, "val_top1": scores["top1"], "val_top5": scores["top5"]})
    global_batch = cfg.data.batch_size * resolve_grad_accum(cfg.train.grad_accum)[0] * state.num_processes
    o = cfg.optim
    metrics = {
        "evaluator": "finetune",
        **describe,
        "recipe": {
            "peak_lr": o.lr if o.lr is not None else o.base_lr * global_batch / 256, "base_lr": o.base_lr,
            "layer_decay": o.layer_decay, "weight_decay": o.weight_decay, "global_batch": global_batch,
            "steps": result.steps, "epochs": cfg.train.epochs, "image_size": cfg.model.img_size,
            "drop_path_rate": cfg.model.drop_path_rate, "mixup_alpha": cfg.objective.mixup_alpha,
            "cutmix_alpha": cfg.objective.cutmix_alpha, "label_smoothing": cfg.objective.label_smoothing,
            "rand_augment": cfg.finetune.rand_augment, "reprob": cfg.finetune.reprob,
        },
        "val_top1": history[-1]["val_top1"],
        "val_top5": history[-1]["val_top5"],
        "best_val_top1": max(h["val_top1"] for h in history),
        "history": history,
        "run_dir": str(result.run_dir),
        "model_path": str(result.model_path),
        "seconds": round(time.time() - start, 2),
    }
    if state.is_main_process:
        metrics["model_sha256"] = checkpoint_sha256(result.model_path)
        metrics["metrics_path"] = str(write_metrics(result.run_dir / "finetune.json", metrics))
    return metrics


FINETUNE_HELP = {
    "finetune.checkpoint": dataclasses.fields(FinetuneOptions)[0].metadata["help"],
    "data.train_shards": "training split (shard spec); '' = the built-in digits train split",
    "data.val_shards": "validation split, evaluated after every epoch; '' = the built-in digits val split",
    "data.image_size": "fine-tuning resolution; another size than the checkpoint's resamples the position "
                       "embeddings",
    "data.mean": "pixel mean in [0,1]; null = the checkpoint's run, else the data manifest, else ImageNet's",
    "model.name": "variant of a plain state dict (e.g. vit_base_patch16); '' = from the checkpoint",
    "model.drop_path_rate": "stochastic depth rate of the last block (linear from 0)",
    "model.num_classes": "classes of the new head; 0 = objective.num_classes or the train manifest",
    "objective.name": "must stay 'supervised'",
    "objective.label_smoothing": "label smoothing of the cross-entropy targets",
    "objective.mixup_alpha": "MixUp Beta(alpha, alpha); 0 = off",
    "objective.cutmix_alpha": "CutMix Beta(alpha, alpha); 0 = off",
    "objective.num_classes": "classes of the new head; 0 = from the train manifest",
    "optim.base_lr": "peak lr per 256 images of global batch (used when optim.lr is null)",
    "optim.layer_decay": "layer-wise lr decay: a layer's lr is peak * decay ** (depth + 1 - layer)",
    "optim.weight_decay": "AdamW weight decay (not on norms, biases, position embeddings, class token)",
    "train.epochs": "epochs over the training split; validation runs after each",
    "data.num_workers": "data loader worker processes per rank",
    "data.mode": "'finite' epochs over the shards, or 'resampled' (needs data.samples_per_epoch)",
    "data.shuffle_buffer": "samples in the streaming shuffle buffer",
    "data.crop_scale": "random-resized-crop area range",
    "data.hflip": "random horizontal flips",
    "data.std": "pixel std in [0,1]; null = as for data.mean",
    "model.img_size": "null = data.image_size",
    "model.patch_size": "unused: the patch size is the checkpoint's",
    "model.global_pool": "'token' or 'avg' pooling before the head; null = the checkpoint's",
    "model.pos_embed": "'learned' fine-tunes a sin-cos checkpoint's fixed table as a learned one (MAE's "
                       "fine-tune); 'block_relative' gives every block its own copy of a shared_relative "
                       "checkpoint's bias table (SimMIM's ViT fine-tune); null = the checkpoint's kind",
    "model.fc_norm": "true: average-pool the raw patch tokens and normalise the pooled feature with a fresh "
                     "LayerNorm, dropping the checkpoint's final norm (MAE's global_pool fine-tune); null = the "
                     "checkpoint's",
    "model.class_token": "unused: the class token is the checkpoint's",
    "objective.loss": "'ce' softmax cross-entropy or 'bce' sigmoid cross-entropy",
    "optim.name": "'adamw', 'adam' or 'sgd' (momentum optim.momentum)",
    "model.head_type": "'linear': the whole head, a pretrained pre-logits layer included, becomes one fresh linear "
                       "layer (the ViT paper's fine-tune); 'pre_logits': a fresh tanh layer + linear; null = the "
                       "checkpoint's",
    "optim.min_lr": "lr at the end of the schedule",
    "optim.betas": "Adam betas",
    "optim.warmup_epochs": "linear warmup length in epochs (when optim.warmup_steps is null)",
    "optim.schedule": "lr decay after warmup",
    "optim.clip_grad": "clip the global gradient norm to this value; null = off",
    "train.grad_accum": "micro-batches per optimizer step",
    "train.compile": "torch.compile the model",
    "train.seed": "random seed",
    "train.log_every": "log every N optimizer steps",
    "train.keep_last": "step checkpoints kept",
    "train.out_dir": "parent directory of the run directory",
    "train.trackers": "accelerate trackers (tensorboard, wandb, ...)",
    "train.progress": "show a progress bar",
    "objective.rand_augment": "refused here: a fine-tune's RandAugment is finetune.rand_augment",
    "objective.reprob": "refused here: a fine-tune's random erasing is finetune.reprob",
    **{f"objective.{k}": "pretraining only; unused here" for k in (
        "mask_ratio", "norm_pix_loss", "decoder_depth", "decoder_dim", "decoder_heads", "mask_patch_size",
        "mpp_target", "mpp_p_mask", "mpp_p_random")},
}
