"""The default run beside a plain peer: the same MAE recipe as ``sslvit pretrain`` (default.yaml)
run by transformers' ``ViTMAEForPreTraining`` in a plain loop over the digits held as tensors.

    python benchmarks/peer.py                               # both, one after the other (~8 min, 2 cores)
    python benchmarks/peer.py --steps 300                   # a shorter look
    python benchmarks/peer.py --transformers /tmp/tfpkgs    # transformers installed with pip --target
    python benchmarks/peer.py --rounds 3                    # peer, sslvit, peer, sslvit, ...: median ratio

The recipe: 32 px digits (1,437 training images), patch 4, width 128, depth 6, 4 heads, decoder
1 x 64 (4 heads), mask 0.75, batch 64, 1,725 steps (75 epochs), AdamW (0.9, 0.95), weight decay
0.05 (not on biases and norms), cosine after 3 warmup epochs, peak lr 7.5e-4,
RandomResizedCrop(32, scale 0.5-1). The peer draws each batch from a per-epoch permutation of the
uint8 images in memory and crops them with torchvision; sslvit streams its shards, as the default
run does (loader worker, thread tuner, metrics, TensorBoard, checkpoints every 250 steps).

Each run prints its wall time from the process start and splits its steps into: waiting for
data, forward, backward, optimizer step, and the loop's own work (everything else between the
first and the last step: logging, metric sums, non-finite checks, the thread tuner, checkpoints).
The split is measured by wrapping those calls in the child process; nothing in sslvit reads it.
The peer runs first, then sslvit, each alone on the machine; with ``--rounds N`` the pair runs N
times and the table gives every run, then each round's ratio and their median.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
STAGES = ("data", "forward", "backward", "optimizer")

PEER = r"""
import json, math, sys, time
started = time.perf_counter()
import torch
from torchvision.transforms import v2
from transformers import ViTMAEConfig, ViTMAEForPreTraining
from sslvit.data.digits import digits_arrays

out, steps = sys.argv[1], int(sys.argv[2])
torch.manual_seed(0)
images, _ = digits_arrays(32)["train"]                                   # (N, 32, 32) uint8
data = torch.from_numpy(images)[:, None].expand(-1, 3, -1, -1).contiguous()  # (N, 3, 32, 32) uint8
mean = data.float().div(255).mean().item(); std = data.float().div(255).std().item()
config = ViTMAEConfig(image_size=32, patch_size=4, num_channels=3, hidden_size=128, num_hidden_layers=6,
                      num_attention_heads=4, intermediate_size=512, decoder_hidden_size=64,
                      decoder_num_hidden_layers=1, decoder_num_attention_heads=4, decoder_intermediate_size=256,
                      mask_ratio=0.75, norm_pix_loss=False)
model = ViTMAEForPreTraining(config).train()
decay = [p for n, p in model.named_parameters() if p.ndim > 1]
no_decay = [p for n, p in model.named_parameters() if p.ndim <= 1]
optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": 0.05}, {"params": no_decay, "weight_decay": 0.0}],
                              lr=7.5e-4, betas=(0.9, 0.95))
per_epoch = math.ceil(len(data) / 64)
warmup = 3 * per_epoch
crop = v2.RandomResizedCrop(32, scale=(0.5, 1.0), antialias=True)
order = torch.cat([torch.randperm(len(data)) for _ in range(steps * 64 // len(data) + 2)])
times = dict(data=0.0, forward=0.0, backward=0.0, optimizer=0.0)
first = time.perf_counter()
for step in range(steps):
    lr = 7.5e-4 * (step + 1) / warmup if step < warmup else \
        0.5 * 7.5e-4 * (1 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup)))
    for group in optimizer.param_groups:
        group["lr"] = lr
    t0 = time.perf_counter()
    idx = order[step * 64:(step + 1) * 64]
    batch = torch.stack([crop(data[i]) for i in idx.tolist()]).float().div_(255).sub_(mean).div_(std)
    t1 = time.perf_counter()
    loss = model(pixel_values=batch).loss
    t2 = time.perf_counter()
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    t3 = time.perf_counter()
    optimizer.step()
    t4 = time.perf_counter()
    times["data"] += t1 - t0; times["forward"] += t2 - t1; times["backward"] += t3 - t2; times["optimizer"] += t4 - t3
    if step % 100 == 0:
        print(f"peer step {step} loss {loss.item():.4f}", flush=True)
last = time.perf_counter()
json.dump({"startup": first - started, "loop": last - first, "steps": steps, "threads": torch.get_num_threads(),
           **times}, open(out, "w"))
"""

SSLVIT = r"""
import json, sys, time
started = time.perf_counter()
import accelerate
import sslvit.training.loop as loop
import sslvit.training.run as run
from sslvit.training import config

out = sys.argv[1]
cfg = config.load(sys.argv[2], sys.argv[3:])
times = dict(data=0.0, forward=0.0, backward=0.0, optimizer=0.0)
marks = {}

real_batches = loop.batches
def batches(loader, start):
    stream = real_batches(loader, start)
    while True:
        t = time.perf_counter()
        item = next(stream)
        times["data"] += time.perf_counter() - t
        yield item
loop.batches = batches

real_build = run.build_objective
def build(*a, **k):
    objective = real_build(*a, **k)
    forward = objective.forward
    def timed(batch):
        t = time.perf_counter()
        try:
            return forward(batch)
        finally:
            times["forward"] += time.perf_counter() - t
    objective.forward = timed
    return objective
run.build_objective = build

real_backward = accelerate.Accelerator.backward
def backward(self, loss, **k):
    t = time.perf_counter()
    try:
        return real_backward(self, loss, **k)
    finally:
        times["backward"] += time.perf_counter() - t
accelerate.Accelerator.backward = backward

real_opt = run.build_optimizer
def build_optimizer(*a, **k):
    optimizer = real_opt(*a, **k)
    step = optimizer.step
    def timed(*sa, **sk):
        t = time.perf_counter()
        try:
            return step(*sa, **sk)
        finally:
            times["optimizer"] += time.perf_counter() - t
    optimizer.step = timed
    return optimizer
run.build_optimizer = build_optimizer

def on_step_end(step):
    if "first" not in marks:  # the span from the end of step 1 to the end of the last step
        marks["first"], marks["before"] = time.perf_counter(), dict(times)
    marks["last"] = time.perf_counter()
    marks["steps"] = step

result = loop.train(cfg, on_step_end=on_step_end)
done = time.perf_counter()
spans = {k: v - marks["before"][k] for k, v in times.items()}
json.dump({"startup": marks["first"] - started, "loop": marks["last"] - marks["first"], "finish": done - marks["last"],
           "steps": marks["steps"] - 1, **spans}, open(out, "w"))
"""


def run_child(script: str, args: list[str], env_path: str | None) -> tuple[dict, float]:
    """Run ``script`` in a fresh interpreter; (its timing record, wall seconds from launch)."""
    with tempfile.TemporaryDirectory(prefix="sslvit-peer-") as work:
        path, out = Path(work) / "child.py", Path(work) / "times.json"
        path.write_text(script)
        env = {k: v for k, v in os.environ.items() if not k.startswith(("ACCELERATE_", "RANK", "WORLD_SIZE"))}
        env["PYTHONPATH"] = os.pathsep.join(p for p in (env_path, str(ROOT)) if p)
        start = time.perf_counter()
        done = subprocess.run([sys.executable, str(path), str(out), *args], cwd=work, env=env, text=True,
                              capture_output=True)
        wall = time.perf_counter() - start
        if done.returncode != 0:
            raise SystemExit(f"{args[:1]} failed ({done.returncode}):\n{done.stderr[-3000:]}")
        return json.loads(out.read_text()), wall


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=1725, help="optimizer steps of both runs (default: the recipe's)")
    parser.add_argument("--transformers", default=None, help="a folder to put first on the peer's path")
    parser.add_argument("--only", choices=("peer", "sslvit"), default=None, help="run one side only")
    parser.add_argument("--rounds", type=int, default=1, help="pairs of runs, alternating (default: %(default)s)")
    parser.add_argument("overrides", nargs="*", help="section.key=value overrides of the sslvit run")
    args = parser.parse_args(argv)
    rounds: list[dict[str, tuple[dict, float]]] = []
    for _ in range(args.rounds):
        rows = {}
        if args.only != "sslvit":
            rows["transformers ViTMAE, plain loop"] = run_child(PEER, [str(args.steps)], args.transformers)
        if args.only != "peer":
            with tempfile.TemporaryDirectory(prefix="sslvit-peer-runs-") as runs:
                overrides = [f"train.steps={args.steps}", f"train.out_dir={runs}", "train.name=peer-bench",
                             "train.progress=false", *args.overrides]
                name = " ".join(["sslvit pretrain (default.yaml)", *args.overrides])
                rows[name] = run_child(
                    SSLVIT, [str(ROOT / "sslvit" / "configs" / "default.yaml"), *overrides], None)
        rounds.append(rows)
    print("| round | run | wall s | start-up s | steps | data s | forward s | backward s | optimizer s | "
          "loop's own s | wall / peer |")
    print("|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    ratios = []
    for i, rows in enumerate(rounds, 1):
        base = next(iter(rows.values()))[1]
        for name, (t, wall) in rows.items():
            own = t["loop"] - sum(t[s] for s in STAGES)
            print(f"| {i} | {name} | {wall:.0f} | {t['startup']:.1f} | {t['steps']} | "
                  + " | ".join(f"{t[s]:.1f}" for s in STAGES) + f" | {own:.1f} | {wall / base:.2f}x |")
        ratios.append(list(rows.values())[-1][1] / base)
    if len(rounds) > 1 and args.only is None:
        print(f"\nwall / peer by round: {', '.join(f'{r:.2f}x' for r in ratios)}; median "
              f"{statistics.median(ratios):.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
