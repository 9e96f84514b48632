"""The shape-VAE training stage as a library: tasks, the model builder and the VAE recipes."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from lostcli.config import load_config
from lostcli.errors import ConfigError
from lostcli.latent.direct3d import TriplaneVAE
from lostcli.latent.trellis import ResBlock3d, SparseStructureVAE
from lostcli.train.vae import (
    SparseVaeTask,
    VaeLossConfig,
    VaeModelConfig,
    VaeRunConfig,
    VaeTask,
    build_model,
    make_task,
)

REPO = Path(__file__).resolve().parents[1]


def sphere_batch(radii=(0.4, 0.7), n_surface: int = 256, n_occ: int = 256, seed: int = 0) -> dict:
    """Spheres of the given radii: surface points/normals [B, Ns, 3], occupancy queries [B, No, 3] with exact sdf."""
    g = torch.Generator().manual_seed(seed)
    r = torch.tensor(radii)[:, None, None]  # [B, 1, 1]
    d = torch.randn(len(radii), n_surface, 3, generator=g)
    d = d / d.norm(dim=-1, keepdim=True)
    q = torch.rand(len(radii), n_occ, 3, generator=g) * 2 - 1
    return {"surface_points": d * r, "surface_normals": d, "occ_points": q, "occ_sdf": q.norm(dim=-1) - r[:, :, 0]}


def tiny_triplane() -> TriplaneVAE:
    return build_model(VaeModelConfig(arch="triplane", preset="tiny", overrides={"triplane_res": 4}))


def dead_params(module: torch.nn.Module) -> list[str]:
    return [n for n, p in module.named_parameters()
            if p.requires_grad and (p.grad is None or float(p.grad.abs().sum()) == 0.0)]


# ----------------------------------------------------------------------------------------------------
# Tasks
# ----------------------------------------------------------------------------------------------------


def test_vae_task_loss_dict_and_gradients():
    torch.manual_seed(0)
    vae = tiny_triplane()
    assert isinstance(vae, TriplaneVAE) and vae.latent_shape == (8, 4, 12)
    cfg = VaeLossConfig(points=128, queries=128, kl_weight=0.1)
    task = VaeTask(vae, cfg)
    out = task(sphere_batch())
    assert set(out) == {"loss", "bce", "kl", "occ_acc"}
    assert all(v.dim() == 0 and torch.isfinite(v) for v in out.values())
    assert out["loss"].item() == pytest.approx(out["bce"].item() + 0.1 * out["kl"].item(), rel=1e-5)
    # untrained: occupancy near p = 0.5, so BCE near log 2; accuracy is a fraction
    assert 0.3 < out["bce"].item() < 1.5 and out["kl"].item() > 0 and 0.0 <= out["occ_acc"].item() <= 1.0
    assert not out["bce"].requires_grad and out["loss"].requires_grad
    out["loss"].backward()
    assert not dead_params(task), dead_params(task)


def test_vae_task_lowers_the_loss_on_one_batch():
    torch.manual_seed(0)
    task = VaeTask(tiny_triplane(), VaeLossConfig(points=128, queries=128))
    batch = sphere_batch()
    opt = torch.optim.Adam(task.parameters(), lr=1e-3)
    losses = []
    for _ in range(20):
        out = task(batch)
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
        losses.append(out["loss"].item())
    assert all(math.isfinite(x) for x in losses)
    assert losses[-1] < 0.7 * losses[0], losses
    with torch.no_grad():  # the fitted field now separates inside from outside on those queries
        acc = task(batch)["occ_acc"].item()
    assert acc > 0.75


def test_vae_task_subsample_keeps_rows_together():
    task = VaeTask(tiny_triplane(), VaeLossConfig())
    x = torch.arange(2 * 10 * 2, dtype=torch.float32).view(2, 10, 2)  # row i of item b: (20b + 2i, 20b + 2i + 1)
    sub = task._subsample(x, 4)
    assert sub.shape == (2, 4, 2)
    assert torch.equal(sub[..., 1], sub[..., 0] + 1)  # a row's columns stay together
    for b in range(2):
        rows = (sub[b, :, 0] - 20 * b) / 2
        assert len(set(rows.tolist())) == 4 and all(0 <= r < 10 and r == int(r) for r in rows.tolist())
    assert task._subsample(x, 10) is x and task._subsample(x, 50) is x


def test_sparse_vae_task_loss_dict_and_gradients():
    torch.manual_seed(0)
    vae = build_model(VaeModelConfig(arch="sparse", preset="tiny"))
    assert isinstance(vae, SparseStructureVAE) and vae.latent_shape == (8, 64, 64)
    for m in vae.modules():  # zero-init conv2 blocks the path to conv1/norm1 at init: perturb it
        if isinstance(m, ResBlock3d):
            torch.nn.init.normal_(m.conv2.weight, std=0.02)
    cfg = VaeLossConfig(points=256, kl_weight=1e-3)
    task = make_task(vae, VaeRunConfig(model=VaeModelConfig(arch="sparse"), loss=cfg))
    assert type(task) is SparseVaeTask
    out = task(sphere_batch())
    assert set(out) == {"loss", "dice", "kl", "iou"}
    assert all(v.dim() == 0 and torch.isfinite(v) for v in out.values())
    assert out["loss"].item() == pytest.approx(out["dice"].item() + 1e-3 * out["kl"].item(), rel=1e-5)
    assert 0.0 < out["dice"].item() <= 1.0 and 0.0 <= out["iou"].item() <= 1.0
    out["loss"].backward()
    assert not dead_params(task), dead_params(task)


def test_make_task_picks_the_class_and_export_records_the_run(tmp_path):
    run = VaeRunConfig()
    task = make_task(tiny_triplane(), run, run_config={"loss": {"points": 77}})
    assert type(task) is VaeTask
    task.export(tmp_path / "vae")
    from lostcli.latent.base import load_vae

    back = load_vae(tmp_path / "vae")
    assert back.extra_config["run"] == {"loss": {"points": 77}} and back.latent_shape == (8, 4, 12)


# ----------------------------------------------------------------------------------------------------
# build_model errors
# ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("cfg, match", [
    (VaeModelConfig(arch="voxels"), r"^model\.arch: 'voxels' is not one of \['sparse', 'triplane'\]"),
    (VaeModelConfig(preset="huge"), r"^model\.preset: 'huge' .*known: direct3d, tiny"),
    (VaeModelConfig(arch="sparse", preset="direct3d"), r"^model\.preset: 'direct3d' .*known: trellis, tiny"),
    (VaeModelConfig(overrides={"bogus": 1}), r"^model\.overrides\.bogus: unknown key .*triplane_res"),
    (VaeModelConfig(overrides={"triplane_res": "big"}), r"^model\.overrides\.triplane_res: expected an integer"),
    (VaeModelConfig(arch="sparse", overrides={"resolution": 10}), r"^model\.overrides: resolution 10 is not divisible"),
])
def test_build_model_errors_name_the_model_path(cfg, match):
    with pytest.raises(ConfigError, match=match):
        build_model(cfg)


def test_build_model_overrides_reach_the_config():
    vae = build_model(VaeModelConfig(overrides={"triplane_res": 4, "latent_dim": 3}))
    assert vae.latent_shape == (3, 4, 12) and vae.preset == "tiny"
    assert vae.config.triplane_dim == 16  # untouched fields keep the preset's values


# ----------------------------------------------------------------------------------------------------
# Recipes
# ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("recipe, cls, latent, params", [
    ("recipes/tiny/vae.yaml", TriplaneVAE, (8, 8, 24), None),
    ("recipes/paper/vae-direct3d.yaml", TriplaneVAE, (16, 32, 96), 119_275_265),
    ("recipes/trellis/vae.yaml", SparseStructureVAE, (8, 64, 64), 132_969_393),
])
def test_recipes_load_and_build(recipe, cls, latent, params):
    cfg = load_config(VaeRunConfig, REPO / recipe)
    if params is None:
        vae = build_model(cfg.model)
        assert next(vae.parameters()).device.type == "cpu"
    else:
        with torch.device("meta"):  # shapes only: no 100M+ parameter allocation
            vae = build_model(cfg.model)
        assert vae.num_params() == params
    assert type(vae) is cls and vae.latent_shape == latent
    assert type(make_task(vae, cfg)) is (SparseVaeTask if cls is SparseStructureVAE else VaeTask)
    assert cfg.train.steps >= 1 and cfg.loss.points >= 1 and cfg.optim.lr > 0
