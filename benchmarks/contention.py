"""Training speed beside other CPU work: the default run's optimizer steps per second alone and
beside one busy-loop process per core, for torch's default thread choice and for fit_threads.

    python benchmarks/contention.py                 # ~5 minutes on 2 cores (25 s warmup + 60 steps per row)
    python benchmarks/contention.py --steps 10 --warmup-s 2   # a quick look (the tuner has no time to act)

Every row runs in a fresh process (thread pools are fixed per process): the default config
(sslvit/configs/default.yaml: MAE, vit_nano_patch4, batch 64, data.num_workers from the config)
builds its model, objective, optimizer and loader exactly as ``sslvit pretrain`` does, trains for
``--warmup-s`` seconds (workers start, caches warm, the tuner takes its readings), then times
``--steps`` steps. "old" keeps torch's defaults (intra-op and inter-op threads = the cores torch
sees) next to the loader workers; "fit" applies ``sslvit.training.threads.fit_threads`` alone (intra-op +
loader workers fit the usable cores, one inter-op thread: what ``train.threads`` = that count
gives); "tuned" is what ``sslvit pretrain`` does: fit_threads, then ``sslvit.training.threads.ThreadTuner``
after every step (the intra-op count follows what other processes and the loader workers leave
free, re-read every 10 s). The competitors are plain Python busy loops, one per usable core,
started before the row and stopped after it. The table gives steps/s and how many times slower
each choice runs beside the competitors than alone (a fair share of the cores would give about 2x
with as many competitors as cores), and the intra-op count each row ended with.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


CHOICES = ("old", "fit", "tuned")


def _busy(stop) -> None:
    x = 0
    while not stop.is_set():
        for _ in range(100_000):
            x += 1


def child(choice: str, steps: int, warmup_s: float, overrides: list[str]) -> dict[str, float]:
    """One row, in this process: build the default run, time ``steps`` optimizer steps."""
    import torch
    from accelerate import PartialState

    from sslvit.objectives import build_objective
    from sslvit.training import build_encoder
    from sslvit.training import config as config_lib
    from sslvit.training.data import resolve_train_data
    from sslvit.training.optim import build_optimizer
    from sslvit.training.threads import ThreadTuner, apply_threads, fit_threads

    cfg = config_lib.load(str(REPO / "sslvit" / "configs" / "default.yaml"), overrides)
    line = (f"threads: torch default ({torch.get_num_threads()} intra-op, {torch.get_num_interop_threads()} "
            f"inter-op) + {cfg.data.num_workers} loader worker(s)")
    plan = fit_threads(cfg, 1, env={})
    if choice in ("fit", "tuned"):
        line = apply_threads(plan).split("; ")[0]
    data = resolve_train_data(cfg, PartialState())
    torch.manual_seed(0)
    encoder = build_encoder(cfg)
    objective = build_objective(cfg.objective, encoder, data.mean, data.std)
    loader = data.make_loader(masker=getattr(objective, "masker", None))
    optimizer = build_optimizer(objective, cfg.optim.name, cfg.optim.weight_decay, cfg.optim.betas,
                                cfg.optim.layer_decay)
    tuner = ThreadTuner(plan) if choice == "tuned" else None
    done, start, warm_until = 0, None, time.perf_counter() + warmup_s
    epoch = 0
    while start is None or done < steps:
        for batch in loader.iterate(epoch):
            if start is None and time.perf_counter() >= warm_until:
                start, done = time.perf_counter(), 0
            loss, _ = objective(batch)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if tuner is not None:
                tuner.update()
            done += 1
            if start is not None and done == steps:
                break
        epoch += 1
    elapsed = time.perf_counter() - start
    return {"steps_per_s": steps / elapsed, "seconds": elapsed, "line": line, "intra_op": torch.get_num_threads()}


def run_row(choice: str, competitors: int, args: argparse.Namespace) -> dict:
    stop = mp.Event()
    busy = [mp.Process(target=_busy, args=(stop,), daemon=True) for _ in range(competitors)]
    for p in busy:
        p.start()
    try:
        cmd = [sys.executable, __file__, "--child", choice, "--steps", str(args.steps), "--warmup-s",
               str(args.warmup_s), *[f"--set={o}" for o in args.set]]
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout)
        if out.returncode != 0:
            raise RuntimeError(f"row {choice} beside {competitors} failed:\n{out.stderr[-3000:]}")
        return json.loads(out.stdout.strip().splitlines()[-1])
    finally:
        stop.set()
        for p in busy:
            p.join(timeout=5)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=60, help="timed optimizer steps per row")
    parser.add_argument("--warmup-s", type=float, default=25.0,
                        help="untimed seconds of training first (workers start, the tuner takes two readings)")
    parser.add_argument("--competitors", type=int, default=None, help="busy-loop processes (default: usable cores)")
    parser.add_argument("--set", action="append", default=[], help="config override, e.g. --set data.num_workers=2")
    parser.add_argument("--timeout", type=float, default=900, help="seconds one row may take")
    parser.add_argument("--child", choices=CHOICES, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(child(args.child, args.steps, args.warmup_s, args.set)))
        return {}
    from sslvit.training.threads import usable_cores

    competitors = usable_cores() if args.competitors is None else args.competitors
    print(f"{usable_cores()} usable cores, {competitors} competitors, {args.warmup_s:g} s warmup + {args.steps} "
          "steps per row", flush=True)
    rows = {}
    for choice in CHOICES:
        for n in (0, competitors):
            rows[choice, n] = run_row(choice, n, args)
            print(f"  {choice} beside {n}: {rows[choice, n]['steps_per_s']:.2f} steps/s, "
                  f"{rows[choice, n]['intra_op']} intra-op at the end", flush=True)
    print("\n| thread choice | alone (steps/s) | beside (steps/s) | slower | intra-op at the end (alone / beside) |")
    print("|---|---:|---:|---:|---|")
    result = {}
    for choice in CHOICES:
        alone, busy = rows[choice, 0]["steps_per_s"], rows[choice, competitors]["steps_per_s"]
        result[choice] = {"alone": alone, "beside": busy, "slower": alone / busy}
        print(f"| {choice}: {rows[choice, 0]['line']} | {alone:.2f} | {busy:.2f} | {alone / busy:.2f}x | "
              f"{rows[choice, 0]['intra_op']} / {rows[choice, competitors]['intra_op']} |")
    base = rows["old", 0]["steps_per_s"]
    print(f"\n'beside' = next to {competitors} busy-loop process(es); goal: no worse than 2.5x slower beside them; "
          f"tuned alone runs at {rows['tuned', 0]['steps_per_s'] / base:.2f}x old alone")
    return result


if __name__ == "__main__":
    main()
