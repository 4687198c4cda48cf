"""The Swin Transformer of "Swin Transformer: Hierarchical Vision Transformer using Shifted Windows"
(Liu et al., 2021), behind the :class:`~sslvit.models.encoder.Encoder` interface.

Parameter names follow timm's ``swin_transformer.py`` (``patch_embed.{proj,norm}``,
``layers.{i}.downsample.{norm,reduction}`` at the start of stages 1.., ``layers.{i}.blocks.{j}...``,
``norm``, ``head.fc``), so timm's state dicts load with ``strict=True``. Internally channels-last
like timm; ``forward_features`` returns (N, L_out, C) tokens row-major over the feature grid.
Masks follow SimMIM: hidden patch tokens are replaced by the mask token after the patch
embedding's norm; hidden patches cannot be dropped.
"""

from __future__ import annotations

import re
from collections import OrderedDict
from typing import Any

import torch
from torch import nn

from sslvit.errors import InputError
from sslvit.models.encoder import Encoder, replace_masked
from sslvit.models.registry import variant
from sslvit.models.swin_layers import (
    PatchMerging,
    SwinPatchEmbed,
    SwinStage,
    clip_window,
    resample_bias_table,
)
from sslvit.progress import say

# architecture arguments of timm's variants (all at img_size 224, mlp_ratio 4, qkv_bias)
TIMM_VARIANTS: dict[str, dict[str, Any]] = {
    "swin_tiny_patch4_window7_224": dict(embed_dim=96, depths=[2, 2, 6, 2], num_heads=[3, 6, 12, 24]),
    "swin_small_patch4_window7_224": dict(embed_dim=96, depths=[2, 2, 18, 2], num_heads=[3, 6, 12, 24]),
    "swin_base_patch4_window7_224": dict(embed_dim=128, depths=[2, 2, 18, 2], num_heads=[4, 8, 16, 32]),
}
_TIMM_COMMON = dict(patch_size=4, window_size=7, mlp_ratio=4.0, qkv_bias=True, in_chans=3)
# buffers of other Swin implementations rebuilt from the geometry here (SimMIM deletes them too)
_REBUILT_BUFFERS = ("relative_position_index", "relative_coords_table", "attn_mask")


def _pair(x: int | tuple[int, int] | list[int]) -> tuple[int, int]:
    return (int(x), int(x)) if isinstance(x, int) else (int(x[0]), int(x[1]))


class SwinTransformer(Encoder):
    """Hierarchical Swin encoder: 4 x 4 patch embedding (patch_size), stages of shifted-window
    blocks with 2 x 2 patch merging between them, final LayerNorm, average pool, linear head."""

    family = "swin"
    supports = frozenset({"mask_token"})
    # constructor arguments a checkpoint may be loaded into with other values (its bias tables resampled)
    load_geometry = ("window_size", "img_size")
    lacks = {
        "token_drop": "shifted-window attention needs every token of the grid; hidden patches cannot be dropped",
        "patch_tokens": "patch merging makes the output grid coarser than the patch grid "
        "(one output token per output_stride x output_stride pixels, not per patch)",
        "attention_maps": "attention is computed inside local (shifted) windows, not over the whole patch grid",
    }

    def __init__(
        self,
        img_size: int | tuple[int, int] | list[int] = 224,
        patch_size: int = 4,
        in_chans: int = 3,
        num_classes: int = 0,
        embed_dim: int = 96,
        depths: tuple[int, ...] | list[int] = (2, 2, 6, 2),
        num_heads: tuple[int, ...] | list[int] = (3, 6, 12, 24),
        window_size: int = 7,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        drop_path_rate: float = 0.0,
        arch: str | None = None,
    ):
        super().__init__()
        depths, num_heads = [int(d) for d in depths], [int(h) for h in num_heads]
        if len(depths) != len(num_heads) or not depths:
            raise ValueError(f"depths {depths} and num_heads {num_heads} need one entry per stage")
        self._patch, self._window = int(patch_size), _pair(window_size)
        self._config: dict[str, Any] = dict(
            img_size=img_size if isinstance(img_size, int) else list(_pair(img_size)),
            patch_size=self._patch,
            in_chans=in_chans,
            num_classes=num_classes,
            embed_dim=embed_dim,
            depths=depths,
            num_heads=num_heads,
            window_size=window_size if isinstance(window_size, int) else list(self._window),
            mlp_ratio=mlp_ratio,
            qkv_bias=qkv_bias,
            drop_path_rate=drop_path_rate,
        )
        self.arch = arch
        self.depths = depths
        self.embed_dim = embed_dim
        self.num_features = embed_dim * 2 ** (len(depths) - 1)
        self.num_prefix_tokens = 0
        self.global_pool = "avg"
        self._img = _pair(img_size)
        resolutions = self._resolutions(self._img)
        self.patch_embed = SwinPatchEmbed(self._patch, in_chans, embed_dim)
        rates = torch.linspace(0, drop_path_rate, sum(depths), device="cpu").tolist()
        self.layers = nn.Sequential(
            *(
                SwinStage(
                    embed_dim * 2 ** max(i - 1, 0),
                    embed_dim * 2**i,
                    depths[i],
                    num_heads[i],
                    resolutions[i],
                    self._window,
                    i > 0,
                    mlp_ratio,
                    qkv_bias,
                    rates[sum(depths[:i]) : sum(depths[: i + 1])],
                )
                for i in range(len(depths))
            )
        )
        self.norm = nn.LayerNorm(self.num_features)
        for m in self.modules():  # timm's init: linear weights trunc-normal 0.02, biases 0
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        self.reset_classifier(num_classes)

    def _resolutions(self, img: tuple[int, int]) -> list[tuple[int, int]]:
        """Token grid (h, w) of each stage's blocks for images of size ``img``; checks divisibility."""
        stride = self._patch * 2 ** (len(self.depths) - 1)
        if img[0] % stride or img[1] % stride:
            raise ValueError(f"image size {img} is not a multiple of the output stride {stride}")
        return [
            (img[0] // (self._patch * 2**i), img[1] // (self._patch * 2**i)) for i in range(len(self.depths))
        ]

    # geometry ---------------------------------------------------------------------------------
    @property
    def img_size(self) -> tuple[int, int]:
        """(H, W) of the images the encoder is built for (``set_img_size`` changes it)."""
        return self._img

    @property
    def patch_size(self) -> int:
        """Stride of the patch embedding (4 for the standard sizes): the unit of masks."""
        return self._patch

    @property
    def output_stride(self) -> int:
        """Pixels per output token: patch size x 2 per merging (32 for the standard sizes)."""
        return self._patch * 2 ** (len(self.depths) - 1)

    @property
    def num_layers(self) -> int:
        """All blocks of all stages + 1 (the id of the final norm and head)."""
        return sum(self.depths) + 1

    @property
    def num_feature_blocks(self) -> int:
        """Depth of the last stage, the blocks :meth:`forward_blocks` can return."""
        return self.depths[-1]

    # forward ----------------------------------------------------------------------------------
    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """images (N, C, H, W) -> patch tokens (N, L, embed_dim) after ``patch_embed.norm``."""
        if tuple(images.shape[-2:]) != self._img:
            raise ValueError(
                f"input size {tuple(images.shape[-2:])} != model size {self._img}; call set_img_size"
            )
        return self.patch_embed(images)

    def _grid_tokens(
        self, x: torch.Tensor, mask: torch.Tensor | None = None, mask_token: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Images (N, C, H, W) or tokens (N, L, D), optional mask -> channels-last (N, gh, gw, D)."""
        self.check_mask(mask, mask_token)
        tokens = self.embed(x) if x.ndim == 4 else x
        if tokens.ndim != 3 or tokens.shape[1:] != (self.num_patches, self.embed_dim):
            raise ValueError(
                f"expected images or (N, {self.num_patches}, {self.embed_dim}) tokens, got {tuple(x.shape)}"
            )
        if mask is not None:
            tokens = replace_masked(tokens, mask, mask_token)
        return tokens.reshape(tokens.shape[0], *self.patch_grid, self.embed_dim)

    def forward_features(
        self, x: torch.Tensor, mask: torch.Tensor | None = None, mask_token: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Images (N, C, H, W) or tokens (N, L, embed_dim) from :meth:`embed`; mask bool (N, L) over
        the patch grid with mask_token (1, 1, embed_dim) -> (N, fh * fw, num_features) after the norm."""
        x = self.norm(self.layers(self._grid_tokens(x, mask, mask_token)))
        return x.flatten(1, 2)

    def forward_blocks(self, x: torch.Tensor, last_k: int = 1) -> list[torch.Tensor]:
        """Outputs of the last ``last_k`` blocks of the last stage, each through the final norm.

        x: images (N, C, H, W) -> [(N, fh * fw, num_features)] * last_k, earliest first.
        """
        if not 1 <= last_k <= self.num_feature_blocks:
            raise ValueError(f"last_k must be in 1..{self.num_feature_blocks}, got {last_k}")
        x = self._grid_tokens(x)
        for stage in self.layers[:-1]:
            x = stage(x)
        last = self.layers[-1]
        x = last.downsample(x)
        outs = []
        for j, block in enumerate(last.blocks):
            x = block(x)
            if j >= len(last.blocks) - last_k:
                outs.append(self.norm(x).flatten(1, 2))
        return outs

    # parameters -------------------------------------------------------------------------------
    def reset_classifier(self, num_classes: int) -> None:
        """A fresh head ``head.fc`` with ``num_classes`` outputs (trunc-normal 0.02), or none for 0."""
        self.num_classes = self._config["num_classes"] = int(num_classes)
        if num_classes <= 0:
            self.head = nn.Identity()
            return
        fc = nn.Linear(
            self.num_features, num_classes, device=self.norm.weight.device, dtype=self.norm.weight.dtype
        )
        nn.init.trunc_normal_(fc.weight, std=0.02)
        nn.init.zeros_(fc.bias)
        self.head = nn.Sequential(OrderedDict(fc=fc))

    def set_img_size(self, img_size: int | tuple[int, int]) -> None:
        """Rebuild the window geometry for another input size: per stage the window is the
        configured one clipped to the grid (timm's rule), the relative-position index and
        shifted-window masks are recomputed. Bias tables are kept; a window that shrinks keeps
        the centre of its table (the offsets it still has); a window larger than its table is refused.
        At the current size it rebuilds these buffers on the parameters' device (e.g. after a
        meta-device build loaded with ``load_state_dict(..., assign=True)``)."""
        img = _pair(img_size)
        resolutions = self._resolutions(img)
        for i, (stage, res) in enumerate(zip(self.layers, resolutions, strict=True)):
            for j, block in enumerate(stage.blocks):
                win, _ = clip_window(res, self._window, block.shifted)
                if win[0] > block.attn.window[0] or win[1] > block.attn.window[1]:
                    raise ValueError(
                        f"size {img} needs window {win} in layers.{i}.blocks.{j}, but its bias table covers "
                        f"{block.attn.window}; build the model at size {img} instead"
                    )
        for stage, res in zip(self.layers, resolutions, strict=True):
            stage.set_resolution(res, self._window)
        self._img = img
        self._config["img_size"] = img_size if isinstance(img_size, int) else list(img)

    def get_config(self) -> dict[str, Any]:
        """Constructor arguments (JSON-ready) plus ``arch`` and ``family``."""
        return {**self._config, "arch": self.arch, "family": self.family}

    def no_weight_decay(self) -> set[str]:
        """Every ``relative_position_bias_table`` (there is no absolute position table)."""
        return {n for n, _ in self.named_parameters() if n.endswith("relative_position_bias_table")}

    def layer_id(self, name: str) -> int:
        """SimMIM's Swin numbering: embeddings 0; block j of stage i -> 1 + sum(depths[:i]) + j; the
        merging at the start of stage i (the end of stage i - 1 in SimMIM's layout) -> id of the
        last block of stage i - 1; final norm and head -> ``num_layers``."""
        name = name.removeprefix("encoder.")
        if name.startswith(("patch_embed", "mask_token", "absolute_pos_embed")):
            return 0
        match = re.match(r"layers\.(\d+)\.(downsample|blocks\.(\d+))\.", name)
        if not match:
            return self.num_layers
        stage = int(match.group(1))
        if match.group(3) is None:
            return sum(self.depths[:stage])
        return 1 + sum(self.depths[:stage]) + int(match.group(3))

    def patch_filters(self) -> torch.Tensor:
        """Patch-embedding filters (embed_dim, in_chans, p, p)."""
        return self.patch_embed.proj.weight

    def flops_per_image(self, visible_patches: int | None = None, include_head: bool = True) -> int:
        """Analytic forward FLOPs per image (multiply-add = 2): patch embedding, patch merging, per
        block qkv / proj (on the window-padded grid), attention inside windows and MLP, head.
        ``visible_patches`` is ignored: masked or not, every patch reaches the blocks."""
        gh, gw = self.patch_grid
        flops = 2 * gh * gw * self._config["in_chans"] * self._patch**2 * self.embed_dim
        for stage in self.layers:
            if isinstance(stage.downsample, PatchMerging):
                (h, w), linear = stage.blocks[0].resolution, stage.downsample.reduction
                flops += 2 * h * w * linear.in_features * linear.out_features
            flops += sum(block.flops() for block in stage.blocks)
        return flops + (2 * self.num_features * self.num_classes if include_head else 0)

    def timm_spec(self) -> dict[str, Any]:
        """timm's name for this architecture (the variant itself, else the timm variant of the same
        width, depths and heads, else Swin-T's) and the arguments on top."""
        dims = {k: self._config[k] for k in ("embed_dim", "depths", "num_heads")}
        same = [n for n, args in TIMM_VARIANTS.items() if args == dims]
        name = self.arch if self.arch in TIMM_VARIANTS else (same or ["swin_tiny_patch4_window7_224"])[0]
        base = {**_TIMM_COMMON, **TIMM_VARIANTS[name]}
        ours = {k: self._config[k] for k in base}
        args = {k: v for k, v in ours.items() if v != base[k]}
        exact = not args
        args["num_classes"] = self.num_classes
        args["drop_path_rate"] = self._config["drop_path_rate"]  # timm defaults to 0.1; not architectural
        if self._img != (224, 224):
            args["img_size"] = self._config["img_size"]
        return {"architecture": name, "model_args": args, "exact": exact}

    def adapt_state_dict(self, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """A checkpoint of another window size made to fit: every ``relative_position_bias_table``
        with another number of offsets than this model's is resampled to this model's window as
        SimMIM's fine-tuning does (:func:`~sslvit.models.swin_layers.resample_bias_table`), saying
        so in one line; ``relative_position_index`` / ``attn_mask`` (buffers rebuilt from this
        model's geometry) are dropped when the checkpoint carries them."""
        own = self.state_dict()
        state = {k: v for k, v in state.items() if k.rsplit(".", 1)[-1] not in _REBUILT_BUFFERS}
        changed: dict[str, tuple[int, int, int]] = {}  # key -> offsets per side before, (rows, columns) after
        for key, table in state.items():
            if not key.endswith("relative_position_bias_table") or key not in own:
                continue
            mine = own[key]
            if table.ndim != 2 or table.shape == mine.shape or table.shape[1] != mine.shape[1]:
                continue  # same shape, or not a table this model can take: the strict load names it
            window = self.get_submodule(key.rsplit(".", 1)[0]).window
            try:
                state[key] = resample_bias_table(table, window)
            except InputError as err:
                raise InputError(f"{key}: {err}") from None
            changed[key] = (round(table.shape[0] ** 0.5), 2 * window[0] - 1, 2 * window[1] - 1)
        if changed:
            sides = sorted(set(changed.values()))
            shown = ", ".join(f"{a} x {a} -> {h} x {w}" for a, h, w in sides)
            say(f"{len(changed)} relative_position_bias_table(s) resampled to this model's windows "
                f"({shown} offsets) by SimMIM's geometric bicubic interpolation")
        return state

    @classmethod
    def owns_state_dict(cls, state: dict[str, torch.Tensor]) -> bool:
        """True for a plain Swin state dict: windowed-attention bias tables inside ``layers.i.blocks.j``."""
        pattern = re.compile(r"layers\.\d+\.blocks\.\d+\.attn\.relative_position_bias_table$")
        return "patch_embed.proj.weight" in state and any(pattern.match(k) for k in state)


FAMILY = SwinTransformer

MODELS = {
    **{
        name: variant(SwinTransformer, name, img_size=224, **_TIMM_COMMON, **args)
        for name, args in TIMM_VARIANTS.items()
    },
    # SimMIM's Swin-B pretraining geometry: 192 px, windows of 6 (stage grids 48, 24, 12, 6)
    "swin_base_patch4_window6_192": variant(
        SwinTransformer,
        "swin_base_patch4_window6_192",
        img_size=192,
        **{**_TIMM_COMMON, "window_size": 6},
        **TIMM_VARIANTS["swin_base_patch4_window7_224"],
    ),
    # CPU size for 32 px digits: 16 x 16 patches of 2 px, windows of 4, three stages (16, 8, 4 grids)
    "swin_nano_patch2_window4_32": variant(
        SwinTransformer,
        "swin_nano_patch2_window4_32",
        img_size=32,
        patch_size=2,
        window_size=4,
        embed_dim=48,
        depths=[2, 4, 2],
        num_heads=[3, 6, 12],
    ),
    # unit tests: same geometry, width 8
    "swin_pico_patch2_window4_32": variant(
        SwinTransformer,
        "swin_pico_patch2_window4_32",
        img_size=32,
        patch_size=2,
        window_size=4,
        embed_dim=8,
        depths=[2, 2, 2],
        num_heads=[1, 2, 4],
    ),
}
