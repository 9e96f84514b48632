"""Retrieval metrics (PROTOCOLS "Retrieval") on hand-made cases, and the report files."""

from __future__ import annotations

import json
import math

import pytest
import torch

from lostcli.errors import DataError
from lostcli.eval.retrieval import (RetrievalSet, evaluate_embeddings, raw_embeddings, retrieval_metrics,
                                   top_k_excluding_self, write_report)


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
