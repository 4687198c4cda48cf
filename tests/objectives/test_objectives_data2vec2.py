"""data2vec 2.0: the exact EMA teacher, its targets, inverse block multi-masks, one teacher pass per image,
state dicts, config errors, a bitwise resume including the teacher and equal teachers on two ranks."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from sslvit.config import ConfigError
from sslvit.models import create_model
from sslvit.objectives import build_objective, objective_config
from sslvit.objectives.data2vec2 import InverseBlockMasker
from tests.objectives.conftest import MEAN, STD
from tests.run_helpers import ROOT

TINY = dict(top_k=2, num_masks=3, decoder_dim=32, decoder_layers=2, decoder_groups=16)


def _objective(encoder_kwargs: dict | None = None, **cfg):
    """data2vec2 over vit_pico_patch4 at 16 px (a 4 x 4 grid, 2 blocks, width 32)."""
    torch.manual_seed(0)
    encoder = create_model("vit_pico_patch4", img_size=16, **(encoder_kwargs or {}))
    return build_objective(objective_config("data2vec2", **{**TINY, **cfg}), encoder, MEAN, STD)


def _batch(objective, n: int = 4, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    batch = {"image": torch.randint(0, 256, (n, 3, 16, 16), generator=g, dtype=torch.uint8),
             "valid": torch.ones(n, dtype=torch.bool)}
    return {**batch, **objective.masker(n, g)}


def test_one_ema_update_is_exactly_the_formula():
    objective = _objective(ema_decay=0.9, ema_end_decay=0.99, ema_anneal_steps=10)
    with torch.no_grad():
        for p in objective.encoder.parameters():
            p.add_(torch.randn_like(p))
    teacher = {k: v.clone() for k, v in objective.teacher.named_parameters()}
    student = dict(objective.encoder.named_parameters())
    assert any(not torch.equal(teacher[k], student[k]) for k in teacher)
    objective.after_optimizer_step(1, 100)
    for name, value in objective.teacher.named_parameters():
        assert torch.equal(value, 0.9 * teacher[name] + (1 - 0.9) * student[name]), name
    assert objective.ema_decay_at(1) == 0.9
    assert objective.ema_decay_at(6) == pytest.approx(0.9 + 0.09 * 5 / 10)
    assert objective.ema_decay_at(11) == objective.ema_decay_at(500) == 0.99
    assert _objective(ema_anneal_steps=0).ema_decay_at(1) == 0.99999


def test_the_teacher_gets_no_gradient_and_stays_in_eval_mode():
    objective = _objective().train()
    assert not objective.teacher.training and objective.encoder.training
    loss, metrics = objective(_batch(objective))
    assert torch.isfinite(loss) and set(metrics) >= {"loss", "mask_ratio", "cls_loss"}
    loss.backward()
    for name, p in objective.teacher.named_parameters():
        assert not p.requires_grad and p.grad is None, name
    for name, p in objective.named_parameters():
        if not name.startswith("teacher."):
            assert p.grad is not None and p.grad.abs().sum() > 0, name


def _hand_targets(objective, images: torch.Tensor, top_k: int, layer_norm: bool) -> torch.Tensor:
    """The teacher's blocks run one by one; instance norm written out (mean / biased variance over
    the patches, eps 1e-5), averaged over the last top_k blocks, then layer norm written out."""
    teacher = objective.teacher
    x = teacher.prepare_tokens(images)
    outs = []
    for block in teacher.blocks:
        x = block(x)
        outs.append(x[:, teacher.num_prefix_tokens :])  # (N, L, D)
    normed = []
    for t in outs[-top_k:]:
        mean, var = t.mean(dim=1, keepdim=True), t.var(dim=1, unbiased=False, keepdim=True)
        normed.append((t - mean) / torch.sqrt(var + 1e-5))
    y = torch.stack(normed).mean(dim=0)
    if layer_norm:
        y = (y - y.mean(-1, keepdim=True)) / torch.sqrt(y.var(-1, unbiased=False, keepdim=True) + 1e-5)
    return y


@pytest.mark.parametrize("top_k, layer_norm", [(2, False), (1, False), (2, True)])
def test_targets_are_the_top_k_mean_of_instance_normalised_block_outputs(top_k, layer_norm):
    objective = _objective(top_k=top_k, layer_norm_targets=layer_norm).eval()
    with torch.no_grad():  # a teacher that differs from the student, so the test sees which one runs
        for p in objective.teacher.parameters():
            p.add_(0.1 * torch.randn_like(p))
        images = objective.normalize(_batch(objective)["image"])
        y = objective.targets(images)
        expected = _hand_targets(objective, images, top_k, layer_norm)
    assert y.shape == (4, 16, 32)
    torch.testing.assert_close(y, expected, rtol=1e-4, atol=1e-5)


def test_masks_hide_exactly_the_count_and_differ_per_image():
    masker = InverseBlockMasker((8, 8), 0.8, block=2, num_masks=5)
    assert (masker.num_kept, masker.num_masked) == (13, 51)
    mask = masker(6, torch.Generator().manual_seed(1))["mask"]
    assert mask.shape == (6, 5, 64) and mask.dtype == torch.bool
    assert (mask.sum(-1) == 51).all()
    for image in mask:
        assert len({tuple(m.tolist()) for m in image}) == 5, "the M masks of an image all differ"
    again = masker(6, torch.Generator().manual_seed(1))["mask"]
    assert torch.equal(mask, again)


def _visible_neighbours(mask: torch.Tensor, grid: int) -> float:
    """Mean count of visible 4-neighbours of a visible patch; mask bool (R, grid * grid)."""
    visible = (~mask).float().reshape(-1, 1, grid, grid)
    kernel = torch.tensor([[0.0, 1, 0], [1, 0, 1], [0, 1, 0]]).reshape(1, 1, 3, 3)
    neighbours = F.conv2d(visible, kernel, padding=1)
    return float((neighbours * visible).sum() / visible.sum())


def test_visible_patches_come_in_blocks():
    g = torch.Generator().manual_seed(0)
    blocks = InverseBlockMasker((14, 14), 0.8, block=3, num_masks=8)(16, g)["mask"].reshape(-1, 196)
    single = InverseBlockMasker((14, 14), 0.8, block=1, num_masks=8)(16, g)["mask"].reshape(-1, 196)
    assert (blocks.sum(-1) == 157).all() and (single.sum(-1) == 157).all()
    # random single patches at 20% visible: ~0.8 visible neighbours; 3 x 3 blocks: well above 2
    assert _visible_neighbours(single, 14) < 1.2 < 2.0 < _visible_neighbours(blocks, 14)


def test_the_student_sees_each_image_m_times_and_the_teacher_once():
    objective = _objective(num_masks=3).train()
    batch = _batch(objective, n=4)
    seen: dict[str, list] = {"teacher": [], "student": [], "student_tokens": []}
    objective.teacher.patch_embed.register_forward_hook(lambda m, a, o: seen["teacher"].append(a[0]))
    objective.encoder.patch_embed.register_forward_hook(lambda m, a, o: seen["student"].append(a[0]))
    objective.encoder.blocks[0].register_forward_hook(lambda m, a, o: seen["student_tokens"].append(a[0]))
    objective(batch)
    assert len(seen["teacher"]) == 1 and len(seen["student"]) == 1
    images = objective.normalize(batch["image"])
    assert torch.equal(seen["teacher"][0], images)
    student = seen["student"][0]
    assert student.shape == (12, 3, 16, 16)
    for i in range(4):
        for j in range(3):
            assert torch.equal(student[i * 3 + j], images[i])
    # 1 class token + the 3 visible patches of 16 (80% hidden) per student row
    assert seen["student_tokens"][0].shape == (12, 1 + 3, 32)


def test_the_published_encoder_is_the_student():
    objective = _objective()
    encoder_keys = set(objective.encoder.state_dict())
    assert not any("teacher" in k for k in encoder_keys)
    keys = set(objective.state_dict())
    assert {k for k in keys if k.startswith("teacher.")} == {f"teacher.{k}" for k in encoder_keys}
    assert {f"encoder.{k}" for k in encoder_keys} <= keys
    assert {"decoder.blocks.0.weight", "decoder.proj.weight"} <= keys


@pytest.mark.parametrize("encoder_kwargs, cfg, match", [
    ({}, {"top_k": 3}, r"objective\.top_k: 3 is out of range; allowed: at most the encoder's 2 blocks"),
    ({}, {"decoder_groups": 64, "decoder_dim": 64}, r"objective\.decoder_groups: 64 .*divisor of the encoder width 32"),
    ({"class_token": False, "global_pool": "avg"}, {}, r"objective\.cls_loss: 0\.01 needs a class token"),
])
def test_settings_the_encoder_cannot_take_are_config_errors(encoder_kwargs, cfg, match):
    with pytest.raises(ConfigError, match=match):
        _objective(encoder_kwargs, **cfg)
    assert _objective({"class_token": False, "global_pool": "avg"}, cls_loss=0.0)


@pytest.mark.parametrize("values, match", [
    ({"decoder_dim": 40, "decoder_groups": 16}, r"objective\.decoder_dim: 40 is out of range"),
    ({"decoder_kernel": 4}, r"objective\.decoder_kernel: 4 is out of range; allowed: an odd number"),
    ({"top_k": 0}, r"objective\.top_k"),
])
def test_bad_values_are_refused_when_the_config_loads(values, match):
    from sslvit.training import config as config_lib

    keys = [f"objective.{k}={v}" for k, v in values.items()]
    with pytest.raises(ConfigError, match=match):
        config_lib.load(ROOT / "sslvit" / "configs" / "data2vec2_digits.yaml", keys)


# end to end ------------------------------------------------------------------------------------
RUN = ["model.name=vit_pico_patch4", "objective.top_k=2", "objective.num_masks=2", "objective.decoder_dim=32",
       "objective.decoder_layers=1", "objective.ema_decay=0.9", "objective.ema_end_decay=0.99",
       "objective.ema_anneal_steps=4", "data.batch_size=16", "data.num_workers=0", "train.progress=false",
       "train.trackers=[]", "train.log_every=1", "optim.warmup_steps=1", "optim.base_lr=1e-3"]
CONFIG = ROOT / "sslvit" / "configs" / "data2vec2_digits.yaml"


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> str:
    from sslvit.data import ensure_digits_shards

    return str(ensure_digits_shards(tmp_path_factory.mktemp("digits") / "digits", image_size=32)["train"])


class _Stop(Exception):
    pass


def test_a_resumed_run_is_bitwise_the_uninterrupted_one_teacher_included(shards, tmp_path, monkeypatch):
    from sslvit.training import config as config_lib
    from sslvit.training import train

    monkeypatch.chdir(tmp_path)
    common = [*RUN, f"data.train_shards={shards}", f"train.out_dir={tmp_path}", "train.steps=5",
              "train.ckpt_every=2", "train.keep_last=0"]
    train(config_lib.load(CONFIG, [*common, "train.name=full"]))

    def stop(step: int) -> None:
        if step == 3:
            raise _Stop

    with pytest.raises(_Stop):
        train(config_lib.load(CONFIG, [*common, "train.name=cut"]), on_step_end=stop)
    train(config_lib.load(CONFIG, [*common, "train.name=cut", "train.resume=latest"]))

    a = load_file(str(tmp_path / "full" / "objective.safetensors"))
    b = load_file(str(tmp_path / "cut" / "objective.safetensors"))
    assert a.keys() == b.keys() and any(k.startswith("teacher.") for k in a)
    for key in a:
        assert torch.equal(a[key], b[key]), key
    early = load_file(str(tmp_path / "full" / "checkpoints" / "step_0000002" / "model.safetensors"))
    teacher = [k for k in a if k.startswith("teacher.blocks.")]
    assert any(not torch.equal(early[k], a[k]) for k in teacher), "the teacher moved after step 2"
    assert any(not torch.equal(a[k], a["encoder." + k.removeprefix("teacher.")]) for k in teacher)
    published = load_file(str(tmp_path / "full" / "model.safetensors"))
    assert not any("teacher" in k for k in published)
    assert all(torch.equal(v, a[f"encoder.{k}"]) for k, v in published.items())


TWO_RANKS = """
import hashlib, os, sys
import torch
import sslvit.training.run as run
from sslvit.training import config, train

cfg = config.load(sys.argv[1], sys.argv[2:])
built = []
real = run.build_objective
def build(*args, **kwargs):
    built.append(real(*args, **kwargs))
    return built[-1]
run.build_objective = build
train(cfg)
digest = hashlib.sha256()
for name, value in sorted(built[0].teacher.state_dict().items()):
    digest.update(name.encode() + value.contiguous().numpy().tobytes())
with open(f"teacher-{os.environ['RANK']}.txt", "w") as f:
    f.write(digest.hexdigest())
"""


def test_two_ranks_end_with_equal_teachers(shards, tmp_path):
    script = tmp_path / "two_ranks.py"
    script.write_text(TWO_RANKS)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ACCELERATE_", "RANK", "WORLD_SIZE", "LOCAL_RANK"))}
    env.update(PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29571",
           str(script), str(CONFIG), *RUN, f"data.train_shards={shards}", f"train.out_dir={tmp_path / 'runs'}",
           "train.steps=3", "train.name=two"]
    done = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    first, second = (Path(tmp_path / f"teacher-{r}.txt").read_text() for r in (0, 1))
    assert first == second
    saved = load_file(str(tmp_path / "runs" / "two" / "objective.safetensors"))
    digest = hashlib.sha256()
    for name in sorted(k for k in saved if k.startswith("teacher.")):
        digest.update(name.removeprefix("teacher.").encode() + saved[name].contiguous().numpy().tobytes())
    assert digest.hexdigest() == first


def test_the_hook_runs_once_per_optimizer_step_not_per_micro_batch(shards, tmp_path, monkeypatch):
    from sslvit.objectives.data2vec2 import Data2Vec2
    from sslvit.training import config as config_lib
    from sslvit.training import train

    calls = []
    monkeypatch.setattr(Data2Vec2, "after_optimizer_step", lambda self, step, total: calls.append((step, total)))
    monkeypatch.chdir(tmp_path)
    train(config_lib.load(CONFIG, [*RUN, f"data.train_shards={shards}", f"train.out_dir={tmp_path}",
                                   "train.steps=2", "train.grad_accum=2", "train.name=accum"]))
    assert calls == [(1, 2), (2, 2)]
