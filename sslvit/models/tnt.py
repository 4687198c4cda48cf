"""TNT, "Transformer in Transformer" (Han et al., 2021), behind the :class:`Encoder` interface.

Each patch is split into ``ceil(p / first_stride)`` ** 2 pixel tokens (width ``inner_dim``) by a
7x7 convolution over the patch; an inner transformer mixes the pixel tokens of each patch, their
projection is added to the patch's outer token (width ``embed_dim``) at every block, and an outer
transformer mixes the class token and the patch tokens. Parameter names are timm's
(``timm/models/tnt.py``, non-legacy layout), so timm's ``tnt_s_patch16_224`` and
``tnt_b_patch16_224`` weights load with ``strict=True``.

Masks: ``token_drop`` drops the hidden patches' outer tokens and their inner pixel tokens before
the blocks (the hidden pixels are never embedded); ``mask_token`` blanks the hidden pixels, so the
hidden patches' pixel tokens carry no content, and replaces the hidden outer tokens by the mask
token. The outer position table ``patch_pos`` (``outer_pos``) and the inner one ``pixel_pos``
(``inner_pos``) can each be switched off; a switched-off table is no parameter at all.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from sslvit.models.encoder import POOLS, Encoder, block_layer_id, keep_visible, replace_masked
from sslvit.models.layers import block_flops
from sslvit.models.pos_embed import resample_pos_embed
from sslvit.models.registry import variant
from sslvit.models.tnt_layers import Block, PixelEmbed, cut_patches

EMBEDDINGS = ("pixel_embed.", "norm1_proj.", "proj.", "norm2_proj.", "cls_token", "patch_pos", "pixel_pos",
              "mask_token")
ARCH_KEYS = ("patch_size", "in_chans", "embed_dim", "inner_dim", "depth", "num_heads_inner",
             "num_heads_outer", "mlp_ratio", "qkv_bias", "first_stride", "global_pool")
# timm's TNT class defaults, and its registered variants on top of them
TIMM_DEFAULTS = dict(img_size=224, patch_size=16, in_chans=3, embed_dim=768, inner_dim=48, depth=12,
                     num_heads_inner=4, num_heads_outer=12, mlp_ratio=4.0, qkv_bias=False, first_stride=4,
                     global_pool="token")
TIMM_VARIANTS = {
    "tnt_s_patch16_224": {**TIMM_DEFAULTS, "embed_dim": 384, "inner_dim": 24, "num_heads_outer": 6},
    "tnt_b_patch16_224": {**TIMM_DEFAULTS, "embed_dim": 640, "inner_dim": 40, "num_heads_outer": 10},
}


def _size(img_size: int | tuple[int, int] | list[int]) -> tuple[int, int]:
    """An image size as (H, W): an int means a square."""
    return (int(img_size), int(img_size)) if isinstance(img_size, int) else (int(img_size[0]), int(img_size[1]))


class TNT(Encoder):
    """Transformer in Transformer with a class token; outputs the outer tokens.

    ``embed_dim`` / ``num_heads_outer``: width and heads of the outer (patch) transformer;
    ``inner_dim`` / ``num_heads_inner``: those of the inner (pixel) transformer, whose MLP is 4x wide;
    ``first_stride``: stride of the 7x7 pixel convolution, so a patch has ``ceil(patch_size /
    first_stride)`` ** 2 pixel tokens; ``outer_pos`` / ``inner_pos``: learned ``patch_pos`` (1, 1 + L, D)
    and ``pixel_pos`` (1, inner_dim, s, s) tables, each absent when off.
    """

    family = "tnt"
    supports = frozenset({"token_drop", "mask_token", "attention_maps"})
    lacks = {
        "patch_tokens": "the inner pixel tokens feed every outer token at every block, so corrupting "
        "the outer patch embedding alone would leave the patch's pixels visible through its inner tokens",
    }

    def __init__(
        self,
        img_size: int | tuple[int, int] | list[int] = 224,
        patch_size: int = 16,
        in_chans: int = 3,
        num_classes: int = 0,
        global_pool: str = "token",
        embed_dim: int = 384,
        inner_dim: int = 24,
        depth: int = 12,
        num_heads_inner: int = 4,
        num_heads_outer: int = 6,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = False,
        first_stride: int = 4,
        outer_pos: bool = True,
        inner_pos: bool = True,
        drop_path_rate: float = 0.0,
        arch: str | None = None,
    ):
        super().__init__()
        if global_pool not in POOLS:
            raise ValueError(f"unknown global_pool {global_pool!r}; use one of {', '.join(POOLS)}")
        h, w = _size(img_size)
        self._config: dict[str, Any] = dict(
            img_size=h if h == w else [h, w], patch_size=int(patch_size), in_chans=int(in_chans),
            num_classes=int(num_classes), global_pool=global_pool, embed_dim=int(embed_dim),
            inner_dim=int(inner_dim), depth=int(depth), num_heads_inner=int(num_heads_inner),
            num_heads_outer=int(num_heads_outer), mlp_ratio=float(mlp_ratio), qkv_bias=bool(qkv_bias),
            first_stride=int(first_stride), outer_pos=bool(outer_pos), inner_pos=bool(inner_pos),
            drop_path_rate=float(drop_path_rate), arch=arch,
        )
        self.arch = arch
        self.embed_dim = self.num_features = int(embed_dim)
        self.num_prefix_tokens = 1
        self.global_pool = global_pool
        self.num_classes = int(num_classes)

        self.pixel_embed = PixelEmbed((h, w), patch_size, in_chans, inner_dim, first_stride)
        num_pixel, length = self.pixel_embed.num_pixel, self.pixel_embed.num_patches
        self.norm1_proj = nn.LayerNorm(num_pixel * inner_dim)
        self.proj = nn.Linear(num_pixel * inner_dim, embed_dim)
        self.norm2_proj = nn.LayerNorm(embed_dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.patch_pos = nn.Parameter(torch.zeros(1, 1 + length, embed_dim)) if outer_pos else None
        side = self.pixel_embed.new_patch_size
        self.pixel_pos = nn.Parameter(torch.zeros(1, inner_dim, side[0], side[1])) if inner_pos else None
        rates = [drop_path_rate * i / max(depth - 1, 1) for i in range(depth)]
        self.blocks = nn.ModuleList(
            Block(inner_dim, embed_dim, num_pixel, num_heads_inner, num_heads_outer, mlp_ratio, qkv_bias, r)
            for r in rates
        )
        self.norm = nn.LayerNorm(embed_dim)
        self.head: nn.Module = nn.Identity()
        for table in (self.cls_token, self.patch_pos, self.pixel_pos):
            if table is not None:
                nn.init.trunc_normal_(table, std=0.02)
        self.apply(self._init_module)
        self.reset_classifier(num_classes)

    @staticmethod
    def _init_module(m: nn.Module) -> None:
        """timm's init: truncated normal (std 0.02) linear weights, zero biases, unit norms."""
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)

    # geometry ---------------------------------------------------------------------------------
    @property
    def img_size(self) -> tuple[int, int]:
        return self.pixel_embed.img_size

    @property
    def patch_size(self) -> int:
        return self.pixel_embed.patch_size

    @property
    def num_layers(self) -> int:
        return len(self.blocks) + 1

    # forward ----------------------------------------------------------------------------------
    def _pixel_tokens(self, images: torch.Tensor, drop: torch.Tensor | None = None) -> torch.Tensor:
        """images (N, C, H, W), optional mask (N, L) of patches to drop -> pixel tokens (N * L', P, inner_dim)."""
        if images.ndim != 4:
            raise ValueError(f"{self.describe()} takes images (N, C, H, W), got shape {tuple(images.shape)}: "
                             "its inner pixel tokens cannot be rebuilt from patch tokens")
        if tuple(images.shape[-2:]) != self.img_size:
            raise ValueError(f"input size {tuple(images.shape[-2:])} != model size {self.img_size}; "
                             "call set_img_size first")
        patches = cut_patches(images, self.patch_size)
        if drop is not None:
            patches = keep_visible(patches, drop)
        return self.pixel_embed(patches, self.pixel_pos)

    def _outer_tokens(self, pixels: torch.Tensor, n: int) -> torch.Tensor:
        """pixel tokens (N * L', P, inner_dim) -> outer patch tokens (N, L', embed_dim)."""
        return self.norm2_proj(self.proj(self.norm1_proj(pixels.reshape(n, -1, self.proj.in_features))))

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """Outer patch tokens before class token and positions: images (N, C, H, W) -> (N, L, embed_dim)."""
        return self._outer_tokens(self._pixel_tokens(images), images.shape[0])

    def _prepare(
        self, images: torch.Tensor, mask: torch.Tensor | None = None, mask_token: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """images (N, C, H, W), mask (N, L) -> pixel tokens (N * L', P, inner_dim) and outer tokens
        (N, 1 + L', embed_dim) with class token and positions; L' = L, or the visible count when dropping."""
        self.check_mask(mask, mask_token)
        n = images.shape[0]
        drop = mask if mask is not None and mask_token is None else None
        if mask is not None and mask_token is not None:
            images = self.hide_pixels(images, mask)
        pixels = self._pixel_tokens(images, drop)
        tokens = self._outer_tokens(pixels, n)
        if mask is not None and mask_token is not None:
            tokens = replace_masked(tokens, mask, mask_token)
        cls = self.cls_token.expand(n, -1, -1)
        if self.patch_pos is not None:
            pos = self.patch_pos[:, 1:].expand(n, -1, -1)
            tokens = tokens + (keep_visible(pos, drop) if drop is not None else pos)
            cls = cls + self.patch_pos[:, :1]
        return pixels, torch.cat([cls, tokens], dim=1)

    def _run(
        self, pixels: torch.Tensor, tokens: torch.Tensor, attention: bool = False
    ) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """pixel tokens (N * L', P, inner_dim), outer tokens (N, 1 + L', D) -> the outer tokens after
        each block [(N, 1 + L', D)] * depth, and with ``attention`` the outer attention weights
        [(N, heads, 1 + L', 1 + L')] * depth (else [])."""
        outs, maps = [], []
        for block in self.blocks:
            if attention:
                pixels, tokens, attn = block.forward_with_attention(pixels, tokens)
                maps.append(attn)
            else:
                pixels, tokens = block(pixels, tokens)
            outs.append(tokens)
        return outs, maps

    def forward_features(
        self, x: torch.Tensor, mask: torch.Tensor | None = None, mask_token: torch.Tensor | None = None
    ) -> torch.Tensor:
        """images (N, C, H, W), optional mask bool (N, L) (hidden patches dropped, or replaced by
        ``mask_token`` (1, 1, embed_dim)) -> outer tokens after the final norm (N, 1 + L_out, embed_dim)."""
        return self.norm(self._run(*self._prepare(x, mask, mask_token))[0][-1])

    def forward_blocks(self, x: torch.Tensor, last_k: int = 1) -> list[torch.Tensor]:
        """images (N, C, H, W) -> outer tokens of the last ``last_k`` blocks, each through the final
        norm, earliest first: [(N, 1 + L, embed_dim)] * last_k."""
        if not 1 <= last_k <= len(self.blocks):
            raise ValueError(f"last_k must be in 1..{len(self.blocks)}, got {last_k}")
        outs, _ = self._run(*self._prepare(x))
        return [self.norm(t) for t in outs[-last_k:]]

    @property
    def num_feature_blocks(self) -> int:
        return len(self.blocks)

    def forward_with_attention(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """images (N, C, H, W) -> tokens (N, 1 + L, embed_dim), outer attention weights
        [(N, heads, 1 + L, 1 + L)] per block."""
        outs, maps = self._run(*self._prepare(x), attention=True)
        return self.norm(outs[-1]), maps

    # parameters -------------------------------------------------------------------------------
    def reset_classifier(self, num_classes: int) -> None:
        """A fresh linear head (truncated normal init) with ``num_classes`` outputs; 0 = none."""
        self.num_classes = self._config["num_classes"] = int(num_classes)
        if num_classes > 0:
            ref = self.norm.weight
            self.head = nn.Linear(self.num_features, num_classes, device=ref.device, dtype=ref.dtype)
            self._init_module(self.head)
        else:
            self.head = nn.Identity()

    def set_img_size(self, img_size: int | tuple[int, int]) -> None:
        """Adapt to another input size: patch_pos resampled bicubically over the patch grid
        (1, 1 + L_old, D) -> (1, 1 + L_new, D), class position kept; pixel_pos does not depend on it."""
        old_grid = self.patch_grid
        h, w = _size(img_size)
        self.pixel_embed.set_img_size((h, w))
        if self.patch_pos is not None:
            table = resample_pos_embed(self.patch_pos.data, self.patch_grid, 1, old_grid)
            self.patch_pos = nn.Parameter(table, requires_grad=self.patch_pos.requires_grad)
        self._config["img_size"] = h if h == w else [h, w]

    def get_config(self) -> dict[str, Any]:
        return {**self._config, "family": self.family}

    def no_weight_decay(self) -> set[str]:
        return {n for n, _ in self.named_parameters() if n in ("cls_token", "patch_pos", "pixel_pos")}

    def layer_id(self, name: str) -> int:
        """Embeddings (pixel_embed, norm1_proj, proj, norm2_proj, cls_token, patch_pos, pixel_pos) 0,
        ``blocks.i`` i + 1, final norm and head depth + 1."""
        return block_layer_id(name, "blocks", self.num_layers, EMBEDDINGS)

    def pos_table(self) -> torch.Tensor | None:
        """patch_pos without the class slot (1, L, embed_dim), or None when ``outer_pos`` is off."""
        return None if self.patch_pos is None else self.patch_pos[:, 1:]

    def patch_filters(self) -> torch.Tensor | None:
        """The pixel embedding's 7x7 filters (inner_dim, C, 7, 7)."""
        return self.pixel_embed.proj.weight

    def flops_per_image(self, visible_patches: int | None = None, include_head: bool = True) -> int:
        """Analytic forward FLOPs per image (multiply-add = 2): pixel-embedding convolution, the patch
        projections (stem and one per block), inner and outer attention and MLPs, the head.

        ``visible_patches`` counts the patches that reach the blocks (MAE: inner tokens dropped too).
        """
        c = self._config
        length = self.num_patches if visible_patches is None else int(visible_patches)
        pixels, inner, dim = self.pixel_embed.num_pixel, c["inner_dim"], self.embed_dim
        conv = 2 * length * pixels * inner * c["in_chans"] * 7 * 7
        proj = 2 * length * pixels * inner * dim
        block = length * block_flops(pixels, inner, 4 * inner) + proj
        block += block_flops(1 + length, dim, int(dim * c["mlp_ratio"]))
        flops = conv + proj + len(self.blocks) * block
        return flops + (2 * dim * self.num_classes if include_head else 0)

    def timm_spec(self) -> dict[str, Any] | str:
        """timm's ``TNT``: the registered variant whose architecture this is (``exact``), else
        ``tnt_s_patch16_224`` with every argument in ``model_args``; a reason where timm cannot."""
        c = self._config
        if not (c["outer_pos"] and c["inner_pos"]):
            return "timm's TNT always has both position tables (patch_pos and pixel_pos)"
        if c["global_pool"] not in ("token", "avg"):
            return f"global_pool={c['global_pool']!r} has no timm equivalent (timm pools 'token' or 'avg')"
        ours = {k: c[k] for k in ARCH_KEYS}
        match = [n for n, d in TIMM_VARIANTS.items() if {k: d[k] for k in ARCH_KEYS} == ours]
        architecture = match[0] if match else "tnt_s_patch16_224"
        h, w = self.img_size
        args = {"img_size": h if h == w else [h, w], "num_classes": self.num_classes, **ours}
        if c["drop_path_rate"]:
            args["drop_path_rate"] = c["drop_path_rate"]
        return {"architecture": architecture, "model_args": args, "exact": bool(match)}

    @classmethod
    def owns_state_dict(cls, state: dict[str, torch.Tensor]) -> bool:
        """A TNT state dict: it has the pixel embedding and inner attention (``attn_in``) weights."""
        return "pixel_embed.proj.weight" in state and any(".attn_in.qk." in k for k in state)


FAMILY = TNT
MODELS: dict[str, Callable[..., Encoder]] = {
    name: variant(TNT, name, **{k: v for k, v in cfg.items() if k != "global_pool"})
    for name, cfg in TIMM_VARIANTS.items()
}
# 32 px: 4 px patches of 2x2 pixel tokens (num_pixel * inner_dim = embed_dim, as in TNT-S / TNT-B)
MODELS["tnt_nano_patch4_32"] = variant(TNT, "tnt_nano_patch4_32", img_size=32, patch_size=4, first_stride=2,
                                       embed_dim=128, inner_dim=32, depth=6, num_heads_inner=4,
                                       num_heads_outer=4)
MODELS["tnt_pico_patch4_32"] = variant(TNT, "tnt_pico_patch4_32", img_size=32, patch_size=4, first_stride=2,
                                       embed_dim=32, inner_dim=8, depth=2, num_heads_inner=2,
                                       num_heads_outer=2)
