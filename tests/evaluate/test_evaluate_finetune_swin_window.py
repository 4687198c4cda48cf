"""Fine-tuning a Swin checkpoint with another window, as SimMIM's Swin-B recipe does (pretrained with
windows of 6 at 192 px, fine-tuned with 7 at 224): model.name picks the window, the tables are resampled."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from sslvit.checkpoint import save_model
from sslvit.evaluate.common import load_config
from sslvit.evaluate.finetune import FinetuneConfig, prepare_finetune
from sslvit.models import create_model
from sslvit.models.swin_layers import resample_bias_table
from sslvit.training import train

PICO = "swin_pico_patch2_window4_32"


def test_a_window_3_checkpoint_fine_tunes_with_windows_of_4(
    digits: dict[str, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    torch.manual_seed(0)
    pretrained = create_model(PICO, img_size=24, window_size=3)  # grids 12, 6, 3
    checkpoint = save_model(pretrained, tmp_path / "pre" / "model.safetensors", pretrained.get_config())
    cfg = load_config(FinetuneConfig, None, [
        f"finetune.checkpoint={checkpoint}", f"data.train_shards={digits['train']}",
        f"data.val_shards={digits['val']}", "data.image_size=32", "data.batch_size=16", "data.num_workers=0",
        f"model.name={PICO}", "optim.lr=1e-3", "optim.warmup_steps=0", "train.steps=1", "train.progress=false",
        "train.trackers=[]", f"train.out_dir={tmp_path / 'runs'}", "train.name=ft"])
    capsys.readouterr()
    cfg, encoder, _ = prepare_finetune(cfg)
    assert "6 relative_position_bias_table(s) resampled" in capsys.readouterr().out
    assert encoder.get_config()["window_size"] == 4 and encoder.img_size == (32, 32)
    old = pretrained.state_dict()
    for name, table in encoder.state_dict().items():
        if name.endswith("relative_position_bias_table"):
            assert table.shape[0] == 49
            torch.testing.assert_close(table, resample_bias_table(old[name], (4, 4)), rtol=0, atol=0)
    assert train(cfg, encoder=encoder).steps == 1
