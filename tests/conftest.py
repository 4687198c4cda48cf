"""Shared test setup: the model and evaluator tests run tiny tensors on one intra-op thread."""

from __future__ import annotations

import pytest
import torch

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
