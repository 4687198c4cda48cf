"""Publishing to the Hub and loading back: dry-run folders, the model card, bad input, and a real upload.

The upload test runs ``pipelines/publish.py`` as a subprocess with the real ``huggingface_hub`` client
pointed (``HF_ENDPOINT``) at the in-memory Hub of ``tests/hub_server.py``, then downloads the repo back
through ``hf_hub_download`` into a fresh cache.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from hub_server import FakeHub
from safetensors import safe_open

import sslvit
from sslvit.checkpoint import checkpoint_sha256 as sha256_file
from sslvit.checkpoint import save_model
from sslvit.hub import PublishError, from_pretrained, publish
from sslvit.models import create_model

ROOT = Path(__file__).resolve().parents[1]
TOKEN = "hf_TestSecretToken0123456789abcdef"
RUN_CONFIG = {
    "data": {
        "train_shards": "",
        "image_size": 32,
        "batch_size": 16,
        "crop_scale": [0.2, 1.0],
        "hflip": True,
        "mean": [0.1, 0.2, 0.3],
        "std": [0.25, 0.25, 0.25],
    },
    "optim": {"name": "adamw", "base_lr": 1.5e-4, "weight_decay": 0.05, "schedule": "cosine"},
    "train": {"steps": 20, "precision": "no", "seed": 0},
}
OBJECTIVE = {"name": "mae", "mask_ratio": 0.75, "norm_pix_loss": True, "decoder_depth": 1, "decoder_dim": 32}


@pytest.fixture
def checkpoint(tmp_path: Path) -> Path:
    """An encoder checkpoint as ``sslvit.training`` writes it (tiny ViT, random weights)."""
    torch.manual_seed(0)
    model = create_model("vit_pico_patch4")
    path = tmp_path / "run" / "model.safetensors"
    extra = {"objective": OBJECTIVE, "config": {**RUN_CONFIG, "objective": OBJECTIVE}}
    return save_model(model, path, model.get_config(), kind="encoder", extra=extra)


def _metrics(tmp_path: Path, name: str, **record) -> Path:
    path = tmp_path / name
    path.write_text(json.dumps(record))
    return path


def _outputs(model: torch.nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        return model(x), model.forward_features(x)


def _tensors(path: Path) -> tuple[dict, dict]:
    """(metadata, name -> tensor bytes) of a safetensors file; its header order is not deterministic."""
    with safe_open(str(path), "pt") as f:
        return f.metadata(), {k: f.get_tensor(k).numpy().tobytes() for k in f.keys()}


def _front_matter(card: str) -> dict:
    assert card.startswith("---\n")
    return yaml.safe_load(card[4:].split("\n---\n", 1)[0])


def test_dry_run_folder_round_trips_with_timm_names(tmp_path: Path, checkpoint: Path) -> None:
    out = tmp_path / "hub"
    result = publish(checkpoint, "org/pico-mae", dry_run=out)
    assert result.commit_url is None and result.files == ["README.md", "config.json", "model.safetensors"]
    from sslvit.checkpoint import load_checkpoint

    original, loaded = load_checkpoint(checkpoint), sslvit.from_pretrained(out)
    for a, b in zip(_outputs(original), _outputs(loaded), strict=True):
        assert torch.equal(a, b)
    with safe_open(str(out / "model.safetensors"), "pt") as f:
        assert f.metadata()["format"] == "pt" and f.metadata()["sslvit.kind"] == "encoder"
        keys = set(f.keys())
    per_block = [
        f"{m}.{p}"
        for m in ("norm1", "attn.qkv", "attn.proj", "norm2", "mlp.fc1", "mlp.fc2")
        for p in ("weight", "bias")
    ]
    expected = {
        "cls_token",
        "pos_embed",
        "patch_embed.proj.weight",
        "patch_embed.proj.bias",
        "norm.weight",
        "norm.bias",
    } | {f"blocks.{i}.{k}" for i in range(2) for k in per_block}
    assert keys == expected  # encoder only, timm names: no mask_token, no top-level encoder
    config = json.loads((out / "config.json").read_text())
    assert config["architecture"] == "vit_base_patch16_224" and config["num_features"] == 32
    assert config["model_args"] == {
        "img_size": 32,
        "patch_size": 4,
        "in_chans": 3,
        "embed_dim": 32,
        "depth": 2,
        "num_heads": 2,
        "mlp_ratio": 4.0,
        "qkv_bias": True,
        "class_token": True,
        "global_pool": "token",
        "fc_norm": False,
    }
    pre = config["pretrained_cfg"]
    assert pre["input_size"] == [3, 32, 32] and pre["mean"] == [0.1, 0.2, 0.3] and pre["std"] == [0.25] * 3
    assert config["sslvit"]["model"] == original.get_config()
    assert config["sslvit"]["objective"] == OBJECTIVE
    assert config["sslvit"]["source_checkpoint"]["sha256"] == sha256_file(checkpoint)


def test_standard_size_maps_to_timm_variant() -> None:
    with torch.device("meta"):
        base = create_model("vit_base_patch16").timm_spec()
        big = create_model("vit_base_patch16", img_size=384).timm_spec()
        nano = create_model("vit_nano_patch4").timm_spec()
        two_d = create_model("vit_base_patch16", pos_embed="learned_2d").timm_spec()
    assert (base["architecture"], base["exact"]) == ("vit_base_patch16_224", True)
    assert (big["architecture"], big["exact"]) == ("vit_base_patch16_384", True)
    assert (nano["architecture"], nano["exact"]) == ("vit_base_patch16_224", False)
    assert nano["model_args"]["embed_dim"] == 128 and nano["model_args"]["num_heads"] == 4
    assert isinstance(two_d, str) and "learned_2d" in two_d


def test_card_front_matter_carries_metric_values(tmp_path: Path, checkpoint: Path) -> None:
    digest = sha256_file(checkpoint)
    probe = _metrics(
        tmp_path,
        "linear_probe.json",
        evaluator="linear_probe",
        val_top1=87.25,
        val_top5=99.5,
        checkpoint={"path": str(checkpoint), "sha256": digest},
        data={"train": "data/shards/digits/train", "val": "data/shards/digits/val"},
    )
    knn = _metrics(
        tmp_path, "knn.json", task="knn", dataset="cifar10", top1=0.8125, checkpoint={"path": str(checkpoint)}
    )
    out = tmp_path / "hub"
    publish(checkpoint, "org/pico-mae", metrics=[probe, knn], dry_run=out)
    card = (out / "README.md").read_text()
    meta = _front_matter(card)
    assert meta["library_name"] == "sslvit" and meta["license"] == "apache-2.0"
    assert {"sslvit", "mae", "vision-transformer"} <= set(meta["tags"])
    assert set(meta["datasets"]) == {"digits", "cifar10"}
    (entry,) = meta["model-index"]
    assert entry["name"] == "pico-mae"
    got = {
        (r["task"]["name"], r["dataset"]["name"], r["dataset"]["split"]): [m["value"] for m in r["metrics"]]
        for r in entry["results"]
    }
    assert got == {
        ("Linear probe (frozen features)", "digits", "val"): [87.25, 99.5],
        ("k-NN classification (frozen features)", "cifar10", "val"): [0.8125],
    }
    assert "| Linear probe (frozen features) | digits | val | 87.25 | 99.50 |" in card
    assert (
        'sslvit.from_pretrained("org/pico-mae")' in card and 'timm.create_model("hf-hub:org/pico-mae"' in card
    )


def test_bad_input_fails_before_any_upload(
    tmp_path: Path, checkpoint: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    torch.manual_seed(0)
    enc = create_model("vit_pico_patch4")
    state = {f"encoder.{k}": v for k, v in enc.state_dict().items()}
    state["decoder_embed.weight"] = torch.zeros(4, 4)
    objective = save_model(state, tmp_path / "objective.safetensors", enc.get_config(), kind="objective")
    wrong_sha = _metrics(
        tmp_path, "a.json", task="knn", top1=50.0, checkpoint={"path": str(checkpoint), "sha256": "0" * 64}
    )
    wrong_path = _metrics(
        tmp_path, "b.json", task="knn", top1=50.0, checkpoint={"path": str(tmp_path / "other.safetensors")}
    )
    unnamed = _metrics(tmp_path, "c.json", task="knn", top1=50.0)
    bad_task = _metrics(tmp_path, "d.json", task="segmentation", top1=50.0)
    cases = [
        (dict(checkpoint=checkpoint, repo_id="bad repo/name"), "invalid repo id"),
        (dict(checkpoint=checkpoint, repo_id="org/a/b"), "invalid repo id"),
        (dict(checkpoint=objective, repo_id="org/x"), "not an encoder"),
        (dict(checkpoint=checkpoint, repo_id="org/x", metrics=[wrong_sha]), "different checkpoint"),
        (dict(checkpoint=checkpoint, repo_id="org/x", metrics=[wrong_path]), "not " + str(checkpoint)),
        (dict(checkpoint=checkpoint, repo_id="org/x", metrics=[unnamed]), "does not say which checkpoint"),
        (dict(checkpoint=checkpoint, repo_id="org/x", metrics=[bad_task]), "is not one of"),
    ]
    with FakeHub(token=TOKEN, lifetime=30) as hub:
        for kwargs, message in cases:
            with pytest.raises(PublishError, match=message.replace("/", ".")):
                publish(**kwargs, token=TOKEN, endpoint=hub.url)
        from huggingface_hub import constants

        for name in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_OIDC_RESOURCE"):
            monkeypatch.delenv(name, raising=False)
        monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path / "no-login" / "token"))
        with pytest.raises(PublishError, match="no Hugging Face token: set HF_TOKEN"):
            publish(checkpoint, "org/x", endpoint=hub.url)
        assert hub.requests == []


def _env(hub: FakeHub, tmp_path: Path, token: str | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGINGFACE"))}
    env.update(
        HF_ENDPOINT=hub.url,
        HF_HOME=str(tmp_path / "hf_home"),
        HF_HUB_DISABLE_TELEMETRY="1",
        PYTHONPATH=str(ROOT),
        HF_HUB_DISABLE_PROGRESS_BARS="1",
    )
    if token:
        env["HF_TOKEN"] = token
    return env


def _cli(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(ROOT / "pipelines" / "publish.py"), *args],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_upload_to_hub_and_load_back(tmp_path: Path, checkpoint: Path) -> None:
    probe = _metrics(
        tmp_path,
        "probe.json",
        task="linear_probe",
        dataset="digits",
        top1=91.0,
        checkpoint={"path": str(checkpoint), "sha256": sha256_file(checkpoint)},
    )
    dry = tmp_path / "dry"
    publish(checkpoint, "org/pico-mae", metrics=[probe], dry_run=dry)
    with FakeHub(token=TOKEN, lifetime=90) as hub:
        args = [
            "--checkpoint",
            str(checkpoint),
            "--repo-id",
            "org/pico-mae",
            "--metrics",
            str(probe),
            "--private",
        ]
        run = _cli(args, _env(hub, tmp_path, TOKEN))
        assert run.returncode == 0, run.stderr
        assert "commit:" in run.stdout and TOKEN not in run.stdout + run.stderr
        assert all(authorised for _, _, authorised in hub.requests)  # the client sent the token
        files = hub.files("org/pico-mae")
        assert sorted(files) == ["README.md", "config.json", "model.safetensors"]
        assert hub.repos["org/pico-mae"].private and hub.repos["org/pico-mae"].messages[-1].startswith(
            "Upload"
        )
        for name in ("README.md", "config.json"):  # the real client sent what a dry run writes
            assert files[name] == (dry / name).read_bytes()
        (tmp_path / "uploaded.safetensors").write_bytes(files["model.safetensors"])
        assert _tensors(tmp_path / "uploaded.safetensors") == _tensors(dry / "model.safetensors")
        assert not any(TOKEN.encode() in data for data in files.values())

        cache = tmp_path / "cache"
        loaded = from_pretrained("org/pico-mae", endpoint=hub.url, token=TOKEN, cache_dir=cache)
        expected = _outputs(from_pretrained(dry))
        for a, b in zip(expected, _outputs(loaded), strict=True):
            assert torch.equal(a, b)
        with pytest.raises(Exception, match="Repository Not Found|401|RepositoryNotFound"):
            from_pretrained("org/pico-mae", endpoint=hub.url, token=False, cache_dir=tmp_path / "anon")

        publish(checkpoint, "org/pico-mae", revision="dev", token=TOKEN, endpoint=hub.url)
        assert sorted(hub.files("org/pico-mae", "dev")) == sorted(files)
        on_dev = from_pretrained(
            "org/pico-mae", revision="dev", endpoint=hub.url, token=TOKEN, cache_dir=cache
        )
        assert torch.equal(_outputs(on_dev)[0], expected[0])
    offline = from_pretrained(
        "org/pico-mae", endpoint=hub.url, token=TOKEN, cache_dir=cache
    )  # server is gone
    for a, b in zip(expected, _outputs(offline), strict=True):
        assert torch.equal(a, b)
    for path in cache.rglob("*"):
        assert not path.is_file() or TOKEN.encode() not in path.read_bytes()


def test_loading_is_strict_and_reads_plain_timm_configs(tmp_path: Path, checkpoint: Path) -> None:
    from safetensors.torch import load_file, save_file

    from sslvit.checkpoint import CheckpointError

    out = tmp_path / "hub"
    publish(checkpoint, "org/pico-mae", dry_run=out)
    expected = _outputs(from_pretrained(out))
    config = json.loads((out / "config.json").read_text())
    del config["sslvit"]  # a config as timm writes it: architecture, model_args, pretrained_cfg only
    (out / "config.json").write_text(json.dumps(config))
    for a, b in zip(expected, _outputs(from_pretrained(out)), strict=True):
        assert torch.equal(a, b)
    state = load_file(str(out / "model.safetensors"))
    save_file(
        {**state, "mask_token": torch.zeros(1, 1, 32)}, str(out / "model.safetensors"), {"format": "pt"}
    )
    with pytest.raises(CheckpointError, match="unexpected keys: mask_token"):
        from_pretrained(out)
    del state["norm.bias"]
    save_file(state, str(out / "model.safetensors"), {"format": "pt"})
    with pytest.raises(CheckpointError, match="missing keys: norm.bias"):
        from_pretrained(out)


def test_the_card_names_the_probe_protocol(tmp_path: Path, checkpoint: Path) -> None:
    ref = {"path": str(checkpoint), "sha256": sha256_file(checkpoint)}
    files = [_metrics(tmp_path, f"{name}.json", evaluator="linear_probe", val_top1=top1, checkpoint=ref,
                      protocol={"name": name}, data={"val": f"data/{name}/val"}) for name, top1 in (("fast", 90.0),
                                                                                                    ("mae", 60.0))]
    out = tmp_path / "hub"
    publish(checkpoint, "org/pico-mae", metrics=files, dry_run=out)
    card = (out / "README.md").read_text()
    assert "| Linear probe (frozen features; sslvit's fast sweep, not a paper's protocol) | fast | val | 90.00 |" in card
    assert "| Linear probe (frozen features; MAE's protocol) | mae | val | 60.00 |" in card
