"""Every backbone family through the Hub folder and the pictures: ``config.json`` names timm's
architecture so timm builds the same model from it and gives the same features; ``from_pretrained``
loads it strictly; pictures that do not apply to a backbone are skipped with their reason."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import sslvit
from sslvit.checkpoint import save_model
from sslvit.hub import publish
from sslvit.models import create_model

timm = pytest.importorskip("timm")  # a dev dependency: installed by the Quickstart and CI

# a small model per family that timm's entry points can express (standard hybrids and PoolFormers
# only: their timm constructors fix the stem / stages), at a small input size
TIMM_BUILDABLE = {
    "vit": ("vit_pico_patch4", {}),
    "tnt": ("tnt_pico_patch4_32", {}),
    "swin": ("swin_pico_patch2_window4_32", {}),
    "hybrid": ("vit_small_r26_s32_224", {"img_size": 64}),
    "poolformer": ("poolformer_s12", {"img_size": 64}),
}


@pytest.mark.parametrize("family", sorted(TIMM_BUILDABLE))
def test_published_folder_builds_in_timm_with_the_same_features(family: str, tmp_path: Path) -> None:
    name, overrides = TIMM_BUILDABLE[family]
    torch.manual_seed(0)
    model = create_model(name, **overrides).eval()
    checkpoint = save_model(model, tmp_path / "model.safetensors", model.get_config())
    out = tmp_path / "hub"
    publish(checkpoint, f"org/{family}", dry_run=out)
    config = json.loads((out / "config.json").read_text())
    assert config["sslvit"]["timm"]["loadable"], config["sslvit"]["timm"]["reason"]
    size = model.img_size[0]
    # what timm.create_model("hf-hub:ORG/NAME") does with config.json: architecture + model_args, with
    # num_classes from the top level
    args = {"num_classes": config["num_classes"], **config["model_args"]}
    theirs = timm.create_model(config["architecture"], pretrained=False, **args)
    if "img_size" not in config["model_args"] and hasattr(theirs, "set_input_size"):
        theirs.set_input_size(img_size=size)
    theirs.load_state_dict(load_file(str(out / "model.safetensors")), strict=True)
    theirs.eval()
    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ours = model.forward_head(model.forward_features(x), pre_logits=True)
        timm_features = theirs.forward_head(theirs.forward_features(x), pre_logits=True)
        torch.testing.assert_close(timm_features, ours, rtol=1e-4, atol=1e-4)
        again = sslvit.from_pretrained(out)
        assert torch.equal(again(x), model(x))
    card = (out / "README.md").read_text()
    assert f"A `{family}` encoder" in card


def test_non_timm_shapes_say_why_in_the_card(tmp_path: Path) -> None:
    model = create_model("poolformer_pico_32")
    checkpoint = save_model(model, tmp_path / "model.safetensors", model.get_config())
    publish(checkpoint, "org/pool", dry_run=tmp_path / "hub")
    config = json.loads((tmp_path / "hub" / "config.json").read_text())
    assert not config["sslvit"]["timm"]["loadable"] and "MetaFormer" in config["sslvit"]["timm"]["reason"]
    assert "timm cannot build this encoder" in (tmp_path / "hub" / "README.md").read_text()


@pytest.mark.parametrize(
    "name, absent",
    [
        ("swin_pico_patch2_window4_32", {"attention_distance", "attention_rollout", "pos_embed_similarity"}),
        ("poolformer_pico_32", {"attention_distance", "attention_rollout", "pos_embed_similarity"}),
        ("tnt_pico_patch4_32", set()),
        ("vit_pico_r_s4_32", set()),
    ],
)
def test_pictures_that_do_not_apply_are_skipped_with_a_reason(name: str, absent: set, tmp_path: Path) -> None:
    from sslvit.viz import visualize

    torch.manual_seed(0)
    model = create_model(name)
    checkpoint = save_model(model, tmp_path / "model.safetensors", model.get_config())
    images = torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8)
    skipped: dict[str, str] = {}
    figures = visualize(checkpoint, tmp_path / "figures", images=images, num_show=2, skipped=skipped)
    assert set(skipped) == absent
    assert all(reason and "\n" not in reason for reason in skipped.values())
    every = {"attention_distance", "attention_rollout", "pos_embed_similarity", "patch_embed_pcs"}
    assert set(figures) == every - absent
    for png in figures.values():
        assert png.is_file() and png.with_suffix(".json").is_file()
    if name.startswith("swin"):
        assert "window" in skipped["attention_distance"]
