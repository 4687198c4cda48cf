"""``hf:`` data specs in every stage (pretraining, fine-tuning, probe / kNN), and split or column
mistakes named with what the dataset has."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from accelerate import PartialState

datasets = pytest.importorskip("datasets")

from PIL import Image  # noqa: E402

from sslvit.data.hf import hf_to_shards, parse_hf_spec  # noqa: E402
from sslvit.data.shards import load_manifest  # noqa: E402
from sslvit.data.sources import SourceError, hf_dataset  # noqa: E402
from sslvit.training import config as config_lib  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]


def _dataset(count: int = 8) -> datasets.Dataset:
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)) for _ in range(count)]
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=["a", "b"])})
    return datasets.Dataset.from_dict({"image": images, "label": [i % 2 for i in range(count)]}, features=features)


@pytest.fixture
def saved(tmp_path: Path) -> str:
    """A ``save_to_disk`` DatasetDict with "train" (8 images) and "test" (4), labels a / b."""
    path = tmp_path / "ds"
    datasets.DatasetDict({"train": _dataset(8), "test": _dataset(4)}).save_to_disk(str(path))
    return str(path)


@pytest.fixture
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_pretraining_reads_an_hf_spec(saved, tmp_path, capsys, one_thread):
    from sslvit.training import train
    from sslvit.training.data import resolve_train_data

    out = tmp_path / "runs"
    cfg = config_lib.load(None, [f"data.train_shards=hf:{saved}:train", "data.image_size=16", "data.batch_size=4",
                                 "data.num_workers=0", "objective.decoder_depth=1", "objective.decoder_dim=32",
                                 "objective.decoder_heads=2", "train.steps=1", "train.progress=false",
                                 "train.trackers=[]", f"train.out_dir={out}", "train.name=hf"])
    data = resolve_train_data(cfg, PartialState())
    assert Path(data.shards).parent == out / "hf_shards" and data.num_samples == 8
    assert load_manifest(data.shards)["num_classes"] == 2
    assert f"reading shards at {data.shards}" in capsys.readouterr().out
    batch = next(iter(data.make_loader()))
    assert batch["image"].shape == (4, 3, 16, 16)
    result = train(cfg)
    assert result.steps == 1 and Path(result.model_path).is_file()


def test_finetune_and_knn_read_hf_specs(saved, tmp_path, one_thread):
    from sslvit.checkpoint import save_model
    from sslvit.evaluate.common import load_config
    from sslvit.evaluate.finetune import FinetuneConfig, prepare_finetune
    from sslvit.evaluate.knn import KnnConfig, run_knn
    from sslvit.models import create_model

    torch.manual_seed(0)
    model = create_model("vit_pico_patch4")
    checkpoint = save_model(model, tmp_path / "ckpt" / "model.safetensors", model.get_config())
    cfg = load_config(FinetuneConfig, None, [f"finetune.checkpoint={checkpoint}", f"data.train_shards=hf:{saved}:train",
                                             f"data.val_shards=hf:{saved}:test", f"train.out_dir={tmp_path / 'runs'}"])
    cfg, encoder, describe = prepare_finetune(cfg)
    assert describe["num_classes"] == 2 and encoder.head.out_features == 2
    assert Path(describe["data"]["val"]).parent == (tmp_path / "runs" / "hf_shards").resolve()
    assert load_manifest(describe["data"]["val"])["total"] == 4

    knn = run_knn(KnnConfig(checkpoint=str(checkpoint), train=f"hf:{saved}:train", val=f"hf:{saved}:test",
                            out_dir=str(tmp_path / "eval"), num_workers=0, k=3))
    assert knn["num_train"] == 8 and knn["num_classes"] == 2
    saved_metrics = json.loads((tmp_path / "eval" / "knn.json").read_text())
    assert saved_metrics["num_val"] == 4


def test_a_mistyped_label_column_lists_the_columns(saved, tmp_path):
    with pytest.raises(SourceError) as err:
        hf_dataset(saved, "train", label_column="labl")
    assert "'labl'" in str(err.value) and "['image', 'label']" in str(err.value)
    with pytest.raises(SourceError, match=r"no label column 'labl'.*\['image', 'label'\]"):
        hf_to_shards(f"hf:{saved}:train:image:labl", tmp_path / "cache")
    with pytest.raises(SourceError, match=r"no image column 'img'.*\['image', 'label'\]"):
        hf_dataset(saved, "train", image_column="img")

    # an explicit "no labels" still works: library, hf: spec (empty last part) and the CLI
    unlabeled = hf_dataset(saved, "train", label_column="")
    assert unlabeled.class_names is None and all(item.label is None for item in unlabeled.items)
    assert parse_hf_spec(f"hf:{saved}:train:image:")["label_column"] == ""
    assert parse_hf_spec(f"hf:{saved}:train")["label_column"] == "label"
    manifest = load_manifest(hf_to_shards(f"hf:{saved}:train:image:", tmp_path / "cache"))
    assert manifest["labeled"] is False and manifest["total"] == 8

    import sys

    sys.path.insert(0, str(ROOT / "data"))
    import make_shards

    with pytest.raises(SourceError, match="labl"):
        make_shards.main([saved, "--hf", "--out", str(tmp_path / "bad"), "--label-column", "labl", "--quiet"])
    assert not (tmp_path / "bad" / "manifest.json").exists()
    summary = make_shards.main([saved, "--hf", "--out", str(tmp_path / "none"), "--label-column", "", "--quiet"])
    assert summary["total"] == 8 and load_manifest(tmp_path / "none")["labeled"] is False


def test_a_wrong_split_lists_the_splits(saved, tmp_path):
    with pytest.raises(SourceError) as err:
        hf_dataset(saved, "validation")
    assert "'validation'" in str(err.value) and "['train', 'test']" in str(err.value)
    with pytest.raises(SourceError, match=r"\['train', 'test'\]"):
        hf_to_shards(f"hf:{saved}:validation", tmp_path / "cache")

    parquet = tmp_path / "one.parquet"
    _dataset(4).to_parquet(str(parquet))
    assert hf_dataset(str(parquet), "train").total == 4
    with pytest.raises(SourceError, match=r"no split 'test'.*train"):
        hf_dataset(str(parquet), "test")
