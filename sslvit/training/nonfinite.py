"""The non-finite policy: a NaN or infinite loss skips its update, up to ``train.max_nonfinite``;
non-finite weights stop the run, naming the last checkpoint whose weights are finite.

With a fused torch optimizer (and no fp16 grad scaler), the skip flag stays on the device: it
becomes the optimizer's ``found_inf``, which makes the fused kernel leave parameters, moments and
step counts untouched, exactly as if the update had not run. The host reads the count only at log
and checkpoint steps and at the end (:meth:`NonFiniteSkips.check`). Otherwise each step reads the
flag. A skipped update still counts as a step (as a grad scaler's skipped steps do).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator

from sslvit.progress import say
from sslvit.training.checkpoints import TrainerState, all_finite, last_finite_checkpoint


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or infinite more often than ``train.max_nonfinite`` allows."""


class NonFiniteSkips:
    """Non-finite losses, skipped without a host sync per step where the optimizer allows it.

    With a fused torch optimizer (and no fp16 grad scaler), the skip flag stays on the device: it
    becomes the optimizer's ``found_inf``, which makes the fused kernel leave parameters, moments and
    step counts untouched, exactly as if the update had not run. The host reads the count only at
    log and checkpoint steps and at the end (:meth:`check`). Otherwise each step reads the flag.
    A skipped update still counts as a step (as a grad scaler's skipped steps do).
    """

    def __init__(self, optimizer: Any, accelerator: Accelerator, skipped: int, allowed: int) -> None:
        self.torch_optimizer = getattr(optimizer, "optimizer", optimizer)
        fused = all(group.get("fused") for group in self.torch_optimizer.param_groups)
        self.on_device = fused and getattr(accelerator, "scaler", None) is None
        device = accelerator.device
        self.count = torch.tensor(float(skipped), device=device)
        self.first = torch.tensor(-1.0, device=device)  # first skipped step since the last check
        self.first_loss = torch.tensor(0.0, device=device)
        self.allowed = allowed
        self.reported = skipped

    def record(self, bad: torch.Tensor, step: int, loss: torch.Tensor) -> None:
        """Note step ``step``'s flag (``bad``: () float, 1 = skip) and loss, on the device."""
        if self.on_device:
            self.torch_optimizer.found_inf = bad
        new = (bad > 0) & (self.first < 0)
        self.first = torch.where(new, torch.full_like(self.first, step), self.first)
        self.first_loss = torch.where(new, loss.detach().float(), self.first_loss)
        self.count = self.count + bad

    def check(self, state: TrainerState, accelerator: Accelerator, modules: list, optimizer: Any,
              bar: Any, run_dir: Path) -> TrainerState:
        """Read the count (one host sync); say what was skipped, or stop past ``train.max_nonfinite``
        or when the weights are no longer finite."""
        count = int(self.count.item())
        if count == self.reported:
            return state
        first, loss = int(self.first.item()), float(self.first_loss.item())
        new, self.reported = count - self.reported, count
        self.first = torch.full_like(self.first, -1.0)
        state = replace(state, nonfinite_skipped=count)
        weights_finite = all_finite(accelerator, modules, optimizer)
        if count > self.allowed or not weights_finite:
            bar.close()
            raise_nonfinite(run_dir, first, loss, weights_finite)
        where = f"step {first}" if new == 1 else f"steps {first}..{state.step}: {new}"
        say(f"{where} non-finite loss, update skipped ({count}/{self.allowed} allowed)")
        return state

    def step(self, bad: torch.Tensor, step: int, loss: torch.Tensor, parameters: Iterable[torch.nn.Parameter],
             clip_grad: float | None, accelerator: Accelerator, optimizer: Any) -> torch.Tensor | None:
        """Apply optimizer step ``step`` (1-based) unless ``bad`` (() float on the device, 1 = the
        loss was not finite on some rank) says to skip it; clip the gradient norm to ``clip_grad``
        first. Returns the gradient norm when it was computed."""
        grad_norm = None
        if self.on_device:
            self.record(bad, step, loss)
            if clip_grad:
                grad_norm = accelerator.clip_grad_norm_(parameters, clip_grad)
            optimizer.step()  # the fused kernel skips the whole update (and its step count) when bad is 1
        elif bad.item() > 0:
            self.record(bad, step, loss)
        else:
            if clip_grad:
                grad_norm = accelerator.clip_grad_norm_(parameters, clip_grad)
            optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return grad_norm


def nonfinite_flag(loss: torch.Tensor, accelerator: Accelerator) -> torch.Tensor:
    """() float on the device: 1 when ``loss`` is not finite on any rank (one reduce, no host sync)."""
    finite = torch.isfinite(loss).float()
    if accelerator.num_processes > 1:
        finite = accelerator.reduce(finite, reduction="mean")
    return (finite < 1.0).float()


def last_good(run_dir: Path) -> str:
    found, skipped = last_finite_checkpoint(run_dir)
    note = f" ({'; '.join(skipped)})" if skipped else ""
    return (f"the last good checkpoint is {found}" if found else "no checkpoint with finite weights was written before it") + note


def raise_nonfinite(run_dir: Path, step: int, value: float, weights_finite: bool = True) -> None:
    if not weights_finite:
        raise NonFiniteLossError(
            f"loss is {value} at step {step} and the parameters or optimizer state are non-finite (an earlier "
            f"update made them so; skipping steps cannot recover); the run stopped ({last_good(run_dir)}). "
            "Lower optim.base_lr or set optim.clip_grad."
        )
    raise NonFiniteLossError(
        f"loss is {value} at step {step}; the run stopped ({last_good(run_dir)}). "
        "Lower optim.base_lr, set optim.clip_grad, or allow skips with train.max_nonfinite."
    )


def raise_nonfinite_weights(run_dir: Path, step: int, what: str = "") -> None:
    what = what or f"checkpoint step {step}"
    raise NonFiniteLossError(
        f"the parameters or optimizer state are non-finite after step {step} (its loss was finite, its update "
        f"was not); {what} was not written and the run stopped ({last_good(run_dir)}). "
        "Lower optim.base_lr or set optim.clip_grad."
    )
