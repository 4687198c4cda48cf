"""Masked autoencoder (He et al., 2022): encode visible patches, decode pixels of the hidden ones.

Parameter names follow facebookresearch/mae (``decoder_embed``, ``mask_token``,
``decoder_pos_embed``, ``decoder_blocks``, ``decoder_norm``, ``decoder_pred``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from sslvit.config import ConfigError, ObjectiveConfig, join_key, opt
from sslvit.data.stats import IMAGENET_MEAN, IMAGENET_STD
from sslvit.models.encoder import Encoder, visible_indices
from sslvit.models.layers import Block, block_flops
from sslvit.models.pos_embed import sincos_2d
from sslvit.objectives.base import Metrics, Objective
from sslvit.objectives.masking import RandomMasker


@dataclass
class MAEConfig(ObjectiveConfig):
    """MAE: mask ratio, targets and the decoder."""

    name: str = "mae"
    mask_ratio: float = opt(0.75, "share of patches hidden per image", gt=0, lt=1)
    norm_pix_loss: bool = opt(True, "pixel targets normalised per patch (mean 0, std 1)")
    decoder_depth: int = opt(8, "decoder transformer blocks", ge=1)
    decoder_dim: int = opt(512, "decoder width (a multiple of objective.decoder_heads)", ge=1)
    decoder_heads: int = opt(16, "decoder attention heads", ge=1)

    def check(self, key: str) -> None:
        """Refuse a decoder width that its heads do not divide."""
        if self.decoder_dim % self.decoder_heads:
            dim, heads = join_key(key, "decoder_dim"), join_key(key, "decoder_heads")
            raise ConfigError(f"{dim}: {self.decoder_dim} is out of range; allowed: a multiple of {heads} "
                              f"({self.decoder_heads})")


class MAE(Objective):
    """MSE on hidden patches of (per-patch normalised, by default) pixels, via a light decoder.

    cfg: :class:`MAEConfig`. The decoder reuses the encoder's ``Block`` with fixed 2-D sin-cos
    positions. The encoder must drop hidden patches (capability ``token_drop``).
    """

    name = "mae"
    Config = MAEConfig
    requires = frozenset({"token_drop"})
    card_fields = ("mask_ratio", "norm_pix_loss", "decoder_depth", "decoder_dim")

    def __init__(
        self,
        encoder: Encoder,
        cfg: MAEConfig,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
    ):
        super().__init__(encoder, cfg, mean, std)
        dim, prefix = cfg.decoder_dim, encoder.num_prefix_tokens
        self.norm_pix_loss = bool(cfg.norm_pix_loss)
        self.masker = RandomMasker(self.grid, self.mask_ratio)
        self.decoder_embed = nn.Linear(encoder.num_features, dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, dim))
        table = torch.cat([torch.zeros(prefix, dim), sincos_2d(self.grid, dim)])[None]
        self.register_buffer("decoder_pos_embed", table, persistent=True)
        self.decoder_blocks = nn.ModuleList(Block(dim, cfg.decoder_heads) for _ in range(cfg.decoder_depth))
        self.decoder_norm = nn.LayerNorm(dim, eps=1e-6)
        self.decoder_pred = nn.Linear(dim, self.patch_size**2 * 3)
        for name, module in self.named_modules():
            if name.startswith("decoder") and isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                nn.init.zeros_(module.bias)
        nn.init.normal_(self.mask_token, std=0.02)

    def decode(self, latent: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """latent: (N, P + L_kept, D_enc), mask: bool (N, L) -> pred: (N, L, patch_size**2 * 3)."""
        prefix = self.encoder.num_prefix_tokens
        x = self.decoder_embed(latent)
        n, dim = x.shape[0], x.shape[-1]
        ids = visible_indices(mask)[..., None].expand(-1, -1, dim)
        full = self.mask_token.to(x.dtype).expand(n, self.num_patches, dim)
        full = torch.scatter(full, 1, ids, x[:, prefix:])
        x = torch.cat([x[:, :prefix], full], dim=1) + self.decoder_pos_embed.to(x.dtype)
        for block in self.decoder_blocks:
            x = block(x)
        return self.decoder_pred(self.decoder_norm(x))[:, prefix:]

    def targets(self, images: torch.Tensor) -> torch.Tensor:
        """images: normalised (N, 3, H, W) -> (N, L, patch_size**2 * 3), per-patch normalised if set."""
        target = self.patchify(images)
        if self.norm_pix_loss:
            mean = target.mean(dim=-1, keepdim=True)
            var = target.var(dim=-1, keepdim=True)
            target = (target - mean) / (var + 1e-6) ** 0.5
        return target

    def loss_from_prediction(
        self,
        pred: torch.Tensor,
        images: torch.Tensor,
        mask: torch.Tensor,
        weights: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Mean over hidden patches of the per-patch MSE.

        pred: (N, L, patch_size**2 * 3), images: normalised (N, 3, H, W), mask: bool (N, L),
        weights: optional (N,) sample weights -> scalar.
        """
        per_patch = ((pred.float() - self.targets(images)) ** 2).mean(dim=-1)
        w = mask.float()
        if weights is not None:
            w = w * weights[:, None]
        return self.weighted_mean(per_patch, w)

    def forward(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, Metrics]:
        """batch with "image" and "mask" (drawn here if absent) -> (loss, {"loss", "mask_ratio"})."""
        images = self.normalize(batch["image"])
        (mask,) = self.masks(batch)
        pred = self.decode(self.encoder.forward_features(images, mask), mask)
        loss = self.loss_from_prediction(pred, images, mask, self.sample_weights(batch))
        return loss, {"loss": loss.detach(), "mask_ratio": mask.float().mean().detach()}

    @torch.no_grad()
    def reconstruct(self, images: torch.Tensor, mask: torch.Tensor) -> dict[str, torch.Tensor]:
        """Pictures of the reconstruction.

        images: uint8 or [0, 1] (N, 3, H, W), mask: bool (N, L) -> {"image", "pred", "pasted"}: (N, 3, H, W)
        in [0, 1] (pasted = visible input + predicted hidden patches), "mask_img": (N, 1, H, W), 1 = hidden.
        With ``norm_pix_loss`` the prediction is mapped back with each true patch's mean and std.
        """
        x = self.normalize(images)
        pred = self.decode(self.encoder.forward_features(x, mask), mask).float()
        if self.norm_pix_loss:
            target = self.patchify(x)
            mean, var = target.mean(dim=-1, keepdim=True), target.var(dim=-1, keepdim=True)
            pred = pred * (var + 1e-6) ** 0.5 + mean
        pred = self.unnormalize(self.unpatchify(pred)).clamp(0, 1)
        image = self.to01(images)
        mask_img = self.mask_to_pixels(mask)
        return {
            "image": image,
            "pred": pred,
            "pasted": image * (1 - mask_img) + pred * mask_img,
            "mask_img": mask_img,
        }

    def flops_per_image(self) -> int:
        """Encoder on visible patches + decoder on all tokens (multiply-add = 2)."""
        enc = self.encoder
        visible = self.num_patches - self.masker.num_masked
        dim, dec_tokens = self.decoder_embed.out_features, enc.num_prefix_tokens + self.num_patches
        flops = enc.flops_per_image(visible_patches=visible, include_head=False)
        flops += 2 * (enc.num_prefix_tokens + visible) * enc.num_features * dim
        flops += len(self.decoder_blocks) * block_flops(dec_tokens, dim, 4 * dim)
        return flops + 2 * dec_tokens * dim * self.decoder_pred.out_features
