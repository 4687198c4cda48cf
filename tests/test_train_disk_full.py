"""A full disk: the checkpoint that does not fit leaves nothing partial, the run stops with one line
naming the directory, the bytes needed and free and the last good checkpoint; with train.keep_last
the checkpoints it would prune go first and the write is tried once more."""

from __future__ import annotations

import errno
from pathlib import Path

import pytest
from accelerate import Accelerator

from sslvit.errors import EXIT_STORAGE, StorageError
from sslvit.training import config as config_lib
from sslvit.training.checkpoints import list_checkpoints, validate_checkpoint
from tests.run_helpers import TINY, bar_shards


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> str:
    return bar_shards(tmp_path_factory.mktemp("bars"), train=64, val=16)["train"]


def _cfg(tmp_path: Path, shards: str, *extra: str):
    return config_lib.load(None, [*TINY, f"data.train_shards={shards}", "train.trackers=[]",
                                  f"train.out_dir={tmp_path}", "train.name=full", "train.ckpt_every=2", *extra])


def _full_on(monkeypatch, calls: set[int], error: Exception) -> list[int]:
    """Make accelerate's ``save_state`` write a partial file and fail on the given calls (1-based)."""
    real, seen = Accelerator.save_state, []

    def save_state(self, output_dir=None, **kwargs):
        seen.append(1)
        if len(seen) in calls:
            Path(output_dir).mkdir(parents=True, exist_ok=True)
            (Path(output_dir) / "model.safetensors").write_bytes(b"x" * 100)
            raise error
        return real(self, output_dir, **kwargs)

    monkeypatch.setattr(Accelerator, "save_state", save_state)
    return seen


def test_a_checkpoint_that_does_not_fit_stops_the_run_and_leaves_the_last_good_one(fresh_accelerate, shards,
                                                                                   tmp_path, monkeypatch):
    from sslvit.training import train

    _full_on(monkeypatch, {2}, OSError(errno.ENOSPC, "No space left on device"))
    with pytest.raises(StorageError) as stopped:
        train(_cfg(tmp_path, shards, "train.steps=6", "train.keep_last=0"))
    said = str(stopped.value)
    run = tmp_path / "full"
    assert said.startswith(f"no space left to write the checkpoint of step 4 in {run / 'checkpoints'}: about ")
    assert " free (" in said and f"the last good checkpoint is {run / 'checkpoints' / 'step_0000002'}" in said
    assert "the partial .tmp-step_0000004 was removed" in said
    assert [p.name for p in (run / "checkpoints").iterdir()] == ["step_0000002"]
    assert validate_checkpoint(run / "checkpoints" / "step_0000002").state.step == 2


def test_with_keep_last_the_old_checkpoints_go_first_and_the_run_goes_on(fresh_accelerate, shards, tmp_path,
                                                                        monkeypatch, capsys):
    from sslvit.training import train

    _full_on(monkeypatch, {3}, OSError(errno.ENOSPC, "No space left on device"))
    result = train(_cfg(tmp_path, shards, "train.steps=8", "train.keep_last=2"))
    assert result.steps == 8 and result.model_path.is_file()
    assert [c.name for c in list_checkpoints(tmp_path / "full")] == ["step_0000004", "step_0000006"]
    assert "pruned step_0000002 first (train.keep_last=2) and writing it again" in capsys.readouterr().out


def test_torchs_own_words_for_a_full_disk_are_recognised_by_the_free_space(fresh_accelerate, shards, tmp_path,
                                                                          monkeypatch):
    import shutil

    from sslvit.training import train

    _full_on(monkeypatch, {1}, RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 64 vs 52"))
    monkeypatch.setattr(shutil, "disk_usage", lambda path: shutil._ntuple_diskusage(10**9, 10**9 - 10, 10))
    with pytest.raises(StorageError, match="no space left to write the checkpoint of step 2 .* 10 B free"):
        train(_cfg(tmp_path, shards, "train.steps=4"))
    assert list((tmp_path / "full" / "checkpoints").iterdir()) == []


def test_another_write_failure_is_raised_as_it_was(fresh_accelerate, shards, tmp_path, monkeypatch):
    from sslvit.training import train

    _full_on(monkeypatch, {1}, PermissionError(errno.EACCES, "Permission denied"))
    with pytest.raises(PermissionError):
        train(_cfg(tmp_path, shards, "train.steps=4"))


def test_the_final_model_that_does_not_fit_names_the_last_checkpoint(fresh_accelerate, shards, tmp_path,
                                                                     monkeypatch):
    from sslvit.training import train

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr("sslvit.training.run.save_model", full)
    with pytest.raises(StorageError, match="no space left to write the final model .* the last good checkpoint "
                                           "is .*step_0000002"):
        train(_cfg(tmp_path, shards, "train.steps=4"))


def test_a_weights_file_that_does_not_fit_leaves_no_partial_file(tmp_path, monkeypatch):
    from sslvit.checkpoint import format as format_lib
    from sslvit.models import create_model

    def partial(tensors, path, metadata=None):
        Path(path).write_bytes(b"x" * 10)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(format_lib, "save_file", partial)
    with pytest.raises(OSError):
        format_lib.save_model(create_model("vit_pico_patch4"), tmp_path / "model.safetensors", {})
    assert list(tmp_path.iterdir()) == []


def test_the_command_says_it_in_one_line_with_exit_74(monkeypatch, capsys):
    from sslvit.cli import main

    def full(cfg, **kwargs):
        raise StorageError("no space left to write the checkpoint of step 4 in runs/x/checkpoints: ...")

    monkeypatch.setattr("sslvit.training.loop.train", full)
    assert main(["pretrain", "train.steps=6"]) == EXIT_STORAGE
    assert capsys.readouterr().err == ("sslvit pretrain: error: no space left to write the checkpoint of step 4 in "
                                       "runs/x/checkpoints: ...\n")
