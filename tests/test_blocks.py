"""Shared transformer blocks: masked SDPA attention, adaLN-Zero, timestep and position embeddings, patches."""

from __future__ import annotations

import math

import pytest
import torch

from lostcli.errors import ConfigError
from lostcli.models.blocks import (Attention, Block, DiTBlock, FinalLayer, PatchEmbed, TimestepEmbedder, modulate,
                                   sincos_1d, sincos_2d, unpatchify)


pytestmark = pytest.mark.usefixtures("one_thread")


def _perturb(module: torch.nn.Module, std: float = 0.1) -> None:
    """Move every parameter off its init (so zero-init layers pass signal and gradient)."""
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn_like(p) * std)


def test_attention_matches_explicit_masked_softmax():
    attn = Attention(8, heads=2)
    x = torch.randn(2, 5, 8)
    mask = torch.rand(5, 5) > 0.4
    mask |= torch.eye(5, dtype=torch.bool)  # every query sees at least itself
    got = attn(x, mask)
    q, k, v = attn.qkv(x).view(2, 5, 3, 2, 4).permute(2, 0, 3, 1, 4)  # [B, h, N, d]
    scores = (q @ k.transpose(-1, -2)) / math.sqrt(4)
    scores = scores.masked_fill(~mask, float("-inf"))
    ref = (scores.softmax(-1) @ v).transpose(1, 2).reshape(2, 5, 8)
    torch.testing.assert_close(got, attn.proj(ref), atol=1e-5, rtol=1e-5)
    assert not torch.allclose(got, attn(x), atol=1e-4)  # the mask changed something


def test_block_mask_blocks_information_flow():
    block = Block(16, heads=2)
    x = torch.randn(1, 6, 16)
    mask = torch.ones(6, 6, dtype=torch.bool)
    mask[:3, 3:] = False  # tokens 0..2 never see 3..5
    y = block(x, mask)
    x2 = x.clone()
    x2[:, 3:] += torch.randn(1, 3, 16)
    y2 = block(x2, mask)
    torch.testing.assert_close(y2[:, :3], y[:, :3], atol=1e-6, rtol=0)
    assert (y2[:, 3:] - y[:, 3:]).abs().max() > 1e-2


def test_dit_block_is_identity_after_zero_init_and_not_after():
    block = DiTBlock(32, heads=4)
    block.zero_init()
    x, c = torch.randn(3, 7, 32), torch.randn(3, 32)
    assert torch.equal(block(x, c), x)
    _perturb(block.adaLN_modulation)
    assert (block(x, c) - x).abs().max() > 1e-3


def test_dit_block_every_parameter_gets_a_gradient():
    block = DiTBlock(32, heads=4)
    block.zero_init()
    _perturb(block)
    x, c = torch.randn(2, 5, 32), torch.randn(2, 32)
    block(x, c).square().mean().backward()
    for name, p in block.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_final_layer_zero_init_outputs_zero():
    layer = FinalLayer(16, patch_size=2, out_channels=3)
    layer.zero_init()
    out = layer(torch.randn(2, 4, 16), torch.randn(2, 16))
    assert out.shape == (2, 4, 12) and torch.count_nonzero(out) == 0


def test_modulate_values():
    x = torch.ones(1, 2, 3)
    out = modulate(x, shift=torch.tensor([[1.0, 0.0, -1.0]]), scale=torch.tensor([[0.0, 1.0, -1.0]]))
    assert out.tolist() == [[[2.0, 2.0, -1.0], [2.0, 2.0, -1.0]]]


def test_timestep_embedding_values():
    t = torch.tensor([0.0, 3.0])
    emb = TimestepEmbedder.timestep_embedding(t, 8, max_period=10000.0)  # [cos x4 | sin x4]
    assert emb.shape == (2, 8)
    torch.testing.assert_close(emb[0], torch.tensor([1.0] * 4 + [0.0] * 4))
    freqs = torch.tensor([10000 ** (-i / 4) for i in range(4)])
    torch.testing.assert_close(emb[1], torch.cat([torch.cos(3 * freqs), torch.sin(3 * freqs)]))
    assert TimestepEmbedder(16)(t).shape == (2, 16)


def test_sincos_2d_layout():
    pe = sincos_2d(8, 2, 3)  # [6, 8]: first half rows, second half columns, row-major
    assert pe.shape == (6, 8)
    torch.testing.assert_close(pe[0], torch.tensor([0.0, 0.0, 1.0, 1.0] * 2))
    torch.testing.assert_close(pe[:, :4].view(2, 3, 4)[:, 0], sincos_1d(4, torch.arange(2)))  # rows
    torch.testing.assert_close(pe[:, 4:].view(2, 3, 4)[0], sincos_1d(4, torch.arange(3)))  # columns
    assert torch.equal(pe[1, :4], pe[0, :4]) and not torch.equal(pe[3, :4], pe[0, :4])
    assert torch.unique(pe, dim=0).shape[0] == 6
    with pytest.raises(ConfigError):
        sincos_2d(6, 2, 2)


def test_patch_embed_and_unpatchify_agree_on_layout():
    C, p, H, W = 3, 2, 4, 6
    embed = PatchEmbed(C, p * p * C, p)
    with torch.no_grad():  # output channel (i*p + j)*C + c copies x[c, i, j] of its patch
        embed.proj.weight.zero_()
        embed.proj.bias.zero_()
        for i in range(p):
            for j in range(p):
                for c in range(C):
                    embed.proj.weight[(i * p + j) * C + c, c, i, j] = 1.0
    x = torch.randn(2, C, H, W)
    tokens = embed(x)  # [B, h*w, p*p*C]
    assert tokens.shape == (2, (H // p) * (W // p), p * p * C)
    torch.testing.assert_close(tokens[0, 1, :C], x[0, :, 0, 2])  # token 1 = row 0, column 1 of patches
    torch.testing.assert_close(unpatchify(tokens, C, H // p, W // p, p), x)
