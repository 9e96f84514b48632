"""`prepare_dataset`: good meshes land in the store, bad ones are recorded, re-runs redo nothing."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import trimesh

from lostcli.data.mesh import Normalization
from lostcli.data.prepare import (
    PrepareConfig,
    SourceItem,
    caption_for,
    discover,
    finalize,
    hash_split,
    item_seed,
    prepare_dataset,
    prepare_item,
)
from lostcli.data.sampling import OccupancyConfig
from lostcli.data.store import DatasetStore
from lostcli.errors import ConfigError, DataError

BOX_EXTENTS = (1.0, 2.0, 0.5)  # normalised: longest side 1.9 -> half extents (0.475, 0.95, 0.2375)


def _cfg(**kw) -> PrepareConfig:
    return PrepareConfig(
        surface_points=512, occupancy=OccupancyConfig(n_uniform=512, n_near=512), render_size=32, **kw
    )


def _make_src(root: Path) -> Path:
    src = root / "src"
    (src / "boxes").mkdir(parents=True)
    (src / "round").mkdir()
    trimesh.creation.box(extents=BOX_EXTENTS).export(src / "boxes" / "box.obj")
    trimesh.creation.icosphere(subdivisions=2).export(src / "round" / "icosphere.ply")
    trimesh.creation.cylinder(radius=0.5, height=1.0, sections=16).export(src / "round" / "tallCylinder.glb")
    glb = trimesh.creation.box().export(file_type="glb")
    (src / "corrupt.glb").write_bytes(glb[: len(glb) // 2])  # truncated binary glTF
    (src / "empty.obj").write_bytes(b"")
    (src / "notes.glb").write_text("this is a text file, not a mesh\n")
    (src / "nan.obj").write_text("v nan 0 0\nv 1 0 0\nv 0 1 0\nf 1 2 3\n")
    (src / ".cache").mkdir()
    trimesh.creation.box().export(src / ".cache" / "hidden.obj")  # hidden folders are skipped
    return src


def _shard_mtimes(out: Path) -> dict[str, int]:
    return {p.name: p.stat().st_mtime_ns for p in (out / "items").iterdir()}


def test_prepare_records_failures_and_reruns_redo_nothing(tmp_path):
    src, out = _make_src(tmp_path), tmp_path / "out"
    calls = []
    res = prepare_dataset(src, out, _cfg(), progress=lambda n, total, id: calls.append((n, total, id)))
    assert res.done == 3 and res.skipped == 0 and len(res.failed) == 4
    assert [c[:2] for c in calls] == [(i, 7) for i in range(1, 8)]
    reasons = {Path(f["file"]).name: f["reason"] for f in res.failed}
    for name, reason in reasons.items():
        assert reason.startswith(str(src / name)) and "\n" not in reason
    assert "empty" in reasons["empty.obj"]
    assert "NaN" in reasons["nan.obj"]
    assert "unreadable or corrupt" in reasons["corrupt.glb"]
    assert "unreadable or corrupt" in reasons["notes.glb"]

    st = DatasetStore(out)
    assert st.ids() == ["box", "icosphere", "tallCylinder"]
    assert len(st.failures()) == 4 and st.failures()[0]["size"] is not None
    assert json.loads((out / "config.json").read_text())["surface_points"] == 512

    before = _shard_mtimes(out)
    failures_before = (out / "failures" / "r000.jsonl").read_text()
    again = prepare_dataset(src, out, _cfg())
    assert (again.done, again.skipped, again.failed, again.known_failures) == (0, 3, [], 4)
    assert _shard_mtimes(out) == before
    assert (out / "failures" / "r000.jsonl").read_text() == failures_before

    # A fixed file (new mtime/size) is retried, and its old failure no longer counts.
    (src / "nan.obj").write_text("v 0 0 0\nv 1 0 0\nv 0 1 0\nv 0 0 1\nf 1 3 2\nf 1 2 4\nf 1 4 3\nf 2 3 4\n")
    third = prepare_dataset(src, out, _cfg())
    assert (third.done, third.skipped, third.known_failures) == (1, 3, 3)
    assert sorted(Path(f["file"]).name for f in DatasetStore(out).failures()) == [
        "corrupt.glb", "empty.obj", "notes.glb"
    ]

    changed = _cfg()
    changed.surface_points = 256
    with pytest.raises(DataError, match=r"config.json: .* prepared with a different config \(surface_points\)"):
        prepare_dataset(src, out, changed)
    changed = _cfg(shard_size=1)  # storage layout only: allowed
    assert prepare_dataset(src, out, changed).skipped == 4


def test_mesh_entries_that_cannot_be_opened_are_recorded(tmp_path):
    """A broken symlink or a link loop with a mesh extension is a failure with its reason, never skipped silently;
    a folder whose name ends in a mesh extension is a folder (its meshes are prepared)."""
    src, out = tmp_path / "src", tmp_path / "out"
    (src / "parts.obj").mkdir(parents=True)
    trimesh.creation.box(extents=BOX_EXTENTS).export(src / "good.obj")
    trimesh.creation.box().export(src / "parts.obj" / "inner.obj")
    (src / "x.obj").symlink_to("missing")
    (src / "loop.ply").symlink_to("loop.ply")
    assert [i.source for i in discover(src)] == ["good.obj", "loop.ply", "parts.obj/inner.obj", "x.obj"]

    res = prepare_dataset(src, out, _cfg())
    assert res.done == 2 and DatasetStore(out).ids() == ["good", "inner"]
    reasons = {f["file"]: f["reason"] for f in res.failed}
    assert set(reasons) == {str(src / "x.obj"), str(src / "loop.ply")}
    want = f"{src / 'x.obj'}: broken symbolic link (to 'missing', which cannot be opened)"
    assert reasons[str(src / "x.obj")] == want
    assert reasons[str(src / "loop.ply")].startswith(f"{src / 'loop.ply'}: broken symbolic link (to 'loop.ply'")
    assert {f["file"] for f in DatasetStore(out).failures()} == set(reasons)
    again = prepare_dataset(src, out, _cfg())  # unchanged links are known failures, not retried
    assert (again.done, again.skipped, again.failed, again.known_failures) == (0, 2, [], 2)


def test_arrays_shapes_dtypes_and_geometry(tmp_path):
    src, out = _make_src(tmp_path), tmp_path / "out"
    prepare_dataset(src, out, _cfg())
    st = DatasetStore(out)
    a = st.load("box")
    expected = {
        "surface_points": ((512, 3), np.float32),
        "surface_normals": ((512, 3), np.float16),
        "occ_points": ((1024, 3), np.float32),
        "occ_sdf": ((1024,), np.float32),
        "renders": ((4, 32, 32, 3), np.uint8),
        "depth": ((4, 32, 32), np.float16),
        "mask": ((4, 32, 32), np.bool_),
        "mesh_vertices": ((8, 3), np.float32),
        "mesh_faces": ((12, 3), np.int32),
    }
    assert {k: (v.shape, v.dtype.type) for k, v in a.items()} == expected

    half = 0.95 * np.array(BOX_EXTENTS) / max(BOX_EXTENTS)
    np.testing.assert_allclose(np.abs(a["mesh_vertices"]), np.broadcast_to(half, (8, 3)), atol=1e-6)
    # Surface points lie on a face of the box, normals are unit.
    on_face = np.isclose(np.abs(a["surface_points"]), half, atol=1e-5).any(axis=1)
    assert on_face.all() and (np.abs(a["surface_points"]) <= half + 1e-5).all()
    np.testing.assert_allclose(np.linalg.norm(a["surface_normals"].astype(np.float32), axis=1), 1.0, atol=2e-3)
    # Occupancy sign matches the analytic inside test, away from the boundary.
    p, sdf = a["occ_points"], a["occ_sdf"]
    q = np.abs(p) - half
    analytic = np.linalg.norm(np.maximum(q, 0), axis=1) + np.minimum(q.max(axis=1), 0)  # box SDF
    clear = np.abs(analytic) > 2e-3
    assert clear.sum() > 500 and (analytic[clear] < 0).sum() > 20
    np.testing.assert_array_equal(sdf[clear] < 0, analytic[clear] < 0)
    # Renders: the front view sees the box (x, y) silhouette, depth = front face z where masked.
    front_mask, front_depth = a["mask"][0], a["depth"][0].astype(np.float32)
    assert 0.4 < front_mask.mean() < 0.6  # silhouette 0.95 x 1.9 of the 2 x 2 image: 0.45
    np.testing.assert_allclose(front_depth[front_mask], half[2], atol=1e-3)
    assert (a["renders"][0][~front_mask] == 255).all() and (a["renders"][0][front_mask] < 255).all()

    rec = st.records()[0]
    assert rec["source"] == "boxes/box.obj" and rec["category"] == "boxes"
    assert rec["caption"] == "a 3D model of a box" and rec["stats"]["faces"] == 12
    # The normalization maps the stored mesh back to the source file's frame.
    src_v = Normalization.from_dict(rec["normalization"]).inverse(a["mesh_vertices"].astype(np.float64))
    np.testing.assert_allclose(np.abs(src_v), np.broadcast_to(np.array(BOX_EXTENTS) / 2, (8, 3)), atol=1e-5)


def test_two_ranks_are_disjoint_and_finalize_sees_all(tmp_path):
    src, out = _make_src(tmp_path), tmp_path / "out"
    r0 = prepare_dataset(src, out, _cfg(), rank=0, world_size=2)
    r1 = prepare_dataset(src, out, _cfg(), rank=1, world_size=2)
    assert r0.done + r1.done == 3 and len(r0.failed) + len(r1.failed) == 4
    ids0 = {json.loads(l)["id"] for l in (out / "items" / "shard-r000-00000.jsonl").read_text().splitlines()}
    ids1 = {json.loads(l)["id"] for l in (out / "items" / "shard-r001-00000.jsonl").read_text().splitlines()}
    assert ids0.isdisjoint(ids1) and ids0 | ids1 == {"box", "icosphere", "tallCylinder"}
    manifest = finalize(out)
    assert manifest["items"] == 3 and len(manifest["failures"]) == 4
    assert manifest["shards"] == ["shard-r000-00000.npz", "shard-r001-00000.npz"]
    assert manifest["config"]["render_size"] == 32
    assert json.loads((out / "manifest.json").read_text())["items"] == 3

    # Items are the same whichever rank prepared them: seeds come from (seed, id) only.
    single = tmp_path / "single"
    prepare_dataset(src, single, _cfg())
    for id in ("box", "icosphere", "tallCylinder"):
        a, b = DatasetStore(out).load(id), DatasetStore(single).load(id)
        for k in a:
            np.testing.assert_array_equal(a[k], b[k])


def test_worker_pool_matches_serial(tmp_path):
    src, out = _make_src(tmp_path), tmp_path / "out"
    for p in ("corrupt.glb", "empty.obj", "notes.glb", "nan.obj"):
        (src / p).unlink()
    res = prepare_dataset(src, out, _cfg(shard_size=2), workers=2)
    assert res.done == 3 and res.failed == []
    item = discover(src)[1]
    arrays, _ = prepare_item(item, _cfg(), item_seed(0, item.id))
    got = DatasetStore(out).load(item.id)
    for k in arrays:
        np.testing.assert_array_equal(got[k], arrays[k])


def test_metadata_labels_and_missing_file(tmp_path):
    src, out = _make_src(tmp_path), tmp_path / "out"
    rows = [
        {"file": "boxes/box.obj", "id": "crate/01", "category": "crate", "caption": "a wooden crate", "split": "test"},
        {"file": "tallCylinder.glb", "category": "can", "split": "val", "license": "CC0"},
        {"file": "ghost.obj", "id": "ghost", "category": "none"},
    ]
    (src / "metadata.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    res = prepare_dataset(src, out, _cfg())
    st = DatasetStore(out)
    crate, cyl = st.records(split="test")[0], st.records(split="val")[0]
    assert (crate["id"], crate["category"], crate["caption"]) == ("crate_01", "crate", "a wooden crate")
    assert crate["meta"] == {"source_id": "crate/01"}
    assert (cyl["id"], cyl["category"], cyl["caption"]) == ("tallCylinder", "can", "a 3D model of a tall cylinder")
    assert cyl["meta"] == {"license": "CC0"} and cyl["source"] == "round/tallCylinder.glb"
    ico = st.records(table="items")[1]
    assert (ico["id"], ico["category"]) == ("icosphere", "round")
    ghost = [f for f in res.failed if f["id"] == "ghost"]
    assert len(ghost) == 1 and ghost[0]["reason"] == f"{src / 'ghost.obj'}: file not found"
    assert st.info()["categories"] == {"can": 1, "crate": 1, "round": 1}

    (src / "metadata.jsonl").write_text('{"file": "a.obj", "split": "holdout"}\n')
    with pytest.raises(DataError, match=r"metadata.jsonl:1: split 'holdout' is not one of"):
        discover(src)
    (src / "metadata.jsonl").write_text('{"file": "a.obj"}\n{oops\n')
    with pytest.raises(DataError, match=r"metadata.jsonl:2: malformed JSON line"):
        discover(src)


def test_discover_defaults_and_errors(tmp_path):
    src = tmp_path / "src"
    (src / "a").mkdir(parents=True)
    (src / "b").mkdir()
    for folder in ("a", "b"):
        trimesh.creation.box().export(src / folder / "my chair.obj")
    (src / "readme.txt").write_text("not a mesh")
    items = discover(src)
    assert [i.source for i in items] == ["a/my chair.obj", "b/my chair.obj"]
    assert items[0].id == "my_chair" and items[1].id.startswith("my_chair-") and len(items[1].id) == 17
    assert [i.category for i in items] == ["a", "b"] and items[0].caption == "a 3D model of a my chair"
    assert caption_for("milkTruck_v2") == "a 3D model of a milk truck v2"
    splits = [hash_split(f"shape{i}", 0.1, 0.2) for i in range(2000)]
    assert abs(splits.count("test") / 2000 - 0.2) < 0.03 and abs(splits.count("val") / 2000 - 0.1) < 0.03
    assert hash_split("shape7", 0.1, 0.2) == hash_split("shape7", 0.1, 0.2)
    assert item_seed(0, "box") != item_seed(1, "box") and item_seed(0, "box") == item_seed(0, "box")

    with pytest.raises(DataError, match=f"^{tmp_path / 'nope'}: source folder does not exist"):
        discover(tmp_path / "nope")
    with pytest.raises(ConfigError, match="rank/world_size"):
        prepare_dataset(src, tmp_path / "out", _cfg(), rank=2, world_size=2)
    with pytest.raises(ConfigError, match="up: expected 'y' or 'z'"):
        prepare_dataset(src, tmp_path / "out", _cfg(up="x"))


def test_prepare_item_is_deterministic(tmp_path):
    src = _make_src(tmp_path)
    item = SourceItem(id="ico", path=src / "round" / "icosphere.ply", source="round/icosphere.ply",
                      category="round", caption="c", split="train")
    a, _ = prepare_item(item, _cfg(), 5)
    b, _ = prepare_item(item, _cfg(), 5)
    c, _ = prepare_item(item, _cfg(), 6)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])
    assert not np.array_equal(a["surface_points"], c["surface_points"])
