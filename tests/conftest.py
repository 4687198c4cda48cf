"""Shared test setup: the model and evaluator tests run tiny tensors on one intra-op thread."""

from __future__ import annotations

import math
import os

import pytest
import torch
from accelerate.state import AcceleratorState

ONE_THREAD_DIRS = ("models", "evaluate")


@pytest.fixture(autouse=True)
def one_thread(request):
    """Tiny tensors run faster on one thread, and the machine is shared (tests/models, tests/evaluate)."""
    if request.node.path.parent.name not in ONE_THREAD_DIRS:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(autouse=True)
def fixed_threads(monkeypatch):
    """In-process runs keep their first thread count (the tuner never re-reads): runs compared
    bitwise stay comparable. tests/test_thread_tuner.py turns it back on where it tests it."""
    import sslvit.training.threads

    monkeypatch.setattr(sslvit.training.threads, "TUNE_INTERVAL_S", math.inf)


@pytest.fixture
def fresh_accelerate(monkeypatch):
    """No ACCELERATE_* variables from the caller, and accelerate's process-wide state reset around the test."""
    for key in list(os.environ):
        if key.startswith("ACCELERATE_"):
            monkeypatch.delenv(key)
    AcceleratorState._reset_state(reset_partial_state=True)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny tensors, a shared machine
    yield monkeypatch
    torch.set_num_threads(threads)
    AcceleratorState._reset_state(reset_partial_state=True)
