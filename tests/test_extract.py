"""Mesh extraction from an occupancy field: analytic spheres, bounds, orientation, empty fields."""

import math

import numpy as np
import pytest
import torch

from lostcli.errors import LostError
from lostcli.latent.extract import extract_mesh, query_grid


def sphere(radius: float, centre=(0.0, 0.0, 0.0), gain: float = 10.0):
    c = torch.tensor(centre)
    return lambda xyz: gain * (radius - (xyz - c).norm(dim=-1))  # logits: positive inside


def test_sphere_area_watertight_outward():
    r = 0.6
    mesh = extract_mesh(sphere(r), resolution=48, chunk=20000)
    assert mesh is not None
    assert abs(mesh.area - 4 * math.pi * r**2) / (4 * math.pi * r**2) < 0.02
    assert abs(mesh.volume - 4 / 3 * math.pi * r**3) / (4 / 3 * math.pi * r**3) < 0.02  # > 0: outward
    assert mesh.is_watertight and mesh.is_winding_consistent
    d = np.linalg.norm(mesh.vertices, axis=1)
    assert np.abs(d - r).max() < 0.01  # linear interpolation of a linear-in-radius field
    # every face normal points away from the centre
    assert (np.einsum("ij,ij->i", mesh.face_normals, mesh.triangles_center) > 0).all()


def test_offset_sphere_is_not_rescaled():
    # exact spacing 2b/res: the centre survives (Direct3D's /(res+1) would shift it toward -1)
    centre = (0.3, -0.2, 0.1)
    mesh = extract_mesh(sphere(0.4, centre), resolution=32, bound=1.0)
    np.testing.assert_allclose(mesh.vertices.mean(axis=0), centre, atol=2e-3)
    np.testing.assert_allclose(mesh.bounds, [np.subtract(centre, 0.4), np.add(centre, 0.4)], atol=5e-3)
    # bound scales the grid
    mesh2 = extract_mesh(sphere(0.8), resolution=32, bound=2.0)
    assert abs(np.linalg.norm(mesh2.vertices, axis=1).mean() - 0.8) < 0.01


def test_surface_touching_the_bound_is_closed():
    mesh = extract_mesh(sphere(1.3), resolution=16)
    assert mesh.is_watertight and mesh.volume > 0
    assert mesh.vertices.min() >= -1.0 and mesh.vertices.max() <= 1.0
    np.testing.assert_allclose(mesh.bounds, [[-1, -1, -1], [1, 1, 1]], atol=1e-6)


def test_no_surface_gives_none():
    assert extract_mesh(lambda xyz: -torch.ones(len(xyz)), resolution=8) is None
    assert extract_mesh(lambda xyz: torch.ones(len(xyz)), resolution=8) is None
    assert extract_mesh(sphere(0.5), resolution=8, threshold=100.0) is None


def test_grid_order_and_chunk_invariance():
    n = 5
    vol = query_grid(lambda xyz: xyz[:, 0] + 10 * xyz[:, 1] + 100 * xyz[:, 2], resolution=n - 1, chunk=7)
    axis = np.linspace(-1, 1, n)
    want = axis[:, None, None] + 10 * axis[None, :, None] + 100 * axis[None, None, :]  # [ix, iy, iz]
    np.testing.assert_allclose(vol, want, atol=1e-4)
    a = extract_mesh(sphere(0.5), resolution=20, chunk=333)
    b = extract_mesh(sphere(0.5), resolution=20, chunk=65536)
    np.testing.assert_array_equal(a.vertices, b.vertices)


def test_non_finite_field_is_an_error():
    def field(xyz):
        out = sphere(0.5)(xyz)
        out[0] = float("nan")
        return out

    with pytest.raises(LostError, match="non-finite"):
        extract_mesh(field, resolution=8)
