"""Batch slabs: several readers of one rank write their parts of a batch into one shared tensor.

With ``num_workers > 1`` every reader fills a contiguous chunk of the rank's positions (see
:mod:`sslvit.data.stream`). Sent as separate tensors, the parts would have to be concatenated by
the main process: a copy of every image byte (and a page fault for every page of the workers'
shared memory) on the process that also runs the model, a fifth of the loader's CPU time on
224-px batches. Instead the main process allocates each batch's image tensor in shared memory
(untouched: no page of it is written by the main process) and hands it to every reader through its
own queue ahead of time; each reader stacks its chunk's images straight into its rows of it and
sends only the small fields (labels, keys, validity, masks). The tensor the main process then
yields is that slab.

Slabs are recycled, so that their pages are not faulted in afresh for every batch (for 224-px
batches of 64 that is 2,352 page faults a batch): a yielded slab is sent out again only once
nothing outside this channel refers to its memory (the storage's use count, which every tensor
and view of it raises), so a batch that is kept, or a view of it, stays intact; a new slab is
allocated instead. Readers keep the slabs they were sent mapped, for the same reason.

A slab is tagged with (pass, batch): a reader drops slabs of a pass that ended early, and one
waiting for a slab notices when the main process has started another pass (the shared control
tensor says so) and ends its part of the old one.
"""

from __future__ import annotations

import os
import queue

import torch
import torch.multiprocessing as mp

_POLL_S = 0.1  # how often a waiting reader looks whether its pass is still the current one


def _tensor(storage: torch.UntypedStorage, shape: tuple[int, ...]) -> torch.Tensor:
    return torch.empty(0, dtype=torch.uint8).set_(storage, 0, shape)


class SlabChannel:
    """The main process's slabs for one loader: one queue per reader, ``ahead`` batches in flight.

    ``shape``: one batch's images, (batch_size, 3, H, W) uint8.
    """

    def __init__(self, readers: int, shape: tuple[int, ...], ahead: int) -> None:
        self.shape = tuple(int(s) for s in shape)
        self.ahead = ahead
        self.queues = [mp.Queue() for _ in range(readers)]
        for q in self.queues:  # at exit, slabs not yet taken by a reader are not waited for
            q.cancel_join_thread()
        self._pending: dict[int, tuple[torch.UntypedStorage, torch.Tensor]] = {}
        self._yielded: list[torch.UntypedStorage] = []  # slabs handed out, reusable once released
        self._kept: list[torch.UntypedStorage] = []  # in a reader: the slabs it was sent, kept mapped
        self._pass = 0
        self._sent = 0  # next batch index to allocate a slab for in this pass
        self.allocated = 0  # slabs allocated so far (the rest of the batches reused one)
        self._end = 0

    # -- main process -------------------------------------------------------------------------
    def begin(self, pass_id: int, start_batch: int, num_batches: int) -> None:
        """A new pass from ``start_batch``: drop what an earlier pass left, send the first slabs."""
        self._pass, self._pending = pass_id, {}
        self._sent, self._end = start_batch, num_batches
        self._send_up_to(start_batch + self.ahead)

    def _slab(self) -> torch.UntypedStorage:
        """A yielded slab nothing refers to any more (use count 1: the reference held here), else a new one."""
        for i, storage in enumerate(self._yielded):
            if torch._C._storage_Use_Count(storage._cdata) == 1:
                return self._yielded.pop(i)
        numel = 1
        for s in self.shape:
            numel *= s
        self.allocated += 1
        return torch.UntypedStorage._new_shared(numel)  # shared memory, no page touched here

    def _send_up_to(self, stop: int) -> None:
        while self._sent < min(stop, self._end):
            storage = self._slab()
            self._pending[self._sent] = (storage, _tensor(storage, self.shape))
            for q in self.queues:
                q.put((self._pass, self._sent, storage))
            self._sent += 1

    def take(self, batch: int) -> torch.Tensor:
        """The slab of ``batch`` (all its readers have written their rows); sends the next one."""
        storage, slab = self._pending.pop(batch)
        self._yielded.append(storage)
        if len(self._yielded) > 2 * self.ahead:  # batches kept by the caller: stop watching the oldest
            self._yielded.pop(0)
        self._send_up_to(batch + 1 + self.ahead)
        return slab

    # -- reader process -----------------------------------------------------------------------
    def wait(self, reader: int, pass_id: int, batch: int, control: torch.Tensor) -> torch.Tensor | None:
        """In reader ``reader``: the slab of ``batch`` in pass ``pass_id``, or None when the main
        process has moved on to another pass (``control[2]``) or is gone."""
        parent = os.getppid()
        while True:
            try:
                tag_pass, tag_batch, storage = self.queues[reader].get(timeout=_POLL_S)
            except queue.Empty:
                if int(control[2]) != pass_id or os.getppid() != parent:
                    return None
                continue
            self._kept = [s for s in self._kept if s._cdata != storage._cdata][-2 * self.ahead:] + [storage]
            if (tag_pass, tag_batch) == (pass_id, batch):
                return _tensor(storage, self.shape)
            if tag_pass == pass_id and tag_batch > batch:
                raise RuntimeError(f"reader {reader}: slab of batch {tag_batch} came before batch {batch}'s")
            # a slab of a pass that ended early: nobody writes it

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_pending"], state["_yielded"], state["_kept"] = {}, [], []  # a reader needs only its queue
        return state
