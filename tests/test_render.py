"""Renderer: camera conventions, depth, silhouettes and shading on analytic shapes."""

from __future__ import annotations

import numpy as np
import pytest
import trimesh
from PIL import Image

from lostcli.data.render import (
    AMBIENT,
    BASE_COLOR,
    DIFFUSE,
    LABEL_HEIGHT,
    TITLE_HEIGHT,
    VIEW_SPECS,
    VIEWS,
    RenderSet,
    pixel_to_view,
    preview,
    render_views,
    save_grid,
    views_strip,
)
from lostcli.errors import ConfigError, LostError, MeshError

FACING = round(255 * BASE_COLOR[0] * (AMBIENT + DIFFUSE))  # grey of a surface facing the camera


def sphere(center=(0.0, 0.0, 0.0), radius: float = 0.5, subdivisions: int = 4) -> trimesh.Trimesh:
    m = trimesh.creation.icosphere(subdivisions=subdivisions, radius=radius)
    m.apply_translation(center)
    return m


def quad_rotated_y(angle_deg: float) -> trimesh.Trimesh:
    """A 1 x 1 square facing +Z, rotated about +Y by angle_deg."""
    verts = np.array([[-0.5, -0.5, 0.0], [0.5, -0.5, 0.0], [0.5, 0.5, 0.0], [-0.5, 0.5, 0.0]])
    m = trimesh.Trimesh(verts, [[0, 1, 2], [0, 2, 3]], process=False)
    m.apply_transform(trimesh.transformations.rotation_matrix(np.radians(angle_deg), [0, 1, 0]))
    return m


def mask_centroid(mask: np.ndarray) -> tuple[float, float]:
    u, v = pixel_to_view(mask.shape[0])
    return float(u[mask].mean()), float(v[mask].mean())


def test_pixel_to_view_grid() -> None:
    u, v = pixel_to_view(4)
    np.testing.assert_allclose(u[0], [-0.75, -0.25, 0.25, 0.75])
    np.testing.assert_allclose(u[:, 2], 0.25)
    np.testing.assert_allclose(v[:, 0], [0.75, 0.25, -0.25, -0.75])  # row 0 is the top
    np.testing.assert_allclose(v[1], 0.25)


def test_view_table() -> None:
    assert VIEWS == ("front", "right", "back", "left")
    expected = {  # name: (camera position direction, image right), image up is +Y everywhere
        "front": ((0, 0, 1), (1, 0, 0)),
        "right": ((1, 0, 0), (0, 0, -1)),
        "back": ((0, 0, -1), (-1, 0, 0)),
        "left": ((-1, 0, 0), (0, 0, 1)),
    }
    for name, (origin_dir, right) in expected.items():
        view = VIEW_SPECS[name]
        assert view.name == name
        assert view.origin_dir == origin_dir and view.right == right and view.up == (0, 1, 0)
        np.testing.assert_allclose(np.cross(view.right, view.up), view.origin_dir)  # right-handed


def test_sphere_silhouette_area_and_centre_depth() -> None:
    r = render_views(sphere(radius=0.5), size=97)
    assert r.images.shape == (4, 97, 97, 3) and r.images.dtype == np.uint8
    assert r.depth.shape == (4, 97, 97) and r.depth.dtype == np.float32
    assert r.mask.shape == (4, 97, 97) and r.mask.dtype == np.bool_
    fraction = r.mask.mean(axis=(1, 2))
    np.testing.assert_allclose(fraction, np.pi * 0.5**2 / 4, rtol=0.02)
    np.testing.assert_allclose(r.depth[:, 48, 48], 0.5, atol=2e-3)  # pixel (48, 48) is u = v = 0
    assert (r.depth[~r.mask] == 0).all()
    assert r.depth[r.mask].min() > 0.0 and r.depth[r.mask].max() <= 0.5 + 1e-6


def test_cube_mask_and_depth_are_exact() -> None:
    r = render_views(trimesh.creation.box(extents=(1.0, 1.0, 1.0)), size=64)
    u, v = pixel_to_view(64)
    inside = (np.abs(u) < 0.5) & (np.abs(v) < 0.5)
    for k in range(4):
        np.testing.assert_array_equal(r.mask[k], inside)
        np.testing.assert_allclose(r.depth[k][inside], 0.5, atol=1e-6)
        # a crease of 90 degrees is shaded flat: the whole face has the facing grey
        assert (r.images[k][inside] == FACING).all()


# centre of a radius-0.25 sphere -> view -> (mask centroid u, v; front-most depth), from the conventions
OFF_CENTRE = {
    (0.5, 0.0, 0.0): {
        "front": (0.5, 0.0, 0.25),  # +X is image right in the front view
        "right": (0.0, 0.0, 0.75),  # seen head-on, nearer the camera
        "back": (-0.5, 0.0, 0.25),  # +X is image left from behind
        "left": (0.0, 0.0, -0.25),  # far side
    },
    (0.0, 0.0, 0.5): {
        "front": (0.0, 0.0, 0.75),
        "right": (-0.5, 0.0, 0.25),  # image right is -Z, so +Z lies left
        "back": (0.0, 0.0, -0.25),
        "left": (0.5, 0.0, 0.25),  # image right is +Z
    },
    (0.0, 0.5, 0.0): {name: (0.0, 0.5, 0.25) for name in VIEWS},  # +Y is up everywhere
}


@pytest.mark.parametrize("center", list(OFF_CENTRE))
def test_off_centre_sphere_lands_where_the_conventions_say(center: tuple[float, float, float]) -> None:
    size = 64
    r = render_views(sphere(center, radius=0.25, subdivisions=3), size=size)
    for k, name in enumerate(VIEWS):
        eu, ev, ed = OFF_CENTRE[center][name]
        mu, mv = mask_centroid(r.mask[k])
        assert abs(mu - eu) < 0.02 and abs(mv - ev) < 0.02, (center, name, mu, mv)
        assert abs(r.depth[k][r.mask[k]].max() - ed) < 0.01, (center, name)
        cols = np.nonzero(r.mask[k].any(axis=0))[0]
        rows = np.nonzero(r.mask[k].any(axis=1))[0]
        if eu > 0:
            assert cols.min() >= size // 2, (center, name)  # entirely in the right half
        if eu < 0:
            assert cols.max() < size // 2, (center, name)  # entirely in the left half
        if ev > 0:
            assert rows.max() < size // 2, (center, name)  # entirely in the top half


def test_background_white_and_foreground_not() -> None:
    r = render_views(sphere(radius=0.5, subdivisions=3), size=48)
    assert (r.images[~r.mask] == 255).all()
    assert (r.images[r.mask] < 255).all()
    assert (r.images[r.mask] == r.images[r.mask][:, :1]).all()  # neutral grey: R = G = B


@pytest.mark.parametrize("angle", [0.0, 60.0, 180.0])
def test_lambert_shade_of_a_tilted_quad(angle: float) -> None:
    r = render_views(quad_rotated_y(angle), size=32, views=("front",))
    expected = round(255 * BASE_COLOR[0] * (AMBIENT + DIFFUSE * abs(np.cos(np.radians(angle)))))
    assert r.mask[0].sum() > 0
    assert (r.images[0][r.mask[0]] == expected).all()  # 180: back face, two-sided -> as bright


def test_sphere_brightest_where_normal_faces_camera() -> None:
    size = 65
    r = render_views(sphere(radius=0.5), size=size)
    u, v = pixel_to_view(size)
    radius = np.hypot(u, v)
    for k in range(4):
        grey = r.images[k, ..., 0].astype(float)
        i, j = np.unravel_index(np.argmax(np.where(r.mask[k], grey, -1)), grey.shape)
        assert abs(i - size // 2) <= 2 and abs(j - size // 2) <= 2
        inner = grey[r.mask[k] & (radius < 0.15)].mean()
        middle = grey[r.mask[k] & (radius > 0.3) & (radius < 0.35)].mean()
        outer = grey[r.mask[k] & (radius > 0.45)].mean()
        assert inner > middle > outer


def test_curved_surfaces_are_shaded_smooth() -> None:
    coarse = sphere(radius=0.8, subdivisions=1)  # 80 faces: flat shading shows at most 80 greys
    r = render_views(coarse, size=96, views=("front",))
    assert len(np.unique(r.images[0][r.mask[0]][:, 0])) > len(coarse.faces)


def test_view_subset_keeps_order() -> None:
    m = sphere((0.3, 0.1, -0.2), radius=0.3, subdivisions=2)
    full = render_views(m, size=32)
    sub = render_views(m, size=32, views=("left", "front"))
    assert sub.views == ("left", "front") and sub.images.shape[0] == 2
    np.testing.assert_array_equal(sub.images[0], full.images[3])
    np.testing.assert_array_equal(sub.depth[1], full.depth[0])


def test_open_box_shows_its_inside() -> None:
    box = trimesh.creation.box(extents=(1.0, 1.0, 1.0))
    keep = box.face_normals[:, 2] < 0.5  # drop the two triangles of the +Z face
    open_box = trimesh.Trimesh(box.vertices, box.faces[keep], process=False)
    assert len(open_box.faces) == 10
    r = render_views(open_box, size=64)
    u, v = pixel_to_view(64)
    inside = (np.abs(u) < 0.5) & (np.abs(v) < 0.5)
    np.testing.assert_array_equal(r.mask[0], inside)
    np.testing.assert_allclose(r.depth[0][inside], -0.5, atol=1e-6)  # the inner back wall at z = -0.5
    assert (r.images[0][inside] == FACING).all()  # its back side, lit two-sided
    np.testing.assert_allclose(r.depth[2][inside], 0.5, atol=1e-6)  # back view still sees z = -0.5


def test_empty_mesh_renders_white() -> None:
    r = render_views(trimesh.Trimesh(), size=16)
    assert isinstance(r, RenderSet)
    assert r.images.shape == (4, 16, 16, 3) and (r.images == 255).all()
    assert not r.mask.any() and (r.depth == 0).all()


def test_bad_inputs_raise_lost_errors() -> None:
    bad = sphere(subdivisions=1)
    bad.vertices[0, 0] = np.nan
    with pytest.raises(MeshError, match="NaN"):
        render_views(bad, size=8)
    with pytest.raises(ConfigError, match="unknown view 'top'"):
        render_views(sphere(subdivisions=1), size=8, views=("front", "top"))
    with pytest.raises(LostError):
        pixel_to_view(0)


def test_views_strip_side_by_side() -> None:
    r = render_views(sphere((0.4, 0.0, 0.0), radius=0.3, subdivisions=2), size=24)
    strip = views_strip(r)
    assert strip.shape == (24, 96, 3)
    for k in range(4):
        np.testing.assert_array_equal(strip[:, 24 * k : 24 * (k + 1)], r.images[k])


def test_save_grid_layout_and_pixels(tmp_path) -> None:
    rng = np.random.default_rng(0)
    colour = [rng.integers(0, 256, size=(20, 30, 3), dtype=np.uint8) for _ in range(3)]
    mask = np.zeros((20, 30), dtype=bool)
    mask[5:10] = True
    depth = np.linspace(-1.0, 1.0, 600, dtype=np.float32).reshape(20, 30)
    path = tmp_path / "nested" / "dir" / "grid.png"
    out = save_grid(colour + [mask, depth], path, labels=list("abcde"), ncols=2, title="grid")
    assert out == path and path.exists()
    assert [p.name for p in path.parent.iterdir()] == ["grid.png"]  # no temporary left behind
    img = np.asarray(Image.open(path).convert("RGB"))
    assert img.shape == (TITLE_HEIGHT + 3 * (20 + LABEL_HEIGHT), 60, 3)
    np.testing.assert_array_equal(img[TITLE_HEIGHT : TITLE_HEIGHT + 20, 30:60], colour[1])
    row2 = TITLE_HEIGHT + 2 * (20 + LABEL_HEIGHT)  # third row, first column: the depth map
    np.testing.assert_array_equal(img[row2, 0], [0, 0, 0])  # min of depth
    np.testing.assert_array_equal(img[row2 + 19, 29], [255, 255, 255])  # max of depth
    row1 = TITLE_HEIGHT + 20 + LABEL_HEIGHT  # second row, second column: the mask
    np.testing.assert_array_equal(img[row1 + 7, 40], [0, 0, 0])
    np.testing.assert_array_equal(img[row1 + 2, 40], [255, 255, 255])
    label_band = img[TITLE_HEIGHT + 20 : TITLE_HEIGHT + 20 + LABEL_HEIGHT]
    assert (label_band < 128).any()  # a caption was drawn

    plain = save_grid(colour[:2], tmp_path / "plain.png")
    assert Image.open(plain).size == (60, 20)  # ncols clipped to the number of images
    with pytest.raises(ValueError):
        save_grid(colour, tmp_path / "x.png", labels=["only one"])


def test_preview_writes_labelled_strip(tmp_path) -> None:
    path = tmp_path / "p.png"
    r = preview(sphere(subdivisions=2), path, size=40, label="sphere")
    assert isinstance(r, RenderSet) and r.images.shape == (4, 40, 40, 3)
    img = np.asarray(Image.open(path).convert("RGB"))
    assert img.shape == (40 + LABEL_HEIGHT, 160, 3)
    np.testing.assert_array_equal(img[:40], views_strip(r))
