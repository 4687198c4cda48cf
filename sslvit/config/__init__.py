"""Typed configs: the generic loader (:mod:`sslvit.config.loader`) and the basic sections
(:mod:`sslvit.config.sections`). The whole run's config is :class:`sslvit.training.config.RunConfig`."""

from sslvit.config.loader import (
    Bounds,
    ConfigError,
    allowed,
    check_sections,
    check_tree,
    check_values,
    from_dict,
    join_key,
    key_docs,
    load,
    opt,
    parse_overrides,
    polymorphic,
    save,
    show_value,
    source_comments,
    to_dict,
)
from sslvit.config.sections import DataConfig, ModelConfig, ObjectiveConfig, OptimConfig, TrainConfig

__all__ = [
    "Bounds", "ConfigError", "DataConfig", "ModelConfig", "ObjectiveConfig", "OptimConfig", "TrainConfig",
    "allowed", "check_sections", "check_tree", "check_values", "from_dict", "join_key", "key_docs", "load", "opt", "parse_overrides",
    "polymorphic", "save", "show_value", "source_comments", "to_dict",
]
