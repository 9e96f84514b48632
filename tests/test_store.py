"""The sharded dataset store: round trips, resume numbering, crash safety, tables, summaries, errors."""

from __future__ import annotations

import json
import os
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest

from lostcli.data import store as store_mod
from lostcli.data.store import DatasetStore, FailureLog, ShardWriter
from lostcli.errors import DataError


def _item(i: int) -> tuple[str, dict[str, np.ndarray], dict]:
    rng = np.random.default_rng(i)
    img = np.full((2, 16, 16, 3), 255, np.uint8)  # mostly background: compresses
    img[:, 4:12, 4:12] = rng.integers(0, 255, (2, 8, 8, 3), dtype=np.uint8)
    arrays = {
        "points": rng.normal(size=(300, 3)).astype(np.float32),  # random floats: stored
        "normals": rng.normal(size=(30, 3)).astype(np.float16),
        "renders": img,
        "faces": rng.integers(0, 100, (7 + i % 3, 3)).astype(np.int32),
        "mask": rng.random((5,)) > 0.5,
    }
    split = ("train", "val", "test")[i % 3]
    record = {"category": f"cat{i % 4}", "caption": f"shape {i}", "split": split, "score": np.float32(0.5)}
    return f"id{i:04d}", arrays, record


def _write(root: Path, n: int, rank: int = 0, start: int = 0, table: str = "items") -> list[str]:
    with ShardWriter(root, table, rank=rank, shard_size=64) as w:
        for i in range(start, start + n):
            w.add(*_item(i))
    return w.shards_written


def test_round_trip_150_items_three_shards(tmp_path):
    written = _write(tmp_path, 150)
    assert written == ["shard-r000-00000.npz", "shard-r000-00001.npz", "shard-r000-00002.npz"]
    folder = tmp_path / "items"
    counts = [len((folder / n).with_suffix(".jsonl").read_text().splitlines()) for n in written]
    assert counts == [64, 64, 22]

    st = DatasetStore(tmp_path)
    assert st.ids() == [f"id{i:04d}" for i in range(150)]
    for i in (0, 63, 64, 149):
        id_, arrays, record = _item(i)
        got = st.load(id_)
        assert sorted(got) == sorted(arrays)
        for k, a in arrays.items():
            assert got[k].dtype == a.dtype and got[k].shape == a.shape
            np.testing.assert_array_equal(got[k], a)
        rec = st.records()[i]
        assert rec["id"] == id_ and rec["caption"] == record["caption"] and rec["split"] == record["split"]
        assert rec["keys"] == sorted(arrays) and rec["score"] == 0.5
    only = st.load("id0100", keys=["faces"])
    assert list(only) == ["faces"]

    # Compressible members are deflated, random float members stored as-is.
    with zipfile.ZipFile(folder / written[0]) as z:
        kinds = {i.filename: i.compress_type for i in z.infolist()}
    assert kinds["id0000/renders.npy"] == zipfile.ZIP_DEFLATED
    assert kinds["id0000/points.npy"] == zipfile.ZIP_STORED


def test_splits_and_info_and_failures(tmp_path):
    _write(tmp_path, 12)
    log = FailureLog(tmp_path, rank=1)
    log.add("/src/bad.glb", "bad.glb: not a glTF\nfile", mtime_ns=1, size=2)
    with open(log.path, "a") as f:
        f.write('{"file": "/src/torn')  # crash mid-write: torn last line is skipped
    st = DatasetStore(tmp_path)
    assert st.ids(split="val") == [f"id{i:04d}" for i in range(12) if i % 3 == 1]
    info = st.info()
    assert info["items"] == 12
    assert info["splits"] == {"test": 4, "train": 4, "val": 4}
    assert info["categories"] == {"cat0": 3, "cat1": 3, "cat2": 3, "cat3": 3}
    assert info["failures"] == [{"file": "/src/bad.glb", "reason": "bad.glb: not a glTF file"}]
    assert st.failures()[0]["size"] == 2


def test_new_writer_continues_numbering_and_never_overwrites(tmp_path):
    _write(tmp_path, 70)  # shards 0, 1
    folder = tmp_path / "items"
    before = {p.name: p.stat().st_mtime_ns for p in folder.iterdir()}
    assert _write(tmp_path, 3, start=70) == ["shard-r000-00002.npz"]
    assert _write(tmp_path, 1, rank=1, start=80) == ["shard-r001-00000.npz"]  # ranks number apart
    for name, mtime in before.items():
        assert (folder / name).stat().st_mtime_ns == mtime
    st = DatasetStore(tmp_path)
    assert len(st.ids()) == 74 and "id0080" in st.done_ids()


def test_crash_leftovers_are_ignored(tmp_path):
    _write(tmp_path, 5)
    folder = tmp_path / "items"
    # A crash after the npz rename but before the index: an npz with no index line.
    shutil.copy(folder / "shard-r000-00000.npz", folder / "shard-r000-00001.npz")
    # A crash mid-shard: a temporary zip of this rank.
    (folder / ".shard-r000-00002.npz.tmp-999").write_bytes(b"partial")
    st = DatasetStore(tmp_path)
    assert len(st.ids()) == 5
    # A resumed writer removes the tmp file and numbers after the orphan (never overwriting it).
    assert _write(tmp_path, 1, start=5) == ["shard-r000-00002.npz"]
    assert not (folder / ".shard-r000-00002.npz.tmp-999").exists()
    assert st.ids() == [f"id{i:04d}" for i in range(6)]  # the reader notices the new shard


def test_exception_inside_writer_keeps_added_items(tmp_path):
    with pytest.raises(RuntimeError):
        with ShardWriter(tmp_path, "items", shard_size=64) as w:
            w.add(*_item(0))
            w.add(*_item(1))
            raise RuntimeError("worker died")
    assert DatasetStore(tmp_path).ids() == ["id0000", "id0001"]


def test_tables_stats_and_manifest(tmp_path):
    _write(tmp_path, 9)
    with ShardWriter(tmp_path, "latents", shard_size=4) as w:
        for i in range(6):
            w.add(f"id{i:04d}", {"z": np.full((2, 3), i, np.float32)}, {})
    st = DatasetStore(tmp_path)
    assert st.has_table("latents") and st.has_table("items") and not st.has_table("tokens")
    assert st.done_ids("tokens") == set()
    assert st.ids(table="latents", split="val") == ["id0001", "id0004"]  # split comes from items
    np.testing.assert_array_equal(st.load("id0004", table="latents")["z"], np.full((2, 3), 4, np.float32))
    st.write_stats("latents", {"mean": [0.1, 0.2], "std": [1.0, 2.0]})
    assert st.read_stats("latents")["std"] == [1.0, 2.0]
    with pytest.raises(DataError, match="tokens/stats.json: file not found"):
        st.read_stats("tokens")

    manifest = st.write_manifest({"config": {"seed": 3}})
    on_disk = json.loads((tmp_path / "manifest.json").read_text())
    assert on_disk == manifest
    assert manifest["items"] == 9 and manifest["config"] == {"seed": 3} and manifest["version"] == 1
    assert manifest["shards"] == ["shard-r000-00000.npz"]
    assert manifest["tables"]["latents"] == {"items": 6, "shards": ["shard-r000-00000.npz", "shard-r000-00001.npz"]}
    assert st.info()["tables"] == {"items": 9, "latents": 6}


def test_iter_table_streams_each_shard_once(tmp_path, monkeypatch):
    _write(tmp_path, 150)
    st = DatasetStore(tmp_path)
    opened = []
    real_load = np.load

    def counting_load(path, *a, **k):
        opened.append(Path(path).name)
        return real_load(path, *a, **k)

    monkeypatch.setattr(store_mod.np, "load", counting_load)
    seen = []
    for rec, arrays in st.iter_table("items", keys=["faces"]):
        assert list(arrays) == ["faces"]
        np.testing.assert_array_equal(arrays["faces"], _item(int(rec["id"][2:]))[1]["faces"])
        seen.append(rec["id"])
    assert sorted(seen) == [f"id{i:04d}" for i in range(150)] and len(set(seen)) == 150
    assert opened == ["shard-r000-00000.npz", "shard-r000-00001.npz", "shard-r000-00002.npz"]
    test_ids = [r["id"] for r, _ in st.iter_table("items", keys=["mask"], split="test")]
    assert test_ids == [f"id{i:04d}" for i in range(150) if i % 3 == 2]


def test_load_keeps_a_bounded_lru_of_handles(tmp_path, monkeypatch):
    assert 8 <= store_mod._OPEN_SHARDS <= 256
    monkeypatch.setattr(store_mod, "_OPEN_SHARDS", 5)
    with ShardWriter(tmp_path, "items", shard_size=1) as w:
        for i in range(12):
            w.add(*_item(i))
    st = DatasetStore(tmp_path)
    for i in range(12):
        assert st.load(f"id{i:04d}", keys=["mask"])["mask"].shape == (5,)
    assert len(st._open) == 5 and [p.name for p in st._open] == [f"shard-r000-{i:05d}.npz" for i in range(7, 12)]
    st.load("id0009", keys=["mask"])  # a hit moves to the most recent end, nothing is re-opened
    assert [p.name for p in st._open][-1] == "shard-r000-00009.npz" and len(st._open) == 5


def test_errors(tmp_path):
    with pytest.raises(DataError, match=f"^{tmp_path / 'nope'}: dataset directory does not exist"):
        DatasetStore(tmp_path / "nope")
    st = DatasetStore(tmp_path)
    with pytest.raises(DataError, match="items: no such table"):
        st.records()
    _write(tmp_path, 3)
    with pytest.raises(DataError, match="no item 'missing'"):
        st.load("missing")
    with pytest.raises(DataError, match="has no array 'sdf'"):
        st.load("id0001", keys=["sdf"])
    with pytest.raises(DataError, match="unknown split"):
        st.ids(split="holdout")
    with ShardWriter(tmp_path, "items") as w:
        with pytest.raises(DataError, match="invalid item id"):
            w.add("a/b", {"x": np.zeros(1)}, {})
        with pytest.raises(DataError, match="invalid array key"):
            w.add("ok", {"x/y": np.zeros(1)}, {})
        w.add("ok", {"x": np.zeros(1)}, {})
        with pytest.raises(DataError, match="added twice"):
            w.add("ok", {"x": np.zeros(1)}, {})
    bad = tmp_path / "items" / "shard-r000-00000.jsonl"
    bad.write_text(bad.read_text() + "{not json\n")
    os.utime(bad, ns=(1, 1))
    with pytest.raises(DataError, match=r"shard-r000-00000.jsonl:4: malformed index line"):
        st.records()


def test_failures_keep_latest_per_file_and_drop_finished_ids(tmp_path):
    _write(tmp_path, 2)  # id0000, id0001 finished
    log = FailureLog(tmp_path, rank=0)
    log.add("/src/a.obj", "first try", id="a", size=1)
    log.add("/src/b.obj", "b is broken", id="b")
    log.add("/src/a.obj", "second try", id="a", size=2)
    log.add("/src/c.obj", "failed, then fixed", id="id0001")
    got = DatasetStore(tmp_path).failures()
    assert [(f["file"], f["reason"]) for f in got] == [("/src/b.obj", "b is broken"), ("/src/a.obj", "second try")]
