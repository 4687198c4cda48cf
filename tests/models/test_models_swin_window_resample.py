"""Swin checkpoints of one window size loaded into another: SimMIM's resampling of the relative
position bias tables (``utils.remap_pretrained_keys_swin``), the window-6 / 192 px Swin-B variant."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from sslvit.checkpoint import load_checkpoint
from sslvit.checkpoint.format import save_model
from sslvit.errors import InputError
from sslvit.models import create_model
from sslvit.models.swin_layers import cubic_interpolation_matrix, resample_bias_table, simmim_offsets

interpolate = pytest.importorskip("scipy.interpolate")
PICO = "swin_pico_patch2_window4_32"


def simmim_reference(table: torch.Tensor, dst_size: int) -> torch.Tensor:
    """SimMIM's remap_pretrained_keys_swin for one table, line by line; ``interpolate.interp2d(x, y, z,
    kind='cubic')`` (removed from scipy) written as scipy's documented replacement on a grid,
    ``RectBivariateSpline(x, y, z.T)`` evaluated as ``(dx, dy).T``."""
    L1, nH1 = table.size()
    src_size = int(L1**0.5)

    def geometric_progression(a, r, n):
        return a * (1.0 - r**n) / (1.0 - r)

    left, right = 1.01, 1.5
    while right - left > 1e-6:
        q = (left + right) / 2.0
        gp = geometric_progression(1, q, src_size // 2)
        if gp > dst_size // 2:
            right = q
        else:
            left = q
    dis = []
    cur = 1
    for i in range(src_size // 2):
        dis.append(cur)
        cur += q ** (i + 1)
    r_ids = [-_ for _ in reversed(dis)]
    x = r_ids + [0] + dis
    y = r_ids + [0] + dis
    t = dst_size // 2.0
    dx = np.arange(-t, t + 0.1, 1.0)
    dy = np.arange(-t, t + 0.1, 1.0)
    all_rel_pos_bias = []
    for i in range(nH1):
        z = table[:, i].view(src_size, src_size).float().numpy()
        f_cubic = interpolate.RectBivariateSpline(x, y, z.T, kx=3, ky=3, s=0)
        all_rel_pos_bias.append(torch.Tensor(f_cubic(dx, dy).T).contiguous().view(-1, 1))
    return torch.cat(all_rel_pos_bias, dim=-1)


def test_offsets_are_simmims_geometric_positions() -> None:
    x, dx = simmim_offsets(11, 13)  # window 6 -> 7: 1 + q + ... + q^4 = 6
    q = x[7] - x[6]
    assert x[4:7] == [-1.0, 0.0, 1.0] and q == pytest.approx(1.0913, abs=1e-4)
    assert x[-1] == pytest.approx(6.0, abs=1e-4) and x == [-v for v in reversed(x)]
    assert dx == [float(v) for v in range(-6, 7)]


@pytest.mark.parametrize(("src", "dst"), [(11, 13), (5, 7), (13, 11), (7, 15)])
def test_resampled_table_equals_simmims_algorithm(src: int, dst: int) -> None:
    torch.manual_seed(0)
    table = torch.randn(src * src, 3)
    ours = resample_bias_table(table, ((dst + 1) // 2, (dst + 1) // 2))
    assert ours.shape == (dst * dst, 3) and ours.dtype == torch.float32
    torch.testing.assert_close(ours, simmim_reference(table, dst), rtol=1e-5, atol=1e-5)


def test_interpolation_is_exact_at_the_source_offsets_and_clamps_outside() -> None:
    x, _ = simmim_offsets(5, 7)  # [-2.5, -1, 0, 1, 2.5]
    values = torch.tensor([3.0, -1.0, 2.0, 0.5, 4.0], dtype=torch.float64)
    at_x = cubic_interpolation_matrix(x, x) @ values
    torch.testing.assert_close(at_x, values, rtol=0, atol=1e-12)
    ends = cubic_interpolation_matrix(x, [-3.0, 3.0, 9.0]) @ values  # outside: the value at the nearer end
    torch.testing.assert_close(ends, torch.tensor([3.0, 4.0, 4.0], dtype=torch.float64), rtol=0, atol=1e-12)
    cubic = torch.tensor([v**3 - 2 * v for v in x], dtype=torch.float64)  # a cubic is reproduced
    mid = cubic_interpolation_matrix(x, [-2.0, 0.5, 1.7]) @ cubic
    torch.testing.assert_close(mid, torch.tensor([v**3 - 2 * v for v in (-2.0, 0.5, 1.7)],
                                                 dtype=torch.float64), rtol=0, atol=1e-9)


def test_window_3_checkpoint_loads_into_window_4(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A pico trained at 24 px with windows of 3 (grids 12, 6, 3), loaded as the window-4 variant
    (32 px: grids 16, 8, 4): every 5 x 5 table becomes 7 x 7 with the centre offsets unchanged."""
    torch.manual_seed(0)
    small = create_model(PICO, img_size=24, window_size=3).eval()
    path = save_model(small, tmp_path / "model.safetensors", small.get_config())
    capsys.readouterr()
    model = load_checkpoint(path, model_name=PICO)
    assert "6 relative_position_bias_table(s) resampled" in capsys.readouterr().out
    assert model.get_config()["window_size"] == 4 and model.img_size == (32, 32)
    before, after = small.state_dict(), model.state_dict()
    tables = [k for k in before if k.endswith("relative_position_bias_table")]
    assert len(tables) == 6
    for key in tables:
        heads = before[key].shape[1]
        assert after[key].shape == (49, heads)
        old, new = before[key].view(5, 5, heads), after[key].view(7, 7, heads)
        torch.testing.assert_close(new[2:5, 2:5], old[1:4, 1:4], rtol=0, atol=1e-6)  # offsets -1, 0, 1
        torch.testing.assert_close(after[key], resample_bias_table(before[key], (4, 4)), rtol=0, atol=0)
        attn = model.get_submodule(key.rsplit(".", 1)[0])
        assert attn.window == (4, 4) and attn.relative_position_index.shape == (16, 16)
        assert int(attn.relative_position_index.max()) == 48
    # every other tensor is the checkpoint's
    assert all(torch.equal(after[k], v) for k, v in before.items() if k not in tables)
    assert model(torch.randn(1, 3, 32, 32)).shape == (1, 32)


def test_the_checkpoint_geometry_is_kept_without_another_window(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    torch.manual_seed(0)
    model = create_model(PICO, img_size=24, window_size=3).eval()
    path = save_model(model, tmp_path / "model.safetensors", model.get_config())
    x = torch.randn(1, 3, 24, 24)
    assert torch.equal(load_checkpoint(path)(x), model(x))  # no model name: the checkpoint's window
    same = create_model(PICO).eval()
    path = save_model(same, tmp_path / "same.safetensors", same.get_config())
    capsys.readouterr()
    again = load_checkpoint(path, model_name=PICO)
    assert "resampled" not in capsys.readouterr().out
    x = torch.randn(1, 3, 32, 32)
    assert again.get_config() == same.get_config() and torch.equal(again(x), same(x))


def test_window_2_tables_are_too_small_for_simmims_bicubic_resampling(tmp_path: Path) -> None:
    """Window 2 has 3 x 3 offsets: fewer than the 4 per axis a cubic spline needs (scipy refuses
    them too), so loading it into a window-3 model is an error naming the table."""
    torch.manual_seed(0)
    small = create_model(PICO, img_size=16, window_size=2).eval()  # grids 8, 4, 2
    with pytest.raises(Exception, match=r"mx>kx"):  # FITPACK: more points than the degree
        interpolate.RectBivariateSpline([-1, 0, 1], [-1, 0, 1], np.zeros((3, 3)), kx=3, ky=3, s=0)
    target = create_model(PICO, img_size=24, window_size=3)
    with pytest.raises(InputError, match=r"layers\.0\.blocks\.0\.attn\.relative_position_bias_table: .*window of 3"):
        target.adapt_state_dict(small.state_dict())
    with pytest.raises(InputError, match="not the"):
        resample_bias_table(torch.zeros(24, 2), (3, 3))


def test_foreign_index_and_mask_buffers_are_dropped() -> None:
    model = create_model(PICO)
    state = dict(model.state_dict())
    state["layers.0.blocks.1.attn.relative_position_index"] = torch.zeros(16, 16, dtype=torch.long)
    state["layers.0.blocks.1.attn_mask"] = torch.zeros(16, 16, 16)
    assert set(model.adapt_state_dict(state)) == set(model.state_dict())


def test_swin_base_window6_192_is_simmims_pretraining_geometry() -> None:
    with torch.device("meta"):
        model = create_model("swin_base_patch4_window6_192", num_classes=1000)
    # Swin-B at window 7 has 87,768,224; each of the 376 per-head tables has 13^2 - 11^2 = 48 rows fewer
    assert model.num_params() == 87_768_224 - 376 * 48
    grids = [block.resolution for stage in model.layers for block in stage.blocks]
    windows = {block.attn.window for stage in model.layers for block in stage.blocks}
    assert (grids[0], grids[-1], windows) == ((48, 48), (6, 6), {(6, 6)})
    assert [b.shift for b in model.layers[3].blocks] == [(0, 0), (0, 0)]  # last stage: one window, no shift
    spec = model.timm_spec()
    assert spec["architecture"] == "swin_base_patch4_window7_224" and not spec["exact"]
    assert spec["model_args"]["window_size"] == 6 and spec["model_args"]["img_size"] == 192
