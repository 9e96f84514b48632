"""Direct3D image-to-3D: preprocessing by hand, the two encoders from local folders, the sampler, the pipeline
(save -> reload -> sample -> meshes), the release's file layout, and one-line errors for missing components."""

from __future__ import annotations

import copy
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from lostcli.errors import CheckpointError, DataError
from lostcli.image3d.condition import (CLIP_MEAN, CLIP_STD, DINO_MEAN, DINO_STD, ImageCondition, load_encoders,
                                       load_tower, normalise, preprocess, resize_batch)
from lostcli.image3d.pipeline import (ImageTo3D, ImageTo3DConfig, SchedulerConfig, make_scheduler,
                                      read_release_config, sample_latents)
from lostcli.latent.direct3d import TriplaneVAE
from lostcli.latent.direct3d_dit import Direct3DDiT

pytestmark = pytest.mark.usefixtures("one_thread")

# The released config.yaml (hub repo DreamTechAI/Direct3D; the LoST authors' copy), as data.
RELEASE_YAML = """\
vae:
  target: direct3d.models.vae.D3D_VAE
  params: {triplane_res: 32, triplane_dim: 32, latent_dim: 16, num_freqs: 8, num_attention_heads: 12,
           attention_head_dim: 64, num_encoder_layers: 8, num_geodecoder_layers: 5, latents_scale: 2.45}
dit:
  target: direct3d.models.dit.D3D_DiT
  params: {attention_bias: true, attention_head_dim: 72, num_attention_heads: 16, semantic_channels: 1024,
           pixel_channels: 1024, in_channels: 16, out_channels: 16, num_layers: 44, patch_size: 2,
           sample_size: [32, 96]}
semantic_encoder:
  target: direct3d.models.condition.ClipImageEncoder
  params: {version: openai/clip-vit-large-patch14}
pixel_encoder:
  target: direct3d.models.condition.DinoEncoder
  params: {version: facebook/dinov2-large}
scheduler:
  target: diffusers.schedulers.EulerAncestralDiscreteScheduler
  params: {num_train_timesteps: 1000, beta_start: 0.0001, beta_end: 0.02, beta_schedule: "linear",
           prediction_type: "epsilon"}
"""


@pytest.fixture(scope="module")
def towers(tmp_path_factory) -> tuple[Path, Path]:
    """Tiny random CLIP vision and DINOv2 towers (width 32, one layer, 224 input) saved as local folders."""
    from transformers import CLIPVisionConfig, CLIPVisionModel, Dinov2Config, Dinov2Model

    root = tmp_path_factory.mktemp("towers")
    torch.manual_seed(0)
    small = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, image_size=224,
                 patch_size=14)
    CLIPVisionModel(CLIPVisionConfig(projection_dim=16, **small)).save_pretrained(root / "clip")
    Dinov2Model(Dinov2Config(**small)).save_pretrained(root / "dino")
    return root / "clip", root / "dino"


def _perturb(module: torch.nn.Module, std: float = 0.05) -> None:
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn_like(p) * std)


@pytest.fixture(scope="module")
def pipe(towers) -> ImageTo3D:
    torch.manual_seed(0)
    p = ImageTo3D.from_preset("tiny", semantic_encoder=towers[0], pixel_encoder=towers[1])
    _perturb(p.dit)  # off the zero-output init, so the conditions and the seed show in the latents
    return p


def _images() -> list[Image.Image]:
    """An RGBA object on transparency and an RGB image on white, of different sizes."""
    a = np.zeros((60, 40, 4), dtype=np.uint8)
    a[10:40, 5:30] = (200, 30, 30, 255)
    b = np.full((50, 70, 3), 255, dtype=np.uint8)
    b[20:30, 10:60] = (20, 90, 200)
    return [Image.fromarray(a, "RGBA"), Image.fromarray(b, "RGB")]


# ----------------------------------------------------------------------------------------------------
# Preprocessing
# ----------------------------------------------------------------------------------------------------


def test_rgba_is_cropped_padded_composited_and_margined():
    arr = np.zeros((100, 80, 4), dtype=np.uint8)  # fully transparent (black underneath)
    arr[10:30, 5:45] = (255, 0, 0, 255)  # opaque red object: rows 10..29, cols 5..44
    arr[10, 5] = (0, 0, 0, 128)  # a half-transparent black corner pixel (alpha > 100: inside the box)
    arr[90, 70] = (0, 0, 255, 90)  # alpha <= 100: outside the box, and far away
    x = preprocess(Image.fromarray(arr, "RGBA"))
    # crop 20 x 40 -> square 40 (10 rows above, 10 below) -> margin int(40 * 0.04) = 1 -> 42 x 42
    assert x.shape == (3, 42, 42) and x.dtype == torch.float32
    want = np.full((42, 42, 3), 255, dtype=np.uint8)
    want[11:31, 1:41] = (255, 0, 0)
    a = 128 / 255
    want[11, 1] = int((1 - a) * 255)  # black * a + white * (1 - a), truncated
    assert want[11, 1, 0] == 127
    assert torch.equal((x * 255).round().to(torch.uint8).permute(1, 2, 0), torch.from_numpy(want))


def test_rgb_is_only_padded_and_nearly_empty_alpha_is_not_cropped(tmp_path):
    rgb = np.zeros((30, 50, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "dark.png")
    x = preprocess(tmp_path / "dark.png")  # read with PIL from a path
    # square 50 (10 white rows above, 10 below), margin 2 -> 54
    assert x.shape == (3, 54, 54)
    assert x[:, 12:42, 2:52].max() == 0 and x[:, :12].min() == 1 and x[:, 42:].min() == 1 and x[:, :, :2].min() == 1
    sparse = np.zeros((100, 100, 4), dtype=np.uint8)
    sparse[50, 50] = (0, 0, 0, 255)  # 1 pixel of 10^4 < 0.1 %: keep the whole image
    y = preprocess(Image.fromarray(sparse, "RGBA"))
    assert y.shape == (3, 108, 108) and y[:, 54, 54].max() == 0 and y[:, 0, 0].min() == 1


def test_bad_images_are_one_line(tmp_path):
    with pytest.raises(DataError, match=r"nope.png: image not found$"):
        preprocess(tmp_path / "nope.png")
    (tmp_path / "junk.png").write_bytes(b"not an image")
    with pytest.raises(DataError, match=r"junk.png: not a readable image"):
        preprocess(tmp_path / "junk.png")


def test_resize_is_antialiased_bilinear_to_224():
    x = torch.rand(3, 448, 448)
    out = resize_batch([x, torch.full((3, 42, 42), 0.25)], 224)
    assert out.shape == (2, 3, 224, 224)
    # Halving with the antialiased (triangle) filter: taps 2i-1 .. 2i+2 weighted (1, 3, 3, 1) / 8 per axis.
    w = torch.tensor([1.0, 3.0, 3.0, 1.0]) / 8
    kernel = (w[:, None] * w[None, :]).expand(3, 1, 4, 4)
    interior = torch.nn.functional.conv2d(x[None, :, 1:, 1:], kernel, stride=2, groups=3)[0]  # i = 1 .. 222
    torch.testing.assert_close(out[0, :, 1:223, 1:223], interior)
    torch.testing.assert_close(out[1], torch.full((3, 224, 224), 0.25))


# ----------------------------------------------------------------------------------------------------
# Encoders
# ----------------------------------------------------------------------------------------------------


def test_encoders_read_the_release_outputs(towers):
    from transformers import CLIPVisionModel, Dinov2Model

    enc = load_encoders(*towers)
    clip, dino = CLIPVisionModel.from_pretrained(towers[0]), Dinov2Model.from_pretrained(towers[1])
    images = torch.rand(2, 3, 224, 224)
    cond = enc(images)
    assert cond.pixel.shape == (2, 257, 32) and cond.semantic.shape == (2, 257, 32) and cond.pooled.shape == (2, 32)
    with torch.no_grad():
        c_out = clip(pixel_values=normalise(images, CLIP_MEAN, CLIP_STD))
        d_out = dino(pixel_values=normalise(images, DINO_MEAN, DINO_STD))
    torch.testing.assert_close(cond.semantic, c_out.last_hidden_state)  # before the post-LayerNorm
    torch.testing.assert_close(cond.pooled, c_out.last_hidden_state[:, 0])  # the CLS token of that state
    assert not torch.allclose(cond.pooled, c_out.pooler_output)  # not the post-LN pooled output
    torch.testing.assert_close(cond.pixel, d_out.last_hidden_state)  # CLS + patches, after DINOv2's LayerNorm
    assert normalise(torch.ones(1, 3, 1, 1), CLIP_MEAN, CLIP_STD)[0, 0, 0, 0].item() == pytest.approx(
        (1 - 0.48145466) / 0.26862954)
    assert all(not p.requires_grad for p in enc.parameters())


def test_missing_tower_files_and_offline_hub_ids_are_one_line(towers, tmp_path):
    shutil.copytree(towers[1], tmp_path / "dino")
    (tmp_path / "dino" / "model.safetensors").unlink()
    with pytest.raises(CheckpointError) as e:
        load_tower("pixel", tmp_path / "dino")
    assert str(e.value).startswith(f"{tmp_path / 'dino' / 'model.safetensors'}: not found") and "\n" not in str(e.value)
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match=r"empty/config.json: not found"):
        load_tower("semantic", tmp_path / "empty")
    with pytest.raises(CheckpointError) as e:  # HF_HUB_OFFLINE=1 (conftest) and not in any cache
        load_tower("pixel", "lost-tests/no-such-dinov2")
    msg = str(e.value)
    assert msg.startswith("lost-tests/no-such-dinov2: could not load the pixel encoder") and "\n" not in msg


# ----------------------------------------------------------------------------------------------------
# Sampler
# ----------------------------------------------------------------------------------------------------


def _cond(B: int = 2, seed: int = 0) -> ImageCondition:
    g = torch.Generator().manual_seed(seed)
    semantic = torch.randn(B, 257, 32, generator=g)
    return ImageCondition(pixel=torch.randn(B, 257, 32, generator=g), semantic=semantic, pooled=semantic[:, 0])


def _manual(dit, cond: ImageCondition, steps: int, guidance: float | None, seed: int) -> torch.Tensor:
    """The release's loop written out with separate conditional / unconditional calls (guidance None: cond only)."""
    sched = make_scheduler(SchedulerConfig())
    sched.set_timesteps(steps)
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(cond.pixel.shape[0], 8, 8, 24, generator=g)
    zero = cond.zeros_like()
    with torch.no_grad():
        for t in sched.timesteps:
            x = sched.scale_model_input(z, t)
            tt = t.expand(z.shape[0])
            eps = dit(x, tt, cond.pixel, cond.semantic, cond.pooled)
            if guidance is not None:
                eps_u = dit(x, tt, zero.pixel, zero.semantic, zero.pooled)
                eps = eps_u + guidance * (eps - eps_u)
            z = sched.step(eps, t, z, generator=g).prev_sample
    return z


def test_scheduler_is_the_release_one():
    sched = make_scheduler(SchedulerConfig())
    sched.set_timesteps(50)
    assert type(sched).__name__ == "EulerAncestralDiscreteScheduler"
    assert sched.config.prediction_type == "epsilon" and sched.config.beta_schedule == "linear"
    assert len(sched.timesteps) == 50 and sched.timesteps[0].item() == 999.0
    betas = torch.linspace(1e-4, 0.02, 1000, dtype=torch.float32)
    torch.testing.assert_close(sched.betas, betas)


def test_same_seed_same_latents_other_seed_other_latents(pipe):
    cond = _cond()
    run = lambda seed: sample_latents(pipe.dit, cond, SchedulerConfig(), 4, 4.0, torch.Generator().manual_seed(seed))
    a, b, c = run(7), run(7), run(8)
    assert a.shape == (2, 8, 8, 24) and torch.isfinite(a).all()
    assert torch.equal(a, b) and not torch.allclose(a, c)


def test_guidance_one_is_the_conditional_branch_alone(pipe):
    cond = _cond()
    got = sample_latents(pipe.dit, cond, SchedulerConfig(), 5, 1.0, torch.Generator().manual_seed(3))
    assert torch.equal(got, _manual(pipe.dit, cond, 5, None, 3))
    guided = sample_latents(pipe.dit, cond, SchedulerConfig(), 5, 4.0, torch.Generator().manual_seed(3))
    assert not torch.allclose(guided, got, atol=1e-3)
    # guidance 4: eps_u + 4 (eps_c - eps_u) with zeros in place of every condition (batched vs separate calls)
    torch.testing.assert_close(guided, _manual(pipe.dit, cond, 5, 4.0, 3), rtol=1e-4, atol=1e-4)


# ----------------------------------------------------------------------------------------------------
# Pipeline
# ----------------------------------------------------------------------------------------------------


def test_tiny_pipeline_save_reload_sample_and_decode(pipe, tmp_path):
    pipe.save_pretrained(tmp_path / "p")
    assert {f.name for f in (tmp_path / "p").iterdir()} == {"config.json", "vae", "dit", "semantic_encoder",
                                                            "pixel_encoder"}
    again = ImageTo3D.from_pretrained(tmp_path / "p")
    assert again.vae.config.latents_scale == 2.45 and again.config == pipe.config
    images = _images()
    z = pipe(images, steps=3, guidance=4.0, seed=11)
    assert z.shape == (2, 8, 8, 24)
    assert torch.equal(again(images, steps=3, guidance=4.0, seed=11), z)
    assert not torch.allclose(pipe(images[::-1], steps=3, guidance=4.0, seed=11), z)  # the images matter

    with torch.no_grad():
        planes = pipe.vae.decode_planes(z[:1])
        logits = pipe.vae.query_planes(planes, torch.rand(1, 512, 3) * 2 - 1)
    level = float(logits.median())  # an iso-level the field surely crosses
    meshes = again.decode(z, resolution=16, threshold=level)
    assert len(meshes) == 2 and meshes[0] is not None and len(meshes[0].faces) > 0
    assert np.abs(meshes[0].vertices).max() <= 1.0 + 1e-6
    assert again.decode(z, resolution=8, threshold=float(logits.max()) + 1e6) == [None, None]  # no surface


def test_decode_divides_by_latents_scale(pipe):
    z = torch.randn(1, 8, 8, 24)
    unit = copy.deepcopy(pipe.vae)
    unit.config.latents_scale = 1.0
    with torch.no_grad():
        torch.testing.assert_close(pipe.vae.decode_planes(z), unit.decode_planes(z / 2.45))
        assert not torch.allclose(pipe.vae.decode_planes(z), unit.decode_planes(z), atol=1e-4)


def test_missing_component_of_a_saved_pipeline_is_one_line(pipe, tmp_path):
    pipe.save_pretrained(tmp_path / "p")
    (tmp_path / "p" / "dit" / "model.safetensors").unlink()
    with pytest.raises(CheckpointError) as e:
        ImageTo3D.from_pretrained(tmp_path / "p")
    assert str(e.value).startswith(f"{tmp_path / 'p' / 'dit' / 'model.safetensors'}: not found")
    assert "\n" not in str(e.value)
    shutil.rmtree(tmp_path / "p" / "pixel_encoder")
    with pytest.raises(CheckpointError, match=r"pixel_encoder/config.json: not found"):
        ImageTo3D.from_pretrained(tmp_path / "p")
    with pytest.raises(CheckpointError, match=r"config.json: not found"):
        ImageTo3D.from_pretrained(tmp_path)  # a folder that is neither layout
    with pytest.raises(CheckpointError) as e:  # HF_HUB_OFFLINE=1 (conftest): a hub id fails at once, in one line
        ImageTo3D.from_pretrained("lost-tests/no-such-direct3d")
    msg = str(e.value)
    assert msg.startswith("lost-tests/no-such-direct3d: no such folder, and fetching config.yaml + model.ckpt")
    assert "HF_HUB_OFFLINE" in msg and "\n" not in msg


def test_release_config_yaml_reads_as_the_presets(tmp_path):
    (tmp_path / "config.yaml").write_text(RELEASE_YAML)
    vae, dit, specs, sched = read_release_config(tmp_path / "config.yaml")
    assert vae.latents_scale == 2.45 and vae.triplane_res == 32 and vae.block_out_channels == [128, 256, 512, 512]
    assert dit == Direct3DDiT.presets["direct3d"]
    assert specs == ("openai/clip-vit-large-patch14", "facebook/dinov2-large") and sched == SchedulerConfig()
    (tmp_path / "config.yaml").write_text(RELEASE_YAML.replace("num_layers: 44", "num_layerz: 44"))
    with pytest.raises(CheckpointError, match=r"config.yaml: dit.params.num_layerz: unknown key"):
        read_release_config(tmp_path / "config.yaml")
    with pytest.raises(CheckpointError, match=r"model.ckpt: not found"):
        (tmp_path / "config.yaml").write_text(RELEASE_YAML)
        ImageTo3D.from_pretrained(tmp_path)


def test_release_layout_model_ckpt_loads_both_halves(pipe, towers, tmp_path):
    """A fake release folder from the tiny presets: config.yaml + model.ckpt {"vae", "dit"}, encoders by folder."""
    tiny_vae = {"triplane_res": 8, "latent_dim": 8, "triplane_dim": 16, "num_attention_heads": 4,
                "attention_head_dim": 32, "num_encoder_layers": 2, "num_geodecoder_layers": 3,
                "block_out_channels": [32, 32, 32], "layers_per_block": 1, "latents_scale": 2.45}
    tiny_dit = {"in_channels": 8, "out_channels": 8, "sample_size": [8, 24], "num_layers": 2,
                "num_attention_heads": 2, "attention_head_dim": 16, "semantic_channels": 32, "pixel_channels": 32}
    import yaml

    data = yaml.safe_load(RELEASE_YAML)
    data["vae"]["params"], data["dit"]["params"] = tiny_vae, tiny_dit
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(data))
    torch.save({"vae": pipe.vae.state_dict(), "dit": pipe.dit.state_dict()}, tmp_path / "model.ckpt")
    loaded = ImageTo3D.from_pretrained(tmp_path, semantic_encoder=towers[0], pixel_encoder=towers[1])
    assert loaded.config.steps == 50 and loaded.config.guidance == 4.0
    images = _images()
    assert torch.equal(loaded(images, steps=2, seed=5), pipe(images, steps=2, seed=5))

    torch.save({"vae": pipe.vae.state_dict()}, tmp_path / "model.ckpt")
    with pytest.raises(CheckpointError, match=r"model.ckpt: no 'dit' state dict"):
        ImageTo3D.from_pretrained(tmp_path, semantic_encoder=towers[0], pixel_encoder=towers[1])
    bad = {k: v for k, v in pipe.dit.state_dict().items() if k != "proj_out.bias"}
    torch.save({"vae": pipe.vae.state_dict(), "dit": bad}, tmp_path / "model.ckpt")
    with pytest.raises(CheckpointError, match=r"model.ckpt \[dit\]: does not fit Direct3DDiT: 1 missing "
                                              r"\(first: proj_out.bias\)"):
        ImageTo3D.from_pretrained(tmp_path, semantic_encoder=towers[0], pixel_encoder=towers[1])


def test_mismatched_parts_are_refused(pipe):
    from lostcli.errors import ConfigError

    with pytest.raises(ConfigError, match=r"does not fit the VAE latent \[16, 32, 96\]"):
        with torch.device("meta"):
            big_vae = TriplaneVAE.from_preset("direct3d")
        ImageTo3D(big_vae, pipe.dit, pipe.encoders, ImageTo3DConfig())
