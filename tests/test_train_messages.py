"""What a training run says about its own settings."""

from __future__ import annotations

from pathlib import Path

from sslvit.training.config import load


def test_a_warmup_as_long_as_the_run_is_said(tmp_path: Path, capsys, fresh_accelerate):
    from sslvit.training import train
    from tests.run_helpers import TINY

    cfg = load(None, [*TINY, "train.trackers=[]", "train.steps=3", "optim.warmup_steps=null", "optim.warmup_epochs=3",
                      f"train.out_dir={tmp_path}", "train.name=short"])
    train(cfg)
    out = capsys.readouterr().out
    assert "warning: the warmup (270 steps, optim.warmup_epochs=3 x 90 steps per epoch) is as long as the run " \
           "(3 steps): the learning rate never reaches its peak" in out
