"""The checkpoints people have load with the same features as timm's for the same weights.

Each test builds a tiny timm model with random weights (norms perturbed so that every parameter
matters), saves it in the form people have it (a plain dict in a .pth, MAE's ``{"model": sd}``,
safetensors, a published folder, a Hub repo) and compares sslvit's tokens with timm's
``forward_features`` and sslvit's pooled features (as the evaluators compute them) with timm's
``forward_head(..., pre_logits=True)``.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import timm
import torch
from hub_server import FakeHub
from safetensors.torch import save_file

from sslvit.checkpoint import (
    CheckpointError,
    infer_model_config,
    load_checkpoint,
    read_metadata,
    save_model,
)
from sslvit.checkpoint import checkpoint_sha256 as sha256_file
from sslvit.evaluate.common import EvalConfig, default_output_dir, load_encoder
from sslvit.evaluate.features import encode
from sslvit.hub import publish
from sslvit.models import create_model, model_defaults, model_family
from sslvit.training import config as config_lib

TINY = dict(img_size=32, patch_size=4, embed_dim=32, depth=2, num_heads=2)  # vit_pico_patch4's shape
TOKEN = "hf_TestSecretToken0123456789abcdef"


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _timm(name: str, **kwargs) -> torch.nn.Module:
    """A timm model with random weights, every parameter (norms included) perturbed, eval mode."""
    torch.manual_seed(0)
    model = timm.create_model(name, pretrained=False, **kwargs)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model.eval()


def _images(size: int = 32) -> torch.Tensor:
    return torch.randn(3, 3, size, size, generator=torch.Generator().manual_seed(1))


def _assert_same_features(ours: torch.nn.Module, theirs: torch.nn.Module, size: int = 32) -> None:
    """Tokens, pooled features (the evaluators' ``encode``) and logits equal timm's, bitwise."""
    x = _images(size)
    with torch.no_grad():
        tokens = theirs.forward_features(x)
        torch.testing.assert_close(ours.forward_features(x), tokens, rtol=0, atol=0)
        torch.testing.assert_close(encode(ours, x), theirs.forward_head(tokens, pre_logits=True), rtol=0, atol=0)
        torch.testing.assert_close(ours(x), theirs(x), rtol=0, atol=0)


def _timm_from_spec(model: torch.nn.Module) -> torch.nn.Module:
    """timm's model built from sslvit's export spec, holding ``model``'s weights (strict)."""
    spec = model.timm_spec()
    assert isinstance(spec, dict), spec
    built = timm.create_model(spec["architecture"], pretrained=False, **spec["model_args"],
                              num_classes=model.num_classes)
    built.load_state_dict(model.state_dict(), strict=True)
    return built.eval()


def _timm_from_published(checkpoint: Path, folder: Path) -> torch.nn.Module:
    """What timm loads from the folder ``sslvit.hub.publish`` writes for ``checkpoint``."""
    publish(checkpoint, "org/model", dry_run=folder)
    return timm.create_model(f"local-dir:{folder}", pretrained=True).eval()


def test_average_pool_fc_norm_checkpoints_load_with_timm_features(tmp_path: Path) -> None:
    theirs = _timm("vit_small_patch16_224", **TINY, global_pool="avg", num_classes=10)
    assert "fc_norm.weight" in theirs.state_dict() and "norm.weight" not in theirs.state_dict()
    torch.save(theirs.state_dict(), tmp_path / "timm_avg.pth")  # timm: a plain dict
    torch.save({"model": theirs.state_dict()}, tmp_path / "mae_finetuned.pth")  # MAE's fine-tuned release
    for name in ("timm_avg.pth", "mae_finetuned.pth"):
        ours = load_checkpoint(tmp_path / name)
        assert (ours.global_pool, ours.get_config()["fc_norm"]) == ("avg", True)
        _assert_same_features(ours, theirs)
    _assert_same_features(ours, _timm_from_spec(ours))  # and the export builds the same model in timm
    _assert_same_features(ours, _timm_from_published(tmp_path / "timm_avg.pth", tmp_path / "published"))
    assert ours.pool_only_parameters() == {"fc_norm.weight", "fc_norm.bias"}


def test_deit_distilled_loads_with_timm_features(tmp_path: Path) -> None:
    theirs = _timm("deit_small_distilled_patch16_224", **TINY, num_classes=10)
    save_file({k: v.contiguous() for k, v in theirs.state_dict().items()}, str(tmp_path / "deit.safetensors"))
    config = infer_model_config(theirs.state_dict())
    assert (config["distilled"], config["img_size"], config["num_classes"]) == (True, 32, 10)
    ours = load_checkpoint(tmp_path / "deit.safetensors")
    assert ours.num_prefix_tokens == 2
    _assert_same_features(ours, theirs)
    spec = ours.timm_spec()
    assert spec["architecture"] == "deit_base_distilled_patch16_224"  # the carrier; model_args set the rest
    _assert_same_features(ours, _timm_from_spec(ours))
    _assert_same_features(ours, _timm_from_published(tmp_path / "deit.safetensors", tmp_path / "published"))
    headless = load_checkpoint(tmp_path / "deit.safetensors", num_classes=0)  # a probe's encoder: heads dropped
    theirs.reset_classifier(0)
    _assert_same_features(headless, theirs)
    for size in ("tiny", "small", "base"):  # the registered variants have timm's parameter counts
        name = f"deit_{size}_distilled_patch16_224"
        with torch.device("meta"):
            counts = [sum(p.numel() for p in m.parameters()) for m in
                      (timm.create_model(name, pretrained=False), create_model(name, num_classes=1000))]
        assert counts[0] == counts[1], (name, counts)
        spec = create_model(name, depth=1, img_size=32).timm_spec()  # not a timm variant: the carrier
        assert (spec["architecture"], spec["exact"]) == ("deit_base_distilled_patch16_224", False)
        with torch.device("meta"):
            spec = create_model(name).timm_spec()
        assert (spec["architecture"], spec["exact"]) == (name, True)


def _mae_decoder(dim: int = 16, depth: int = 2, patch_values: int = 4 * 4 * 3, tokens: int = 65) -> dict:
    """The decoder tensors of an MAE pretraining checkpoint (``models_mae.py`` names)."""
    g = torch.Generator().manual_seed(2)
    state = {"mask_token": torch.randn(1, 1, dim, generator=g),
             "decoder_embed.weight": torch.randn(dim, 32, generator=g),
             "decoder_embed.bias": torch.randn(dim, generator=g),
             "decoder_pos_embed": torch.randn(1, tokens, dim, generator=g),
             "decoder_norm.weight": torch.randn(dim, generator=g),
             "decoder_norm.bias": torch.randn(dim, generator=g),
             "decoder_pred.weight": torch.randn(patch_values, dim, generator=g),
             "decoder_pred.bias": torch.randn(patch_values, generator=g)}
    for i in range(depth):
        for part, shape in (("norm1.weight", (dim,)), ("attn.qkv.weight", (3 * dim, dim)),
                            ("attn.proj.weight", (dim, dim)), ("mlp.fc1.weight", (4 * dim, dim))):
            state[f"decoder_blocks.{i}.{part}"] = torch.randn(*shape, generator=g)
    return state


def test_full_mae_checkpoint_loads_its_encoder_and_names_the_dropped_decoder(tmp_path: Path, capsys) -> None:
    theirs = _timm("vit_small_patch16_224", **TINY, num_classes=0)
    full = {**theirs.state_dict(), **_mae_decoder()}
    torch.save({"model": full, "epoch": 799}, tmp_path / "mae_pretrain_full.pth")
    ours = load_checkpoint(tmp_path / "mae_pretrain_full.pth")
    _assert_same_features(ours, theirs)
    said = capsys.readouterr().out
    assert "took the encoder; dropped 16 decoder keys" in said
    for part in ("decoder_blocks.* (8)", "decoder_embed.* (2)", "decoder_pos_embed (1)", "decoder_norm.* (2)",
                 "decoder_pred.* (2)", "mask_token (1)"):
        assert part in said
    assert said.count("dropped") == 1
    torch.save({"model": {**full, "projector.weight": torch.zeros(4, 4)}}, tmp_path / "other.pth")
    with pytest.raises(CheckpointError, match=r"unexpected keys: projector\.weight"):
        load_checkpoint(tmp_path / "other.pth")


def test_timm_model_names_resolve_in_models_evaluators_and_configs(tmp_path: Path) -> None:
    assert model_defaults("vit_small_patch16_224")["img_size"] == 224
    assert model_defaults("vit_base_patch16_384")["img_size"] == 384
    assert model_family("deit_small_patch16_224") == "vit"
    ours = create_model("vit_small_patch16_224", depth=1)
    assert (ours.arch, ours.img_size, ours.embed_dim) == ("vit_small_patch16", (224, 224), 384)
    theirs = _timm("vit_small_patch16_224", depth=1, num_classes=0)
    # a plain state dict whose depth matches no registered variant: the evaluators' --model names it
    torch.save(theirs.state_dict(), tmp_path / "small_depth1.pth")
    loaded = load_encoder(EvalConfig(checkpoint=str(tmp_path / "small_depth1.pth"), model="vit_small_patch16_224"),
                          depth=1)
    _assert_same_features(loaded, theirs, size=224)
    avg = _timm("vit_small_patch16_224", **TINY, global_pool="avg", num_classes=0)
    torch.save({"model": avg.state_dict()}, tmp_path / "avg.pth")  # the named variant takes fc_norm from the keys
    _assert_same_features(load_checkpoint(tmp_path / "avg.pth", model_name="vit_pico_patch4_32"), avg)
    from sslvit.training import check_model_config

    check_model_config(config_lib.load(None, ["model.name=vit_small_patch16_224"]))  # the config accepts it
    with pytest.raises(KeyError, match="did you mean vit_small_patch16_224"):
        create_model("vit_smal_patch16_224")
    close = "model: unknown model 'vit_smal_patch16_224'; did you mean vit_small_patch16_224"
    with pytest.raises(config_lib.ConfigError, match=close):
        load_encoder(EvalConfig(checkpoint=str(tmp_path / "small_depth1.pth"), model="vit_smal_patch16_224"))


def test_checkpoint_specs_run_dir_published_folders_and_errors(tmp_path: Path) -> None:
    torch.manual_seed(0)
    pico = create_model("vit_pico_patch4")
    run = tmp_path / "runs" / "pico"
    save_model(pico, run / "model.safetensors", pico.get_config(),
               extra={"config": {"data": {"mean": [0.1, 0.2, 0.3], "std": [0.3, 0.3, 0.3]}}})
    published = tmp_path / "published"
    publish(run / "model.safetensors", "org/pico", dry_run=published)
    x = _images()
    with torch.no_grad():
        expected = pico.eval().forward_features(x)
        for spec in (run, published):
            encoder = load_encoder(EvalConfig(checkpoint=str(spec)))
            torch.testing.assert_close(encoder.forward_features(x), expected, rtol=0, atol=0)
            assert default_output_dir(str(spec)) == spec.resolve() / "eval"
    assert sha256_file(run) == sha256_file(run / "model.safetensors")
    assert read_metadata(published)["normalization"]["mean"] == [0.1, 0.2, 0.3]

    theirs = _timm("vit_small_patch16_224", **TINY, global_pool="avg", num_classes=0)
    timm_folder = tmp_path / "timm_folder"  # what timm's own push_to_hub writes
    timm.models.save_for_hf(theirs, str(timm_folder), safe_serialization=True)
    _assert_same_features(load_checkpoint(timm_folder), theirs)

    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("")
    with pytest.raises(CheckpointError, match="directory without model.safetensors.*it holds: notes.txt"):
        load_checkpoint(empty)
    with pytest.raises(CheckpointError, match="checkpoint not found: .*looked for a weights file, a run directory"):
        load_checkpoint(tmp_path / "nope" / "model.safetensors")


def test_checkpoint_spec_names_a_hub_repo(tmp_path: Path, monkeypatch) -> None:
    theirs = _timm("vit_small_patch16_224", **TINY, num_classes=0)
    save_file({k: v.contiguous() for k, v in theirs.state_dict().items()}, str(tmp_path / "vit.safetensors"))
    with FakeHub(token=TOKEN, lifetime=60) as hub:
        publish(tmp_path / "vit.safetensors", "org/vit-pico", token=TOKEN, endpoint=hub.url)
        monkeypatch.setenv("HF_ENDPOINT", hub.url)
        monkeypatch.setenv("HF_TOKEN", TOKEN)
        monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "cache"))
        monkeypatch.chdir(tmp_path)
        for spec in ("hf:org/vit-pico", "org/vit-pico"):
            _assert_same_features(load_encoder(EvalConfig(checkpoint=spec)), theirs)
        cached = next((tmp_path / "cache").rglob("model.safetensors"))
        assert sha256_file("org/vit-pico") == sha256_file(cached) == sha256_file("hf:org/vit-pico")
        assert default_output_dir("org/vit-pico") == Path("runs/hub/org--vit-pico/eval")
        assert read_metadata("hf:org/vit-pico")["model"]["embed_dim"] == 32  # what the evaluators read for stats
        with pytest.raises(CheckpointError, match="Hub repo 'org/missing' could not be read"):
            load_checkpoint("org/missing")
