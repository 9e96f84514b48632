"""Direct3D-compatible DiT: release key/shape parity (meta device), strict loading, conventions, tiny behaviour."""

import json
import math
import time

import pytest
import torch
import torch.nn.functional as F

from lostcli.errors import CheckpointError
from lostcli.latent.direct3d import TriplaneVAE
from lostcli.latent.direct3d_dit import (Direct3DDiT, DiTBlock, sincos_2d_colrow, timestep_features)
from lostcli.persist import load_strict

from conftest import shared_path

pytestmark = pytest.mark.usefixtures("one_thread")

FIXTURE = shared_path("fixtures", "direct3d_dit_state_dict.json")
TINY_TOKENS = 257  # CLS + 16 x 16 patches of a 224 image, for both towers


@pytest.fixture(scope="module")
def fixture() -> dict:
    with open(FIXTURE) as f:
        return json.load(f)


def _perturb(module: torch.nn.Module, std: float = 0.05) -> None:
    """Move every parameter off its init so the zero gates / zero output pass signal and gradient."""
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn_like(p) * std)


def _inputs(model: Direct3DDiT, B: int = 2, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    cfg = model.config
    x = torch.randn(B, cfg.in_channels, *cfg.sample_size, generator=g)
    t = torch.tensor([10.0, 731.5])[:B]
    pixel = torch.randn(B, TINY_TOKENS, cfg.pixel_channels, generator=g)
    semantic = torch.randn(B, TINY_TOKENS, cfg.semantic_channels, generator=g)
    return x, t, pixel, semantic, semantic[:, 0]


def _zero_state(fixture: dict) -> dict[str, torch.Tensor]:
    """The release's keys and shapes as zeros that take no memory (one element, broadcast with stride 0)."""
    return {k: torch.zeros((), dtype=getattr(torch, d)).expand(s) for k, s, d in fixture["state_dict"]}


# ----------------------------------------------------------------------------------------------------
# Release parity (meta device: shapes only, no 950M-parameter init)
# ----------------------------------------------------------------------------------------------------


def test_direct3d_preset_matches_release_state_dict(fixture):
    with torch.device("meta"):
        dit = Direct3DDiT.from_preset("direct3d")
    cfg = dit.config
    for name, value in fixture["constructor_args"].items():
        assert getattr(cfg, name) == value, name
    want = {k: tuple(s) for k, s, _ in fixture["state_dict"]}
    got = {k: tuple(v.shape) for k, v in dit.state_dict().items()}
    assert sorted(want.keys() - got.keys()) == [] and sorted(got.keys() - want.keys()) == []
    assert [k for k in want if want[k] != got[k]] == []
    assert list(got) == [k for k, _, _ in fixture["state_dict"]]  # even the order matches
    assert len(got) == fixture["num_keys"] == 944
    assert sum(math.prod(s) for s in got.values()) == fixture["total_params"] == 950_269_376
    for top, n in fixture["params_by_top_module"].items():
        assert sum(math.prod(s) for k, s in got.items() if k.split(".")[0] == top) == n, top
    assert "pos_embed.pos_embed" not in got and dit.pos_embed.pos_embed.shape == (1, 16 * 48, 1152)


def test_zero_release_state_dict_loads_strictly_and_bad_keys_are_named(fixture):
    sd = _zero_state(fixture)
    dit = Direct3DDiT.from_state_dict(Direct3DDiT.presets["direct3d"], sd, "model.ckpt [dit]")
    w = dit.transformer_blocks[43].attn2.to_out[0].weight.detach()
    assert w.device.type == "cpu" and w.shape == (1152, 1152) and float(w.abs().sum()) == 0.0
    pos = dit.pos_embed.pos_embed  # computed, not loaded: the buffer left the meta device
    assert pos.device.type == "cpu" and torch.equal(pos[0], sincos_2d_colrow(1152, 16, 48))

    gone = "transformer_blocks.17.attn1.to_k.bias"
    with torch.device("meta"):
        target = Direct3DDiT.from_preset("direct3d")
    missing = {k: v for k, v in sd.items() if k != gone}
    with pytest.raises(CheckpointError, match=rf"^model.ckpt: does not fit Direct3DDiT: 1 missing \(first: {gone}\)"):
        load_strict(target, missing, "model.ckpt", assign=True)
    bent = dict(sd)
    bent["adaln_single.linear.weight"] = torch.zeros(()).expand(6912, 1024)
    with pytest.raises(CheckpointError, match=r"adaln_single.linear.weight expects \[6912, 1152\], file has "
                                              r"\[6912, 1024\]"):
        load_strict(target, bent, "model.ckpt", assign=True)


# ----------------------------------------------------------------------------------------------------
# Conventions, checked by hand or against diffusers' building blocks (which the release is made of)
# ----------------------------------------------------------------------------------------------------


def test_sincos_layout_by_hand_on_a_2x3_grid():
    pe = sincos_2d_colrow(8, 2, 3)  # quarter width 2: frequencies 1 and 1/100
    assert pe.shape == (6, 8)
    for r in range(2):
        for c in range(3):
            want = [math.sin(c), math.sin(c / 100), math.cos(c), math.cos(c / 100),  # column first
                    math.sin(r), math.sin(r / 100), math.cos(r), math.cos(r / 100)]  # then row
            assert pe[r * 3 + c].tolist() == pytest.approx(want, abs=1e-7), (r, c)


def test_timestep_features_are_cos_then_sin():
    t = torch.tensor([0.0, 3.0, 978.6122])
    feats = timestep_features(t)
    assert feats.shape == (3, 256)
    assert feats[1, 0].item() == pytest.approx(math.cos(3.0)) and feats[1, 128].item() == pytest.approx(math.sin(3.0))
    f1 = math.exp(-math.log(10000) / 128)  # second frequency
    assert feats[2, 1].item() == pytest.approx(math.cos(978.6122 * f1), abs=1e-5)
    from diffusers.models.embeddings import get_timestep_embedding  # the release's Timesteps(256, True, 0)

    ref = get_timestep_embedding(t, 256, flip_sin_to_cos=True, downscale_freq_shift=0)
    torch.testing.assert_close(feats, ref, rtol=0, atol=1e-6)


def test_submodules_compute_like_the_diffusers_blocks_of_the_release():
    from diffusers.models.attention import FeedForward
    from diffusers.models.embeddings import PixArtAlphaTextProjection, TimestepEmbedding

    dit = Direct3DDiT.from_preset("tiny")
    _perturb(dit)
    D, Ds = 32, 32
    pairs = [
        (dit.adaln_single.emb.timestep_embedder, TimestepEmbedding(256, D, cond_proj_dim=Ds)),
        (dit.semantic_projection, PixArtAlphaTextProjection(Ds, D)),
        (dit.transformer_blocks[0].ff, FeedForward(D, activation_fn="gelu-approximate")),
    ]
    for ours, ref in pairs:
        ref.load_state_dict(ours.state_dict(), strict=True)  # same keys and shapes
    feats, pooled = torch.randn(3, 256), torch.randn(3, Ds)
    torch.testing.assert_close(pairs[0][0](feats, pooled), pairs[0][1](feats, condition=pooled))
    tokens = torch.randn(3, 5, D)
    torch.testing.assert_close(pairs[1][0](tokens), pairs[1][1](tokens))
    torch.testing.assert_close(pairs[2][0](tokens), pairs[2][1](tokens))


def _release_block(block: DiTBlock, x, c_semantic, c_pixel, mod):
    """The release's block written out: attention over ALL of [pixel | x] tokens, then the last N outputs kept."""
    B, N, D = x.shape
    heads = block.attn1.heads

    def attend(attn, q_in, kv_in):
        q = attn.to_q(q_in).view(B, q_in.shape[1], heads, -1).transpose(1, 2)
        k = attn.to_k(kv_in).view(B, kv_in.shape[1], heads, -1).transpose(1, 2)
        v = attn.to_v(kv_in).view(B, kv_in.shape[1], heads, -1).transpose(1, 2)
        w = (q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])).softmax(-1)
        return attn.to_out[0]((w @ v).transpose(1, 2).reshape(B, q_in.shape[1], D))

    s = (block.scale_shift_table[None] + mod.reshape(B, 6, D))
    shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = [s[:, i:i + 1] for i in range(6)]
    h = F.layer_norm(x, (D,), eps=1e-6) * (1 + scale_msa) + shift_msa
    joint = torch.cat([c_pixel, h], dim=1)
    x = x + gate_msa * attend(block.attn1, joint, joint)[:, -N:]
    x = x + attend(block.attn2, x, c_semantic)
    h = F.layer_norm(x, (D,), eps=1e-6) * (1 + scale_mlp) + shift_mlp
    return x + gate_mlp * block.ff(h)


def test_block_matches_the_release_computation():
    torch.manual_seed(1)
    dit = Direct3DDiT.from_preset("tiny")
    _perturb(dit, 0.2)
    block = dit.transformer_blocks[1].double()  # float64: the two orders of computation agree to rounding
    x, sem, pix, mod = (torch.randn(2, 48, 32, dtype=torch.float64), torch.randn(2, 7, 32, dtype=torch.float64),
                        torch.randn(2, 9, 32, dtype=torch.float64), torch.randn(2, 192, dtype=torch.float64))
    with torch.no_grad():
        ours, release = block(x, sem, pix, mod), _release_block(block, x, sem, pix, mod)
    assert (ours - x).abs().max() > 0.1  # the block does something
    torch.testing.assert_close(ours, release, rtol=1e-10, atol=1e-10)


def test_output_layout_is_the_release_unpatchify():
    torch.manual_seed(2)
    dit = Direct3DDiT.from_preset("tiny")
    _perturb(dit)
    seen = {}
    dit.proj_out.register_forward_hook(lambda m, i, o: seen.setdefault("tokens", o))
    dit.pos_embed.register_forward_hook(lambda m, i, o: seen.setdefault("embedded", o))
    x, *cond = _inputs(dit)
    out = dit(x, *cond)
    tokens = seen["tokens"]  # [B, h*w, p*p*C]
    ref = torch.einsum("nhwpqc->nchpwq", tokens.reshape(2, 4, 12, 2, 2, 8)).reshape(2, 8, 8, 24)
    assert torch.equal(out, ref)
    conv = dit.pos_embed.proj(x).flatten(2).transpose(1, 2)
    torch.testing.assert_close(seen["embedded"], conv + sincos_2d_colrow(32, 4, 12)[None])


# ----------------------------------------------------------------------------------------------------
# The tiny preset
# ----------------------------------------------------------------------------------------------------


def test_tiny_fits_the_tiny_vae_latent_and_runs_fast():
    dit = Direct3DDiT.from_preset("tiny")
    vae = TriplaneVAE.from_preset("tiny")
    assert (dit.config.in_channels, *dit.config.sample_size) == vae.latent_shape == (8, 8, 24)
    assert dit.num_params() == 64_192
    _perturb(dit)
    inputs = _inputs(dit)
    with torch.no_grad():
        dit(*inputs)  # warm-up
        start = time.perf_counter()
        out = dit(*inputs)
        took = time.perf_counter() - start
    assert out.shape == (2, 8, 8, 24) and torch.isfinite(out).all()
    assert took < 1.0, f"tiny forward took {took:.2f} s"


def test_tiny_identity_blocks_and_zero_output_at_init():
    dit = Direct3DDiT.from_preset("tiny")
    x, t, pixel, semantic, pooled = _inputs(dit)
    assert torch.equal(dit(x, t, pixel, semantic, pooled), torch.zeros_like(x))  # zero proj_out
    tokens = torch.randn(2, 48, 32)
    mod, _ = dit.adaln_single(t, pooled)
    c_sem, c_pix = dit.semantic_projection(semantic), dit.pixel_projection(pixel)
    for block in dit.transformer_blocks:
        assert torch.equal(block(tokens, c_sem, c_pix, mod), tokens)  # closed gates, zero cross-attention out


def test_every_parameter_gets_a_gradient_and_conditions_matter():
    dit = Direct3DDiT.from_preset("tiny")
    _perturb(dit)
    x, t, pixel, semantic, pooled = _inputs(dit)
    out = dit(x, t, pixel, semantic, pooled)
    out.square().mean().backward()
    for name, p in dit.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    with torch.no_grad():
        for changed in ((x, t, pixel * 0, semantic, pooled), (x, t, pixel, semantic * 0, pooled),
                        (x, t, pixel, semantic, pooled * 0), (x, t + 100, pixel, semantic, pooled)):
            assert not torch.allclose(dit(*changed), out)


def test_save_pretrained_round_trip(tmp_path):
    dit = Direct3DDiT.from_preset("tiny")
    _perturb(dit)
    dit.save_pretrained(tmp_path / "dit")
    again = Direct3DDiT.from_pretrained(tmp_path / "dit")
    assert again.preset == "tiny" and again.config == dit.config
    inputs = _inputs(dit)
    with torch.no_grad():
        assert torch.equal(again(*inputs), dit(*inputs))
    assert torch.equal(again.pos_embed.pos_embed, dit.pos_embed.pos_embed)


def test_wrong_latent_size_is_refused():
    dit = Direct3DDiT.from_preset("tiny")
    x, *cond = _inputs(dit)
    with pytest.raises(ValueError, match=r"does not fit sample_size \[8, 24\]"):
        dit(x[..., :16], *cond)
