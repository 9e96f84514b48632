"""LoST-GPT model: causality, the null condition, CFG dropout, KV-cached vs uncached generation, prefixes,
seeding, guidance schedules, persistence, presets."""

from __future__ import annotations

import json

import pytest
import torch

from lostcli.errors import CheckpointError, ConfigError
from lostcli.models.gpt import PRESETS, GPTConfig, LoSTGPT, build_gpt, guidance_scale

pytestmark = pytest.mark.usefixtures("one_thread")

L, D, C = 6, 4, 8  # tokens, token channels, condition width
TINY = dict(num_tokens=L, token_dim=D, cond_dim=C, width=32, depth=2, heads=2, ffn_multiple_of=16,
            diffloss={"width": 32, "depth": 1, "sample_steps": 4})


def _model(**overrides) -> LoSTGPT:
    """A tiny model in eval mode with every parameter moved off its init (the head outputs 0 at init)."""
    m = build_gpt("gpt_tiny", **{**TINY, **overrides})
    with torch.no_grad():
        for p in m.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return m.eval()


def _gen(m: LoSTGPT, cond: torch.Tensor, seed: int = 0, **kw) -> torch.Tensor:
    return m.generate(cond, generator=torch.Generator().manual_seed(seed), **kw)


# -- the sequence -------------------------------------------------------------------------------------


def test_hidden_is_causal_row_i_reads_tokens_before_i():
    m = _model()
    x, c = torch.randn(2, L, D), torch.randn(2, C)
    h = m.hidden(x, c)
    assert h.shape == (2, L, 32) and torch.isfinite(h).all()
    y = x.clone()
    y[:, 2] += 1.0  # token 2 is read at position 3
    h2 = m.hidden(y, c)
    assert torch.allclose(h[:, :3], h2[:, :3], atol=1e-6)
    assert (h[:, 3:] - h2[:, 3:]).abs().amax(dim=-1).min() > 1e-4  # every later row moves
    y[:, -1] += 1.0  # the last token is never read
    assert torch.allclose(m.hidden(y, c), h2, atol=1e-6)
    assert torch.allclose(m.hidden(x[:, :4], c), h[:, :4], atol=1e-5)  # a shorter teacher-forced prefix


def test_null_condition_is_used_exactly_when_dropped():
    m = _model()
    x = torch.randn(4, L, D)
    c1, c2 = torch.randn(4, C), torch.randn(4, C)
    drop = torch.tensor([True, False, True, False])
    h1, h2 = m.hidden(x, c1, drop), m.hidden(x, c2, drop)
    assert torch.equal(h1[drop], h2[drop])  # dropped rows ignore the condition entirely
    assert (h1[~drop] - h2[~drop]).abs().amax(dim=(1, 2)).min() > 1e-3  # kept rows depend on it
    assert torch.allclose(h1[~drop], m.hidden(x, c1)[~drop], atol=1e-6)  # and equal the undropped pass
    # the dropped rows are the model run on the null prefix embedding
    null_seq = torch.cat([m.null_condition(4)[:, None], m.x_embedder(x[:, :-1])], dim=1)
    assert torch.allclose(h1[drop], m._run(null_seq)[drop], atol=1e-6)
    assert torch.equal(m.null_condition(3), m.null_cond.expand(3, -1))


def test_training_draws_cond_dropout_with_its_probability():
    x = torch.randn(3, L, D)
    c1, c2 = torch.randn(3, C), torch.randn(3, C)

    def seeded(m, c):
        torch.manual_seed(5)
        return m(x, c, m.sample_drop(3))

    always = _model(cond_drop_prob=1.0).train()
    a, b = seeded(always, c1), seeded(always, c2)
    assert a["drop_frac"].item() == 1.0 and torch.equal(a["loss"], b["loss"])  # the text never matters
    never = _model(cond_drop_prob=0.0).train()
    a, b = seeded(never, c1), seeded(never, c2)
    assert a["drop_frac"].item() == 0.0 and not torch.equal(a["loss"], b["loss"])
    half = _model(cond_drop_prob=0.3)
    frac = half(torch.randn(2000, 2, D), torch.randn(2000, C), half.sample_drop(2000))["drop_frac"].item()
    assert abs(frac - 0.3) < 0.04


def test_every_parameter_gets_a_gradient():
    m = _model(dropout=0.0).train()
    out = m(torch.randn(3, L, D), torch.randn(3, C), drop=torch.tensor([True, False, False]))
    assert out["loss"].ndim == 0 and torch.isfinite(out["loss"])
    out["loss"].backward()
    for name, p in m.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


# -- generation ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("guidance,schedule", [(1.0, "constant"), (3.0, "constant"), (2.5, "linear")])
def test_cached_generation_equals_uncached(guidance, schedule):
    m = _model()
    c = torch.randn(3, C)
    a = _gen(m, c, guidance=guidance, guidance_schedule=schedule)
    b = _gen(m, c, guidance=guidance, guidance_schedule=schedule, use_cache=False)
    assert a.shape == (3, L, D)
    assert torch.allclose(a, b, atol=1e-5), (a - b).abs().max()


def test_prefix_is_kept_and_cached_equals_uncached():
    m = _model()
    c, prefix = torch.randn(2, C), torch.randn(2, 2, D)
    a = _gen(m, c, guidance=2.0, prefix=prefix)
    b = _gen(m, c, guidance=2.0, prefix=prefix, use_cache=False)
    assert torch.equal(a[:, :2], prefix)
    assert torch.allclose(a, b, atol=1e-5)
    other = _gen(m, c, guidance=2.0, prefix=prefix + 1.0)
    assert (a[:, 2:] - other[:, 2:]).abs().max() > 1e-3  # the continuation reads the prefix
    full = torch.randn(2, L, D)
    assert torch.equal(_gen(m, c, prefix=full), full)
    with pytest.raises(ConfigError, match="prefix"):
        _gen(m, c, prefix=torch.randn(2, 3, D), num_tokens=2)
    with pytest.raises(ConfigError, match="does not fit"):
        _gen(m, c, prefix=torch.randn(2, 2, D + 1))


def test_generation_is_seeded_and_guidance_matters():
    m = _model()
    c = torch.randn(2, C)
    a = _gen(m, c, guidance=3.0)
    assert torch.equal(a, _gen(m, c, guidance=3.0))
    assert not torch.allclose(a, _gen(m, c, seed=1, guidance=3.0))
    assert (a - _gen(m, c, guidance=1.0)).abs().max() > 1e-3
    short = _gen(m, c, guidance=3.0, num_tokens=3)
    assert short.shape == (2, 3, D)
    assert torch.allclose(short[:, 0], a[:, 0], atol=1e-6)  # the first draw does not depend on the length
    m.train()
    assert torch.equal(_gen(m, c, guidance=3.0), a) and m.training  # dropout off, mode restored
    with pytest.raises(ConfigError, match="num_tokens"):
        _gen(m, c, num_tokens=L + 1)
    with pytest.raises(ConfigError, match="guidance_schedule"):
        _gen(m, c, guidance_schedule="cosine")


def test_guidance_schedules(monkeypatch):
    assert guidance_scale(3.0, "constant", 0, 4) == 3.0
    assert [guidance_scale(3.0, "linear", i, 4) for i in range(4)] == [1.5, 2.0, 2.5, 3.0]
    m = _model()
    seen = []
    sample = m.diffloss.sample

    def spy(cond, temperature=1.0, guidance=1.0, steps=None, generator=None):
        seen.append((cond.shape[0], guidance, temperature, steps))
        return sample(cond, temperature, guidance, steps, generator)

    monkeypatch.setattr(m.diffloss, "sample", spy)
    _gen(m, torch.randn(2, C), guidance=4.0, guidance_schedule="linear", temperature=0.7, sample_steps=3,
         prefix=torch.randn(2, 1, D), num_tokens=5)
    assert seen == [(4, 1.0 + 3.0 * (i + 1) / 5, 0.7, 3) for i in range(1, 5)]  # [cond ; null] rows


# -- persistence and presets --------------------------------------------------------------------------


def test_save_and_load_give_identical_outputs(tmp_path):
    m = _model()
    m.save_pretrained(tmp_path / "gpt", extra_config={"sampling": {"guidance": 3.0}})
    meta = json.loads((tmp_path / "gpt" / "config.json").read_text())
    assert meta["class"] == "LoSTGPT" and meta["preset"] == "gpt_tiny" and meta["config"]["num_tokens"] == L
    n = LoSTGPT.from_pretrained(tmp_path / "gpt")
    assert n.extra_config == {"sampling": {"guidance": 3.0}} and not n.training
    x, c = torch.randn(2, L, D), torch.randn(2, C)
    assert torch.equal(n.hidden(x, c), m.hidden(x, c))
    assert torch.equal(_gen(n, c, guidance=3.0), _gen(m, c, guidance=3.0))
    with pytest.raises(CheckpointError, match="no config.json"):
        LoSTGPT.from_pretrained(tmp_path / "missing")
    _model(width=64).save_pretrained(tmp_path / "other")
    (tmp_path / "other" / "config.json").write_text((tmp_path / "gpt" / "config.json").read_text())
    with pytest.raises(CheckpointError, match="does not fit"):
        LoSTGPT.from_pretrained(tmp_path / "other")


def test_build_gpt_presets_overrides_and_errors():
    m = build_gpt("gpt_tiny", width=64, diffloss={"width": 48})
    assert m.config.depth == PRESETS["gpt_tiny"].depth  # untouched fields keep the preset
    assert m.config.diffloss.width == 48 and m.config.diffloss.depth == PRESETS["gpt_tiny"].diffloss.depth
    assert m.config.diffloss.cond_dim == 64 and m.config.diffloss.token_dim == m.config.token_dim  # forced
    assert PRESETS["gpt_tiny"].width == 256  # the table is not mutated
    assert GPTConfig(width=96, heads=3, ffn_multiple_of=64).ffn_hidden == 256  # int(8/3 * 96) = 256
    with pytest.raises(ConfigError, match="gpt_huge"):
        build_gpt("gpt_huge")
    with pytest.raises(ConfigError, match="model.overrides.depthh"):
        build_gpt("gpt_tiny", depthh=2)
    with pytest.raises(ConfigError, match="diffloss.widht"):
        build_gpt("gpt_tiny", diffloss={"widht": 2})
    with pytest.raises(ConfigError, match="width"):
        build_gpt("gpt_tiny", width=30, heads=4)  # heads of odd width (no RoPE pairs)
    with pytest.raises(ConfigError, match="cond_drop_prob"):
        build_gpt("gpt_tiny", cond_drop_prob=1.5)
