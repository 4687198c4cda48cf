"""SimMIM (Xie et al., 2022): hidden patch embeddings become a learned mask token; a linear head
predicts the raw (normalised) pixels; L1 loss on the hidden pixels."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from sslvit.config import ObjectiveConfig, opt
from sslvit.data.stats import IMAGENET_MEAN, IMAGENET_STD
from sslvit.models.encoder import Encoder
from sslvit.objectives.base import Metrics, Objective
from sslvit.objectives.masking import BlockMasker


@dataclass
class SimMIMConfig(ObjectiveConfig):
    """SimMIM: mask ratio and mask cell size."""

    name: str = "simmim"
    mask_ratio: float = opt(0.6, "share of mask cells hidden per image", gt=0, lt=1)
    mask_patch_size: int = opt(
        32,
        "side in pixels of a mask cell (a whole number of patches; else the largest cell of whole patches "
        "that fits, with a warning)",
        ge=1,
    )


class SimMIM(Objective):
    """Block-masked image modelling with a one-layer prediction head.

    cfg: :class:`SimMIMConfig` (see ``BlockMasker`` for the fallback on small images). The encoder
    replaces hidden patch tokens by the learned mask token (capability ``mask_token``); the head is a
    linear map of each output token to ``output_stride**2 * 3`` pixels (a 1x1 convolution followed
    by pixel shuffle, in SimMIM's words), so hierarchical encoders (Swin: stride 32) work as well.
    """

    name = "simmim"
    Config = SimMIMConfig
    requires = frozenset({"mask_token"})
    card_fields = ("mask_ratio", "mask_patch_size")

    def __init__(
        self,
        encoder: Encoder,
        cfg: SimMIMConfig,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
    ):
        super().__init__(encoder, cfg, mean, std)
        self.masker = BlockMasker(self.grid, self.mask_ratio, cfg.mask_patch_size, self.patch_size)
        self.mask_token = nn.Parameter(nn.init.trunc_normal_(torch.zeros(1, 1, encoder.embed_dim), std=0.02))
        self.stride = encoder.output_stride
        self.feature_grid = tuple(encoder.feature_grid)
        self.decoder = nn.Linear(encoder.num_features, self.stride**2 * 3)

    def predict(self, images: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """images: normalised (N, 3, H, W), mask: bool (N, L) -> predicted pixels (N, 3, H, W).

        Output tokens (N, L_out, F) -> (N, L_out, stride**2 * 3) -> pixels over the feature grid.
        """
        z = self.encoder.forward_features(images, mask, self.mask_token)[:, self.encoder.num_prefix_tokens :]
        return self.unpatchify(self.decoder(z), self.stride, self.feature_grid)

    def loss_from_prediction(
        self,
        pred: torch.Tensor,
        images: torch.Tensor,
        mask: torch.Tensor,
        weights: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Mean absolute error over hidden pixels and channels.

        pred, images: normalised (N, 3, H, W), mask: bool (N, L), weights: optional (N,) -> scalar.
        """
        l1 = (pred.float() - images).abs()
        w = self.mask_to_pixels(mask)
        if weights is not None:
            w = w * weights[:, None, None, None]
        return self.weighted_mean(l1, w.expand_as(l1))

    def forward(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, Metrics]:
        """batch with "image" and "mask" (drawn here if absent) -> (loss, {"loss", "mask_ratio"})."""
        images = self.normalize(batch["image"])
        (mask,) = self.masks(batch)
        loss = self.loss_from_prediction(self.predict(images, mask), images, mask, self.sample_weights(batch))
        return loss, {"loss": loss.detach(), "mask_ratio": mask.float().mean().detach()}

    def flops_per_image(self) -> int:
        """Encoder on every patch + the linear pixel head (multiply-add = 2)."""
        flops = self.encoder.flops_per_image(include_head=False)
        out_tokens = self.feature_grid[0] * self.feature_grid[1]
        return flops + 2 * out_tokens * self.decoder.in_features * self.decoder.out_features
