"""The `sslvit` command: the installable wheel, the subcommands, honest help, errors and hints."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import yaml

from sslvit.cli import main
from sslvit.cli.pretrain import next_steps
from sslvit.training import config as config_lib

ROOT = Path(__file__).resolve().parents[1]
SUBCOMMANDS = ["shards", "pretrain", "probe", "knn", "finetune", "visualize", "publish", "config", "configs"]
ROW = re.compile(r"^  (?P<key>[a-z_]+(?:\.[a-z_]+)*) = (?P<value>.+?)(?:\s{2,}(?P<meaning>\S.*))?$")


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ACCELERATE_", "RANK", "WORLD_SIZE"))}
    return {**env, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}


def _sslvit(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "sslvit", *args], cwd=cwd, env=_env(), capture_output=True,
                          text=True, timeout=120)


def _key_rows(text: str) -> dict[str, tuple[object, str]]:
    """Parse the key table of a --help text: dotted key -> (value, meaning)."""
    rows: dict[str, tuple[object, str]] = {}
    last = None
    for line in text.splitlines():
        match = ROW.match(line)
        if match:
            last = match["key"]
            rows[last] = (yaml.safe_load(match["value"]), match["meaning"] or "")
        elif last is not None and line.startswith(" " * 10) and not rows[last][1]:
            rows[last] = (rows[last][0], line.strip())
    return rows


def _flat(tree: dict, prefix: str = "") -> dict[str, object]:
    out: dict[str, object] = {}
    for key, value in tree.items():
        out.update(_flat(value, f"{prefix}{key}.") if isinstance(value, dict) else {f"{prefix}{key}": value})
    return out


def test_wheel_ships_the_configs_and_the_console_script(tmp_path):
    src = tmp_path / "src"
    ignore = shutil.ignore_patterns("__pycache__", "*.egg-info")
    shutil.copytree(ROOT / "sslvit", src / "sslvit", ignore=ignore)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    done = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                           "-w", str(tmp_path / "dist"), str(src)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    (wheel,) = (tmp_path / "dist").glob("sslvit-*.whl")
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        (entry_points,) = [n for n in names if n.endswith(".dist-info/entry_points.txt")]
        scripts = zf.read(entry_points).decode()
    shipped = {f"sslvit/configs/{p.name}" for p in (ROOT / "sslvit" / "configs").glob("*.yaml")}
    assert "sslvit/configs/default.yaml" in names and shipped <= names and len(shipped) >= 10
    assert {"sslvit/__main__.py", "sslvit/cli/__init__.py", "sslvit/cli/pretrain.py"} <= names
    assert re.search(r"^\[console_scripts\]\s*\nsslvit = sslvit\.cli:console_main$", scripts, re.M), scripts


def test_module_help_lists_every_subcommand(tmp_path):
    done = _sslvit(tmp_path, "--help")
    assert done.returncode == 0, done.stderr
    listed = re.findall(r"^  ([a-z]+)  ", done.stdout, re.M)
    assert listed == SUBCOMMANDS
    assert "accelerate launch [accelerate options] -m sslvit COMMAND" in done.stdout


def test_pretrain_help_shows_the_default_run_and_a_meaning_per_key(capsys):
    assert main(["pretrain", "--help"]) == 0
    rows = _key_rows(capsys.readouterr().out)
    assert rows["data.batch_size"][0] == 64 and rows["train.epochs"][0] == 75
    assert rows["objective.decoder_depth"][0] == 1 and rows["optim.base_lr"][0] == 0.003
    expected = _flat(config_lib.to_dict(config_lib.load(ROOT / "sslvit" / "configs" / "default.yaml")))
    assert {k: v for k, (v, _) in rows.items()} == expected  # every key, with the value the run uses
    undocumented = [k for k, (_, meaning) in rows.items() if not meaning or meaning == "(no description)"]
    assert undocumented == []


def test_pretrain_help_after_config_shows_that_file(capsys):
    assert main(["pretrain", "--config", "mae_vit_base", "objective.name=simmim", "--help"]) == 0
    rows = _key_rows(capsys.readouterr().out)
    assert rows["data.batch_size"][0] == 256 and rows["data.image_size"][0] == 224
    assert rows["objective.name"][0] == "simmim" and "objective.decoder_depth" not in rows


def test_config_prints_the_resolved_yaml_and_runs_nothing(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["config", "train.steps=3"]) == 0
    printed = capsys.readouterr().out
    (tmp_path / "printed.yaml").write_text(printed)
    expected = config_lib.load(ROOT / "sslvit" / "configs" / "default.yaml", ["train.steps=3"])
    assert config_lib.load(tmp_path / "printed.yaml") == expected  # the output is a valid --config file
    assert yaml.safe_load(printed)["train"]["steps"] == 3 and yaml.safe_load(printed)["data"]["batch_size"] == 64
    assert sorted(p.name for p in tmp_path.iterdir()) == ["printed.yaml"]  # no runs/, no data/


def test_config_by_name_file_first_and_unknown_names_listed(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["config", "--config", "mae_vit_base"]) == 0
    assert yaml.safe_load(capsys.readouterr().out)["data"]["batch_size"] == 256
    assert main(["config", "--for", "finetune", "--config", "finetune_mae_vit_base.yaml"]) == 0
    assert yaml.safe_load(capsys.readouterr().out)["objective"]["num_classes"] == 1000
    (tmp_path / "mae_vit_base").write_text("data:\n  batch_size: 7\n")  # a file of that name wins
    assert main(["config", "--config", "mae_vit_base"]) == 0
    assert yaml.safe_load(capsys.readouterr().out)["data"]["batch_size"] == 7

    assert main(["pretrain", "--config", "mae_vit_bse"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("sslvit pretrain: error: config not found: 'mae_vit_bse'")
    assert all(name in err for name in ("default", "mae_vit_base", "simmim_vit_base", "swin_digits"))
    assert not (tmp_path / "runs").exists()


def test_configs_lists_every_shipped_config_with_its_header(capsys):
    assert main(["configs"]) == 0
    out = capsys.readouterr().out
    names = sorted(p.stem for p in (ROOT / "sslvit" / "configs").glob("*.yaml"))
    assert sorted(re.findall(r"^(\w+)  ", out, re.M)) == names
    assert re.search(r"^mae_vit_base +MAE ViT-B/16 on ImageNet-1k", out, re.M)
    assert re.search(r"^accelerate_fsdp +\[accelerate config\] ", out, re.M)


def test_end_of_run_hint_is_an_absolute_sslvit_probe_command(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (probe, knn, *_) = next_steps(Path("runs") / "my run" / "model.safetensors")
    absolute = str(tmp_path.resolve() / "runs" / "my run" / "model.safetensors")
    assert shlex.split(probe) == ["sslvit", "probe", "--checkpoint", absolute]
    assert shlex.split(knn) == ["sslvit", "knn", "--checkpoint", absolute]


def test_mistyped_key_exits_2_in_one_line_without_traceback_or_run_dir(tmp_path):
    done = _sslvit(tmp_path, "pretrain", "data.batch_sizee=3")
    assert done.returncode == 2, done.stderr
    assert done.stderr.startswith("sslvit pretrain: error: unknown config key 'data.batch_sizee'"), done.stderr
    assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr
    assert sorted(os.listdir(tmp_path)) == []  # no run directory, no shards


def test_missing_file_and_bad_value_exit_2_in_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    for args, named in [(["--config", str(tmp_path / "nope.yaml")], "nope.yaml"),
                        (["--optim.base_lr", "fast"], "optim.base_lr: expected a number")]:
        assert main(["pretrain", *args]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith("sslvit pretrain: error: ") and named in err, err
    assert sorted(os.listdir(tmp_path)) == []


def test_shards_help_shows_the_defaults(capsys):
    with pytest.raises(SystemExit) as done:
        main(["shards", "--help"])
    assert done.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    for shown in ("samples per shard at most (default: 10000)", "bytes per shard at most (default: 1GB)",
                  "HF image column (default: image)", "(default: 5000)"):
        assert shown in text, shown


def test_evaluator_help_shows_values_and_bad_checkpoint_exits_2(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["knn", "--config", "default", "--help"]) == 2  # a pretraining config is not a kNN config
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("sslvit knn: error: model: expected a string")
    assert main(["knn", "--k", "7", "--help"]) == 0
    rows = _key_rows(capsys.readouterr().out)
    assert rows["k"][0] == 7 and rows["temperature"][0] == 0.07 and rows["checkpoint"][1]
    assert main(["probe", "--checkpoint", str(tmp_path / "none.safetensors")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("sslvit probe: error: ") and "none.safetensors" in err
    assert json.dumps(sorted(os.listdir(tmp_path))) == "[]"


def test_shards_then_index_prints_one_summary_line(tmp_path, capsys):
    from PIL import Image

    for c, name in enumerate(["cat", "dog"]):
        (tmp_path / "src" / name).mkdir(parents=True)
        for i in range(3):
            Image.new("RGB", (8, 6), (40 * c, 20 * i, 99)).save(tmp_path / "src" / name / f"{i}.png")
    out = tmp_path / "shards"
    assert main(["shards", str(tmp_path / "src"), "--out", str(out), "--max-count", "4", "--quiet"]) == 0
    assert json.loads(capsys.readouterr().out) == {"dir": str(out), "shards": 2, "total": 6, "skipped": 0,
                                                   "classes": 2}
    (out / "manifest.json").unlink()
    assert main(["shards", "index", str(out)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines == [f"indexed 2 shards, 6 samples, 2 classes (labels 0..1); manifest: {out / 'manifest.json'}"]
    manifest = json.loads((out / "manifest.json").read_text())
    assert [s["count"] for s in manifest["shards"]] == [4, 2] and manifest["total"] == 6

    assert main(["shards", "index", str(tmp_path / "src" / "cat")]) == 2  # a folder without shards
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("sslvit shards index: error: ") and "no *.tar shards" in err
    assert main(["shards", str(tmp_path / "src")]) == 2
    assert capsys.readouterr().err.startswith("sslvit shards: error: --out is required")
