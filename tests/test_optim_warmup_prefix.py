"""optim.warmup_prefix: the decay over the whole run from step 0 (timm's schedulers without
warmup_prefix, SimMIM's fine-tune) or over the steps after the warmup (MAE's, the default)."""

from __future__ import annotations

import math

import pytest
import torch

from sslvit.training.optim import lr_at

scheduler = pytest.importorskip("timm.scheduler.cosine_lr")


def test_cosine_without_prefix_equals_timms_scheduler_as_simmim_builds_it():
    """SimMIM's lr_scheduler.build_scheduler for the Swin-B fine-tune (peak 5e-3, warmup_lr and
    min_lr 1e-6, 20 of 100 epochs of warmup), at 7 steps an epoch, step by step."""
    steps, warmup, peak, low = 700, 140, 5e-3, 1e-6
    optimizer = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=peak)
    timm_sched = scheduler.CosineLRScheduler(optimizer, t_initial=steps, lr_min=low, warmup_lr_init=low,
                                             warmup_t=warmup, cycle_limit=1, t_in_epochs=False)
    for step in range(steps):
        timm_sched.step_update(step)
        ours = lr_at(step, peak, steps, warmup, low, "cosine", warmup_lr=low, warmup_prefix=False)
        assert ours == pytest.approx(optimizer.param_groups[0]["lr"], rel=1e-12, abs=1e-15), step
    # the step down at the end of the warmup: from (almost) the peak to the cosine's value at 20 / 100
    assert lr_at(warmup, peak, steps, warmup, low, warmup_lr=low, warmup_prefix=False) == pytest.approx(
        low + (peak - low) * 0.5 * (1 + math.cos(math.pi * 0.2)))


def test_the_default_decays_over_the_steps_after_the_warmup():
    assert lr_at(140, 5e-3, 700, 140, 1e-6) == pytest.approx(5e-3)
    assert lr_at(420, 5e-3, 700, 140, 1e-6) == pytest.approx(1e-6 + (5e-3 - 1e-6) * 0.5)
    assert lr_at(420, 5e-3, 700, 140, 1e-6, warmup_prefix=False) == pytest.approx(
        1e-6 + (5e-3 - 1e-6) * 0.5 * (1 + math.cos(math.pi * 0.6)))
    # multistep and the warmup itself do not depend on it
    for step in (0, 70, 139, 500):
        assert lr_at(step, 4e-4, 800, 140, 0, "multistep", 2e-6, (600,), 0.1, False) == lr_at(
            step, 4e-4, 800, 140, 0, "multistep", 2e-6, (600,), 0.1, True)


def test_the_simmim_swin_fine_tune_recipe_schedules_as_simmim():
    from pathlib import Path

    from sslvit.evaluate.common import load_config
    from sslvit.evaluate.finetune import FinetuneConfig
    from sslvit.training.run import _schedule

    recipe = Path(__file__).resolve().parents[1] / "sslvit" / "configs" / "finetune_simmim_swin_base.yaml"
    cfg = load_config(FinetuneConfig, recipe, ["finetune.checkpoint=unused.safetensors"])
    schedule = _schedule(cfg, steps_per_epoch=7, global_batch=2048)
    assert (schedule.total_steps, schedule.warmup_steps, schedule.warmup_prefix) == (700, 140, False)
    optimizer = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=5e-3)
    timm_sched = scheduler.CosineLRScheduler(optimizer, t_initial=700, lr_min=1e-6, warmup_lr_init=1e-6,
                                             warmup_t=140, cycle_limit=1, t_in_epochs=False)
    for step in (0, 70, 139, 140, 141, 400, 699):
        timm_sched.step_update(step)
        assert schedule.lr(step) == pytest.approx(optimizer.param_groups[0]["lr"], rel=1e-12), step
