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
* sslvit: tar shards, crop box drawn from the JPEG header, only the box decoded (libjpeg-turbo
  through sslvit.data._jpegcrop; at a reduced DCT scale when the box allows it), one antialiased
  uint8 resize, uint8 batches that the workers write into one shared tensor (normalisation happens
  on the device, see sslvit.data.transforms.normalize; the third row adds it on the CPU here). Rows
  "repeats=k" decode each image once, whole, for k augmented views (data.repeats); their images
  are views.

After the rounds, the per-stage split: CPU milliseconds per image of reading, decoding,
cropping / resizing / flipping, converting and collating, for both, in this process on one
thread (``--no-stages`` skips it).

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
from collections import Counter
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sslvit.data import (  # noqa: E402
    IMAGENET_MEAN,
    IMAGENET_STD,
    build_loader,
    jpeg_crop,
    normalize,
    pretrain_transform,
)
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


def _best_ms(fn, count: int, passes: int = 3) -> float:
    """Milliseconds of CPU per item: the fastest of ``passes`` calls of ``fn`` over ``count`` items."""
    best = float("inf")
    for _ in range(passes):
        start = time.process_time()
        fn()
        best = min(best, time.process_time() - start)
    return 1e3 * best / count


def stage_split(paths: list[Path], shards: Path, size: int, batch_size: int) -> list[tuple[str, float, float]]:
    """CPU ms per image of each stage, both loaders, in this process on one thread (no workers):
    [(stage, baseline ms, sslvit ms)]. The stages run one after the other over the whole corpus
    (each on the previous stage's output), so the caches are as in a loader's own loop."""
    import io

    from PIL import Image
    from torch.utils.data import default_collate
    from torchvision import transforms as T

    from sslvit.data.decode import load_rgb, open_image, oriented_size
    from sslvit.data.tario import iter_shard
    from sslvit.data.worker import _scaled_box

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    n = len(paths)
    crop = T.Compose([T.RandomResizedCrop(size, scale=(0.2, 1.0), interpolation=T.InterpolationMode.BICUBIC),
                      T.RandomHorizontalFlip()])
    to_tensor = T.Compose([T.ToTensor(), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)])
    files = [p.read_bytes() for p in paths]
    opened = [Image.open(io.BytesIO(b)).convert("RGB") for b in files]
    cropped = [crop(im) for im in opened]
    tensors = [to_tensor(im) for im in cropped]
    base = {
        "read": _best_ms(lambda: [p.read_bytes() for p in paths], n),
        "header + box": 0.0,  # PIL's crop draws its box from the decoded image
        "decode": _best_ms(lambda: [Image.open(io.BytesIO(b)).convert("RGB") for b in files], n),
        "crop / resize / flip": _best_ms(lambda: [crop(im) for im in opened], n),
        "to float + normalize": _best_ms(lambda: [to_tensor(im) for im in cropped], n),
        "collate": _best_ms(lambda: [default_collate(tensors[i:i + batch_size]) for i in range(0, n, batch_size)], n),
    }

    transform = pretrain_transform(size)
    urls = sorted(str(p) for p in shards.glob("*.tar"))
    datas = [raw.members["jpg"] for url in urls for raw in iter_shard(url, Counter())]

    def boxes():
        out = []
        for data in datas:
            image = open_image(data)
            width, height = oriented_size(image)
            box = transform.sample_box(width, height)
            reduce = transform.reduction(box)
            out.append((reduce, _scaled_box(box, (height, width), (-(-height // reduce), -(-width // reduce)))))
        return out

    torch.manual_seed(0)
    drawn = boxes()
    regions = [jpeg_crop.decode_box(d, r, b) for d, (r, b) in zip(datas, drawn, strict=True)]
    outputs = [transform.apply(*region) for region in regions]
    ours = {
        "read": _best_ms(lambda: [r for url in urls for r in iter_shard(url, Counter())], n),
        "header + box": _best_ms(boxes, n),
        "decode": _best_ms(lambda: [jpeg_crop.decode_box(d, r, b) for d, (r, b) in zip(datas, drawn, strict=True)], n),
        "crop / resize / flip": _best_ms(lambda: [transform.apply(*region) for region in regions], n),
        "to float + normalize": 0.0,  # on the device
        "collate": _best_ms(lambda: [torch.stack(outputs[i:i + batch_size]) for i in range(0, n, batch_size)], n),
    }
    whole = _best_ms(lambda: [load_rgb(open_image(d), d, r) for d, (r, _) in zip(datas, drawn, strict=True)], n)
    torch.set_num_threads(threads)
    rows = [(stage, base[stage], ours[stage]) for stage in base]
    rows.append(("(decode, the whole image at the same scale)", float("nan"), whole))
    return rows


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
    parser.add_argument("--no-stages", dest="stages", action="store_false",
                        help="skip the per-stage split (read, decode, crop/resize, collate) after the rounds")
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
        print(f"JPEG decoder: {jpeg_decoder()}; crop-box decoding: "
              f"{'on' if jpeg_crop.enabled() else 'off (' + jpeg_crop.unavailable_reason() + ')'}")
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

        split = stage_split(paths, shards, args.size, args.batch_size) if args.stages else []

    print(f"\n{'loader':40s} {'images':>7s} {'wall s':>7s} {'img/s':>7s} {'CPU s':>7s} {'img/s/core':>10s}")
    totals = {}
    for name, (images, wall, cpu) in rows.items():
        totals[name] = images / cpu
        print(f"{name:40s} {images:7d} {wall:7.2f} {images / wall:7.1f} {cpu:7.2f} {totals[name]:10.1f}")
    ratio = totals[OURS] / totals[BASE]
    print(f"\nsslvit / baseline, images per CPU-second: {ratio:.2f}x over all rounds (target >= 2.5x); "
          f"per round {' '.join(f'{x:.2f}' for x in ratios)} (median {statistics.median(ratios):.2f}x); "
          f"with normalize on the CPU instead of the device: {totals[OURS_NORM] / totals[BASE]:.2f}x")
    for name in rows:
        if "(repeats=" in name:
            print(f"{name}: {totals[name] / totals[BASE]:.2f}x the baseline's images (views) per CPU-second")
    if split:
        print(f"\nper stage, CPU ms per image (one process, one thread, no workers; fastest of 3 passes)\n"
              f"{'stage':46s} {'baseline':>9s} {'sslvit':>9s}")
        for stage, b, o in split:
            print(f"{stage:46s} {b:9.3f} {o:9.3f}")
        total_b = sum(b for _, b, _ in split[:-1])
        total_o = sum(o for _, _, o in split[:-1])
        print(f"{'sum':46s} {total_b:9.3f} {total_o:9.3f}   ({total_b / total_o:.2f}x)")
    return {"ratio": ratio, "median_round_ratio": statistics.median(ratios), **totals}


if __name__ == "__main__":
    main()
