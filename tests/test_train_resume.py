"""Resuming: which checkpoint is taken, what is verified, what may change, and non-finite weights."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from sslvit.training import config as config_lib
from sslvit.training.checkpoints import (
    STATE_FILE,
    ResumeError,
    RunRecord,
    list_checkpoints,
    validate_checkpoint,
)
from sslvit.training.resume import config_changes, find_resume_point, restore_rng
from tests.run_helpers import DEFAULT_CONFIG, TINY_MAE, poison_loss

TINY = [*TINY_MAE, "data.batch_size=64", "data.num_workers=0", "train.trackers=[]"]


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> str:
    from sslvit.data import ensure_digits_shards

    return str(ensure_digits_shards(tmp_path_factory.mktemp("digits") / "digits", image_size=32)["train"])


def _cfg(shards: str, out: Path, *overrides: str):
    return config_lib.load(
        DEFAULT_CONFIG, [*TINY, f"data.train_shards={shards}", f"train.out_dir={out}", "train.steps=4", *overrides]
    )


@pytest.fixture(scope="module")
def base(shards, tmp_path_factory) -> Path:
    """A finished 4-step run with a checkpoint after steps 1, 2 and 3: its run directory."""
    from sslvit.training import train

    out = tmp_path_factory.mktemp("runs")
    train(_cfg(shards, out, "train.name=base", "train.ckpt_every=1", "train.keep_last=0"))
    run = out / "base"
    assert [p.name for p in list_checkpoints(run)] == ["step_0000001", "step_0000002", "step_0000003"]
    return run


def _copy_run(base: Path, out: Path, name: str) -> Path:
    run = out / name
    shutil.copytree(base, run)
    for leftover in ("model.safetensors", "objective.safetensors", "summary.json"):
        (run / leftover).unlink()
    return run


def _wanted(shards: str, out: Path, *overrides: str, world_size: int = 1) -> RunRecord:
    from sslvit.training.launch import resolve_launch_options
    from sslvit.training.resume import run_record as _run_record
    from sslvit.training.resume import shard_set_of as _shard_set

    cfg = _cfg(shards, out, *overrides)
    return _run_record(cfg, world_size, resolve_launch_options(cfg).grad_accum, _shard_set(shards))


def test_latest_with_a_name_looks_only_in_that_run(base, shards, tmp_path):
    _copy_run(base, tmp_path, "other")
    (tmp_path / "mine").mkdir()
    wanted = _wanted(shards, tmp_path, "train.name=mine")
    with pytest.raises(ResumeError, match=r"mine .*no complete checkpoint.*with checkpoints: other"):
        find_resume_point("latest", tmp_path, "mine", wanted)
    found = find_resume_point("latest", tmp_path, "other", _wanted(shards, tmp_path, "train.name=other"))
    assert found.path == tmp_path / "other" / "checkpoints" / "step_0000003"
    assert found.state.step == 3 and found.state.micro_batch == 3


def test_latest_with_a_name_refuses_end_to_end(base, shards, tmp_path, monkeypatch):
    from sslvit.training import train

    _copy_run(base, tmp_path, "other")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ResumeError, match="mine"):
        train(_cfg(shards, tmp_path, "train.name=mine", "train.resume=latest"))
    assert not (tmp_path / "mine" / "model.safetensors").exists()


def _edit_state(path: Path, **changes) -> None:
    state = json.loads((path / STATE_FILE).read_text())
    for key, value in changes.items():
        if isinstance(value, dict):
            for section, values in value.items():
                state[key][section].update(values)
        else:
            state[key] = value
    (path / STATE_FILE).write_text(json.dumps(state))


def test_latest_without_a_name_takes_the_newest_run_that_fits(base, shards, tmp_path):
    import os
    import time

    fits = _copy_run(base, tmp_path, "fits")
    other = _copy_run(base, tmp_path, "other")
    for ckpt in list_checkpoints(other):
        _edit_state(ckpt, config={"objective": {"mask_ratio": 0.5}})
        later = time.time() + 60
        os.utime(ckpt / STATE_FILE, (later, later))
    wanted = _wanted(shards, tmp_path)
    found = find_resume_point("latest", tmp_path, "", wanted)
    assert found.path == fits / "checkpoints" / "step_0000003"
    assert "resuming run fits" in found.notes[-1] and "other: objective.mask_ratio: 0.5 -> 0.75" in found.notes[-1]
    with pytest.raises(ResumeError, match=r"no run under .* fits this config:\n  fits: objective.mask_ratio"):
        find_resume_point("latest", tmp_path, "", _wanted(shards, tmp_path, "objective.mask_ratio=0.6"))


def test_changes_that_cannot_be_exact_are_refused_before_any_work(base, shards, tmp_path, monkeypatch):
    from sslvit.training import train

    run = _copy_run(base, tmp_path, "base")
    config_before = (run / "config.yaml").read_bytes()
    monkeypatch.chdir(tmp_path)
    cfg = _cfg(shards, tmp_path, "train.name=base", "train.resume=latest", "data.batch_size=32", "train.seed=3")
    with pytest.raises(ResumeError) as err:
        train(cfg)
    message = str(err.value)
    assert "data.batch_size: 64 -> 32" in message
    assert "global micro-batch (data.batch_size x processes): 64 x 1 = 64 -> 32 x 1 = 32 (global batch 64 -> 32)" in message
    assert "train.seed: 0 -> 3" in message
    assert (run / "config.yaml").read_bytes() == config_before
    assert not (run / "model.safetensors").exists()


def test_elastic_layout_is_allowed_when_the_global_batch_is_kept(shards, tmp_path):
    saved = _wanted(shards, tmp_path, "data.num_workers=2")
    refused, allowed = config_changes(saved, _wanted(shards, tmp_path, "data.batch_size=32", world_size=2))
    assert refused == []
    assert "processes: 1 -> 2" in allowed and "data.num_workers: 2 -> 0" in allowed
    refused, _ = config_changes(saved, _wanted(shards, tmp_path, world_size=2))
    assert refused == [
        "global micro-batch (data.batch_size x processes): 64 x 1 = 64 -> 64 x 2 = 128 (global batch 64 -> 128)"
    ]
    refused, _ = config_changes(saved, _wanted(shards, tmp_path, "data.num_workers=2", "train.grad_accum=2"))
    assert refused == ["train.grad_accum: 1 -> 2"]
    other = RunRecord(saved.config, 1, [["shard-000000.tar", 10]])
    refused, _ = config_changes(other, saved)
    assert len(refused) == 1 and refused[0].startswith("shard set (data.train_shards): without ['shard-000000.tar']")


def test_an_allowed_change_keeps_config_yaml_and_writes_the_resume_config(base, shards, tmp_path, monkeypatch):
    from sslvit.training import train

    run = _copy_run(base, tmp_path, "base")
    for ckpt in list_checkpoints(run)[1:]:
        shutil.rmtree(ckpt)
    config_before = (run / "config.yaml").read_bytes()
    monkeypatch.chdir(tmp_path)
    train(_cfg(shards, tmp_path, "train.name=base", "train.resume=latest", "train.log_every=2",
               "train.ckpt_every=1", "train.keep_last=0"))
    assert (run / "config.yaml").read_bytes() == config_before
    resumed = config_lib.load(run / "config.resume-0000001.yaml")
    assert resumed.train.log_every == 2 and config_lib.load(run / "config.yaml").train.log_every == 1
    events = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    resume = [e for e in events if e.get("event") == "resume"]
    assert resume == [
        {
            "event": "resume",
            "step": 1,
            "from": str(run / "checkpoints" / "step_0000001"),
            "config": "config.resume-0000001.yaml",
            "changed": ["train.log_every: 1 -> 2", f"train.out_dir: '{base.parent}' -> '{tmp_path}'"],
        }
    ]
    # the copied run had logged steps 2..4 after checkpoint 1; each step is logged once after the resume
    logged = [e["step"] for e in events if "event" not in e and "loss" in e]
    assert logged == [1, 2, 4]
    a, b = load_file(str(base / "model.safetensors")), load_file(str(run / "model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


CORRUPTIONS = {
    "model.safetensors truncated": (lambda c: _truncate(c / "model.safetensors"), r"model.safetensors is not the file that was written"),
    "optimizer.bin truncated": (lambda c: _truncate(c / "optimizer.bin"), r"optimizer.bin is not the file that was written"),
    "rng garbage": (lambda c: (c / "random_states_0.pkl").write_bytes(b"garbage"), r"random_states_0.pkl is not the file"),
    "rng missing": (lambda c: (c / "random_states_0.pkl").unlink(), r"lacks the RNG state of rank 0"),
    "step a string": (lambda c: _edit_state(c, step="15"), r"trainer_state.json: step is '15', not an integer >= 0"),
    "step beyond train.steps": (lambda c: _edit_state(c, step=999999, micro_batch=999999), r"step 999999 is beyond this run's 4 steps"),
    "micro_batch negative": (lambda c: _edit_state(c, micro_batch=-7), r"micro_batch is -7, not an integer >= 0"),
    "micro_batch inconsistent": (lambda c: _edit_state(c, micro_batch=5), r"micro_batch 5 does not match step 3 x grad_accum 1 = 3"),
    "state not json": (lambda c: (c / STATE_FILE).write_text("{"), r"trainer_state.json is unreadable"),
    "extra file": (lambda c: (c / "scheduler.bin").write_bytes(b"x"), r"holds files written after it was complete: \['scheduler.bin'\]"),
}


@pytest.mark.parametrize("name", sorted(CORRUPTIONS))
def test_every_checkpoint_file_is_verified_and_latest_falls_back(name, base, shards, tmp_path):
    corrupt, expected = CORRUPTIONS[name]
    run = _copy_run(base, tmp_path, "base")
    newest = list_checkpoints(run)[-1]
    corrupt(newest)
    with pytest.raises(ResumeError, match=expected):
        validate_checkpoint(newest, total_steps=4)
    found = find_resume_point("latest", tmp_path, "base", _wanted(shards, tmp_path, "train.name=base"), 4)
    assert found.path.name == "step_0000002"
    assert len(found.notes) == 1 and str(newest) in found.notes[0] and "trying the previous checkpoint" in found.notes[0]


def test_checkpoints_without_digests_are_opened_file_by_file(base, tmp_path):
    run = _copy_run(base, tmp_path, "base")
    ckpt = list_checkpoints(run)[-1]
    state = json.loads((ckpt / STATE_FILE).read_text())
    del state["files"]
    (ckpt / STATE_FILE).write_text(json.dumps(state))
    assert validate_checkpoint(ckpt, 4).state.step == 3
    (ckpt / "random_states_0.pkl").write_bytes(b"garbage")
    with pytest.raises(ResumeError, match=r"random_states_0.pkl is unreadable"):
        validate_checkpoint(ckpt, 4)
    _truncate(ckpt / "model.safetensors")
    with pytest.raises(ResumeError, match=r"model.safetensors is unreadable"):
        validate_checkpoint(ckpt, 4)


def test_rng_states_that_cannot_be_applied_are_an_error(base, tmp_path):
    ckpt = list_checkpoints(base)[-1]
    torch.manual_seed(123)
    restore_rng(ckpt, 0, 1, lambda rank: 0)
    first = torch.rand(3)
    torch.manual_seed(456)
    restore_rng(ckpt, 0, 1, lambda rank: 0)
    assert torch.equal(torch.rand(3), first), "the saved torch RNG state is applied"
    note = restore_rng(ckpt, 1, 1, lambda rank: 77 + rank)
    assert note == f"rank 1 has no RNG state in {ckpt} (written by 1 processes): seeded with 78"
    bad = tmp_path / "ckpt"
    bad.mkdir()
    torch.save({"random_state": "not a state"}, bad / "random_states_0.pkl")
    with pytest.raises(ResumeError, match=r"random_states_0.pkl does not hold usable RNG states"):
        restore_rng(bad, 0, 1, lambda rank: 0)


def _poison_after(monkeypatch, step: int) -> None:
    """Make the optimizer update of ``step`` write NaN into the weights (the loss stays finite)."""
    import sslvit.training.run as run_module

    real = run_module.build_optimizer

    def build(*args, **kwargs):
        optimizer = real(*args, **kwargs)
        step_fn, calls = optimizer.step, [0]

        def poisoned(*a, **k):
            out = step_fn(*a, **k)
            calls[0] += 1
            if calls[0] == step:
                with torch.no_grad():
                    optimizer.param_groups[0]["params"][0].fill_(float("nan"))
            return out

        optimizer.step = poisoned
        return optimizer

    monkeypatch.setattr(run_module, "build_optimizer", build)


def test_a_nonfinite_update_is_never_checkpointed_nor_named_last_good(shards, tmp_path, monkeypatch):
    from sslvit.training import NonFiniteLossError, train

    _poison_after(monkeypatch, 4)
    monkeypatch.chdir(tmp_path)
    cfg = _cfg(shards, tmp_path, "train.name=nan", "train.steps=8", "train.ckpt_every=2", "train.keep_last=0")
    with pytest.raises(NonFiniteLossError, match="non-finite after step 4") as err:
        train(cfg)
    run = tmp_path / "nan"
    assert [p.name for p in list_checkpoints(run)] == ["step_0000002"]
    assert f"the last good checkpoint is {run / 'checkpoints' / 'step_0000002'}" in str(err.value)
    weights = load_file(str(run / "checkpoints" / "step_0000002" / "model.safetensors"))
    assert all(torch.isfinite(v).all() for v in weights.values())


def test_a_nonfinite_last_update_never_writes_the_final_model(shards, tmp_path, monkeypatch):
    from sslvit.training import NonFiniteLossError, train

    _poison_after(monkeypatch, 4)
    monkeypatch.chdir(tmp_path)
    cfg = _cfg(shards, tmp_path, "train.name=last", "train.steps=4", "train.ckpt_every=2", "train.keep_last=0")
    with pytest.raises(NonFiniteLossError, match="the final model was not written"):
        train(cfg)
    assert not (tmp_path / "last" / "model.safetensors").exists()
    assert [p.name for p in list_checkpoints(tmp_path / "last")] == ["step_0000002"]


def test_huge_lr_stops_without_a_nonfinite_checkpoint(shards, tmp_path, monkeypatch):
    from sslvit.training import NonFiniteLossError, train

    monkeypatch.chdir(tmp_path)
    cfg = _cfg(shards, tmp_path, "train.name=lr", "optim.lr=1e6", "train.ckpt_every=2", "train.steps=6")
    with pytest.raises(NonFiniteLossError) as err:
        train(cfg)
    for ckpt in list_checkpoints(tmp_path / "lr"):
        weights = load_file(str(ckpt / "model.safetensors"))
        assert all(torch.isfinite(v).all() for v in weights.values()), ckpt
        assert ckpt.name in str(err.value)
    if not list_checkpoints(tmp_path / "lr"):
        assert "no checkpoint with finite weights was written before it" in str(err.value)


def test_a_checkpoint_being_deleted_is_never_listed_nor_taken(base, shards, tmp_path):
    run = _copy_run(base, tmp_path, "base")
    newest = list_checkpoints(run)[-1]
    (newest / "optimizer.bin").unlink()
    gone = newest.rename(newest.with_name(f".del-{newest.name}"))
    assert [p.name for p in list_checkpoints(run)] == ["step_0000001", "step_0000002"]
    with pytest.raises(ResumeError, match="partial checkpoint"):
        validate_checkpoint(gone)
    found = find_resume_point("latest", tmp_path, "base", _wanted(shards, tmp_path, "train.name=base"), 4)
    assert found.path.name == "step_0000002" and found.notes == []


def _count_host_reads(monkeypatch) -> list[int]:
    """Count ``Tensor.item`` / ``Tensor.tolist`` calls (each a host sync on an accelerator)."""
    calls = [0]
    for name in ("item", "tolist"):
        real = getattr(torch.Tensor, name)

        def counted(self, *a, _real=real, **k):
            calls[0] += 1
            return _real(self, *a, **k)

        monkeypatch.setattr(torch.Tensor, name, counted)
    return calls


def test_steps_between_log_steps_never_read_the_device(shards, tmp_path, monkeypatch):
    """Non-finite detection and loss values stay on the device until a log step."""
    from sslvit.training import train

    calls = _count_host_reads(monkeypatch)
    per_step: dict[int, int] = {}
    last = [0]

    def on_step_end(step: int) -> None:
        per_step[step], last[0] = calls[0] - last[0], calls[0]

    monkeypatch.chdir(tmp_path)
    cfg = _cfg(shards, tmp_path, "train.name=sync", "train.steps=6", "train.log_every=3", "data.num_workers=1")
    train(cfg, on_step_end=on_step_end)
    quiet = [per_step[s] for s in (2, 4, 5)]  # step 1 also counts the set-up before the loop
    assert quiet == [0, 0, 0], per_step
    assert per_step[3] > 0 and per_step[6] > 0  # log steps read the loss (and the skip count)


def test_a_nonfinite_loss_skips_the_update_on_the_device(shards, tmp_path, monkeypatch, capsys):
    """With the fused optimizer, a non-finite loss leaves weights, moments and step counts exactly as
    if the update had not run; the skip is counted and said at the next checkpoint or log step."""
    from sslvit.training import train

    poison_loss(monkeypatch, lambda n: n == 3)
    monkeypatch.chdir(tmp_path)
    cfg = _cfg(shards, tmp_path, "train.name=skip", "train.steps=4", "train.log_every=4", "train.ckpt_every=1",
               "train.keep_last=0", "train.max_nonfinite=1")
    train(cfg)
    ckpts = tmp_path / "skip" / "checkpoints"
    w2, w3 = (load_file(str(ckpts / f"step_000000{k}" / "model.safetensors")) for k in (2, 3))
    assert all(torch.equal(w2[k], w3[k]) for k in w2)  # step 3's update did not run
    o2, o3 = (torch.load(ckpts / f"step_000000{k}" / "optimizer.bin", weights_only=True) for k in (2, 3))
    assert {float(v["step"]) for v in o3["state"].values()} == {2.0}
    assert all(torch.equal(o2["state"][i]["exp_avg"], o3["state"][i]["exp_avg"]) for i in o2["state"])
    assert json.loads((ckpts / "step_0000003" / STATE_FILE).read_text())["nonfinite_skipped"] == 1
    assert "step 3 non-finite loss, update skipped (1/1 allowed)" in capsys.readouterr().out
