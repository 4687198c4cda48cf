"""The per-worker half of the stream: one rank's epoch as one logical stream of batches.

See :mod:`sslvit.data.stream` for the layout of an epoch. :class:`EpochStream` is the
IterableDataset a torch DataLoader worker runs: worker i of a loader started at ``start_batch``
plays logical stream (start_batch + i) % W, reads its shard parts (or resamples shards), shuffles
raw samples, cuts them into batch slots, and decodes/augments only the batches it yields.
"""

from __future__ import annotations

import json
import random
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils.data import IterableDataset, get_worker_info

from sslvit.data.decode import (
    IMAGE_EXTENSIONS,
    LABEL_EXTENSIONS,
    SampleError,
    decode_image,
    find_member,
    load_rgb,
    open_image,
    oriented_size,
    parse_label,
)
from sslvit.data.plan import Part, mix_seed, stream_quota
from sslvit.data.tario import RawSample, iter_shard
from sslvit.data.transforms import ImageTransform

_POOL_SIZE = 64


@dataclass
class StreamConfig:
    batch_size: int
    transform: Callable | None
    mode: str
    seed: int
    rank: int
    world_size: int
    num_streams: int
    need_labels: bool
    masker: Callable | None
    shuffle_buffer: int
    shuffle: bool
    max_pixels: int
    drop_last: bool
    num_classes: int | None
    return_meta: bool


@dataclass
class EpochPlan:
    epoch: int
    batches: int
    streams: list[list[Part]]  # finite: this rank's parts per stream
    parts: list[Part]  # every part, canonical order (fallback source for padding)
    weights: list[float] | None  # resampled: shard draw weights


def decode_for(transform: ImageTransform, data: bytes, max_pixels: int) -> torch.Tensor:
    """Encoded image -> transform output, uint8 (3, h, w), choosing the crop box from the header.

    The box is drawn before decoding, so a JPEG whose box holds at least 2x (4x, 8x) the output
    size per side is decoded at that DCT scale and the box is mapped onto the smaller image.
    """
    image = open_image(data, max_pixels)
    width, height = oriented_size(image)
    box = transform.sample_box(width, height)
    pixels, _ = load_rgb(image, data, transform.reduction(box) if image.format == "JPEG" else 1)
    got_h, got_w = pixels.shape[-2:]
    if (got_h, got_w) != (height, width):
        sy, sx = got_h / height, got_w / width
        top, left = min(int(box[0] * sy), got_h - 1), min(int(box[1] * sx), got_w - 1)
        box = (top, left, max(1, min(round(box[2] * sy), got_h - top)),
               max(1, min(round(box[3] * sx), got_w - left)))
    return transform.apply(pixels, box)


def _shuffled(items: Iterator[RawSample], size: int, rng: random.Random) -> Iterator[RawSample]:
    buf: list[RawSample] = []
    for item in items:
        if len(buf) < size:
            buf.append(item)
            continue
        k = rng.randrange(size)
        yield buf[k]
        buf[k] = item
    rng.shuffle(buf)
    yield from buf


class EpochStream(IterableDataset):
    """One epoch of one rank; in worker i it runs logical stream (start_batch + i) % W."""

    def __init__(self, cfg: StreamConfig, plan: EpochPlan, start_batch: int) -> None:
        self.cfg, self.plan, self.start_batch = cfg, plan, start_batch
        self.errors: Counter = Counter()
        self.examples: dict[str, str] = {}
        self._reported: Counter = Counter()
        self._pool: list[RawSample] = []
        self._reserve: tuple | None = None

    def _raw(self, stream: int) -> Iterator[RawSample]:
        cfg, plan = self.cfg, self.plan
        shard_rng = random.Random(mix_seed(cfg.seed, plan.epoch, cfg.rank, stream, "shards"))
        sample_rng = random.Random(mix_seed(cfg.seed, plan.epoch, cfg.rank, stream, "samples"))
        if cfg.mode == "finite":
            parts = list(plan.streams[stream])
            if cfg.shuffle:
                shard_rng.shuffle(parts)
            raw = self._read_parts(parts)
        else:
            raw = self._resample(shard_rng)
        if cfg.shuffle and cfg.shuffle_buffer > 1:
            return _shuffled(raw, cfg.shuffle_buffer, sample_rng)
        return raw

    def _read_parts(self, parts: list[Part]) -> Iterator[RawSample]:
        for part in parts:
            for raw in iter_shard(part.url, self.errors, part.shard_count, report=part.part == 0):
                if raw.index % part.num_parts == part.part:
                    yield raw

    def _resample(self, rng: random.Random) -> Iterator[RawSample]:
        parts = self.plan.parts
        empty_reads = 0
        while True:
            part = rng.choices(parts, weights=self.plan.weights)[0]
            got = False
            for raw in iter_shard(part.url, self.errors, part.shard_count):
                got = True
                yield raw
            empty_reads = 0 if got else empty_reads + 1
            if empty_reads > max(20, 3 * len(parts)):
                raise RuntimeError(f"resampled stream: {empty_reads} shard reads in a row gave no "
                                   f"samples (unreadable or empty shards?), e.g. {parts[0].url}")

    def _positions(self, raw: Iterator[RawSample], quota: int) -> Iterator[list[tuple[Any, bool]]]:
        """Batches of (raw sample or None, is_real); padding cycles the stream's first samples."""
        size, exhausted, pad = self.cfg.batch_size, False, 0
        for _ in range(quota):
            batch: list[tuple[Any, bool]] = []
            while len(batch) < size:
                item = None if exhausted else next(raw, None)
                if item is not None:
                    if len(self._pool) < _POOL_SIZE:
                        self._pool.append(item)
                    batch.append((item, True))
                    continue
                exhausted = True
                batch.append((self._pool[pad % len(self._pool)] if self._pool else None, False))
                pad += 1
            yield batch
        if self.cfg.mode == "finite" and not exhausted and not self.cfg.drop_last:
            extra = sum(1 for _ in raw)
            if extra:
                self.errors["dropped_extra"] += extra

    def _process(self, raw: RawSample) -> tuple[torch.Tensor, int, Any]:
        """Raw sample -> (uint8 (3, H, W), label, meta); raises SampleError."""
        cfg = self.cfg
        label_bytes = find_member(raw.members, LABEL_EXTENSIONS)
        if cfg.need_labels:
            label = parse_label(label_bytes, cfg.num_classes)
        else:
            try:
                label = parse_label(label_bytes, cfg.num_classes)
            except SampleError:
                label = -1
        data = find_member(raw.members, IMAGE_EXTENSIONS)
        if data is None:
            raise SampleError("missing_image")
        torch.default_generator.manual_seed(
            mix_seed(cfg.seed, self.plan.epoch, raw.url.rsplit("/", 1)[-1], raw.key))
        transform = cfg.transform
        if isinstance(transform, ImageTransform):
            image = decode_for(transform, data, cfg.max_pixels)
        else:
            image = decode_image(data, cfg.max_pixels)
            image = transform(image) if transform is not None else image
        meta = None
        if cfg.return_meta and "json" in raw.members:
            try:
                meta = json.loads(raw.members["json"])
            except ValueError:
                meta = None
        return image, label, meta

    def _fallback(self) -> tuple:
        if self._reserve is None:
            for raw in self._pool:
                try:
                    self._reserve = self._process(raw)
                    return self._reserve
                except SampleError:
                    pass
            for part in self.plan.parts:
                for raw in iter_shard(part.url, Counter(), report=False):
                    try:
                        self._reserve = self._process(raw)
                        return self._reserve
                    except SampleError:
                        pass
            raise RuntimeError("no usable sample in any shard: cannot fill a batch")
        return self._reserve

    def _make_batch(self, positions: list[tuple[Any, bool]], index: int) -> dict[str, Any]:
        cfg = self.cfg
        results: list[tuple | None] = []
        for raw, real in positions:
            try:
                results.append(None if raw is None else self._process(raw))
            except SampleError as exn:
                results.append(None)
                if real:
                    self.errors[exn.reason] += 1
                    self.examples.setdefault(exn.reason, f"{raw.url}:{raw.key}: {exn}")
        usable = [r for r in results if r is not None]
        valid, filled = [], []
        for k, (result, (_, real)) in enumerate(zip(results, positions, strict=True)):
            if result is None:
                result = usable[k % len(usable)] if usable else self._fallback()
                real = False
            valid.append(real)
            filled.append(result)
        try:
            images = torch.stack([r[0] for r in filled])
        except RuntimeError as exn:
            raise RuntimeError(f"transform must return same-size tensors: {exn}") from None
        batch: dict[str, Any] = {
            "image": images,
            "label": torch.tensor([r[1] for r in filled], dtype=torch.int64),
            "valid": torch.tensor(valid, dtype=torch.bool),
        }
        if cfg.masker is not None:
            gen = torch.Generator().manual_seed(mix_seed(cfg.seed, self.plan.epoch, cfg.rank, index, "mask"))
            batch.update(cfg.masker(cfg.batch_size, gen))
        if cfg.return_meta:
            batch["key"] = [raw.key if raw is not None else None for raw, _ in positions]
            batch["meta"] = [r[2] for r in filled]
        return batch

    def _report(self) -> dict[str, Any]:
        delta = self.errors - self._reported
        self._reported = Counter(self.errors)
        return {"counts": dict(delta), "examples": dict(self.examples)}

    def __iter__(self) -> Iterator[dict[str, Any]]:
        info = get_worker_info()
        worker = info.id if info is not None else 0
        streams = self.cfg.num_streams
        stream = (self.start_batch + worker) % streams
        skip = (self.start_batch + worker) // streams
        quota = stream_quota(self.plan.batches, stream, streams)
        in_main = info is None
        for local, positions in enumerate(self._positions(self._raw(stream), quota)):
            if local < skip:
                continue
            state = torch.default_generator.get_state() if in_main else None
            batch = self._make_batch(positions, local * streams + stream)
            if state is not None:
                torch.default_generator.set_state(state)
            batch["_index"] = local * streams + stream
            batch["_skips"] = self._report()
            yield batch
