"""Surface sampling, inside tests and occupancy targets (lostcli.data.sampling), on analytic shapes."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import trimesh

from lostcli.data.mesh import load_normalized
from lostcli.data.sampling import (
    OccupancyConfig,
    inside_by_ray_parity,
    inside_by_winding,
    sample_occupancy,
    sample_surface,
    semi_continuous_target,
    signed_distance,
    winding_number,
)

from conftest import DATA, make_box


def _sphere(radius: float = 0.8, subdivisions: int = 5) -> trimesh.Trimesh:
    return trimesh.creation.icosphere(subdivisions=subdivisions, radius=radius)


def _uniform(n: int, bound: float, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).uniform(-bound, bound, size=(n, 3))


# ----------------------------------------------------------------------------------------------------
# Surface samples
# ----------------------------------------------------------------------------------------------------


def test_box_surface_points_and_normals() -> None:
    half = np.array([0.5, 1.0, 1.5])
    pts, nrm = sample_surface(make_box(2 * half), 4000, seed=0)
    assert pts.shape == nrm.shape == (4000, 3) and pts.dtype == nrm.dtype == np.float32
    rel = np.abs(pts) / half  # 1 on the face a point lies on, <= 1 elsewhere
    np.testing.assert_allclose(rel.max(axis=1), 1.0, atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(nrm, axis=1), 1.0, atol=1e-6)
    # The normal is the outward axis of the face the point lies on.
    axis = rel.argmax(axis=1)
    expected = np.zeros_like(nrm)
    expected[np.arange(len(pts)), axis] = np.sign(pts[np.arange(len(pts)), axis])
    np.testing.assert_allclose(nrm, expected, atol=1e-6)
    # Area weighting: the two faces normal to X (2 x 3 each) hold 12 of the total area 2 * (2 + 3 + 6) = 22.
    frac_x = np.mean(axis == 0)
    assert frac_x == pytest.approx(12.0 / 22.0, abs=0.03)


def test_sphere_surface_points_and_outward_normals() -> None:
    pts, nrm = sample_surface(_sphere(1.0), 2000, seed=1)
    r = np.linalg.norm(pts, axis=1)
    assert r.min() > 0.998 and r.max() <= 1.0 + 1e-6  # flat facets lie just inside the unit sphere
    radial = pts / r[:, None]
    assert np.einsum("ij,ij->i", nrm, radial).min() > 0.999


def test_surface_sampling_is_seeded() -> None:
    mesh = _sphere()
    a, na = sample_surface(mesh, 500, seed=7)
    b, nb = sample_surface(mesh, 500, seed=7)
    c, _ = sample_surface(mesh, 500, seed=8)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(na, nb)
    assert not np.allclose(a, c)


# ----------------------------------------------------------------------------------------------------
# Inside tests
# ----------------------------------------------------------------------------------------------------


def test_winding_matches_analytic_box_and_sphere() -> None:
    q = _uniform(4000, 1.0, seed=2)
    box = make_box((1.2, 0.8, 1.6))
    dist_to_box_surface = np.abs(np.abs(q) - [0.6, 0.4, 0.8]).min(axis=1)
    inside_box = np.all(np.abs(q) < [0.6, 0.4, 0.8], axis=1)
    away = dist_to_box_surface > 0.01
    np.testing.assert_array_equal(inside_by_winding(box, q)[away], inside_box[away])

    r = np.linalg.norm(q, axis=1)
    away = np.abs(r - 0.8) > 0.01  # facets deviate < 0.002 from the analytic sphere
    np.testing.assert_array_equal(inside_by_winding(_sphere(0.8), q)[away], (r < 0.8)[away])

    w = winding_number(box, np.array([[0.0, 0.0, 0.0], [2.0, 0.0, 0.0]]))
    np.testing.assert_allclose(w, [1.0, 0.0], atol=1e-3)
    assert winding_number(box, np.zeros((0, 3))).shape == (0,)


def test_open_box_interior_is_mostly_inside() -> None:
    box = make_box()
    top = box.face_normals[:, 1] > 0.5  # remove the +Y face (2 triangles): the box is no longer closed
    open_box = trimesh.Trimesh(box.vertices, box.faces[~top], process=False)
    assert not open_box.is_watertight
    interior = _uniform(2000, 0.35, seed=3)
    assert inside_by_winding(open_box, interior).mean() > 0.95
    w_center = winding_number(open_box, np.zeros((1, 3)))[0]
    assert w_center == pytest.approx(5.0 / 6.0, abs=1e-2)  # the missing face subtends 1/6 of the sphere
    exterior = _uniform(2000, 1.0, seed=4)
    exterior = exterior[np.abs(exterior).max(axis=1) > 0.7]
    assert not inside_by_winding(open_box, exterior).any()


def test_two_disjoint_parts_are_both_inside() -> None:
    ball = _sphere(0.3, 3).apply_translation((0.6, 0.0, 0.0))
    mesh = trimesh.util.concatenate([make_box(center=(-0.6, 0.0, 0.0)), ball])
    q = np.array([[-0.6, 0.0, 0.0], [-0.8, 0.2, -0.3], [0.6, 0.0, 0.0], [0.7, 0.1, 0.0], [0.0, 0.0, 0.0]])
    np.testing.assert_array_equal(inside_by_winding(mesh, q), [True, True, True, True, False])
    np.testing.assert_array_equal(inside_by_ray_parity(mesh, q), [True, True, True, True, False])


def test_ray_parity_on_axis_aligned_box() -> None:
    # Points whose axis-aligned rays would hit the box's triangle edges (the quad diagonals) exactly.
    q = np.array([[0.0, 0.0, 0.0], [0.1, 0.1, 0.1], [0.2, -0.2, 0.0], [0.7, 0.0, 0.0], [0.0, 0.0, -0.9]])
    np.testing.assert_array_equal(inside_by_ray_parity(make_box(), q), [True, True, True, False, False])


def test_ray_parity_agrees_with_winding_on_real_mesh() -> None:
    mesh, _ = load_normalized(DATA / "penguin.glb")
    assert mesh.is_watertight
    surface, _ = sample_surface(mesh, 2000, seed=5)
    near = surface + np.random.default_rng(7).normal(0.0, 0.02, size=(2000, 3))
    q = np.concatenate([_uniform(3000, 1.0, seed=6), near])
    by_winding = inside_by_winding(mesh, q)
    by_rays = inside_by_ray_parity(mesh, q)
    assert 0.05 < by_winding.mean() < 0.6  # both labels occur
    assert np.mean(by_winding == by_rays) >= 0.99


# ----------------------------------------------------------------------------------------------------
# Occupancy samples
# ----------------------------------------------------------------------------------------------------


def test_signed_distance_matches_analytic_sphere() -> None:
    rng = np.random.default_rng(8)
    d = rng.normal(size=(3000, 3))
    radius = rng.uniform(0.1, 1.5, size=3000)
    q = d / np.linalg.norm(d, axis=1, keepdims=True) * radius[:, None]
    sdf = signed_distance(_sphere(0.8), q)
    assert np.abs(sdf - (radius - 0.8)).max() < 0.02
    away = np.abs(radius - 0.8) > 0.01
    np.testing.assert_array_equal(sdf[away] < 0, radius[away] < 0.8)


def test_near_surface_points_stay_in_the_cube() -> None:
    cfg = OccupancyConfig(n_uniform=0, n_near=3000, near_scales=[0.05], bound=1.0)
    pts = sample_occupancy(make_box((1.98, 1.98, 1.98)), cfg, seed=11)["points"]
    assert pts.shape == (3000, 3)
    assert np.abs(pts).max() == pytest.approx(1.0)  # noise pushes many points past 1: they are clamped


def test_sample_occupancy_values() -> None:
    cfg = OccupancyConfig(n_uniform=3000, n_near=3000, near_scales=[0.005, 0.02, 0.05], bound=1.0)
    out = sample_occupancy(_sphere(0.8), cfg, seed=9)
    pts, sdf = out["points"], out["sdf"]
    assert pts.shape == (6000, 3) and sdf.shape == (6000,)
    assert pts.dtype == np.float32 and sdf.dtype == np.float32
    assert np.abs(pts).max() <= 1.0
    r = np.linalg.norm(pts.astype(np.float64), axis=1)
    assert np.abs(sdf - (r - 0.8)).max() < 0.02  # sign and magnitude against the analytic sphere
    # Near-surface groups in config order: the median |offset| of N(0, s) along the normal is 0.674 s.
    for group, s in zip(np.split(sdf[3000:], 3), cfg.near_scales):
        assert np.median(np.abs(group)) == pytest.approx(0.674 * s, rel=0.2)
    # Uniform points: the inside fraction is the sphere's share of the cube.
    assert np.mean(sdf[:3000] < 0) == pytest.approx(4 / 3 * np.pi * 0.8**3 / 8.0, abs=0.03)
    again = sample_occupancy(_sphere(0.8), cfg, seed=9)
    np.testing.assert_array_equal(again["points"], pts)
    assert not np.array_equal(sample_occupancy(_sphere(0.8), cfg, seed=10)["points"], pts)


def test_semi_continuous_target_numpy_and_torch() -> None:
    sdf = np.array([-0.2, -0.01, -0.005, 0.0, 0.005, 0.01, 0.2], dtype=np.float32)
    ramp = [1.0, 1.0, 0.75, 0.5, 0.25, 0.0, 0.0]
    binary = [1.0, 1.0, 1.0, 0.0, 0.0, 0.0, 0.0]
    out = semi_continuous_target(sdf, band=0.01)
    assert isinstance(out, np.ndarray) and out.dtype == np.float32
    np.testing.assert_allclose(out, ramp, atol=1e-6)
    np.testing.assert_array_equal(semi_continuous_target(sdf, band=0.0), binary)

    t = torch.from_numpy(sdf)
    out_t = semi_continuous_target(t, band=0.01)
    assert isinstance(out_t, torch.Tensor) and out_t.dtype == torch.float32
    torch.testing.assert_close(out_t, torch.tensor(ramp), atol=1e-6, rtol=0)
    torch.testing.assert_close(semi_continuous_target(t, band=0.0), torch.tensor(binary))
    with pytest.raises(ValueError):
        semi_continuous_target(sdf, band=-1.0)
