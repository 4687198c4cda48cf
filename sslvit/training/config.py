"""The whole run's config: the basic sections plus the objective section, dispatched on its name.

:class:`RunConfig` is what ``sslvit pretrain`` loads and what every checkpoint records. Its
``objective`` section is polymorphic: the objective named ``objective.name`` supplies the
dataclass (``sslvit.objectives.registry``), so each objective's keys are checked against that
objective's own fields. :func:`load` and :func:`from_dict` are the generic loader's, for a
:class:`RunConfig` unless another class is given.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sslvit import config as config_lib
from sslvit.config import (
    ConfigError,
    DataConfig,
    ModelConfig,
    ObjectiveConfig,
    OptimConfig,
    TrainConfig,
    join_key,
)

DEFAULT_OBJECTIVE = "mae"


def default_objective() -> ObjectiveConfig:
    """The default objective section (MAE with its own defaults)."""
    from sslvit.objectives.registry import config_class  # deferred: torch-free CLI start

    return config_class(DEFAULT_OBJECTIVE)()


def objective_section(values: dict, key: str) -> type:
    """The dataclass of an objective section whose values are ``values`` (dispatch on ``name``)."""
    from sslvit.objectives.registry import config_class  # deferred: torch-free CLI start

    name = values.get("name", DEFAULT_OBJECTIVE)
    try:
        return config_class(name)
    except KeyError as err:
        raise ConfigError(f"{key}.name: {err.args[0]}") from None


@dataclass
class RunConfig:
    """The whole run."""

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    objective: ObjectiveConfig = config_lib.polymorphic(default_objective, objective_section)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def check(self, key: str) -> None:
        """Rules between sections: a model name (empty only where this config's own default is empty,
        e.g. a fine-tune that reads it from the checkpoint) and an objective x backbone pair that can
        train."""
        model_key = join_key(key, "model.name")
        if not self.model.name:
            spec = {f.name: f for f in dataclasses.fields(self)}["model"]
            default = spec.default if spec.default_factory is dataclasses.MISSING else spec.default_factory()
            if default.name:
                raise ConfigError(f"{model_key}: '' is not a model; allowed: a name registered in "
                                  "sslvit.models")
            return
        from sslvit.models import model_family  # deferred: torch-free CLI start
        from sslvit.objectives.registry import check_pair  # deferred: torch-free CLI start

        try:
            check_pair(self.objective.name, model_family(self.model.name))
        except ConfigError as err:
            raise ConfigError(f"{model_key}: {err}") from None


def load(file: str | Path | None = None, overrides: Sequence[str] = (), cls: type = RunConfig) -> Any:
    """A :class:`RunConfig` (or ``cls``) from an optional YAML ``file`` and ``overrides``
    (:func:`sslvit.config.load`)."""
    return config_lib.load(file, overrides, cls)


def from_dict(values: dict, cls: type = RunConfig) -> Any:
    """Rebuild a :class:`RunConfig` (or ``cls``) from :func:`sslvit.config.to_dict` output."""
    return config_lib.from_dict(values, cls)


to_dict = config_lib.to_dict
save = config_lib.save
