"""What a demo run shows: LoST's level-of-semantics claims, each checked against the run's own reports.

`check_claims` reads the reconstruction, retrieval and generation reports (the dicts of recon.json,
retrieval.json and gen.json) and the wall clock of the run, and returns one `Claim` per promise with the
figure it rests on and a verdict: "yes", "no", or "-" when the report it needs is missing. `claims_table`
renders them as the Markdown table at the top of the demo's report.md.

The thresholds are the toolkit's acceptance bars for the embedded default (docs/level-of-semantics.md):
- reconstruction: a paired change of median Chamfer whose 95% interval lies wholly below 0 is a fall; k = all
  may not be worse than the k before it beyond noise (its interval is not wholly above 0); k = all within
  `VAE_RATIO` of the VAE's own reconstruction;
- 1-token decodes classified at `CHANCE_MULTIPLE` times chance or better, and class accuracy higher at k = all
  than at k = 1;
- the semantic loss (paper, Table 2): class accuracy and feature similarity at k = 1 and 4 at least those of the
  same tokenizer trained without it, and Chamfer at k = all within `SEMANTIC_CD_TOLERANCE` of it;
- retrieval on the test split, K = 3: RIDA > regression > raw on mAP, and RIDA's paired ratio to raw with its 95%
  interval above `RIDA_RATIO`;
- generation: cfg 3 over cfg 1 on class accuracy with a paired interval above 0, and class accuracy at cfg 3 at
  least `GEN_VAE_SHARE` of the VAE reconstructions' (the ceiling: generated tokens decode through that VAE);
- the demo's samples (`lost generate`'s generate.json): the first prompt's draws (the round table with a single
  pedestal leg) each in one piece (`data/mesh.py` `ONE_PIECE`). One piece is necessary for a recognisable table,
  not sufficient, so this claim can fail here but is only ever passed by looking at the grid: "-" when all are whole;
- the whole run in at most `TIME_LIMIT_S` of wall clock on 2 idle cores.
"""

from __future__ import annotations

from dataclasses import dataclass

VAE_RATIO = 1.5
CHANCE_MULTIPLE = 5.0
SEMANTIC_KS = (1, 4)
SEMANTIC_CD_TOLERANCE = 0.10
RETRIEVAL_SPLIT, RETRIEVAL_K = "test", 3
RIDA_RATIO = 1.3
GEN_VAE_SHARE = 0.75
GUIDED_CFG = 3.0
TIME_LIMIT_S = 45 * 60
MISSING = "-"
VAE_CLAIM = f"k = all within {VAE_RATIO:g}x of the VAE"
SEMANTIC_CLAIM = f"semantic loss on vs off (k = {', '.join(map(str, SEMANTIC_KS))}; Chamfer at all)"
GUIDANCE_CLAIM = f"cfg {GUIDED_CFG:g} beats cfg 1 on class accuracy"
CEILING_CLAIM = f"cfg {GUIDED_CFG:g} class accuracy >= {GEN_VAE_SHARE:g}x the VAE's"


def _class_claim(k: int) -> str:
    return f"{k}-token class accuracy >= {CHANCE_MULTIPLE:g}x chance"


@dataclass(frozen=True)
class Claim:
    """One promise of the method, the figure it rests on, and whether the run shows it."""

    name: str
    figure: str
    verdict: str  # "yes", "no" or MISSING

    @classmethod
    def judged(cls, name: str, figure: str, ok: bool) -> Claim:
        return cls(name, figure, "yes" if ok else "no")


def _interval(ci: list[float], scale: float = 1.0, fmt: str = "+.3f") -> str:
    return f"[{ci[0] * scale:{fmt}}, {ci[1] * scale:{fmt}}]"


def recon_claims(recon: dict | None) -> list[Claim]:
    """Chamfer vs k, the 1-token decodes, the VAE ratio and the semantic-loss comparison from recon.json."""
    names = ["Chamfer falls with k", VAE_CLAIM, _class_claim(1), "class accuracy rises from k = 1 to all", SEMANTIC_CLAIM]
    if recon is None:
        return [Claim(n, "no recon report", MISSING) for n in names]
    rows = {row["k"]: row for row in recon["rows"]}
    ks = sorted(k for k in rows if isinstance(k, int))
    claims = []
    for prev, k in zip(ks, ks[1:]):
        row = rows[k]
        change = f"{row['chamfer_change'] * 100:+.3f} {_interval(row['chamfer_change_ci'], 100)} x10^-2"
        if "chamfer_shape_change" in row:  # the same change shape by shape (not what the verdict reads)
            change += (f"; per shape {row['chamfer_shape_change'] * 100:+.1f}% "
                       f"{_interval(row['chamfer_shape_change_ci'], 100, '+.1f')}")
        if k == ks[-1]:  # k = all: no worse than the k before it beyond noise
            claims.append(Claim.judged(f"Chamfer at k = all ({k}) not worse than k = {prev}", change,
                                       row["chamfer_change_ci"][0] <= 0))
        else:
            claims.append(Claim.judged(f"Chamfer falls from k = {prev} to {k}", change, row["chamfer_change_ci"][1] < 0))
    first, last, vae = rows[ks[0]], rows[ks[-1]], rows.get("vae")
    if vae is not None:
        ratio = last["chamfer"] / vae["chamfer"]
        claims.append(Claim.judged(VAE_CLAIM, f"{last['chamfer'] * 100:.3f} / {vae['chamfer'] * 100:.3f} = {ratio:.2f}x",
                                   ratio <= VAE_RATIO))
    chance = recon["chance"]
    claims.append(Claim.judged(_class_claim(ks[0]),
                               f"{first['class_acc']:.3f} = {first['class_acc'] / chance:.1f}x chance ({chance:.3f})",
                               first["class_acc"] >= CHANCE_MULTIPLE * chance))
    claims.append(Claim.judged(f"class accuracy rises from k = {ks[0]} to all",
                               f"{first['class_acc']:.3f} -> {last['class_acc']:.3f}",
                               last["class_acc"] > first["class_acc"]))
    claims.append(_semantic_claim(recon.get("comparison"), ks[-1]))
    return claims


def _semantic_claim(comparison: dict | None, k_all: int) -> Claim:
    """Class accuracy and feature similarity at each of SEMANTIC_KS not below the other bundle's; Chamfer at k = all
    within SEMANTIC_CD_TOLERANCE of it."""
    name = SEMANTIC_CLAIM
    if comparison is None:
        return Claim(name, "no comparison bundle in the recon report", MISSING)
    rows = {row["k"]: row for row in comparison["rows"]}
    parts, ok = [], True
    for k in SEMANTIC_KS:
        if k not in rows:
            return Claim(name, f"k = {k} not in the comparison", MISSING)
        row = rows[k]
        parts.append(f"k = {k}: class acc {row['class_acc_change']:+.3f}, feature sim {row['feature_sim_change']:+.3f}")
        ok &= row["class_acc_change"] >= 0 and row["feature_sim_change"] >= 0
    row = rows.get(k_all)
    if row is None:
        return Claim(name, f"k = {k_all} not in the comparison", MISSING)
    rel = row["chamfer"] / row["chamfer_other"] - 1
    parts.append(f"Chamfer at k = all {rel * 100:+.1f}%")
    return Claim.judged(f"{name} (against {comparison['name']})", "; ".join(parts), ok and rel <= SEMANTIC_CD_TOLERANCE)


def retrieval_claims(retrieval: dict | None) -> list[Claim]:
    """RIDA > regression > raw on test mAP@3 and RIDA's paired ratio to raw, with the train and val ratios."""
    name = f"retrieval ({RETRIEVAL_SPLIT}, mAP@{RETRIEVAL_K}): RIDA > regression > raw, RIDA / raw above {RIDA_RATIO}x"
    if retrieval is None:
        return [Claim(name, "no retrieval report", MISSING)]
    at = {(r["method"], r["split"]): r for r in retrieval["rows"] if r["K"] == RETRIEVAL_K}
    if not all((m, RETRIEVAL_SPLIT) in at for m in ("raw", "regression", "rida")):
        return [Claim(name, f"the {RETRIEVAL_SPLIT} split was not scored", MISSING)]
    raw, reg, rida = (at[(m, RETRIEVAL_SPLIT)] for m in ("raw", "regression", "rida"))
    ratios = ", ".join(f"{split} {at[('rida', split)]['map_vs_raw']:.2f}x"
                       for split in ("train", "val", RETRIEVAL_SPLIT) if ("rida", split) in at)
    figure = (f"mAP {raw['map'] * 100:.2f} / {reg['map'] * 100:.2f} / {rida['map'] * 100:.2f}%; RIDA / raw "
              f"{rida['map_vs_raw']:.2f}x {_interval(rida['map_vs_raw_ci'], fmt='.2f')} ({ratios})")
    ok = rida["map"] > reg["map"] > raw["map"] and rida["map_vs_raw_ci"][0] > RIDA_RATIO
    return [Claim.judged(name, figure, ok)]


def gen_claims(gen: dict | None, recon: dict | None) -> list[Claim]:
    """Guidance helps (paired over the same prompts and seeds) and class accuracy against the VAE's ceiling."""
    names = [GUIDANCE_CLAIM, CEILING_CLAIM]
    if gen is None:
        return [Claim(n, "no generation report", MISSING) for n in names]
    base = gen["rows"][0]  # every later row carries its paired change from the first
    guided = next((r for r in gen["rows"][1:] if float(r["cfg"]) == GUIDED_CFG), None)
    if float(base["cfg"]) != 1.0 or guided is None or None in (guided.get("class_acc_change_ci") or [None]):
        return [Claim(n, f"cfg {GUIDED_CFG:g} against cfg 1 not in the report", MISSING) for n in names]
    claims = [Claim.judged(GUIDANCE_CLAIM, f"{base['class_acc']:.3f} -> {guided['class_acc']:.3f}, paired change "
                           f"{guided['class_acc_change']:+.3f} {_interval(guided['class_acc_change_ci'])}",
                           guided["class_acc_change_ci"][0] > 0)]
    vae = next((r for r in (recon or {}).get("rows", []) if r.get("k") == "vae"), None)
    if vae is None:
        claims.append(Claim(CEILING_CLAIM, "no VAE row in the recon report", MISSING))
    else:
        share = guided["class_acc"] / vae["class_acc"]
        claims.append(Claim.judged(CEILING_CLAIM, f"{guided['class_acc']:.3f} / {vae['class_acc']:.3f} = {share:.2f}x",
                                   share >= GEN_VAE_SHARE))
    return claims


def samples_claim(samples: dict | None) -> Claim:
    """The first prompt's samples in one piece: "no" when any came apart, "-" (look at the grid) otherwise."""
    from ..data.mesh import ONE_PIECE, is_one_piece  # here, not at import: trimesh stays off `lost demo`'s start-up

    if samples is None or not samples.get("samples"):
        return Claim("samples in one piece", "no samples record (generate.json)", MISSING)
    prompt = samples["samples"][0]["prompt"]
    draws = [r for r in samples["samples"] if r["prompt"] == prompt]
    whole = sum(is_one_piece(r.get("largest_part")) for r in draws)
    name = f'"{prompt}": every sample in one piece'
    if any("largest_part" not in r for r in draws if not r.get("empty")):
        return Claim(name, "generate.json has no largest_part (an older run)", MISSING)
    figure = f"{whole} of {len(draws)} in one piece (>= {ONE_PIECE:g} of the surface in one part)"
    if whole < len(draws):
        return Claim(name, figure, "no")
    return Claim(name, figure + "; whether they are recognisable: samples/grid.png", MISSING)


def time_claim(wall_seconds: float | None) -> Claim:
    name = f"the whole demo in {TIME_LIMIT_S // 60} min (2 idle cores)"
    if wall_seconds is None:
        return Claim(name, "not made in one call", MISSING)
    return Claim.judged(name, f"{wall_seconds / 60:.1f} min", wall_seconds <= TIME_LIMIT_S)


def check_claims(recon: dict | None, retrieval: dict | None, gen: dict | None,
                 wall_seconds: float | None, samples: dict | None = None) -> list[Claim]:
    """Every claim, in the order of the report: reconstruction, retrieval, generation, samples, time. A report
    without the fields a group reads (an older or foreign file) gives one unjudged line for that group."""
    groups = (("reconstruction", "recon", lambda: recon_claims(recon)),
              ("retrieval", "retrieval", lambda: retrieval_claims(retrieval)),
              ("generation", "gen", lambda: gen_claims(gen, recon)))
    claims = []
    for group, report, make in groups:
        try:
            claims += make()
        except (KeyError, IndexError, TypeError, ValueError, ZeroDivisionError) as e:
            claims.append(Claim(f"{group} claims", f"{report}.json lacks what they read ({type(e).__name__}: {e})",
                                MISSING))
    return claims + [samples_claim(samples), time_claim(wall_seconds)]


def claims_table(claims: list[Claim]) -> str:
    """Markdown table: claim | figure | shown; then how many were shown."""
    rows = ["| claim | figure | shown |", "|---|---|---|"]
    rows += [f"| {c.name} | {c.figure} | {c.verdict} |" for c in claims]
    judged = [c for c in claims if c.verdict != MISSING]
    shown = sum(c.verdict == "yes" for c in judged)
    return "\n".join(rows) + f"\n\n{shown} of {len(judged)} checked claims shown.\n"
