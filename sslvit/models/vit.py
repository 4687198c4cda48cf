"""The Vision Transformer of "An Image is Worth 16x16 Words" (Dosovitskiy et al., 2021).

Parameter names follow the common ViT convention (timm, MAE, DeiT): ``patch_embed.proj``,
``cls_token``, ``pos_embed``, ``blocks.{i}.{norm1,attn.qkv,attn.proj,norm2,mlp.fc1,mlp.fc2}``,
``norm``, ``head``. 2-D learned position embeddings use ``pos_embed_row``, ``pos_embed_col`` and
``pos_embed_prefix`` (the prefix tokens' own positions).
"""

from __future__ import annotations

import re
from collections import OrderedDict
from typing import Any

import torch
from torch import nn

from sslvit.models.layers import Attention, Block, DropPath, LayerScale, Mlp, PatchEmbed, _pair, block_flops
from sslvit.models.pos_embed import resample_axis, resample_pos_embed, sincos_2d

__all__ = [
    "Attention",
    "Block",
    "DropPath",
    "LayerScale",
    "Mlp",
    "PatchEmbed",
    "VisionTransformer",
    "visible_indices",
]

POS_EMBEDS = ("learned", "learned_2d", "sincos", "none")


def _table(*shape: int) -> nn.Parameter:
    return nn.Parameter(nn.init.trunc_normal_(torch.zeros(*shape), std=0.02))


def visible_indices(mask: torch.Tensor) -> torch.Tensor:
    """Indices of the visible (False) patches of each row, in increasing order.

    mask: bool (N, L), True = hidden, the same count per row -> (N, L_kept) int64.
    """
    hidden = mask.sum(1)
    num_hidden = int(hidden[0])
    if bool((hidden != num_hidden).any()):
        raise ValueError("every row of the mask must hide the same number of patches")
    order = torch.argsort(mask.to(torch.uint8), dim=1, stable=True)
    return order[:, : mask.shape[1] - num_hidden]


class VisionTransformer(nn.Module):
    """ViT encoder with optional class token, four position-embedding kinds and an optional head.

    ``forward_features`` takes images or patch tokens from ``patch_embed`` (objectives that edit
    embeddings pass tokens) and an optional boolean mask whose hidden patches are dropped before the
    blocks (MAE). ``head_type="pre_logits"`` puts the paper's tanh representation layer
    (``pre_logits.fc``) before the linear head, as used for supervised pretraining.
    """

    def __init__(
        self,
        img_size: int | tuple[int, int] = 224,
        patch_size: int = 16,
        in_chans: int = 3,
        num_classes: int = 0,
        embed_dim: int = 768,
        depth: int = 12,
        num_heads: int = 12,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        class_token: bool = True,
        global_pool: str = "token",
        pos_embed: str = "learned",
        pos_embed_2d_mode: str = "sum",
        drop_path_rate: float = 0.0,
        layer_scale_init: float | None = None,
        head_type: str = "linear",
        norm_eps: float = 1e-6,
        arch: str | None = None,
    ):
        super().__init__()
        if pos_embed not in POS_EMBEDS:
            raise ValueError(f"pos_embed must be one of {POS_EMBEDS}, got {pos_embed!r}")
        if global_pool not in ("token", "avg") or (global_pool == "token" and not class_token):
            raise ValueError(f"global_pool={global_pool!r} needs 'avg', or 'token' with a class token")
        if pos_embed_2d_mode not in ("sum", "concat") or head_type not in ("linear", "pre_logits"):
            raise ValueError(f"bad pos_embed_2d_mode={pos_embed_2d_mode!r} or head_type={head_type!r}")
        self._config: dict[str, Any] = {k: v for k, v in locals().items() if k not in ("self", "__class__")}
        self._config["img_size"] = img_size if isinstance(img_size, int) else list(_pair(img_size))
        self.arch = arch
        self.embed_dim = self.num_features = embed_dim
        self.global_pool = global_pool
        self.pos_embed_kind = pos_embed
        self.pos_embed_2d_mode = pos_embed_2d_mode
        self.num_prefix_tokens = 1 if class_token else 0
        self.patch_embed = PatchEmbed(img_size, patch_size, in_chans, embed_dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim)) if class_token else None
        self._init_pos_embed()
        dpr = [drop_path_rate * i / max(depth - 1, 1) for i in range(depth)]
        self.blocks = nn.ModuleList(
            Block(embed_dim, num_heads, mlp_ratio, qkv_bias, dpr[i], layer_scale_init, norm_eps)
            for i in range(depth)
        )
        self.norm = nn.LayerNorm(embed_dim, eps=norm_eps)
        self.apply(self._init_module)
        self.num_classes = 0
        self.reset_classifier(num_classes, head_type)
        w = self.patch_embed.proj.weight
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        if self.cls_token is not None:
            nn.init.normal_(self.cls_token, std=0.02)

    def _init_pos_embed(self) -> None:
        """Create the position parameters (or the sin-cos buffer) for the current grid."""
        grid, dim, prefix = self.patch_embed.grid_size, self.embed_dim, self.num_prefix_tokens
        self.pos_embed_row = self.pos_embed_col = self.pos_embed_prefix = None
        if self.pos_embed_kind == "sincos":
            table = torch.cat([torch.zeros(prefix, dim), sincos_2d(grid, dim)])[None]
            self.register_buffer("pos_embed", table, persistent=True)
            return
        self.pos_embed = None
        if self.pos_embed_kind == "learned":
            self.pos_embed = _table(1, prefix + grid[0] * grid[1], dim)
        elif self.pos_embed_kind == "learned_2d":
            if self.pos_embed_2d_mode == "concat" and dim % 2:
                raise ValueError("concatenated 2-D position embeddings need an even embed_dim")
            part = dim if self.pos_embed_2d_mode == "sum" else dim // 2
            self.pos_embed_row = _table(1, grid[0], part)
            self.pos_embed_col = _table(1, grid[1], part)
            if prefix:
                self.pos_embed_prefix = _table(1, prefix, dim)

    @staticmethod
    def _init_module(m: nn.Module) -> None:
        if isinstance(m, nn.Linear):
            nn.init.xavier_uniform_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)

    def reset_classifier(self, num_classes: int, head_type: str | None = None) -> None:
        """Replace the head: ``num_classes`` outputs (0 = none), linear or pre-logits tanh + linear."""
        head_type = head_type or self._config["head_type"]
        self.num_classes = num_classes
        self._config.update(num_classes=num_classes, head_type=head_type)
        use_pre_logits = head_type == "pre_logits" and num_classes > 0
        self.pre_logits = None
        if use_pre_logits:
            fc = nn.Linear(self.embed_dim, self.embed_dim)
            nn.init.xavier_uniform_(fc.weight)
            nn.init.zeros_(fc.bias)
            self.pre_logits = nn.Sequential(OrderedDict(fc=fc, act=nn.Tanh()))
        self.head = nn.Linear(self.embed_dim, num_classes) if num_classes > 0 else nn.Identity()
        if num_classes > 0:
            nn.init.trunc_normal_(self.head.weight, std=0.02)
            nn.init.zeros_(self.head.bias)

    def get_pos_embed(self) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """Position tables of the prefix tokens and of the patches.

        -> prefix (1, P, D) or None, patches (1, L, D) or None (L row-major over the grid).
        """
        if self.pos_embed is not None:
            p = self.num_prefix_tokens
            return (self.pos_embed[:, :p] if p else None), self.pos_embed[:, p:]
        if self.pos_embed_row is None:
            return None, None
        gh, gw = self.patch_embed.grid_size
        rows = self.pos_embed_row[:, :, None, :].expand(-1, gh, gw, -1)
        cols = self.pos_embed_col[:, None, :, :].expand(-1, gh, gw, -1)
        grid = rows + cols if self.pos_embed_2d_mode == "sum" else torch.cat([rows, cols], dim=-1)
        return self.pos_embed_prefix, grid.reshape(1, gh * gw, self.embed_dim)

    def prepare_tokens(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """Embedded input of the first block.

        x: images (N, C, H, W) or patch tokens (N, L, D) from ``patch_embed``; mask: optional bool
        (N, L), True = hidden, the same count per row -> (N, P + L_kept, D). Position embeddings are
        added before hidden patches are dropped; prefix tokens come first.
        """
        if x.ndim == 4:
            x = self.patch_embed(x)
        if x.ndim != 3 or x.shape[1] != self.patch_embed.num_patches:
            raise ValueError(
                f"expected images or (N, {self.patch_embed.num_patches}, D) tokens, got {tuple(x.shape)}"
            )
        prefix_pos, patch_pos = self.get_pos_embed()
        if patch_pos is not None:
            x = x + patch_pos
        if mask is not None:
            ids = visible_indices(mask)
            x = torch.gather(x, 1, ids[..., None].expand(-1, -1, x.shape[-1]))
        if self.cls_token is not None:
            cls = self.cls_token if prefix_pos is None else self.cls_token + prefix_pos
            x = torch.cat([cls.expand(x.shape[0], -1, -1), x], dim=1)
        return x

    def forward_features(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """Tokens after the blocks and the final norm.

        x: images (N, C, H, W) or patch tokens (N, L, D); mask: optional bool (N, L), True = hidden
        (dropped before the blocks) -> (N, P + L_kept, D).
        """
        x = self.prepare_tokens(x, mask)
        for block in self.blocks:
            x = block(x)
        return self.norm(x)

    def forward_head(self, tokens: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """tokens: (N, P + L, D) -> logits (N, num_classes), or with ``pre_logits`` pooled (N, D)."""
        if self.global_pool == "token":
            x = tokens[:, 0]
        else:
            x = tokens[:, self.num_prefix_tokens :].mean(dim=1)
        if self.pre_logits is not None:
            x = self.pre_logits(x)
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (N, C, H, W) -> (N, num_classes), or pooled features (N, D) without a head."""
        return self.forward_head(self.forward_features(x))

    def forward_with_attention(
        self, x: torch.Tensor, mask: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Slow path for visualisation: x: (N, C, H, W) (mask as in ``forward_features``) ->
        tokens (N, T, D) after the final norm, attention weights [(N, heads, T, T)] per block."""
        x = self.prepare_tokens(x, mask)
        maps = []
        for block in self.blocks:
            x, attn = block.forward_with_attention(x)
            maps.append(attn)
        return self.norm(x), maps

    @torch.no_grad()
    def resize_pos_embed(self, img_size: int | tuple[int, int]) -> None:
        """Adapt the model in place to a new input size (e.g. 224 -> 384 for fine-tuning).

        Learned tables are resampled bicubically (prefix positions kept), 2-D tables per axis,
        sin-cos tables recomputed.
        """
        old_grid = self.patch_embed.grid_size
        self.patch_embed.set_img_size(img_size)
        new_grid = self.patch_embed.grid_size
        self._config["img_size"] = img_size if isinstance(img_size, int) else list(_pair(img_size))
        if self.pos_embed_kind == "learned":
            table = resample_pos_embed(self.pos_embed.data, new_grid, self.num_prefix_tokens, old_grid)
            self.pos_embed = nn.Parameter(table, requires_grad=self.pos_embed.requires_grad)
        elif self.pos_embed_kind == "sincos":
            prefix = self.pos_embed[:, : self.num_prefix_tokens]
            table = torch.cat([prefix, sincos_2d(new_grid, self.embed_dim)[None].to(prefix)], dim=1)
            self.register_buffer("pos_embed", table, persistent=True)
        elif self.pos_embed_kind == "learned_2d":
            self.pos_embed_row = nn.Parameter(resample_axis(self.pos_embed_row.data, new_grid[0]))
            self.pos_embed_col = nn.Parameter(resample_axis(self.pos_embed_col.data, new_grid[1]))

    def get_config(self) -> dict[str, Any]:
        """JSON-serialisable constructor arguments (with ``arch``): ``VisionTransformer(**cfg)`` rebuilds it."""
        return dict(self._config)

    def no_weight_decay(self) -> set[str]:
        """Names of the position tables and prefix tokens (biases and norms are the optimiser's rule)."""
        names = {"cls_token", "pos_embed", "pos_embed_row", "pos_embed_col", "pos_embed_prefix"}
        return {n for n, _ in self.named_parameters() if n in names}

    def layer_id(self, name: str) -> int:
        """Layer of a parameter for layer-wise lr decay: embeddings 0, ``blocks.i`` i + 1, rest depth + 1."""
        name = name.removeprefix("encoder.")
        if name.startswith(("patch_embed", "pos_embed", "cls_token", "mask_token")):
            return 0
        match = re.match(r"blocks\.(\d+)\.", name)
        return int(match.group(1)) + 1 if match else len(self.blocks) + 1

    def num_params(self, trainable_only: bool = False) -> int:
        """Number of parameters (buffers such as a sin-cos table excluded)."""
        return sum(p.numel() for p in self.parameters() if p.requires_grad or not trainable_only)

    def flops_per_image(self, visible_patches: int | None = None, include_head: bool = True) -> int:
        """Analytic forward FLOPs for one image (multiply-add = 2 FLOPs); matrix multiplies only.

        ``visible_patches`` counts the patches that reach the blocks (MAE); default all of them.
        """
        c = self._config
        dim, num_patches = self.embed_dim, self.patch_embed.num_patches
        p = self.patch_embed.patch_size
        flops = 2 * num_patches * c["in_chans"] * p * p * dim
        tokens = self.num_prefix_tokens + (num_patches if visible_patches is None else visible_patches)
        flops += len(self.blocks) * block_flops(tokens, dim, int(dim * c["mlp_ratio"]))
        if not include_head:
            return flops
        if self.pre_logits is not None:
            flops += 2 * dim * dim
        return flops + 2 * dim * self.num_classes
