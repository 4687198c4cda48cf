"""Foreign state dicts: timm, MAE and DeiT releases, wrapper prefixes, pretraining decoders.

A single filter adapts a state dict to an sslvit encoder (:func:`load_encoder_weights`): wrapper
prefixes are stripped, a pretraining decoder is dropped (saying so), and the encoder's own
``adapt_state_dict`` resamples position tables. A plain state dict names its architecture by its
parameter names and shapes (:func:`infer_model_config`); nothing is guessed.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from sslvit.checkpoint.format import CheckpointError, load_strict
from sslvit.models import FAMILIES, model_family
from sslvit.progress import say

PREFIXES = ("module.", "_orig_mod.", "encoder.", "backbone.", "model.")
DECODER_PREFIXES = ("decoder_", "decoder.", "mask_token")


def strip_prefixes(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Drop wrapper prefixes (``module.``, ``encoder.``, ...); keep only encoder keys of an objective."""
    if any(k.startswith("encoder.") for k in state):
        state = {k[len("encoder.") :]: v for k, v in state.items() if k.startswith("encoder.")}
    out = {}
    for key, value in state.items():
        changed = True
        while changed:
            changed = False
            for prefix in PREFIXES:
                if key.startswith(prefix):
                    key, changed = key[len(prefix) :], True
        out[key] = value
    return out


def decoder_keys(state: dict[str, torch.Tensor], keep: set[str] | None = None) -> list[str]:
    """Keys of an MAE / SimMIM pretraining head (``decoder_*``, ``decoder.*``, ``mask_token``) in
    ``state``, those in ``keep`` (a model's own keys) excepted, sorted."""
    return sorted(k for k in state if k.startswith(DECODER_PREFIXES) and k not in (keep or set()))


def drop_decoder(state: dict[str, torch.Tensor], keep: set[str] | None = None, source: str = "checkpoint"
                 ) -> dict[str, torch.Tensor]:
    """``state`` without its :func:`decoder_keys`; one line names the dropped prefixes and counts."""
    dropped = decoder_keys(state, keep)
    if not dropped:
        return state
    counts: dict[str, int] = {}
    for key in dropped:
        group = key.split(".")[0] + (".*" if "." in key else "")
        counts[group] = counts.get(group, 0) + 1
    say(f"{source}: took the encoder; dropped {len(dropped)} decoder keys: "
        + ", ".join(f"{group} ({n})" for group, n in counts.items()))
    return {k: v for k, v in state.items() if k not in set(dropped)}


def detect_family(state: dict[str, torch.Tensor]) -> str:
    """The backbone family whose parameter names ``state`` uses (prefixes already stripped).

    Families are asked most specific first (the plain ViT last: a hybrid also has ViT blocks).
    """
    for family in sorted(FAMILIES, key=lambda f: f == "vit"):
        if FAMILIES[family].owns_state_dict(state):
            return family
    raise CheckpointError(
        "not an encoder of a known family (" + ", ".join(sorted(FAMILIES)) + "): no parameter names "
        f"match; first keys: {', '.join(sorted(state)[:5])}"
    )


def infer_model_config(state: dict[str, torch.Tensor]) -> dict:
    """The constructor arguments of a plain state dict, from the registered variant it matches.

    The family comes from the parameter names; the variant is the one whose tensors have the same
    names and shapes (position tables and the head may differ: the image size and the class count
    are read from them). Nothing is guessed: a state dict that matches no registered variant raises
    :class:`CheckpointError` asking for the variant name.
    """
    state = strip_prefixes(state)
    family = detect_family(state)
    try:
        return FAMILIES[family].infer_config(state)
    except ValueError as err:
        raise CheckpointError(str(err)) from None


def load_encoder_weights(
    model: nn.Module, state: dict[str, torch.Tensor], ignore_head: bool = False, source: str = "checkpoint"
) -> None:
    """Load encoder weights into ``model``, adapting them where that is safe.

    Wrapper prefixes are stripped, a pretraining decoder is dropped (:func:`drop_decoder`, which
    says so) and the encoder's own filter (``adapt_state_dict``: position tables of another grid
    size resampled) is applied. With ``ignore_head`` the checkpoint's ``head.*`` / ``head_dist.*``
    is dropped and the model keeps its own. Any other missing or unexpected key or shape mismatch
    raises :class:`CheckpointError` listing each one.
    """
    own = model.state_dict()
    state = drop_decoder(strip_prefixes(state), set(own), source)
    if ignore_head:
        heads = ("head.", "head_dist.")
        state = {k: v for k, v in state.items() if not k.startswith(heads)}
        state.update({k: v for k, v in own.items() if k.startswith(heads)})
    if hasattr(model, "adapt_state_dict"):
        state = model.adapt_state_dict(state)
    load_strict(model, state, source)


def named_options(model_name: str, state: dict[str, torch.Tensor], source: str) -> dict[str, Any]:
    """Options of ``model_name``'s family that the plain ``state``'s parameter names fix (ViT:
    ``fc_norm``, ``distilled``), said in one line when there are any."""
    read = getattr(FAMILIES[model_family(model_name)], "state_dict_options", None)
    options = read(state) if read is not None else {}
    if options:
        say(f"{source}: {model_name} with {', '.join(f'{k}={v!r}' for k, v in options.items())}, "
            "as the checkpoint's parameter names require")
    return options
