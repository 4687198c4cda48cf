"""The hybrid ViT of "An Image is Worth 16x16 Words" (section 3.1): a ResNet-v2 feature map cut
into 1x1 patches, projected to the ViT width, then the plain ViT.

Parameter names follow timm's ``vision_transformer_hybrid.py`` (``patch_embed.backbone.stem.conv``,
``patch_embed.backbone.stages.{i}.blocks.{j}.*``, ``patch_embed.proj``, then the ViT's ``cls_token``,
``pos_embed``, ``blocks.*``, ``norm``, ``head``), so timm's weights load as they are.

One input patch is one stem output pixel: ``patch_size`` is the stem's total stride (16 for
R50+ViT-B/16). The stem's receptive field spans neighbouring patches, so with a mask the hidden
patches' pixels are blanked before the stem, which still runs on the whole image; then the hidden
tokens are dropped (MAE) or replaced by the mask token (SimMIM).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from sslvit.models import vit_timm
from sslvit.models.encoder import Encoder
from sslvit.models.layers import _pair, block_flops
from sslvit.models.registry import variant
from sslvit.models.resnetv2 import ResNetV2, make_divisible, resnet_stride
from sslvit.models.vit import VisionTransformer

# timm's hybrid entry points fix the stem by name: layers -> the stem part of the name
TIMM_STEMS = {(3, 4, 9): "r50_s16", (2, 2, 2, 2): "r26_s32", (3, 4, 6, 3): "r50_s32"}
TIMM_WIDTHS = {(384, 12, 6): "small", (768, 12, 12): "base", (1024, 24, 16): "large"}
TIMM_VARIANTS = {
    "vit_small_r26_s32_224", "vit_small_r26_s32_384", "vit_base_r26_s32_224", "vit_base_r50_s16_224",
    "vit_base_r50_s16_384", "vit_large_r50_s32_224", "vit_large_r50_s32_384",
}
TIMM_CARRIERS = {"r50_s16": "vit_base_r50_s16_224", "r26_s32": "vit_small_r26_s32_224",
                 "r50_s32": "vit_large_r50_s32_224"}
RESNET_CHANNELS = (256, 512, 1024, 2048)


class HybridEmbed(nn.Module):
    """ResNet-v2 feature map -> tokens: ``backbone`` (stride ``patch_size``), then ``proj``, a 1x1
    convolution to the ViT width. Exposes what the ViT uses of a patch embedding."""

    def __init__(self, img_size: int | tuple[int, int], in_chans: int, embed_dim: int, layers: list[int],
                 channels: list[int], width: int, groups: int, stem_pool: bool):
        super().__init__()
        self.backbone = ResNetV2(layers, channels, in_chans, width, groups, stem_pool)
        self.proj = nn.Conv2d(self.backbone.num_features, embed_dim, kernel_size=1)
        self.patch_size = self.backbone.stride
        self.set_img_size(img_size)

    def set_img_size(self, img_size: int | tuple[int, int]) -> None:
        """Set the expected input size; it must be a multiple of the stem's stride."""
        self.img_size = _pair(img_size)
        if self.img_size[0] % self.patch_size or self.img_size[1] % self.patch_size:
            raise ValueError(f"image size {self.img_size} is not a multiple of the stem's stride {self.patch_size}")
        self.grid_size = (self.img_size[0] // self.patch_size, self.img_size[1] // self.patch_size)
        self.num_patches = self.grid_size[0] * self.grid_size[1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (N, C, H, W) -> (N, L, D), L = (H / s) * (W / s) row-major over the stem's output grid."""
        if tuple(x.shape[-2:]) != self.img_size:
            raise ValueError(f"input size {tuple(x.shape[-2:])} != model size {self.img_size}; call set_img_size first")
        return self.proj(self.backbone(x)).flatten(2).transpose(1, 2)

    def flops(self) -> int:
        """FLOPs of the stem's convolutions and the projection for one image (multiply-add = 2)."""
        return self.backbone.flops(self.img_size) + 2 * self.num_patches * self.proj.in_channels * self.proj.out_channels


class HybridVisionTransformer(VisionTransformer):
    """ResNet-v2 stem + ViT. Takes the ViT's arguments (less ``patch_size``, the stem's stride) plus
    the stem's: ``backbone_layers`` (bottlenecks per stage), ``backbone_channels`` (output width per
    stage, default 256, 512, 1024, 2048), ``backbone_width`` (stem width), ``backbone_groups`` (the
    GroupNorm groups) and ``backbone_pool`` (the stem's max-pool)."""

    family = "hybrid"
    supports = frozenset({"token_drop", "mask_token", "attention_maps"})
    lacks = {
        "patch_tokens": "masked patch prediction corrupts patch embeddings; the ResNet stem's overlapping "
        "receptive fields carry each corrupted patch's pixels into its neighbours' embeddings, so its "
        "colour target leaks",
    }

    def __init__(
        self,
        img_size: int | tuple[int, int] = 224,
        in_chans: int = 3,
        num_classes: int = 0,
        backbone_layers: tuple[int, ...] | list[int] = (3, 4, 9),
        backbone_channels: tuple[int, ...] | list[int] | None = None,
        backbone_width: int = 64,
        backbone_groups: int = 32,
        backbone_pool: bool = True,
        embed_dim: int = 768,
        depth: int = 12,
        num_heads: int = 12,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        class_token: bool = True,
        global_pool: str = "token",
        pos_embed: str = "learned",
        pos_embed_2d_mode: str = "sum",
        pos_embed_at: str = "input",
        drop_path_rate: float = 0.0,
        layer_scale_init: float | None = None,
        head_type: str = "linear",
        norm_eps: float = 1e-6,
        arch: str | None = None,
    ):
        config = {k: v for k, v in locals().items() if k not in ("self", "__class__")}
        layers = [int(d) for d in backbone_layers]
        if not layers:
            raise ValueError("the hybrid needs at least one ResNet stage (backbone_layers is empty)")
        channels = [make_divisible(c) for c in (backbone_channels or [256 * 2**i for i in range(len(layers))])]
        stem = dict(layers=layers, channels=channels, width=backbone_width, groups=backbone_groups,
                    stem_pool=backbone_pool)
        stride = resnet_stride(len(layers), backbone_pool)
        vit_args = {k: v for k, v in config.items() if not k.startswith("backbone_")}
        # the ViT builds a plain patch embedding of the same grid first (its tables are sized from it),
        # which is then swapped for the ResNet stem
        super().__init__(patch_size=stride, **vit_args)
        self.patch_embed = HybridEmbed(img_size, in_chans, embed_dim, **stem)
        self._init_stem()
        config.update(backbone_layers=layers, backbone_channels=channels, num_classes=self.num_classes,
                      img_size=self._config["img_size"])
        self._config = config

    @torch.no_grad()
    def _init_stem(self) -> None:
        """He-normal convolutions (fan-out) in the stem as timm's ResNetV2; the projection like a ViT's."""
        for m in self.patch_embed.backbone.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        w = self.patch_embed.proj.weight
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        nn.init.zeros_(self.patch_embed.proj.bias)

    # forward ----------------------------------------------------------------------------------
    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """images (N, C, H, W) -> projected stem tokens (N, L, D), no positions."""
        return self.patch_embed(images)

    def prepare_tokens(
        self, x: torch.Tensor, mask: torch.Tensor | None = None, mask_token: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Embedded input of the first block, hidden pixels blanked before the stem.

        x: images (N, C, H, W) (or tokens (N, L, D) from ``embed`` without a mask); mask: optional
        bool (N, L), True = hidden -> (N, P + L_kept, D) (dropped), or with ``mask_token``
        (1, 1, D) -> (N, P + L, D) (replaced).
        """
        self.check_mask(mask, mask_token)
        if mask is not None:
            if x.ndim != 4:
                raise ValueError(f"{self.describe()} takes a mask with images only: the stem's receptive fields "
                                 "span neighbouring patches, so hidden pixels are blanked before it runs")
            x = self.patch_embed(self.hide_pixels(x, mask))
        return super().prepare_tokens(x, mask, mask_token)

    # parameters -------------------------------------------------------------------------------
    @torch.no_grad()
    def patch_filters(self) -> torch.Tensor | None:
        """The stem's first convolution (width, C, 7, 7) as applied: each filter standardised (the
        stored weight's per-filter mean and scale never reach the image)."""
        return self.patch_embed.backbone.stem.conv.standardized_weight()

    def flops_per_image(self, visible_patches: int | None = None, include_head: bool = True) -> int:
        """Analytic forward FLOPs for one image (multiply-add = 2): the stem's convolutions and the
        projection on the whole image, the blocks on the prefix + ``visible_patches`` tokens (MAE;
        default all), the head."""
        c, dim = self._config, self.embed_dim
        flops = self.patch_embed.flops()
        tokens = self.num_prefix_tokens + (self.num_patches if visible_patches is None else visible_patches)
        flops += len(self.blocks) * block_flops(tokens, dim, int(dim * c["mlp_ratio"]))
        if not include_head:
            return flops
        if self.pre_logits is not None:
            flops += 2 * dim * dim
        return flops + 2 * dim * self.num_classes

    # timm -------------------------------------------------------------------------------------
    def timm_spec(self) -> dict[str, Any] | str:
        """timm's hybrid entry point for this stem (``vit_base_r50_s16_224`` ...) with the ViT's
        arguments; ``exact`` when the ViT also is that entry point's. timm fixes the stem by name,
        so any other stem is a reason string."""
        cfg = self._config
        layers, channels = tuple(cfg["backbone_layers"]), list(cfg["backbone_channels"])
        stem = TIMM_STEMS.get(layers)
        standard = (make_divisible(cfg["backbone_width"]) == 64 and cfg["backbone_groups"] == 32
                    and cfg["backbone_pool"] and channels == list(RESNET_CHANNELS[: len(layers)]))
        if stem is None or not standard:
            return (f"timm's hybrids fix the ResNet stem by name ((3, 4, 9), (2, 2, 2, 2) or (3, 4, 6, 3) "
                    f"bottlenecks, width 64, channels 256..2048, 32 groups, max-pool); this one has "
                    f"layers={list(layers)}, channels={channels}, width={cfg['backbone_width']}, "
                    f"groups={cfg['backbone_groups']}, pool={cfg['backbone_pool']}")
        reason = vit_timm.unsupported(cfg)
        if reason is not None:
            return reason
        h, w = self.img_size
        size = TIMM_WIDTHS.get((cfg["embed_dim"], cfg["depth"], cfg["num_heads"]))
        vit_default = (cfg["mlp_ratio"] == 4.0 and cfg["qkv_bias"] and cfg["class_token"] and cfg["in_chans"] == 3
                       and cfg["global_pool"] == "token" and not cfg["layer_scale_init"]
                       and cfg["pos_embed"] == "learned")
        architecture, exact = TIMM_CARRIERS[stem], False
        for res in (h if h == w else None, 224):
            name = f"vit_{size}_{stem}_{res}"
            if size and res and name in TIMM_VARIANTS:
                architecture, exact = name, vit_default
                break
        args = vit_timm.model_args(cfg, self.img_size, patch_size=False)
        return {"architecture": architecture, "model_args": args, "exact": exact}

    @classmethod
    def owns_state_dict(cls, state: dict[str, torch.Tensor]) -> bool:
        """A hybrid state dict has the ResNet stem's first convolution."""
        return "patch_embed.backbone.stem.conv.weight" in state

    @classmethod
    def infer_config(cls, state: dict[str, torch.Tensor]) -> dict[str, Any]:
        """Constructor arguments of a plain hybrid state dict: the registered variant with the same
        tensors (the head and the position table aside; one with the same table first), the class
        count from the head and the image size from the (square) position table."""
        stages: dict[int, set[int]] = {}
        for k in state:
            if k.startswith("patch_embed.backbone.stages."):
                i, _, j = k.split(".")[3:6]
                stages.setdefault(int(i), set()).add(int(j))
        layers = [len(stages[i]) for i in sorted(stages)]
        dim = state["patch_embed.proj.weight"].shape[0]
        classes = int(state["head.weight"].shape[0]) if "head.weight" in state else 0

        def shapes(sd: dict[str, torch.Tensor], table: bool) -> dict[str, tuple[int, ...]]:
            return {k: tuple(v.shape) for k, v in sd.items() if not k.startswith("head") and (table or k != "pos_embed")}

        matches = []
        for _, make in sorted(MODELS.items()):
            defaults = make.defaults  # type: ignore[attr-defined]
            if list(defaults["backbone_layers"]) != layers or defaults["embed_dim"] != dim:
                continue
            with torch.device("meta"):
                candidate = make(num_classes=classes)
            if shapes(candidate.state_dict(), False) == shapes(state, False):
                matches.append(candidate)
        if not matches:
            raise ValueError(
                f"this hybrid state dict (stem layers {layers}, width {dim}) matches no registered variant "
                f"({', '.join(list_hybrids())}): pass the variant name (--model NAME) and the options that differ"
            )
        same_table = [m for m in matches if shapes(m.state_dict(), True) == shapes(state, True)]
        model = (same_table or matches)[0]
        config = model.get_config()
        if "pos_embed" in state and not same_table:
            grid = int(round((state["pos_embed"].shape[1] - model.num_prefix_tokens) ** 0.5))
            config["img_size"] = grid * model.patch_size
        return config


def _timm_hybrid(name: str, layers: tuple[int, ...], size: str, img_size: int) -> Callable[..., Encoder]:
    """The variant constructor of one of timm's hybrids: stem ``layers``, ViT ``size`` at ``img_size``."""
    dims = {"small": dict(embed_dim=384, depth=12, num_heads=6), "base": dict(embed_dim=768, depth=12, num_heads=12),
            "large": dict(embed_dim=1024, depth=24, num_heads=16)}[size]
    return variant(HybridVisionTransformer, name, img_size=img_size, backbone_layers=list(layers), **dims)


def list_hybrids() -> list[str]:
    """The registered hybrid variants, sorted."""
    return sorted(MODELS)


FAMILY = HybridVisionTransformer
MODELS = {
    name: _timm_hybrid(name, layers, name.split("_")[1], int(name.rsplit("_", 1)[1]))
    for name, layers in [
        ("vit_small_r26_s32_224", (2, 2, 2, 2)), ("vit_small_r26_s32_384", (2, 2, 2, 2)),
        ("vit_base_r26_s32_224", (2, 2, 2, 2)), ("vit_base_r50_s16_224", (3, 4, 9)),
        ("vit_base_r50_s16_384", (3, 4, 9)), ("vit_large_r50_s32_224", (3, 4, 6, 3)),
    ]
}
# 32 px: 7x7 stride-2 conv without the max-pool, stages at 16 and 8 px -> 8x8 tokens of 4 px
MODELS["vit_nano_r_s4_32"] = variant(
    HybridVisionTransformer, "vit_nano_r_s4_32", img_size=32, backbone_layers=[2, 2], backbone_channels=[64, 128],
    backbone_width=32, backbone_groups=8, backbone_pool=False, embed_dim=128, depth=6, num_heads=4)
MODELS["vit_pico_r_s4_32"] = variant(
    HybridVisionTransformer, "vit_pico_r_s4_32", img_size=32, backbone_layers=[1, 1], backbone_channels=[16, 32],
    backbone_width=8, backbone_groups=4, backbone_pool=False, embed_dim=32, depth=2, num_heads=2)
