"""A small corpus held in memory: each shard read once, each image decoded once, per process.

The stream's order, augmentation and resume do not change: the cache stands only where a reader
opens a shard (its samples are kept as read, with the damage the reading counted, which is counted
again on every later pass) and where an image is decoded (the full-size pixels are kept and each
pass draws its crop from them, the same RNG calls in the same order as decoding anew). JPEGs keep
their bytes only: their decode depends on the crop (a reduced DCT scale for small boxes), so they
are decoded on every pass as when streamed. A shard that could not be read whole is not kept (it is
read again next time, as when streamed). Entries are admitted until ``budget_bytes`` are held; the
rest of the corpus streams as before and the first refusal is said once.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterator

import torch

from sslvit.data.decode import decode_image
from sslvit.data.tario import LOST_SAMPLES, RawSample, iter_shard

logger = logging.getLogger("sslvit.data")

_JPEG_MAGIC = b"\xff\xd8"


class ResidentCache:
    """Raw samples by shard and decoded pixels by sample, up to ``budget_bytes`` in this process."""

    def __init__(self, budget_bytes: int) -> None:
        self.budget = int(budget_bytes)
        self.used = 0
        self._said_full = False
        self._shards: dict[tuple[str, str], list[RawSample]] = {}
        self._pixels: dict[tuple[str, int], torch.Tensor] = {}

    def __getstate__(self) -> dict:
        """A copy sent to a loader worker starts empty: each process fills its own."""
        state = dict(self.__dict__)
        state.update(used=0, _said_full=False, _shards={}, _pixels={})
        return state

    def _admit(self, size: int) -> bool:
        if self.used + size <= self.budget:
            self.used += size
            return True
        if not self._said_full:
            self._said_full = True
            logger.warning("data.in_memory: %.0f MB held, the budget (data.in_memory_mb) is reached; the rest of "
                           "the corpus streams from its shards", self.used / 2**20)
        return False

    def samples(self, url: str, errors: Counter, expected: int | None, report: bool,
                key_dot: str) -> Iterator[RawSample]:
        """The raw samples of shard ``url`` in tar order, as :func:`~sslvit.data.tario.iter_shard`
        yields them, with the same damage counted into ``errors`` when ``report``: a shard is kept
        only when it was read without damage, so a kept one can only fall short of ``expected``."""
        key = (url, key_dot)
        items = self._shards.get(key)
        if items is None:
            found: Counter = Counter()
            items = list(iter_shard(url, found, expected, report=True, key_dot=key_dot))
            if not found and self._admit(sum(len(b) for raw in items for b in raw.members.values())):
                self._shards[key] = items
            if report:
                errors.update(found)
        elif report and expected is not None and len(items) < expected:
            errors["truncated_tar"] += 1
            errors[LOST_SAMPLES["truncated_tar"]] += expected - len(items)
        yield from items

    def pixels(self, raw: RawSample, data: bytes, max_pixels: int) -> torch.Tensor | None:
        """Full-size uint8 (3, H, W) pixels of ``raw`` (decoded once), or None for a JPEG (decoded
        at the scale its crop allows, every time) and when the budget is spent."""
        if data[:2] == _JPEG_MAGIC:
            return None
        key = (raw.url, raw.index)
        hit = self._pixels.get(key)
        if hit is not None:
            return hit
        pixels = decode_image(data, max_pixels)
        if self._admit(pixels.numel() * pixels.element_size()):
            self._pixels[key] = pixels
        return pixels
