"""Shape retrieval against the teacher's neighbours (docs/protocols.md "Retrieval", paper supp. Table 1).

Ground-truth neighbours of shape i: its top-K by teacher cosine similarity of the global embedding averaged
over views (the `features` table's `global`), excluding i. Candidates: the top-K of a method's own
embedding by cosine, excluding i. With o = |candidates intersect ground truth|:
Recall@K = o / K, Jaccard = o / (2K - o), mAP@K = (1/K) sum_{j=1..K} P(j) rel(j) (normalised by K, the
Kaggle definition). Every figure is a mean over query shapes, a fraction in [0, 1].

Methods: "raw" (cosine on the flattened normalised latents), and any trained student (RIDA, the direct
regression baseline, ablations) through its L2-normalised global embedding `RidaStudent.embed`.

Uncertainty (ours, not in the paper's protocol): a split holds only ~100 query shapes, so every row also carries a 95%
percentile-bootstrap interval of its mean Recall@K and mAP@K over the queries (`recall_ci`, `map_ci`), and each
student its mAP@K ratio to the raw latents with a paired interval (`map_vs_raw`, `map_vs_raw_ci`: the same
resampled queries for both methods). With a `reference` student (`lost rida eval --reference NAME`), every
other student also gets its mAP@K minus the reference's, with the same paired interval (`map_minus_reference`,
`map_minus_reference_ci`): whether one student beats another beyond query noise, e.g. RIDA against the
regression baseline or against an ablation. The ground-truth sets stay fixed; only which queries are averaged
is resampled, with a fixed seed, so the figures are reproducible.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..data.store import DatasetStore
from ..errors import ConfigError, DataError
from ..models.rida import RidaStudent
from .bootstrap import DRAWS as BOOTSTRAP_DRAWS, SEED as BOOTSTRAP_SEED, bootstrap_indices, interval

KS = (3, 5)
LATENTS, FEATURES = "latents", "features"


# ----------------------------------------------------------------------------------------------------
# Metrics
# ----------------------------------------------------------------------------------------------------


def top_k_excluding_self(sim: torch.Tensor, k: int) -> torch.Tensor:
    """Indices [n, k] of the k most similar other items per row of sim [n, n], most similar first."""
    n = sim.shape[0]
    if k > n - 1:
        raise DataError(f"retrieval@{k} needs more than {k} shapes, got {n}")
    masked = sim.clone().float()
    masked.fill_diagonal_(float("-inf"))
    return masked.topk(k, dim=1).indices


def per_query_metrics(gt: torch.Tensor, retrieved: torch.Tensor) -> dict[str, torch.Tensor]:
    """Recall@K, AP@K and Jaccard [n] of each query's ranked retrieval [n, K] against its ground truth [n, K]."""
    n, K = retrieved.shape
    rel = (retrieved[:, :, None] == gt[:, None, :]).any(dim=2).float()  # [n, K] rel(j)
    o = rel.sum(dim=1)  # [n]
    precision_at = rel.cumsum(dim=1) / torch.arange(1, K + 1, dtype=torch.float32)  # [n, K] P(j)
    ap = (precision_at * rel).sum(dim=1) / K
    return {"recall": o / K, "map": ap, "jaccard": o / (2 * K - o)}


def retrieval_metrics(gt: torch.Tensor, retrieved: torch.Tensor) -> dict[str, float]:
    """Mean Recall@K, mAP@K and Jaccard of ranked retrievals [n, K] against ground-truth sets [n, K]."""
    return {name: float(v.mean()) for name, v in per_query_metrics(gt, retrieved).items()}


def cosine_matrix(x: torch.Tensor) -> torch.Tensor:
    """[n, D] -> [n, n] cosine similarities."""
    x = F.normalize(x.float(), dim=-1)
    return x @ x.T


def evaluate_embeddings(teacher: torch.Tensor, method: torch.Tensor, ks: tuple[int, ...] = KS,
                        per_query: bool = False) -> dict[int, dict]:
    """{K: metrics} of a method's embeddings [n, D] against the teacher's global embeddings [n, Dt]:
    means (floats), or with `per_query` the values [n] of every query (`per_query_metrics`)."""
    t_sim, m_sim = cosine_matrix(teacher), cosine_matrix(method)
    metrics = per_query_metrics if per_query else retrieval_metrics
    return {k: metrics(top_k_excluding_self(t_sim, k), top_k_excluding_self(m_sim, k)) for k in ks}


# ----------------------------------------------------------------------------------------------------
# Embeddings of a dataset
# ----------------------------------------------------------------------------------------------------


@dataclass
class RetrievalSet:
    """One evaluation split: raw latents and teacher global embeddings, aligned by id."""

    name: str  # "test", "val", "ood", ...
    root: Path  # dataset directory
    ids: list[str]  # sorted ids present in both tables
    z: torch.Tensor  # [n, C, H, W] raw latents
    teacher: torch.Tensor  # [n, Dt] teacher global embeddings (mean over views)
    latent_stats: dict  # the dataset's latents/stats.json


def load_retrieval_set(root: Path, split: str | None, name: str, top_k: int = max(KS)) -> RetrievalSet:
    """Latents and teacher globals of `split` (None: every item, e.g. an out-of-distribution folder), which must
    hold more than `top_k` shapes (the largest K it will be scored at)."""
    store = DatasetStore(Path(root))
    for table in (LATENTS, FEATURES):
        if not store.has_table(table):
            raise DataError(f"{root}: no '{table}' table (run lost dataset {table} first)")
    have = set(store.ids(split=split, table=FEATURES))
    ids = [i for i in store.ids(split=split, table=LATENTS) if i in have]
    if len(ids) <= top_k:
        raise DataError(f"{root}: split {split or 'all'!r} has {len(ids)} shapes with latents and features; "
                        f"retrieval@{top_k} needs more than {top_k}")
    z = np.stack([store.load(i, keys=["z"], table=LATENTS)["z"] for i in ids]).astype(np.float32)
    t = np.stack([store.load(i, keys=["global"], table=FEATURES)["global"] for i in ids]).astype(np.float32)
    return RetrievalSet(name, Path(root), ids, torch.from_numpy(z), torch.from_numpy(t), store.read_stats(LATENTS))


def raw_embeddings(data: RetrievalSet) -> torch.Tensor:
    """Flattened per-channel normalised latents [n, C*H*W] (the dataset's train statistics)."""
    mean = torch.tensor(data.latent_stats["mean"], dtype=torch.float32).view(1, -1, 1, 1)
    std = torch.tensor(data.latent_stats["std"], dtype=torch.float32).view(1, -1, 1, 1)
    return ((data.z - mean) / std).flatten(1)


@torch.no_grad()
def student_embeddings(student: RidaStudent, z: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """f_theta of raw latents [n, C, H, W] -> [n, D] (normalised with the student's own latent statistics)."""
    student.eval()
    device = next(student.parameters()).device
    out = [student.embed(student.normalize(z[s:s + batch_size].to(device))).cpu()
           for s in range(0, z.shape[0], batch_size)]
    return torch.cat(out)


# ----------------------------------------------------------------------------------------------------
# The table
# ----------------------------------------------------------------------------------------------------


def check_reference(methods: dict[str, RidaStudent | None], reference: str | None) -> None:
    """Raise ConfigError unless `reference` is None or names one of the students (not raw latents)."""
    if reference is not None and methods.get(reference) is None:
        students = ", ".join(name for name, m in methods.items() if m is not None)
        raise ConfigError(f"--reference {reference}: not one of the students ({students})")


def retrieval_table(sets: list[RetrievalSet], methods: dict[str, RidaStudent | None],
                    progress: Callable[[str], None] | None = None, reference: str | None = None) -> list[dict]:
    """Rows {method, split, K, recall, map, jaccard, n, recall_ci, map_ci} for every method (None = raw latents)
    and set; students also get `map_vs_raw` and its paired interval `map_vs_raw_ci` when "raw" is a method, and,
    when `reference` names a student, every other student gets `map_minus_reference` (mAP@K difference, a fraction)
    and its paired interval `map_minus_reference_ci`.

    Raises:
        ConfigError: `reference` is not one of the students.
    """
    check_reference(methods, reference)
    rows = []
    order = sorted(methods, key=lambda name: (methods[name] is not None, name != reference))  # raw, reference, rest
    for data in sets:
        idx = bootstrap_indices(len(data.ids))  # one resampling per set, shared by its methods (paired)
        # method -> K -> (mean AP@K over the queries, mean AP@K of each resample of them)
        scores: dict[str, dict[int, tuple[float, torch.Tensor]]] = {}
        for name in order:
            student = methods[name]
            if progress:
                progress(f"{name} on {data.name} ({len(data.ids)} shapes)")
            emb = raw_embeddings(data) if student is None else student_embeddings(student, data.z)
            scores[name] = {}
            for k, q in evaluate_embeddings(data.teacher, emb, per_query=True).items():
                mean, resampled = float(q["map"].mean()), q["map"][idx].mean(1)
                scores[name][k] = mean, resampled
                row = {"method": name, "split": data.name, "K": k, **{m: float(v.mean()) for m, v in q.items()},
                       "n": len(data.ids), "recall_ci": interval(q["recall"][idx].mean(1)),
                       "map_ci": interval(resampled)}
                if student is not None and "raw" in scores:
                    raw_mean, raw_resampled = scores["raw"][k]
                    row["map_vs_raw"] = mean / max(raw_mean, 1e-12)
                    row["map_vs_raw_ci"] = interval(resampled / raw_resampled.clamp_min(1e-12))
                if student is not None and reference not in (None, name):
                    ref_mean, ref_resampled = scores[reference][k]
                    row["map_minus_reference"] = mean - ref_mean
                    row["map_minus_reference_ci"] = interval(resampled - ref_resampled)
                rows.append(row)
    return rows


def _pct_interval(ci: list[float] | None) -> str:
    return "-" if ci is None else f"[{100 * ci[0]:.1f}, {100 * ci[1]:.1f}]%"


def write_report(rows: list[dict], out_dir: Path, meta: dict) -> tuple[Path, Path]:
    """Write OUT/retrieval.json ({"rows": [...], **meta}) and OUT/retrieval.md (one table per split and K)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path, md_path = out_dir / "retrieval.json", out_dir / "retrieval.md"
    json_path.write_text(json.dumps({"rows": rows, **meta}, indent=2) + "\n")
    lines = ["# Shape retrieval (docs/protocols.md \"Retrieval\")", "",
             f"Ground truth: top-K neighbours by teacher cosine ({meta.get('teacher', 'teacher')}, global "
             "embedding averaged over 4 views), self excluded. Candidates: top-K of each method's embedding. "
             f"Intervals: 95% percentile bootstrap over the query shapes ({BOOTSTRAP_DRAWS} resamples, seed "
             f"{BOOTSTRAP_SEED}; paired for the ratios to raw latents and the differences to a reference).",
             f"Command: `{meta.get('command', '')}`", ""]
    methods = list(dict.fromkeys(r["method"] for r in rows))
    for split in dict.fromkeys(r["split"] for r in rows):
        for k in dict.fromkeys(r["K"] for r in rows):
            sel = {r["method"]: r for r in rows if r["split"] == split and r["K"] == k}
            n = next(iter(sel.values()))["n"]
            lines += [f"## {split} split, K = {k} ({n} shapes)", "",
                      "| metric | " + " | ".join(methods) + " |", "|---|" + "---|" * len(methods)]
            for metric, label in (("recall", f"Recall@{k}"), ("map", f"mAP@{k}"), ("jaccard", "Jaccard")):
                lines.append(f"| {label} | " + " | ".join(f"{100 * sel[m][metric]:.2f}%" for m in methods) + " |")
                if any(f"{metric}_ci" in r for r in sel.values()):
                    lines.append(f"| {label} 95% interval | " + " | ".join(
                        _pct_interval(sel[m].get(f"{metric}_ci")) for m in methods) + " |")
            if any("map_vs_raw" in r for r in sel.values()):
                lines.append(f"| mAP@{k} / raw (paired 95% interval) | " + " | ".join(
                    f"{sel[m]['map_vs_raw']:.2f}x [{sel[m]['map_vs_raw_ci'][0]:.2f}, {sel[m]['map_vs_raw_ci'][1]:.2f}]"
                    if "map_vs_raw" in sel[m] else "-" for m in methods) + " |")
            if any("map_minus_reference" in r for r in sel.values()):
                ref = meta.get("reference", "reference")
                lines.append(f"| mAP@{k} - {ref} (points, paired 95% interval) | " + " | ".join(
                    f"{100 * sel[m]['map_minus_reference']:+.2f} [{100 * sel[m]['map_minus_reference_ci'][0]:+.2f}, "
                    f"{100 * sel[m]['map_minus_reference_ci'][1]:+.2f}]" if "map_minus_reference" in sel[m] else "-"
                    for m in methods) + " |")
            lines.append("")
    md_path.write_text("\n".join(lines))
    return json_path, md_path
