"""The shipped recipes pinned to docs/recipes.md: every row naming a config key holds the value the
config loads, and every row marked ``=`` states the official value it equals."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from sslvit.evaluate.common import load_config
from sslvit.evaluate.finetune import FinetuneConfig
from sslvit.training.config import load as load_run_config

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "recipes.md"
HEADING = re.compile(r"^## `(\w+)` \((pretrain|finetune)\)$")


def recipe_tables() -> dict[str, tuple[str, list[list[str]]]]:
    """recipe name -> (command, rows of [setting, key, sslvit, official, marker, source])."""
    tables: dict[str, tuple[str, list[list[str]]]] = {}
    current = None
    for line in DOC.read_text().splitlines():
        match = HEADING.match(line)
        if match:
            current = match.group(1)
            tables[current] = (match.group(2), [])
        elif line.startswith("## "):
            current = None
        elif current and line.startswith("| ") and not line.startswith(("| setting", "|---")):
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            assert len(cells) == 6, line
            tables[current][1].append(cells)
    return tables


TABLES = recipe_tables()


def table_value(text: str):
    """A table cell as YAML; numbers such as ``2e-06`` (a string to YAML 1.1) as floats."""
    value = yaml.safe_load(text)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    return value


def loaded_value(config, key: str):
    value = config
    for part in key.split("."):
        value = getattr(value, part)
    return list(value) if isinstance(value, tuple) else value


def test_the_document_covers_the_recipes_it_names():
    assert {"mae_vit_base", "mae_vit_large", "finetune_mae_vit_base", "simmim_vit_base", "supervised_swin_tiny",
            "supervised_poolformer_s12", "supervised_tnt_s", "mae_vit_huge", "finetune_mae_vit_large",
            "finetune_mae_vit_huge", "supervised_vit_base", "mpp_vit_base", "supervised_vit_base_r50_s16_in21k",
            "finetune_vit_base_r50_s16_384", "simmim_swin_base", "finetune_simmim_swin_base",
            "finetune_simmim_vit_base"} <= set(TABLES)
    for name, (_, rows) in TABLES.items():
        assert (ROOT / "sslvit" / "configs" / f"{name}.yaml").is_file(), name
        assert len(rows) >= 10, name
        assert {r[4] for r in rows} <= {"=", "differs", "layout"}, name


@pytest.mark.parametrize("name", sorted(TABLES))
def test_recipe_equals_its_table(name):
    command, rows = TABLES[name]
    if command == "finetune":
        config = load_config(FinetuneConfig, ROOT / "sslvit" / "configs" / f"{name}.yaml",
                             ["finetune.checkpoint=unused.safetensors"])
    else:
        config = load_run_config(ROOT / "sslvit" / "configs" / f"{name}.yaml")
    for setting, key, ours, official, marker, _ in rows:
        if marker == "=":
            assert ours == official, f"{name}: {setting}: marked '=' but {ours!r} != {official!r}"
        if key == "-":
            continue
        expected = table_value(ours)
        assert loaded_value(config, key) == expected, f"{name}: {key} is {loaded_value(config, key)!r}, table says {ours}"


def test_a_changed_setting_fails_the_pin(tmp_path):
    """The pin is real: the MAE recipe with one setting changed disagrees with its table."""
    changed = tmp_path / "mae_vit_base.yaml"
    text = (ROOT / "sslvit" / "configs" / "mae_vit_base.yaml").read_text()
    changed.write_text(text.replace("no_decay: []", "no_decay: null"))
    config = load_run_config(changed)
    row = next(r for r in TABLES["mae_vit_base"][1] if r[1] == "optim.no_decay")
    assert loaded_value(config, "optim.no_decay") != table_value(row[2])


def test_supervised_from_scratch_takes_rand_augment_and_erasing():
    """The supervised recipes train from scratch with RandAugment and random erasing in the
    pretrain stage; without them the transform is the plain crop + flip."""
    from sslvit.data.transforms import RandAugment, RandomErasing
    from sslvit.training.data import stage_transform

    cfg = load_run_config(ROOT / "sslvit" / "configs" / "supervised_swin_tiny.yaml")
    ops = list(stage_transform(cfg, "pretrain").ops.transforms)
    assert any(isinstance(op, RandAugment) for op in ops) and any(isinstance(op, RandomErasing) for op in ops)
    plain = stage_transform(load_run_config(None, ["objective.name=supervised", "objective.num_classes=10"]),
                            "pretrain")
    assert not any(isinstance(op, (RandAugment, RandomErasing)) for op in (plain.ops.transforms if plain.ops else []))


def test_fine_tune_refuses_the_objectives_augmentation_keys():
    from sslvit.config import ConfigError
    from sslvit.evaluate.finetune import prepare_finetune

    cfg = load_config(FinetuneConfig, None, ["finetune.checkpoint=x.safetensors", "objective.reprob=0.5"])
    with pytest.raises(ConfigError, match=r"objective.reprob: .*finetune.reprob"):
        prepare_finetune(cfg)
