"""The per-worker half of the stream: a worker's positions of every global micro-batch of one epoch.

See :mod:`sslvit.data.stream` for the layout of an epoch. :class:`EpochStream` is the
IterableDataset a torch DataLoader worker runs. Rank r owns positions ``r*B .. r*B+B-1`` of every
global micro-batch; worker w of the rank's ``n`` readers owns the contiguous chunk
``w*B//n .. (w+1)*B//n - 1`` of those. A position p is filled by logical stream ``p // c``
(sample ``g*c + p % c`` of that stream in global micro-batch g), so the worker reads the few
streams its chunk touches, in full and in lockstep with every other reader of them, and decodes
only the samples at its own positions. It yields one partial batch per global micro-batch; the
main process concatenates the partials of its workers in worker order.
"""

from __future__ import annotations

import json
import os
import random
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.utils.data import IterableDataset, get_worker_info

import sslvit.data.jpeg_crop as jpeg_crop
from sslvit.data.decode import (
    IMAGE_EXTENSIONS,
    LABEL_EXTENSIONS,
    SampleError,
    decode_image,
    exif_orientation,
    find_member,
    json_label,
    load_rgb,
    open_image,
    oriented_size,
    parse_label,
)
from sslvit.data.device_decode import encode_for
from sslvit.data.plan import Part, mix_seed
from sslvit.data.resident import ResidentCache
from sslvit.data.slabs import SlabChannel
from sslvit.data.tario import RawSample, iter_shard
from sslvit.data.transforms import Box, ImageTransform

_POOL_SIZE = 64
_SCAN_LIMIT = 10_000


@dataclass
class StreamConfig:
    batch_size: int  # per rank
    transform: Callable | None
    mode: str
    seed: int
    rank: int
    world_size: int
    num_streams: int  # S logical streams of the epoch
    num_readers: int  # readers (worker processes, or 1 in-process) per rank
    need_labels: bool
    masker: Callable | None
    shuffle_buffer: int  # raw samples buffered per logical stream
    shuffle: bool
    max_pixels: int
    drop_last: bool
    num_classes: int | None
    return_meta: bool
    class_names: list[str] | None = None
    label_key: str = ""
    key_dot: str = "first"
    counted: bool = True  # finite mode: stream loads come from counts (else a surplus is dropped_extra)
    repeats: int = 1  # views per decoded sample (consecutive positions of its stream)
    decode_on: torch.device | None = None  # JPEGs decoded by the main process there (sslvit.data.device_decode)

    @property
    def global_batch(self) -> int:
        return self.batch_size * self.world_size

    @property
    def per_stream(self) -> int:
        """Positions c each stream fills per global micro-batch."""
        return self.global_batch // self.num_streams


@dataclass
class EpochPlan:
    epoch: int
    batches: int  # global micro-batches in the epoch
    streams: list[list[Part]]  # finite: the parts of every logical stream
    parts: list[Part]  # every part, canonical order (fallback source for padding)
    weights: list[float] | None  # resampled: shard draw weights


def decode_for(transform: ImageTransform, data: bytes, max_pixels: int) -> torch.Tensor:
    """Encoded image -> transform output, uint8 (3, h, w), choosing the crop box from the header.

    The box is drawn before decoding, so a JPEG whose box holds at least 2x (4x, 8x) the output
    size per side is decoded at that DCT scale and the box is mapped onto the smaller image; and
    a JPEG is decoded only as far as the box needs (:mod:`sslvit.data.jpeg_crop`), the same pixels.
    """
    image = open_image(data, max_pixels)
    width, height = oriented_size(image)
    box = transform.sample_box(width, height)
    reduce = transform.reduction(box) if image.format == "JPEG" else 1
    if jpeg_crop.applies_to(image, data, exif_orientation(image)):
        scaled = (-(-height // reduce), -(-width // reduce))  # libjpeg's (height, width) at 1/reduce
        region = jpeg_crop.decode_box(data, reduce, _scaled_box(box, (height, width), scaled))
        if region is not None:
            return transform.apply(*region)
    pixels, _ = load_rgb(image, data, reduce)
    return transform.apply(pixels, _scaled_box(box, (height, width), tuple(pixels.shape[-2:])))


def _scaled_box(box: Box, size: tuple[int, int], got: tuple[int, int]) -> Box:
    """A box in an image of (height, width) ``size`` -> the same box in the image decoded at ``got``."""
    if got == size:
        return box
    (height, width), (got_h, got_w) = size, got
    sy, sx = got_h / height, got_w / width
    top, left = min(int(box[0] * sy), got_h - 1), min(int(box[1] * sx), got_w - 1)
    return (top, left, max(1, min(round(box[2] * sy), got_h - top)), max(1, min(round(box[3] * sx), got_w - left)))


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


def missing_image_detail(raw: RawSample) -> str:
    """Why a raw sample has no image member: the extensions it has, and a dotted-key hint."""
    exts = sorted(set(raw.members) | set(raw.other))
    detail = f"members {exts}"
    dotted = [e for e in exts if "." in e and e.rsplit(".", 1)[-1] in IMAGE_EXTENSIONS]
    if dotted:
        detail += (f"; the key's basename holds dots ({raw.key}.{dotted[0]} splits at the first dot): "
                   "pass key_dot='last' (data.key_dot=last)")
    return detail


@dataclass
class _Reader:
    """One logical stream as read by this worker: its raw iterator, first samples, own errors."""

    raw: Iterator[RawSample]
    owned: bool  # this worker fills the stream's first position: it reports the stream's errors
    errors: Counter = field(default_factory=Counter)
    pool: list[RawSample] = field(default_factory=list)
    taken: int = 0
    length: int | None = None  # samples in the stream, once exhausted
    checked: int = 0  # pool entries tried as a replacement
    reserve: RawSample | None = None

    def take(self) -> tuple[RawSample | None, bool]:
        """The stream's next sample (or its padding) -> (raw, is_real)."""
        t = self.taken
        self.taken += 1
        if self.length is None:
            item = next(self.raw, None)
            if item is not None:
                if len(self.pool) < _POOL_SIZE:
                    self.pool.append(item)
                return item, True
            self.length = t
        pad = t - self.length
        return (self.pool[pad % len(self.pool)] if self.pool else None), False


# fields a reader sends as lists (pickled with the message: no shared-memory file each) and the
# main process turns into tensors of these types
LIST_FIELDS = {"label": torch.int64, "valid": torch.bool}


def as_tensors(batch: dict[str, Any]) -> dict[str, Any]:
    """A batch whose :data:`LIST_FIELDS` are lists -> the same batch with them as tensors."""
    for name, dtype in LIST_FIELDS.items():
        if isinstance(batch.get(name), list):
            batch[name] = torch.tensor(batch[name], dtype=dtype)
    return batch


def _stack(images: list[torch.Tensor]) -> torch.Tensor:
    """n x uint8 (3, h, w) -> (n, 3, h, w); in a DataLoader worker the result is allocated in shared
    memory (as torch's default collate does), so sending it to the main process copies nothing."""
    if get_worker_info() is None or not images:
        return torch.stack(images)
    first = images[0]
    storage = first._typed_storage()._new_shared(len(images) * first.numel(), device=first.device)
    out = first.new(storage).resize_(len(images), *first.shape)
    return torch.stack(images, out=out)


def _repeated(items: Iterator[RawSample], repeats: int) -> Iterator[RawSample]:
    """Every sample ``repeats`` times in a row (the same object: its views share one decode)."""
    for item in items:
        for _ in range(repeats):
            yield item


class EpochStream(IterableDataset):
    """One epoch of one rank's positions; in worker w it fills the w-th chunk of them.

    ``plan`` is either one epoch's :class:`EpochPlan` or a function of the epoch returning it,
    with ``control``: a shared int64 tensor ``[epoch, start_batch, pass]`` that the main process writes
    before each pass, so that persistent DataLoader workers run the next epoch without being
    recreated (each ``iter()`` reads it afresh).
    """

    def __init__(self, cfg: StreamConfig, plan: EpochPlan | Callable[[int], EpochPlan], start_batch: int = 0,
                 control: torch.Tensor | None = None, resident: ResidentCache | None = None,
                 slabs: SlabChannel | None = None) -> None:
        self.cfg, self.start_batch = cfg, start_batch
        self.slabs = slabs  # several readers: images go straight into the main process's batch tensors
        self.pass_id = 0
        self.resident = resident  # shards and decoded images held in memory (sslvit.data.resident)
        self._planner = plan if callable(plan) else None
        self.plan = None if callable(plan) else plan
        self.control = control
        self.errors: Counter = Counter()
        self.examples: dict[str, str] = {}
        self._reported: Counter = Counter()
        self._reserve: RawSample | None = None
        self._plans: dict[int, EpochPlan] = {}

    def _begin(self) -> None:
        """Select the pass that the next iteration runs (from ``control`` when shared) and reset its counts."""
        if self.control is not None:
            epoch, self.start_batch, self.pass_id = (int(v) for v in self.control.tolist())
            if self._planner is not None:
                if epoch not in self._plans:
                    self._plans = {epoch: self._planner(epoch)}
                self.plan = self._plans[epoch]
        self.errors, self.examples, self._reported = Counter(), {}, Counter()
        self.__dict__.pop("_decoded_cache", None)

    def chunk(self, worker: int) -> range:
        """Global positions (within a global micro-batch) that ``worker`` of this rank fills."""
        cfg = self.cfg
        lo = cfg.rank * cfg.batch_size + worker * cfg.batch_size // cfg.num_readers
        hi = cfg.rank * cfg.batch_size + (worker + 1) * cfg.batch_size // cfg.num_readers
        return range(lo, hi)

    def _raw(self, stream: int, errors: Counter, owned: bool) -> Iterator[RawSample]:
        cfg, plan = self.cfg, self.plan
        if cfg.mode == "finite":
            raw = self._read_parts(plan.streams[stream], errors, owned)
        else:
            raw = self._resample(random.Random(mix_seed(cfg.seed, plan.epoch, stream, "shards")), errors, owned)
        if cfg.shuffle and cfg.shuffle_buffer > 1:
            raw = _shuffled(raw, cfg.shuffle_buffer, random.Random(mix_seed(cfg.seed, plan.epoch, stream, "samples")))
        return _repeated(raw, cfg.repeats) if cfg.repeats > 1 else raw

    def _shard(self, url: str, errors: Counter, expected: int | None, report: bool) -> Iterator[RawSample]:
        """The raw samples of one shard: from the resident cache when there is one, else read."""
        if self.resident is not None:
            return self.resident.samples(url, errors, expected, report, self.cfg.key_dot)
        return iter_shard(url, errors, expected, report=report, key_dot=self.cfg.key_dot)

    def _read_parts(self, parts: list[Part], errors: Counter, owned: bool) -> Iterator[RawSample]:
        for part in parts:
            report = owned and part.reads_to_end
            expected = part.shard_count if part.reads_to_end else None
            for raw in self._shard(part.url, errors, expected, report):
                if part.stop is not None and raw.index >= part.stop:
                    break
                if raw.index >= part.start:
                    yield raw

    def _resample(self, rng: random.Random, errors: Counter, owned: bool) -> Iterator[RawSample]:
        parts = self.plan.parts
        empty_reads = 0
        while True:
            part = rng.choices(parts, weights=self.plan.weights)[0]
            got = False
            for raw in self._shard(part.url, errors, part.shard_count, owned):
                got = True
                yield raw
            empty_reads = 0 if got else empty_reads + 1
            if empty_reads > max(20, 3 * len(parts)):
                raise RuntimeError(f"resampled stream: {empty_reads} shard reads in a row gave no "
                                   f"samples (unreadable or empty shards?), e.g. {parts[0].url}")

    def _label(self, raw: RawSample) -> int:
        cfg = self.cfg
        if cfg.label_key:
            return json_label(raw.members.get("json"), cfg.label_key, cfg.num_classes, cfg.class_names)
        return parse_label(find_member(raw.members, LABEL_EXTENSIONS), cfg.num_classes, cfg.class_names)

    def _decoded(self, raw: RawSample, data: bytes) -> torch.Tensor:
        """Full-size uint8 (3, H, W) pixels of ``raw``, decoded once for its consecutive views."""
        cache: dict[int, tuple[RawSample, torch.Tensor]] = self.__dict__.setdefault("_decoded_cache", {})
        hit = cache.get(id(raw))
        if hit is not None and hit[0] is raw:
            return hit[1]
        held = self.resident.pixels(raw, data, self.cfg.max_pixels) if self.resident is not None else None
        pixels = held if held is not None else decode_image(data, self.cfg.max_pixels)
        if len(cache) >= self.__dict__.get("_cache_size", 1):
            del cache[next(iter(cache))]
        cache[id(raw)] = (raw, pixels)
        return pixels

    def _process(self, raw: RawSample, seed: int) -> tuple[torch.Tensor, int, Any]:
        """Raw sample -> (uint8 (3, H, W), label, meta); augmentation seeded by ``seed``; raises SampleError.

        With ``repeats > 1`` the image is decoded at full size once for all of its views (a view's
        pixels then never depend on which reader decoded it) and each view draws its own crop."""
        cfg = self.cfg
        if cfg.need_labels:
            label = self._label(raw)
        else:
            try:
                label = self._label(raw)
            except SampleError:
                label = -1
        data = find_member(raw.members, IMAGE_EXTENSIONS)
        if data is None:
            raise SampleError("missing_image", missing_image_detail(raw))
        torch.default_generator.manual_seed(seed)
        transform = cfg.transform
        if cfg.repeats > 1:
            pixels = self._decoded(raw, data)
            image = transform(pixels) if transform is not None else pixels
        elif isinstance(transform, ImageTransform):
            held = self.resident.pixels(raw, data, cfg.max_pixels) if self.resident is not None else None
            if held is not None:  # the same RNG calls as decode_for: the box, then the transform's ops
                image = transform.apply(held, transform.sample_box(held.shape[-1], held.shape[-2]))
            else:
                image = encode_for(transform, data, cfg.max_pixels) if cfg.decode_on is not None else None
                if image is None:
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

    def _usable(self, raw: RawSample) -> bool:
        try:
            self._process(raw, 0)
            return True
        except SampleError:
            return False

    def _replacement(self, reader: _Reader) -> RawSample:
        """The stream's first usable sample read so far, else the corpus's first usable sample."""
        while reader.reserve is None and reader.checked < len(reader.pool):
            candidate = reader.pool[reader.checked]
            reader.checked += 1
            if self._usable(candidate):
                reader.reserve = candidate
        if reader.reserve is not None:
            return reader.reserve
        if self._reserve is None:
            self._reserve = self._scan()
        return self._reserve

    def _scan(self) -> RawSample:
        """The first usable sample of the corpus; raises RuntimeError saying what was found."""
        found: Counter = Counter()
        reasons: Counter = Counter()
        seen = 0
        for part in self.plan.parts:
            for raw in self._shard(part.url, reasons, None, True):
                seen += 1
                found.update({f"*.{e.rsplit('.', 1)[-1]}" if "." in e else e for e in (*raw.members, *raw.other)})
                try:
                    self._process(raw, 0)
                    return raw
                except SampleError as exn:
                    reasons[exn.reason] += 1
                if seen >= _SCAN_LIMIT:
                    break
            if seen >= _SCAN_LIMIT:
                break
        need = "an image member (." + ", .".join(IMAGE_EXTENSIONS[:4]) + ", ...)"
        if self.cfg.need_labels:
            need += (f" and a label (the .json field {self.cfg.label_key!r})" if self.cfg.label_key
                     else " and a label (." + ", .".join(LABEL_EXTENSIONS) + ")")
        hint = ""
        if any("." in e and e.rsplit(".", 1)[-1] in IMAGE_EXTENSIONS for e in found):
            hint = "; keys hold dots, so members split at the first dot: pass key_dot='last' (data.key_dot=last)"
        raise RuntimeError(f"no usable sample in {seen} samples of {len(self.plan.parts)} shard(s) "
                           f"(e.g. {self.plan.parts[0].url}): members found (extension: samples) "
                           f"{dict(found.most_common(12))}; rejected by reason {dict(reasons)}; "
                           f"the objective needs {need}{hint}")

    def _fill(self, item: tuple[RawSample | None, bool], reader: _Reader, seed: int) -> tuple:
        """(raw, real) at one position -> (image, label, meta, valid, key); bad samples are counted."""
        raw, real = item
        if raw is not None:
            try:
                image, label, meta = self._process(raw, seed)
                return image, label, meta, real, raw.key if real else ""
            except SampleError as exn:
                if real:
                    self.errors[exn.reason] += 1
                    self.examples.setdefault(exn.reason, f"{raw.url}:{raw.key}: {exn}")
        image, label, meta = self._process(self._replacement(reader), seed)
        return image, label, meta, False, raw.key if raw is not None and real else ""

    def _make_batch(self, filled: list[tuple], g: int, positions: range,
                    slab: torch.Tensor | None = None) -> dict[str, Any]:
        """The reader's part of batch ``g``; with a ``slab`` (the whole batch's images, shared with
        the main process) its images go into their rows of it and the part carries none."""
        cfg = self.cfg
        try:
            if cfg.decode_on is not None:  # JPEGs as Encoded, the rest as pixels: decoded by the main process
                images = [f[0] for f in filled]
            elif slab is None:
                images = _stack([f[0] for f in filled])
            else:
                rows = positions.start - cfg.rank * cfg.batch_size
                torch.stack([f[0] for f in filled], out=slab[rows:rows + len(filled)])
        except RuntimeError as exn:
            raise RuntimeError(f"transform must return same-size tensors: {exn}") from None
        batch: dict[str, Any] = {
            "label": [f[1] for f in filled],
            "valid": [f[3] for f in filled],
            "key": [f[4] for f in filled],
        }
        if cfg.decode_on is not None:
            batch["encoded"] = images
        elif slab is None:
            batch["image"] = images
        if cfg.masker is not None:
            masks = []
            for p in positions:
                gen = torch.Generator().manual_seed(mix_seed(cfg.seed, self.plan.epoch, g * cfg.global_batch + p,
                                                             "mask"))
                masks.append(cfg.masker(1, gen))
            batch.update({name: torch.cat([m[name] for m in masks]) for name in masks[0]})
        if cfg.return_meta:
            batch["meta"] = [f[2] for f in filled]
        return batch

    def _drain(self, reader: _Reader) -> None:
        """Count what a finite stream holds beyond the epoch's last batch (before that batch goes out)."""
        if self.cfg.mode != "finite" or reader.length is not None:
            return
        extra, last = 0, None
        for raw in reader.raw:
            extra += raw is not last
            last = raw
        if extra:
            self.errors["dropped_last" if self.cfg.drop_last and self.cfg.counted else "dropped_extra"] += extra

    def _report(self, readers: dict[int, _Reader]) -> dict[str, Any]:
        total = Counter(self.errors)
        for reader in readers.values():
            if reader.owned:
                total.update(reader.errors)
        delta = total - self._reported
        self._reported = total
        return {"counts": dict(delta), "examples": dict(self.examples)}

    def __iter__(self) -> Iterator[dict[str, Any]]:
        self._begin()
        cfg, plan = self.cfg, self.plan
        info = get_worker_info()
        worker = info.id if info is not None else 0
        positions = self.chunk(worker)
        c = cfg.per_stream
        readers: dict[int, _Reader] = {}
        for k in sorted({p // c for p in positions}):
            reader = _Reader(iter(()), owned=k * c in positions)
            reader.raw = self._raw(k, reader.errors, reader.owned)
            readers[k] = reader
        in_main = info is None
        self._cache_size = len(readers) + 1  # decoded images kept for later views: one per stream read
        for g in range(plan.batches):
            items: dict[int, tuple[RawSample | None, bool]] = {}
            for k, reader in readers.items():
                for i in range(c):
                    item = reader.take()
                    if k * c + i in positions:
                        items[k * c + i] = item
            if g < self.start_batch:
                continue
            if g == plan.batches - 1:
                for reader in readers.values():
                    if reader.owned:
                        self._drain(reader)
            state = torch.default_generator.get_state() if in_main else None
            filled = [self._fill(items[p], readers[p // c], mix_seed(cfg.seed, plan.epoch, g * cfg.global_batch + p))
                      for p in positions]
            slab = None
            if self.slabs is not None and not in_main:
                slab = self.slabs.wait(worker, self.pass_id, g, self.control)
                if slab is None:  # the main process started another pass: this one is over
                    return
            batch = self._make_batch(filled, g, positions, slab)
            if state is not None:
                torch.default_generator.set_state(state)
            batch["_index"], batch["_worker"], batch["_pid"] = g, worker, os.getpid()
            batch["_skips"] = self._report(readers)
            yield batch
