"""The built-in procedural dataset: watertight shapes, truthful captions, deterministic splits."""

import json
import re

import numpy as np
import pytest
import trimesh

from lostcli.data.synth import (
    CATEGORIES,
    CATEGORY_SYNONYMS,
    build_mesh,
    caption_from_params,
    displace,
    generate_shape,
    item_category,
    item_split,
    sample_params,
    split_cycle,
    synth_dataset,
)
from lostcli.errors import ConfigError


def _names(category: str) -> tuple[str, ...]:
    return (category, *CATEGORY_SYNONYMS[category])


def _has_word(text: str, words) -> bool:
    return any(re.search(rf"\b{re.escape(w)}", text) for w in words)


@pytest.mark.parametrize("category", CATEGORIES)
@pytest.mark.parametrize("deform", [0.0, 0.03])
def test_every_category_is_a_normalised_watertight_volume(category, deform):
    for seed in range(3):
        shape = generate_shape(category, np.random.default_rng([seed, 11]), deform)
        mesh = shape.mesh
        assert mesh.is_watertight and mesh.is_volume, (category, seed)
        assert len(mesh.split(only_watertight=False)) == 1, "parts must be unioned into one shell"
        assert 50 <= len(mesh.faces) <= 20000
        assert np.allclose(mesh.bounds.mean(axis=0), 0.0, atol=1e-5)  # AABB centred
        assert mesh.extents.max() == pytest.approx(1.0, abs=1e-5)  # longest side 1
        assert np.abs(mesh.vertices).max() <= 0.5 + 1e-5
        assert shape.category == category
        assert _has_word(shape.caption, _names(category)), shape.caption


def test_categories_are_many_and_distinct_in_shape():
    assert len(CATEGORIES) >= 14 and len(set(CATEGORIES)) == len(CATEGORIES)
    assert set(CATEGORY_SYNONYMS) == set(CATEGORIES)
    # proportions separate some categories outright: rockets are tall, cars and benches are long
    ext = {c: generate_shape(c, np.random.default_rng(5)).mesh.extents for c in ("rocket", "car", "bench")}
    assert ext["rocket"][1] == pytest.approx(1.0) and ext["rocket"][0] < 0.6
    assert ext["car"][0] == pytest.approx(1.0) and ext["car"][1] < 0.6  # nose toward +X
    assert ext["bench"][0] == pytest.approx(1.0) and ext["bench"][2] < 0.5


def test_same_seed_same_shape_other_seed_other_params():
    a = generate_shape("chair", np.random.default_rng([4, 2]))
    b = generate_shape("chair", np.random.default_rng([4, 2]))
    c = generate_shape("chair", np.random.default_rng([4, 3]))
    assert np.array_equal(a.mesh.vertices, b.mesh.vertices) and np.array_equal(a.mesh.faces, b.mesh.faces)
    assert a.caption == b.caption and a.params == b.params
    assert a.params != c.params
    assert not np.array_equal(a.mesh.vertices.shape, c.mesh.vertices.shape) or \
        not np.allclose(a.mesh.vertices, c.mesh.vertices)


def test_params_are_json_and_rebuild_the_same_mesh():
    for category in ("bookshelf", "tree", "vase"):  # these use sub-seeds or subtractions
        shape = generate_shape(category, np.random.default_rng(9))
        params = json.loads(json.dumps(shape.params))
        assert params == shape.params
        again = build_mesh(category, params)
        assert np.array_equal(again.vertices, shape.mesh.vertices)


def test_deformation_bends_the_shape_and_keeps_its_parameters():
    from lostcli.eval.geometry import mesh_metrics

    bare = generate_shape("table", np.random.default_rng([3, 1]))
    bent = generate_shape("table", np.random.default_rng([3, 1]), deform=0.03)
    other = generate_shape("table", np.random.default_rng([3, 1]), deform=0.03)
    assert {k: v for k, v in bent.params.items() if k != "deform"} == bare.params  # drawn after them
    assert bent.caption == bare.caption  # detail, not semantics
    field = bent.params["deform"]
    assert field["amplitude"] == 0.03 and np.asarray(field["modes"]).shape == (8, 8)
    assert np.array_equal(other.mesh.vertices, bent.mesh.vertices)  # seeded
    assert np.array_equal(build_mesh("table", json.loads(json.dumps(bent.params))).vertices, bent.mesh.vertices)
    moved = mesh_metrics(bent.mesh, bare.mesh, n=20000).chamfer
    assert 0.005 < moved < 0.05  # a bend of a few percent of the object, not a new object
    # the field by hand: one mode along x, 1 cycle per length, phase 0, amplitude (0, 0.1, 0)
    one = {"amplitude": 0.1, "modes": [[1, 0, 0, 1.0, 0.0, 0.0, 0.1, 0.0]]}
    p = np.array([[0.25, 0.0, 0.0], [0.0, 0.2, 0.3]])
    np.testing.assert_allclose(displace(p, one), [[0.25, 0.1, 0.0], [0.0, 0.2, 0.3]], atol=1e-12)


def test_captions_always_name_the_category():
    for category in CATEGORIES:
        for seed in range(15):
            rng = np.random.default_rng([seed, 1])
            caption = caption_from_params(category, sample_params(category, rng), rng)
            assert _has_word(caption, _names(category)), caption
            assert not _has_word(caption, ("wooden", "metal", "red", "blue", "green", "white", "black"))


def _caption(category: str, seed: int, **override) -> str:
    rng = np.random.default_rng(seed)
    params = {**sample_params(category, rng), **override}
    return caption_from_params(category, params, rng)


@pytest.mark.parametrize("seed", range(6))
def test_captions_state_the_sampled_facts(seed):
    assert "arm" in _caption("chair", seed, arms=True)
    assert "arm" not in _caption("chair", seed, arms=False)
    assert "three legs" in _caption("chair", seed, base="legs3", arms=False)
    table = _caption("table", seed, support="pedestal")
    assert "pedestal" in table or "single leg" in table
    assert "four" in _caption("table", seed, support="legs4", shelf=False)
    assert "footrest" in _caption("stool", seed, footrest=True)
    assert "footrest" not in _caption("stool", seed, footrest=False)
    assert "handle" in _caption("mug", seed, handle=True)
    assert "handle" not in _caption("mug", seed, handle=False)
    assert "six wheels" in _caption("car", seed, style="boxtruck", wheels=6)
    assert "four wheels" in _caption("car", seed, style="sedan", wheels=4)
    assert "four shelves" in _caption("bookshelf", seed, shelves=4)
    assert "four engines" in _caption("airplane", seed, engines="underwing4")
    assert "propeller" in _caption("airplane", seed, engines="propeller")
    assert "three fins" in _caption("rocket", seed, fins=3, boosters=0)
    assert "booster" not in _caption("rocket", seed, fins=4, boosters=0)
    assert "chimney" in _caption("house", seed, chimney=True)
    assert "chimney" not in _caption("house", seed, chimney=False)
    assert "cone" in _caption("tree", seed, kind="conifer", layers=3)
    assert "crown" in _caption("tree", seed, kind="broadleaf", layers=5)
    assert "two handles" in _caption("vase", seed, style="amphora")
    assert "drawer" in _caption("cabinet", seed, front="drawers", drawers=3)


def test_split_cycle_and_item_assignment():
    cycle = split_cycle((0.8, 0.1, 0.1))
    assert len(cycle) == 10 and cycle.count("val") == 1 and cycle.count("test") == 1
    assert split_cycle((0.5, 0.25, 0.25)).count("train") == 2
    with pytest.raises(ConfigError):
        split_cycle((0.8, 0.3, 0.1))
    C = len(CATEGORIES)
    # each block of C items holds every category once, in a seed-dependent order
    assert sorted(item_category(3, i) for i in range(C, 2 * C)) == sorted(CATEGORIES)
    assert [item_category(3, i) for i in range(C)] != [item_category(4, i) for i in range(C)]
    # stratified: over 10 consecutive ranks a category gets exactly 1 val and 1 test
    splits = [item_split("mug", CATEGORIES.index("mug") + r * C, cycle) for r in range(10)]
    assert splits.count("val") == 1 and splits.count("test") == 1


def test_unknown_category_is_a_config_error():
    with pytest.raises(ConfigError, match="unknown category 'spaceship'"):
        generate_shape("spaceship", np.random.default_rng(0))


def test_synth_dataset_writes_glbs_and_metadata(tmp_path):
    calls = []
    records = synth_dataset(tmp_path / "ds", n=28, seed=1, progress=lambda done, total: calls.append((done, total)))
    out = tmp_path / "ds"
    assert len(records) == 28 and calls[-1] == (28, 28)
    assert sorted(p.name for p in out.glob("*.glb")) == [f"synth-{i:06d}.glb" for i in range(28)]
    assert not list(out.glob(".*.tmp"))
    lines = [json.loads(line) for line in (out / "metadata.jsonl").read_text().splitlines()]
    assert lines == records
    assert set(lines[0]) == {"id", "category", "caption", "split", "params", "file"}
    assert {r["category"] for r in records} == set(CATEGORIES)
    assert {r["split"] for r in records} == {"train", "val", "test"}
    mesh = trimesh.load(out / records[5]["file"], force="mesh")
    assert mesh.is_watertight and mesh.is_volume
    # each item depends only on (seed, i): a smaller set is a prefix of a larger one
    small = synth_dataset(tmp_path / "small", n=3, seed=1)
    assert small == records[:3]
    assert (tmp_path / "small" / "synth-000002.glb").read_bytes() == (out / "synth-000002.glb").read_bytes()


def test_synth_dataset_rejects_bad_arguments(tmp_path):
    with pytest.raises(ConfigError):
        synth_dataset(tmp_path, n=0, seed=0)
    with pytest.raises(ConfigError):
        synth_dataset(tmp_path, n=2, seed=0, splits=(0.5, 0.5))
    with pytest.raises(ConfigError, match="deform"):
        synth_dataset(tmp_path, n=2, seed=0, deform=0.5)
