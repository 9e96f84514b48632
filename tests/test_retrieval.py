"""Retrieval metrics (PROTOCOLS "Retrieval") on hand-made cases, and the report files."""

from __future__ import annotations

import json
import math

import pytest
import torch

from lostcli.errors import ConfigError, DataError
from lostcli.eval.retrieval import (RetrievalSet, evaluate_embeddings, per_query_metrics, raw_embeddings,
                                   retrieval_metrics, retrieval_table, top_k_excluding_self, write_report)
from lostcli.models.rida import build_student


def test_metrics_hand_computed_k2():
    gt = torch.tensor([[1, 2], [0, 4], [3, 4]])
    retrieved = torch.tensor([[2, 3],   # rel [1, 0]: o=1, AP = (1 * 1) / 2
                              [3, 0],   # rel [0, 1]: o=1, AP = (1/2 * 1) / 2
                              [4, 3]])  # rel [1, 1]: o=2, AP = (1 + 1) / 2
    m = retrieval_metrics(gt, retrieved)
    assert math.isclose(m["recall"], (0.5 + 0.5 + 1.0) / 3, rel_tol=1e-6)
    assert math.isclose(m["map"], (0.5 + 0.25 + 1.0) / 3, rel_tol=1e-6)
    assert math.isclose(m["jaccard"], (1 / 3 + 1 / 3 + 1.0) / 3, rel_tol=1e-6)


def test_metrics_hand_computed_k3():
    gt = torch.tensor([[5, 6, 7]])
    m = retrieval_metrics(gt, torch.tensor([[5, 9, 7]]))  # rel [1, 0, 1]: P = [1, 1/2, 2/3]
    assert math.isclose(m["recall"], 2 / 3, rel_tol=1e-6)
    assert math.isclose(m["map"], (1 + 2 / 3) / 3, rel_tol=1e-6)
    assert math.isclose(m["jaccard"], 2 / (6 - 2), rel_tol=1e-6)
    m0 = retrieval_metrics(gt, torch.tensor([[1, 2, 3]]))
    assert m0 == {"recall": 0.0, "map": 0.0, "jaccard": 0.0}


def test_top_k_excludes_self_even_when_self_is_not_the_maximum():
    sim = torch.tensor([[0.1, 0.9, 0.5, 0.2],
                        [0.3, 5.0, 0.1, 0.8],
                        [0.4, 0.6, 1.0, 0.7],
                        [0.2, 0.1, 0.3, 0.0]])
    top = top_k_excluding_self(sim, 2)
    assert top.tolist() == [[1, 2], [3, 0], [3, 1], [2, 0]]
    with pytest.raises(DataError, match="retrieval@4"):
        top_k_excluding_self(sim, 4)


def test_evaluate_embeddings_perfect_and_scale_free():
    g = torch.Generator().manual_seed(0)
    teacher = torch.randn(12, 6, generator=g)
    res = evaluate_embeddings(teacher, teacher * torch.rand(12, 1, generator=g) + 0.0)  # per-row scaling: same cosines
    assert res[3] == {"recall": 1.0, "map": 1.0, "jaccard": 1.0}
    assert res[5]["map"] == 1.0
    other = evaluate_embeddings(teacher, torch.randn(12, 6, generator=g))
    assert other[3]["recall"] < 1.0


def _set(n: int = 8) -> RetrievalSet:
    g = torch.Generator().manual_seed(1)
    z = torch.randn(n, 2, 2, 6, generator=g) * torch.tensor([1.0, 10.0]).view(1, 2, 1, 1) + 3.0
    stats = {"mean": [3.0, 3.0], "std": [1.0, 10.0]}
    return RetrievalSet("test", None, [f"s{i}" for i in range(n)], z, torch.randn(n, 4, generator=g), stats)


def test_raw_embeddings_are_normalised_per_channel():
    data = _set()
    emb = raw_embeddings(data).view(8, 2, -1)
    assert torch.allclose(emb[:, 1].std(), torch.tensor(1.0), atol=0.3)  # channel 1 divided by its std 10
    assert abs(float(emb.mean())) < 0.3


def test_write_report(tmp_path):
    rows = [{"method": m, "split": "test", "K": k, "recall": r, "map": r / 2, "jaccard": r / 3, "n": 8}
            for k in (3, 5) for m, r in (("raw", 0.2), ("rida", 0.5))]
    json_path, md_path = write_report(rows, tmp_path, {"teacher": "tiny-clip", "command": "lost rida eval"})
    doc = json.loads(json_path.read_text())
    assert doc["rows"] == rows and doc["teacher"] == "tiny-clip"
    md = md_path.read_text()
    assert "| mAP@3 | 10.00% | 25.00% |" in md and "## test split, K = 5 (8 shapes)" in md


def test_per_query_metrics_are_the_hand_values_behind_the_means():
    gt = torch.tensor([[1, 2], [0, 4], [3, 4]])
    q = per_query_metrics(gt, torch.tensor([[2, 3], [3, 0], [4, 3]]))  # the k2 case above
    assert torch.allclose(q["map"], torch.tensor([0.5, 0.25, 1.0]))
    assert torch.allclose(q["recall"], torch.tensor([0.5, 0.5, 1.0]))
    assert torch.allclose(q["jaccard"], torch.tensor([1 / 3, 1 / 3, 1.0]))


def test_table_rows_carry_intervals_and_paired_ratio_to_raw():
    data = _set()
    torch.manual_seed(0)
    student = build_student("rida_tiny", latent_channels=2, plane_res=2, width=16, depth=1, heads=2, out_dim=8)
    student.set_latent_stats(data.latent_stats["mean"], data.latent_stats["std"])
    rows = retrieval_table([data], {"rida": student, "raw": None})  # raw is scored first whatever the order
    assert rows == retrieval_table([data], {"rida": student, "raw": None})  # seeded: reproducible
    by = {(r["method"], r["K"]): r for r in rows}
    assert [r["method"] for r in rows[:2]] == ["raw", "raw"]
    for r in rows:
        for metric in ("recall", "map"):
            lo, hi = r[f"{metric}_ci"]
            assert 0.0 <= lo <= r[metric] <= hi <= 1.0
    for k in (3, 5):
        raw, rida = by[("raw", k)], by[("rida", k)]
        assert "map_vs_raw" not in raw
        assert raw["map"] > 0 and rida["map_vs_raw"] == pytest.approx(rida["map"] / raw["map"])
        lo, hi = rida["map_vs_raw_ci"]
        assert lo < rida["map_vs_raw"] < hi  # 8 queries: a wide interval around the ratio


def test_reference_student_gets_paired_differences():
    data = _set()
    torch.manual_seed(0)

    def make():
        student = build_student("rida_tiny", latent_channels=2, plane_res=2, width=16, depth=1, heads=2, out_dim=8)
        student.set_latent_stats(data.latent_stats["mean"], data.latent_stats["std"])
        return student

    a, b, twin = make(), make(), make()
    twin.load_state_dict(a.state_dict())
    rows = retrieval_table([data], {"raw": None, "b": b, "a": a, "twin": twin}, reference="a")
    by = {(r["method"], r["K"]): r for r in rows}
    assert [r["method"] for r in rows if r["K"] == 3] == ["raw", "a", "b", "twin"]  # the reference first
    for k in (3, 5):
        assert "map_minus_reference" not in by[("a", k)] and "map_minus_reference" not in by[("raw", k)]
        b_row = by[("b", k)]
        assert b_row["map_minus_reference"] == pytest.approx(b_row["map"] - by[("a", k)]["map"])
        lo, hi = b_row["map_minus_reference_ci"]
        assert lo <= b_row["map_minus_reference"] <= hi and lo < hi
        # a copy of the reference: every resample pairs the same queries, so the difference is exactly 0
        assert by[("twin", k)]["map_minus_reference"] == 0.0 and by[("twin", k)]["map_minus_reference_ci"] == [0.0, 0.0]
    # without a reference nothing else changes
    plain = retrieval_table([data], {"raw": None, "b": b, "a": a})
    assert all("map_minus_reference" not in r for r in plain)
    assert {(r["method"], r["K"]): r["map"] for r in plain} == {(m, k): r["map"] for (m, k), r in by.items() if m != "twin"}
    for bad in ("raw", "nope"):
        with pytest.raises(ConfigError, match=f"--reference {bad}: not one of the students \\(b, a\\)"):
            retrieval_table([data], {"raw": None, "b": b, "a": a}, reference=bad)


def test_write_report_shows_differences_to_the_reference(tmp_path):
    rows = [{"method": m, "split": "test", "K": 3, "recall": 0.4, "map": mp, "jaccard": 0.2, "n": 8}
            for m, mp in (("raw", 0.2), ("regression", 0.3), ("rida", 0.35))]
    rows[2].update(map_minus_reference=0.05, map_minus_reference_ci=[-0.012, 0.101])
    _, md_path = write_report(rows, tmp_path, {"teacher": "t", "command": "c", "reference": "regression"})
    assert "| mAP@3 - regression (points, paired 95% interval) | - | - | +5.00 [-1.20, +10.10] |" in md_path.read_text()


def test_write_report_shows_intervals_and_ratios(tmp_path):
    rows = [{"method": "raw", "split": "test", "K": 3, "recall": 0.4, "map": 0.3, "jaccard": 0.2, "n": 8,
             "recall_ci": [0.3, 0.5], "map_ci": [0.2, 0.4]},
            {"method": "rida", "split": "test", "K": 3, "recall": 0.5, "map": 0.45, "jaccard": 0.3, "n": 8,
             "recall_ci": [0.4, 0.6], "map_ci": [0.35, 0.55], "map_vs_raw": 1.5, "map_vs_raw_ci": [1.2, 1.9]}]
    _, md_path = write_report(rows, tmp_path, {"teacher": "t", "command": "c"})
    md = md_path.read_text()
    assert "| mAP@3 95% interval | [20.0, 40.0]% | [35.0, 55.0]% |" in md
    assert "| mAP@3 / raw (paired 95% interval) | - | 1.50x [1.20, 1.90] |" in md
