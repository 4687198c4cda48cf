"""The FSDP recipe (sslvit/configs/accelerate_fsdp.yaml) launched by accelerate on 2 CPU processes.

accelerate runs FSDP only on GPUs and other accelerators: on CPUs it sets up plain data parallelism
(``MULTI_CPU``) even under an FSDP config, and FSDP1's ``sync_module_states`` refuses the CPU outright.
sslvit turns both into one error. torch's FSDP2 itself shards on CPUs over gloo, so the run is also
launched with accelerate's state set to FSDP where it would have set up ``MULTI_CPU`` (FSDP_ON_CPU
below): the same config then shards every transformer Block over the 2 ranks, writes sharded step
checkpoints, resumes from one bitwise and publishes the full (gathered) encoder. data2vec 2.0's EMA
teacher is sharded the same way: its update runs on each rank's shard and ends where DDP's does.

The launcher keeps the config file and overrides only what a CPU needs: ``--num_processes 2`` (the
config says 8 GPUs) and ``--mixed_precision no`` (the config's bf16 is for GPUs; fp32 keeps the CPU
run quick and exact).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from sslvit import load_checkpoint
from sslvit.training.checkpoints import last_finite_checkpoint, model_tensors
from tests.run_helpers import DEFAULT_CONFIG, ROOT, TINY_MAE

FSDP_CONFIG = ROOT / "sslvit" / "configs" / "accelerate_fsdp.yaml"
# grad_accum 2 and clipping as in the ViT-L / ViT-H recipes (grad_accum 4)
TINY = [*TINY_MAE, "train.trackers=[]", "data.batch_size=16", "data.num_workers=0", "train.steps=6",
        "train.ckpt_every=3", "train.keep_last=0", "train.grad_accum=2", "optim.clip_grad=1.0"]

# data2vec 2.0 with its EMA teacher (a second copy of the encoder's Blocks, sharded like the student's)
DATA2VEC2 = (ROOT / "sslvit" / "configs" / "data2vec2_digits.yaml",
             ["model.name=vit_pico_patch4", "objective.top_k=2", "objective.num_masks=2", "objective.decoder_dim=32",
              "objective.decoder_layers=1", "objective.ema_decay=0.9", "objective.ema_end_decay=0.99",
              "objective.ema_anneal_steps=4", "train.progress=false", "train.trackers=[]", "train.log_every=1",
              "optim.warmup_steps=1", "optim.base_lr=1e-3", "data.batch_size=16", "data.num_workers=0",
              "train.steps=4", "train.ckpt_every=2", "train.keep_last=0", "train.grad_accum=2"])

# accelerate's state as it would be on GPUs (FSDP with the plugin read from the launcher's FSDP_*
# variables) where on a CPU it set up MULTI_CPU; KILL_AT: SIGKILL every rank once that step's
# checkpoint is written.
FSDP_ON_CPU = """
import os, signal, sys
from accelerate.state import AcceleratorState, PartialState
from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin
import sslvit.training.loop as loop
from sslvit.cli import main

real_init = AcceleratorState.__init__

def init(self, *args, **kwargs):
    real_init(self, *args, **kwargs)
    if os.environ.get("ACCELERATE_USE_FSDP") == "true" and self.distributed_type == DistributedType.MULTI_CPU:
        plugin = kwargs.get("fsdp_plugin") or FullyShardedDataParallelPlugin()
        if self._mixed_precision != "no":
            plugin.set_mixed_precision(self._mixed_precision)
        self.fsdp_plugin = plugin
        self.distributed_type = DistributedType.FSDP
        PartialState._shared_state["distributed_type"] = DistributedType.FSDP

real_save = loop.save_checkpoint

def save_then_die(run, state, bar):
    real_save(run, state, bar)
    if state.step == int(os.environ.get("KILL_AT", "0")):
        os.kill(os.getpid(), signal.SIGKILL)

AcceleratorState.__init__ = init
loop.save_checkpoint = save_then_die
sys.exit(main(sys.argv[1:]))
"""


def _env(**extra: str) -> dict:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("ACCELERATE_", "FSDP_", "RANK", "WORLD_SIZE", "LOCAL_RANK"))}
    env.update(PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1", **extra)
    return env


def _launch(workdir: Path, port: int, *overrides: str, fsdp: bool = True, forced: bool = True,
            launcher_flags: tuple[str, ...] = (), recipe: tuple[Path, list[str]] = (DEFAULT_CONFIG, TINY),
            **env: str) -> subprocess.CompletedProcess:
    """``accelerate launch [--config_file accelerate_fsdp.yaml] --num_processes 2 --mixed_precision no``
    of ``sslvit pretrain --config CONFIG OVERRIDES`` for ``recipe`` = (CONFIG, OVERRIDES) (through
    FSDP_ON_CPU when ``forced``; plain DDP on CPUs when not ``fsdp``)."""
    launcher = [sys.executable, "-m", "accelerate.commands.launch"]
    if fsdp:
        launcher += ["--config_file", str(FSDP_CONFIG)]
    else:
        launcher += ["--multi_gpu", "--num_machines", "1", "--dynamo_backend", "no"]
        env = {"ACCELERATE_USE_CPU": "1", **env}
    launcher += ["--num_processes", "2", "--mixed_precision", "no", "--main_process_port", str(port),
                 *launcher_flags]
    if forced:
        script = workdir / "fsdp_on_cpu.py"
        script.write_text(FSDP_ON_CPU)
        program = [str(script), "pretrain"]
    else:
        program = ["-m", "sslvit", "pretrain"]
    config, base = recipe
    cmd = [*launcher, *program, "--config", str(config), *base, *overrides]
    return subprocess.run(cmd, cwd=workdir, env=_env(**env), capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    from sslvit.data import ensure_digits_shards

    root = tmp_path_factory.mktemp("fsdp")
    shards = ensure_digits_shards(root / "digits", image_size=32)["train"]
    (root / "shards").write_text(str(shards))
    return root


def _common(workdir: Path, name: str) -> list[str]:
    return [f"data.train_shards={(workdir / 'shards').read_text()}", f"train.out_dir={workdir / 'runs'}",
            f"train.name={name}"]


def _tensors(path: Path) -> dict[str, torch.Tensor]:
    return load_file(str(path))


def _assert_bitwise(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_fsdp_config_on_cpus_is_one_clear_error(workdir):
    done = _launch(workdir, 29711, *_common(workdir, "refused"), forced=False)
    assert done.returncode != 0
    err = done.stderr
    assert ("sslvit pretrain: error: accelerate launch was given an FSDP config (ACCELERATE_USE_FSDP=true), "
            "but it set up MULTI_CPU on cpu") in err, err[-3000:]
    assert "without FSDP, so the model would not be sharded" in err
    assert "runs FSDP only on GPUs and other accelerators, not on CPUs" in err
    assert "ACCELERATE_USE_CPU=1 accelerate launch --multi_gpu --num_processes 2 -m sslvit pretrain" in err
    assert "[rank0]: Traceback" not in err and "[rank1]: Traceback" not in err
    assert not (workdir / "runs" / "refused" / "model.safetensors").exists()
    assert not (workdir / "runs" / "refused" / "checkpoints").exists()


def test_fsdp1_on_cpus_is_one_clear_error(workdir):
    done = _launch(workdir, 29713, *_common(workdir, "refused1"), forced=False,
                   launcher_flags=("--fsdp_version", "1"))
    assert done.returncode != 0
    err = done.stderr
    assert ("sslvit pretrain: error: accelerate launch was given an FSDP config (ACCELERATE_USE_FSDP=true), "
            "but it refused it on this CPU (FSDP parameter initialization with `sync_module_states=True` is "
            "not supported on cpu.)") in err, err[-3000:]
    assert "[rank0]: Traceback" not in err and "[rank1]: Traceback" not in err


def test_fsdp_run_shards_resumes_bitwise_and_publishes_the_full_encoder(workdir):
    runs = workdir / "runs"
    full = _launch(workdir, 29721, *_common(workdir, "full"))
    assert full.returncode == 0, full.stderr[-3000:]

    killed = _launch(workdir, 29723, *_common(workdir, "killed"), KILL_AT="3")
    assert killed.returncode != 0 and "exitcode  : -9" in killed.stderr, killed.stderr[-3000:]
    assert not (runs / "killed" / "model.safetensors").exists()
    step3 = runs / "killed" / "checkpoints" / "step_0000003"
    files = sorted(p.relative_to(step3).as_posix() for p in step3.rglob("*") if p.is_file())
    # sharded: one part of the weights and of the optimizer state from each rank, no full copy
    for part in ("pytorch_model_fsdp_0", "optimizer_0"):
        assert f"{part}/.metadata" in files and f"{part}/__0_0.distcp" in files and f"{part}/__1_0.distcp" in files
    assert not any(f.endswith(".safetensors") or f == "optimizer.bin" for f in files), files
    recorded = json.loads((step3 / "trainer_state.json").read_text())
    assert sorted(recorded["files"]) == [f for f in files if f != "trainer_state.json"]
    # the sharded weights are read whole where a non-finite loss looks for the last good checkpoint
    found, skipped = last_finite_checkpoint(runs / "killed")
    assert found == step3 and skipped == []
    whole = model_tensors(step3)
    assert whole and all(k.startswith("pytorch_model_fsdp_0/") for k in whole)

    resumed = _launch(workdir, 29725, *_common(workdir, "killed"), "train.resume=latest")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resumed from" in resumed.stdout + resumed.stderr and "at step 3" in resumed.stdout + resumed.stderr
    for name in ("model.safetensors", "objective.safetensors"):
        _assert_bitwise(_tensors(runs / "full" / name), _tensors(runs / "killed" / name))
    summary = json.loads((runs / "killed" / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["steps_per_rank"] == [6, 6]

    # the published encoder is the full model: what the same run writes without FSDP (DDP on CPUs),
    # key for key and shape for shape, with the same values up to the order of the gradient sums
    ddp = _launch(workdir, 29727, *_common(workdir, "ddp"), fsdp=False, forced=False)
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    for name in ("model.safetensors", "objective.safetensors"):
        sharded, plain = _tensors(runs / "full" / name), _tensors(runs / "ddp" / name)
        assert sharded.keys() == plain.keys()
        assert not any("_fsdp" in k or "flat_param" in k for k in sharded)
        for key in plain:
            assert sharded[key].shape == plain[key].shape and sharded[key].dtype == plain[key].dtype, key
            torch.testing.assert_close(sharded[key], plain[key], rtol=1e-4, atol=1e-5, msg=key)
    trained = _tensors(runs / "full" / "model.safetensors")
    model = load_checkpoint(runs / "full" / "model.safetensors")
    for key, value in model.state_dict().items():
        assert torch.equal(value, trained[key]), key
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 32)


def test_the_last_good_checkpoint_reads_sharded_weights(tmp_path):
    import torch.distributed.checkpoint as dcp

    for step, value in ((2, 1.0), (4, float("nan"))):
        folder = tmp_path / "checkpoints" / f"step_{step:07d}" / "pytorch_model_fsdp_0"
        state = {"model": {"blocks.0.w": torch.full((3, 2), value), "blocks.0.b": torch.ones(2)}}
        dcp.save(state, storage_writer=dcp.FileSystemWriter(str(folder)), no_dist=True)
    found, skipped = last_finite_checkpoint(tmp_path)
    assert found == tmp_path / "checkpoints" / "step_0000002"
    assert skipped == ["step_0000004 has non-finite weights in 1 tensors"]
    whole = model_tensors(found)
    assert torch.equal(whole["pytorch_model_fsdp_0/model.blocks.0.w"], torch.ones(3, 2))


def test_fsdp_shards_the_data2vec2_teacher_resumes_it_bitwise_and_updates_it_as_ddp_does(workdir):
    """The EMA update runs on each rank's shard of the teacher: the run resumes bitwise from a sharded
    checkpoint, and the teacher it ends with is the one plain data parallelism computes."""
    runs = workdir / "runs"
    full = _launch(workdir, 29731, *_common(workdir, "d2v_full"), recipe=DATA2VEC2)
    assert full.returncode == 0, full.stderr[-3000:]
    killed = _launch(workdir, 29733, *_common(workdir, "d2v_killed"), recipe=DATA2VEC2, KILL_AT="2")
    assert killed.returncode != 0 and "exitcode  : -9" in killed.stderr, killed.stderr[-3000:]
    step2 = runs / "d2v_killed" / "checkpoints" / "step_0000002"
    sharded = model_tensors(step2)
    teacher = sorted(k for k in sharded if k.startswith("pytorch_model_fsdp_0/model.teacher.blocks."))
    assert teacher, sorted(sharded)[:5]
    assert (step2 / "pytorch_model_fsdp_0" / "__1_0.distcp").is_file()
    resumed = _launch(workdir, 29735, *_common(workdir, "d2v_killed"), "train.resume=latest", recipe=DATA2VEC2)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    for name in ("model.safetensors", "objective.safetensors"):
        _assert_bitwise(_tensors(runs / "d2v_full" / name), _tensors(runs / "d2v_killed" / name))

    ddp = _launch(workdir, 29737, *_common(workdir, "d2v_ddp"), recipe=DATA2VEC2, fsdp=False, forced=False)
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    fsdp_state = _tensors(runs / "d2v_full" / "objective.safetensors")
    ddp_state = _tensors(runs / "d2v_ddp" / "objective.safetensors")
    assert fsdp_state.keys() == ddp_state.keys()
    names = [k for k in ddp_state if k.startswith("teacher.")]
    assert len([k for k in names if "blocks." in k]) == len(teacher)
    for key in ddp_state:
        torch.testing.assert_close(fsdp_state[key], ddp_state[key], rtol=1e-4, atol=1e-5, msg=key)
    # the teacher moved with the student and is not a copy of it
    moved = [k for k in names if "blocks." in k and not torch.equal(
        sharded[f"pytorch_model_fsdp_0/model.{k}"], fsdp_state[k])]
    assert moved, "the teacher did not move after step 2"
    assert any(not torch.equal(fsdp_state[k], fsdp_state["encoder." + k.removeprefix("teacher.")]) for k in names)
