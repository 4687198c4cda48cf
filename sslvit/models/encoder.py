"""The encoder interface: what every backbone implements and the only thing the rest of sslvit sees.

Objectives, the optimizer, checkpoints, the Hub export, the evaluators and the pictures use an
encoder through this class alone, never a concrete backbone. A backbone is one file in
``sslvit/models/`` that subclasses :class:`Encoder`, sets ``family`` and ``supports`` and
implements the abstract methods below.

Geometry. An image (N, C, H, W) is cut into a grid of input patches (``patch_grid``, each
``patch_size`` pixels a side): masks are bool (N, L) over that grid, row-major, True = hidden.
The encoder's output tokens lie on ``feature_grid``, each covering ``output_stride`` pixels a side
(equal to the patch grid for isotropic backbones, coarser for hierarchical ones). Output tokens
come as (N, P + L_out, num_features): ``num_prefix_tokens`` prefix tokens (class token) first,
then the feature grid row-major.

Masks. ``forward_features(x, mask)`` drops hidden patches before the blocks (capability
``token_drop``, MAE); ``forward_features(x, mask, mask_token)`` replaces their tokens by
``mask_token`` (1, 1, embed_dim) (capability ``mask_token``, SimMIM). A backbone whose patch
embedding mixes neighbouring pixels (a CNN stem, overlapping convolutions, TNT's pixel tokens)
also blanks the hidden pixels before embedding them, so no hidden pixel reaches a visible token.
"""

from __future__ import annotations

import re
from typing import Any, ClassVar

import torch
from torch import nn

CAPABILITIES: dict[str, str] = {
    "token_drop": "hidden patches can be dropped before the blocks (MAE)",
    "mask_token": "hidden patch tokens can be replaced by a learned mask token (SimMIM)",
    "patch_tokens": "one token per input patch from a per-patch embedding, and one output token "
    "per input patch (masked patch prediction)",
    "attention_maps": "full attention maps over the patch grid (attention distance, rollout)",
}
POOLS = ("token", "avg", "token+avg")


class Encoder(nn.Module):
    """Base class of every backbone.

    Subclasses set the class attributes ``family`` (the registry's family name), ``supports``
    (capabilities from :data:`CAPABILITIES`) and ``lacks`` (capability -> why this family does not
    have it), and the instance attributes ``arch``, ``embed_dim`` (width of ``embed`` tokens),
    ``num_features`` (width of output tokens and pooled features), ``num_prefix_tokens``,
    ``global_pool`` and ``num_classes``.
    """

    family: ClassVar[str] = ""
    supports: ClassVar[frozenset[str]] = frozenset()
    lacks: ClassVar[dict[str, str]] = {}

    arch: str | None
    embed_dim: int
    num_features: int
    num_prefix_tokens: int
    global_pool: str
    num_classes: int

    # geometry ---------------------------------------------------------------------------------
    @property
    def img_size(self) -> tuple[int, int]:
        """(H, W) of the images the encoder is built for."""
        raise NotImplementedError

    @property
    def patch_size(self) -> int:
        """Side in pixels of one input patch (the unit of masks)."""
        raise NotImplementedError

    @property
    def patch_grid(self) -> tuple[int, int]:
        """(gh, gw) input patches; masks are bool (N, gh * gw)."""
        h, w = self.img_size
        return h // self.patch_size, w // self.patch_size

    @property
    def num_patches(self) -> int:
        gh, gw = self.patch_grid
        return gh * gw

    @property
    def output_stride(self) -> int:
        """Side in pixels covered by one output token."""
        return self.patch_size

    @property
    def feature_grid(self) -> tuple[int, int]:
        """(fh, fw) grid of the output tokens after the prefix."""
        h, w = self.img_size
        return h // self.output_stride, w // self.output_stride

    @property
    def num_layers(self) -> int:
        """Largest layer id (the head); embeddings are layer 0."""
        raise NotImplementedError

    # forward ----------------------------------------------------------------------------------
    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """Patch embedding: images (N, C, H, W) -> tokens (N, L, embed_dim), L = gh * gw row-major."""
        raise NotImplementedError

    def forward_features(
        self, x: torch.Tensor, mask: torch.Tensor | None = None, mask_token: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Output tokens after the last block and the final norm.

        x: images (N, C, H, W) (or tokens (N, L, embed_dim) from :meth:`embed` where the backbone
        takes them); mask: optional bool (N, L) over the patch grid; mask_token: optional
        (1, 1, embed_dim). Without ``mask_token`` hidden patches are dropped, with it they are
        replaced -> (N, P + L_out, num_features).
        """
        raise NotImplementedError

    def forward_blocks(self, x: torch.Tensor, last_k: int = 1) -> list[torch.Tensor]:
        """Outputs of the last ``last_k`` blocks, each through the final norm, earliest first.

        x: images (N, C, H, W) -> [(N, P + L_out, num_features)] * last_k.
        """
        raise NotImplementedError

    @property
    def num_feature_blocks(self) -> int:
        """How many blocks :meth:`forward_blocks` can return (its ``last_k`` bound)."""
        raise NotImplementedError

    def pool(self, tokens: torch.Tensor, how: str | None = None) -> torch.Tensor:
        """Pooled features: tokens (N, P + L, F) -> (N, F) for "token" / "avg", (N, 2F) for "token+avg".

        ``how`` = None uses the encoder's own ``global_pool``.
        """
        how = how or self.global_pool
        if how not in POOLS:
            raise ValueError(f"unknown pool {how!r}; use one of {', '.join(POOLS)}")
        parts = []
        if "token" in how:
            if self.num_prefix_tokens == 0:
                raise ValueError(
                    f"pool={how!r} needs a class token, which {self.describe()} lacks; use 'avg'"
                )
            parts.append(tokens[:, 0])
        if "avg" in how:
            parts.append(tokens[:, self.num_prefix_tokens :].mean(dim=1))
        return torch.cat(parts, dim=-1)

    def forward_head(self, tokens: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """tokens (N, P + L, F) -> logits (N, num_classes), or pooled features (N, F) with ``pre_logits``."""
        x = self.pool(tokens)
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (N, C, H, W) -> (N, num_classes), or pooled features (N, F) without a head."""
        return self.forward_head(self.forward_features(x))

    def forward_with_attention(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Slow path for pictures (capability ``attention_maps``): x: (N, C, H, W) -> tokens
        (N, T, F), attention weights [(N, heads, T, T)] per block, T = P + gh * gw."""
        raise NotImplementedError(self.lacks.get("attention_maps", f"{self.family} has no attention maps"))

    # parameters -------------------------------------------------------------------------------
    def reset_classifier(self, num_classes: int) -> None:
        """Replace the head by a fresh one with ``num_classes`` outputs (0 = none)."""
        raise NotImplementedError

    def set_img_size(self, img_size: int | tuple[int, int]) -> None:
        """Adapt the encoder in place to another input size (position tables resampled)."""
        raise NotImplementedError

    def get_config(self) -> dict[str, Any]:
        """JSON-ready constructor arguments plus ``arch`` and ``family``: ``build_model`` rebuilds it."""
        raise NotImplementedError

    def no_weight_decay(self) -> set[str]:
        """Parameter names that take no weight decay beyond the 1-D rule (position tables, tokens)."""
        return set()

    def layer_id(self, name: str) -> int:
        """Layer of a parameter for layer-wise lr decay: 0 for embeddings, increasing with depth,
        ``num_layers`` for what follows the last block. ``encoder.`` prefixes are ignored."""
        raise NotImplementedError

    def pool_only_parameters(self) -> set[str]:
        """Parameters that only :meth:`pool` uses (a norm after pooling), which a loss on the output
        tokens (pixel objectives) cannot train; the trainer freezes them for such objectives."""
        return set()

    def pos_table(self) -> torch.Tensor | None:
        """The patch position table (1, L, D) over the patch grid, when the backbone has one."""
        return None

    def patch_filters(self) -> torch.Tensor | None:
        """The first convolution's filters (D, C, k, k), for the filter picture; None if there is none."""
        return None

    def flops_per_image(self, visible_patches: int | None = None, include_head: bool = True) -> int:
        """Analytic forward FLOPs per image (multiply-add = 2), matrix multiplies and convolutions."""
        raise NotImplementedError

    def num_params(self, trainable_only: bool = False) -> int:
        """Number of parameters (buffers excluded)."""
        return sum(p.numel() for p in self.parameters() if p.requires_grad or not trainable_only)

    def timm_spec(self) -> dict[str, Any] | str:
        """How timm builds this encoder: ``{"architecture", "model_args", "exact"}``, or the reason
        timm cannot (a string). ``exact`` is True when the architecture alone (a timm variant)
        describes it."""
        return f"no timm equivalent is known for the {self.family} family"

    # foreign checkpoints ------------------------------------------------------------------------
    @classmethod
    def owns_state_dict(cls, state: dict[str, torch.Tensor]) -> bool:
        """Whether a plain state dict (prefixes stripped) uses this family's parameter names."""
        return False

    @classmethod
    def infer_config(cls, state: dict[str, torch.Tensor]) -> dict[str, Any]:
        """Constructor arguments of the registered variant of this family whose tensors have the same
        names and shapes as ``state`` (the head's class count read from it); ``ValueError`` when
        none matches."""
        head = [v for k, v in state.items() if k.startswith("head") and k.endswith("weight") and v.ndim == 2]
        classes = int(head[-1].shape[0]) if head else 0
        body = {k: tuple(v.shape) for k, v in state.items() if not k.startswith("head")}
        variants = cls.__dict__.get("variants", {})  # made by sslvit.models.registry.variant
        for _name, make in sorted(variants.items()):
            with torch.device("meta"):
                candidate = make(num_classes=classes)
            own = {k: tuple(v.shape) for k, v in candidate.state_dict().items() if not k.startswith("head")}
            if own == body:
                return candidate.get_config()
        raise ValueError(
            f"this {cls.family} state dict matches no registered variant "
            f"({', '.join(sorted(variants))}): "
            "pass the variant name (--model NAME) and the options that differ"
        )

    def adapt_state_dict(self, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """A foreign state dict made to fit this encoder where that is safe (e.g. position tables
        resampled to this grid); the default changes nothing."""
        return state

    # helpers ----------------------------------------------------------------------------------
    def describe(self) -> str:
        return f"{self.arch or self.family} ({self.family})"

    def check_mask(self, mask: torch.Tensor | None, mask_token: torch.Tensor | None) -> None:
        """Refuse a mask mode the backbone does not support, naming the capability."""
        if mask is None:
            return
        need = "mask_token" if mask_token is not None else "token_drop"
        if need not in self.supports:
            raise ValueError(
                f"{self.describe()} cannot take {need}: {self.lacks.get(need, CAPABILITIES[need])}"
            )
        if tuple(mask.shape[1:]) != (self.num_patches,):
            raise ValueError(f"mask has shape {tuple(mask.shape)}, expected (N, {self.num_patches})")

    def hide_pixels(self, images: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Blank the pixels of hidden patches (to 0, the normalised mean).

        images: (N, C, H, W), mask: bool (N, L) over the patch grid -> (N, C, H, W).
        """
        p, (gh, gw) = self.patch_size, self.patch_grid
        keep = (~mask).to(images.dtype).reshape(-1, 1, gh, 1, gw, 1)
        n, c, h, w = images.shape
        return (images.reshape(n, c, gh, p, gw, p) * keep).reshape(n, c, h, w)


def replace_masked(tokens: torch.Tensor, mask: torch.Tensor, mask_token: torch.Tensor) -> torch.Tensor:
    """tokens (N, L, D), mask bool (N, L), mask_token (1, 1, D) -> (N, L, D), hidden rows = mask_token."""
    w = mask.unsqueeze(-1).to(tokens.dtype)
    return tokens * (1 - w) + mask_token.to(tokens.dtype) * w


def keep_visible(tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """tokens (N, L, ...) , mask bool (N, L) with the same hidden count per row -> (N, L_kept, ...)."""
    ids = visible_indices(mask)
    index = ids.reshape(*ids.shape, *([1] * (tokens.ndim - 2))).expand(-1, -1, *tokens.shape[2:])
    return torch.gather(tokens, 1, index)


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


def block_layer_id(name: str, prefix: str, num_layers: int, embed_prefixes: tuple[str, ...]) -> int:
    """Layer id for backbones with one flat list of blocks ``{prefix}.{i}.``: embeddings 0,
    block i -> i + 1, anything else ``num_layers``."""
    name = name.removeprefix("encoder.")
    if name.startswith(embed_prefixes):
        return 0
    match = re.match(rf"{re.escape(prefix)}\.(\d+)\.", name)
    return int(match.group(1)) + 1 if match else num_layers
