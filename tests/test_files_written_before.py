"""Files written by an earlier sslvit still read: an encoder, an objective, a published folder and a
resumable checkpoint (tests/fixtures/1eb4611, see its README.md), each giving the numbers it gave
then."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import sslvit
from sslvit.training.checkpoints import validate_checkpoint
from sslvit.viz.run import load_objective

OLD = Path(__file__).resolve().parent / "fixtures" / "1eb4611"


@pytest.fixture(scope="module")
def expected() -> dict[str, torch.Tensor]:
    return load_file(str(OLD / "expected.safetensors"))  # input (2, 3, 32, 32), features (2, 65, 32)


@pytest.mark.parametrize("where", ["run/model.safetensors", "run", "published"])
def test_an_old_encoder_gives_the_features_it_gave(where, expected):
    load = sslvit.from_pretrained if where == "published" else sslvit.load_checkpoint
    encoder = load(str(OLD / where)).eval()
    with torch.no_grad():
        features = encoder.forward_features(expected["input"])
    # the fixture's features were computed on another CPU: matmul kernels differ by ~1e-6 between CPU types
    torch.testing.assert_close(features, expected["features"], rtol=1e-5, atol=1e-5)


def test_an_old_objective_loads_strictly_with_the_same_encoder(expected):
    objective = load_objective(OLD / "run" / "objective.safetensors", [0.5] * 3, [0.5] * 3).eval()
    assert type(objective).__name__ == "MAE"
    with torch.no_grad():
        features = objective.encoder.forward_features(expected["input"])
    assert torch.allclose(features, expected["features"], atol=1e-6)  # the objective's copy of the encoder


def test_an_old_checkpoint_verifies_and_resumes_to_the_model_it_finished_with(tmp_path, monkeypatch):
    from sslvit.training import config, train

    run = tmp_path / "runs" / "old"
    shutil.copytree(OLD / "run", run)
    step = validate_checkpoint(run / "checkpoints" / "step_0000001", total_steps=2)
    assert step.state.step == 1
    finished = load_file(str(run / "model.safetensors"))
    monkeypatch.chdir(tmp_path)  # the run trained on the built-in digits, built here as it was there
    cfg = config.load(run / "config.yaml", [f"train.out_dir={tmp_path / 'runs'}", "train.resume=latest",
                                            "train.progress=false", "train.trackers=[]"])
    result = train(cfg)
    assert result.steps == 2
    again = load_file(str(result.model_path))
    assert again.keys() == finished.keys()
    for key in finished:  # bitwise on the machine that wrote it; CPU types differ by float rounding
        torch.testing.assert_close(again[key], finished[key], rtol=1e-5, atol=1e-6, msg=key)
