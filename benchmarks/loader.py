"""Loader throughput: sslvit's shard stream against torchvision ImageFolder + PIL + DataLoader.

    python benchmarks/loader.py                      # ~2 minutes on 2 cores
    python benchmarks/loader.py --images 2000 --workers 4 --epochs 3

Both read the same JPEGs (ImageNet-like: about 500x375, made from scikit-learn's two sample
photos by random crops, scales, colour shifts, a little
luminance grain and flips; mean ~50 KiB per file, ImageNet's is ~110 KiB: raise --grain for
larger, slower-to-decode files) and apply the same augmentation
(RandomResizedCrop(224, scale=(0.2, 1)), bicubic, horizontal flip), in one invocation:

* baseline: the usual recipe (as in MAE's main_pretrain.py): ImageFolder, PIL decode,
  torchvision.transforms RandomResizedCrop + RandomHorizontalFlip + ToTensor + Normalize in the
  workers, float32 batches out of the DataLoader.
* sslvit: tar shards, crop box drawn from the JPEG header, JPEG decoded (simplejpeg when
  installed) at a reduced DCT scale when the box allows it, one antialiased uint8 resize, uint8
  batches (normalisation happens on the device, see sslvit.data.transforms.normalize; the third
  row adds it on the CPU here). Rows "repeats=k" decode each image once for k augmented views
  (data.repeats); their images are views.

"img/s/core" is images per CPU-second actually used by the main process and its workers
(getrusage of self + children, and /proc for the running persistent workers), which is what a CPU budget per GPU buys; "img/s" is wall-clock
throughput. Runs alternate between the loaders to spread noise from other work on the machine.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sslvit.data import IMAGENET_MEAN, IMAGENET_STD, build_loader, normalize, pretrain_transform  # noqa: E402
from sslvit.data.decode import jpeg_decoder  # noqa: E402
from sslvit.data.shards import SourceItem, write_shards  # noqa: E402

SIZES = [(500, 375), (500, 333), (375, 500), (500, 400), (480, 360), (500, 281), (333, 500), (400, 400)]


def make_jpegs(root: Path, count: int, classes: int = 4, seed: int = 0, grain: float = 4.0) -> list[Path]:
    """``count`` ImageNet-like JPEGs in an ImageFolder layout under ``root``."""
    from PIL import Image
    from sklearn.datasets import load_sample_images

    photos = load_sample_images().images  # two 427x640 RGB photos
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(count):
        photo = photos[i % len(photos)]
        height, width = photo.shape[:2]
        crop_h, crop_w = int(height * rng.uniform(0.45, 1.0)), int(width * rng.uniform(0.45, 1.0))
        top, left = rng.integers(0, height - crop_h + 1), rng.integers(0, width - crop_w + 1)
        target = SIZES[rng.integers(len(SIZES))]
        target = (int(target[0] * rng.uniform(0.9, 1.1)), int(target[1] * rng.uniform(0.9, 1.1)))
        image = Image.fromarray(photo[top:top + crop_h, left:left + crop_w]).resize(
            target, Image.Resampling.BICUBIC)
        gain = rng.uniform(0.75, 1.25, 3).astype(np.float32)
        mix = (np.eye(3) * 0.8 + rng.uniform(0, 0.2, (3, 3))).astype(np.float32) * gain[:, None]
        pixels = np.asarray(image, dtype=np.float32) @ mix.T + np.float32(rng.uniform(-25, 25))  # colour shift
        pixels += grain * rng.standard_normal(pixels.shape[:2] + (1,), dtype=np.float32)  # luminance grain
        image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
        if rng.random() < 0.5:
            image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        path = root / f"class{i % classes}" / f"img{i:05d}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        image.save(path, "JPEG", quality=int(rng.integers(75, 96)))
        paths.append(path)
    return paths


def _live_children_cpu() -> float:
    """CPU seconds of this process's running children (persistent DataLoader workers), from /proc."""
    me, total, tick = os.getpid(), 0.0, os.sysconf("SC_CLK_TCK")
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == me:  # fields[1] = ppid; fields[11:13] = utime, stime in clock ticks
            total += (int(fields[11]) + int(fields[12])) / tick
    return total


def cpu_seconds() -> float:
    """CPU time of this process, its terminated and waited-for children, and its running children
    (persistent loader workers live across epochs, so getrusage alone would miss their work)."""
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime + _live_children_cpu()


def baseline_loader(root: Path, args: argparse.Namespace) -> torch.utils.data.DataLoader:
    from torchvision import datasets
    from torchvision import transforms as T

    transform = T.Compose([
        T.RandomResizedCrop(args.size, scale=(0.2, 1.0), interpolation=T.InterpolationMode.BICUBIC),
        T.RandomHorizontalFlip(), T.ToTensor(), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)])
    dataset = datasets.ImageFolder(str(root), transform=transform)
    return torch.utils.data.DataLoader(dataset, batch_size=args.batch_size, shuffle=True,
                                       num_workers=args.workers)


def measure(loader, epochs: int, on_batch=None) -> tuple[int, float, float]:
    """(images, wall seconds, CPU seconds) over ``epochs`` full passes."""
    images, wall, cpu = 0, time.perf_counter(), cpu_seconds()
    for epoch in range(epochs):
        if hasattr(loader, "set_epoch"):
            loader.set_epoch(epoch)
        for batch in loader:
            image = batch["image"] if isinstance(batch, dict) else batch[0]
            if on_batch is not None:
                on_batch(image)
            images += int(batch["valid"].sum()) if isinstance(batch, dict) else len(image)
    return images, time.perf_counter() - wall, cpu_seconds() - cpu


BASE, OURS, OURS_NORM, OURS_K = ("torchvision ImageFolder + PIL (float)", "sslvit stream (uint8)",
                                 "sslvit stream + normalize in main", "sslvit")


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=640, help="JPEGs to generate")
    parser.add_argument("--workers", type=int, default=2, help="DataLoader workers for both loaders")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--size", type=int, default=224, help="output side")
    parser.add_argument("--rounds", type=int, default=4, help="rounds; each runs one epoch of every loader")
    parser.add_argument("--grain", type=float, default=4.0, help="luminance noise std (larger files)")
    parser.add_argument("--repeats", type=int, nargs="*", default=[2, 4],
                        help="also time data.repeats=k (k views per decoded image), for each k > 1")
    parser.add_argument("--dir", default=None, help="work directory (default: a temporary one)")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        root, shards = Path(tmp) / "folder", Path(tmp) / "shards"
        start = time.perf_counter()
        paths = make_jpegs(root, args.images, grain=args.grain)
        items = (SourceItem(name=str(p.relative_to(root)), path=p, label=int(p.parent.name[5:])) for p in paths)
        write_shards(items, shards, prefix="bench", max_count=128, verify=False, compute_stats=False,
                     progress=False, class_names=sorted(p.name for p in root.iterdir()))
        mean_bytes = sum(p.stat().st_size for p in paths) / len(paths)
        print(f"{len(paths)} JPEGs (mean {mean_bytes / 1024:.0f} KiB) + shards in "
              f"{time.perf_counter() - start:.1f}s; {args.workers} workers, batch {args.batch_size}, "
              f"{os.cpu_count()} CPUs, {args.rounds} rounds")
        def ours_with(repeats: int):
            return build_loader(shards, batch_size=args.batch_size, transform=pretrain_transform(args.size),
                                num_workers=args.workers, mode="finite", seed=0, repeats=repeats)

        ours = ours_with(1)
        repeated = {k: ours_with(k) for k in args.repeats if k > 1}
        runs = [(BASE, lambda: baseline_loader(root, args), None), (OURS, lambda: ours, None),
                (OURS_NORM, lambda: ours, normalize)]
        runs += [(f"{OURS_K} (repeats={k})", lambda k=k: repeated[k], None) for k in repeated]
        print(f"JPEG decoder: {jpeg_decoder()}")
        measure(baseline_loader(root, args), 1)  # warm-up: page cache, imports, persistent workers
        for loader in (ours, *repeated.values()):
            measure(loader, 1)
        rows = {name: [0, 0.0, 0.0] for name, _, _ in runs}
        ratios: list[float] = []
        for r in range(args.rounds):
            per_core = {}
            for name, make, on_batch in runs[r % len(runs):] + runs[: r % len(runs)]:  # rotate the order
                result = measure(make(), 1, on_batch)
                rows[name] = [a + b for a, b in zip(rows[name], result, strict=True)]
                per_core[name] = result[0] / result[2]
            ratios.append(per_core[OURS] / per_core[BASE])

    print(f"\n{'loader':40s} {'images':>7s} {'wall s':>7s} {'img/s':>7s} {'CPU s':>7s} {'img/s/core':>10s}")
    totals = {}
    for name, (images, wall, cpu) in rows.items():
        totals[name] = images / cpu
        print(f"{name:40s} {images:7d} {wall:7.2f} {images / wall:7.1f} {cpu:7.2f} {totals[name]:10.1f}")
    ratio = totals[OURS] / totals[BASE]
    print(f"\nsslvit / baseline, images per CPU-second: {ratio:.2f}x over all rounds (target >= 2x); "
          f"per round {' '.join(f'{x:.2f}' for x in ratios)} (median {statistics.median(ratios):.2f}x); "
          f"with normalize on the CPU instead of the device: {totals[OURS_NORM] / totals[BASE]:.2f}x")
    for name in rows:
        if "(repeats=" in name:
            print(f"{name}: {totals[name] / totals[BASE]:.2f}x the baseline's images (views) per CPU-second")
    return {"ratio": ratio, "median_round_ratio": statistics.median(ratios), **totals}


if __name__ == "__main__":
    main()
