"""Fault injection: killed, corrupted and poisoned runs resume to the model of an uninterrupted run.

    nice -n 10 python benchmarks/faults.py                 # 20 kills, ~20 minutes on 2 busy cores
    python benchmarks/faults.py --kills 40 --steps 60 --seed 1

The default run (sslvit/configs/default.yaml: MAE, vit_nano_patch4, built-in digits, batch 64) is
cut to ``--steps`` steps with a checkpoint every ``--ckpt-every`` steps (the newest 2 kept). First
one uninterrupted reference run; then chains of launches of one run each, every launch but the
first with ``train.resume=latest``, until ``--kills`` launches were SIGKILLed:

* kill_step: SIGKILL right after a random step;
* kill_save: SIGKILL while a checkpoint is written (after accelerate's files, while their digests
  are taken or the files flushed, before the directory gets its final name);
* kill_prune: SIGKILL while an old checkpoint is deleted (one of its files already gone);
* kill_time: SIGKILL from outside after a random delay (start-up, a step, a write: anywhere).

After a kill, now and then the newest checkpoint is corrupted (model.safetensors or optimizer.bin
truncated, a garbage RNG file, a string step in trainer_state.json): the resume must fall back to
the previous checkpoint and say so. Then fixed cases: a NaN loss and a NaN-producing update at a
random step (the run stops naming a checkpoint with finite weights; resuming it finishes), a
resume with another ``data.num_workers``, a corrupt checkpoint named as ``train.resume`` (refused),
SIGTERM after a random step and while a checkpoint is written (exit 75 with that step's checkpoint),
and a disk that fills while a checkpoint is written (with ``train.keep_last=2`` the oldest goes first
and the run goes on; with 0 it stops, exit 74, in one line, nothing partial left).
Every chain's final model.safetensors and objective.safetensors must equal the reference's bit for bit.

The faults are injected by a driver script that wraps ``sslvit.training`` functions in the child
process (``FAULT=kind:step[:n]``); nothing in the library reads it. The exit status is 1 when any
check fails.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from sslvit.errors import EXIT_PREEMPTED, EXIT_STORAGE  # noqa: E402
from sslvit.training.checkpoints import STATE_FILE, list_checkpoints  # noqa: E402

DEFAULT_CONFIG = ROOT / "sslvit" / "configs" / "default.yaml"

DRIVER = r"""
import errno, os, shutil, signal, sys
from pathlib import Path
import torch
import accelerate
from sslvit.errors import EXIT_PREEMPTED, EXIT_STORAGE, Preempted, StorageError
import sslvit.training.checkpoints as TS
import sslvit.training.loop as loop
import sslvit.training.run as T
from sslvit.training import config

kind, _, rest = os.environ.get("FAULT", "").partition(":")
args = [int(a) for a in rest.split(":") if a]
at = args[0] if args else 0
cfg = config.load(sys.argv[1], sys.argv[2:])
now = {"saving": None, "done": 0}

def die():
    os.kill(os.getpid(), signal.SIGKILL)

real_save = TS.save_training_state
def save(accelerator, run_dir, state, keep_last, record=None):
    now["saving"] = state.step
    if kind == "term_save" and state.step == at:
        os.kill(os.getpid(), signal.SIGTERM)  # arrives while this checkpoint is written
    try:
        return real_save(accelerator, run_dir, state, keep_last, record)
    finally:
        now["saving"] = None
T.save_training_state = save

if kind == "kill_save":
    calls, real_sha, real_fsync = [0], TS.sha256_file, TS._fsync
    def counted(fn):
        def wrapped(*a, **k):
            if now["saving"] == at:
                calls[0] += 1
                if calls[0] >= args[1]:
                    die()
            return fn(*a, **k)
        return wrapped
    TS.sha256_file, TS._fsync = counted(real_sha), counted(real_fsync)

if kind == "kill_prune":
    real_rmtree = shutil.rmtree
    def rmtree(path, *a, **k):
        p = Path(path)
        if now["saving"] == at and p.name.startswith(".del-"):
            files = sorted(x for x in p.rglob("*") if x.is_file())
            if files:
                files[len(files) // 2].unlink()
            die()
        return real_rmtree(path, *a, **k)
    shutil.rmtree = rmtree

if kind == "nan_loss":
    real_build = T.build_objective
    def build(*a, **k):
        objective = real_build(*a, **k)
        forward = objective.forward
        def poisoned(batch):
            loss, metrics = forward(batch)
            if now["done"] == at - 1:
                loss = loss * float("nan")
            return loss, metrics
        objective.forward = poisoned
        return objective
    T.build_objective = build

if kind == "nan_update":
    real_opt = T.build_optimizer
    def build_optimizer(*a, **k):
        optimizer = real_opt(*a, **k)
        step = optimizer.step
        def poisoned(*sa, **sk):
            out = step(*sa, **sk)
            if now["done"] == at - 1:
                with torch.no_grad():
                    optimizer.param_groups[0]["params"][0].fill_(float("nan"))
            return out
        optimizer.step = poisoned
        return optimizer
    T.build_optimizer = build_optimizer

if kind == "full_save":
    real_state = accelerate.Accelerator.save_state
    def full_state(self, output_dir=None, **k):
        if now["saving"] == at and not now.get("full"):
            now["full"] = True
            Path(output_dir).mkdir(parents=True, exist_ok=True)
            (Path(output_dir) / "model.safetensors").write_bytes(b"x" * 4096)
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_state(self, output_dir, **k)
    accelerate.Accelerator.save_state = full_state

def on_step_end(step):
    now["done"] = step
    if kind == "kill_step" and step == at:
        die()
    if kind == "term_step" and step == at:
        os.kill(os.getpid(), signal.SIGTERM)

try:
    loop.train(cfg, on_step_end=on_step_end)
except Preempted as stopped:
    print(stopped, flush=True)
    sys.exit(EXIT_PREEMPTED)
except StorageError as full:
    print(f"error: {full}", flush=True)
    sys.exit(EXIT_STORAGE)
"""

CORRUPTIONS = ("truncate model.safetensors", "truncate optimizer.bin", "garbage random_states_0.pkl",
               "string step in trainer_state.json")


class Bench:
    def __init__(self, args: argparse.Namespace, work: Path, shards: str) -> None:
        self.args, self.work, self.shards = args, work, shards
        self.rng = random.Random(args.seed)
        self.rows: list[list[str]] = []
        self.chains: list[list[str]] = []
        self.failures: list[str] = []
        self.driver = work / "driver.py"
        self.driver.write_text(DRIVER)
        self.reference: dict[str, dict[str, torch.Tensor]] = {}
        self.duration = 30.0

    def overrides(self, name: str, *extra: str) -> list[str]:
        a = self.args
        return [f"data.train_shards={self.shards}", f"train.steps={a.steps}", f"train.ckpt_every={a.ckpt_every}",
                "train.keep_last=2", "train.log_every=5", "train.progress=false", "train.trackers=[]",
                f"train.out_dir={self.work / 'runs'}", f"train.name={name}", *extra]

    def launch(self, name: str, fault: str = "", extra: tuple[str, ...] = (), delay: float | None = None):
        env = {k: v for k, v in os.environ.items() if not k.startswith(("ACCELERATE_", "RANK", "WORLD_SIZE"))}
        env.update(PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1", FAULT="" if delay is not None else fault)
        cmd = [sys.executable, str(self.driver), str(DEFAULT_CONFIG), *self.overrides(name, *extra)]
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, cwd=self.work, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        try:
            out, _ = proc.communicate(timeout=delay) if delay is not None else proc.communicate(timeout=900)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGKILL)
            out, _ = proc.communicate()
        return proc.returncode, out, time.perf_counter() - start

    def final(self, name: str) -> dict[str, dict[str, torch.Tensor]]:
        run = self.work / "runs" / name
        return {f: load_file(str(run / f)) for f in ("model.safetensors", "objective.safetensors")}

    def equal_to_reference(self, name: str) -> bool:
        if not (self.work / "runs" / name / "objective.safetensors").is_file():
            return False
        got = self.final(name)
        return all(
            got[f].keys() == ref.keys() and all(torch.equal(got[f][k], ref[k]) for k in ref)
            for f, ref in self.reference.items()
        )

    def row(self, chain: str, fault: str, code: int, out: str, seconds: float, outcome: str, ok: bool) -> None:
        resumed = next((line.split(" at step ")[-1] for line in out.splitlines() if line.startswith("resumed from")), "-")
        self.rows.append([chain, fault or "-", str(code), resumed, outcome, f"{seconds:.0f}", "ok" if ok else "FAIL"])
        if not ok:
            self.failures.append(f"{chain} {fault}: {outcome}\n{out[-2000:]}")

    # ------------------------------------------------------------------ faults
    def random_kill(self, name: str) -> str:
        a = self.args
        run = self.work / "runs" / name
        done = max([int(p.name.split("_")[1]) for p in list_checkpoints(run)] or [0])
        later = [s for s in range(done + 1, a.steps) if s % a.ckpt_every == 0]
        kinds = ["kill_step", "kill_step", "kill_time"] + (["kill_save", "kill_prune"] if later else [])
        kind = self.rng.choice(kinds)
        if kind == "kill_step":
            return f"kill_step:{self.rng.randrange(done + 1, a.steps)}"
        if kind == "kill_save":
            return f"kill_save:{self.rng.choice(later)}:{self.rng.randint(1, 6)}"
        if kind == "kill_prune":
            prunable = [s for s in later if s >= 3 * a.ckpt_every]
            return f"kill_prune:{self.rng.choice(prunable)}" if prunable else f"kill_step:{self.rng.choice(later)}"
        return f"kill_time:{self.rng.uniform(3.0, self.duration):.1f}"

    def corrupt(self, name: str) -> str | None:
        found = list_checkpoints(self.work / "runs" / name)
        if len(found) < 2:
            return None
        newest, how = found[-1], self.rng.choice(CORRUPTIONS)
        if how.startswith("truncate"):
            f = newest / how.split()[1]
            f.write_bytes(f.read_bytes()[: f.stat().st_size // 3])
        elif how.startswith("garbage"):
            (newest / "random_states_0.pkl").write_bytes(os.urandom(200))
        else:
            state = json.loads((newest / STATE_FILE).read_text())
            state["step"] = str(state["step"])
            (newest / STATE_FILE).write_text(json.dumps(state))
        return f"{how} of {newest.name}"

    # ------------------------------------------------------------------ chains
    def resume_until_done(self, chain: str, kills_left: int, extra: tuple[str, ...] = ()) -> tuple[int, int]:
        """Resume ``chain`` (killing some launches) until it finishes: (kills, corruptions)."""
        kills = corruptions = 0
        pending: str | None = None
        while True:
            kill = kills < kills_left
            fault = self.random_kill(chain) if kill else ""
            if pending is not None and fault.startswith("kill_time"):
                fault = f"kill_step:{self.args.steps - 1}"  # the resume must get as far as saying what it skipped
            delay = float(fault.split(":")[1]) if fault.startswith("kill_time") else None
            has_ckpt = bool(list_checkpoints(self.work / "runs" / chain))
            resume = ("train.resume=latest",) if has_ckpt else ("train.overwrite=true",)
            code, out, secs = self.launch(chain, fault, (*resume, *extra), delay)
            if pending is not None:
                fell_back = "trying the previous checkpoint" in out
                self.row(chain, f"resume after {pending}", code, out, secs,
                         "fell back to the previous checkpoint" if fell_back else "corruption not noticed",
                         fell_back)
                pending = None
            if code == 0:
                ok = self.equal_to_reference(chain)
                self.row(chain, fault, code, out, secs, "finished, bitwise equal" if ok else "finished, DIFFERS", ok)
                return kills, corruptions
            if code == -signal.SIGKILL:
                kills += 1
                self.row(chain, fault, code, out, secs, "killed", True)
                if self.rng.random() < self.args.corrupt_p:
                    pending = self.corrupt(chain)
                    corruptions += pending is not None
                continue
            self.row(chain, fault, code, out, secs, "exited with an error", False)
            return kills, corruptions

    def run(self) -> int:
        a = self.args
        code, out, secs = self.launch("reference")
        self.duration = secs
        if code != 0:
            print(out[-3000:])
            return 1
        self.reference = self.final("reference")
        self.rows.append(["reference", "-", "0", "-", "uninterrupted", f"{secs:.0f}", "ok"])
        kills, n = 0, 0
        while kills < a.kills:
            chain = f"chain{n:02d}"
            k, c = self.resume_until_done(chain, min(a.kills - kills, self.rng.randint(2, 5)))
            kills += k
            self.chains.append([chain, str(k), str(c), "yes" if self.equal_to_reference(chain) else "NO"])
            n += 1
        for kind in ("nan_loss", "nan_update"):
            self.poisoned(kind)
        self.other_workers()
        self.named_corrupt()
        for kind in ("term_step", "term_save"):
            self.preempted(kind)
        for keep in (2, 0):
            self.disk_full(keep)
        return self.report()

    def preempted(self, kind: str) -> None:
        """SIGTERM after a step, or while a checkpoint is written: exit 75 with that step's
        checkpoint, and the resumed chain ends bitwise equal to the reference."""
        a = self.args
        saves = list(range(a.ckpt_every, a.steps, a.ckpt_every))
        at = self.rng.choice(saves) if kind == "term_save" else self.rng.randrange(1, a.steps)
        chain = kind.replace("_", "-")
        code, out, secs = self.launch(chain, f"{kind}:{at}")
        names = [p.name for p in list_checkpoints(self.work / "runs" / chain)]
        ok = code == EXIT_PREEMPTED and f"stopped on SIGTERM after step {at} of" in out and f"step_{at:07d}" in names
        self.row(chain, f"{kind}:{at}", code, out, secs, f"stopped with step_{at:07d}" if ok else "not stopped cleanly", ok)
        k, c = self.resume_until_done(chain, 0)
        self.chains.append([chain, str(k), str(c), "yes" if self.equal_to_reference(chain) else "NO"])

    def disk_full(self, keep_last: int) -> None:
        """The disk fills while a checkpoint is written: with train.keep_last=2 the oldest goes first
        and the run goes on; with 0 it stops (exit 74) naming the last good checkpoint, nothing partial
        left; either way the chain ends bitwise equal to the reference."""
        a = self.args
        at = self.rng.choice(list(range(3 * a.ckpt_every, a.steps, a.ckpt_every)))
        chain = f"disk-full-keep{keep_last}"
        code, out, secs = self.launch(chain, f"full_save:{at}", (f"train.keep_last={keep_last}",))
        left = list((self.work / "runs" / chain / "checkpoints").glob(".tmp-*"))
        if keep_last:
            ok = code == 0 and "first (train.keep_last=2) and writing it again" in out and not left
            outcome = "pruned first, went on" if ok else "did not make room"
        else:
            ok = code == EXIT_STORAGE and f"no space left to write the checkpoint of step {at}" in out \
                and "the last good checkpoint is" in out and not left
            outcome = "stopped in one line, nothing partial" if ok else "not stopped cleanly"
        self.row(chain, f"full_save:{at}", code, out, secs, outcome, ok)
        if code != 0:
            k, c = self.resume_until_done(chain, 0, (f"train.keep_last={keep_last}",))
        self.chains.append([chain, "0", "0", "yes" if self.equal_to_reference(chain) else "NO"])

    def poisoned(self, kind: str) -> None:
        a = self.args
        at = self.rng.randrange(a.ckpt_every + 1, a.steps)
        if kind == "nan_update":
            at = self.rng.choice([s for s in range(2 * a.ckpt_every, a.steps, a.ckpt_every)])
        chain = kind.replace("_", "-")
        code, out, secs = self.launch(chain, f"{kind}:{at}")
        last = next((line for line in reversed(out.splitlines())
                     if line.split(":")[0].endswith("NonFiniteLossError")), "")
        ckpts = list_checkpoints(self.work / "runs" / chain)
        finite = all(all(torch.isfinite(v).all() for v in load_file(str(p / "model.safetensors")).values())
                     for p in ckpts)
        named = bool(ckpts) and f"the last good checkpoint is {ckpts[-1]}" in last
        ok = code == 1 and finite and named
        self.row(chain, f"{kind}:{at}", code, out, secs,
                 f"stopped naming {ckpts[-1].name if ckpts else 'none'}; every checkpoint finite: {finite}", ok)
        k, c = self.resume_until_done(chain, 0)
        self.chains.append([chain, str(k), str(c), "yes" if self.equal_to_reference(chain) else "NO"])

    def other_workers(self) -> None:
        a = self.args
        chain = "workers"
        at = self.rng.randrange(a.ckpt_every + 1, a.steps)
        code, out, secs = self.launch(chain, f"kill_step:{at}")
        self.row(chain, f"kill_step:{at}", code, out, secs, "killed", code == -signal.SIGKILL)
        k, c = self.resume_until_done(chain, 0, ("data.num_workers=2",))
        self.chains.append([chain + " (1 -> 2 loader workers)", str(k + 1), str(c),
                            "yes" if self.equal_to_reference(chain) else "NO"])

    def named_corrupt(self) -> None:
        chain = "named"
        code, out, secs = self.launch(chain, f"kill_step:{self.args.steps - 1}")
        newest = list_checkpoints(self.work / "runs" / chain)[-1]
        f = newest / "optimizer.bin"
        f.write_bytes(f.read_bytes()[:100])
        code, out, secs = self.launch(chain, "", (f"train.resume={newest}",))
        ok = code != 0 and f"{f} is not the file that was written" in out
        self.row(chain, f"train.resume={newest.name} (optimizer.bin truncated)", code, out, secs,
                 "refused naming the file" if ok else "NOT refused", ok)

    def report(self) -> int:
        def table(header: list[str], rows: list[list[str]]) -> str:
            widths = [max(len(str(x)) for x in col) for col in zip(header, *rows, strict=False)]
            line = lambda r: "| " + " | ".join(str(x).ljust(w) for x, w in zip(r, widths, strict=True)) + " |"  # noqa: E731
            return "\n".join([line(header), "|" + "|".join("-" * (w + 2) for w in widths) + "|", *map(line, rows)])

        print(table(["run", "fault", "exit", "resumed at", "outcome", "s", "check"], self.rows))
        print()
        print(table(["chain", "kills", "corruptions", "final model bitwise = reference"], self.chains))
        kills = sum(int(c[1]) for c in self.chains)
        print(f"\n{kills} SIGKILLs, {sum(int(c[2]) for c in self.chains)} corrupted checkpoints, "
              f"{len(self.failures)} failed checks")
        for failure in self.failures:
            print("\nFAILED:", failure)
        return 1 if self.failures else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kills", type=int, default=20, help="SIGKILLs in the random chains (default 20)")
    parser.add_argument("--steps", type=int, default=40, help="steps of every run (default 40)")
    parser.add_argument("--ckpt-every", type=int, default=4, help="steps between checkpoints (default 4)")
    parser.add_argument("--corrupt-p", type=float, default=0.3, help="chance a kill is followed by a corruption")
    parser.add_argument("--seed", type=int, default=0, help="seed of the fault schedule (not of the runs)")
    parser.add_argument("--work", type=Path, default=None, help="work directory (default: a temporary one)")
    args = parser.parse_args()
    from sslvit.data import ensure_digits_shards

    with tempfile.TemporaryDirectory(prefix="sslvit-faults-") as tmp:
        work = args.work or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        shards = str(ensure_digits_shards(work / "digits", image_size=32)["train"])
        return Bench(args, work, shards).run()


if __name__ == "__main__":
    raise SystemExit(main())
