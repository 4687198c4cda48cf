import json
import os
import pickle

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from sslvit import create_model, load_checkpoint, save_model
from sslvit.checkpoint import CheckpointError, infer_model_config, load_encoder_weights, read_metadata


def _pico(**kw):
    torch.manual_seed(0)
    return create_model("vit_pico_patch4", **kw).eval()


def test_round_trip_identical_outputs_and_metadata(tmp_path):
    model = _pico()
    path = save_model(
        model, tmp_path / "model.safetensors", model.get_config(), extra={"objective": {"name": "mae"}}
    )
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
    assert meta["format"] == "pt"
    assert json.loads(meta["sslvit.model"]) == model.get_config()
    assert read_metadata(path)["objective"] == {"name": "mae"}
    again = load_checkpoint(path)
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(again(x), model(x), rtol=0, atol=0)
    assert not list(tmp_path.glob(".*tmp*")), "no temporary file is left behind"


def test_objective_file_loads_its_encoder(tmp_path):
    model = _pico()
    state = {f"encoder.{k}": v for k, v in model.state_dict().items()}
    state["decoder.weight"] = torch.ones(3, 3)
    path = save_model(state, tmp_path / "objective.safetensors", model.get_config(), kind="objective")
    again = load_checkpoint(path)
    x = torch.randn(1, 3, 32, 32)
    torch.testing.assert_close(again.forward_features(x), model.forward_features(x), rtol=0, atol=0)


def test_plain_pth_state_dict_with_prefix_is_inferred(tmp_path):
    model = _pico()
    path = tmp_path / "release.pth"
    torch.save({"model": {f"module.{k}": v for k, v in model.state_dict().items()}}, path)
    config = infer_model_config(model.state_dict())
    assert (config["embed_dim"], config["depth"], config["patch_size"], config["img_size"]) == (32, 2, 4, 32)
    again = load_checkpoint(path, model_name="vit_pico_patch4")
    x = torch.randn(1, 3, 32, 32)
    torch.testing.assert_close(again(x), model(x), rtol=0, atol=0)


def test_pth_with_code_is_never_unpickled(tmp_path):
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    path = tmp_path / "evil.pth"
    with open(path, "wb") as f:
        pickle.dump({"model": Evil()}, f)
    with pytest.raises(CheckpointError, match="weights-only"):
        load_checkpoint(path)
    assert not marker.exists()


def test_position_embeddings_of_another_grid_are_resampled(tmp_path):
    model = _pico()
    path = save_model(model, tmp_path / "m.safetensors", model.get_config())
    bigger = load_checkpoint(path, img_size=48)
    assert bigger.pos_embed.shape == (1, 1 + 12 * 12, 32)
    torch.testing.assert_close(bigger.pos_embed[:, :1], model.pos_embed[:, :1])
    assert bigger(torch.randn(1, 3, 48, 48)).shape == (1, 32)


def test_wrong_key_and_shape_are_named(tmp_path):
    model = _pico()
    state = dict(model.state_dict())
    state["blocks.0.attn.qkvv.weight"] = state.pop("blocks.0.attn.qkv.weight")
    state["blocks.1.mlp.fc1.weight"] = torch.zeros(7, 32)
    with pytest.raises(CheckpointError) as err:
        load_encoder_weights(_pico(), state)
    text = str(err.value)
    assert "missing keys: blocks.0.attn.qkv.weight" in text
    assert "unexpected keys: blocks.0.attn.qkvv.weight" in text
    assert "blocks.1.mlp.fc1.weight: checkpoint (7, 32) vs model (128, 32)" in text


def test_new_head_on_an_encoder(tmp_path):
    model = _pico()
    path = tmp_path / "enc.safetensors"
    save_file(
        {k: v.contiguous() for k, v in model.state_dict().items()}, str(path), metadata={"format": "pt"}
    )
    classifier = load_checkpoint(path, model_name="vit_pico_patch4", num_classes=10)
    assert classifier(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    torch.testing.assert_close(classifier.patch_embed.proj.weight, model.patch_embed.proj.weight)


def test_missing_and_corrupt_files_are_named(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "absent.safetensors")
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x00" * 20)
    with pytest.raises(CheckpointError, match="bad.safetensors"):
        load_checkpoint(bad)


def test_row_column_position_tables_are_resampled(tmp_path):
    model = _pico(pos_embed="learned_2d")
    path = save_model(model, tmp_path / "m2d.safetensors", model.get_config())
    bigger = load_checkpoint(path, img_size=64)
    assert bigger.pos_embed_row.shape[1] == 16 and bigger.pos_embed_col.shape[1] == 16
    assert bigger(torch.randn(1, 3, 64, 64)).shape == (1, 32)
