"""Supervised classification: cross-entropy with label smoothing (or sigmoid BCE), MixUp / CutMix."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torchvision.transforms import v2

from sslvit.config import DataConfig, ObjectiveConfig, opt
from sslvit.data.stats import IMAGENET_MEAN, IMAGENET_STD
from sslvit.data.transforms import finetune_transform
from sslvit.models.encoder import Encoder
from sslvit.objectives.base import Metrics, Objective


@dataclass
class SupervisedConfig(ObjectiveConfig):
    """Supervised classification: classes, loss and label mixing."""

    name: str = "supervised"
    num_classes: int = opt(0, "classes of the head; 0 = the encoder's own head (model.num_classes)", ge=0)
    label_smoothing: float = opt(0.1, "label smoothing of the targets", ge=0, lt=1)
    mixup_alpha: float = opt(0.0, "MixUp Beta(alpha, alpha) parameter; 0 = off", ge=0)
    cutmix_alpha: float = opt(0.0, "CutMix Beta(alpha, alpha) parameter; 0 = off", ge=0)
    loss: Literal["ce", "bce"] = opt(
        "ce",
        "'ce' softmax cross-entropy or 'bce' sigmoid cross-entropy summed over classes (big_vision)",
    )
    rand_augment: str = opt(
        "",
        "training RandAugment in timm's syntax when training from scratch ('' = off); a fine-tune takes "
        "finetune.rand_augment instead",
    )
    reprob: float = opt(
        0.0,
        "training random-erasing probability when training from scratch (0 = off); a fine-tune takes "
        "finetune.reprob instead",
        ge=0,
        le=1,
    )


class Supervised(Objective):
    """Classify with the encoder's head.

    cfg: ``num_classes`` (0 keeps the encoder's head; a different count replaces it), ``label_smoothing``,
    ``mixup_alpha`` / ``cutmix_alpha`` (0 = off; both on = one of the two per batch, chosen at
    random; applied on the device, in training mode only), ``loss``: ``"ce"`` (softmax cross-entropy)
    or ``"bce"`` (sigmoid cross-entropy summed over classes, as in big_vision). Samples with
    ``valid == False`` or label -1 take no part in the loss. Metrics: ``loss`` and, when the batch
    was not mixed, ``acc1``.
    """

    name = "supervised"
    Config = SupervisedConfig
    needs_labels = True
    uses_pooled_features = True
    card_fields = ("label_smoothing", "mixup_alpha", "cutmix_alpha", "num_classes")

    @classmethod
    def train_transform(
        cls,
        data: DataConfig,
        objective: ObjectiveConfig | None = None,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
    ) -> Any:
        """RandomResizedCrop + flip, plus ``objective.rand_augment`` and ``objective.reprob`` when set
        (DeiT's and Swin's ImageNet recipes train from scratch with both)."""
        rand_augment = getattr(objective, "rand_augment", "")
        reprob = getattr(objective, "reprob", 0.0)
        if not rand_augment and not reprob:
            return super().train_transform(data, objective, mean, std)
        return finetune_transform(data.image_size, scale=tuple(data.crop_scale), hflip=data.hflip,
                                  rand_augment=rand_augment or None, reprob=reprob, mean=mean, std=std)

    def __init__(
        self,
        encoder: Encoder,
        cfg: SupervisedConfig,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
    ):
        super().__init__(encoder, cfg, mean, std)
        num_classes = cfg.num_classes or encoder.num_classes
        if num_classes <= 0:
            raise ValueError("supervised objective needs num_classes > 0 (objective.num_classes)")
        if encoder.num_classes != num_classes:
            encoder.reset_classifier(num_classes)
        if cfg.loss not in ("ce", "bce"):
            raise ValueError(f"loss must be 'ce' or 'bce', got {cfg.loss!r}")
        self.num_classes = num_classes
        self.loss_kind = cfg.loss
        self.label_smoothing = float(cfg.label_smoothing)
        mixers = []
        if cfg.mixup_alpha > 0:
            mixers.append(v2.MixUp(alpha=cfg.mixup_alpha, num_classes=num_classes))
        if cfg.cutmix_alpha > 0:
            mixers.append(v2.CutMix(alpha=cfg.cutmix_alpha, num_classes=num_classes))
        self.mix = v2.RandomChoice(mixers) if len(mixers) == 2 else (mixers[0] if mixers else None)

    def loss_per_sample(
        self, logits: torch.Tensor, labels: torch.Tensor, soft: torch.Tensor | None
    ) -> torch.Tensor:
        """logits: (N, C), labels: int64 (N,) in [0, C), soft: optional mixed targets (N, C) -> (N,)."""
        logits, eps, c = logits.float(), self.label_smoothing, self.num_classes
        if self.loss_kind == "ce" and soft is None:
            return F.cross_entropy(logits, labels, label_smoothing=eps, reduction="none")
        target = F.one_hot(labels, c).float() if soft is None else soft.float()
        target = target * (1 - eps) + eps / c
        if self.loss_kind == "ce":
            return -(target * logits.log_softmax(dim=-1)).sum(dim=-1)
        return F.binary_cross_entropy_with_logits(logits, target, reduction="none").sum(dim=-1)

    def forward(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, Metrics]:
        """batch with "image" and "label" -> (loss, {"loss", "acc1" when unmixed})."""
        images = self.normalize(batch["image"])
        labels = batch["label"].to(images.device)
        weights = self.sample_weights(batch) * (labels >= 0).float()
        labels = labels.clamp_min(0)
        soft = None
        if self.training and self.mix is not None:
            images, soft = self.mix(images, labels)
        logits = self.encoder(images)
        loss = self.weighted_mean(self.loss_per_sample(logits, labels, soft), weights)
        metrics: Metrics = {"loss": loss.detach()}
        if soft is None:
            correct = (logits.argmax(dim=-1) == labels).float()
            metrics["acc1"] = self.weighted_mean(correct, weights).detach()
        return loss, metrics
