"""Chamfer / F-score against analytic cases."""

import numpy as np
import pytest
import trimesh

from lostcli.eval.geometry import mesh_metrics, point_metrics


def test_identical_points_zero():
    pts = np.random.default_rng(0).uniform(-1, 1, (500, 3))
    m = point_metrics(pts, pts)
    assert m.chamfer == 0 and m.fscore["fscore_0.01"] == 1.0


def test_shift_gives_known_distance():
    # a dense plane grid shifted along its normal by 0.05: every NN distance is exactly 0.05
    g = np.stack(np.meshgrid(np.linspace(-1, 1, 60), np.linspace(-1, 1, 60)), -1).reshape(-1, 2)
    a = np.c_[g, np.zeros(len(g))]
    b = a + [0, 0, 0.05]
    m = point_metrics(b, a)
    assert m.chamfer == pytest.approx(0.05, abs=1e-9)
    assert m.fscore["fscore_0.02"] == 0.0


def test_concentric_spheres():
    gt = trimesh.creation.icosphere(subdivisions=5, radius=0.5)
    pred = trimesh.creation.icosphere(subdivisions=5, radius=0.55)
    m = mesh_metrics(pred, gt, n=20000)
    assert m.chamfer == pytest.approx(0.05, abs=0.004)
    assert m.fscore["fscore_0.01"] < 0.05 and not m.failed


def test_empty_reconstruction_is_a_failure():
    gt = trimesh.creation.box()
    m = mesh_metrics(None, gt, n=1000)
    assert m.failed and np.isnan(m.chamfer) and m.fscore["fscore_0.01"] == 0.0


def test_nearest_distances_are_exact_against_brute_force():
    """The kd-tree's distances equal a brute-force search (to float32 precision), for far-off queries too."""
    from lostcli.eval.geometry import nearest_distances, surface_tree

    rng = np.random.default_rng(3)
    pts = rng.normal(size=(3000, 3))
    queries = rng.normal(size=(700, 3)) * 3.0 + 1.0
    brute = np.sqrt(((queries[:, None, :] - pts[None]) ** 2).sum(-1)).min(1)
    found = nearest_distances(surface_tree(pts), queries)
    assert found.dtype == np.float64
    np.testing.assert_allclose(found, brute, rtol=1e-6, atol=1e-6)
    m = point_metrics(queries, pts)
    back = np.sqrt(((pts[:, None, :] - queries[None]) ** 2).sum(-1)).min(1)
    assert m.chamfer == pytest.approx((brute.mean() + back.mean()) / 2, rel=1e-6)
