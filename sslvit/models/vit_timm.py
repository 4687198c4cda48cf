"""The ViT and timm: the ``config.json`` entry timm builds it from, and plain timm / MAE / DeiT state dicts.

timm builds a ViT from ``architecture`` with ``model_args`` over that variant's defaults: the matching
timm variant when width / depth / heads / patch / size are standard (``vit_base_patch16_224``),
else ``vit_base_patch16_224`` as the entry point with every argument in ``model_args``. A ViT with
DeiT's distillation token is timm's ``VisionTransformerDistilled`` (``deit_*_distilled_patch16_*``,
carrier ``deit_base_distilled_patch16_224``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch

TIMM_SIZES = {(192, 12, 3): "tiny", (384, 12, 6): "small", (768, 12, 12): "base",
              (1024, 24, 16): "large", (1280, 32, 16): "huge"}
TIMM_VARIANTS = {
    "vit_tiny_patch16_224", "vit_tiny_patch16_384", "vit_small_patch32_224", "vit_small_patch32_384",
    "vit_small_patch16_224", "vit_small_patch16_384", "vit_small_patch8_224", "vit_base_patch32_224",
    "vit_base_patch32_384", "vit_base_patch16_224", "vit_base_patch16_384", "vit_base_patch8_224",
    "vit_large_patch32_224", "vit_large_patch32_384", "vit_large_patch16_224", "vit_large_patch16_384",
    "vit_huge_patch14_224",
}
TIMM_CARRIER = "vit_base_patch16_224"
TIMM_DISTILLED_VARIANTS = {
    "deit_tiny_distilled_patch16_224", "deit_small_distilled_patch16_224", "deit_base_distilled_patch16_224",
    "deit_base_distilled_patch16_384",
}
TIMM_DISTILLED_CARRIER = "deit_base_distilled_patch16_224"


def unsupported(cfg: dict[str, Any]) -> str | None:
    """Why timm's ``VisionTransformer`` cannot express a ViT config (shared by the hybrid), or None."""
    if cfg["pos_embed"] not in ("learned", "sincos") or cfg["pos_embed_at"] != "input":
        return f"pos_embed={cfg['pos_embed']!r} at {cfg['pos_embed_at']!r} has no timm equivalent"
    if cfg["head_type"] == "pre_logits" and cfg["num_classes"] > 0:
        return "the tanh pre-logits head has no timm equivalent"
    if abs(float(cfg["norm_eps"]) - 1e-6) > 1e-12:
        return f"norm_eps={cfg['norm_eps']} differs from timm's 1e-6"
    return None


def model_args(cfg: dict[str, Any], img_size: tuple[int, int], patch_size: bool = True) -> dict[str, Any]:
    """timm ``VisionTransformer`` keyword arguments that rebuild the ViT part of ``cfg`` exactly
    (``patch_size`` left out for the hybrid, whose stem sets it)."""
    h, w = img_size
    args = {
        "img_size": h if h == w else [h, w], "in_chans": cfg["in_chans"],
        "embed_dim": cfg["embed_dim"], "depth": cfg["depth"], "num_heads": cfg["num_heads"],
        "mlp_ratio": cfg["mlp_ratio"], "qkv_bias": cfg["qkv_bias"], "class_token": cfg["class_token"],
        "global_pool": cfg["global_pool"], "fc_norm": bool(cfg.get("fc_norm", False)),
    }  # without fc_norm sslvit normalises every token before pooling, as timm does with fc_norm=False
    if patch_size:
        args = {"patch_size": cfg["patch_size"], **args}
    if cfg.get("layer_scale_init"):
        args["init_values"] = cfg["layer_scale_init"]
    return args


def timm_spec(cfg: dict[str, Any], img_size: tuple[int, int]) -> dict[str, Any] | str:
    """``{"architecture", "model_args", "exact"}`` for a ViT config, or the reason timm cannot build it."""
    reason = unsupported(cfg)
    if reason is not None:
        return reason
    h, w = img_size
    size = TIMM_SIZES.get((cfg["embed_dim"], cfg["depth"], cfg["num_heads"]))
    distilled = bool(cfg.get("distilled", False))
    architecture, exact = (TIMM_DISTILLED_CARRIER if distilled else TIMM_CARRIER), False
    for res in (h if h == w else None, 224):
        name = (f"deit_{size}_distilled_patch{cfg['patch_size']}_{res}" if distilled
                else f"vit_{size}_patch{cfg['patch_size']}_{res}")
        if size and res and name in (TIMM_DISTILLED_VARIANTS if distilled else TIMM_VARIANTS):
            architecture, exact = name, True
            break
    return {"architecture": architecture, "model_args": model_args(cfg, img_size), "exact": exact}


def infer_config(state: dict[str, torch.Tensor], models: Mapping[str, Callable]) -> dict[str, Any]:
    """Constructor arguments of a plain ViT state dict (timm / MAE / DeiT names).

    Width, depth, patch size, MLP ratio, class token, distillation token (``dist_token``), norm
    after pooling (``fc_norm.*``: average pooling, as timm's and MAE's average-pool models), image
    size (from the position table), BEiT's relative bias (shared ``rel_pos_bias.*`` or per block) and
    classes are read off the tensors; the head count cannot be,
    so it comes from the registered variant in ``models`` with the same width, depth and patch size
    (one with the same distillation token first), and a ``ValueError`` asks for the variant name
    when there is none.
    """
    dim, in_chans, patch, _ = state["patch_embed.proj.weight"].shape
    depth = 1 + max(int(k.split(".")[1]) for k in state if k.startswith("blocks."))
    distilled, fc_norm = "dist_token" in state, "fc_norm.weight" in state
    same = sorted(
        (bool(m.defaults.get("distilled", False)) != distilled, n) for n, m in models.items()
        if (m.defaults["embed_dim"], m.defaults["depth"], m.defaults["patch_size"]) == (dim, depth, patch)
    )
    same = [n for _, n in same]
    if not same:
        raise ValueError(
            f"a ViT with width {dim}, depth {depth} and {patch} px patches is not a registered variant, "
            "so its head count is unknown: pass the variant name (--model NAME) with num_heads"
        )
    class_token = "cls_token" in state
    config: dict[str, Any] = {
        **models[same[0]].defaults, "arch": same[0], "in_chans": int(in_chans),
        "mlp_ratio": state["blocks.0.mlp.fc1.weight"].shape[0] / dim,
        "qkv_bias": "blocks.0.attn.qkv.bias" in state, "class_token": class_token,
        "global_pool": "token" if class_token and not fc_norm else "avg",
        "fc_norm": fc_norm, "distilled": distilled,
        "num_classes": int(state["head.weight"].shape[0]) if "head.weight" in state else 0,
    }
    if "pos_embed" in state:
        prefix = int(class_token) + int(distilled)
        grid = int(round((state["pos_embed"].shape[1] - prefix) ** 0.5))
        config["img_size"] = grid * int(patch)
    elif "rel_pos_bias.relative_position_bias_table" in state:
        config["pos_embed"] = "shared_relative"  # BEiT's shared bias (SimMIM's pretrained ViT)
    elif "blocks.0.attn.relative_position_bias_table" in state:
        config["pos_embed"] = "block_relative"  # BEiT's per-block bias (SimMIM's fine-tuned ViT)
    else:
        config["pos_embed"] = "none"
    return config
