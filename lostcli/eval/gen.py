"""Text-to-shape evaluation (docs/protocols.md "Generation"): does LoST-GPT make shapes of the prompted category,
and how far is the generated set from the real one?

For a fixed list of prompts (default 5 per category of the evaluated split, phrased as the built-in
dataset's captions by `data.prompts.synth_prompt_items`; a category the built-in generator does not know
is prompted with its shapes' own captions) and seeds (default 4 draws per prompt), one row per guidance
scale: generate, decode, extract the mesh, render the 4 docs/protocols.md views and

- class accuracy: the render classifier (`models/classifier.py`, trained on the TRAIN split's renders) names
  the prompt's category from the view-averaged logits; a sample with no surface counts as wrong. Reported
  beside the classifier's own test accuracy on real renders and chance;
- FD / KID (`eval/fd.py`) of the generated renders against the split's real renders (4 views per shape),
  with the feature network named ("FD-<network>"; FID only with local Inception weights);
- text-render similarity ("CLIP score"): cosine of the conditioning text tower's prompt embedding with the
  same CLIP model's image embedding of each of the 4 views, averaged over views and samples; `clip_score` is
  100 x max(cos, 0) averaged (the torchmetrics convention). The "real" reference line scores the split's
  real renders against the prompts of their own category;
- one piece: the share of samples whose surface keeps at least 95% of its area in one connected part
  (`data/mesh.py` `largest_part_share`; a sample with no surface is not in one piece). Every built-in shape is
  one piece, so a lower share means generated parts float apart (a table top above a detached stem).

Each row also breaks class accuracy and one piece down by category (`by_category`).

Every row uses the same prompts and the same seeds (prompt chunk c draws with seed + c), so rows differ
only by the guidance scale.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..data.mesh import largest_part_share, one_piece_share
from ..data.render import save_grid, views_tile
from ..data.store import DatasetStore
from ..errors import ConfigError, DataError
from ..models.classifier import LoadedClassifier, classify_views, label_indices, shape_probabilities
from ..models.gpt import GUIDANCE_SCHEDULES
from ..persist import atomic_write_json
from ..pipeline import GenerateConfig
from .bootstrap import mean_change_interval
from .classifier import classifier_report
from .fd import RenderDistance, feature_network
from .recon import _num, _render

MAX_GRID_TILES = 24  # columns of gen_grid.png (groups beyond it are not drawn)


@dataclass
class GenEvalConfig:
    split: str = "test"  # reference split: its categories are prompted, its renders are the FD reference
    cfgs: list[float] = field(default_factory=lambda: [1.0, 3.0])  # guidance scales, one row each
    prompts_per_category: int = 5  # prompts per category
    seeds: int = 4  # samples (seeded draws) per prompt
    temperature: float | None = None  # None: the bundle's default
    guidance_schedule: str | None = None  # "constant" / "linear"; None: the bundle's default
    num_tokens: int | None = None  # tokens generated and decoded; None: the GPT's length
    steps: int | None = None  # diffusion-head steps per token; None: the GPT's default
    decode_steps: int | None = None  # tokenizer decoder steps; None: the bundle's default
    resolution: int = 64  # marching-cubes grid
    batch_size: int = 8  # prompts generated together (x seeds samples)
    seed: int = 0  # prompt chunk starting at prompt c draws with seed + c
    prompt_seed: int = 0  # which prompts `synth_prompt_items` phrases
    render_size: int | None = None  # generated renders; None: the size of the stored (real) renders
    fd_network: str = "auto"  # "auto", "inception", "classifier" or a teacher spec
    prompts: list[tuple[str | None, str]] | None = None  # (category or None, prompt); None: per-category prompts
    kid_subsets: int = 100  # KID: random subsets (torchmetrics default)

    def __post_init__(self) -> None:
        checks = [("cfgs", len(self.cfgs) >= 1 and all(math.isfinite(g) and g >= 0 for g in self.cfgs),
                   "give at least one finite guidance scale >= 0"),
                  ("prompts_per_category", self.prompts_per_category >= 1, "must be >= 1"),
                  ("seeds", self.seeds >= 1, "must be >= 1"), ("batch_size", self.batch_size >= 1, "must be >= 1"),
                  ("resolution", self.resolution >= 2, "must be >= 2"),
                  ("guidance_schedule", self.guidance_schedule in (None, *GUIDANCE_SCHEDULES),
                   f"must be one of {list(GUIDANCE_SCHEDULES)}")]
        for key, ok, why in checks:
            if not ok:
                raise ConfigError(f"{key}: {why}")


@dataclass
class GenEvalResult:
    rows: list[dict]  # one per guidance scale: cfg, class_acc, fd, kid, n, ...
    report: dict  # what gen.json holds
    files: list[Path] = field(default_factory=list)
    seconds: float = 0.0


def parse_cfgs(text: str) -> list[float]:
    """"1,3" -> [1.0, 3.0] (ConfigError on anything else)."""
    try:
        out = [float(p) for p in text.split(",") if p.strip()]
    except ValueError:
        raise ConfigError(f"--cfg {text}: expected comma-separated guidance scales, e.g. 1,3") from None
    if not out or not all(math.isfinite(g) and g >= 0 for g in out):
        raise ConfigError(f"--cfg {text}: expected comma-separated guidance scales >= 0, e.g. 1,3")
    return out


def category_prompts(records: list[dict], per_category: int, seed: int = 0) -> list[tuple[str, str]]:
    """(category, prompt) pairs: `per_category` for every category of `records`, categories sorted.

    Built-in categories get fresh captions from the built-in generator (`synth_prompt_items`, seeded);
    others the distinct captions of their own shapes (first by id), or "a 3D model of a CATEGORY".

    Raises:
        DataError: no record has a category.
    """
    from ..data.prompts import synth_prompt_items
    from ..data.synth import CATEGORIES

    cats = sorted({r["category"] for r in records if isinstance(r.get("category"), str) and r["category"]})
    if not cats:
        raise DataError("no shape of the split has a category: nothing to prompt")
    builtin = [c for c in cats if c in CATEGORIES]
    made: dict[str, list[str]] = {c: [] for c in cats}
    if builtin:  # round-robin over all built-in categories: each gets exactly per_category
        for cat, prompt in synth_prompt_items(per_category * len(CATEGORIES), seed):
            if cat in made:
                made[cat].append(prompt)
    for cat in cats:
        if cat in CATEGORIES:
            continue
        caps = sorted({r["caption"] for r in records if r.get("category") == cat and isinstance(r.get("caption"), str)
                       and r["caption"].strip()})
        caps = caps or [f"a 3D model of a {cat}"]
        made[cat] = [caps[i % len(caps)] for i in range(per_category)]
    return [(cat, p) for cat in cats for p in made[cat][:per_category]]


# ----------------------------------------------------------------------------------------------------
# The evaluation
# ----------------------------------------------------------------------------------------------------


class TextRenderSimilarity:
    """Cosine of prompt embeddings (the conditioning text tower) with view embeddings (its CLIP image tower).

    Args:
        text_encoder: a `models.text.TextEncoder` whose `tower` holds both towers (built-in or OpenCLIP).
        prompts: the evaluated prompts; `score(views, rows)` takes indices into them.
    """

    def __init__(self, text_encoder, prompts: list[str]) -> None:
        self.tower = text_encoder.tower
        self.name = self.tower.name
        self.text = text_encoder.encode(prompts).float().cpu()  # [P, D], L2-normalised

    @torch.no_grad()
    def score(self, views: np.ndarray, prompt_rows: list[list[int]]) -> np.ndarray:
        """uint8 views [B, V, H, W, 3], prompt indices per shape -> cosine [B] (mean over views and prompts)."""
        img = self.tower.forward_views(torch.from_numpy(np.ascontiguousarray(views)))[0].float().cpu()  # [B, V, D]
        img = torch.nn.functional.normalize(img, dim=-1)
        return np.array([float((img[b] @ self.text[rows].T).mean()) for b, rows in enumerate(prompt_rows)])


def clip_summary(cosines: list[float]) -> dict:
    """{"text_sim": mean cosine, "clip_score": mean of 100 x max(cos, 0)} (None when empty)."""
    if not cosines:
        return {"text_sim": None, "clip_score": None}
    c = np.asarray(cosines, dtype=np.float64)
    return {"text_sim": _num(c.mean()), "clip_score": _num((100.0 * np.clip(c, 0.0, None)).mean())}


def _reference(store: DatasetStore, records: list[dict], dist: RenderDistance, sim: TextRenderSimilarity | None,
               by_category: dict[str, list[int]], batch: int = 32) -> tuple[int, list[float]]:
    """Feed the split's real renders to `dist` as the reference set and score them against their category's
    prompts; returns (render size S, per-shape cosines)."""
    size, cosines = 0, []
    for start in range(0, len(records), batch):
        chunk = records[start:start + batch]
        renders = np.stack([store.load(r["id"], keys=["renders"])["renders"] for r in chunk])
        dist.update(renders, real=True)  # [B, 4, S, S, 3]
        size = int(renders.shape[2])
        keep = [i for i, r in enumerate(chunk) if r.get("category") in by_category]
        if sim is not None and keep:
            cosines += sim.score(renders[keep], [by_category[chunk[i]["category"]] for i in keep]).tolist()
    return size, cosines


def evaluate_gen(pipe, root: str | Path, cfg: GenEvalConfig, classifier: LoadedClassifier | None = None,
                 out_dir: str | Path | None = None, command: str = "",
                 progress: Callable | None = None) -> GenEvalResult:
    """Generate for fixed prompts and seeds at each guidance scale; class accuracy, FD and KID per scale.

    Args:
        pipe: a `LostPipeline` whose bundle has gpt/ and text_encoder/.
        root: prepared dataset (the split's renders and categories).
        cfg: what to evaluate and how.
        classifier: the render classifier (class accuracy, and the "auto" FD network without Inception).
        out_dir: where gen.json, gen.md and gen_grid.png go (None: nothing written).
        command: the command line, stored in the report.
        progress: `progress(done, total, label)` per generated chunk.

    Raises:
        DataError: an empty split or one without categories. CheckpointError: no GPT / text encoder in the bundle.
    """
    t0 = time.time()
    store = DatasetStore(Path(root))
    records = store.records(split=cfg.split)
    if not records:
        raise DataError(f"{root}: no items in split {cfg.split!r}")
    _ = (pipe.gpt, pipe.text_encoder)  # a bundle without them fails before any work
    ctx = _gen_context(pipe, store, records, cfg, classifier)

    rows, samples, tiles, tile_labels, row_hits = [], [], [], [], []
    for gi, g in enumerate(cfg.cfgs):
        row, hits, row_samples, row_tiles, d = _guidance_row(pipe, ctx, gi, progress)
        rows.append(row)
        row_hits.append(hits)
        samples += row_samples
        for cat in ctx.grid_cats:
            tile, label = row_tiles[cat]
            tiles.append(tile)
            tile_labels.append(f"cfg {g:g}: {label}")

    add_class_acc_changes(rows, row_hits)
    report = {
        "rows": rows,
        **classifier_report(classifier),
        "fd_network": ctx.dist.features.name,
        "fd_metric": ctx.dist.features.metric_name,
        "fd_warning": d.warning,
        "text_network": ctx.sim.name,
        "real_text_sim": clip_summary(ctx.real_cos),
        "reference": {"split": cfg.split, "shapes": d.shapes_real, "images": d.images_real,
                      "render_size": ctx.real_size},
        "kid_subset_size": d.kid_subset_size,
        "command": command,
        "protocol": "docs/protocols.md Generation: class accuracy of the 4-view render classifier (a sample with no "
                    "surface counts as wrong); FD/KID of generated vs real renders, 4 views per shape; "
                    "text-render similarity of the conditioning CLIP model (clip_score = 100 x max(cos, 0))",
        "model_id": pipe.model_id,
        "settings": _settings(pipe, cfg, ctx.size),
        "prompts": [{"category": c, "prompt": p} for c, p in ctx.items],
        "samples": samples,
        "seconds": round(time.time() - t0, 2),
    }
    result = GenEvalResult(rows, report, seconds=time.time() - t0)
    if out_dir is not None:
        result.files = _write_files(Path(out_dir), report, tiles, tile_labels, ncols=len(ctx.grid_cats))
    return result


@dataclass
class _GenContext:
    """What every guidance row of a generation table shares."""

    cfg: GenEvalConfig
    items: list[tuple[str | None, str]]  # (category or None, prompt) per prompt
    keys: list[str]  # group per prompt: its category, else the prompt itself
    grid_cats: list[str]  # groups with a tile in each row of the grid (draw 0 of the group's first prompt)
    first_prompt: dict[str, int]  # group -> index of its first prompt
    classifier: LoadedClassifier | None
    classes: list[str]  # the classifier's categories
    labels: np.ndarray | None  # category index per prompt (-1: unknown to the classifier)
    dist: RenderDistance  # FD / KID against the split's real renders
    sim: TextRenderSimilarity
    size: int  # render size of the generated shapes
    real_size: int  # render size of the stored real renders
    real_cos: list[float]  # text-render cosines of the real renders


def _gen_context(pipe, store: DatasetStore, records: list[dict], cfg: GenEvalConfig,
                 classifier: LoadedClassifier | None) -> _GenContext:
    """The prompts, networks and real-render reference of a generation table, once per table."""
    items = cfg.prompts or category_prompts(records, cfg.prompts_per_category, cfg.prompt_seed)
    classes = classifier.model.categories if classifier is not None else []
    labels = label_indices([c for c, _ in items], classes) if classifier is not None else None
    features = feature_network(cfg.fd_network, classifier.model if classifier is not None else None,
                               device=pipe.device)
    dist = RenderDistance(features, kid_subsets=cfg.kid_subsets, seed=cfg.seed)
    sim = TextRenderSimilarity(pipe.text_encoder, [p for _, p in items])
    by_category: dict[str, list[int]] = {}
    for i, (c, _) in enumerate(items):
        if c is not None:
            by_category.setdefault(c, []).append(i)
    real_size, real_cos = _reference(store, records, dist, sim, by_category)
    keys = [c if c is not None else p for c, p in items]  # a prompt without a category is its own group
    return _GenContext(
        cfg=cfg, items=items, keys=keys, grid_cats=list(dict.fromkeys(keys))[:MAX_GRID_TILES],
        first_prompt={k: i for i, k in reversed(list(enumerate(keys)))}, classifier=classifier, classes=classes,
        labels=labels, dist=dist, sim=sim, size=cfg.render_size or real_size, real_size=real_size,
        real_cos=real_cos)


def _guidance_row(pipe, ctx: _GenContext, gi: int, progress: Callable | None):
    """Generate, render and score every prompt at guidance scale cfg.cfgs[gi].

    Returns:
        (table row, classifier hits, per-sample records, {group: (grid tile, caption)}, the row's
        `RenderDistance.compute()` result).
    """
    cfg, g = ctx.cfg, ctx.cfg.cfgs[gi]
    ctx.dist.reset_fake()
    hits, samples, cosines = [], [], []
    row_tiles: dict[str, tuple[np.ndarray, str]] = {}
    chunks = list(range(0, len(ctx.items), cfg.batch_size))
    options = GenerateConfig(guidance=g, temperature=cfg.temperature, num_tokens=cfg.num_tokens,
                             guidance_schedule=cfg.guidance_schedule, steps=cfg.steps, resolution=cfg.resolution,
                             decode_steps=cfg.decode_steps)
    for ci, start in enumerate(chunks):
        chunk = ctx.items[start:start + cfg.batch_size]
        res = pipe.generate([p for _, p in chunk], n=cfg.seeds, seed=cfg.seed + start, config=options)
        views = np.stack([_render(m, ctx.size) for m in res.meshes])  # [B, 4, S, S, 3], B = len(chunk) * seeds
        ctx.dist.update(views, real=False)
        cos = ctx.sim.score(views, [[start + b // cfg.seeds] for b in range(len(res.meshes))])
        cosines += cos.tolist()
        _score_chunk(ctx, g, start, res.meshes, views, cos, hits, samples, row_tiles)
        if progress:
            progress(gi * len(chunks) + ci + 1, len(chunks) * len(cfg.cfgs), f"cfg {g}")
    d = ctx.dist.compute()
    failures = sum(s["failed"] for s in samples)
    row = {"cfg": g, "class_acc": _num(np.mean(hits)) if hits else None, "fd": _num(d.fd),
           "kid": _num(d.kid) if d.kid is not None else None, "n": len(samples),
           "kid_std": _num(d.kid_std) if d.kid_std is not None else None, "class_n": len(hits),
           **clip_summary(cosines), "failures": failures,
           "one_piece": one_piece_share([s["largest_part"] for s in samples]), "by_category": by_category(samples)}
    return row, hits, samples, row_tiles, d


def _score_chunk(ctx: _GenContext, g: float, start: int, meshes: list, views: np.ndarray, cos: np.ndarray,
                 hits: list[bool], samples: list[dict], row_tiles: dict[str, tuple[np.ndarray, str]]) -> None:
    """Classify one generated chunk (prompts start.., `cfg.seeds` draws each) and append its hits, sample
    records and grid tiles."""
    cfg, classes, labels = ctx.cfg, ctx.classes, ctx.labels
    pred = (shape_probabilities(classify_views(ctx.classifier.model, views)).argmax(dim=-1).numpy()
            if ctx.classifier is not None else None)
    for b, mesh in enumerate(meshes):
        p = start + b // cfg.seeds  # prompt index
        cat, failed, key = ctx.items[p][0], mesh is None, ctx.keys[p]
        guess = classes[pred[b]] if pred is not None and not failed else None
        correct = None  # no classifier, or a category it does not know
        if labels is not None and labels[p] >= 0:
            correct = bool(not failed and pred[b] == labels[p])
            hits.append(correct)
        samples.append({"cfg": g, "prompt": ctx.items[p][1], "category": cat, "draw": b % cfg.seeds,
                        "seed": cfg.seed + start, "failed": failed, "predicted": guess, "correct": correct,
                        "text_sim": float(cos[b]), "largest_part": largest_part_share(mesh)})
        if key in ctx.grid_cats and p == ctx.first_prompt[key] and b % cfg.seeds == 0:
            verdict = "no surface" if failed else (f"-> {guess}" if guess is not None else "")
            row_tiles[key] = (views_tile(views[b], 64), f"{cat or key[:24]} {verdict}")


def _settings(pipe, cfg: GenEvalConfig, size: int) -> dict:
    """The report's "settings": the generation settings as used (None resolved to the bundle's defaults)."""
    return {"prompts_per_category": cfg.prompts_per_category, "seeds": cfg.seeds, "seed": cfg.seed,
            "prompt_seed": cfg.prompt_seed, "num_tokens": cfg.num_tokens or pipe.gpt_length,
            "temperature": cfg.temperature if cfg.temperature is not None else pipe.generation["temperature"],
            "guidance_schedule": cfg.guidance_schedule or pipe.generation["guidance_schedule"],
            "steps": cfg.steps, "decode_steps": cfg.decode_steps or pipe.sampling["steps"],
            "resolution": cfg.resolution, "render_size": size, "batch_size": cfg.batch_size}


def _write_files(out: Path, report: dict, tiles: list[np.ndarray], labels: list[str], ncols: int) -> list[Path]:
    """gen.json, gen.md and gen_grid.png (one sample per group and guidance scale) in `out`."""
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "gen.json", report)
    (out / "gen.md").write_text(render_markdown(report))
    title = "one sample per category and guidance scale"
    grid = save_grid(tiles, out / "gen_grid.png", labels=labels, ncols=ncols, title=title)
    return [out / "gen.json", out / "gen.md", grid]


# ----------------------------------------------------------------------------------------------------
# Report
# ----------------------------------------------------------------------------------------------------


def add_class_acc_changes(rows: list[dict], row_hits: list[list[bool]]) -> None:
    """On every row after the first: `class_acc_change` = its class accuracy minus the first row's, and the
    paired 95% bootstrap interval `class_acc_change_ci` over the samples (each prompt and seed is drawn under
    every guidance scale, so sample i of one row and of another differ only by the guidance)."""
    if not row_hits or not row_hits[0]:
        return
    base = np.asarray(row_hits[0], dtype=np.float64)
    for row, hits in zip(rows[1:], row_hits[1:]):
        change, ci = mean_change_interval(base, np.asarray(hits, dtype=np.float64))
        row["class_acc_change"], row["class_acc_change_ci"] = _num(change), [_num(v) for v in ci]


def by_category(samples: list[dict]) -> dict[str, dict]:
    """{category: {"n", "class_acc", "one_piece"}} over one row's samples (prompts without a category left
    out; class_acc None where the classifier does not know the category)."""
    groups: dict[str, list[dict]] = {}
    for s in samples:
        if s["category"] is not None:
            groups.setdefault(s["category"], []).append(s)
    out = {}
    for cat in sorted(groups):
        known = [s["correct"] for s in groups[cat] if s["correct"] is not None]
        out[cat] = {"n": len(groups[cat]), "class_acc": _num(np.mean(known)) if known else None,
                    "one_piece": one_piece_share([s["largest_part"] for s in groups[cat]])}
    return out


def _cell(v: float | None, scale: float = 1.0, digits: int = 3) -> str:
    return "-" if v is None else f"{v * scale:.{digits}f}"


def _category_table(rows: list[dict]) -> list[str]:
    """gen.md's per-category lines: class accuracy and one piece at each guidance scale ([] for old reports)."""
    if not rows or not rows[0].get("by_category"):
        return []
    scales = " / ".join(f"cfg {r['cfg']:g}" for r in rows)
    lines = ["", f"By category ({scales}):", "", "| category | samples | class acc | one piece |", "|---|---|---|---|"]
    for cat, first in rows[0]["by_category"].items():
        cells = [" / ".join(_cell((r.get("by_category") or {}).get(cat, {}).get(key), digits=2) for r in rows)
                 for key in ("class_acc", "one_piece")]
        lines.append(f"| {cat} | {first['n']} | {cells[0]} | {cells[1]} |")
    return lines


def render_markdown(report: dict) -> str:
    """gen.md: the table, then what produced it."""
    s, ref, metric = report["settings"], report["reference"], report["fd_metric"]
    cats = len({p["category"] for p in report["prompts"] if p["category"] is not None})
    lines = [
        f"# Text-to-shape generation ({len(report['prompts'])} prompts x {s['seeds']} seeds, {cats} categories)",
        "",
        f"{s['num_tokens']} tokens, temperature {s['temperature']}, {s['guidance_schedule']} guidance schedule, "
        f"decoder {s['decode_steps']} steps, marching cubes at {s['resolution']}^3, seeds from {s['seed']}; "
        f"reference: {ref['shapes']} {ref['split']} shapes ({ref['images']} renders).",
        "",
        f"| cfg | class acc | {metric} | KID (x10^3) | CLIP score | text-render cos | one piece | failures | n |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in report["rows"]:
        kid = "-" if r["kid"] is None else f"{r['kid'] * 1e3:.2f} +- {(r['kid_std'] or 0) * 1e3:.2f}"
        lines.append(f"| {r['cfg']:g} | {_cell(r['class_acc'])} | {_cell(r['fd'])} | {kid} | "
                     f"{_cell(r.get('clip_score'), digits=2)} | {_cell(r.get('text_sim'))} | "
                     f"{_cell(r.get('one_piece'), digits=2)} | {r['failures']}/{r['n']} | {r['n']} |")
    for r in report["rows"]:
        if r.get("class_acc_change_ci") and None not in r["class_acc_change_ci"]:
            lo, hi = r["class_acc_change_ci"]
            lines.append(f"| cfg {r['cfg']:g} vs cfg {report['rows'][0]['cfg']:g}: class acc change (paired 95% "
                         f"interval) | {r['class_acc_change']:+.3f} [{lo:+.3f}, {hi:+.3f}] | | | | | | | |")
    real = report.get("real_text_sim") or {}
    lines.append(f"| real {ref['split']} renders | - | - | - | {_cell(real.get('clip_score'), digits=2)} | "
                 f"{_cell(real.get('text_sim'))} | - | - | {ref['shapes']} |")
    lines += _category_table(report["rows"])
    lines += ["", f"- Class accuracy: render classifier `{report['classifier']}` on the 4 views of each sample "
              f"(view-averaged logits) against the prompt's category; its own test accuracy on real renders "
              f"{_cell(report['classifier_test_acc'])} per shape; chance {_cell(report['chance'])}. "
              "A sample with no surface counts as wrong.",
              f"- {metric}: Frechet distance between Gaussian fits of {report['fd_network']} features of all "
              f"generated renders vs the {ref['split']} split's real renders (torchmetrics); KID over "
              f"{report['kid_subset_size']}-image subsets.",
              f"- CLIP score: {report.get('text_network')} (the conditioning text tower and its image tower): "
              "100 x max(cos, 0) of prompt vs view embeddings, averaged over the 4 views and the samples; the "
              "'real' line scores real renders against their own category's prompts."]
    if report.get("fd_warning"):
        lines.append(f"- Warning: {report['fd_warning']}.")
    lines += [f"- Model {report['model_id'][:12]}. Command: `{report['command']}`", ""]
    return "\n".join(lines)
