"""SimMIM (Xie et al., 2022): hidden patch embeddings become a learned mask token; a linear head
predicts the raw (normalised) pixels; L1 loss on the hidden pixels."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from sslvit.masking import BlockMasker
from sslvit.models.vit import VisionTransformer
from sslvit.objectives.base import IMAGENET_MEAN, IMAGENET_STD, Metrics, Objective


class SimMIM(Objective):
    """Block-masked image modelling with a one-layer prediction head.

    cfg: ``mask_ratio`` (default 0.6) and ``mask_patch_size`` (default 32 px cells; see
    ``BlockMasker`` for the fallback on small images). The head is a linear map of each patch token
    to ``patch_size**2 * 3`` pixels (a 1x1 convolution followed by pixel shuffle, in SimMIM's words).
    """

    name = "simmim"
    default_mask_ratio = 0.6

    def __init__(
        self,
        encoder: VisionTransformer,
        cfg: Any,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
    ):
        super().__init__(encoder, cfg, mean, std)
        self.masker = BlockMasker(self.grid, self.mask_ratio, cfg.mask_patch_size, self.patch_size)
        self.mask_token = nn.Parameter(nn.init.trunc_normal_(torch.zeros(1, 1, encoder.embed_dim), std=0.02))
        self.decoder = nn.Linear(encoder.embed_dim, self.patch_size**2 * 3)

    def embed(self, images: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """images: normalised (N, 3, H, W), mask: bool (N, L) -> patch tokens (N, L, D), hidden = mask token."""
        tokens = self.encoder.patch_embed(images)
        w = mask.unsqueeze(-1).to(tokens.dtype)
        return tokens * (1 - w) + self.mask_token.to(tokens.dtype) * w

    def predict(self, images: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """images: normalised (N, 3, H, W), mask: bool (N, L) -> predicted pixels (N, 3, H, W)."""
        z = self.encoder.forward_features(self.embed(images, mask))[:, self.encoder.num_prefix_tokens :]
        return self.unpatchify(self.decoder(z))

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
        return flops + 2 * self.num_patches * self.decoder.in_features * self.decoder.out_features
