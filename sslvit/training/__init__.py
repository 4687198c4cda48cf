"""Training: the run config, its setup, the step loop, resume, the non-finite policy, launch options,
threads and the optimizer.

    train / RunResult / EpochContext / StepHook   sslvit.training.loop, sslvit.training.run
    RunConfig                                     sslvit.training.config (also load / from_dict there)
    build_encoder / check_model_config            sslvit.training.run
    NonFiniteLossError                            sslvit.training.nonfinite
    ResumeError                                   sslvit.training.checkpoints

The names resolve on first use, so ``sslvit.training.config`` imports without torch (the command
line reads configs before it decides to train).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from sslvit.training.checkpoints import ResumeError
    from sslvit.training.config import RunConfig
    from sslvit.training.loop import train
    from sslvit.training.nonfinite import NonFiniteLossError
    from sslvit.training.run import EpochContext, RunResult, StepHook, build_encoder, check_model_config

_LAZY = {
    "EpochContext": "sslvit.training.run",
    "NonFiniteLossError": "sslvit.training.nonfinite",
    "ResumeError": "sslvit.training.checkpoints",
    "RunConfig": "sslvit.training.config",
    "RunResult": "sslvit.training.run",
    "StepHook": "sslvit.training.run",
    "build_encoder": "sslvit.training.run",
    "check_model_config": "sslvit.training.run",
    "train": "sslvit.training.loop",
}
__all__ = [
    "EpochContext", "NonFiniteLossError", "ResumeError", "RunConfig", "RunResult", "StepHook", "build_encoder",
    "check_model_config", "train",
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'sslvit.training' has no attribute {name!r}")
