"""Inputs from strangers: a manifest never runs a shell command the user did not name, and every
subcommand answers a bad input with one line, ``sslvit CMD: error: ...``, and exit status 2."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from safetensors.torch import save_file

from sslvit.checkpoint import save_model
from sslvit.cli import COMMANDS, main
from sslvit.data.plan import TRUSTED_MANIFESTS_ENV, resolve
from sslvit.errors import InputError
from sslvit.models import create_model
from tests.run_helpers import bar_shards

ENCODER = str(Path(__file__).resolve().parent / "fixtures" / "1eb4611" / "run" / "model.safetensors")


@pytest.fixture(scope="module")
def bars(tmp_path_factory) -> dict[str, str]:
    return bar_shards(tmp_path_factory.mktemp("bars"), train=40, val=20)


def _command_manifest(folder: Path, bars: dict[str, str], marker: Path) -> Path:
    """A manifest whose one shard is 'read' by a command that also touches ``marker``."""
    real = sorted(Path(bars["train"]).glob("*.tar"))[0]
    folder.mkdir(parents=True, exist_ok=True)
    entry = {"name": real.name, "url": f"pipe:touch {marker}; cat {real}", "count": 40}
    (folder / "manifest.json").write_text(json.dumps({"shards": [entry], "total": 40}))
    return folder / "manifest.json"


def test_a_command_in_a_strangers_manifest_does_not_run(tmp_path, bars, monkeypatch, capsys):
    monkeypatch.delenv(TRUSTED_MANIFESTS_ENV, raising=False)
    marker = tmp_path / "MARKER"
    manifest = _command_manifest(tmp_path / "theirs", bars, marker)
    with pytest.raises(InputError, match=f"{TRUSTED_MANIFESTS_ENV}={manifest}"):
        resolve(str(manifest.parent))
    assert main(["shards", "index", str(manifest)]) == 2
    assert main(["knn", "--train", str(manifest.parent), "--val", bars["val"], "--checkpoint", ENCODER]) == 2
    err = capsys.readouterr().err
    assert err.count("runs only from a manifest you trust by name") == 2
    assert not marker.exists()


def test_a_manifest_trusted_by_name_may_name_a_command_and_a_typed_command_needs_no_trust(tmp_path, bars,
                                                                                         monkeypatch):
    marker = tmp_path / "MARKER"
    manifest = _command_manifest(tmp_path / "mine", bars, marker)
    monkeypatch.setenv(TRUSTED_MANIFESTS_ENV, str(manifest))
    assert resolve(str(manifest.parent)).urls[0].startswith("pipe:touch")
    monkeypatch.setenv(TRUSTED_MANIFESTS_ENV, str(manifest.parent))  # the folder names it too
    assert resolve(str(manifest.parent)).counts == [40]
    monkeypatch.delenv(TRUSTED_MANIFESTS_ENV)
    assert resolve("pipe:cat a-{0..1}.tar").urls == ["pipe:cat a-0.tar", "pipe:cat a-1.tar"]
    assert not marker.exists()  # resolving reads no shard


@pytest.fixture(scope="module")
def hostile(tmp_path_factory, bars) -> dict[str, str]:
    root = tmp_path_factory.mktemp("hostile")
    (root / "garbage").mkdir()
    (root / "garbage" / "manifest.json").write_text("{not json")
    (root / "countless").mkdir()
    (root / "countless" / "manifest.json").write_text(json.dumps({"shards": [{"name": "a.tar"}]}))
    encoder = create_model("vit_pico_patch4")
    meta = {"sslvit.kind": "encoder", "sslvit.model": json.dumps({**encoder.get_config(), "bogus": 1})}
    save_file(encoder.state_dict(), str(root / "bad_meta.safetensors"), metadata=meta)
    (root / "empty").mkdir()
    (root / "zero").mkdir()
    (root / "zero" / "a.tar").write_bytes(b"")  # a zero-byte shard, no manifest
    (root / "nottar").mkdir()
    (root / "nottar" / "a.tar").write_text("hello world " * 100)  # not a tar, no manifest
    save_model(encoder, root / "good.safetensors", encoder.get_config())
    text_meta = {"sslvit.kind": "encoder", "sslvit.model": json.dumps("text")}
    save_file(encoder.state_dict(), str(root / "text_meta.safetensors"), metadata=text_meta)
    return {"garbage": str(root / "garbage"), "countless": str(root / "countless"),
            "bad_meta": str(root / "bad_meta.safetensors"), "missing": str(root / "none.safetensors"),
            "empty": str(root / "empty"), "out": str(root / "out"), "zero": str(root / "zero"),
            "nottar": str(root / "nottar"), "text_meta": str(root / "text_meta.safetensors"),
            "good": str(root / "good.safetensors"), **bars}


def _cases(h: dict[str, str]) -> dict[str, list[list[str]]]:
    """Hostile command lines of every subcommand (a new subcommand must add its own)."""
    evaluator = [["--checkpoint", h["missing"]], ["--checkpoint", h["bad_meta"]],
                 ["--checkpoint", h["bad_meta"], "--train", h["garbage"]], ["--train", h["countless"]]]
    return {
        "shards": [[h["empty"], "--out", h["out"]], ["index", h["garbage"]], ["index", h["countless"]],
                   [h["train"], "--out", h["out"], "--max-count", "0"]],
        "pretrain": [["data.batch_size=0"], ["nosuch.key=1"], [f"data.train_shards={h['garbage']}"],
                     [f"data.train_shards={h['countless']}"], ["--config", h["missing"]],
                     [f"data.train_shards={h['zero']}"], [f"data.train_shards={h['nottar']}"],
                     ["data.image_size=100000"]],
        "probe": [*evaluator, ["--mae.epochs", "3"], ["--protocol", "mae", "--lrs", "[0.1]"],
                  ["--protocol", "mae", "--mae.batch_size", "0"], ["--protocol", "paper"],
                  ["--protocol", "mae", "--checkpoint", h["good"], "--train", h["train"], "--val", h["train"]]],
        "knn": evaluator,
        "finetune": [["--checkpoint", h["missing"]], ["--checkpoint", h["bad_meta"]]],
        "visualize": [["--checkpoint", h["missing"]], ["--checkpoint", h["bad_meta"]],
                      ["--checkpoint", h["text_meta"]]],
        "publish": [["--checkpoint", h["bad_meta"], "--repo-id", "org/name", "--dry-run", h["out"]],
                    ["--checkpoint", h["text_meta"], "--repo-id", "org/name", "--dry-run", h["out"]],
                    ["--checkpoint", h["missing"], "--repo-id", "org/name", "--dry-run", h["out"]]],
        "config": [["--config", h["missing"]], ["nosuch.key=1"]],
        "configs": [["--no-such-option"]],
    }


def test_every_subcommand_has_hostile_cases(hostile):
    assert set(_cases(hostile)) == set(COMMANDS)


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_a_hostile_input_is_one_error_line_and_exit_2(command, hostile, capsys, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    for args in _cases(hostile)[command]:
        try:
            code = main([command, *args])
        except SystemExit as exit_:  # argparse's own refusal
            code = exit_.code
        err = capsys.readouterr().err.strip()
        assert code == 2, (args, err)
        last = err.splitlines()[-1]
        assert "Traceback" not in err and re.match(rf"sslvit {command}( index)?: error: \S", last), (args, err)


def test_unreadable_and_empty_shards_without_a_manifest_are_skipped_and_said(tmp_path, bars, caplog):
    from sslvit.data.plan import ShardSet
    from sslvit.data.stream import count_unknown

    good = str(sorted(Path(bars["train"]).glob("*.tar"))[0])
    (tmp_path / "empty.tar").write_bytes(b"")
    (tmp_path / "text.tar").write_text("hello world " * 100)
    urls = [good, str(tmp_path / "empty.tar"), str(tmp_path / "text.tar")]
    with caplog.at_level("WARNING", logger="sslvit.data.stream"):
        counted = count_unknown(ShardSet(urls, None, sources=["here"] * 3), "first", True, None)
    assert counted.urls == urls[:2] and counted.counts == [40, 0]
    assert "skipping 1 shard(s) that are not readable tar files" in caplog.text and "text.tar" in caplog.text
    assert "1 shard(s) hold no sample" in caplog.text and "empty.tar" in caplog.text


def test_a_lost_shard_is_counted_by_the_samples_it_held(tmp_path, capsys):
    from sslvit.data.digits import png_items
    from sslvit.data.shards import write_shards
    from sslvit.evaluate.features import features_for_config
    from sslvit.evaluate.knn import KnnConfig
    from tests.run_helpers import bar_images

    for split, seed in (("train", 0), ("val", 1)):
        images, labels = bar_images(40, seed)
        write_shards(png_items(images, labels, split), tmp_path / split, prefix=split, max_count=10,
                     class_names=[str(i) for i in range(10)], verify=False, compute_stats=False, total=40,
                     progress=False)
    sorted((tmp_path / "train").glob("*.tar"))[1].unlink()
    cfg = KnnConfig(checkpoint=ENCODER, train=str(tmp_path / "train"), val=str(tmp_path / "val"), cache=False,
                    num_workers=0, batch_size=16, out_dir=str(tmp_path / "eval"))
    feats = features_for_config(cfg)
    data = feats["describe"]["data"]
    assert data["train_samples"] == {"expected": 40, "read": 30,
                                     "skipped": {"unreadable_shard": 1, "unreadable_shard_samples": 10}}
    assert data["val_samples"] == {"expected": 40, "read": 40, "skipped": {}}
    out = capsys.readouterr().out
    assert "the train split" in out and "gave 30 of its 40 samples" in out and "the val split" not in out
