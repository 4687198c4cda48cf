"""Masked patch prediction of the ViT paper (Dosovitskiy et al., 2021, appendix B.1.2).

Half of the patch embeddings are corrupted (80% -> learned [mask] embedding, 10% -> another random
patch of the image, 10% kept) and the model predicts each corrupted patch's 3-bit mean colour
(512 classes). The paper's ablations are options: ``color3bit_4x4`` predicts the 3-bit colours of a
4x4 downsized patch (16 predictions per patch); ``l2_patch`` regresses the full (normalised) patch.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from sslvit.config import ConfigError, ObjectiveConfig, join_key, opt
from sslvit.data.stats import IMAGENET_MEAN, IMAGENET_STD
from sslvit.models.encoder import Encoder
from sslvit.objectives.base import Metrics, Objective
from sslvit.objectives.masking import MPPCorruption

TARGETS = ("color3bit", "color3bit_4x4", "l2_patch")
NUM_COLORS = 512


def quantize3bit(colors01: torch.Tensor) -> torch.Tensor:
    """colors01: (..., 3) float in [0, 1] -> (...) int64 class r*64 + g*8 + b, each min(int(c*8), 7)."""
    q = (colors01 * 8).floor().clamp(0, 7).long()
    return q[..., 0] * 64 + q[..., 1] * 8 + q[..., 2]


def color3bit_target(images01: torch.Tensor, patch_size: int) -> torch.Tensor:
    """Mean colour class of each patch.

    images01: (N, 3, H, W) float in [0, 1] -> (N, L) int64 in [0, 512), L = (H / p) * (W / p) row-major.
    """
    means = F.avg_pool2d(images01.float(), patch_size)  # (N, 3, gh, gw)
    return quantize3bit(means.flatten(2).transpose(1, 2))


def color3bit_4x4_target(images01: torch.Tensor, patch_size: int) -> torch.Tensor:
    """Colour classes of each patch downsized to 4x4 (area average).

    images01: (N, 3, H, W) float in [0, 1] -> (N, L, 16) int64, the 16 row-major over the 4x4 cells.
    """
    n, c, h, w = images01.shape
    p = patch_size
    patches = images01.float().reshape(n, c, h // p, p, w // p, p).permute(0, 2, 4, 1, 3, 5)
    small = F.adaptive_avg_pool2d(patches.reshape(-1, c, p, p), 4)  # (N * L, 3, 4, 4)
    return quantize3bit(small.flatten(2).transpose(1, 2)).reshape(n, -1, 16)


@dataclass
class MPPConfig(ObjectiveConfig):
    """Masked patch prediction: how many patches are corrupted, how, and what is predicted."""

    name: str = "mpp"
    mask_ratio: float = opt(0.5, "share of patches corrupted per image", gt=0, le=1)
    mpp_target: Literal["color3bit", "color3bit_4x4", "l2_patch"] = opt(
        "color3bit",
        "what is predicted per corrupted patch: its 3-bit mean colour, the 3-bit colours of its 4x4 "
        "downsized version, or its normalised pixels (L2)",
    )
    mpp_p_mask: float = opt(0.8, "share of corrupted patches replaced by the [mask] embedding", ge=0, le=1)
    mpp_p_random: float = opt(
        0.1,
        "share of corrupted patches replaced by another patch of the image (the rest stay as they are)",
        ge=0,
        le=1,
    )

    def check(self, key: str) -> None:
        """Refuse corruption shares that add up to more than every corrupted patch."""
        if self.mpp_p_mask + self.mpp_p_random > 1:
            p_mask, p_random = join_key(key, "mpp_p_mask"), join_key(key, "mpp_p_random")
            raise ConfigError(f"{p_random}: {self.mpp_p_random!r} is out of range; allowed: {p_mask} + "
                              f"{p_random} <= 1 ({p_mask} is {self.mpp_p_mask!r})")


class MPP(Objective):
    """Corrupt patch embeddings, predict colour classes (or pixels) of the corrupted patches.

    cfg: :class:`MPPConfig`. The encoder must take per-patch tokens from ``embed`` and give one
    output token per patch (capability ``patch_tokens``).
    """

    name = "mpp"
    Config = MPPConfig
    requires = frozenset({"patch_tokens"})
    card_fields = ("mask_ratio", "mpp_target")

    def __init__(
        self,
        encoder: Encoder,
        cfg: MPPConfig,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
    ):
        super().__init__(encoder, cfg, mean, std)
        if cfg.mpp_target not in TARGETS:
            raise ValueError(f"mpp_target must be one of {TARGETS}, got {cfg.mpp_target!r}")
        self.target = cfg.mpp_target
        self.masker = MPPCorruption(self.grid, self.mask_ratio, cfg.mpp_p_mask, cfg.mpp_p_random)
        self.mask_token = nn.Parameter(nn.init.trunc_normal_(torch.zeros(1, 1, encoder.embed_dim), std=0.02))
        out = {"color3bit": NUM_COLORS, "color3bit_4x4": 16 * NUM_COLORS, "l2_patch": self.patch_size**2 * 3}
        self.head = nn.Linear(encoder.num_features, out[self.target])

    def corrupt(self, tokens: torch.Tensor, action: torch.Tensor, source: torch.Tensor) -> torch.Tensor:
        """tokens: (N, L, D), action / source: int64 (N, L) -> corrupted tokens (N, L, D)."""
        copied = torch.gather(tokens, 1, source[..., None].expand_as(tokens))
        a = action[..., None]
        out = torch.where(a == MPPCorruption.RANDOM, copied, tokens)
        return torch.where(a == MPPCorruption.MASK, self.mask_token.to(tokens.dtype), out)

    def loss_from_output(
        self,
        out: torch.Tensor,
        images01: torch.Tensor,
        mask: torch.Tensor,
        weights: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, Metrics]:
        """Loss over the corrupted patches.

        out: head output (N, L, K), images01: (N, 3, H, W) in [0, 1], mask: bool (N, L) corrupted,
        weights: optional (N,) -> (scalar loss, metrics with "acc" for the colour targets).
        """
        w = mask.float() if weights is None else mask.float() * weights[:, None]
        metrics: Metrics = {}
        if self.target == "l2_patch":
            per_patch = ((out.float() - self.patchify(self.normalize(images01))) ** 2).mean(dim=-1)
        else:
            if self.target == "color3bit":
                target = color3bit_target(images01, self.patch_size)[..., None]  # (N, L, 1)
            else:
                target = color3bit_4x4_target(images01, self.patch_size)  # (N, L, 16)
            logits = out.float().reshape(*target.shape, NUM_COLORS)
            ce = F.cross_entropy(logits.flatten(0, 2), target.flatten(), reduction="none")
            per_patch = ce.reshape(target.shape).mean(dim=-1)
            correct = (logits.argmax(dim=-1) == target).float().mean(dim=-1)
            metrics["acc"] = self.weighted_mean(correct, w).detach()
        return self.weighted_mean(per_patch, w), metrics

    def forward(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, Metrics]:
        """batch with "image" and the corruption keys (drawn here if absent) -> (loss, {"loss", "acc"?})."""
        images01 = self.to01(batch["image"])
        mask, action, source = self.masks(batch, ("mask", "mpp_action", "mpp_source"))
        tokens = self.corrupt(self.encoder.embed(self.normalize(images01)), action, source)
        z = self.encoder.forward_features(tokens)[:, self.encoder.num_prefix_tokens :]
        loss, metrics = self.loss_from_output(self.head(z), images01, mask, self.sample_weights(batch))
        return loss, {"loss": loss.detach(), **metrics}

    def flops_per_image(self) -> int:
        """Encoder on every patch + the prediction head (multiply-add = 2)."""
        flops = self.encoder.flops_per_image(include_head=False)
        return flops + 2 * self.num_patches * self.head.in_features * self.head.out_features
