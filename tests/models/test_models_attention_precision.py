"""Attention under CPU bf16 autocast runs in fp32 (torch's bf16 CPU flash-attention backward is slow)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from sslvit.models.layers import Attention, attention


def _qkv(seed: int = 0, tokens: int = 17) -> tuple[torch.Tensor, ...]:
    gen = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(4, 2, tokens, 8, generator=gen).bfloat16().requires_grad_() for _ in range(3))


def test_outside_autocast_it_is_sdpa_itself():
    q, k, v = (t.detach().float() for t in _qkv())
    assert torch.equal(attention(q, k, v), F.scaled_dot_product_attention(q, k, v))
    bias = torch.randn(2, 17, 17)
    assert torch.equal(attention(q, k, v, bias), F.scaled_dot_product_attention(q, k, v, attn_mask=bias))


def test_under_cpu_bf16_autocast_it_runs_in_fp32_and_gives_bf16():
    q, k, v = _qkv()
    bias = torch.randn(2, 17, 17).bfloat16()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = attention(q, k, v, bias)
    assert out.dtype == torch.bfloat16
    expected = F.scaled_dot_product_attention(q.float(), k.float(), v.float(), attn_mask=bias.float()).bfloat16()
    assert torch.equal(out, expected)
    out.float().square().sum().backward()
    assert all(t.grad is not None and t.grad.dtype == torch.bfloat16 and t.grad.abs().sum() > 0 for t in (q, k, v))


def test_the_vit_attention_block_takes_the_fp32_path_under_autocast(monkeypatch):
    module = Attention(16, num_heads=2)
    x = torch.randn(3, 9, 16)
    seen = []
    real = F.scaled_dot_product_attention

    def spy(q, k, v, **kw):
        seen.append(q.dtype)
        return real(q, k, v, **kw)

    monkeypatch.setattr(F, "scaled_dot_product_attention", spy)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = module(x)
    assert seen == [torch.float32] and out.dtype == torch.bfloat16
