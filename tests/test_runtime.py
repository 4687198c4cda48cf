"""What decides a run's precision, accumulation and compilation; the run directory; progress lines."""

from __future__ import annotations

import io
import sys
from pathlib import Path

import pytest
import torch
from run_helpers import TINY, bar_images, bar_shards
from torch import nn

from sslvit import progress as progress_lib
from sslvit.config import ConfigError
from sslvit.training import config as config_lib
from sslvit.training import launch as runtime
from sslvit.training.launch import (
    RunDirExistsError,
    make_accelerator,
    resolve_compile,
    resolve_grad_accum,
    resolve_launch_options,
    resolve_precision,
    resolve_run_dir,
)

ROOT = Path(__file__).resolve().parents[1]



# ---------------------------------------------------------------- precision


def test_auto_precision_takes_accelerates_mixed_precision():
    env = {"ACCELERATE_MIXED_PRECISION": "bf16"}
    assert resolve_precision("auto", on_gpu=False, bf16_ok=False, env=env) == (
        "bf16", "accelerate's mixed_precision", None)
    assert resolve_precision("auto", on_gpu=True, bf16_ok=True, env={"ACCELERATE_MIXED_PRECISION": "no"})[0] == "no"


def test_auto_precision_without_accelerate_is_bf16_on_a_bf16_gpu_and_fp32_on_cpu():
    assert resolve_precision("auto", on_gpu=True, bf16_ok=True, env={})[0] == "bf16"
    assert resolve_precision("auto", on_gpu=True, bf16_ok=False, env={})[0] == "no"
    assert resolve_precision("auto", on_gpu=False, bf16_ok=False, env={})[0] == "no"


def test_explicit_precision_overrides_accelerate_and_says_so():
    value, source, note = resolve_precision("no", on_gpu=False, bf16_ok=False,
                                            env={"ACCELERATE_MIXED_PRECISION": "bf16"})
    assert (value, source) == ("no", "train.precision")
    assert note == "train.precision=no overrides accelerate's mixed_precision=bf16"
    assert resolve_precision("bf16", on_gpu=False, bf16_ok=False, env={"ACCELERATE_MIXED_PRECISION": "bf16"})[2] is None


def test_bf16_on_cpu_is_kept_and_fp16_on_cpu_is_refused():
    assert resolve_precision("bf16", on_gpu=False, bf16_ok=False, env={})[0] == "bf16"
    with pytest.raises(ConfigError, match=r"train.precision=fp16: fp16 mixed precision needs a GPU.*bf16"):
        resolve_precision("fp16", on_gpu=False, bf16_ok=False, env={})
    with pytest.raises(ConfigError, match=r"accelerate's mixed_precision=fp16"):
        resolve_precision("auto", on_gpu=False, bf16_ok=False, env={"ACCELERATE_MIXED_PRECISION": "fp16"})


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU path")
def test_bf16_asked_on_cpu_runs_the_forward_in_bf16(fresh_accelerate, tmp_path):
    cfg = config_lib.load(None, ["train.precision=bf16", "train.trackers=[]"])
    options = resolve_launch_options(cfg)
    assert (options.precision, options.precision_source) == ("bf16", "train.precision")
    accelerator = make_accelerator(cfg, tmp_path, options)
    assert accelerator.mixed_precision == "bf16"
    model = accelerator.prepare(nn.Sequential(nn.Linear(8, 16), nn.GELU(), nn.Linear(16, 4)))
    seen = []
    model[0].register_forward_hook(lambda mod, args, out: seen.append(out.dtype))
    out = model(torch.randn(2, 8))
    assert seen == [torch.bfloat16], "the first layer's activation is computed in bf16"
    assert out.dtype in (torch.bfloat16, torch.float32)
    assert "precision bf16 (train.precision)" in options.describe()


def test_launcher_precision_reaches_the_accelerator(fresh_accelerate, tmp_path):
    fresh_accelerate.setenv("ACCELERATE_MIXED_PRECISION", "bf16")
    cfg = config_lib.load(None, ["train.trackers=[]"])
    accelerator = make_accelerator(cfg, tmp_path)
    assert accelerator.mixed_precision == "bf16"


def test_explicit_precision_wins_over_the_launcher_with_a_line(fresh_accelerate, tmp_path, capsys):
    fresh_accelerate.setenv("ACCELERATE_MIXED_PRECISION", "bf16")
    cfg = config_lib.load(None, ["train.precision='no'", "train.trackers=[]"])
    accelerator = make_accelerator(cfg, tmp_path)
    assert accelerator.mixed_precision == "no"
    assert "train.precision=no overrides accelerate's mixed_precision=bf16" in capsys.readouterr().out


# ---------------------------------------------------------------- gradient accumulation and compilation


def test_grad_accum_comes_from_accelerate_unless_set():
    assert resolve_grad_accum(None, env={}, launcher_argv=[]) == (1, "default", None)
    assert resolve_grad_accum(None, env={"ACCELERATE_GRADIENT_ACCUMULATION_STEPS": "4"}, launcher_argv=[])[:2] == (
        4, "accelerate's gradient_accumulation_steps")
    argv = ["python", "-m", "accelerate.commands.launch", "--gradient_accumulation_steps", "4", "pipelines/pretrain.py"]
    assert resolve_grad_accum(None, env={}, launcher_argv=argv)[0] == 4
    assert resolve_grad_accum(None, env={}, launcher_argv=[*argv[:3], "--gradient-accumulation-steps=3"])[0] == 3
    value, source, note = resolve_grad_accum(2, env={"ACCELERATE_GRADIENT_ACCUMULATION_STEPS": "4"}, launcher_argv=[])
    assert (value, source) == (2, "train.grad_accum")
    assert note == "train.grad_accum=2 overrides accelerate's gradient_accumulation_steps=4"


def test_accelerator_does_not_scale_the_loss_a_second_time(fresh_accelerate, tmp_path):
    fresh_accelerate.setenv("ACCELERATE_GRADIENT_ACCUMULATION_STEPS", "4")
    cfg = config_lib.load(None, ["train.trackers=[]"])
    options = resolve_launch_options(cfg)
    assert options.grad_accum == 4
    accelerator = make_accelerator(cfg, tmp_path, options)
    assert accelerator.gradient_accumulation_steps == 1, "the loop divides by grad_accum itself"


def test_compile_comes_from_accelerate_unless_set():
    assert resolve_compile(None, env={}) == (None, "default: off", None)
    assert resolve_compile(None, env={"ACCELERATE_DYNAMO_BACKEND": "INDUCTOR"})[:2] == (None, "accelerate's dynamo_backend")
    assert resolve_compile(True, env={}) == ("inductor", "train.compile", None)
    assert resolve_compile(True, env={"ACCELERATE_DYNAMO_BACKEND": "EAGER"})[0] == "eager"
    assert resolve_compile(False, env={"ACCELERATE_DYNAMO_BACKEND": "INDUCTOR"}) == (
        "no", "train.compile", "train.compile=false overrides accelerate's dynamo_backend=inductor")
    cfg = config_lib.load(None, ["train.trackers=[]"])
    launched = resolve_launch_options(cfg, env={"ACCELERATE_DYNAMO_BACKEND": "INDUCTOR"})
    assert launched.describe().endswith("compile inductor (accelerate's dynamo_backend)")
    assert "compile" not in resolve_launch_options(cfg, env={"ACCELERATE_DYNAMO_BACKEND": "NO"}).describe()


def test_config_defaults_leave_the_three_to_accelerate():
    train = config_lib.load(None, []).train
    assert (train.precision, train.grad_accum, train.compile) == ("auto", None, None)


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> dict[str, str]:
    return bar_shards(tmp_path_factory.mktemp("bars"))


def test_launcher_flags_decide_precision_and_accumulation_of_a_run(fresh_accelerate, tmp_path, shards, capsys):
    """What ``accelerate launch --mixed_precision bf16 --gradient_accumulation_steps 2`` hands the process:
    ACCELERATE_MIXED_PRECISION in the environment, the accumulation on the launcher's command line."""
    from sslvit.training import train

    fresh_accelerate.setenv("ACCELERATE_MIXED_PRECISION", "bf16")
    argv = ["python", "-m", "accelerate.commands.launch", "--mixed_precision", "bf16",
            "--gradient_accumulation_steps", "2", "pipelines/pretrain.py"]
    fresh_accelerate.setattr(runtime, "_launcher_argv", lambda: argv)
    cfg = config_lib.load(None, [*TINY, f"data.train_shards={shards['train']}", "train.steps=1",
                                 "train.trackers=[]", f"train.out_dir={tmp_path}", "train.name=launched"])
    from sslvit.training import build_encoder

    encoder = build_encoder(cfg)
    dtypes = []
    encoder.blocks[0].mlp.fc1.register_forward_hook(lambda mod, args, out: dtypes.append(out.dtype))
    result = train(cfg, encoder=encoder)
    assert dtypes and set(dtypes) == {torch.bfloat16}, "the training forward runs under bf16 autocast on the CPU"
    line = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("run "))
    assert "precision bf16 (accelerate's mixed_precision)" in line
    assert "grad_accum 2 (accelerate's gradient_accumulation_steps)" in line
    assert "global batch 32" in line and "1 process(es) on cpu" in line
    assert result.steps == 1


# ---------------------------------------------------------------- the run directory


def _cfg(tmp_path: Path, *overrides: str):
    return config_lib.load(None, [f"train.out_dir={tmp_path}", "train.name=r", *overrides])


class _One:
    num_processes = 1
    is_main_process = True


def test_a_fresh_run_into_a_finished_run_directory_is_refused(tmp_path):
    run = tmp_path / "r"
    run.mkdir()
    (run / "model.safetensors").write_bytes(b"weights")
    (run / "metrics.jsonl").write_text('{"step": 1}\n')
    with pytest.raises(RunDirExistsError) as err:
        resolve_run_dir(_cfg(tmp_path), _One())
    message = str(err.value)
    assert str(run) in message and "model.safetensors" in message
    assert "train.overwrite=true" in message and "train.resume=latest" in message
    assert (run / "model.safetensors").read_bytes() == b"weights"


def test_checkpoints_alone_count_as_outputs_and_config_alone_does_not(tmp_path):
    run = tmp_path / "r"
    (run / "checkpoints").mkdir(parents=True)
    (run / "config.yaml").write_text("train: {}\n")
    assert resolve_run_dir(_cfg(tmp_path), _One()) == run  # an empty checkpoints/ and a config only
    (run / "checkpoints" / "step_0000002").mkdir()
    with pytest.raises(RunDirExistsError, match="checkpoints"):
        resolve_run_dir(_cfg(tmp_path), _One())


def test_rerunning_a_runs_own_config_is_refused_before_any_work(fresh_accelerate, tmp_path, shards):
    from sslvit.training import train

    cfg = config_lib.load(None, [*TINY, f"data.train_shards={shards['train']}", "train.steps=1",
                                 "train.trackers=[]", f"train.out_dir={tmp_path}", "train.name=done",
                                 "train.overwrite=true"])
    first = train(cfg)
    before = first.model_path.read_bytes(), (first.run_dir / "metrics.jsonl").read_text()
    again = config_lib.load(first.run_dir / "config.yaml")
    with pytest.raises(RunDirExistsError, match=r"train.overwrite=true.*train.resume=latest"):
        train(again)
    assert (first.model_path.read_bytes(), (first.run_dir / "metrics.jsonl").read_text()) == before


def test_the_pretrain_command_refuses_the_rerun_with_status_2(fresh_accelerate, tmp_path, shards, capsys):
    from sslvit.cli.pretrain import main

    run = tmp_path / "done"
    run.mkdir()
    (run / "model.safetensors").write_bytes(b"weights")
    status = main([*TINY, f"data.train_shards={shards['train']}", "train.steps=1", "train.trackers=[]",
                   f"train.out_dir={tmp_path}", "train.name=done"])
    assert status == 2
    err = capsys.readouterr().err
    assert str(run) in err and "train.overwrite=true" in err
    assert (run / "model.safetensors").read_bytes() == b"weights"


def test_overwrite_removes_the_old_outputs_and_resume_keeps_them(tmp_path, capsys):
    run = tmp_path / "r"
    (run / "checkpoints" / "step_0000002").mkdir(parents=True)
    (run / "model.safetensors").write_bytes(b"weights")
    (run / "logs" / "r").mkdir(parents=True)
    assert resolve_run_dir(_cfg(tmp_path), _One(), resuming=True) == run
    assert (run / "model.safetensors").exists()
    assert resolve_run_dir(_cfg(tmp_path, "train.overwrite=true"), _One()) == run
    assert not (run / "model.safetensors").exists() and not (run / "checkpoints").exists()
    assert not (run / "logs").exists()
    assert f"train.overwrite=true: removing model.safetensors, checkpoints, logs from {run}" in capsys.readouterr().out


# ---------------------------------------------------------------- progress


def test_progress_prints_periodic_lines_when_not_a_terminal(monkeypatch):
    monkeypatch.setattr(progress_lib, "LINE_EVERY_S", 0.0)
    stream = io.StringIO()
    monkeypatch.setattr(sys, "stderr", stream)
    bar = progress_lib.progress(range(3), desc="features train", unit="batch")
    assert isinstance(bar, progress_lib.LineProgress)
    assert list(bar) == [0, 1, 2]
    lines = stream.getvalue().splitlines()
    assert lines[0].startswith("features train: 1/3 batch (33%)")
    assert lines[-1].startswith("features train: 3/3 batch (100%)") and lines[-1].endswith("(done)")


def test_progress_is_silent_when_disabled(monkeypatch):
    monkeypatch.setattr(progress_lib, "LINE_EVERY_S", 0.0)
    stream = io.StringIO()
    monkeypatch.setattr(sys, "stderr", stream)
    assert list(progress_lib.progress(range(3), desc="x", enabled=False)) == [0, 1, 2]
    assert stream.getvalue() == ""


@pytest.fixture
def progress_lines(monkeypatch) -> None:
    """A progress line at every update (pytest's captured stderr is not a terminal)."""
    monkeypatch.setattr(progress_lib, "LINE_EVERY_S", 0.0)


@pytest.fixture
def pico_checkpoint(tmp_path) -> Path:
    from sslvit.checkpoint import save_model
    from sslvit.models import create_model

    torch.manual_seed(0)
    model = create_model("vit_pico_patch4")
    return save_model(model, tmp_path / "ckpt" / "model.safetensors", model.get_config())


def test_knn_and_probe_report_feature_extraction_and_fitting(fresh_accelerate, progress_lines, shards,
                                                              pico_checkpoint, tmp_path, capsys):
    from sslvit.evaluate import KnnConfig, ProbeConfig, run_knn, run_linear_probe

    common = dict(checkpoint=str(pico_checkpoint), train=shards["train"], val=shards["val"], batch_size=32,
                  num_workers=0, out_dir=str(tmp_path / "eval"), cache=False)
    run_knn(KnnConfig(**common))
    run_linear_probe(ProbeConfig(**common, epochs=2, warmup_epochs=1, lrs=(0.1,), weight_decays=(0.0,)))
    lines = capsys.readouterr().err.splitlines()
    for start in ("features train: 5/5 batch (100%)", "features val: 4/4 batch (100%)", "kNN: 1/1 chunk",
                  "probe sweep (1 heads): 2/2 epoch", "probe refit: 2/2 epoch"):
        assert any(line.startswith(start) for line in lines), (start, lines)


def test_finetune_progress_is_labelled_finetune(fresh_accelerate, progress_lines, shards, pico_checkpoint, tmp_path,
                                                capsys):
    from sslvit.evaluate.common import load_config
    from sslvit.evaluate.finetune import FinetuneConfig, run_finetune

    cfg = load_config(FinetuneConfig, None, [
        f"finetune.checkpoint={pico_checkpoint}", f"data.train_shards={shards['train']}",
        f"data.val_shards={shards['val']}", "data.batch_size=32", "data.num_workers=0", "train.steps=1",
        "train.progress=true", "train.trackers=[]", f"train.out_dir={tmp_path / 'runs'}", "train.name=ft"])
    run_finetune(cfg)
    lines = capsys.readouterr().err.splitlines()
    assert any(line.startswith("finetune: 1/1 step (100%)") for line in lines), lines
    assert not any(line.startswith("pretrain") for line in lines)


def test_a_digits_build_says_so_and_reports_progress(progress_lines, monkeypatch, tmp_path, capsys):
    from sslvit.data import digits

    monkeypatch.setattr(digits, "digits_arrays", lambda size, progress=False: {
        "train": bar_images(30, 0), "val": bar_images(20, 1)})
    digits.ensure_digits_shards(tmp_path / "digits", image_size=32)
    out = capsys.readouterr()
    assert "building the built-in digits shards (32 px) in" in out.out
    lines = out.err.splitlines()
    assert any(line.startswith("digits-train shards: 30/30 img (100%)") for line in lines), lines
    digits.ensure_digits_shards(tmp_path / "digits", image_size=32)  # reused: says nothing
    assert capsys.readouterr().out == ""


def test_a_fashion_mnist_build_says_so_and_reports_progress(progress_lines, tmp_path, capsys):
    import gzip

    import numpy as np

    from sslvit.data import fashion_mnist as fm

    source = tmp_path / "src"
    source.mkdir()
    rng = np.random.default_rng(0)

    def idx(name: str, array: np.ndarray, magic: int) -> None:
        header = magic.to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in array.shape)
        (source / f"{name}.gz").write_bytes(gzip.compress(header + array.astype(np.uint8).tobytes()))

    idx(fm.FILES["train_images"], rng.integers(0, 255, (40, 28, 28)), fm.IMAGES_MAGIC)
    idx(fm.FILES["train_labels"], np.arange(40) % 10, fm.LABELS_MAGIC)
    idx(fm.FILES["test_images"], rng.integers(0, 255, (20, 28, 28)), fm.IMAGES_MAGIC)
    idx(fm.FILES["test_labels"], np.arange(20) % 10, fm.LABELS_MAGIC)
    fm.ensure_fashion_mnist_shards(tmp_path / "fm", 32, source, val_size=10)
    out = capsys.readouterr()
    assert "building the Fashion-MNIST shards (32 px) in" in out.out
    lines = out.err.splitlines()
    for start in ("fashion_mnist-train resize: 30/30 img", "fashion_mnist-test shards: 20/20 img (100%)"):
        assert any(line.startswith(start) for line in lines), (start, lines)


def test_nvjpeg_on_a_machine_without_a_gpu_is_one_line_and_status_2(fresh_accelerate, tmp_path, shards, capsys):
    from sslvit.cli.pretrain import main

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU: data.jpeg_decode=nvjpeg is accepted")
    status = main([*TINY, f"data.train_shards={shards['train']}", "train.steps=1", "train.trackers=[]",
                   f"train.out_dir={tmp_path}", "train.name=nv", "data.jpeg_decode=nvjpeg"])
    assert status == 2
    err = capsys.readouterr().err
    assert "data.jpeg_decode=nvjpeg" in err and "no CUDA device" in err and "data.jpeg_decode=cpu" in err
    assert "Traceback" not in err and not (tmp_path / "nv" / "model.safetensors").exists()
