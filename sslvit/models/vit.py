"""The Vision Transformer of "An Image is Worth 16x16 Words" (Dosovitskiy et al., 2021).

Parameter names follow the common ViT convention (timm, MAE, DeiT): ``patch_embed.proj``,
``cls_token``, ``pos_embed``, ``blocks.{i}.{norm1,attn.qkv,attn.proj,norm2,mlp.fc1,mlp.fc2}``,
``norm``, ``head``. 2-D learned position embeddings use ``pos_embed_row``, ``pos_embed_col`` and
``pos_embed_prefix`` (the prefix tokens' own positions).

Two forms of timm / MAE / DeiT checkpoints: ``fc_norm=True`` moves the final norm after pooling
(``fc_norm`` instead of ``norm``, as timm's and MAE's average-pool models), and ``distilled=True``
adds DeiT's distillation token (``dist_token``, second prefix token) and head (``head_dist``); its
pooled feature is the mean of the class and distillation tokens, its logits the mean of both heads.

The paper's position-coding ablation (appendix D.4, table 8) is two options: ``pos_embed`` (none,
1-D ``learned``, ``learned_2d``, ``sincos`` or ``relative`` attention) and ``pos_embed_at``:
``input`` (added once, the default), ``every_layer`` (a separate table added to the input of every
block: ``layer_pos_embed*``) or ``every_layer_shared`` (the input table added before every block).
``shared_relative`` is BEiT's 2-D relative position bias shared by all blocks (``rel_pos_bias.*``,
SimMIM's ViT recipe) with no absolute table; ``block_relative`` gives every block its own such
table (``blocks.{i}.attn.relative_position_bias_table``, timm Beit's ``use_rel_pos_bias``, SimMIM's
ViT fine-tune), and a ``shared_relative`` checkpoint loads into it with the shared table copied into
every block (:meth:`VisionTransformer.adapt_state_dict`).
"""

from __future__ import annotations

import math
from collections import OrderedDict
from typing import Any

import torch
from torch import nn

from sslvit.models.encoder import Encoder, block_layer_id, keep_visible, replace_masked, visible_indices
from sslvit.models.layers import Attention, Block, DropPath, LayerScale, Mlp, PatchEmbed, _pair, block_flops
from sslvit.models.pos_embed import resample_axis, resample_pos_embed, resample_state_pos_embed, sincos_2d
from sslvit.models.registry import variant
from sslvit.models.rel_pos_bias import SharedRelativeBias, expand_shared_table
from sslvit.models.vit_timm import infer_config, timm_spec
from sslvit.progress import say

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

POS_EMBEDS = ("learned", "learned_2d", "sincos", "relative", "shared_relative", "block_relative", "none")
POS_EMBED_AT = ("input", "every_layer", "every_layer_shared")
WEIGHT_INITS = ("mae", "beit")  # MAE's / timm's xavier linears, or BEiT's / SimMIM's trunc-normal + rescale
_POS_AT_ALLOWED = {
    "learned": POS_EMBED_AT,
    "learned_2d": POS_EMBED_AT,
    "sincos": ("input", "every_layer_shared"),
    "relative": ("input",),
    "shared_relative": ("input",),
    "block_relative": ("input",),
    "none": ("input",),
}


def _table(*shape: int) -> nn.Parameter:
    return nn.Parameter(nn.init.trunc_normal_(torch.zeros(*shape), std=0.02))


class VisionTransformer(Encoder):
    """ViT encoder with optional class token, five position codings and an optional head.

    ``forward_features`` takes images or patch tokens from :meth:`embed` (masked patch prediction
    edits embeddings) and an optional boolean mask whose hidden patches are dropped before the
    blocks (MAE) or, with a ``mask_token``, replaced by it (SimMIM). ``head_type="pre_logits"`` puts
    the paper's tanh representation layer (``pre_logits.fc``) before the linear head, as used for
    supervised pretraining.
    """

    family = "vit"
    supports = frozenset({"token_drop", "mask_token", "patch_tokens", "attention_maps"})
    lacks: dict[str, str] = {}

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
        pos_embed_at: str = "input",
        drop_path_rate: float = 0.0,
        layer_scale_init: float | None = None,
        head_type: str = "linear",
        norm_eps: float = 1e-6,
        fc_norm: bool = False,
        distilled: bool = False,
        weight_init: str = "mae",
        arch: str | None = None,
    ):
        super().__init__()
        if pos_embed not in POS_EMBEDS:
            raise ValueError(f"pos_embed must be one of {POS_EMBEDS}, got {pos_embed!r}")
        if pos_embed_at not in _POS_AT_ALLOWED[pos_embed]:
            raise ValueError(f"pos_embed={pos_embed!r} takes pos_embed_at in {_POS_AT_ALLOWED[pos_embed]}, "
                             f"got {pos_embed_at!r}")
        if global_pool not in ("token", "avg") or (global_pool == "token" and not class_token):
            raise ValueError(f"global_pool={global_pool!r} needs 'avg', or 'token' with a class token")
        if weight_init not in WEIGHT_INITS:
            raise ValueError(f"weight_init must be one of {WEIGHT_INITS}, got {weight_init!r}")
        if pos_embed_2d_mode not in ("sum", "concat") or head_type not in ("linear", "pre_logits"):
            raise ValueError(f"bad pos_embed_2d_mode={pos_embed_2d_mode!r} or head_type={head_type!r}")
        if distilled and not (class_token and global_pool == "token" and not fc_norm and head_type == "linear"):
            raise ValueError("distilled=True (DeiT's distillation token) needs class_token=True, "
                             "global_pool='token', fc_norm=False and head_type='linear', as timm's "
                             f"VisionTransformerDistilled; got class_token={class_token}, "
                             f"global_pool={global_pool!r}, fc_norm={fc_norm}, head_type={head_type!r}")
        self._config: dict[str, Any] = {k: v for k, v in locals().items() if k not in ("self", "__class__")}
        self._config["img_size"] = img_size if isinstance(img_size, int) else list(_pair(img_size))
        self.arch = arch
        self.embed_dim = self.num_features = embed_dim
        self.global_pool = global_pool
        self.pos_embed_kind = pos_embed
        self.pos_embed_2d_mode = pos_embed_2d_mode
        self.pos_embed_at = pos_embed_at
        self.distilled = bool(distilled)
        self.num_prefix_tokens = int(class_token) + int(self.distilled)
        self.patch_embed = PatchEmbed(img_size, patch_size, in_chans, embed_dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim)) if class_token else None
        self.dist_token = nn.Parameter(torch.zeros(1, 1, embed_dim)) if self.distilled else None
        self._init_pos_embed()
        dpr = [drop_path_rate * i / max(depth - 1, 1) for i in range(depth)]
        rel = self.num_prefix_tokens + self.patch_embed.num_patches if pos_embed == "relative" else 0
        if pos_embed == "block_relative" and self.num_prefix_tokens > 1:
            raise ValueError("pos_embed='block_relative' takes at most one prefix token (the class token)")
        bias_grid = self.patch_embed.grid_size if pos_embed == "block_relative" else None
        self.blocks = nn.ModuleList(
            Block(embed_dim, num_heads, mlp_ratio, qkv_bias, dpr[i], layer_scale_init, norm_eps, rel,
                  rel_bias_grid=bias_grid, rel_bias_class_token=class_token)
            for i in range(depth)
        )
        # fc_norm: tokens leave un-normalised and the pooled feature is normalised (timm's avg-pool form)
        self.norm = nn.Identity() if fc_norm else nn.LayerNorm(embed_dim, eps=norm_eps)
        self.fc_norm = nn.LayerNorm(embed_dim, eps=norm_eps) if fc_norm else nn.Identity()
        self.apply(self._init_module)
        self.num_classes = 0
        self.reset_classifier(num_classes, head_type)
        w = self.patch_embed.proj.weight
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        if self.cls_token is not None:
            nn.init.normal_(self.cls_token, std=0.02)
        if self.dist_token is not None:
            nn.init.trunc_normal_(self.dist_token, std=0.02)
        if weight_init == "beit":
            self._init_beit()

    # geometry ---------------------------------------------------------------------------------
    @property
    def img_size(self) -> tuple[int, int]:
        return self.patch_embed.img_size

    @property
    def patch_size(self) -> int:
        return self.patch_embed.patch_size

    @property
    def num_layers(self) -> int:
        return len(self.blocks) + 1

    @property
    def num_feature_blocks(self) -> int:
        return len(self.blocks)

    # position tables --------------------------------------------------------------------------
    def _init_pos_embed(self) -> None:
        """Create the position parameters (or the sin-cos buffer) for the current grid."""
        grid, dim, prefix = self.patch_embed.grid_size, self.embed_dim, self.num_prefix_tokens
        depth_extra = self._config["depth"] - 1 if self.pos_embed_at == "every_layer" else 0
        self.pos_embed_row = self.pos_embed_col = self.pos_embed_prefix = None
        self.layer_pos_embed = self.layer_pos_embed_row = self.layer_pos_embed_col = None
        self.rel_pos_bias = None
        if self.pos_embed_kind == "sincos":
            table = torch.cat([torch.zeros(prefix, dim), sincos_2d(grid, dim)])[None]
            self.register_buffer("pos_embed", table, persistent=True)
            return
        self.pos_embed = None
        if self.pos_embed_kind == "shared_relative":
            if prefix > 1:
                raise ValueError("pos_embed='shared_relative' takes at most one prefix token (the class token)")
            self.rel_pos_bias = SharedRelativeBias(grid, self._config["num_heads"], class_token=prefix == 1)
        if self.pos_embed_kind == "learned":
            self.pos_embed = _table(1, prefix + grid[0] * grid[1], dim)
            if depth_extra:
                self.layer_pos_embed = _table(depth_extra, grid[0] * grid[1], dim)
        elif self.pos_embed_kind == "learned_2d":
            if self.pos_embed_2d_mode == "concat" and dim % 2:
                raise ValueError("concatenated 2-D position embeddings need an even embed_dim")
            part = dim if self.pos_embed_2d_mode == "sum" else dim // 2
            self.pos_embed_row = _table(1, grid[0], part)
            self.pos_embed_col = _table(1, grid[1], part)
            if prefix:
                self.pos_embed_prefix = _table(1, prefix, dim)
            if depth_extra:
                self.layer_pos_embed_row = _table(depth_extra, grid[0], part)
                self.layer_pos_embed_col = _table(depth_extra, grid[1], part)

    def _grid_2d(self, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
        """rows (B, gh, D'), cols (B, gw, D') -> (B, gh * gw, D), summed or concatenated per patch."""
        gh, gw = self.patch_embed.grid_size
        r = rows[:, :, None, :].expand(-1, gh, gw, -1)
        c = cols[:, None, :, :].expand(-1, gh, gw, -1)
        grid = r + c if self.pos_embed_2d_mode == "sum" else torch.cat([r, c], dim=-1)
        return grid.reshape(rows.shape[0], gh * gw, self.embed_dim)

    def get_pos_embed(self) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """Position tables of the prefix tokens and of the patches.

        -> prefix (1, P, D) or None, patches (1, L, D) or None (L row-major over the grid).
        """
        if self.pos_embed is not None:
            p = self.num_prefix_tokens
            return (self.pos_embed[:, :p] if p else None), self.pos_embed[:, p:]
        if self.pos_embed_row is None:
            return None, None
        return self.pos_embed_prefix, self._grid_2d(self.pos_embed_row, self.pos_embed_col)

    def pos_table(self) -> torch.Tensor | None:
        return self.get_pos_embed()[1]

    def _layer_tables(self) -> list[torch.Tensor | None]:
        """Patch position tables added before each block: [(1, L, D) or None] * depth."""
        depth = len(self.blocks)
        if self.pos_embed_at == "input":
            return [None] * depth
        _, patch_pos = self.get_pos_embed()
        if self.pos_embed_at == "every_layer_shared":
            return [patch_pos] * depth
        if self.layer_pos_embed is not None:
            extra = list(self.layer_pos_embed.unsqueeze(1).unbind(0))
        else:
            extra = list(self._grid_2d(self.layer_pos_embed_row, self.layer_pos_embed_col).unsqueeze(1).unbind(0))
        return [None, *extra]

    # forward ----------------------------------------------------------------------------------
    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """images (N, C, H, W) -> patch tokens (N, L, D), no positions."""
        return self.patch_embed(images)

    def prepare_tokens(
        self, x: torch.Tensor, mask: torch.Tensor | None = None, mask_token: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Embedded input of the first block.

        x: images (N, C, H, W) or patch tokens (N, L, D) from ``embed``; mask: optional bool
        (N, L), True = hidden, the same count per row -> (N, P + L_kept, D) (dropped), or with
        ``mask_token`` (1, 1, D) -> (N, P + L, D) (replaced). Position embeddings are added after
        the mask token and before dropping; prefix tokens (class, then distillation) come first.
        """
        self.check_mask(mask, mask_token)
        if x.ndim == 4:
            x = self.patch_embed(x)
        if x.ndim != 3 or x.shape[1] != self.patch_embed.num_patches:
            raise ValueError(
                f"expected images or (N, {self.patch_embed.num_patches}, D) tokens, got {tuple(x.shape)}"
            )
        if mask is not None and mask_token is not None:
            x = replace_masked(x, mask, mask_token)
        prefix_pos, patch_pos = self.get_pos_embed()
        if patch_pos is not None and self.pos_embed_at != "every_layer_shared":
            x = x + patch_pos
        if mask is not None and mask_token is None:
            x = keep_visible(x, mask)
        if self.cls_token is not None:
            prefix = self.cls_token if self.dist_token is None else torch.cat([self.cls_token, self.dist_token], 1)
            prefix = prefix if prefix_pos is None else prefix + prefix_pos  # (1, P, D)
            x = torch.cat([prefix.expand(x.shape[0], -1, -1), x], dim=1)
        return x

    def _run_blocks(self, x: torch.Tensor, mask: torch.Tensor | None, dropped: bool, attention: bool = False):
        """Yield ``(tokens, attention or None)`` after each block; tokens (N, T, D), T = P + L_kept."""
        prefix, n = self.num_prefix_tokens, x.shape[0]
        ids = visible_indices(mask) if dropped and mask is not None else None
        kept = None  # (N, T') positions among all T tokens of the kept ones, prefix first
        if ids is not None:
            kept = torch.cat([torch.arange(prefix, device=x.device).expand(n, -1), ids + prefix], dim=1)
        positions = bias = None
        if self.pos_embed_kind == "relative":
            positions = kept if kept is not None else torch.arange(x.shape[1], device=x.device).expand(n, -1)
        elif self.pos_embed_kind == "block_relative":
            positions = kept  # each block's own bias of the kept tokens; None = all of them
        if self.rel_pos_bias is not None:
            bias = self.rel_pos_bias(kept)  # (heads, T, T), or (N, heads, T', T') for the kept tokens
        for block, table in zip(self.blocks, self._layer_tables(), strict=True):
            if table is not None:
                if ids is not None:
                    table = torch.gather(table.expand(n, -1, -1), 1, ids[..., None].expand(-1, -1, table.shape[-1]))
                x = torch.cat([x[:, :prefix], x[:, prefix:] + table], dim=1)
            if attention:
                x, attn = block.forward_with_attention(x, positions, bias)
                yield x, attn
            else:
                x = block(x, positions, bias)
                yield x, None

    def forward_features(
        self, x: torch.Tensor, mask: torch.Tensor | None = None, mask_token: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Tokens after the blocks and the final norm.

        x: images (N, C, H, W) or patch tokens (N, L, D); mask: optional bool (N, L), True = hidden
        (dropped before the blocks, or replaced by ``mask_token`` (1, 1, D)) -> (N, P + L_out, D).
        """
        tokens = self.prepare_tokens(x, mask, mask_token)
        for out, _ in self._run_blocks(tokens, mask, dropped=mask_token is None):
            tokens = out
        return self.norm(tokens)

    def forward_blocks(self, x: torch.Tensor, last_k: int = 1) -> list[torch.Tensor]:
        if not 1 <= last_k <= len(self.blocks):
            raise ValueError(f"last_k must be in 1..{len(self.blocks)}, got {last_k}")
        outs = [t for t, _ in self._run_blocks(self.prepare_tokens(x), None, dropped=False)]
        return [self.norm(t) for t in outs[-last_k:]]

    def pool(self, tokens: torch.Tensor, how: str | None = None) -> torch.Tensor:
        """Pooled features: tokens (N, P + L, D) -> (N, D) for "token" / "avg", (N, 2D) for "token+avg".

        "token" is the class token, or with distillation the mean of the class and distillation
        tokens; with ``fc_norm`` each pooled part is normalised by it (as timm's ``forward_head``).
        """
        how = how or self.global_pool
        if not self.distilled or how not in ("token", "token+avg"):
            pooled = super().pool(tokens, how)
            if isinstance(self.fc_norm, nn.Identity):
                return pooled
            return torch.cat([self.fc_norm(part) for part in pooled.split(self.embed_dim, dim=-1)], dim=-1)
        parts = [(tokens[:, 0] + tokens[:, 1]) / 2]
        if how == "token+avg":
            parts.append(tokens[:, self.num_prefix_tokens :].mean(dim=1))
        return torch.cat(parts, dim=-1)

    def forward_head(self, tokens: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """tokens: (N, P + L, D) -> logits (N, num_classes), or with ``pre_logits`` pooled (N, D).

        With distillation the logits are the mean of ``head`` on the class token and ``head_dist``
        on the distillation token.
        """
        if self.distilled and not pre_logits and self.num_classes > 0:
            return (self.head(tokens[:, 0]) + self.head_dist(tokens[:, 1])) / 2
        x = self.pool(tokens)
        if self.pre_logits is not None:
            x = self.pre_logits(x)
        return x if pre_logits else self.head(x)

    def forward_with_attention(
        self, x: torch.Tensor, mask: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Slow path for visualisation: x: (N, C, H, W) (mask as in ``forward_features``) ->
        tokens (N, T, D) after the final norm, attention weights [(N, heads, T, T)] per block."""
        tokens, maps = self.prepare_tokens(x, mask), []
        for out, attn in self._run_blocks(tokens, mask, dropped=True, attention=True):
            tokens = out
            maps.append(attn)
        return self.norm(tokens), maps

    # parameters -------------------------------------------------------------------------------
    @staticmethod
    def _init_module(m: nn.Module) -> None:
        if isinstance(m, nn.Linear):
            nn.init.xavier_uniform_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)

    @torch.no_grad()
    def _init_beit(self) -> None:
        """BEiT's / SimMIM's initialisation: every linear and the patch projection trunc-normal 0.02
        with zero biases, the class token trunc-normal 0.02, then each block's ``attn.proj`` and
        ``mlp.fc2`` weights divided by sqrt(2 * (block index + 1)) (``fix_init_weight``)."""
        for m in self.modules():  # the patch projection (a Conv2d) among them
            if isinstance(m, (nn.Linear, nn.Conv2d)):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        if self.cls_token is not None:
            nn.init.trunc_normal_(self.cls_token, std=0.02)
        for i, block in enumerate(self.blocks):
            block.attn.proj.weight.div_(math.sqrt(2.0 * (i + 1)))
            block.mlp.fc2.weight.div_(math.sqrt(2.0 * (i + 1)))

    def reset_classifier(self, num_classes: int, head_type: str | None = None) -> None:
        """Replace the head: ``num_classes`` outputs (0 = none), linear or pre-logits tanh + linear."""
        head_type = head_type or self._config["head_type"]
        self.num_classes = num_classes
        self._config.update(num_classes=num_classes, head_type=head_type)
        self.pre_logits = None
        if head_type == "pre_logits" and num_classes > 0:
            fc = nn.Linear(self.embed_dim, self.embed_dim)
            nn.init.xavier_uniform_(fc.weight)
            nn.init.zeros_(fc.bias)
            self.pre_logits = nn.Sequential(OrderedDict(fc=fc, act=nn.Tanh()))
        self.head = nn.Linear(self.embed_dim, num_classes) if num_classes > 0 else nn.Identity()
        if getattr(self, "distilled", False):
            self.head_dist = nn.Linear(self.embed_dim, num_classes) if num_classes > 0 else nn.Identity()
        for head in (self.head, getattr(self, "head_dist", None)):
            if isinstance(head, nn.Linear):
                nn.init.trunc_normal_(head.weight, std=0.02)
                nn.init.zeros_(head.bias)

    @torch.no_grad()
    def set_img_size(self, img_size: int | tuple[int, int]) -> None:
        """Adapt the model in place to a new input size (e.g. 224 -> 384 for fine-tuning).

        Learned tables are resampled bicubically (prefix positions kept), 2-D tables per axis,
        sin-cos tables recomputed. Relative attention tables and per-layer tables cannot be
        resampled and raise ``ValueError``.
        """
        old_grid = self.patch_embed.grid_size
        if _pair(img_size) != self.img_size and (self.pos_embed_kind in ("relative", "shared_relative", "block_relative")
                                                  or self.pos_embed_at == "every_layer"):
            raise ValueError(f"pos_embed={self.pos_embed_kind!r} with pos_embed_at={self.pos_embed_at!r} "
                             "cannot be resampled to another image size")
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

    resize_pos_embed = set_img_size

    def get_config(self) -> dict[str, Any]:
        """JSON-serialisable constructor arguments (with ``arch`` and ``family``)."""
        return {**self._config, "family": self.family}

    def no_weight_decay(self) -> set[str]:
        """Names of the position tables and prefix tokens (biases and norms are the optimiser's rule)."""
        names = {"cls_token", "dist_token", "pos_embed", "pos_embed_row", "pos_embed_col", "pos_embed_prefix",
                 "layer_pos_embed", "layer_pos_embed_row", "layer_pos_embed_col"}
        return {n for n, _ in self.named_parameters() if n in names or n.endswith("attn.rel_pos")}

    def layer_id(self, name: str) -> int:
        """Layer of a parameter for layer-wise lr decay: embeddings 0, ``blocks.i`` i + 1, rest depth + 1."""
        embeddings = ("patch_embed", "pos_embed", "cls_token", "dist_token", "mask_token", "layer_pos_embed")
        return block_layer_id(name, "blocks", self.num_layers, embeddings)

    def pool_only_parameters(self) -> set[str]:
        """``fc_norm.*``: the norm after pooling, which a loss on the output tokens cannot train."""
        return {f"fc_norm.{n}" for n, _ in self.fc_norm.named_parameters()}

    def patch_filters(self) -> torch.Tensor | None:
        return self.patch_embed.proj.weight

    def flops_per_image(self, visible_patches: int | None = None, include_head: bool = True) -> int:
        """Analytic forward FLOPs for one image (multiply-add = 2 FLOPs); matrix multiplies only.

        ``visible_patches`` counts the patches that reach the blocks (MAE); default all of them.
        """
        c = self._config
        dim, num_patches, p = self.embed_dim, self.patch_embed.num_patches, self.patch_size
        flops = 2 * num_patches * c["in_chans"] * p * p * dim
        tokens = self.num_prefix_tokens + (num_patches if visible_patches is None else visible_patches)
        flops += len(self.blocks) * block_flops(tokens, dim, int(dim * c["mlp_ratio"]))
        if not include_head:
            return flops
        if self.pre_logits is not None:
            flops += 2 * dim * dim
        return flops + 2 * dim * self.num_classes * (1 + int(self.distilled))

    # timm and foreign checkpoints -------------------------------------------------------------
    def timm_spec(self) -> dict[str, Any] | str:
        """timm's ``VisionTransformer``: see :func:`sslvit.models.vit_timm.timm_spec`."""
        return timm_spec({**self._config, "fc_norm": not isinstance(self.fc_norm, nn.Identity),
                          "distilled": self.distilled}, self.img_size)

    @classmethod
    def owns_state_dict(cls, state: dict[str, torch.Tensor]) -> bool:
        return "patch_embed.proj.weight" in state and any(k.startswith("blocks.0.attn.qkv") for k in state)

    @classmethod
    def infer_config(cls, state: dict[str, torch.Tensor]) -> dict[str, Any]:
        """Constructor arguments of a plain ViT state dict: see :func:`sslvit.models.vit_timm.infer_config`."""
        return infer_config(state, MODELS)

    @classmethod
    def state_dict_options(cls, state: dict[str, torch.Tensor]) -> dict[str, Any]:
        """Constructor options a plain state dict's names fix, whatever variant is named: ``fc_norm.*``
        -> ``fc_norm=True, global_pool="avg"``; ``dist_token`` -> ``distilled=True``."""
        options: dict[str, Any] = {}
        if "fc_norm.weight" in state:
            options.update(fc_norm=True, global_pool="avg")
        if "dist_token" in state:
            options["distilled"] = True
        return options

    def adapt_state_dict(self, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Position tables of another grid resampled to this model's grid (prefix positions kept).

        For ``pos_embed='block_relative'`` a ``shared_relative`` checkpoint's
        ``rel_pos_bias.relative_position_bias_table`` is copied into every block's own table (SimMIM's
        ``remap_pretrained_keys_vit``), saying so; stored ``relative_position_index`` buffers are
        dropped (the model builds its own). A table of another grid is refused by the strict load.
        """
        if self.pos_embed_kind == "block_relative" and "rel_pos_bias.relative_position_bias_table" in state:
            state = expand_shared_table(state, len(self.blocks))
            say(f"the shared rel_pos_bias.relative_position_bias_table is copied into each of the {len(self.blocks)} "
                "blocks' own blocks.{i}.attn.relative_position_bias_table (pos_embed='block_relative')")
        if self.pos_embed_kind == "block_relative":
            state = {k: v for k, v in state.items() if not k.endswith("attn.relative_position_index")}
        own = self.state_dict()
        tables = [k for k in ("pos_embed", "pos_embed_row", "pos_embed_col") if k in state and k in own]
        if any(state[k].shape != own[k].shape and state[k].shape[-1] == own[k].shape[-1] for k in tables):
            state = resample_state_pos_embed(state, tuple(self.patch_embed.grid_size), self.num_prefix_tokens)
        return state


SIZES: dict[str, dict[str, Any]] = {
    "tiny": dict(embed_dim=192, depth=12, num_heads=3),
    "small": dict(embed_dim=384, depth=12, num_heads=6),
    "base": dict(embed_dim=768, depth=12, num_heads=12),
    "large": dict(embed_dim=1024, depth=24, num_heads=16),
    "huge": dict(embed_dim=1280, depth=32, num_heads=16),
}
FAMILY = VisionTransformer
MODELS = {
    f"vit_{size}_patch{patch}": variant(VisionTransformer, f"vit_{size}_patch{patch}", img_size=224,
                                        patch_size=patch, **dims)
    for size, dims in SIZES.items()
    for patch in (14, 16, 32)
}
MODELS["vit_nano_patch4"] = variant(VisionTransformer, "vit_nano_patch4", img_size=32, patch_size=4,
                                    embed_dim=128, depth=6, num_heads=4)
MODELS["vit_pico_patch4"] = variant(VisionTransformer, "vit_pico_patch4", img_size=32, patch_size=4,
                                    embed_dim=32, depth=2, num_heads=2)
for _size in ("tiny", "small", "base"):
    _name = f"deit_{_size}_distilled_patch16_224"
    MODELS[_name] = variant(VisionTransformer, _name, img_size=224, patch_size=16, distilled=True, **SIZES[_size])
