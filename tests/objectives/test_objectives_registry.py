"""The objective is the one extension point: a new objective is one file, found by the registry,
configured through its own typed section and checked against the backbones before any work."""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import pytest
import torch

import sslvit.objectives as objectives_pkg
from sslvit.config import ConfigError, key_docs
from sslvit.models import create_model
from sslvit.objectives import build_objective, objective_class, objectives, supported_pairs
from sslvit.objectives.registry import check_pair
from sslvit.training import config as config_lib

NEW_OBJECTIVE = '''
"""A toy objective: predict each image's mean brightness from the pooled features."""

from dataclasses import dataclass

import torch
from torch import nn

from sslvit.config import ObjectiveConfig
from sslvit.objectives.base import Objective


@dataclass
class BrightnessConfig(ObjectiveConfig):
    name: str = "brightness"
    scale: float = 1.0  # weight of the loss


class Brightness(Objective):
    name = "brightness"
    Config = BrightnessConfig
    requires = frozenset({"attention_maps"})
    uses_pooled_features = True
    card_fields = ("scale",)

    def __init__(self, encoder, cfg, mean=(0.5,) * 3, std=(0.25,) * 3):
        super().__init__(encoder, cfg, mean, std)
        self.head = nn.Linear(encoder.num_features, 1)

    def forward(self, batch):
        images = self.normalize(batch["image"])
        pred = self.head(self.encoder.forward_head(self.encoder.forward_features(images), pre_logits=True))
        loss = self.cfg.scale * ((pred[:, 0] - images.mean(dim=(1, 2, 3))) ** 2).mean()
        return loss, {"loss": loss.detach()}
'''


def _extra_objective(folder: Path, monkeypatch, module: str, source: str):
    """Put one objective file ``module``.py in ``folder`` on the objectives package path (undone after)."""
    folder.mkdir()
    (folder / f"{module}.py").write_text(textwrap.dedent(source))
    monkeypatch.setattr(objectives_pkg, "__path__", [*objectives_pkg.__path__, str(folder)])
    objectives.cache_clear()
    yield
    objectives.cache_clear()
    sys.modules.pop(f"sslvit.objectives.{module}", None)


@pytest.fixture
def one_more_objective(tmp_path: Path, monkeypatch):
    yield from _extra_objective(tmp_path / "more", monkeypatch, "brightness", NEW_OBJECTIVE)


def test_one_new_file_is_a_new_objective(one_more_objective):
    assert "brightness" in objectives()
    cfg = config_lib.load(None, ["objective.name=brightness", "objective.scale=2.0"])
    assert type(cfg.objective).__name__ == "BrightnessConfig" and cfg.objective.scale == 2.0
    with pytest.raises(ConfigError, match="objective.mask_ratio"):
        config_lib.load(None, ["objective.name=brightness", "objective.mask_ratio=0.5"])
    objective = build_objective(cfg.objective, create_model("vit_pico_patch4"))
    loss, _ = objective({"image": torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8)})
    loss.backward()
    assert objective.head.weight.grad is not None
    assert objective_class("brightness").card(cfg.objective) == "`brightness` scale=2.0"
    # its requirement decides which backbones it may train, before any work
    assert "brightness: vit, hybrid, tnt" in supported_pairs()
    with pytest.raises(ConfigError, match="'brightness' cannot train a 'poolformer' backbone"):
        check_pair("brightness", "poolformer")


def test_nothing_outside_the_registry_lists_objective_names():
    root = Path(__file__).resolve().parents[2] / "sslvit"
    names = sorted(objectives())
    offenders = []
    for path in root.rglob("*.py"):
        if path.parent.name == "objectives":
            continue
        text = path.read_text()
        for name in names:
            for pattern in (f'== "{name}"', f"== '{name}'", f'in ("{name}"', f'"{name}": ('):
                if pattern in text:
                    offenders.append(f"{path.relative_to(root)}: {pattern}")
    assert not offenders


CHECKED_OBJECTIVE = '''
"""A toy objective whose config declares its own ranges, a rule between two fields and meanings."""

from dataclasses import dataclass

from sslvit.config import ConfigError, ObjectiveConfig, join_key, opt
from sslvit.objectives.base import Objective


@dataclass
class WindowConfig(ObjectiveConfig):
    name: str = "window"
    low: float = opt(0.1, "lower edge of the window", ge=0)
    high: float = opt(0.9, "upper edge of the window", le=1)
    weight: float = 1.0  # weight of the loss

    def check(self, key: str) -> None:
        if self.low >= self.high:
            raise ConfigError(f"{join_key(key, 'low')}: {self.low} is out of range; allowed: < {self.high}")


class Window(Objective):
    name = "window"
    Config = WindowConfig
'''


@pytest.fixture
def checked_objective(tmp_path: Path, monkeypatch):
    yield from _extra_objective(tmp_path / "checked", monkeypatch, "window", CHECKED_OBJECTIVE)


def test_a_new_objective_brings_its_own_value_checks_and_meanings(checked_objective):
    cfg = config_lib.load(None, ["objective.name=window", "objective.low=0.2"])
    assert (cfg.objective.low, cfg.objective.high) == (0.2, 0.9)
    with pytest.raises(ConfigError, match=r"^objective.low: -0.5 is out of range; allowed: >= 0$"):
        config_lib.load(None, ["objective.name=window", "objective.low=-0.5"])
    with pytest.raises(ConfigError, match=r"^objective.low: 0.95 is out of range; allowed: < 0.9$"):
        config_lib.load(None, ["objective.name=window", "objective.low=0.95"])
    docs = key_docs(cfg)
    assert docs["objective.low"] == "lower edge of the window [allowed: >= 0]"
    assert docs["objective.weight"] == "weight of the loss"  # a plain field's trailing comment
    assert docs["objective.name"].startswith("the objective, a name registered in sslvit.objectives")
