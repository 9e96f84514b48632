"""Mesh loading, validation, normalisation and export (lostcli.data.mesh)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import trimesh

from lostcli.data.mesh import (
    ONE_PIECE,
    SUPPORTED,
    Normalization,
    export_mesh,
    largest_part_share,
    load_mesh,
    load_normalized,
    mesh_stats,
    normalize_mesh,
    one_piece_share,
)
from lostcli.errors import ConfigError, DataError, MeshError

from conftest import DATA, make_box


# ----------------------------------------------------------------------------------------------------
# Round trips and scenes
# ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("ext", [".glb", ".obj", ".ply"])
def test_export_then_load_round_trips(tmp_path: Path, ext: str) -> None:
    src = load_mesh(DATA / "penguin.glb")
    out = export_mesh(src, tmp_path / "sub" / "dir" / f"penguin{ext}")  # parent folders are created
    assert out.is_file()
    assert [p.name for p in out.parent.iterdir()] == [out.name]  # no temp file left behind
    back = load_mesh(out)
    assert len(back.vertices) == len(src.vertices) == 3362
    assert len(back.faces) == len(src.faces) == 6720
    np.testing.assert_allclose(back.bounds, src.bounds, atol=1e-5)
    assert back.is_watertight


@pytest.mark.parametrize("ext", [".stl", ".off", ".gltf"])
def test_load_other_formats(tmp_path: Path, ext: str) -> None:
    src = make_box((1.0, 2.0, 3.0), center=(1.0, 0.0, -2.0))
    exported = src.export(file_type=ext[1:])
    files = exported if isinstance(exported, dict) else {f"box{ext}": exported}
    for name, data in files.items():  # glTF comes as a .gltf plus its .bin buffers
        (tmp_path / name).write_bytes(data.encode() if isinstance(data, str) else data)
    main = next(tmp_path / n for n in files if n.endswith(ext))
    back = load_mesh(main)
    assert len(back.vertices) == 8 and len(back.faces) == 12  # STL's triangle soup is merged back
    np.testing.assert_allclose(back.bounds, [[0.5, -1.0, -3.5], [1.5, 1.0, -0.5]], atol=1e-6)


def test_extension_is_case_insensitive(tmp_path: Path) -> None:
    path = tmp_path / "BOX.OBJ"
    path.write_text(make_box().export(file_type="obj"))
    assert len(load_mesh(path).faces) == 12


def test_scene_is_merged_with_node_transforms(tmp_path: Path) -> None:
    scene = trimesh.Scene()
    unit = make_box()
    shift = np.eye(4)
    shift[:3, 3] = [3.0, 0.0, 0.0]
    mirror = np.diag([1.0, 1.0, -1.0, 1.0])  # det < 0: faces must be flipped to stay outward
    mirror[:3, 3] = [0.0, 0.0, 5.0]
    scene.add_geometry(unit, node_name="a", geom_name="cube")
    scene.add_geometry(unit, node_name="b", geom_name="cube", transform=shift)  # same geometry, instanced
    scene.add_geometry(make_box((1.0, 1.0, 2.0)), node_name="c", geom_name="tall", transform=mirror)
    scene.add_geometry(trimesh.PointCloud(np.ones((4, 3)) * 50.0), node_name="pts", geom_name="pts")
    path = tmp_path / "scene.glb"
    path.write_bytes(scene.export(file_type="glb"))

    mesh = load_mesh(path)
    assert len(mesh.faces) == 36  # three boxes; the point cloud is ignored
    np.testing.assert_allclose(mesh.bounds, [[-0.5, -0.5, -0.5], [3.5, 0.5, 6.0]], atol=1e-6)
    assert mesh_stats(mesh)["components"] == 3
    # Every part stays outward-oriented (the mirrored one too): total volume is positive and exact.
    assert mesh.volume == pytest.approx(1.0 + 1.0 + 2.0, rel=1e-6)


def test_partly_degenerate_faces_are_dropped(tmp_path: Path) -> None:
    box = make_box()
    v = np.concatenate([box.vertices, [[9.0, 9.0, 9.0], [0.7, 0.7, 0.7]]])  # 8: unreferenced, 9: spike
    f = np.concatenate([box.faces, [[0, 1, 1], [9, 9, 9]]])  # two zero-area faces
    path = tmp_path / "dirty.obj"
    path.write_text(trimesh.Trimesh(v, f, process=False).export(file_type="obj"))
    mesh = load_mesh(path)
    assert len(mesh.faces) == 12 and len(mesh.vertices) == 8
    assert mesh.is_watertight


# ----------------------------------------------------------------------------------------------------
# Normalisation
# ----------------------------------------------------------------------------------------------------


def test_normalize_box_longest_side_and_centre() -> None:
    src = make_box((2.0, 4.0, 1.0), center=(3.0, -1.0, 5.0))
    out, norm = normalize_mesh(src)
    np.testing.assert_allclose(out.bounds, [[-0.475, -0.95, -0.2375], [0.475, 0.95, 0.2375]], atol=1e-12)
    np.testing.assert_allclose(src.bounds.mean(axis=0), [3.0, -1.0, 5.0])  # input left unchanged
    assert norm.scale == pytest.approx(1.9 / 4.0)
    np.testing.assert_allclose(norm.apply(np.array([[3.0, -1.0, 5.0]])), [[0.0, 0.0, 0.0]], atol=1e-12)


def test_up_z_maps_plus_z_to_plus_y() -> None:
    cone = trimesh.creation.cone(radius=0.5, height=3.0)  # apex on +Z, base at z = 0
    out, norm = normalize_mesh(cone, up="z")
    apex_src = cone.vertices[np.argmax(cone.vertices[:, 2])]
    apex_out = norm.apply(apex_src[None])[0]
    assert apex_out[1] == pytest.approx(0.95)  # the apex is now the top (+Y) of the normalised box
    np.testing.assert_allclose(out.extents, [1.9 / 3.0, 1.9, 1.9 / 3.0], atol=1e-9)  # diameter 1, height 3
    direction = norm.apply(np.array([[0.0, 0.0, 1.0]])) - norm.apply(np.zeros((1, 3)))
    np.testing.assert_allclose(direction[0] / np.linalg.norm(direction), [0.0, 1.0, 0.0], atol=1e-12)
    # (x, y, z) -> (x, z, -y): source +Y becomes -Z; a proper rotation keeps the volume positive.
    d_y = norm.apply(np.array([[0.0, 1.0, 0.0]])) - norm.apply(np.zeros((1, 3)))
    np.testing.assert_allclose(d_y[0] / np.linalg.norm(d_y), [0.0, 0.0, -1.0], atol=1e-12)
    assert out.volume > 0


def test_bad_up_axis() -> None:
    with pytest.raises(ConfigError, match="up"):
        normalize_mesh(make_box(), up="x")


def test_normalization_inverse_and_dict_round_trip() -> None:
    _, norm = normalize_mesh(make_box((0.3, 7.0, 2.0), center=(10.0, 20.0, -30.0)), up="z")
    x = np.random.default_rng(0).normal(size=(50, 3))
    np.testing.assert_allclose(norm.inverse(norm.apply(x)), x, atol=1e-12)
    assert norm.apply(x.astype(np.float32)).dtype == np.float32
    again = Normalization.from_dict(json.loads(json.dumps(norm.to_dict())))
    np.testing.assert_array_equal(again.matrix, norm.matrix)
    with pytest.raises(DataError):
        Normalization.from_dict({"matrix": [[1.0, 0.0], [0.0, 1.0]]})
    with pytest.raises(DataError):
        Normalization.from_dict({})


def test_load_normalized_real_mesh() -> None:
    mesh, norm = load_normalized(DATA / "featuretype.glb", up="z")
    assert mesh.extents.max() == pytest.approx(1.9)
    np.testing.assert_allclose(mesh.bounds.mean(axis=0), 0.0, atol=1e-9)
    raw = load_mesh(DATA / "featuretype.glb")
    np.testing.assert_allclose(norm.inverse(mesh.vertices), raw.vertices, atol=1e-9)


# ----------------------------------------------------------------------------------------------------
# Bad inputs: one-line MeshError starting with the path
# ----------------------------------------------------------------------------------------------------


def _nan_mesh() -> trimesh.Trimesh:
    v = [[0, 0, 0], [1, 0, 0], [np.nan, 1, 0], [0, 0, 1]]
    return trimesh.Trimesh(v, [[0, 1, 2], [0, 1, 3]], process=False)


def _write_bad(kind: str, tmp: Path) -> Path:
    if kind == "missing":
        return tmp / "nope.glb"
    if kind == "empty":
        p = tmp / "empty.obj"
        p.write_bytes(b"")
    elif kind == "text_as_glb":
        p = tmp / "notes.glb"
        p.write_text("this is not a binary glTF\nsecond line\n")
    elif kind == "truncated_glb":
        p = tmp / "cut.glb"
        p.write_bytes((DATA / "penguin.glb").read_bytes()[:5000])
    elif kind in ("nan_obj", "nan_ply"):
        ext = kind.split("_")[1]
        p = tmp / f"nan.{ext}"
        data = _nan_mesh().export(file_type=ext)
        p.write_bytes(data.encode() if isinstance(data, str) else data)
    elif kind == "no_triangles":
        p = tmp / "points.obj"
        p.write_text("v 0 0 0\nv 1 0 0\nv 0 1 0\n")
    elif kind == "all_degenerate":
        p = tmp / "flat.obj"
        p.write_text("v 0 0 0\nv 1 0 0\nv 2 0 0\nv 3 0 0\nf 1 2 3\nf 2 3 4\nf 1 1 2\n")
    elif kind == "unsupported":
        p = tmp / "model.fbx"
        p.write_text("whatever")
    else:
        raise AssertionError(kind)
    return p


@pytest.mark.parametrize(
    "kind, needle",
    [
        ("missing", "not found"),
        ("empty", "empty"),
        ("text_as_glb", "corrupt"),
        ("truncated_glb", "corrupt"),
        ("nan_obj", "NaN"),
        ("nan_ply", "NaN"),
        ("no_triangles", "no triangles"),
        ("all_degenerate", "degenerate"),
        ("unsupported", "unsupported"),
    ],
)
def test_bad_input_raises_one_line_mesh_error(tmp_path: Path, kind: str, needle: str) -> None:
    path = _write_bad(kind, tmp_path)
    with pytest.raises(MeshError) as info:
        load_mesh(path)
    msg = str(info.value)
    assert msg.startswith(f"{path}: ")
    assert "\n" not in msg
    assert needle in msg


def test_too_many_faces(tmp_path: Path) -> None:
    path = DATA / "penguin.glb"
    with pytest.raises(MeshError) as info:
        load_mesh(path, max_faces=6719)
    assert str(info.value).startswith(f"{path}: ") and "6719" in str(info.value)
    assert len(load_mesh(path, max_faces=6720).faces) == 6720


def test_export_rejects_unknown_extension(tmp_path: Path) -> None:
    with pytest.raises(MeshError) as info:
        export_mesh(make_box(), tmp_path / "box.stl")
    assert str(info.value).startswith(str(tmp_path / "box.stl"))
    assert not (tmp_path / "box.stl").exists()


def test_supported_extensions() -> None:
    assert SUPPORTED == (".obj", ".glb", ".gltf", ".ply", ".stl", ".off")


# ----------------------------------------------------------------------------------------------------
# Statistics
# ----------------------------------------------------------------------------------------------------


def test_mesh_stats_values() -> None:
    stats = mesh_stats(make_box((1.0, 2.0, 3.0)))
    assert stats == {
        "vertices": 8,
        "faces": 12,
        "watertight": True,
        "components": 1,
        "area": pytest.approx(2 * (2.0 + 3.0 + 6.0)),
        "bbox": [[-0.5, -1.0, -1.5], [0.5, 1.0, 1.5]],
    }
    two = trimesh.util.concatenate([make_box(), make_box(center=(5.0, 0.0, 0.0))])
    assert mesh_stats(two)["components"] == 2
    avocado = mesh_stats(load_mesh(DATA / "avocado.glb"))
    assert avocado["watertight"] is False and avocado["faces"] == 682


def test_largest_part_share_by_area() -> None:
    one = make_box((1.0, 2.0, 3.0))  # area 22
    assert largest_part_share(one) == pytest.approx(1.0)
    # a 1x1x1 box (area 6) beside it, apart: 22 / 28 of the surface in the largest part
    apart = trimesh.util.concatenate([one, make_box((1.0, 1.0, 1.0), center=(5.0, 0.0, 0.0))])
    assert largest_part_share(apart) == pytest.approx(22 / 28)
    assert largest_part_share(None) is None and largest_part_share(trimesh.Trimesh()) is None
    # a small chip (a 0.1 cube, area 0.06) leaves the shape in one piece by the 0.95 bar; a top over a detached
    # stem does not
    chip = trimesh.util.concatenate([one, make_box((0.1, 0.1, 0.1), center=(3.0, 0.0, 0.0))])
    assert largest_part_share(chip) == pytest.approx(22 / 22.06)
    assert one_piece_share([largest_part_share(m) for m in (one, apart, chip, None)]) == pytest.approx(0.5)
    assert ONE_PIECE == 0.95 and one_piece_share([]) is None
