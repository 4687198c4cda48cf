"""Training-step speed of sslvit's ViT and its objectives; prints tables.

    python benchmarks/model.py                        # CPU: ~2-3 minutes on 2 cores
    python benchmarks/model.py --batch-size 4 --iters 2 --objective-model vit_small_patch16   # quicker
    python benchmarks/model.py --gpu-batch-size 256          # on a GPU machine: adds the bf16 MFU table

1. One training step (forward, backward, fused AdamW) of sslvit's ViT-B/16 against torchvision's
   ``vit_b_16`` (same size, 1000-class head), steps interleaved, median over timed steps.
2. Step cost of MAE, SimMIM, MPP and supervised on the same encoder, beside their analytic FLOPs.
3. With a GPU: MAE ViT-B/16 images/s and MFU in bf16 autocast, eager and ``torch.compile``d,
   against the measured bf16 matmul peak (train FLOPs = 3 x forward FLOPs).
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
import torchvision

from sslvit.models import create_model
from sslvit.objectives import OBJECTIVES, Objective, build_objective, objective_config


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def print_table(title: str, header: list[str], rows: list[list[str]]) -> None:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    print(f"\n{title}")
    print("  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)))
    print("  ".join("-" * w for w in widths))
    for row in rows:
        print("  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)))


def classifier_step(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor) -> Callable[[], None]:
    """A closure running one forward / backward / AdamW step of a classifier."""
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)

    def step() -> None:
        loss = F.cross_entropy(model(images), labels)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


def objective_step(
    objective: Objective, batch: dict[str, torch.Tensor], amp: bool = False, compile: bool = False
) -> Callable[[], None]:
    """A closure running one step of ``objective`` (bf16 autocast when ``amp``, whole objective
    forward through ``torch.compile`` when ``compile``)."""
    opt = torch.optim.AdamW(objective.parameters(), lr=1e-4, fused=True)
    device = batch["image"].device
    forward = torch.compile(objective) if compile else objective

    def step() -> None:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            loss, _ = forward(batch)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


def time_steps(
    steps: dict[str, Callable[[], None]], warmup: int, iters: int, device: torch.device
) -> dict[str, list[float]]:
    """Seconds per timed step of each closure; closures run interleaved, one step each per round, so
    a busy machine slows all of them alike within a round."""
    times: dict[str, list[float]] = {name: [] for name in steps}
    for i in range(warmup + iters):
        for name, step in steps.items():
            sync(device)
            start = time.perf_counter()
            step()
            sync(device)
            if i >= warmup:
                times[name].append(time.perf_counter() - start)
    return times


def paired_ratio(a: list[float], b: list[float]) -> float:
    """Median over rounds of a[i] / b[i]."""
    return statistics.median(x / y for x, y in zip(a, b, strict=True))


def make_batch(
    objective: Objective, batch_size: int, img_size: int, device: torch.device
) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    batch = {
        "image": torch.randint(0, 256, (batch_size, 3, img_size, img_size), generator=g, dtype=torch.uint8),
        "label": torch.randint(0, 1000, (batch_size,), generator=g),
    }
    if objective.masker is not None:
        batch.update(objective.masker(batch_size, g))
    return {k: v.to(device) for k, v in batch.items()}


def objective_cfg(name: str, model: str) -> Any:
    """The config section of objective ``name``; tiny models get a tiny decoder and cells that fit 32 px."""
    small = "patch4" in model
    extra = {
        "mae": dict(decoder_depth=2, decoder_dim=64, decoder_heads=4) if small else {},
        "simmim": dict(mask_patch_size=8) if small else {},
        "supervised": dict(num_classes=1000),
    }.get(name, {})
    return objective_config(name, **extra)


def versus_torchvision(args: argparse.Namespace) -> None:
    torch.manual_seed(0)
    ours = create_model("vit_base_patch16", num_classes=1000)
    theirs = torchvision.models.vit_b_16(weights=None)
    images = torch.randn(args.batch_size, 3, 224, 224)
    labels = torch.randint(0, 1000, (args.batch_size,))
    steps = {
        "sslvit": classifier_step(ours, images, labels),
        "torchvision": classifier_step(theirs, images, labels),
    }
    times = time_steps(steps, args.warmup, args.iters, torch.device("cpu"))
    t = {name: statistics.median(v) for name, v in times.items()}
    ratio = paired_ratio(times["sslvit"], times["torchvision"])
    n_ours, n_theirs = ours.num_params(), sum(p.numel() for p in theirs.parameters())
    rows = [
        [
            "sslvit vit_base_patch16",
            f"{n_ours / 1e6:.2f}M",
            f"{t['sslvit']:.3f}",
            f"{args.batch_size / t['sslvit']:.2f}",
            f"{ratio:.3f}",
        ],
        [
            "torchvision vit_b_16",
            f"{n_theirs / 1e6:.2f}M",
            f"{t['torchvision']:.3f}",
            f"{args.batch_size / t['torchvision']:.2f}",
            "1.000",
        ],
    ]
    title = f"ViT-B/16 train step, CPU, batch {args.batch_size}, median of {args.iters} after {args.warmup} warmup"
    title += " (time ratio: median of per-round sslvit / torchvision)"
    print_table(title, ["model", "params", "s/step", "img/s", "time ratio"], rows)


def objective_costs(args: argparse.Namespace) -> None:
    """All four objectives share one encoder; their steps run interleaved round by round."""
    name_m = args.objective_model
    torch.manual_seed(0)
    encoder = create_model(name_m)
    steps, flops = {}, {}
    for name in OBJECTIVES:
        objective = build_objective(objective_cfg(name, name_m), encoder).train()
        img = objective.encoder.patch_embed.img_size[0]
        steps[name] = objective_step(
            objective, make_batch(objective, args.objective_batch_size, img, encoder.norm.weight.device)
        )
        flops[name] = objective.flops_per_image()
    times = time_steps(steps, args.warmup, args.iters, torch.device("cpu"))
    rows = []
    for name in OBJECTIVES:
        rows.append(
            [
                name,
                f"{flops[name] / 1e9:.3g}",
                f"{flops[name] / flops['supervised']:.2f}",
                f"{statistics.median(times[name]):.3f}",
                f"{paired_ratio(times[name], times['supervised']):.2f}",
            ]
        )
    title = f"Objective step cost, one {name_m} encoder, CPU, batch {args.objective_batch_size}, "
    title += "median s/step; ratios vs supervised (time: median of per-round ratios)"
    print_table(title, ["objective", "fwd GFLOPs/img", "FLOPs ratio", "s/step", "time ratio"], rows)


def bf16_peak(device: torch.device, n: int = 8192, iters: int = 50) -> float:
    """Measured bf16 matmul throughput in FLOP/s (n x n x n)."""
    a = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    for _ in range(5):
        a @ b
    sync(device)
    start = time.perf_counter()
    for _ in range(iters):
        a @ b
    sync(device)
    return 2 * n**3 * iters / (time.perf_counter() - start)


def throughput(args: argparse.Namespace, device: torch.device) -> None:
    name_m = args.throughput_model
    peak = bf16_peak(device, n=args.peak_size)
    rows = []
    for compiled in (False, True):
        torch.manual_seed(0)
        objective = build_objective(objective_cfg("mae", name_m), create_model(name_m)).to(device).train()
        img = objective.encoder.patch_embed.img_size[0]
        batch = make_batch(objective, args.gpu_batch_size, img, device)
        step = objective_step(objective, batch, amp=True, compile=compiled)
        t = statistics.median(
            time_steps({"mae": step}, args.warmup + (3 if compiled else 0), args.iters, device)["mae"]
        )
        train_flops = 3 * objective.flops_per_image() * args.gpu_batch_size
        rows.append(
            [
                f"MAE {name_m}",
                "compile" if compiled else "eager",
                f"{args.gpu_batch_size / t:.1f}",
                f"{train_flops / t / 1e12:.3g}",
                f"{100 * train_flops / t / peak:.1f}%",
            ]
        )
        del objective, step
    title = f"MAE bf16 throughput on {device} ({torch.cuda.get_device_name(device) if device.type == 'cuda' else 'cpu'}), "
    title += f"batch {args.gpu_batch_size}, measured bf16 matmul peak {peak / 1e12:.3g} TFLOP/s"
    print_table(title, ["run", "mode", "img/s", "TFLOP/s", "MFU"], rows)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--batch-size", type=int, default=8, help="CPU batch size against torchvision")
    parser.add_argument("--objective-batch-size", type=int, default=4, help="CPU batch size per objective")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--iters", type=int, default=3)
    parser.add_argument("--objective-model", default="vit_base_patch16")
    parser.add_argument("--skip-torchvision", action="store_true")
    parser.add_argument("--skip-objectives", action="store_true")
    parser.add_argument("--gpu-batch-size", type=int, default=256)
    parser.add_argument("--throughput-model", default="vit_base_patch16")
    parser.add_argument(
        "--throughput-device", default=None, help="default: cuda when available, else skipped"
    )
    parser.add_argument(
        "--peak-size", type=int, default=8192, help="side of the bf16 matmul that measures peak"
    )
    args = parser.parse_args()
    print(
        f"torch {torch.__version__}, torchvision {torchvision.__version__}, {torch.get_num_threads()} CPU threads"
    )
    if not args.skip_torchvision:
        versus_torchvision(args)
    if not args.skip_objectives:
        objective_costs(args)
    device = args.throughput_device or ("cuda" if torch.cuda.is_available() else None)
    if device is not None:
        throughput(args, torch.device(device))
    else:
        print("\nno GPU: bf16 MAE throughput / MFU skipped")


if __name__ == "__main__":
    main()
