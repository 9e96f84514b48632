"""`lost eval tokens`: ridge probes of token prefixes and the decoder's posterior estimate per k."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from lostcli.data.store import ShardWriter
from lostcli.eval.token_probe import (TokenProbeConfig, evaluate_token_probe, kernel_probe_nmse, pca_nmse,
                                      principal_axes, probe_nmse, token_cosines)
from lostcli.latent.direct3d import TriplaneVAE
from lostcli.models.lost import build_tokenizer
from lostcli.bundle import export_bundle
from lostcli.pipeline import LostPipeline

from conftest import cli, one_error

pytestmark = pytest.mark.usefixtures("one_thread")

R = 4


def test_probe_finds_what_each_prefix_holds():
    """y is a linear function of token 1 (part a) and token 2 (part b): the k=1 probe recovers part a only,
    the k=2 probe everything."""
    g = torch.Generator().manual_seed(0)
    tokens = torch.randn(400, 3, 5, generator=g)
    mix = torch.randn(5, 6, generator=g)
    y = torch.cat([tokens[:, 0] @ mix, tokens[:, 1] @ mix], dim=1)  # [N, 12]: half from each token
    tr, ev = slice(0, 300), slice(300, 400)
    var = y[ev].var(dim=0, unbiased=False).mean().item()
    one, _ = probe_nmse(tokens[tr], y[tr], tokens[ev], y[ev], 1, var)
    two, _ = probe_nmse(tokens[tr], y[tr], tokens[ev], y[ev], 2, var)
    share_b = y[ev][:, 6:].var(dim=0, unbiased=False).mean().item() / (2 * var)  # part b's share of the variance
    assert two < 1e-3
    assert one == pytest.approx(share_b, rel=0.1) and 0.3 < one < 0.7


def _nonlinear_case(copy: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Tokens [N, 2, 4] and targets [N, 6]. With `copy`, token 2 is a fixed non-linear function of token 1 (no
    new information) and y depends on token 1 alone; otherwise token 2 is independent and y needs both."""
    g = torch.Generator().manual_seed(0)
    a = torch.rand(600, 4, generator=g) * 2 - 1
    b = torch.tanh(3 * a.flip(1)) if copy else torch.rand(600, 4, generator=g) * 2 - 1
    y = torch.cat([torch.sin(2 * a), torch.cos(2 * a[:, :2])], dim=1)
    if not copy:
        y = torch.cat([torch.sin(2 * a[:, :3]), torch.sin(2 * b[:, :3])], dim=1)
    return torch.stack([a, b], dim=1), y


@pytest.mark.parametrize("copy", [True, False])
def test_kernel_probe_falls_only_when_later_tokens_add_information(copy):
    tokens, y = _nonlinear_case(copy)
    tr, ev = slice(0, 480), slice(480, 600)
    var = y[ev].var(dim=0, unbiased=False).mean().item()
    k1, _ = kernel_probe_nmse(tokens[tr], y[tr], tokens[ev], y[ev], 1, var)
    k2, _ = kernel_probe_nmse(tokens[tr], y[tr], tokens[ev], y[ev], 2, var)
    lin1, _ = probe_nmse(tokens[tr], y[tr], tokens[ev], y[ev], 1, var)
    lin2, _ = probe_nmse(tokens[tr], y[tr], tokens[ev], y[ev], 2, var)
    if copy:  # a copy of token 1: the linear probe still gains (new linear features), the kernel probe does not
        assert lin2 < lin1 - 0.02
        assert k1 < 0.05 and k2 > 0.7 * k1 - 0.01
    else:  # half of y lives in token 2: only the longer prefix explains it
        assert k1 > 0.4 and k2 < 0.1
    assert k2 < lin2  # the non-linear probe reads more than the linear one


def test_pca_yardstick_by_hand():
    """Latents with variance 9, 4 and 1 along three orthogonal directions: n components leave the rest."""
    g = torch.Generator().manual_seed(0)
    basis = torch.linalg.qr(torch.randn(5, 5, generator=g, dtype=torch.float64))[0][:, :3].T  # [3, 5] orthonormal
    scale = torch.tensor([3.0, 2.0, 1.0], dtype=torch.float64)
    x = (torch.randn(4000, 3, generator=g, dtype=torch.float64) * scale) @ basis  # [N, 5]
    tr, ev = x[:3000], x[3000:]
    mean, axes = principal_axes(tr)
    var = ev.var(dim=0, unbiased=False).mean().item()
    total = (ev - mean).pow(2).mean().item() / var
    errs = [pca_nmse(mean, axes, ev, n, var) for n in (0, 1, 2, 3)]
    assert errs[0] == pytest.approx(total)
    assert [e / errs[0] for e in errs] == pytest.approx([1.0, 5 / 14, 1 / 14, 0.0], abs=0.02)
    assert pca_nmse(mean, axes, ev, 9, var) == pytest.approx(0.0, abs=1e-12)  # more than rank: everything


def test_token_cosines_by_hand():
    t = torch.tensor([[[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]],
                      [[1.0, 1.0], [-1.0, -1.0], [1.0, 0.0]]])  # [2 shapes, 3 tokens, 2]
    to_first, pairs = token_cosines(t)
    r = 0.5 ** 0.5
    torch.testing.assert_close(to_first, torch.tensor([1.0, 0.0, r / 2], dtype=torch.float64))  # (1 + 1)/2, (1-1)/2, (0+r)/2
    assert pairs == pytest.approx((2 * (1 + 0 + 0) + 2 * (-1 + r - r)) / 12)


@pytest.fixture
def setup(tmp_path):
    torch.manual_seed(0)
    vae = TriplaneVAE.from_preset("tiny", triplane_res=4)
    tok = build_tokenizer("lost_tiny", latent_shape=list(vae.latent_shape), enc_width=32, enc_depth=1, enc_heads=2,
                          num_registers=R, dec_width=32, dec_depth=1, dec_heads=2)  # adaLN-Zero: decoder outputs 0
    vae.save_pretrained(tmp_path / "vae")
    tok.save_pretrained(tmp_path / "run" / "export")
    export_bundle(tmp_path / "run", tmp_path / "vae", tmp_path / "bundle")
    bundle = tmp_path / "bundle"
    rng = np.random.default_rng(0)
    with ShardWriter(tmp_path / "ds", "items", shard_size=8) as items, \
            ShardWriter(tmp_path / "ds", "latents", shard_size=8) as latents:
        for i in range(24):  # splits live in the items table
            items.add(f"s{i}", {"label": np.zeros(1, np.float32)}, {"split": "val" if i < 8 else "train"})
            latents.add(f"s{i}", {"z": rng.normal(size=vae.latent_shape).astype(np.float32)})
    return LostPipeline(vae, tok, "probe"), tmp_path / "ds", bundle


def test_report_rows_and_the_blind_decoder(setup, tmp_path):
    """A freshly initialised decoder outputs 0 whatever the tokens: its x0 estimate is x_t itself, the same for
    every k and equal to the closed form t^2 |noise - x|^2 / var."""
    pipe, data, _ = setup
    cfg = TokenProbeConfig(split="val", ks=(1, 2, "all"), t=0.9, steps=2, seed=3)
    rep = evaluate_token_probe(pipe, data, cfg, out_dir=tmp_path / "rep")
    assert [r["k"] for r in rep["rows"]] == [1, 2, R] and rep["n"] == 8 and rep["n_probe"] == 16
    x = torch.stack([torch.from_numpy(np.asarray(v, np.float32)) for v in _val_latents(data)])
    x = pipe.tokenizer.normalize(x)
    noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(3))
    var = x.var(dim=0, unbiased=False).mean().item()
    expect = (0.9 ** 2 * (noise - x) ** 2).mean().item() / var
    for r in rep["rows"]:
        assert r["posterior_nmse"] == pytest.approx(expect, rel=1e-4)
        assert np.isfinite(r["sample_nmse"]) and r["probe_nmse"] > 0
    ranked = [r["pca_nmse"] for r in rep["rows"]]  # k * token_dim components: never worse with more
    assert all(b <= a + 1e-9 for a, b in zip(ranked, ranked[1:])) and 0 < ranked[-1] <= rep["mean_nmse"]
    assert rep["mean_nmse"] > 1.0  # the train mean misses the val latents by more than their own variance
    saved = json.loads((tmp_path / "rep" / "tokens.json").read_text())
    assert saved["rows"][0]["posterior_nmse"] == pytest.approx(expect, rel=1e-4)
    assert "| 4 |" in (tmp_path / "rep" / "tokens.md").read_text()


def _val_latents(data):
    from lostcli.data.store import DatasetStore

    store = DatasetStore(data)
    return [store.load(i, keys=["z"], table="latents")["z"] for i in store.ids(split="val", table="latents")]


def test_cli_writes_the_report_and_rejects_bad_input(setup, tmp_path, capsys):
    _, data, bundle = setup
    code, out, err = cli(capsys, "eval", "tokens", "--model", bundle, "--data", data, "--tokens", "1,all",
                         "--steps", "0", "--out", tmp_path / "r")
    assert code == 0, err
    rep = json.loads((tmp_path / "r" / "tokens.json").read_text())
    assert [r["k"] for r in rep["rows"]] == [1, R] and rep["rows"][0]["sample_nmse"] is None
    assert "linear probe" in out and "kernel probe" in out and "PCA" in out
    row = rep["rows"][0]
    assert row["cosine_to_first"] == pytest.approx(1.0) and 0 < row["kernel_nmse"] and -1 <= rep["token_cosine"] <= 1
    code, _, err = cli(capsys, "eval", "tokens", "--model", bundle, "--data", data, "--t", "0", "--out", tmp_path / "x")
    assert code == 2 and "--t" in one_error(err)
    code, _, err = cli(capsys, "eval", "tokens", "--model", bundle, "--data", data, "--split", "test",
                       "--out", tmp_path / "y")
    assert code == 2 and "split 'test' has 0 latents" in one_error(err, data)
