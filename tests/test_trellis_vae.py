"""TRELLIS stage-1 sparse-structure VAE: release compatibility, conventions, tiny-preset training path."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from lostcli.errors import CheckpointError
from lostcli.latent.base import DiagonalGaussian, load_vae
from lostcli.latent.trellis import (
    PRESETS,
    ChannelLayerNorm32,
    GroupNorm32,
    ResBlock3d,
    SparseStructureDecoder,
    SparseStructureEncoder,
    SparseStructureVAE,
    SSVAEConfig,
    dice_loss,
    from_grid,
    from_trellis_frame,
    load_trellis_pair,
    pixel_shuffle_3d,
    to_grid,
    to_trellis_frame,
    voxel_centers,
    voxelize,
)
from lostcli.persist import load_strict

from conftest import shared_path  # noqa: E402

FIXTURES = Path(shared_path("fixtures", "direct3d_vae_state_dict.json")).parent
NETS = {"enc": SparseStructureEncoder, "dec": SparseStructureDecoder}


def _fixture(kind: str) -> dict:
    return json.loads((FIXTURES / f"trellis_ss_{kind}_state_dict.json").read_text())


def _small_cfg(**kw) -> SSVAEConfig:
    # 16^3 grid -> 4^3 latent -> [8, 8, 8] grid: the tiny architecture at a size that trains in ms
    base = dict(num_res_blocks=1, num_res_blocks_middle=1, enc_channels=[8, 16, 32], dec_channels=[32, 16, 8],
                resolution=16)
    return SSVAEConfig(**{**base, **kw})


# ----------------------------------------------------------------------------------------------------
# Release compatibility
# ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["enc", "dec"])
def test_fixture_keys_shapes_dtypes(kind):
    fx = _fixture(kind)
    with torch.device("meta"):  # shapes and dtypes only: no 133M-parameter init
        net = NETS[kind](**fx["constructor_args"])
    sd = net.state_dict()
    assert list(sd) == [k for k, _, _ in fx["state_dict"]]  # same keys, same order
    assert {k: list(v.shape) for k, v in sd.items()} == {k: s for k, s, _ in fx["state_dict"]}
    assert sum(v.numel() for v in sd.values()) == fx["total_params"]
    fp16 = sorted(k for k, v in sd.items() if v.dtype == torch.float16)
    assert fp16 == sorted(fx["fp16_keys"]) and len(fp16) == 36
    assert all(v.dtype == torch.float32 for k, v in sd.items() if k not in fx["fp16_keys"])


@pytest.mark.parametrize("kind", ["enc", "dec"])
def test_fixture_zero_state_dict_loads_strict(kind):
    fx = _fixture(kind)
    args = {**fx["constructor_args"], "use_fp16": False}
    with torch.device("meta"):
        net = NETS[kind](**args)
    zeros = {k: torch.zeros(s, dtype=getattr(torch, d)) for k, s, d in fx["state_dict"]}
    load_strict(net, zeros, source="fake.safetensors", assign=True)  # fp16 torso cast to the fp32 model
    sd = net.state_dict()
    assert all(not v.is_meta and v.dtype == torch.float32 for v in sd.values())
    assert all(float(v.abs().sum()) == 0.0 for v in sd.values())
    # the same file with one tensor cut short is refused, naming the key
    zeros["blocks.2.conv.weight"] = zeros["blocks.2.conv.weight"][:-1]
    with pytest.raises(CheckpointError, match="blocks.2.conv.weight"):
        load_strict(net, zeros, source="fake.safetensors")


def test_presets_latent_shape_and_sizes():
    full, tiny = PRESETS["trellis"], PRESETS["tiny"]
    assert (full.enc_channels, full.dec_channels, full.latent_channels, full.resolution) == (
        [32, 128, 512], [512, 128, 32], 8, 64)
    vae = SparseStructureVAE(tiny)
    assert vae.latent_shape == (8, 64, 64)
    assert sum(p.numel() for p in vae.encoder.parameters()) == 147_696
    assert sum(p.numel() for p in vae.decoder.parameters()) == 274_009
    with torch.device("meta"):
        assert SparseStructureVAE(full).latent_shape == (8, 64, 64)


# ----------------------------------------------------------------------------------------------------
# Building blocks
# ----------------------------------------------------------------------------------------------------


def test_pixel_shuffle_3d_index_mapping():
    C, H, W, D = 2, 3, 2, 4
    x = torch.arange(C * 8 * H * W * D, dtype=torch.float32).reshape(1, C * 8, H, W, D)
    y = pixel_shuffle_3d(x, 2)
    assert y.shape == (1, C, 2 * H, 2 * W, 2 * D)
    for c in range(C):
        for a in range(2):
            for b in range(2):
                for d in range(2):
                    src = x[0, c * 8 + a * 4 + b * 2 + d]  # [H, W, D]
                    assert torch.equal(y[0, c, a::2, b::2, d::2], src)


def test_resblock_is_identity_at_init_and_layernorm_is_per_voxel():
    torch.manual_seed(0)
    block = ResBlock3d(8)
    x = torch.randn(2, 8, 3, 4, 5)
    assert torch.equal(block(x), x)  # conv2 is zero-initialised
    h = block.norm1(x)
    ref = torch.nn.functional.layer_norm(x.permute(0, 2, 3, 4, 1), (8,)).permute(0, 4, 1, 2, 3)
    assert torch.allclose(h, ref, atol=1e-6)
    assert block.norm1(x.half()).dtype == torch.float16  # computed in fp32, cast back


def test_channel_layer_norm_output_is_contiguous_and_bit_exact():
    """As TRELLIS's: a contiguous result, so the next Conv3d sees the strides (and gives the values) it does there."""
    torch.manual_seed(0)
    norm = ChannelLayerNorm32(16)
    with torch.no_grad():
        norm.weight.normal_()
        norm.bias.normal_()
    for dtype in (torch.float32, torch.float16):
        x = torch.randn(2, 16, 5, 6, 7).to(dtype)
        h = norm(x)
        # by hand: channels last -> layer norm in float32 -> back to x's dtype -> channels first, contiguous
        ref = torch.nn.functional.layer_norm(x.permute(0, 2, 3, 4, 1).float(), (16,), norm.weight, norm.bias,
                                             norm.eps).type(dtype).permute(0, 4, 1, 2, 3).contiguous()
        assert h.is_contiguous() and h.dtype == dtype
        assert torch.equal(h, ref)


def test_training_task_keeps_norm_strides_and_a_loaded_model_does_not(tmp_path):
    from lostcli.train.vae import SparseVaeTask, VaeLossConfig

    vae = SparseStructureVAE(_small_cfg())
    norms = [m for m in vae.modules() if isinstance(m, ChannelLayerNorm32)]
    assert norms and not any(n.keep_strides for n in norms)  # built: TRELLIS's contiguous norms
    x = torch.randn(1, 8, 4, 4, 4)
    exact = norms[0](x)
    SparseVaeTask(vae, VaeLossConfig())  # training: the faster channels-last strides
    assert all(n.keep_strides for n in norms)
    fast = norms[0](x)
    assert not fast.is_contiguous() and torch.equal(fast, exact)  # same values, other strides
    vae.save_pretrained(tmp_path / "vae")
    loaded = [m for m in load_vae(tmp_path / "vae").modules() if isinstance(m, ChannelLayerNorm32)]
    assert len(loaded) == len(norms) and not any(n.keep_strides for n in loaded)


def _norms(net: torch.nn.Module) -> tuple[list[type], type]:
    """(norm classes of every ResBlock3d, in order; the out_layer's norm class)."""
    blocks = [m for m in net.modules() if isinstance(m, ResBlock3d)]
    return [type(n) for b in blocks for n in (b.norm1, b.norm2)], type(net.out_layer[0])


def test_norm_type_group_changes_only_the_output_layer_norm():
    # TRELLIS builds every ResBlock3d with its default ChannelLayerNorm32; norm_type picks the out_layer's norm only.
    cfg = _small_cfg(norm_type="group", enc_channels=[32, 32, 64], dec_channels=[64, 32, 32])  # GroupNorm(32, C)
    vae = SparseStructureVAE(cfg)
    for net in (vae.encoder, vae.decoder):
        blocks, out = _norms(net)
        assert len(blocks) == 2 * (3 + 1) and set(blocks) == {ChannelLayerNorm32}
        assert out is GroupNorm32
        assert [m for m in net.modules() if isinstance(m, torch.nn.GroupNorm)] == [net.out_layer[0]]
    layer = SparseStructureVAE(_small_cfg(enc_channels=[32, 32, 64], dec_channels=[64, 32, 32]))
    for net in (layer.encoder, layer.decoder):
        blocks, out = _norms(net)
        assert set(blocks) == {ChannelLayerNorm32} and out is ChannelLayerNorm32
    # same keys and shapes either way (both norms hold weight + bias [C])
    assert {k: v.shape for k, v in vae.state_dict().items()} == {k: v.shape for k, v in layer.state_dict().items()}
    z = vae.encode(torch.rand(1, 256, 3) * 2 - 1, None)
    assert vae.decode_logits(z).shape == (1, 1, 16, 16, 16)


@pytest.mark.parametrize("kind", ["enc", "dec"])
def test_release_layout_is_the_same_with_group_norm(kind):
    fx = _fixture(kind)
    with torch.device("meta"):
        net = NETS[kind](**{**fx["constructor_args"], "norm_type": "group"})
    assert [(k, list(v.shape)) for k, v in net.state_dict().items()] == [(k, s) for k, s, _ in fx["state_dict"]]
    blocks, out = _norms(net)
    assert set(blocks) == {ChannelLayerNorm32} and out is GroupNorm32


def test_fp16_forward_casts():
    torch.manual_seed(0)
    enc = SparseStructureEncoder(1, 4, 1, [8, 8], num_res_blocks_middle=1, use_fp16=True)
    assert enc.blocks[0].conv1.weight.dtype == torch.float16 and enc.input_layer.weight.dtype == torch.float32
    mean, logvar = enc.moments(torch.zeros(1, 1, 4, 4, 4))
    assert mean.dtype == torch.float32 and mean.shape == (1, 4, 2, 2, 2)
    enc.convert_to_fp32()
    assert all(p.dtype == torch.float32 for p in enc.parameters())


# ----------------------------------------------------------------------------------------------------
# Frames, voxels, grid layout
# ----------------------------------------------------------------------------------------------------


def test_frame_rotation_is_proper_and_matches_trellis_to_glb():
    xyz = torch.randn(5, 3)
    uvw = to_trellis_frame(xyz)
    # TRELLIS's to_glb maps its z-up (u, v, w) to y-up by (u, v, w) @ [[1,0,0],[0,0,-1],[0,1,0]] = (u, w, -v)
    to_glb = torch.tensor([[1.0, 0, 0], [0, 0, -1], [0, 1, 0]])
    assert torch.allclose(uvw @ to_glb, xyz)
    assert torch.allclose(from_trellis_frame(uvw), xyz)
    R = to_trellis_frame(torch.eye(3))
    assert torch.det(R).item() == pytest.approx(1.0)
    assert torch.equal(to_trellis_frame(xyz, zup=False), xyz)


def test_voxelize_convention():
    pts = torch.tensor([[[0.0, 0.0, 0.0], [-1.0, -1.0, -1.0], [0.26, 0.5, -0.9]]])
    vox = voxelize(pts, 64, zup=True)
    # TRELLIS coords (x, -z, y) / 2: (0, 0, 0) -> 32; (-.5, .5, -.5) -> (0, 64 -> 63, 0);
    # (.13, .45, .25) -> (40, 60, 48)
    want = {(32, 32, 32), (0, 63, 0), (40, 60, 48)}
    assert vox.shape == (1, 1, 64, 64, 64) and vox.dtype == torch.float32
    assert {tuple(i) for i in torch.nonzero(vox[0, 0]).tolist()} == want
    vox = voxelize(pts, 64, zup=False)  # (x, y, z) / 2: (.13, .25, -.45) -> (40, 48, 3)
    assert {tuple(i) for i in torch.nonzero(vox[0, 0]).tolist()} == {(32, 32, 32), (0, 0, 0), (40, 48, 3)}
    # every voxel centre lands in its own voxel
    idx = torch.randint(0, 64, (1, 50, 3))
    back = torch.nonzero(voxelize(voxel_centers(idx, 64), 64)[0, 0])
    assert {tuple(i) for i in back.tolist()} == {tuple(i) for i in idx[0].tolist()}


def test_surface_samples_voxelize_to_the_sphere_shell():
    # TRELLIS marks voxels a triangle touches; for an exact sphere those are the voxels whose cube the
    # sphere crosses (min corner distance <= r <= max corner distance). 400k samples (~90 per voxel of
    # area) must hit all but the barely grazed ones, and nothing else.
    R, r = 64, 0.6
    centre = torch.tensor([0.1, -0.05, 0.2], dtype=torch.float64)
    g = torch.Generator().manual_seed(0)
    d = torch.randn(400_000, 3, generator=g, dtype=torch.float64)
    pts = centre + r * d / d.norm(dim=1, keepdim=True)
    got = voxelize(pts[None], R)[0, 0].bool()

    c = to_trellis_frame(centre) * 0.5  # TRELLIS frame, radius r / 2
    i = torch.arange(R, dtype=torch.float64)
    lo, hi = i / R - 0.5, (i + 1) / R - 0.5
    near = [(torch.clamp(c[k], lo, hi) - c[k]) ** 2 for k in range(3)]
    far = [torch.maximum((lo - c[k]) ** 2, (hi - c[k]) ** 2) for k in range(3)]
    dmin = (near[0][:, None, None] + near[1][None, :, None] + near[2][None, None, :]).sqrt()
    dmax = (far[0][:, None, None] + far[1][None, :, None] + far[2][None, None, :]).sqrt()
    shell = (dmin <= r / 2) & (dmax >= r / 2)
    assert int((got & ~shell).sum()) == 0
    coverage = int((got & shell).sum()) / int(shell.sum())
    assert coverage > 0.95, coverage
    # what samples miss are voxels the sphere only grazes: it enters them by < 0.2 voxel
    depth = torch.minimum(r / 2 - dmin, dmax - r / 2) * R
    assert float(depth[shell & ~got].max()) < 0.2


def test_grid_adapter_layout_and_round_trip():
    z5 = torch.randn(2, 8, 16, 16, 16)
    g = to_grid(z5)
    assert g.shape == (2, 8, 64, 64)
    for x, y, zz in [(0, 0, 0), (5, 3, 15), (15, 15, 15), (6, 10, 1)]:
        row, col = divmod(x, 4)
        assert torch.equal(g[:, :, row * 16 + y, col * 16 + zz], z5[:, :, x, y, zz])
    assert torch.equal(from_grid(g), z5)
    # every 2x2 patch of the mosaic is 4 neighbouring voxels of one slice
    patches = g.reshape(2, 8, 32, 2, 32, 2)
    assert torch.equal(patches[:, :, 9, :, 20, :], z5[:, :, 1 * 4 + 2, 2:4, 8:10])
    z_small = torch.randn(1, 3, 4, 4, 4)
    assert to_grid(z_small).shape == (1, 3, 8, 8) and torch.equal(from_grid(to_grid(z_small)), z_small)


# ----------------------------------------------------------------------------------------------------
# The ShapeVAE
# ----------------------------------------------------------------------------------------------------


def test_tiny_encode_decode_shapes_and_determinism():
    torch.manual_seed(0)
    vae = SparseStructureVAE.from_preset("tiny").eval()
    pts = torch.rand(2, 1024, 3) * 1.8 - 0.9
    with torch.no_grad():
        post = vae.posterior(pts, None)
        z1 = vae.encode(pts, None)  # a second encoder pass: the mean must not move
        zs = post.sample(torch.Generator().manual_seed(1))
        logits = vae.decode_logits(z1)
    assert post.mean.shape == post.logvar.shape == z1.shape == (2, 8, 64, 64)
    assert torch.equal(z1, post.mean)
    assert not torch.allclose(zs, z1) and torch.equal(zs, post.sample(torch.Generator().manual_seed(1)))
    assert logits.shape == (2, 1, 64, 64, 64) and torch.isfinite(logits).all()
    assert not torch.equal(z1[0], z1[1])  # different clouds, different latents


def test_gradients_reach_every_parameter():
    torch.manual_seed(0)
    vae = SparseStructureVAE(_small_cfg())
    for m in vae.modules():  # zero-init conv2 blocks the path to conv1/norms at init: perturb it
        if isinstance(m, ResBlock3d):
            torch.nn.init.normal_(m.conv2.weight, std=0.02)
    pts = torch.rand(2, 256, 3) * 1.6 - 0.8
    vox = vae.voxelize(pts)
    post = vae.encode_voxels(vox)
    logits = vae.decode_logits(post.sample())
    loss = dice_loss(logits, vox) + 1e-3 * post.kl().mean()
    loss.backward()
    dead = [n for n, p in vae.named_parameters() if p.grad is None or float(p.grad.abs().sum()) == 0.0]
    assert not dead, dead


def test_dice_and_kl_match_trellis_formulas():
    logits = torch.tensor([[0.0, 2.0], [-1.0, 3.0]])
    target = torch.tensor([[1.0, 0.0], [1.0, 1.0]])
    s = torch.sigmoid(logits)
    want = 1 - (2 * (s * target).sum() + 1) / (s.sum() + target.sum() + 1)
    assert dice_loss(logits, target).item() == pytest.approx(want.item(), abs=1e-7)
    assert dice_loss(torch.full((4,), 30.0), torch.ones(4)).item() == pytest.approx(0.0, abs=1e-6)
    mean, logvar = torch.randn(3, 8, 8, 8), torch.randn(3, 8, 8, 8)
    trellis_kl = 0.5 * torch.mean(mean.pow(2) + logvar.exp() - logvar - 1)
    assert DiagonalGaussian(mean, logvar).kl().mean().item() == pytest.approx(trellis_kl.item(), rel=1e-6)


def test_occupancy_at_voxel_centres_returns_that_voxels_logit():
    torch.manual_seed(0)
    vae = SparseStructureVAE(_small_cfg()).eval()
    z = torch.randn(2, 8, 8, 8)
    with torch.no_grad():
        volume = vae.decode_logits(z)  # [2, 1, 16, 16, 16]
        idx = torch.randint(0, 16, (2, 40, 3))
        occ = vae.occupancy(z, voxel_centers(idx, 16))
    want = torch.stack([volume[b, 0, idx[b, :, 0], idx[b, :, 1], idx[b, :, 2]] for b in range(2)])
    assert torch.allclose(occ, want, atol=1e-5)
    # halfway between two voxel centres along TRELLIS x: the mean of the two logits
    a, b = torch.tensor([[3, 7, 9]]), torch.tensor([[4, 7, 9]])
    mid = (voxel_centers(a, 16) + voxel_centers(b, 16)) / 2
    got = vae.sample_logits(volume[:1], mid[None])[0, 0]
    assert got.item() == pytest.approx(((volume[0, 0, 3, 7, 9] + volume[0, 0, 4, 7, 9]) / 2).item(), abs=1e-5)


def test_to_mesh_places_the_surface_in_our_frame(monkeypatch):
    vae = SparseStructureVAE.from_preset("tiny")
    centre, r = torch.tensor([0.3, 0.2, -0.1]), 0.45
    idx = torch.stack(torch.meshgrid(*[torch.arange(64)] * 3, indexing="ij"), dim=-1)
    volume = (r - (voxel_centers(idx, 64) - centre).norm(dim=-1))[None, None] * 64  # inside > 0
    monkeypatch.setattr(vae, "decode_logits", lambda z: volume)
    mesh = vae.to_mesh(torch.zeros(8, 64, 64), resolution=64)
    assert mesh is not None and mesh.is_watertight and mesh.volume > 0
    dist = np.linalg.norm(mesh.vertices - centre.numpy(), axis=1)
    assert np.abs(dist - r).max() < 0.02
    monkeypatch.setattr(vae, "decode_logits", lambda z: -torch.ones(1, 1, 64, 64, 64))
    assert vae.to_mesh(torch.zeros(1, 8, 64, 64), resolution=32) is None


def test_save_pretrained_load_vae_round_trip(tmp_path):
    torch.manual_seed(0)
    vae = SparseStructureVAE(_small_cfg()).eval()
    vae.save_pretrained(tmp_path / "vae")
    back = load_vae(tmp_path / "vae")
    assert type(back) is SparseStructureVAE and back.config == vae.config
    pts, xyz = torch.rand(1, 200, 3) - 0.5, torch.rand(1, 50, 3) * 2 - 1
    with torch.no_grad():
        got = back.occupancy(back.encode(pts, None), xyz)
        assert torch.equal(got, vae.occupancy(vae.encode(pts, None), xyz))


# ----------------------------------------------------------------------------------------------------
# Released-checkpoint loader
# ----------------------------------------------------------------------------------------------------

_ENC_ARGS = dict(in_channels=1, latent_channels=8, num_res_blocks=1, num_res_blocks_middle=1,
                 channels=[4, 8, 16], use_fp16=True)
_DEC_ARGS = dict(out_channels=1, latent_channels=8, num_res_blocks=1, num_res_blocks_middle=1,
                 channels=[16, 8, 4], use_fp16=True)


def _write_pair(folder: Path, seed: int = 0) -> tuple[SparseStructureEncoder, SparseStructureDecoder]:
    torch.manual_seed(seed)
    folder.mkdir(parents=True, exist_ok=True)
    enc, dec = SparseStructureEncoder(**_ENC_ARGS), SparseStructureDecoder(**_DEC_ARGS)
    pairs = [("ss_enc_conv3d_16l8_fp16", enc, _ENC_ARGS), ("ss_dec_conv3d_16l8_fp16", dec, _DEC_ARGS)]
    for name, net, args in pairs:
        for p in net.parameters():  # non-trivial values, zero-init convs included
            torch.nn.init.normal_(p, std=0.1)
        (folder / f"{name}.json").write_text(json.dumps({"name": type(net).__name__, "args": args}))
        state = {k: v.contiguous() for k, v in net.state_dict().items()}
        save_file(state, str(folder / f"{name}.safetensors"))
    return enc, dec


def test_load_trellis_pair_from_dir_and_prefixes(tmp_path):
    enc, dec = _write_pair(tmp_path / "ckpts")
    vae = load_trellis_pair(tmp_path)  # finds ckpts/ss_enc_* and ckpts/ss_dec_*
    assert vae.config.enc_channels == [4, 8, 16] and vae.config.use_fp16 and vae.latent_shape == (8, 64, 64)
    for mine, ref in [(vae.encoder, enc), (vae.decoder, dec)]:
        for (k, a), (_, b) in zip(mine.state_dict().items(), ref.state_dict().items()):
            assert a.dtype == b.dtype and torch.equal(a, b), k
    vae32 = load_trellis_pair(tmp_path / "ckpts" / "ss_enc_conv3d_16l8_fp16",
                              tmp_path / "ckpts" / "ss_dec_conv3d_16l8_fp16.json", use_fp16=False)
    assert all(p.dtype == torch.float32 for p in vae32.parameters())
    w = vae32.decoder.blocks[0].conv1.weight
    assert torch.equal(w, dec.blocks[0].conv1.weight.float())


def test_load_trellis_pair_errors(tmp_path):
    _write_pair(tmp_path)
    path = tmp_path / "ss_dec_conv3d_16l8_fp16.safetensors"
    from safetensors.torch import load_file

    sd = load_file(str(path))
    sd["blocks.1.conv.weight"] = torch.zeros(3, 3)
    save_file(sd, str(path))
    with pytest.raises(CheckpointError, match=r"ss_dec_conv3d_16l8_fp16\.safetensors.*blocks\.1\.conv\.wei"):
        load_trellis_pair(tmp_path)
    (tmp_path / "ss_enc_conv3d_16l8_fp16.json").write_text(json.dumps({"name": "Other", "args": {}}))
    with pytest.raises(CheckpointError, match="ss_enc_conv3d_16l8_fp16.json"):
        load_trellis_pair(tmp_path)
    (tmp_path / "ss_enc_conv3d_16l8_fp16.json").write_text(
        json.dumps({"name": "SparseStructureEncoder", "args": {**_ENC_ARGS, "bogus": 1}}))
    with pytest.raises(CheckpointError, match="bogus"):
        load_trellis_pair(tmp_path)
    with pytest.raises(CheckpointError, match="empty_dir_missing: not a directory"):
        load_trellis_pair(tmp_path / "empty_dir_missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="expected one ss_enc_"):
        load_trellis_pair(tmp_path / "empty")
