"""Online kNN / probe evaluation during pretraining: what it logs, and that it leaves the training alone."""

from __future__ import annotations

import json

import pytest
import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState
from run_helpers import TINY, bar_shards
from safetensors.torch import load_file

from sslvit.evaluate.online import OnlineEval, OnlineEvalHook, online_hooks
from sslvit.models import create_model
from sslvit.training import config as config_lib


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> dict[str, str]:
    return bar_shards(tmp_path_factory.mktemp("bars"), train=64, val=100)


def test_online_knn_scores_the_val_split_and_restores_mode_and_rng(fresh_accelerate, shards):
    accelerator = Accelerator(cpu=True)
    cfg = config_lib.load(None, [f"data.val_shards={shards['val']}", "train.eval_every=5", "data.batch_size=32"])
    online = OnlineEval.from_config(cfg, accelerator, (0.2,) * 3, (0.3,) * 3)
    assert online.spec == shards["val"] and online.every == 5
    assert [online.due(s, 12) for s in (4, 5, 10, 11, 12)] == [False, True, True, False, True]
    torch.manual_seed(0)
    encoder = create_model("vit_pico_patch4").train()
    rng_before = torch.get_rng_state()
    scores = online(encoder)
    assert set(scores) == {"online/knn_top1"}
    assert 40.0 < scores["online/knn_top1"] <= 100.0, "bars are far apart even in random features (chance: 10%)"
    assert encoder.training, "the encoder is back in train mode"
    assert torch.equal(torch.get_rng_state(), rng_before)


def test_online_eval_is_off_by_default_and_defaults_to_the_digits_val_split(fresh_accelerate, monkeypatch):
    accelerator = Accelerator(cpu=True)
    assert OnlineEval.from_config(config_lib.load(None, []), accelerator, (0.5,) * 3, (0.5,) * 3) is None
    asked = []
    monkeypatch.setattr("sslvit.evaluate.online.default_shards", lambda split, size, acc=None: asked.append(split) or "VAL")
    online = OnlineEval.from_config(config_lib.load(None, ["train.eval_every=3"]), accelerator, (0.5,) * 3, (0.5,) * 3)
    assert (online.spec, asked) == ("VAL", ["val"])


def test_the_hook_evaluates_on_due_steps_only_and_only_when_asked(fresh_accelerate, monkeypatch):
    assert online_hooks(config_lib.load(None, [])) == []
    (hook,) = online_hooks(config_lib.load(None, ["train.eval_every=3", "data.val_shards=VAL"]))
    assert isinstance(hook, OnlineEvalHook)
    assert hook.start(Accelerator(cpu=True), (0.5,) * 3, (0.5,) * 3) == "online kNN every 3 steps on VAL"
    calls = []
    monkeypatch.setattr(OnlineEval, "__call__", lambda self, encoder: calls.append(encoder) or {"online/knn_top1": 1.0})
    results = [hook(step, 7, "ENC") for step in range(1, 8)]
    assert results == [None, None, {"online/knn_top1": 1.0}, None, None, {"online/knn_top1": 1.0},
                       {"online/knn_top1": 1.0}], "every 3 steps and at the last"
    assert calls == ["ENC"] * 3


def _run(tmp_path, shards, name: str, *extra: str, hooks: bool = True):
    from sslvit.training import train

    cfg = config_lib.load(None, [*TINY, f"data.train_shards={shards['train']}", f"data.val_shards={shards['val']}",
                                 "train.steps=4", "train.trackers=[]", f"train.out_dir={tmp_path}",
                                 f"train.name={name}", "model.drop_path_rate=0.2", *extra])
    return train(cfg, hooks=online_hooks(cfg) if hooks else ())


def test_eval_every_without_a_hook_says_that_nothing_runs(fresh_accelerate, tmp_path, shards, capsys):
    result = _run(tmp_path, shards, "unhooked", "train.eval_every=2", hooks=False)
    assert "train.eval_every=2 is set but no online-evaluation hook was given" in capsys.readouterr().out
    rows = (result.run_dir / "metrics.jsonl").read_text()
    assert "online/knn_top1" not in rows


def test_online_eval_logs_and_leaves_the_weights_bitwise_unchanged(fresh_accelerate, tmp_path, shards):
    plain = _run(tmp_path, shards, "plain")
    AcceleratorState._reset_state(reset_partial_state=True)
    watched = _run(tmp_path, shards, "watched", "train.eval_every=3", "train.eval_probe=true")
    rows = [json.loads(line) for line in (watched.run_dir / "metrics.jsonl").read_text().splitlines()]
    online = [r for r in rows if "online/knn_top1" in r]
    assert [r["step"] for r in online] == [3, 4], "every 3 steps and at the end"
    assert all(0.0 <= r["online/knn_top1"] <= 100.0 and 0.0 <= r["online/probe_top1"] <= 100.0 for r in online)
    assert not any("online/knn_top1" in json.loads(line)
                   for line in (plain.run_dir / "metrics.jsonl").read_text().splitlines())
    a, b = load_file(str(plain.model_path)), load_file(str(watched.model_path))
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
