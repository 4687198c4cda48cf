"""Online evaluation during pretraining (solo-learn's habit): kNN, and optionally a linear probe, on
frozen features of the encoder being trained, every ``train.eval_every`` optimizer steps and at the end.

The data is the validation split ``data.val_shards`` ("" = the built-in digits val split), split
in two by class (a stratified half, fixed seed): the first half is the kNN bank / probe training
set, the second is scored. The training shards are not read, so an evaluation costs one pass over
the validation split. Every rank extracts the features of its own part of the split and the
features are gathered on every rank (:func:`sslvit.evaluate.features.extract_features`); every
rank then computes the same numbers, so no rank waits on another beyond the gather.

An evaluation leaves the training untouched: it runs with the encoder in eval mode and returns it
to the mode it was in, under a forked torch RNG (CPU and the accelerator's device) with Python's
and NumPy's RNG states restored, so a run with online evaluation gives bitwise the same weights as
one without.

:class:`OnlineEvalHook` is how it reaches the training loop: a step hook the caller passes to
:func:`sslvit.training.train` (``sslvit pretrain`` and ``sslvit finetune`` do, via :func:`online_hooks`).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, replace

import numpy as np
import torch
from accelerate import Accelerator
from torch import nn

from sslvit.evaluate.features import extract_features, make_eval_loader
from sslvit.evaluate.knn import knn_evaluate
from sslvit.evaluate.linear_probe import ProbeConfig, evaluate_probe, fit_probe, holdout_split
from sslvit.training.config import RunConfig
from sslvit.training.data import default_shards

SPLIT_SEED = 0


@dataclass
class OnlineEval:
    """kNN (and probe) top-1 of the encoder on the two halves of a validation split."""

    spec: str
    every: int
    image_size: int
    batch_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    accelerator: Accelerator
    probe: bool = False
    k: int = 20
    temperature: float = 0.07
    probe_epochs: int = 30

    @classmethod
    def from_config(
        cls, cfg: RunConfig, accelerator: Accelerator, mean: tuple[float, ...], std: tuple[float, ...]
    ) -> OnlineEval | None:
        """The online evaluation ``cfg.train.eval_every`` asks for (None when it is 0), on
        ``cfg.data.val_shards`` or the built-in digits val split, normalised with the training ``mean``/``std``."""
        if cfg.train.eval_every <= 0:
            return None
        spec = cfg.data.val_shards or default_shards("val", cfg.data.digits_image_size, accelerator)
        return cls(spec, cfg.train.eval_every, cfg.data.image_size, cfg.data.batch_size, tuple(mean), tuple(std),
                   accelerator, probe=cfg.train.eval_probe)

    def due(self, step: int, total_steps: int) -> bool:
        """Whether optimizer step ``step`` (1-based) is an evaluation step: every ``every`` steps and the last."""
        return step % self.every == 0 or step == total_steps

    def __call__(self, encoder: nn.Module) -> dict[str, float]:
        """``{"online/knn_top1": %, ["online/probe_top1": %]}`` of ``encoder``; the same on every rank."""
        was_training = encoder.training
        py_state, np_state = random.getstate(), np.random.get_state()
        devices = [self.accelerator.device] if self.accelerator.device.type == "cuda" else []
        try:
            with torch.random.fork_rng(devices=devices):
                return self._evaluate(encoder)
        finally:
            random.setstate(py_state)
            np.random.set_state(np_state)
            encoder.train(was_training)

    def _evaluate(self, encoder: nn.Module) -> dict[str, float]:
        loader = make_eval_loader(self.spec, self.image_size, self.batch_size, 0, self.accelerator)
        x, y = extract_features(encoder, loader, self.mean, self.std, accelerator=self.accelerator,
                                desc="online eval", leave=False)
        if x.shape[0] < 2:
            raise ValueError(f"online evaluation: data.val_shards {self.spec!r} gave {x.shape[0]} labelled samples; "
                             "it needs at least two")
        bank_idx, query_idx = holdout_split(y, 0.5, SPLIT_SEED)  # (N/2,), (N/2,) indices into x
        num_classes = int(y.max().item()) + 1
        out = {"online/knn_top1": knn_evaluate(x[bank_idx], y[bank_idx], x[query_idx], y[query_idx], self.k,
                                               self.temperature, num_classes=num_classes)["top1"]}
        if self.probe:
            cfg = replace(ProbeConfig(), epochs=self.probe_epochs, warmup_epochs=min(3, self.probe_epochs),
                          holdout_fraction=0.0, refit=False, lrs=(0.3,), weight_decays=(0.0,))
            fitted = fit_probe(x[bank_idx], y[bank_idx], num_classes, cfg)
            out["online/probe_top1"] = evaluate_probe(fitted["probe"], x[query_idx], y[query_idx])["top1"]
        return out


def describe(online: OnlineEval | None) -> str:
    """A phrase for the run line: what online evaluation runs, or "" when off."""
    if online is None:
        return ""
    what = "kNN + probe" if online.probe else "kNN"
    return f"online {what} every {online.every} steps on {online.spec}"



class OnlineEvalHook:
    """The step hook that runs ``cfg``'s online evaluation: built when the accelerator exists
    (:meth:`start`), called after every optimizer step, evaluating on the due ones."""

    def __init__(self, cfg: RunConfig):
        self.cfg = cfg
        self.online: OnlineEval | None = None

    def start(self, accelerator: Accelerator, mean: tuple[float, ...], std: tuple[float, ...]) -> str:
        self.online = OnlineEval.from_config(self.cfg, accelerator, mean, std)
        return describe(self.online)

    def __call__(self, step: int, total_steps: int, encoder: nn.Module) -> dict[str, float] | None:
        if self.online is None or not self.online.due(step, total_steps):
            return None
        return self.online(encoder)


def online_hooks(cfg: RunConfig) -> list[OnlineEvalHook]:
    """The step hooks ``cfg`` asks for: one online evaluation when ``train.eval_every`` > 0, else none."""
    return [OnlineEvalHook(cfg)] if cfg.train.eval_every > 0 else []
