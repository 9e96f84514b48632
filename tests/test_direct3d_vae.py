"""Direct3D-compatible triplane VAE: release key/shape parity, conventions, tiny-preset behaviour."""

import json
import math

import pytest
import torch
import torch.nn.functional as F

from lostcli.errors import CheckpointError
from lostcli.latent.base import load_vae, read_vae_config
from lostcli.latent.direct3d import FourierEmbedder, TriplaneVAE, sample_planes
from lostcli.latent.extract import extract_mesh
from lostcli.persist import load_strict

from conftest import shared_path

FIXTURE = shared_path("fixtures", "direct3d_vae_state_dict.json")


@pytest.fixture(scope="module")
def fixture() -> dict:
    with open(FIXTURE) as f:
        return json.load(f)


@pytest.fixture(scope="module")
def tiny() -> TriplaneVAE:
    torch.manual_seed(0)
    return TriplaneVAE.from_preset("tiny")


def _cloud(B: int = 2, N: int = 64, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    normals = F.normalize(torch.randn(B, N, 3, generator=g), dim=-1)
    return 0.6 * normals, normals  # points on a sphere of radius 0.6 with their normals


# ----------------------------------------------------------------------------------------------------
# Release parity (built on the meta device: shapes only, no 119M-parameter init)
# ----------------------------------------------------------------------------------------------------


def test_direct3d_preset_matches_release_state_dict(fixture):
    args = fixture["constructor_args"]
    with torch.device("meta"):
        vae = TriplaneVAE.from_preset("direct3d")
    cfg = vae.config
    for name in ("triplane_res", "latent_dim", "triplane_dim", "num_freqs", "num_attention_heads",
                 "attention_head_dim", "num_encoder_layers", "num_geodecoder_layers", "block_out_channels",
                 "mid_block_add_attention", "latents_scale", "latents_shift"):
        assert getattr(cfg, name) == args[name], name
    want = {k: tuple(s) for k, s, _ in fixture["state_dict"]}
    got = {k: tuple(v.shape) for k, v in vae.state_dict().items()}
    assert sorted(want.keys() - got.keys()) == [] and sorted(got.keys() - want.keys()) == []
    assert [k for k in want if want[k] != got[k]] == []
    assert list(got) == [k for k, _, _ in fixture["state_dict"]]  # even the order matches
    assert sum(math.prod(s) for s in got.values()) == fixture["total_params"] == 119_275_265
    for top, n in fixture["params_by_top_module"].items():
        assert sum(math.prod(s) for k, s in got.items() if k.split(".")[0] == top) == n, top
    assert "fourier_embedder.freq" not in got
    assert vae.latent_shape == (16, 32, 96)


def test_zero_release_checkpoint_loads_strictly(fixture):
    with torch.device("meta"):
        vae = TriplaneVAE.from_preset("direct3d")
    sd = {k: torch.zeros(s, dtype=getattr(torch, d)) for k, s, d in fixture["state_dict"]}
    load_strict(vae, sd, "fixture", assign=True)
    assert vae.encoder.learnable_token.device.type == "cpu"
    assert float(vae.occ_decoder.net[8].weight.detach().abs().sum()) == 0.0
    sd.pop("decoder.mid_block.attentions.0.to_q.bias")
    with pytest.raises(CheckpointError, match="decoder.mid_block.attentions.0.to_q.bias"):
        load_strict(vae, sd, "fixture")


# ----------------------------------------------------------------------------------------------------
# Conventions
# ----------------------------------------------------------------------------------------------------


def test_fourier_layout_by_hand():
    emb = FourierEmbedder(num_freqs=2)
    x = torch.tensor([[0.1, 0.2, 0.3]])
    angles = [0.1, 0.2, 0.2, 0.4, 0.3, 0.6]  # (x f0, x f1, y f0, y f1, z f0, z f1), f = 1, 2 (no pi)
    want = [0.1, 0.2, 0.3] + [math.sin(a) for a in angles] + [math.cos(a) for a in angles]
    assert emb.out_dim == 15
    torch.testing.assert_close(emb(x)[0], torch.tensor(want))
    assert FourierEmbedder(8).freq.tolist() == [2.0**k for k in range(8)]


def test_plane_sampling_convention():
    H = W = 8
    u = -1 + (2 * torch.arange(W) + 1) / W  # align_corners=False pixel centres
    v = -1 + (2 * torch.arange(H) + 1) / H
    planes = torch.zeros(1, 3, 2, H, W)
    for p in range(3):  # channel 0 = u + 10 v + 100 p: linear, so bilinear sampling is exact inside
        planes[0, p, 0] = u[None, :] + 10 * v[:, None] + 100 * p
    planes[0, :, 1] = 1.0
    xyz = torch.tensor([[[0.25, -0.5, 0.75], [1.5, -0.5, 0.75]]])
    f = sample_planes(planes, xyz)  # [1, 3, 2, C]
    assert f.shape == (1, 3, 2, 2)
    # plane0 (u=x, v=y), plane1 (u=x, v=z), plane2 (u=z, v=y)
    torch.testing.assert_close(f[0, :, 0, 0], torch.tensor([0.25 - 5.0, 100 + 0.25 + 7.5, 200 + 0.75 - 5.0]))
    # x = 1.5 is outside: planes 0 and 1 give zeros (zero padding), plane 2 does not depend on x
    torch.testing.assert_close(f[0, :, 1, 1], torch.tensor([0.0, 0.0, 1.0]))


def test_token_rollout_and_plane_unrollout(tiny):
    vae = TriplaneVAE.from_preset("tiny")
    R, C = vae.config.triplane_res, vae.config.latent_dim
    D = vae.config.num_attention_heads * vae.config.attention_head_dim
    tok = torch.zeros(1, 3 * R * R, D)
    tok[0, :, 0] = torch.arange(3 * R * R, dtype=torch.float32)
    vae.encoder.forward = lambda x: tok  # the encoder's token t*R^2 + h*R + w ...
    with torch.no_grad():
        vae.pre_latent.weight.zero_()
        vae.pre_latent.bias.zero_()
        vae.pre_latent.weight[0, 0] = 1.0  # mean channel 0 = token feature 0
    mean = vae.posterior(*_cloud(1, 4)).mean  # ... lands at rolled cell (h, t*R + w)
    t, h, w = torch.meshgrid(torch.arange(3), torch.arange(R), torch.arange(R), indexing="ij")
    assert torch.equal(mean[0, 0, h, t * R + w], (t * R * R + h * R + w).float())
    assert mean.shape == (1, C, R, 3 * R)
    rolled = torch.arange(96.0).expand(1, 16, 32, 96)  # decoder output [B, Cp, H', 3W']
    vae.decoder.forward = lambda x: rolled
    planes = vae.decode_planes(torch.zeros(1, C, R, 3 * R))
    assert planes.shape == (1, 3, 16, 32, 32)
    assert torch.equal(planes[0, :, 0, 0], torch.arange(96.0).view(3, 32))  # [plane0 | plane1 | plane2]


# ----------------------------------------------------------------------------------------------------
# The tiny preset
# ----------------------------------------------------------------------------------------------------


def test_tiny_shapes_and_determinism(tiny):
    points, normals = _cloud()
    z = tiny.encode(points, normals)
    assert tiny.latent_shape == (8, 8, 24) and z.shape == (2, 8, 8, 24)
    torch.testing.assert_close(tiny.encode(points, normals), z, rtol=0, atol=0)  # mean: deterministic
    g1, g2 = torch.Generator().manual_seed(1), torch.Generator().manual_seed(1)
    s1 = tiny.encode(points, normals, sample=True, generator=g1)
    assert torch.equal(s1, tiny.encode(points, normals, sample=True, generator=g2))
    assert not torch.allclose(s1, z)
    xyz = torch.rand(2, 100, 3) * 2 - 1
    with torch.no_grad():
        planes = tiny.decode_planes(z)
        logits = tiny.query_planes(planes, xyz)
    assert planes.shape == (2, 3, 16, 32, 32)
    assert logits.shape == (2, 100) and torch.isfinite(logits).all()
    assert tiny.num_params() == 849_729


def test_tiny_gradient_reaches_every_parameter():
    vae = TriplaneVAE.from_preset("tiny", triplane_res=4)  # the same modules as tiny, 16x fewer cells
    points, normals = _cloud()
    xyz = torch.rand(2, 128, 3) * 2 - 1
    occ = (xyz.norm(dim=-1) < 0.6).float()
    post = vae.posterior(points, normals)
    loss = F.binary_cross_entropy_with_logits(vae.occupancy(post.sample(), xyz), occ) + 1e-3 * post.kl().mean()
    loss.backward()
    dead = [n for n, p in vae.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert dead == []


def test_latent_scale_shift_round_trip(tiny):
    cfg = {"latents_scale": 2.0, "latents_shift": 0.5}
    scaled = TriplaneVAE.from_preset("tiny", **cfg)
    scaled.load_state_dict(tiny.state_dict())
    points, normals = _cloud()
    z0, z1 = tiny.encode(points, normals), scaled.encode(points, normals)
    torch.testing.assert_close(z1, (z0 - 0.5) * 2.0)
    xyz = torch.rand(2, 50, 3) * 2 - 1
    torch.testing.assert_close(scaled.occupancy(z1, xyz), tiny.occupancy(z0, xyz), rtol=1e-4, atol=1e-5)
    p0, p1 = tiny.posterior(points, normals), scaled.posterior(points, normals)
    torch.testing.assert_close(p1.std, p0.std * 2.0)


def test_to_mesh_decodes_once_and_matches_direct_queries(tiny):
    z = tiny.encode(*_cloud(1))[0]
    with torch.no_grad():
        level = float(tiny.occupancy(z[None], torch.rand(1, 2000, 3) - 0.5).median())
        mesh = tiny.to_mesh(z, resolution=12, threshold=level, chunk=500)
        ref = extract_mesh(lambda q: tiny.occupancy(z[None], q[None])[0], 12, threshold=level)
    assert mesh is not None and len(mesh.faces) > 0
    torch.testing.assert_close(torch.as_tensor(mesh.vertices), torch.as_tensor(ref.vertices), rtol=0, atol=1e-5)
    assert tiny.to_mesh(z, resolution=8, threshold=1e6) is None
    with pytest.raises(ValueError, match="expects one latent"):
        tiny.to_mesh(torch.zeros(2, 8, 16, 48))


def test_save_pretrained_load_vae_round_trip(tiny, tmp_path):
    tiny.save_pretrained(tmp_path / "vae", extra_config={"latent_stats": {"mean": [0.5]}})
    meta = read_vae_config(tmp_path / "vae")
    assert meta["class"] == "TriplaneVAE" and meta["preset"] == "tiny" and meta["config"]["triplane_res"] == 8
    loaded = load_vae(tmp_path / "vae").train(tiny.training)  # same mode: SDPA paths differ by ~1e-7
    assert isinstance(loaded, TriplaneVAE) and loaded.extra_config == {"latent_stats": {"mean": [0.5]}}
    points, normals = _cloud()
    xyz = torch.rand(2, 64, 3) * 2 - 1
    with torch.no_grad():
        z = tiny.encode(points, normals)
        assert torch.equal(loaded.encode(points, normals), z)
        assert torch.equal(loaded.occupancy(z, xyz), tiny.occupancy(z, xyz))
    # a bare weights file needs the class and preset; weights of another shape name the offending key
    bare = tmp_path / "vae" / "model.safetensors"
    assert isinstance(load_vae(bare, class_name="TriplaneVAE", preset="tiny"), TriplaneVAE)
    with pytest.raises(CheckpointError, match="needs class_name and preset"):
        load_vae(_moved(bare, tmp_path))
    TriplaneVAE.from_preset("tiny", triplane_res=4).save_pretrained(tmp_path / "r4")
    with pytest.raises(CheckpointError, match=r"r4/model.safetensors: does not fit .*encoder.learnable_token"):
        load_vae(tmp_path / "r4" / "model.safetensors", class_name="TriplaneVAE", preset="tiny")


def _moved(src, tmp_path):
    dst = tmp_path / "bare" / "weights.safetensors"
    dst.parent.mkdir()
    dst.write_bytes(src.read_bytes())
    return dst


def test_diagonal_gaussian_kl_and_clamp():
    from lostcli.latent.base import DiagonalGaussian

    mean = torch.tensor([[0.0, 1.0], [2.0, 0.0]])
    logvar = torch.tensor([[0.0, 0.0], [0.0, -100.0]])
    post = DiagonalGaussian(mean, logvar)
    assert post.logvar[1, 1] == -30.0  # clamped as in the release
    # per element 0.5 (mu^2 + e^lv - 1 - lv): row 0 -> (0 + 0.5) / 2; row 1 -> (2 + 0.5 (e^-30 + 29)) / 2
    torch.testing.assert_close(post.kl(), torch.tensor([0.25, (2.0 + 0.5 * (math.exp(-30) + 29)) / 2]))
    assert torch.equal(post.mode(), mean)
