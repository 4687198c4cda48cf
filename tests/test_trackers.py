"""Experiment trackers: names as a string or a list, missing or unknown ones refused, project and run names."""

from __future__ import annotations

import os

import pytest
from run_helpers import TINY, bar_shards

from sslvit.config import ConfigError
from sslvit.training import config as config_lib
from sslvit.training import launch as runtime
from sslvit.training.launch import (
    check_trackers,
    init_trackers,
    make_accelerator,
    parse_trackers,
    resolve_launch_options,
)


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("train.trackers=tensorboard", ("tensorboard",)),
        ("train.trackers=tensorboard,wandb", ("tensorboard", "wandb")),
        ("train.trackers=[tensorboard]", ("tensorboard",)),
        ("train.trackers=[]", ()),
    ],
)
def test_trackers_take_a_name_a_comma_list_or_a_list(override, expected):
    cfg = config_lib.load(None, [override])
    assert check_trackers(cfg.train.trackers) == expected


def test_tracker_strings_are_split_in_runtime_too():
    assert parse_trackers("tensorboard, wandb") == ("tensorboard", "wandb")
    assert parse_trackers(["tensorboard,wandb", "tensorboard"]) == ("tensorboard", "wandb")
    assert parse_trackers("") == ()


def test_an_unknown_tracker_is_an_error_naming_what_is_installed():
    with pytest.raises(ConfigError) as err:
        check_trackers(("tensorbored",))
    message = str(err.value)
    assert "train.trackers: unknown tracker 'tensorbored'" in message
    assert "installed here: " in message and "tensorboard" in message.split("installed here: ")[1]


def test_a_missing_tracker_is_an_error_not_dropped(monkeypatch):
    monkeypatch.setattr(runtime, "installed_trackers", lambda: ["tensorboard"])
    with pytest.raises(ConfigError, match=r"'wandb' is not installed \(pip install wandb\); installed here: tensorboard"):
        check_trackers(("tensorboard", "wandb"))


def test_a_bad_tracker_fails_before_the_run_directory_is_made(fresh_accelerate, tmp_path):
    from sslvit.training import train

    cfg = config_lib.load(None, [*TINY, "train.trackers=nosuch", f"train.out_dir={tmp_path}", "train.name=never",
                                 f"data.train_shards={tmp_path / 'none'}"])
    with pytest.raises(ConfigError, match="unknown tracker 'nosuch'"):
        train(cfg)
    assert not (tmp_path / "never").exists()


def test_project_and_run_names_reach_tensorboard_and_wandb(fresh_accelerate, tmp_path):
    pytest.importorskip("wandb")
    fresh_accelerate.setenv("WANDB_MODE", "offline")
    fresh_accelerate.setenv("WANDB_DIR", str(tmp_path / "wandb"))
    fresh_accelerate.setenv("WANDB_SILENT", "true")
    (tmp_path / "wandb").mkdir()
    cfg = config_lib.load(None, ["train.trackers=tensorboard,wandb", "train.project=digits-mae",
                                 "train.name=run-7"])
    run_dir = tmp_path / "run-7"
    options = resolve_launch_options(cfg)
    accelerator = make_accelerator(cfg, run_dir, options)
    init_trackers(accelerator, cfg, run_dir.name, {"optim.lr": 0.001})
    accelerator.log({"loss": 1.5}, step=1)
    tensorboard = accelerator.get_tracker("tensorboard")
    wandb_run = accelerator.get_tracker("wandb", unwrap=True)
    assert tensorboard.logging_dir == os.path.join(str(run_dir / "logs"), "run-7")
    assert (wandb_run.name, wandb_run.project) == ("run-7", "digits-mae")
    accelerator.end_training()
    assert list((run_dir / "logs" / "run-7").glob("events.out.tfevents*"))
    assert list((tmp_path / "wandb").rglob("*.wandb")), "wandb wrote its offline run"


def test_a_training_run_logs_tensorboard_under_its_name(fresh_accelerate, tmp_path):
    from sslvit.training import train

    shards = bar_shards(tmp_path / "bars", train=32, val=20)
    cfg = config_lib.load(None, [*TINY, f"data.train_shards={shards['train']}", "train.steps=1",
                                 "train.trackers=tensorboard", f"train.out_dir={tmp_path}", "train.name=named"])
    train(cfg)
    assert list((tmp_path / "named" / "logs" / "named").glob("events.out.tfevents*"))
