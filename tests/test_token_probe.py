"""`lost eval tokens`: ridge probes of token prefixes and the decoder's posterior estimate per k."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from lostcli.data.store import ShardWriter
from lostcli.eval.token_probe import TokenProbeConfig, evaluate_token_probe, probe_nmse
from lostcli.latent.direct3d import TriplaneVAE
from lostcli.models.lost import build_tokenizer
from lostcli.pipeline import LostPipeline, export_bundle

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
    assert "linear probe" in out
    code, _, err = cli(capsys, "eval", "tokens", "--model", bundle, "--data", data, "--t", "0", "--out", tmp_path / "x")
    assert code == 2 and "--t" in one_error(err)
    code, _, err = cli(capsys, "eval", "tokens", "--model", bundle, "--data", data, "--split", "test",
                       "--out", tmp_path / "y")
    assert code == 2 and "split 'test' has 0 latents" in one_error(err, data)
