"""Preemption: SIGTERM (what Slurm, Kubernetes and spot instances send) or SIGINT ends a run at a
step boundary with a complete checkpoint.

:class:`PreemptionWatch` holds the signal handlers for the length of a run. A signal only sets a
flag; the step loop asks :meth:`PreemptionWatch.requested` after every optimizer step (every rank
agrees through one max-reduce, so a signal that reached one rank stops them all at the same step),
writes the checkpoint of that step and raises :class:`sslvit.errors.Preempted`. If the step and its
checkpoint take longer than ``grace_s`` seconds, the process says so and exits without one (the
last checkpoint stays the last good one); a second SIGINT stops at once (``KeyboardInterrupt``). Loader workers, forked
with the handler, leave the decision to the main process and are shut down with it.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import sys
import threading
import time
from types import FrameType, TracebackType

import torch
from accelerate import Accelerator

from sslvit.errors import EXIT_PREEMPTED
from sslvit.progress import is_main_process

SIGNALS = (signal.SIGTERM, signal.SIGINT)


def _write(message: str) -> None:
    """Print from a signal handler or a timer: unbuffered, on the main process only."""
    if is_main_process():
        os.write(sys.stderr.fileno(), (message + "\n").encode())


def _end_children() -> None:
    for child in multiprocessing.active_children():
        child.terminate()


class PreemptionWatch:
    """SIGTERM / SIGINT handlers for one run (installed on ``with``, restored after)."""

    def __init__(self, grace_s: float):
        self.grace_s = grace_s
        self.signal: str | None = None  # the first signal's name, once one arrived
        self.since: float | None = None
        self._pid = os.getpid()
        self._previous: dict[int, object] = {}
        self._timer: threading.Timer | None = None

    def __enter__(self) -> PreemptionWatch:
        if threading.current_thread() is threading.main_thread():  # signal handlers live there only
            for signum in SIGNALS:
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 trace: TracebackType | None) -> None:
        for signum, previous in self._previous.items():
            signal.signal(signum, previous)  # type: ignore[arg-type]
        if self._timer is not None:
            self._timer.cancel()

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if os.getpid() != self._pid:
            return  # a forked loader worker: the main process decides and shuts it down
        name = signal.Signals(signum).name
        if self.signal is not None:
            if signum == signal.SIGINT:  # the user insists: stop now, as Ctrl-C always does
                raise KeyboardInterrupt("a second SIGINT: stopped without a checkpoint of this step")
            return
        self.signal, self.since = name, time.monotonic()
        _write(f"{name} received: finishing this step and writing its checkpoint (at most "
               f"train.preempt_grace_s={self.grace_s:g} s; a second SIGINT stops at once)")
        self._timer = threading.Timer(self.grace_s, self._expire)
        self._timer.daemon = True
        self._timer.start()

    def _expire(self) -> None:
        _write(f"{self.signal}: the step and its checkpoint did not finish within train.preempt_grace_s="
               f"{self.grace_s:g} s; exiting without them (the last checkpoint written stays the one to "
               f"resume from)")
        _end_children()
        os._exit(EXIT_PREEMPTED)

    def requested(self, accelerator: Accelerator) -> bool:
        """Whether any rank was signalled (the same answer on every rank)."""
        local = self.signal is not None
        if accelerator.num_processes == 1:
            return local
        flag = torch.tensor([int(local)], device=accelerator.device)
        return bool(accelerator.reduce(flag, reduction="max").item())
