"""From a run config to the training loader: shard resolution, statistics, label checks and transforms.

A training run belongs to a *stage*, which picks its training transform:

- ``"pretrain"``: the objective's own training transform (``Objective.train_transform``; MAE's
  RandomResizedCrop + flip for every objective in this package);
- ``"finetune"``: :func:`sslvit.data.transforms.finetune_transform` with the config's
  ``finetune.rand_augment`` / ``finetune.reprob`` (RandAugment + random erasing, MAE's recipe).

The stage is declared by the config class (``FinetuneConfig.stage = "finetune"``; a plain
:class:`~sslvit.training.config.RunConfig` pretrains) or passed to :func:`resolve_train_data`, and
:meth:`TrainData.make_loader` takes an explicit ``transform`` too. Evaluation splits (fine-tune
validation, probe and kNN features) use :func:`sslvit.data.transforms.eval_transform` through
:func:`sslvit.evaluate.features.make_eval_loader`.

``hf:`` training specs are converted once into shards under ``<train.out_dir>/hf_shards/``
(:func:`sslvit.data.hf.resolve_spec`) and streamed from there.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator

from sslvit.config import ConfigError
from sslvit.data import build_loader, ensure_digits_shards, load_manifest, resolve
from sslvit.data.builtin import builtin_name
from sslvit.data.device_decode import unsupported_ops
from sslvit.data.hf import resolve_spec
from sslvit.data.stats import IMAGENET_MEAN, IMAGENET_STD
from sslvit.data.transforms import finetune_transform
from sslvit.objectives import objective_class
from sslvit.training.config import RunConfig
from sslvit.training.launch import check_jpeg_decode

STAGES = ("pretrain", "finetune")


def stage_of(cfg: RunConfig) -> str:
    """The stage a config's class declares (``stage`` class attribute); ``"pretrain"`` for a RunConfig."""
    stage = getattr(type(cfg), "stage", "pretrain")
    if stage not in STAGES:
        raise ConfigError(f"{type(cfg).__name__}.stage: expected one of {list(STAGES)}, got {stage!r}")
    return stage


def stage_transform(cfg: RunConfig, stage: str, mean: tuple[float, ...] = IMAGENET_MEAN,
                    std: tuple[float, ...] = IMAGENET_STD) -> Any:
    """The training transform of ``stage`` for ``cfg`` (see the module docstring).

    ``mean`` / ``std`` (in [0, 1] units) set the fine-tune transform's RandAugment fill and
    random-erasing noise. An unknown stage, or ``"finetune"`` without a ``finetune`` section, raises.
    """
    d = cfg.data
    if stage == "pretrain":
        return objective_class(cfg.objective.name).train_transform(d, cfg.objective, mean, std)
    if stage == "finetune":
        options = getattr(cfg, "finetune", None)
        if options is None:
            raise ConfigError(f"stage 'finetune' needs a config with a finetune section "
                              f"(sslvit.evaluate.finetune.FinetuneConfig), got {type(cfg).__name__}")
        return finetune_transform(d.image_size, scale=tuple(d.crop_scale), hflip=d.hflip,
                                  rand_augment=options.rand_augment or None, reprob=options.reprob,
                                  mean=mean, std=std)
    raise ConfigError(f"stage: expected one of {list(STAGES)}, got {stage!r}")


@dataclass
class TrainData:
    """Resolved training data: the shard spec, normalisation statistics and how to build the loader."""

    shards: Any
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    num_samples: int | None
    cfg: RunConfig
    rank: int
    world_size: int
    stage: str = "pretrain"
    num_classes: int | None = None  # classes of the head when the objective trains on labels

    def train_transform(self) -> Any:
        """The training transform of this data's stage (:func:`stage_transform`)."""
        return stage_transform(self.cfg, self.stage, self.mean, self.std)

    def make_loader(self, masker: Callable | None = None, *, transform: Callable | None = None) -> Any:
        """The streaming loader for this rank, with ``transform`` (default: this stage's training
        transform, :meth:`train_transform`), the objective's labels rule, and ``masker`` building
        masks per batch. With labels, ``num_classes`` goes to the loader, which skips and counts
        labels outside [0, num_classes)."""
        d = self.cfg.data
        objective = objective_class(self.cfg.objective.name)
        if transform is None:
            transform = self.train_transform()
        if self.rank == 0:
            print(" ".join(f"{self.stage} training transform: {transform!r}".split()), flush=True)
        return build_loader(
            self.shards,
            batch_size=d.batch_size,
            transform=transform,
            num_workers=d.num_workers,
            mode=d.mode,
            samples_per_epoch=d.samples_per_epoch,
            seed=self.cfg.train.seed,
            rank=self.rank,
            world_size=self.world_size,
            need_labels=objective.needs_labels,
            masker=masker,
            shuffle_buffer=d.shuffle_buffer,
            num_classes=self.num_classes if objective.needs_labels else None,
            label_key=d.label_key,
            key_dot=d.key_dot,
            repeats=d.repeats,
            in_memory=d.in_memory,
            in_memory_mb=d.in_memory_mb,
            decode_on=self._decode_device(transform),
        )

    def _decode_device(self, transform: Callable) -> torch.device | None:
        """Where the main process decodes JPEGs (``data.jpeg_decode=nvjpeg``: this rank's GPU), else None."""
        d = self.cfg.data
        if d.jpeg_decode != "nvjpeg":
            return None
        check_jpeg_decode(d.jpeg_decode, torch.cuda.is_available())
        unsupported = unsupported_ops(transform)
        if unsupported:
            raise ConfigError(f"data.jpeg_decode=nvjpeg: the {self.stage} transform has {', '.join(unsupported)}, "
                              "which the GPU decode does not apply (it crops and flips); use data.jpeg_decode=cpu")
        if d.repeats > 1:
            raise ConfigError("data.jpeg_decode=nvjpeg with data.repeats > 1: repeated views are cut from one CPU "
                              "decode; use data.jpeg_decode=cpu")
        return torch.device("cuda", torch.cuda.current_device())


def default_shards(split: str, image_size: int, accelerator: Accelerator | None = None) -> str:
    """The built-in digits corpus split, built on first use by the main process while the others wait."""
    if accelerator is None or accelerator.is_main_process:
        paths = ensure_digits_shards(image_size=image_size)
    if accelerator is not None:
        accelerator.wait_for_everyone()
        if not accelerator.is_main_process:
            paths = ensure_digits_shards(image_size=image_size)
    return str(paths[split])


def hf_cache_dir(cfg: RunConfig) -> Path:
    """Where ``hf:`` data specs of a training run are converted into shards: ``<train.out_dir>/hf_shards``."""
    return Path(cfg.train.out_dir) / "hf_shards"


def resolve_data_spec(spec: str, cfg: RunConfig, state: Any = None, key: str = "data.train_shards") -> str:
    """A shard spec for a data key: ``hf:`` specs become shards under :func:`hf_cache_dir` (converted
    once by the main process; the path is printed there), a built-in corpus split
    (``fashion-mnist:train``) its folder (built once), anything else is returned unchanged."""
    if not spec.startswith("hf:") and not builtin_name(spec):
        return spec

    out = resolve_spec(spec, hf_cache_dir(cfg), state)
    if state is None or state.is_main_process:
        print(f"{key}={spec}: reading shards at {out}", flush=True)
    return out


def manifest_label_bound(manifest: dict[str, Any] | None) -> int | None:
    """One more than the largest label a shard manifest vouches for (class count, class names or
    label range), or None when it does not know."""
    if not manifest:
        return None
    bounds = []
    if manifest.get("num_classes"):
        bounds.append(int(manifest["num_classes"]))
    names = manifest.get("class_names") or manifest.get("classes")
    if names:
        bounds.append(len(names))
    for key in ("label_max", "max_label"):
        if manifest.get(key) is not None:
            bounds.append(int(manifest[key]) + 1)
    label_range = manifest.get("label_range")
    if isinstance(label_range, (list, tuple)) and len(label_range) == 2 and label_range[1] is not None:
        bounds.append(int(label_range[1]) + 1)
    return max(bounds) if bounds else None


def check_label_range(manifest: dict[str, Any] | None, num_classes: int, spec: str, key: str) -> None:
    """Refuse shards whose manifest knows labels outside [0, ``num_classes``) before any training.

    ``key`` names the setting that gave ``num_classes``. Without a manifest (or a label range in it)
    nothing is checked here; the loader then skips and counts out-of-range labels.
    """
    bound = manifest_label_bound(manifest)
    if bound is not None and num_classes > 0 and bound > num_classes:
        where = (manifest or {}).get("base") or spec
        raise ConfigError(f"{key}: the head has {num_classes} classes, but the manifest of {where} records "
                          f"labels up to {bound - 1} ({bound} classes); set {key}={bound} or use shards "
                          f"with labels in [0, {num_classes})")


def head_classes(cfg: RunConfig) -> tuple[int, str]:
    """Classes of the head that labels train and the key that set it (``objective.num_classes``,
    else ``model.num_classes``); 0 when neither is set."""
    objective_classes = int(getattr(cfg.objective, "num_classes", 0) or 0)
    if objective_classes:
        return objective_classes, "objective.num_classes"
    return int(cfg.model.num_classes or 0), "model.num_classes"


def read_manifest(spec: str) -> dict[str, Any] | None:
    """The manifest of ``spec``, or None when it has none (or it cannot be read)."""
    try:
        return load_manifest(spec)
    except (FileNotFoundError, ValueError, OSError):
        return None


def shard_set_summary(shards: Any) -> dict[str, Any] | None:
    """What a resolved shard set knows, in manifest form: the combined statistics, counts and classes
    of several folders' manifests (comma lists, brace patterns over folders), or None."""
    summary = {
        "base": ", ".join(sorted(set(shards.sources or []))) or None,
        "mean": shards.mean,
        "std": shards.std,
        "total": shards.num_samples,
        "class_names": shards.class_names,
        "num_classes": shards.num_classes,
    }
    return summary if any(v is not None for k, v in summary.items() if k != "base") else None


def resolve_train_data(cfg: RunConfig, accelerator: Accelerator, stage: str | None = None) -> TrainData:
    """Resolve ``cfg.data.train_shards`` ("" = built-in digits, ``hf:`` = converted into shards), its
    mean / std, the run's stage (default: :func:`stage_of`) and, when the objective trains on labels,
    check the manifest's label range against the head's classes."""
    stage = stage or stage_of(cfg)
    if stage not in STAGES:
        raise ConfigError(f"stage: expected one of {list(STAGES)}, got {stage!r}")
    spec = cfg.data.train_shards or default_shards("train", cfg.data.digits_image_size, accelerator)
    spec = resolve_data_spec(spec, cfg, accelerator)
    shard_set = resolve(spec)  # raises naming the pattern / path when nothing matches
    manifest = read_manifest(spec) or shard_set_summary(shard_set)
    num_classes = None
    if objective_class(cfg.objective.name).needs_labels:
        classes, key = head_classes(cfg)
        check_label_range(manifest, classes, spec, key)
        num_classes = classes or None
    stats_mean = (manifest or {}).get("mean")
    stats_std = (manifest or {}).get("std")
    mean = tuple(cfg.data.mean or stats_mean or IMAGENET_MEAN)
    std = tuple(cfg.data.std or stats_std or IMAGENET_STD)
    if min(std) <= 0:
        source = "data.std" if cfg.data.std else f"the manifest of {(manifest or {}).get('base') or spec}"
        raise ConfigError(f"data.std: {source} gives std {list(std)}; a channel without spread would divide "
                          "every normalised pixel by zero; set data.std (e.g. [0.229, 0.224, 0.225])")
    total = (manifest or {}).get("total")
    return TrainData(spec, mean, std, total, cfg, accelerator.process_index, accelerator.num_processes,
                     stage, num_classes)
