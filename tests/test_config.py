from pathlib import Path

import pytest
import yaml

from sslvit.config import ConfigError
from sslvit.training import config as config_lib
from sslvit.training.config import RunConfig

CONFIGS = sorted((Path(__file__).resolve().parents[1] / "sslvit" / "configs").glob("*.yaml"))


def test_defaults_and_overrides_in_both_forms():
    cfg = config_lib.load(None, ["data.batch_size=64", "--optim.betas", "[0.8, 0.9]", "--train.name=x"])
    assert cfg.data.batch_size == 64
    assert cfg.optim.betas == (0.8, 0.9)
    assert cfg.train.name == "x"
    assert cfg.model.name == RunConfig().model.name


def test_yaml_file_then_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("data:\n  batch_size: 32\noptim:\n  lr: 0.001\n")
    cfg = config_lib.load(path, ["optim.lr=0.002"])
    assert cfg.data.batch_size == 32
    assert cfg.optim.lr == pytest.approx(0.002)


@pytest.mark.parametrize(
    "override, key",
    [
        ("data.batchsize=3", "data.batchsize"),
        ("nosection.x=1", "nosection"),
        ("data.batch_size=three", "data.batch_size"),
        ("data.batch_size=2.5", "data.batch_size"),
        ("objective.name=byol", "objective.name"),
        ("optim.betas=[0.9]", "optim.betas"),
        ("train.compile=maybe", "train.compile"),
    ],
)
def test_errors_name_the_key(override, key):
    with pytest.raises(ConfigError) as err:
        config_lib.load(None, [override])
    assert key in str(err.value)


def test_unknown_key_in_file_is_named(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("model:\n  name: vit_base_patch16\n  dept: 3\n")
    with pytest.raises(ConfigError, match="model.dept"):
        config_lib.load(path)


def test_missing_file_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.yaml"):
        config_lib.load(tmp_path / "nope.yaml")


def test_int_accepted_where_float_expected_and_none_for_optional():
    cfg = config_lib.load(None, ["optim.lr=1", "model.patch_size=null", "optim.min_lr=1e-6"])
    assert isinstance(cfg.optim.lr, float) and cfg.optim.lr == 1.0
    assert cfg.model.patch_size is None
    assert cfg.optim.min_lr == pytest.approx(1e-6)


def test_save_round_trip(tmp_path):
    cfg = config_lib.load(None, ["data.crop_scale=[0.3, 0.9]", "train.trackers=[]"])
    path = config_lib.save(cfg, tmp_path / "config.yaml")
    again = config_lib.load(path)
    assert again == cfg
    assert yaml.safe_load(path.read_text())["data"]["crop_scale"] == [0.3, 0.9]


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_shipped_configs_load(path):
    if path.name.startswith("accelerate_"):
        data = yaml.safe_load(path.read_text())
        assert data["distributed_type"] == "FSDP"
        return
    if path.name.startswith("finetune_"):
        from sslvit.evaluate.finetune import FinetuneConfig

        cfg = config_lib.load(path, cls=FinetuneConfig)
    else:
        cfg = config_lib.load(path)
    assert isinstance(cfg, RunConfig)
    assert path.read_text().lstrip().startswith("#"), "each config says in a comment what it is for"


def test_partial_section_keeps_a_subclass_default(tmp_path):
    from dataclasses import dataclass, field

    from sslvit.config import ObjectiveConfig
    from sslvit.objectives import objective_config

    @dataclass
    class Finetune(RunConfig):
        objective: ObjectiveConfig = field(default_factory=lambda: objective_config("supervised"))

    path = tmp_path / "f.yaml"
    path.write_text("objective:\n  label_smoothing: 0.2\n")
    cfg = config_lib.load(path, cls=Finetune)
    assert cfg.objective.name == "supervised"
    assert cfg.objective.label_smoothing == pytest.approx(0.2)


def test_objective_section_is_the_named_objectives_own():
    from sslvit.objectives.mae import MAEConfig
    from sslvit.objectives.simmim import SimMIMConfig

    assert isinstance(config_lib.load().objective, MAEConfig)
    simmim = config_lib.load(None, ["objective.name=simmim", "objective.mask_patch_size=8"])
    assert isinstance(simmim.objective, SimMIMConfig)
    assert (simmim.objective.mask_ratio, simmim.objective.mask_patch_size) == (0.6, 8)
    # switching objective drops the other objective's defaults; its keys are then unknown
    with pytest.raises(ConfigError, match="objective.decoder_depth"):
        config_lib.load(None, ["objective.name=simmim", "objective.decoder_depth=2"])
    with pytest.raises(ConfigError, match="objective.name: unknown objective 'byol'; known: (.*, )?mae, mpp"):
        config_lib.load(None, ["objective.name=byol"])


def test_an_objective_file_round_trips_through_its_own_section(tmp_path):
    cfg = config_lib.load(None, ["objective.name=mpp", "objective.mpp_target=l2_patch"])
    again = config_lib.load(config_lib.save(cfg, tmp_path / "c.yaml"))
    assert again == cfg and type(again.objective).__name__ == "MPPConfig"


def test_switching_the_objective_on_the_command_line_drops_the_files_other_objective(tmp_path):
    path = tmp_path / "mae.yaml"
    path.write_text("objective:\n  name: mae\n  decoder_depth: 1\nmodel:\n  name: vit_pico_patch4\n")
    cfg = config_lib.load(path, ["objective.name=simmim", "objective.mask_ratio=0.5"])
    assert type(cfg.objective).__name__ == "SimMIMConfig" and cfg.objective.mask_ratio == 0.5
    assert cfg.model.name == "vit_pico_patch4"  # other sections of the file still apply
    assert config_lib.load(path).objective.decoder_depth == 1
