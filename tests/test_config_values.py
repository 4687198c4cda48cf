"""Config values are checked when the config is loaded: out-of-range values, unknown models and
objective x backbone pairs that cannot train are refused naming the dotted key, the value and what is
allowed; every key has a one-line meaning (``key_docs``)."""

from __future__ import annotations

import pytest
import yaml

from sslvit.config import ConfigError, key_docs
from sslvit.objectives import objectives
from sslvit.training import config as config_lib
from sslvit.training.config import RunConfig


def read(raw: str):
    """A command-line value as the config reads it (YAML; numbers such as 1e-3 as floats)."""
    value = yaml.safe_load(raw)
    try:
        return float(value) if isinstance(value, str) else value
    except ValueError:
        return value


def refusal(*overrides: str) -> str:
    """The ConfigError message that loading ``overrides`` raises."""
    with pytest.raises(ConfigError) as err:
        config_lib.load(None, list(overrides))
    return str(err.value)


# the failures found by trying the project, each once ------------------------------------------
def test_a_negative_batch_size_is_refused_naming_key_value_and_range():
    assert refusal("data.batch_size=-4") == "data.batch_size: -4 is out of range; allowed: >= 1"


def test_zero_gradient_accumulation_is_refused_at_load_not_by_a_division():
    assert refusal("train.grad_accum=0").startswith("train.grad_accum: 0 is out of range; allowed: >= 1")


def test_an_unknown_model_names_close_matches_and_how_to_list_all():
    message = refusal("model.name=vit_nope")
    assert message.startswith("model.name: unknown model 'vit_nope'; close matches: vit_nano_patch4")
    assert "list_models()" in message
    assert "close matches: vit_tiny_patch16" in refusal("model.name=vit_tiny_patch61")


def test_a_crop_scale_outside_0_1_or_reversed_is_refused():
    assert refusal("data.crop_scale=[2.0,0.1]") == (
        "data.crop_scale: [2.0, 0.1] is out of range; allowed: each in (0, 1]"
    )
    assert refusal("data.crop_scale=[0.9,0.1]") == (
        "data.crop_scale: [0.9, 0.1] is out of range; allowed: 0 < low <= high <= 1"
    )


@pytest.mark.parametrize(
    "name, allowed", [("mae", "in (0, 1)"), ("simmim", "in (0, 1)"), ("mpp", "in (0, 1]")]
)
def test_a_mask_ratio_above_one_is_refused_by_each_objective(name, allowed):
    message = refusal(f"objective.name={name}", "objective.mask_ratio=1.5")
    assert message == f"objective.mask_ratio: 1.5 is out of range; allowed: {allowed}"


def test_negative_steps_are_refused():
    assert refusal("train.steps=-5") == "train.steps: -5 is out of range; allowed: >= 1 or null"


def test_a_negative_learning_rate_is_refused():
    assert refusal("optim.lr=-1") == "optim.lr: -1.0 is out of range; allowed: > 0 or null"


@pytest.mark.parametrize("name", ["mae", "simmim", "mpp"])
def test_a_zero_mask_ratio_which_trains_nothing_is_refused(name):
    assert refusal(f"objective.name={name}", "objective.mask_ratio=0").startswith(
        "objective.mask_ratio: 0.0 is out of range; allowed: in (0, 1"
    )


def test_trackers_take_a_single_name_or_a_comma_separated_string():
    assert config_lib.load(None, ["train.trackers=tensorboard"]).train.trackers == ("tensorboard",)
    both = config_lib.load(None, ["train.trackers=tensorboard, wandb"]).train.trackers
    assert both == ("tensorboard", "wandb")
    assert config_lib.load(None, ["--train.trackers", "[tensorboard]"]).train.trackers == ("tensorboard",)
    assert config_lib.load(None, ["train.trackers="]).train.trackers == ()
    message = refusal("train.trackers=tensorboard,,wandb")
    assert message == "train.trackers: empty entry in 'tensorboard,,wandb'"


def test_other_tuples_take_a_comma_separated_string_too():
    cfg = config_lib.load(None, ["data.crop_scale=0.3,0.9", "optim.betas=0.9, 0.999"])
    assert cfg.data.crop_scale == (0.3, 0.9) and cfg.optim.betas == (0.9, 0.999)
    assert refusal("data.mean=0.5,0.5").startswith("data.mean: expected")


def test_the_command_line_exits_2_with_one_line_and_no_run_directory(tmp_path, capsys):
    from sslvit.cli import main

    out = tmp_path / "runs"
    for override, line in [
        ("data.batch_size=-4", "data.batch_size: -4 is out of range; allowed: >= 1"),
        ("objective.mask_ratio=1.5", "objective.mask_ratio: 1.5 is out of range; allowed: in (0, 1)"),
    ]:
        assert main(["pretrain", override, f"train.out_dir={out}"]) == 2
        err = capsys.readouterr().err
        assert err == f"sslvit pretrain: error: {line}\n"
    assert not out.exists()


# the ranges, table-driven ------------------------------------------------------------------------
ACCEPTED = [
    "data.batch_size=1", "data.image_size=1", "data.digits_image_size=8", "data.num_workers=0",
    "data.shuffle_buffer=0", "data.samples_per_epoch=null", "data.crop_scale=[0.5, 0.5]",
    "data.crop_scale=[0.08, 1.0]", "data.mean=[0.5, 0.5, 0.5]", "data.std=[0.2, 0.2, 1.0]",
    "train.steps=null", "train.steps=1", "train.epochs=0.5", "train.grad_accum=1", "train.log_every=1",
    "train.ckpt_every=0", "train.keep_last=0", "train.max_nonfinite=0", "train.eval_every=0", "train.seed=0",
    "optim.lr=null", "optim.lr=1e-3", "optim.min_lr=0", "optim.weight_decay=0", "optim.betas=[0.0, 0.999]",
    "optim.warmup_steps=0", "optim.warmup_epochs=0", "optim.clip_grad=null", "optim.clip_grad=1.0",
    "optim.layer_decay=null", "optim.layer_decay=1.0", "model.drop_path_rate=0.0", "model.drop_path_rate=0.5",
    "model.num_classes=0", "model.img_size=null", "model.patch_size=null", "objective.mask_ratio=0.01",
]

REFUSED = [
    ("data.batch_size=0", ">= 1"),
    ("data.image_size=0", "in [1, 4096]"),
    ("data.image_size=100000", "in [1, 4096]"),
    ("data.digits_image_size=0", "in [1, 4096]"),
    ("data.num_workers=-1", ">= 0"),
    ("data.shuffle_buffer=-1", ">= 0"),
    ("data.samples_per_epoch=0", ">= 1 or null"),
    ("data.crop_scale=[0.0, 1.0]", "each in (0, 1]"),
    ("data.crop_scale=[0.5, 1.01]", "each in (0, 1]"),
    ("data.mean=[123.7, 116.3, 103.5]", "each in [0, 1] or null"),
    ("data.std=[0.2, 0.0, 0.2]", "each in (0, 1] or null"),
    ("train.steps=0", ">= 1 or null"),
    ("train.epochs=0", "> 0"),
    ("train.epochs=-1", "> 0"),
    ("train.grad_accum=-2", ">= 1 or null"),
    ("train.log_every=0", ">= 1"),
    ("train.ckpt_every=-1", ">= 0"),
    ("train.keep_last=-1", ">= 0"),
    ("train.max_nonfinite=-1", ">= 0"),
    ("train.eval_every=-1", ">= 0"),
    ("train.seed=-1", "in [0, 4294967295]"),
    ("optim.lr=0", "> 0 or null"),
    ("optim.base_lr=0", "> 0"),
    ("optim.base_lr=-1e-4", "> 0"),
    ("optim.min_lr=-1e-6", ">= 0"),
    ("optim.weight_decay=-0.05", ">= 0"),
    ("optim.betas=[0.9, 1.0]", "each in [0, 1)"),
    ("optim.betas=[-0.1, 0.95]", "each in [0, 1)"),
    ("optim.warmup_steps=-1", ">= 0 or null"),
    ("optim.warmup_epochs=-0.5", ">= 0"),
    ("optim.clip_grad=0", "> 0 or null"),
    ("optim.layer_decay=0", "in (0, 1] or null"),
    ("optim.layer_decay=1.5", "in (0, 1] or null"),
    ("model.drop_path_rate=1.0", "in [0, 1)"),
    ("model.drop_path_rate=-0.1", "in [0, 1)"),
    ("model.num_classes=-1", ">= 0"),
    ("model.img_size=0", "in [1, 4096] or null"),
    ("model.patch_size=0", ">= 1 or null"),
    ("objective.decoder_depth=0", ">= 1"),
    ("objective.decoder_dim=0", ">= 1"),
    ("objective.decoder_heads=0", ">= 1"),
]

OBJECTIVE_REFUSED = [
    (["objective.decoder_dim=100", "objective.decoder_heads=16"], "objective.decoder_dim",
     "a multiple of objective.decoder_heads (16)"),
    (["objective.name=simmim", "objective.mask_patch_size=0"], "objective.mask_patch_size", ">= 1"),
    (["objective.name=mpp", "objective.mpp_p_mask=1.2"], "objective.mpp_p_mask", "in [0, 1]"),
    (["objective.name=mpp", "objective.mpp_p_mask=0.95"], "objective.mpp_p_random",
     "objective.mpp_p_mask + objective.mpp_p_random <= 1"),
    (["objective.name=supervised", "objective.label_smoothing=1.0"], "objective.label_smoothing",
     "in [0, 1)"),
    (["objective.name=supervised", "objective.mixup_alpha=-1"], "objective.mixup_alpha", ">= 0"),
    (["objective.name=supervised", "objective.cutmix_alpha=-1"], "objective.cutmix_alpha", ">= 0"),
    (["objective.name=supervised", "objective.num_classes=-3"], "objective.num_classes", ">= 0"),
    (["optim.lr=1e-4", "optim.min_lr=1e-3"], "optim.min_lr", "<= optim.lr (0.0001)"),
]


@pytest.mark.parametrize("override", ACCEPTED)
def test_values_at_the_edge_of_their_range_are_accepted(override):
    key, raw = override.split("=", 1)
    section, name = key.split(".")
    value = getattr(getattr(config_lib.load(None, [override]), section), name)
    assert (list(value) if isinstance(value, tuple) else value) == read(raw)


@pytest.mark.parametrize("override, allowed", REFUSED, ids=[o for o, _ in REFUSED])
def test_values_out_of_range_are_refused_naming_key_value_and_range(override, allowed):
    key, raw = override.split("=", 1)
    message = refusal(override)
    assert message.startswith(f"{key}: ") and message.endswith(f" is out of range; allowed: {allowed}")
    shown = message[len(key) + 2 : message.index(" is out of range")]
    assert read(shown) == read(raw)  # the value as read (0 reads as 0.0 for a float)


@pytest.mark.parametrize(
    "overrides, key, allowed", OBJECTIVE_REFUSED, ids=[k for _, k, _ in OBJECTIVE_REFUSED]
)
def test_each_section_checks_its_own_rules(overrides, key, allowed):
    message = refusal(*overrides)
    assert message.startswith(f"{key}: ") and f"allowed: {allowed}" in message


def test_from_dict_checks_values_as_load_does():
    values = config_lib.to_dict(RunConfig())
    values["train"]["grad_accum"] = 0
    with pytest.raises(ConfigError, match=r"^train.grad_accum: 0 is out of range"):
        config_lib.from_dict(values)
    from sslvit.objectives import objective_config

    with pytest.raises(ConfigError, match=r"^mask_ratio: 1.5 is out of range; allowed: in \(0, 1\)"):
        objective_config("mae", mask_ratio=1.5)


def test_model_checks_run_at_load_time():
    assert refusal("model.name=poolformer_s12", "model.pos_embed=sincos", "objective.name=simmim") == (
        "model.pos_embed: the poolformer family (poolformer_s12) has no such option"
    )
    message = refusal("model.name=swin_pico_patch2_window4_32")  # MAE drops tokens, Swin cannot
    assert message.startswith("model.name: objective 'mae' cannot train a 'swin' backbone")
    assert "Pairs that work: " in message and "; mae: vit, hybrid, tnt;" in message
    assert refusal("model.name=") == (
        "model.name: '' is not a model; allowed: a name registered in sslvit.models"
    )


def test_an_empty_model_name_stays_allowed_where_the_config_reads_it_from_a_checkpoint():
    from sslvit.evaluate.finetune import FinetuneConfig

    assert config_lib.load(None, cls=FinetuneConfig).model.name == ""


# one line of meaning per key -----------------------------------------------------------------------
def _leaf_keys(tree: dict, prefix: str = "") -> set[str]:
    keys = set()
    for name, value in tree.items():
        dotted = f"{prefix}.{name}" if prefix else name
        keys |= _leaf_keys(value, dotted) if isinstance(value, dict) else {dotted}
    return keys


@pytest.mark.parametrize("objective", sorted(objectives()))
def test_every_key_of_every_objective_has_a_meaning(objective):
    cfg = config_lib.load(None, [f"objective.name={objective}"])
    docs = key_docs(cfg)
    assert set(docs) == _leaf_keys(config_lib.to_dict(cfg))
    assert {k for k, text in docs.items() if not text.strip()} == set()
    objective_keys = {f"objective.{k}" for k in config_lib.to_dict(cfg.objective)}
    assert objective_keys <= set(docs) and len(objective_keys) > 1


def test_meanings_state_the_allowed_range():
    docs = key_docs(RunConfig())
    assert docs["data.batch_size"] == (
        "images per process per micro-batch (before gradient accumulation) [allowed: >= 1]"
    )
    assert docs["optim.betas"].endswith("[allowed: each in [0, 1)]")
    assert docs["objective.mask_ratio"].endswith("[allowed: in (0, 1)]")
    assert "[allowed" not in docs["train.trackers"]


def test_a_fine_tune_config_has_a_meaning_for_every_key_too():
    from sslvit.evaluate.finetune import FinetuneConfig

    docs = key_docs(config_lib.load(None, cls=FinetuneConfig))
    assert "finetune.checkpoint" in docs and "objective.label_smoothing" in docs
    assert {k for k, text in docs.items() if not text.strip()} == set()



def test_precision_no_as_yaml_reads_it_is_fp32(tmp_path) -> None:
    """YAML reads a bare ``no`` as false; ``train.precision: no`` still means fp32."""
    path = tmp_path / "run.yaml"
    path.write_text("train:\n  precision: no\n")
    assert config_lib.load(path).train.precision == "no"
    assert config_lib.load(None, ["train.precision=no"]).train.precision == "no"
    with pytest.raises(ConfigError, match="train.precision"):
        config_lib.load(None, ["train.precision=yes"])
