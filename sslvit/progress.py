"""Who speaks for the job, and progress on long work.

:func:`is_main_process` is the one test of "am I the process that prints and writes": accelerate's
answer once it has started, else the launcher's ``RANK`` (unset or empty = the main process).
:func:`say` prints once per job; :func:`progress` is a tqdm bar when stderr is a terminal and
periodic lines in logs, on the main process only.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterable, Iterator
from typing import Any

LINE_EVERY_S = 10.0  # seconds between progress lines when stderr is not a terminal


def is_main_process() -> bool:
    """Whether this is the job's main process (global rank 0), also before accelerate has started.

    Reads accelerate's state only when accelerate is already imported, so a torch-free command
    start stays torch-free.
    """
    state = sys.modules.get("accelerate.state")
    if state is not None and state.PartialState._shared_state:
        return bool(state.PartialState().is_main_process)
    return os.environ.get("RANK", "").strip() in ("", "0")


def say(message: str, file: Any = None) -> None:
    """Print ``message`` (flushed) once for the whole job: on the main process only."""
    if is_main_process():
        print(message, file=file or sys.stdout, flush=True)


class LineProgress:
    """A progress report for logs: one line ``desc: n/total (p%), s elapsed`` every ``LINE_EVERY_S``
    seconds and one when it closes (if it printed before); the subset of tqdm's API used here."""

    def __init__(self, iterable: Iterable | None = None, total: int | None = None, desc: str = "",
                 initial: int = 0, unit: str = "it", stream: Any = None):
        self.iterable, self.total, self.desc, self.n, self.unit = iterable, total, desc, initial, unit
        self.stream = stream or sys.stderr
        self.start = self.last = time.perf_counter()
        self.postfix = ""
        self.printed = False
        self.closed = False

    def __iter__(self) -> Iterator:
        for item in self.iterable:
            yield item
            self.update(1)
        self.close()

    def __enter__(self) -> LineProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _line(self) -> str:
        done = f"{self.n}/{self.total} {self.unit} ({100.0 * self.n / self.total:.0f}%)" if self.total else \
            f"{self.n} {self.unit}"
        extra = f", {self.postfix}" if self.postfix else ""
        return f"{self.desc}: {done}, {time.perf_counter() - self.start:.0f} s{extra}"

    def update(self, n: int = 1) -> None:
        self.n += n
        now = time.perf_counter()
        if now - self.last >= LINE_EVERY_S:
            self.last = now
            self.printed = True
            print(self._line(), file=self.stream, flush=True)

    def set_postfix(self, **values: Any) -> None:
        self.postfix = ", ".join(f"{k}={v}" for k, v in values.items())

    def close(self) -> None:
        if not self.closed and self.printed:
            print(self._line() + " (done)", file=self.stream, flush=True)
        self.closed = True


class _NoProgress(LineProgress):
    def update(self, n: int = 1) -> None:
        self.n += n

    def close(self) -> None:
        self.closed = True


def progress(iterable: Iterable | None = None, total: int | None = None, desc: str = "", enabled: bool = True,
             initial: int = 0, unit: str = "it", leave: bool = True) -> Any:
    """A progress bar on the main process: tqdm when stderr is a terminal, else :class:`LineProgress`
    lines; nothing on other ranks or when not ``enabled``. Iterate it, or call ``update`` / ``close``.
    ``leave=False`` clears a finished bar (one shown while another bar runs)."""
    if total is None and iterable is not None:
        try:
            total = len(iterable)  # type: ignore[arg-type]
        except TypeError:
            total = None
    if not (enabled and is_main_process()):
        return _NoProgress(iterable, total, desc, initial, unit)
    if sys.stderr.isatty():
        from tqdm.auto import tqdm

        return tqdm(iterable, total=total, desc=desc, initial=initial, unit=unit, dynamic_ncols=True, leave=leave)
    return LineProgress(iterable, total, desc, initial, unit)


