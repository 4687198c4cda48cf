"""PoolFormer, the MetaFormer of "MetaFormer Is Actually What You Need for Vision" (Yu et al., 2022).

A hierarchical backbone with average pooling as its token mixer: a 7x7 stride-4 convolution stem,
then stages of PoolFormer blocks, each stage after the first opening with a 3x3 stride-2
convolution. Parameter names follow timm's ``metaformer.py`` exactly (``stem.conv``,
``stages.{i}.downsample.conv``, ``stages.{i}.blocks.{j}.{norm1,layer_scale1.scale,norm2,mlp.fc1,
mlp.fc2,layer_scale2.scale}``, ``head.norm``, ``head.fc``), so timm's ``poolformer_*`` weights
load as they are.

Geometry: the stem's output grid is the patch grid (``patch_size`` = 4, the stem stride); output
tokens come from the last stage's map, row-major, ``output_stride`` = 4 x 2^(downsamplings).
There is no class token. As in timm, the final norm (``head.norm``) is applied to the globally
averaged vector, not to each token: ``forward_features`` returns the last stage's tokens and
:meth:`PoolFormer.pool` averages them and then applies ``head.norm``.

Masks (SimMIM): the hidden patches' pixels are blanked, the stem runs, the stem tokens of hidden
patches are replaced by the mask token, then the stages run on the full grid.
"""

from __future__ import annotations

import copy
import re
from typing import Any

import torch
from torch import nn

from sslvit.models.encoder import Encoder, replace_masked
from sslvit.models.poolformer_layers import (
    DOWN_KERNEL,
    DOWN_PADDING,
    DOWN_STRIDE,
    MLP_RATIO,
    STEM_KERNEL,
    STEM_PADDING,
    STEM_STRIDE,
    PoolFormerHead,
    PoolFormerStage,
    Stem,
    conv_out,
)
from sslvit.models.registry import variant

__all__ = ["FAMILY", "MODELS", "PoolFormer", "TIMM_VARIANTS"]

# timm's PoolFormer v1 variants: their entry points fix these three arguments
TIMM_VARIANTS: dict[str, dict[str, Any]] = {
    "poolformer_s12": dict(depths=[2, 2, 6, 2], dims=[64, 128, 320, 512], layer_scale_init_value=1e-5),
    "poolformer_s24": dict(depths=[4, 4, 12, 4], dims=[64, 128, 320, 512], layer_scale_init_value=1e-5),
    "poolformer_s36": dict(depths=[6, 6, 18, 6], dims=[64, 128, 320, 512], layer_scale_init_value=1e-6),
    "poolformer_m36": dict(depths=[6, 6, 18, 6], dims=[96, 192, 384, 768], layer_scale_init_value=1e-6),
    "poolformer_m48": dict(depths=[8, 8, 24, 8], dims=[96, 192, 384, 768], layer_scale_init_value=1e-6),
}
_STAGE_KEY = re.compile(r"stages\.(\d+)\.(?:blocks\.(\d+)|downsample)\.")


class PoolFormer(Encoder):
    """PoolFormer v1 behind the encoder interface (channels-first inside, tokens outside).

    Args: ``img_size`` (a multiple of 4), ``in_chans``, ``num_classes`` (0 = no classifier),
    ``drop_path_rate`` (linear over all blocks, as timm), ``arch``, ``depths`` and ``dims`` per
    stage, ``layer_scale_init_value`` (None = no layer scale).
    """

    family = "poolformer"
    supports = frozenset({"mask_token"})
    lacks = {
        "token_drop": "the pooling token mixer and the strided convolutions need the full grid, "
        "so hidden patches cannot be dropped",
        "patch_tokens": "the output grid (stride 4 x 2^(stages - 1)) is coarser than the patch grid "
        "(stride 4), and the overlapping 7x7 stem is no per-patch embedding",
        "attention_maps": "there is no attention: the token mixer is average pooling",
    }

    def __init__(
        self,
        img_size: int | tuple[int, int] | list[int] = 224,
        in_chans: int = 3,
        num_classes: int = 0,
        drop_path_rate: float = 0.0,
        arch: str | None = None,
        depths: tuple[int, ...] | list[int] = (2, 2, 6, 2),
        dims: tuple[int, ...] | list[int] = (64, 128, 320, 512),
        layer_scale_init_value: float | None = 1e-5,
    ):
        super().__init__()
        depths, dims = [int(d) for d in depths], [int(d) for d in dims]
        if len(depths) != len(dims) or not depths or min(depths) < 1:
            raise ValueError(
                f"depths {depths} and dims {dims} must be non-empty, of equal length, depths >= 1"
            )
        self.arch = arch
        self.embed_dim, self.num_features = dims[0], dims[-1]
        self.num_prefix_tokens, self.global_pool = 0, "avg"
        self.num_classes = int(num_classes)
        self._config: dict[str, Any] = dict(
            img_size=img_size,
            in_chans=int(in_chans),
            num_classes=self.num_classes,
            drop_path_rate=float(drop_path_rate),
            arch=arch,
            depths=depths,
            dims=dims,
            layer_scale_init_value=None if layer_scale_init_value is None else float(layer_scale_init_value),
        )
        self.stem = Stem(in_chans, dims[0])
        rates = torch.linspace(0, float(drop_path_rate), sum(depths), device="cpu").tolist()
        stages, start, prev = [], 0, dims[0]
        for depth, dim in zip(depths, dims, strict=True):
            stages.append(
                PoolFormerStage(prev, dim, depth, layer_scale_init_value, rates[start : start + depth])
            )
            start, prev = start + depth, dim
        self.stages = nn.Sequential(*stages)
        self.head = PoolFormerHead(self.num_features, self.num_classes)
        self.apply(_init_weights)
        self.set_img_size(img_size)

    # geometry ---------------------------------------------------------------------------------
    @property
    def img_size(self) -> tuple[int, int]:
        return self._img_size

    @property
    def patch_size(self) -> int:
        return STEM_STRIDE

    @property
    def output_stride(self) -> int:
        return STEM_STRIDE * 2 ** sum(stage.downsamples for stage in self.stages)

    @property
    def feature_grid(self) -> tuple[int, int]:
        """(fh, fw) of the last stage's map: the patch grid halved (rounding up) per downsampling."""
        fh, fw = self.patch_grid
        for stage in self.stages:
            if stage.downsamples:
                fh, fw = (conv_out(s, DOWN_KERNEL, DOWN_STRIDE, DOWN_PADDING) for s in (fh, fw))
        return fh, fw

    @property
    def num_layers(self) -> int:
        return sum(self._config["depths"]) + 1

    @property
    def num_feature_blocks(self) -> int:
        return self._config["depths"][-1]

    # forward ----------------------------------------------------------------------------------
    def _check_size(self, images: torch.Tensor) -> None:
        if tuple(images.shape[-2:]) != self.img_size:
            raise ValueError(
                f"input size {tuple(images.shape[-2:])} != model size {self.img_size}; "
                "call set_img_size first"
            )

    @staticmethod
    def _tokens(fmap: torch.Tensor) -> torch.Tensor:
        """fmap: (N, C, H, W) -> tokens (N, H * W, C), row-major."""
        return fmap.flatten(2).transpose(1, 2)

    def _map(self, tokens: torch.Tensor) -> torch.Tensor:
        """Stem tokens (N, L, embed_dim) -> map (N, embed_dim, gh, gw) over the patch grid."""
        gh, gw = self.patch_grid
        if tokens.shape[1:] != (gh * gw, self.embed_dim):
            raise ValueError(
                f"tokens have shape {tuple(tokens.shape)}, expected (N, {gh * gw}, {self.embed_dim})"
            )
        return tokens.transpose(1, 2).reshape(tokens.shape[0], self.embed_dim, gh, gw)

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """Stem: images (N, C, H, W) -> tokens (N, L, embed_dim), L = (H/4) * (W/4) row-major."""
        self._check_size(images)
        return self._tokens(self.stem(images))

    def _stem_map(
        self, x: torch.Tensor, mask: torch.Tensor | None, mask_token: torch.Tensor | None
    ) -> torch.Tensor:
        """Images (N, C, H, W) or stem tokens (N, L, D) [+ mask (N, L), mask_token (1, 1, D)]
        -> stem map (N, D, gh, gw) with hidden positions holding the mask token."""
        self.check_mask(mask, mask_token)
        if x.ndim == 3:
            if mask is not None:
                raise ValueError(
                    "masking needs images, not stem tokens: the overlapping 7x7 stem mixes "
                    "neighbouring pixels, so hidden pixels must be blanked before it"
                )
            return self._map(x)
        self._check_size(x)
        if mask is None:
            return self.stem(x)
        tokens = self._tokens(self.stem(self.hide_pixels(x, mask)))
        return self._map(replace_masked(tokens, mask, mask_token))

    def forward_features(
        self, x: torch.Tensor, mask: torch.Tensor | None = None, mask_token: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Tokens of the last stage: images (N, C, H, W) or stem tokens (N, L, embed_dim), optional
        bool mask (N, L) with mask_token (1, 1, embed_dim) -> (N, fh * fw, num_features) row-major.

        No per-token norm: timm's final norm (``head.norm``) acts on the pooled vector, in ``pool``.
        """
        return self._tokens(self.stages(self._stem_map(x, mask, mask_token)))

    def forward_blocks(self, x: torch.Tensor, last_k: int = 1) -> list[torch.Tensor]:
        """The last ``last_k`` blocks of the last stage, earliest first: images (N, C, H, W) ->
        [(N, fh * fw, num_features)] * last_k; the last equals ``forward_features(x)``.

        Like ``forward_features`` they carry no per-token norm; ``pool`` applies ``head.norm`` to
        each after averaging, so pooled features of every block go through the head's norm.
        """
        if not 1 <= last_k <= self.num_feature_blocks:
            raise ValueError(f"last_k must be in 1..{self.num_feature_blocks}, got {last_k}")
        fmap = self.stages[:-1](self._stem_map(x, None, None))
        last = self.stages[-1]
        fmap, outs = last.downsample(fmap), []
        for j, block in enumerate(last.blocks):
            fmap = block(fmap)
            if j >= len(last.blocks) - last_k:
                outs.append(self._tokens(fmap))
        return outs

    def pool(self, tokens: torch.Tensor, how: str | None = None) -> torch.Tensor:
        """Pool "avg" as timm's head: mean over tokens, then ``head.norm``: (N, L, F) -> (N, F).

        PoolFormer has no class token, so "token" and "token+avg" raise ValueError.
        """
        how = how or self.global_pool
        if how != "avg":
            return super().pool(tokens, how)  # raises: unknown pool or no class token
        return self.head.norm(tokens.mean(dim=1))

    # parameters -------------------------------------------------------------------------------
    def reset_classifier(self, num_classes: int) -> None:
        """A fresh ``head.fc`` with ``num_classes`` outputs (identity for 0); ``head.norm`` is kept."""
        self.num_classes = self._config["num_classes"] = int(num_classes)
        self.head.set_classes(self.num_classes)

    def set_img_size(self, img_size: int | tuple[int, int] | list[int]) -> None:
        """Record another input size (a multiple of 4); there is no position table to resample."""
        h, w = (int(img_size), int(img_size)) if isinstance(img_size, int) else map(int, img_size)
        if h % STEM_STRIDE or w % STEM_STRIDE:
            raise ValueError(f"image size {(h, w)} is not a multiple of the stem stride {STEM_STRIDE}")
        self._img_size = (h, w)
        self._config["img_size"] = h if h == w else [h, w]

    def get_config(self) -> dict[str, Any]:
        """JSON-ready constructor arguments with ``arch`` and ``family``."""
        return {
            **self._config,
            "depths": list(self._config["depths"]),
            "dims": list(self._config["dims"]),
            "family": self.family,
        }

    def pool_only_parameters(self) -> set[str]:
        return {n for n, _ in self.named_parameters() if n.startswith("head.norm.")}

    def no_weight_decay(self) -> set[str]:
        """Nothing beyond the 1-D rule: timm's MetaFormer excludes no other parameter."""
        return set()

    def layer_id(self, name: str) -> int:
        """stem 0; block j of stage i -> 1 + sum(depths[:i]) + j; a stage's downsample -> its first
        block's id; the head (and anything after the blocks) -> ``num_layers``."""
        name = name.removeprefix("encoder.")
        if name.startswith(("stem.", "mask_token")):
            return 0
        match = _STAGE_KEY.match(name)
        if not match:
            return self.num_layers
        i, j = int(match.group(1)), int(match.group(2) or 0)
        return 1 + sum(self._config["depths"][:i]) + j

    def patch_filters(self) -> torch.Tensor | None:
        """The stem filters (dims[0], in_chans, 7, 7)."""
        return self.stem.conv.weight

    def flops_per_image(self, visible_patches: int | None = None, include_head: bool = True) -> int:
        """Analytic forward FLOPs per image (multiply-add = 2): stem and downsampling convolutions,
        the 1x1 MLPs and the classifier; norms and pooling are left out. The full grid always runs
        (hidden patches are replaced, not dropped), so ``visible_patches`` does not change it."""
        cfg = self._config
        h, w = (conv_out(s, STEM_KERNEL, STEM_STRIDE, STEM_PADDING) for s in self.img_size)
        flops = 2 * h * w * cfg["in_chans"] * STEM_KERNEL**2 * cfg["dims"][0]
        prev = cfg["dims"][0]
        for stage, depth, dim in zip(self.stages, cfg["depths"], cfg["dims"], strict=True):
            if stage.downsamples:
                h, w = (conv_out(s, DOWN_KERNEL, DOWN_STRIDE, DOWN_PADDING) for s in (h, w))
                flops += 2 * h * w * prev * DOWN_KERNEL**2 * dim
            flops += depth * 2 * h * w * 2 * dim * MLP_RATIO * dim
            prev = dim
        if include_head and self.num_classes > 0:
            flops += 2 * self.num_features * self.num_classes
        return flops

    def timm_spec(self) -> dict[str, Any] | str:
        """The timm variant with these depths / widths / layer scale; ``in_chans`` the only extra
        argument. timm's ``poolformer_*`` entry points fix depths, dims and layer scale (passing them
        raises TypeError), so other sizes have no ``create_model`` spelling."""
        cfg = self._config
        mine = {k: cfg[k] for k in ("depths", "dims", "layer_scale_init_value")}
        for name, spec in TIMM_VARIANTS.items():
            if spec == mine:
                args = {} if cfg["in_chans"] == 3 else {"in_chans": cfg["in_chans"]}
                return {"architecture": name, "model_args": args, "exact": not args}
        return (
            f"timm's poolformer_* entry points fix depths, dims and layer scale, so depths={cfg['depths']} "
            f"dims={cfg['dims']} layer_scale_init_value={cfg['layer_scale_init_value']} is only "
            "buildable as timm.models.metaformer.MetaFormer(...) with the PoolFormer v1 layers"
        )

    @classmethod
    def owns_state_dict(cls, state: dict[str, torch.Tensor]) -> bool:
        """A PoolFormer v1 state dict: timm's MetaFormer stem without a stem norm, biased GroupNorms
        and a parameter-free (pooling) token mixer (ConvFormer / CAFormer / PoolFormer v2 differ)."""
        keys = {k.removeprefix("encoder.") for k in state}
        return (
            "stem.conv.weight" in keys
            and "stem.norm.weight" not in keys
            and "stages.0.blocks.0.norm1.bias" in keys
            and "stages.0.blocks.0.mlp.fc1.bias" in keys
            and not any(".token_mixer." in k for k in keys)
        )


def _init_weights(module: nn.Module) -> None:
    """timm's MetaFormer init: convolutions and linears truncated normal (std 0.02), zero bias."""
    if isinstance(module, (nn.Conv2d, nn.Linear)):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)


FAMILY = PoolFormer

MODELS = {
    name: variant(PoolFormer, name, img_size=224, **copy.deepcopy(spec))
    for name, spec in TIMM_VARIANTS.items()
}
MODELS.update(
    {
        # 32 px digits on CPU: patch 4 (8x8 grid, the unit of masks), three stages 8x8 -> 4x4 -> 2x2
        "poolformer_nano_32": variant(
            PoolFormer,
            "poolformer_nano_32",
            img_size=32,
            depths=[2, 4, 2],
            dims=[48, 96, 192],
            layer_scale_init_value=1e-5,
        ),
        # unit tests: 32 px, three stages, two blocks in the last (so forward_blocks can return two)
        "poolformer_pico_32": variant(
            PoolFormer,
            "poolformer_pico_32",
            img_size=32,
            depths=[1, 1, 2],
            dims=[8, 16, 32],
            layer_scale_init_value=1e-5,
        ),
    }
)
