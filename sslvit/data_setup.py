"""From a run config to the training loader: shard resolution, statistics and transforms."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from accelerate import Accelerator

from sslvit.config import RunConfig

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


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

    def make_loader(self, masker: Callable | None = None) -> Any:
        """The streaming loader for this rank, with the objective's training transform and labels
        rule, and ``masker`` building masks per batch."""
        from sslvit.data import build_loader
        from sslvit.objectives import objective_class

        d = self.cfg.data
        objective = objective_class(self.cfg.objective.name)
        transform = objective.train_transform(d)
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
        )


def default_shards(split: str, image_size: int, accelerator: Accelerator | None = None) -> str:
    """The built-in digits corpus split, built on first use by the main process while the others wait."""
    from sslvit.data import ensure_digits_shards

    if accelerator is None or accelerator.is_main_process:
        paths = ensure_digits_shards(image_size=image_size)
    if accelerator is not None:
        accelerator.wait_for_everyone()
        if not accelerator.is_main_process:
            paths = ensure_digits_shards(image_size=image_size)
    return str(paths[split])


def resolve_train_data(cfg: RunConfig, accelerator: Accelerator) -> TrainData:
    """Resolve ``cfg.data.train_shards`` ("" = built-in digits) and its mean / std."""
    from sslvit.data import load_manifest, resolve_shards

    spec = cfg.data.train_shards or default_shards("train", cfg.data.digits_image_size, accelerator)
    resolve_shards(spec)  # raises naming the pattern / path when nothing matches
    manifest = None
    try:
        manifest = load_manifest(spec)
    except (FileNotFoundError, ValueError, OSError):
        manifest = None
    stats_mean = (manifest or {}).get("mean")
    stats_std = (manifest or {}).get("std")
    mean = tuple(cfg.data.mean or stats_mean or IMAGENET_MEAN)
    std = tuple(cfg.data.std or stats_std or IMAGENET_STD)
    total = (manifest or {}).get("total")
    return TrainData(spec, mean, std, total, cfg, accelerator.process_index, accelerator.num_processes)
