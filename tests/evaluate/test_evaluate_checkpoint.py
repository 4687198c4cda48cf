"""Checkpoint input of the evaluators: sslvit files, plain state dicts, .pth with weights_only, errors."""

import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from sslvit.checkpoint import CheckpointError, save_model
from sslvit.evaluate.common import EvalConfig, load_encoder
from sslvit.models import create_model

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "pipelines"))


def _pico() -> torch.nn.Module:
    torch.manual_seed(0)
    return create_model("vit_pico_patch4").eval()


def test_wrong_key_is_named(tmp_path):
    model = _pico()
    state = model.state_dict()
    state["blocks.0.attn.qkvv.weight"] = state.pop("blocks.0.attn.qkv.weight")
    path = save_model(state, tmp_path / "bad_key.safetensors", model.get_config())
    with pytest.raises(CheckpointError) as err:
        load_encoder(EvalConfig(checkpoint=str(path)))
    message = str(err.value)
    assert "missing keys: blocks.0.attn.qkv.weight" in message
    assert "unexpected keys: blocks.0.attn.qkvv.weight" in message


def test_wrong_shape_is_named_by_the_cli(tmp_path, capsys):
    import knn

    model = _pico()
    state = model.state_dict()
    state["blocks.1.mlp.fc1.weight"] = torch.zeros(64, 32)
    path = save_model(state, tmp_path / "bad_shape.safetensors", model.get_config())
    assert knn.main(["--checkpoint", str(path), "--out_dir", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "blocks.1.mlp.fc1.weight: checkpoint (64, 32) vs model (128, 32)" in err


def test_pth_state_dict_loads_with_weights_only(tmp_path, monkeypatch):
    model = _pico()
    path = tmp_path / "mae_style.pth"
    torch.save({"model": model.state_dict(), "epoch": 799}, path)  # MAE / DeiT release layout
    calls = []
    real_load = torch.load
    monkeypatch.setattr(torch, "load", lambda *a, **k: calls.append(k) or real_load(*a, **k))
    loaded = load_encoder(EvalConfig(checkpoint=str(path), model="vit_pico_patch4"))
    assert calls and all(k.get("weights_only") is True for k in calls)
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(loaded(x), model(x))


class _NotAWeight:
    pass


def test_pth_with_pickled_objects_is_refused(tmp_path):
    path = tmp_path / "pickled.pth"
    torch.save({"model": _pico().state_dict(), "extra": _NotAWeight()}, path)
    with pytest.raises(CheckpointError, match="weights-only"):
        load_encoder(EvalConfig(checkpoint=str(path), model="vit_pico_patch4"))


def test_head_count_comes_from_the_registered_variant_never_a_guess(tmp_path):
    # vit_pico_patch4 has 2 heads of width 16; the tensor shapes cannot tell the head count
    model = _pico()
    path = tmp_path / "plain.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    x = torch.randn(2, 3, 32, 32)
    inferred = load_encoder(EvalConfig(checkpoint=str(path)))
    assert inferred.blocks[0].attn.num_heads == 2 and inferred.arch == "vit_pico_patch4"
    torch.testing.assert_close(inferred(x), model(x), rtol=0, atol=0)
    named = load_encoder(EvalConfig(checkpoint=str(path), model="vit_pico_patch4"))
    torch.testing.assert_close(named(x), model(x))
    # a shape no variant has: refused, asking for the variant, instead of building a wrong model
    odd = create_model("vit_pico_patch4", embed_dim=48, num_heads=3)
    odd_path = tmp_path / "odd.safetensors"
    save_file({k: v.contiguous() for k, v in odd.state_dict().items()}, str(odd_path))
    with pytest.raises(CheckpointError, match=r"width 48, depth 2 .*head count is unknown.*--model"):
        load_encoder(EvalConfig(checkpoint=str(odd_path)))


def test_position_embeddings_of_another_grid_are_resampled(tmp_path):
    model = _pico()
    path = tmp_path / "plain.pth"
    torch.save(model.state_dict(), path)
    bigger = load_encoder(EvalConfig(checkpoint=str(path), model="vit_pico_patch4"), img_size=48)
    assert bigger.pos_embed.shape == (1, 1 + 12 * 12, 32)
    torch.testing.assert_close(bigger.pos_embed[:, :1], model.pos_embed[:, :1])  # class token position kept
    assert bigger(torch.randn(1, 3, 48, 48)).shape == (1, 32)


def test_missing_checkpoint_option_is_an_error():
    from sslvit.config import ConfigError

    with pytest.raises(ConfigError, match="checkpoint"):
        load_encoder(EvalConfig())
