"""The evaluators end to end on the digits corpus, the feature cache, HF input and the command lines."""

import json
import sys
from pathlib import Path

import pytest

from sslvit.checkpoint import checkpoint_sha256 as sha256_file
from sslvit.evaluate import features as features_lib
from sslvit.evaluate.common import load_config, parse_cli
from sslvit.evaluate.finetune import FINETUNE_HELP, FinetuneConfig
from sslvit.evaluate.knn import KnnConfig, run_knn
from sslvit.evaluate.linear_probe import ProbeConfig, run_linear_probe

ROOT = Path(__file__).resolve().parents[2]


def test_probe_then_knn_on_digits_share_the_feature_cache(pico_checkpoint, digits, tmp_path, monkeypatch):
    calls = []
    real = features_lib.extract_features
    monkeypatch.setattr(features_lib, "extract_features", lambda *a, **k: calls.append(1) or real(*a, **k))
    common = dict(checkpoint=str(pico_checkpoint), train=digits["train"], val=digits["val"],
                  out_dir=str(tmp_path / "eval"), num_workers=1)
    probe = run_linear_probe(ProbeConfig(**common, epochs=5, warmup_epochs=1, lrs=(0.1, 1.0), weight_decays=(0.0,)))
    assert len(calls) == 2  # train + val extracted once
    saved = json.loads((tmp_path / "eval" / "linear_probe.json").read_text())
    assert saved["checkpoint"]["sha256"] == sha256_file(pico_checkpoint)
    assert saved["data"] == {"train": digits["train"], "val": digits["val"],
                             "train_samples": {"expected": 1437, "read": 1437, "skipped": {}},
                             "val_samples": {"expected": 360, "read": 360, "skipped": {}}}
    assert saved["num_train"] == 1437 and saved["num_val"] == 360 and saved["num_classes"] == 10
    assert saved["chosen"]["lr"] in (0.1, 1.0) and saved["val_top1"] == probe["val_top1"]
    assert 20.0 < saved["val_top1"] <= 100.0  # far above chance (10%) even for a random encoder

    knn = run_knn(KnnConfig(**common))
    assert len(calls) == 2, "kNN reuses the cached features"
    assert knn["num_train"] == 1437 and 10.0 < knn["val_top1"] <= 100.0
    run_knn(KnnConfig(**{**common, "pool": "avg"}))
    assert len(calls) == 4, "other feature options are another cache entry"


def test_hf_dataset_becomes_cached_shards(tmp_path):
    datasets = pytest.importorskip("datasets")
    from PIL import Image

    from sslvit.data.hf import hf_to_shards, parse_hf_spec
    from sslvit.data.shards import load_manifest

    images = [Image.new("RGB", (8, 8), (i * 40, 0, 0)) for i in range(6)]
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=["a", "b"])})
    ds = datasets.Dataset.from_dict({"image": images, "label": [0, 1] * 3}, features=features)
    ds.save_to_disk(str(tmp_path / "ds"))
    spec = f"hf:{tmp_path / 'ds'}:train"
    assert parse_hf_spec(spec)["image_column"] == "image"
    out = hf_to_shards(spec, tmp_path / "cache")
    manifest = load_manifest(out)
    assert manifest["total"] == 6 and manifest["num_classes"] == 2
    assert hf_to_shards(spec, tmp_path / "cache") == out  # reused


def test_nested_defaults_survive_overrides(tmp_path):
    cfg = load_config(FinetuneConfig, ROOT / "sslvit" / "configs" / "finetune_mae_vit_base.yaml",
                      ["objective.mixup_alpha=0.5", "--finetune.checkpoint", "x.pth"])
    assert cfg.objective.name == "supervised" and cfg.objective.mixup_alpha == 0.5
    assert (cfg.optim.base_lr, cfg.optim.layer_decay, cfg.data.batch_size) == (5e-4, 0.65, 128)
    assert (cfg.train.epochs, cfg.model.drop_path_rate, cfg.objective.label_smoothing) == (100, 0.1, 0.1)
    small = load_config(FinetuneConfig, None, ["objective.label_smoothing=0.2", "optim.min_lr=1e-6"])
    assert small.objective.name == "supervised" and small.objective.label_smoothing == 0.2
    assert (small.optim.base_lr, small.optim.layer_decay, small.data.batch_size) == (8e-3, 0.75, 32)


@pytest.mark.parametrize("cls, extra", [(ProbeConfig, None), (KnnConfig, None), (FinetuneConfig, FINETUNE_HELP)])
def test_help_explains_every_option(cls, extra, capsys):
    with pytest.raises(SystemExit) as done:
        parse_cli(cls, ["--help"], "about", extra_help=extra)
    assert done.value.code == 0
    out = capsys.readouterr().out
    entries = out.split("\n  --")[1:]
    assert len(entries) > 10
    for entry in entries:
        lines = entry.strip().splitlines()
        assert len(lines) >= 2 and lines[1].strip(), f"--{lines[0]} has no explanation"


def test_bad_key_value_and_file_are_named(capsys, tmp_path):
    for argv, named in [(["--kk", "3"], "'kk'"), (["--k", "many"], "k: expected an integer"),
                        (["--config", str(tmp_path / "nope.yaml")], "nope.yaml")]:
        with pytest.raises(SystemExit) as done:
            parse_cli(KnnConfig, argv)
        assert done.value.code == 2
        assert named in capsys.readouterr().err
    with pytest.raises(SystemExit):
        parse_cli(FinetuneConfig, ["--optim.layer_decayy", "0.7"], aliases={"checkpoint": "finetune.checkpoint"})
    assert "optim.layer_decayy" in capsys.readouterr().err


def test_finetune_aliases_map_to_sections():
    sys.path.insert(0, str(ROOT / "pipelines"))
    import finetune

    cfg = parse_cli(FinetuneConfig, ["--checkpoint", "a.pth", "--model=vit_base_patch16", "--val", "v"],
                    aliases=finetune.ALIASES)
    assert (cfg.finetune.checkpoint, cfg.model.name, cfg.data.val_shards) == ("a.pth", "vit_base_patch16", "v")
