"""Checkpoints: the file format, foreign state dicts, the Hub's config.json, and specs -> encoders.

    save_model / read_state_dict / load_strict        sslvit.checkpoint.format
    strip_prefixes / infer_model_config / ...         sslvit.checkpoint.foreign   (timm, MAE, DeiT)
    hub_repo_id / download_files / model_config_from_hub   sslvit.checkpoint.hub_format
    resolve_checkpoint / load_checkpoint / read_metadata   sslvit.checkpoint.resolve
"""

from sslvit.checkpoint.foreign import (
    DECODER_PREFIXES,
    PREFIXES,
    decoder_keys,
    detect_family,
    drop_decoder,
    infer_model_config,
    load_encoder_weights,
    strip_prefixes,
)
from sslvit.checkpoint.format import (
    META_CONFIG,
    META_KIND,
    META_MODEL,
    META_OBJECTIVE,
    CheckpointError,
    decode_metadata,
    load_strict,
    read_file_metadata,
    read_state_dict,
    save_model,
)
from sslvit.checkpoint.hub_format import HUB_SCHEME, download_files, hub_repo_id, model_config_from_hub
from sslvit.checkpoint.resolve import (
    CheckpointSource,
    checkpoint_sha256,
    load_checkpoint,
    model_from_metadata,
    read_metadata,
    resolve_checkpoint,
)

__all__ = [
    "DECODER_PREFIXES", "HUB_SCHEME", "META_CONFIG", "META_KIND", "META_MODEL", "META_OBJECTIVE", "PREFIXES",
    "CheckpointError", "CheckpointSource", "checkpoint_sha256", "decode_metadata", "decoder_keys",
    "detect_family", "download_files", "drop_decoder", "hub_repo_id", "infer_model_config", "load_checkpoint",
    "load_encoder_weights", "load_strict", "model_config_from_hub", "model_from_metadata", "read_file_metadata", "read_metadata",
    "read_state_dict", "resolve_checkpoint", "save_model", "strip_prefixes",
]
