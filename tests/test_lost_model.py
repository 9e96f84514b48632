"""LoST tokenizer model: encoder mask and causality, token standardisation, nested dropout, decoder, CFG
null condition, timesteps, persistence, presets."""

from __future__ import annotations

import json

import pytest
import torch

from lostcli.errors import CheckpointError, ConfigError
from lostcli.models.lost import (PRESETS, LoSTConfig, LoSTTokenizer, build_tokenizer, count_params, keep_choices,
                                 register_mask)

TINY = dict(latent_shape=[4, 4, 8], patch_size=2, enc_width=32, enc_depth=2, enc_heads=2, num_registers=8,
            token_dim=8, dec_width=32, dec_depth=2, dec_heads=2)


pytestmark = pytest.mark.usefixtures("one_thread")


def _model(**overrides) -> LoSTTokenizer:
    return LoSTTokenizer(LoSTConfig(**{**TINY, **overrides}))


def _perturb(module: torch.nn.Module, std: float = 0.05) -> None:
    """Move every parameter off its init so adaLN-Zero / zero final layer pass signal and gradient."""
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn_like(p) * std)


def _inputs(B: int = 3, shape=(4, 4, 8)):
    return torch.randn(B, *shape), torch.randn(B, *shape), torch.rand(B)


# -- encoder mask and causality -----------------------------------------------------------------------


def test_register_mask_block_structure():
    N, R = 5, 4
    mask = register_mask(N, R)
    assert mask.shape == (N + R, N + R) and mask.dtype == torch.bool
    for q in range(N + R):
        for k in range(N + R):
            if q < N:  # a patch
                want = k < N
            else:  # register q - N
                want = k < N or (k - N) <= (q - N)
            assert bool(mask[q, k]) == want, (q, k)


def test_changing_register_j_never_changes_earlier_tokens_or_patches():
    model = _model().eval()
    z = torch.randn(2, 4, 4, 8)
    N, R = model.config.num_patches, model.num_registers
    with torch.no_grad():
        base_tokens = model.encode(z)
        base_seq = model.encoder.forward_features(z)
        for j in (0, 3, R - 1):
            saved = model.encoder.registers[j].clone()
            model.encoder.registers[j] += torch.randn_like(saved)
            tokens = model.encode(z)
            seq = model.encoder.forward_features(z)
            model.encoder.registers[j] = saved
            torch.testing.assert_close(tokens[:, :j], base_tokens[:, :j], atol=1e-6, rtol=0)
            assert (tokens[:, j] - base_tokens[:, j]).abs().max() > 1e-3  # register j itself did change
            torch.testing.assert_close(seq[:, :N], base_seq[:, :N], atol=1e-6, rtol=0)  # patches never see it
        # ...while later registers do see earlier ones
        model.encoder.registers[0] += torch.randn(model.encoder.registers.shape[1])
        assert (model.encode(z)[:, R - 1] - base_tokens[:, R - 1]).abs().max() > 1e-4


def test_tokens_depend_on_the_latent():
    model = _model().eval()
    z = torch.randn(2, 4, 4, 8)
    with torch.no_grad():
        a, b = model.encode(z), model.encode(z + torch.randn_like(z))
    assert a.shape == (2, 8, 8)
    assert (a - b).abs().max() > 1e-3


def test_tokens_are_standardised_per_token():
    model = _model(token_dim=32)
    _perturb(model.encoder, 0.2)
    with torch.no_grad():
        tokens = model.encode(3.0 * torch.randn(4, 4, 4, 8) + 1.0)
    assert tokens.shape == (4, 8, 32)
    assert tokens.mean(-1).abs().max() < 1e-5
    torch.testing.assert_close(tokens.std(-1, unbiased=False), torch.ones(4, 8), atol=1e-3, rtol=0)


def test_encode_rejects_a_wrong_latent_shape():
    with pytest.raises(ConfigError, match="does not fit"):
        _model().encode(torch.randn(1, 4, 4, 4))


# -- nested dropout -----------------------------------------------------------------------------------


def test_keep_choices():
    assert keep_choices(8) == [1, 2, 4, 8]
    assert keep_choices(1) == [1]
    assert keep_choices(48) == [1, 2, 4, 8, 16, 32, 48]
    assert _model(num_registers=512).keep_choices[-1] == 512


def test_condition_replaces_exactly_the_positions_from_k_on():
    model = _model()
    tokens = torch.randn(3, 8, 8)
    keep = torch.tensor([1, 3, 8])
    out = model.condition(tokens, keep)
    null = model.decoder.null_cond.detach()
    for b, k in enumerate(keep.tolist()):
        assert torch.equal(out[b, :k], tokens[b, :k])
        assert torch.equal(out[b, k:], null[k:])
    # a prefix of K < R tokens is padded with the null tokens
    out = model.condition(tokens[:, :3], torch.tensor([8, 8, 2]))
    assert out.shape == (3, 8, 8)
    assert torch.equal(out[0, :3], tokens[0, :3]) and torch.equal(out[0, 3:], null[3:])
    assert torch.equal(out[2, :2], tokens[2, :2]) and torch.equal(out[2, 2:], null[2:])


def test_sample_keep_is_uniform_over_powers_of_two():
    model = _model()
    g = torch.Generator().manual_seed(0)
    keep = model.sample_keep(4000, generator=g)
    assert keep.dtype == torch.long
    counts = {k: int((keep == k).sum()) for k in (1, 2, 4, 8)}
    assert sum(counts.values()) == 4000
    assert all(900 < c < 1100 for c in counts.values()), counts
    again = model.sample_keep(4000, generator=torch.Generator().manual_seed(0))
    assert torch.equal(keep, again)
    assert torch.equal(model.sample_keep(5, nested=False), torch.full((5,), 8))


def test_sample_keep_uniform_draws_every_prefix_length():
    model = _model()  # R = 8
    keep = model.sample_keep(8000, generator=torch.Generator().manual_seed(0), mode="uniform")
    counts = torch.bincount(keep, minlength=9)
    assert int(counts[0]) == 0 and int(counts.sum()) == 8000
    assert all(850 < int(c) < 1150 for c in counts[1:]), counts.tolist()  # 1000 each: 3, 5, 6, 7 too
    assert torch.equal(model.sample_keep(5, nested=False, mode="uniform"), torch.full((5,), 8))
    with pytest.raises(ConfigError, match="tokenizer.keep_sampling"):
        model.sample_keep(4, mode="linear")


def test_sample_drop_probability():
    flags = _model().sample_drop(20000, generator=torch.Generator().manual_seed(1))
    assert flags.dtype == torch.bool and abs(flags.float().mean().item() - 0.1) < 0.01
    assert not _model(cfg_drop_prob=0.0).sample_drop(1000).any()


# -- decoder ------------------------------------------------------------------------------------------


def test_decoder_outputs_zero_and_blocks_are_identity_at_init():
    model = _model()
    z, x_t, t = _inputs()
    out = model.decode(model.encode(z), torch.tensor([8, 2, 1]), x_t, t)
    assert out.shape == x_t.shape and torch.count_nonzero(out) == 0
    x, c = torch.randn(3, 40, 32), torch.randn(3, 32)
    for block in model.decoder.blocks:
        assert torch.equal(block(x, c), x)


@pytest.mark.parametrize("patch_size", [1, 2])
def test_decoding_runs_for_every_prefix(patch_size):
    model = _model(patch_size=patch_size)
    _perturb(model.decoder)
    z, x_t, t = _inputs(2)
    with torch.no_grad():
        tokens = model.encode(z)
        outs = {}
        for k in model.keep_choices:
            outs[k] = model.decode(tokens, torch.full((2,), k), x_t, t)
            assert outs[k].shape == (2, 4, 4, 8) and torch.isfinite(outs[k]).all()
            prefix = model.decode(tokens[:, :k], torch.full((2,), k), x_t, t)  # tokens[:, :k] alone
            torch.testing.assert_close(prefix, outs[k], atol=1e-6, rtol=0)
    assert (outs[1] - outs[8]).abs().max() > 1e-4  # more tokens, different prediction


def test_every_parameter_gets_a_gradient():
    model = _model()
    _perturb(model)
    z, x_t, t = _inputs()
    # sample 0 keeps all tokens (encoder path), 1 uses null tokens, 2 is a CFG drop
    out = model.decode(model.encode(z), torch.tensor([8, 1, 4]), x_t, t, drop=torch.tensor([False, False, True]))
    out.square().mean().backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_drop_cond_gives_exactly_the_null_condition_output():
    model = _model()
    _perturb(model)
    z, x_t, t = _inputs(2)
    with torch.no_grad():
        tokens = model.encode(z)
        keep = torch.tensor([8, 4])
        cond_out = model.decode(tokens, keep, x_t, t)
        dropped = model.decode(tokens, keep, x_t, t, drop=torch.tensor([True, True]))
        uncond = model.decode(model.null_condition(2), torch.full((2,), 8), x_t, t)
        half = model.decode(tokens, keep, x_t, t, drop=torch.tensor([True, False]))
    assert torch.equal(dropped, uncond)
    assert (cond_out - uncond).abs().max() > 1e-4  # the condition matters
    assert torch.equal(half[0], uncond[0])
    torch.testing.assert_close(half[1], cond_out[1], atol=1e-6, rtol=0)


def test_float_and_integer_timesteps_agree():
    model = _model()
    _perturb(model)
    z, x_t, _ = _inputs(2)
    with torch.no_grad():
        tokens = model.encode(z)
        keep = torch.full((2,), 8)
        a = model.decode(tokens, keep, x_t, torch.tensor([0.25, 0.75]))
        b = model.decode(tokens, keep, x_t, torch.tensor([250, 750]), timesteps=True)
        c = model.decode(tokens, keep, x_t, torch.tensor(0.25))  # a scalar t is broadcast
    torch.testing.assert_close(a, b, atol=1e-5, rtol=0)
    torch.testing.assert_close(c[0], a[0], atol=1e-6, rtol=0)
    assert (a[0] - c[1]).abs().max() > 1e-4  # ...and t matters


def test_grad_checkpointing_gives_the_same_output():
    model = _model()
    _perturb(model)
    z, x_t, t = _inputs(2)
    keep = torch.tensor([8, 2])
    ref = model.decode(model.encode(z), keep, x_t, t)
    ref.square().sum().backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    model.config.grad_checkpointing = True
    out = model.decode(model.encode(z), keep, x_t, t)
    out.square().sum().backward()
    torch.testing.assert_close(out, ref)
    for n, p in model.named_parameters():
        torch.testing.assert_close(p.grad, grads[n], atol=1e-6, rtol=1e-5)


def test_condition_shape_is_checked():
    model = _model()
    z, x_t, t = _inputs(1)
    with pytest.raises(ValueError, match="do not fit"):
        model.decode(torch.randn(1, 9, 8), torch.tensor([8]), x_t, t)
    with pytest.raises(ValueError, match="do not fit"):
        model.decode(torch.randn(1, 8, 4), torch.tensor([8]), x_t, t)


# -- latent statistics and persistence ----------------------------------------------------------------


def test_normalize_roundtrip():
    model = _model()
    model.set_latent_stats([1.0, 2.0, 3.0, 4.0], [0.5, 1.0, 2.0, 4.0])
    z = torch.randn(2, 4, 4, 8)
    torch.testing.assert_close(model.denormalize(model.normalize(z)), z)
    torch.testing.assert_close(model.normalize(z)[:, 3], (z[:, 3] - 4.0) / 4.0)
    with pytest.raises(ConfigError):
        model.set_latent_stats([0.0], [1.0])


def test_save_load_gives_identical_tokens(tmp_path):
    model = _model()
    _perturb(model)
    model.set_latent_stats([0.1, 0.2, 0.3, 0.4], [1.0, 2.0, 3.0, 4.0])
    model.save_pretrained(tmp_path / "export", extra_config={"note": "x"})
    meta = json.loads((tmp_path / "export" / "config.json").read_text())
    assert meta["class"] == "LoSTTokenizer" and meta["config"]["num_registers"] == 8 and meta["note"] == "x"
    loaded = LoSTTokenizer.from_pretrained(tmp_path)  # a run directory holding export/
    assert not loaded.training and loaded.config == model.config and loaded.extra_config == {"note": "x"}
    z = torch.randn(2, 4, 4, 8)
    with torch.no_grad():
        assert torch.equal(loaded.encode(z), model.eval().encode(z))
    assert torch.equal(loaded.latent_std, model.latent_std)
    assert torch.equal(loaded.decoder.null_cond, model.decoder.null_cond)


def test_load_errors_name_the_file(tmp_path):
    with pytest.raises(CheckpointError, match="no config.json"):
        LoSTTokenizer.from_pretrained(tmp_path)
    _model().save_pretrained(tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    cfg["config"]["num_registers"] = 4  # weights no longer fit
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="model.safetensors: does not fit"):
        LoSTTokenizer.from_pretrained(tmp_path)
    cfg["config"]["bogus"] = 1
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="config.json: not a LoST tokenizer config"):
        LoSTTokenizer.from_pretrained(tmp_path)


# -- config and presets -------------------------------------------------------------------------------


def test_config_validation():
    with pytest.raises(ConfigError, match="patch_size"):
        LoSTConfig(**{**TINY, "patch_size": 3})
    with pytest.raises(ConfigError, match="prediction"):
        LoSTConfig(**{**TINY, "prediction": "noise"})
    with pytest.raises(ConfigError, match="dec_width"):
        LoSTConfig(**{**TINY, "dec_heads": 3})
    with pytest.raises(ConfigError, match="model.overrides.bogus"):
        build_tokenizer("lost_tiny", device="meta", bogus=1)
    with pytest.raises(ConfigError, match="model.preset"):
        build_tokenizer("lost_huge")


@pytest.mark.parametrize("name,patches,registers", [("lost_tiny", 48, 32), ("lost_small", 192, 64),
                                                    ("lost_paper", 768, 512), ("lost_trellis", 1024, 512)])
def test_presets_build_on_meta(name, patches, registers):
    model = build_tokenizer(name, device="meta")
    cfg = model.config
    assert cfg.num_patches == patches and cfg.num_registers == registers and cfg.token_dim == 32
    assert model.encoder.attn_mask.shape == (patches + registers,) * 2
    assert model.decoder.null_cond.shape == (registers, 32)
    assert cfg is not PRESETS[name]  # presets are never handed out


def test_paper_decoder_is_dit_l2():
    cfg = PRESETS["lost_paper"]
    assert (cfg.dec_depth, cfg.dec_width, cfg.dec_heads, cfg.patch_size) == (24, 1024, 16, 2)
    n = count_params("lost_paper")
    assert 450e6 < n["decoder"] < 465e6  # DiT-L/2 is ~458M with its class embedder; ours has a token embedder
    assert n["total"] == n["encoder"] + n["decoder"]
    assert 2.05e6 < count_params("lost_tiny")["total"] < 2.13e6  # the size table says 2.09M


# -- per-position condition embedding -------------------------------------------------------------------


def test_per_position_linear_is_one_linear_per_position():
    from lostcli.models.lost import PerPositionLinear

    torch.manual_seed(0)
    layer = PerPositionLinear(3, 4, 5)
    with torch.no_grad():
        layer.bias.normal_()
    x = torch.randn(2, 3, 4)
    by_hand = torch.stack([x[:, r] @ layer.weight[r].T + layer.bias[r] for r in range(3)], dim=1)
    torch.testing.assert_close(layer(x), by_hand)
    bound = (6 / (4 + 5)) ** 0.5  # Xavier-uniform of a Linear(4, 5), for every position
    assert float(layer.weight.detach().abs().max()) <= bound
    assert float(layer.weight.detach().std()) > 0.5 * bound / 3 ** 0.5
    with pytest.raises(ValueError, match=r"\[B, 3, 4\]"):
        layer(torch.randn(2, 2, 4))


def test_per_position_condition_embedding_reads_each_position_with_its_own_map(tmp_path):
    torch.manual_seed(0)
    model = _model(cond_embed="per_position")
    emb = model.decoder.cond_embedder
    assert tuple(emb.weight.shape) == (8, 32, 8)  # [R, dec_width, token_dim]
    assert not torch.allclose(emb.weight[0], emb.weight[1])
    _perturb(model)
    x, x_t, t = _inputs(2)
    tokens = model.encode(x)
    # the same token content at every position enters the decoder through a different map per position
    same = tokens[:, :1].expand(-1, 8, -1)
    r = emb(same)
    assert not torch.allclose(r[:, 0], r[:, 1])
    model.save_pretrained(tmp_path)
    loaded = LoSTTokenizer.from_pretrained(tmp_path)
    assert loaded.config.cond_embed == "per_position"
    keep = torch.tensor([2, 8])
    torch.testing.assert_close(loaded.decode(tokens, keep, x_t, t), model.decode(tokens, keep, x_t, t))
    shared = _model()
    assert isinstance(shared.decoder.cond_embedder, torch.nn.Linear)  # the default: Semanticist's shared Linear
    with pytest.raises(ConfigError, match="cond_embed"):
        LoSTConfig(**TINY, cond_embed="per_token")


def test_shared_plus_position_starts_as_the_shared_map_and_learns_a_map_per_position():
    torch.manual_seed(0)
    both = _model(cond_embed="shared_plus_position")
    dec = both.decoder
    assert tuple(dec.cond_embedder.weight.shape) == (32, 8)  # the shared Linear [dec_width, token_dim]
    assert tuple(dec.cond_embedder_pos.weight.shape) == (8, 32, 8)  # plus [R, dec_width, token_dim], zero at init
    assert float(dec.cond_embedder_pos.weight.detach().abs().max()) == 0.0
    _perturb(both.encoder)
    _perturb(dec.blocks)
    _perturb(dec.final_layer)
    shared = _model()
    shared.load_state_dict({k: v for k, v in both.state_dict().items() if "cond_embedder_pos" not in k})
    x, x_t, t = _inputs(2)
    tokens, keep = both.encode(x), torch.tensor([1, 8])
    torch.testing.assert_close(both.decode(tokens, keep, x_t, t), shared.decode(tokens, keep, x_t, t))
    # from zero, the per-position part gets a gradient at every position (kept tokens and null tokens alike)
    both.decode(tokens, torch.tensor([2, 2]), x_t, t).square().sum().backward()
    grad = dec.cond_embedder_pos.weight.grad.abs().sum(dim=(1, 2))  # [R]
    assert bool((grad > 0).all())
    assert float(dec.cond_embedder.weight.grad.abs().sum()) > 0
