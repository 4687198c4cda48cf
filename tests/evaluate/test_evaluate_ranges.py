"""Evaluator options outside their ranges are refused before any work, on the command line and in
code; and every number of every shipped config class has a range, so a new option brings one."""

from __future__ import annotations

import dataclasses
import typing

import pytest

from sslvit.cli import main
from sslvit.config import ConfigError
from sslvit.evaluate.finetune import FinetuneConfig, run_finetune
from sslvit.evaluate.knn import KnnConfig, run_knn
from sslvit.evaluate.linear_probe import ProbeConfig, run_linear_probe
from sslvit.objectives import objectives
from sslvit.training.config import RunConfig


@pytest.mark.parametrize(("argv", "said"), [
    (["knn", "--k", "0"], "k: 0 is out of range; allowed: >= 1"),
    (["knn", "--k", "-1"], "k: -1 is out of range; allowed: >= 1"),
    (["knn", "--temperature", "0"], "temperature: 0.0 is out of range; allowed: > 0"),
    (["probe", "--epochs", "-1"], "epochs: -1 is out of range; allowed: >= 1"),
    (["probe", "--crop_pct", "0"], "crop_pct: 0.0 is out of range; allowed: in (0, 1]"),
    (["knn", "--image_size", "0"], "image_size: 0 is out of range; allowed: in [1, 4096] or null"),
    (["probe", "--num_workers", "-1"], "num_workers: -1 is out of range; allowed: >= 0"),
    (["probe", "--holdout_fraction", "1"], "holdout_fraction: 1.0 is out of range; allowed: in [0, 1)"),
    (["finetune", "--finetune.eval_crop_pct", "0"], "finetune.eval_crop_pct: 0.0 is out of range"),
])
def test_an_option_out_of_range_is_a_one_line_error(argv, said, tmp_path, capsys):
    # the checkpoint does not exist: the range is refused before anything is read
    assert main([*argv, "--checkpoint", str(tmp_path / "none.safetensors")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"sslvit {argv[0]}: error: {said}") and err.count("\n") == 1
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("run", [
    lambda: run_knn(KnnConfig(checkpoint="none", k=0)),
    lambda: run_linear_probe(ProbeConfig(checkpoint="none", epochs=0)),
    lambda: run_finetune(dataclasses.replace(FinetuneConfig(), data=dataclasses.replace(
        FinetuneConfig().data, batch_size=0))),
])
def test_a_config_built_in_code_is_checked_as_a_loaded_one(run):
    with pytest.raises(ConfigError, match="out of range"):
        run()


def _unranged(config: object, prefix: str = "") -> list[str]:
    hints = typing.get_type_hints(type(config))
    found = []
    for f in dataclasses.fields(config):
        value, shown = getattr(config, f.name), str(hints[f.name])
        if dataclasses.is_dataclass(value):
            found += _unranged(value, f"{prefix}{f.name}.")
        elif ("int" in shown or "float" in shown) and "bool" not in shown and "bounds" not in f.metadata:
            found.append(f"{prefix}{f.name}")
    return found


def test_every_number_of_every_config_has_a_range():
    configs = [RunConfig(), FinetuneConfig(), KnnConfig(), ProbeConfig(),
               *(cls.Config() for cls in objectives().values())]
    assert [key for config in configs for key in _unranged(config)] == []
