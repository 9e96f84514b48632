"""The demo report's claims table: each verdict read from constructed recon / retrieval / gen reports, and flipped
by moving one figure across its bar."""

from __future__ import annotations

import json

from lostcli.demo import DemoOptions, write_report
from lostcli.eval.claims import MISSING, check_claims, claims_table


def _recon() -> dict:
    rows = [
        {"k": 1, "chamfer": 0.050, "class_acc": 0.60},
        {"k": 4, "chamfer": 0.042, "class_acc": 0.65, "chamfer_change": -0.008, "chamfer_change_ci": [-0.012, -0.004],
         "chamfer_shape_change": -0.13, "chamfer_shape_change_ci": [-0.18, -0.11]},
        {"k": 16, "chamfer": 0.040, "class_acc": 0.68, "chamfer_change": -0.002, "chamfer_change_ci": [-0.004, -0.001]},
        {"k": 32, "chamfer": 0.041, "class_acc": 0.70, "chamfer_change": 0.001, "chamfer_change_ci": [-0.001, 0.002]},
        {"k": "vae", "chamfer": 0.030, "class_acc": 0.72},
        {"k": "mean", "chamfer": 0.22, "class_acc": 0.05},
        {"k": "no_semantic:1", "chamfer": 0.051, "class_acc": 0.55},
    ]
    comparison = {"name": "no_semantic", "rows": [
        {"k": k, "class_acc_change": 0.03, "feature_sim_change": 0.02, "chamfer": 0.041, "chamfer_other": 0.040}
        for k in (1, 4, 16, 32)]}
    return {"rows": rows, "chance": 1 / 18, "comparison": comparison}


def _retrieval(test_ratio_lo: float = 1.35) -> dict:
    rows = []
    for split, ratio in (("train", 2.0), ("val", 1.4), ("test", 1.5)):
        rows.append({"method": "raw", "split": split, "K": 3, "map": 0.20})
        rows.append({"method": "regression", "split": split, "K": 3, "map": 0.25, "map_vs_raw": 1.25,
                     "map_vs_raw_ci": [1.1, 1.4]})
        rows.append({"method": "rida", "split": split, "K": 3, "map": 0.20 * ratio, "map_vs_raw": ratio,
                     "map_vs_raw_ci": [test_ratio_lo if split == "test" else 1.2, 2.5]})
        rows.append({"method": "rida", "split": split, "K": 5, "map": 0.01, "map_vs_raw": 0.1, "map_vs_raw_ci": [0, 0]})
    return {"rows": rows}


def _gen(lo: float = 0.01) -> dict:
    return {"rows": [{"cfg": 1.0, "class_acc": 0.60},
                     {"cfg": 3.0, "class_acc": 0.64, "class_acc_change": 0.04, "class_acc_change_ci": [lo, 0.07]}]}


def _verdicts(recon=None, retrieval=None, gen=None, wall=None) -> dict[str, str]:
    return {c.name: c.verdict for c in check_claims(recon, retrieval, gen, wall)}


def _samples(shares=(1.0, 0.99, 0.97, 0.96)) -> dict:
    table = "a round table with a single pedestal leg"
    rows = [{"index": i, "prompt": table, "empty": False, "largest_part": x} for i, x in enumerate(shares)]
    return {"samples": rows + [{"index": 4, "prompt": "a tall bottle", "empty": False, "largest_part": 0.5}]}


def test_every_claim_shown_on_a_run_that_meets_the_bars():
    v = _verdicts(_recon(), _retrieval(), _gen(), 40 * 60.0)
    samples = v.pop("samples in one piece")  # no generate.json given: not judged
    assert len(v) == 11 and set(v.values()) == {"yes"} and samples == MISSING, v
    assert "Chamfer at k = all (32) not worse than k = 16" in v


def test_samples_in_one_piece_can_fail_but_only_the_grid_passes():
    def claim(samples):
        return check_claims(None, None, None, None, samples)[-2]

    whole = claim(_samples())  # the bottle's 0.5 is another prompt's
    assert whole.name == '"a round table with a single pedestal leg": every sample in one piece'
    assert whole.verdict == MISSING and whole.figure.startswith("4 of 4 in one piece (>= 0.95 of the surface")
    assert "samples/grid.png" in whole.figure
    apart = claim(_samples((1.0, 0.78, 0.97, 0.94)))  # a top above a detached stem; one just under the bar
    assert apart.verdict == "no" and apart.figure == "2 of 4 in one piece (>= 0.95 of the surface in one part)"
    empty = _samples()
    empty["samples"][0] = {"index": 0, "prompt": empty["samples"][1]["prompt"], "empty": True}  # no surface
    assert claim(empty).verdict == "no" and claim(empty).figure.startswith("3 of 4")
    old = _samples()
    del old["samples"][2]["largest_part"]
    assert claim(old).verdict == MISSING and "older run" in claim(old).figure


def test_each_bar_flips_its_own_verdict():
    base = _verdicts(_recon(), _retrieval(), _gen(), 40 * 60.0)

    def flipped(**kw) -> set[str]:
        args = {"recon": _recon(), "retrieval": _retrieval(), "gen": _gen(), "wall": 40 * 60.0, **kw}
        v = _verdicts(**args)
        return {name for name in v if v[name] != base[name]}

    recon = _recon()
    recon["rows"][2]["chamfer_change_ci"] = [-0.004, 0.0005]  # 4 -> 16 spans 0
    assert flipped(recon=recon) == {"Chamfer falls from k = 4 to 16"}
    recon = _recon()
    recon["rows"][3]["chamfer_change_ci"] = [0.0001, 0.002]  # k = all worse than 16 beyond noise
    recon["rows"][3]["chamfer"] = 0.044  # still 1.47x the VAE
    assert flipped(recon=recon) == {"Chamfer at k = all (32) not worse than k = 16"}
    recon = _recon()
    recon["rows"][3]["chamfer"] = 0.0451  # 1.503x the VAE
    assert flipped(recon=recon) == {"k = all within 1.5x of the VAE"}
    recon = _recon()
    recon["rows"][0]["class_acc"] = 0.27  # 4.9x chance
    assert flipped(recon=recon) == {"1-token class accuracy >= 5x chance"}
    recon = _recon()
    recon["rows"][3]["class_acc"] = 0.60  # no rise from k = 1
    assert flipped(recon=recon) == {"class accuracy rises from k = 1 to all"}
    name = "semantic loss on vs off (k = 1, 4; Chamfer at all) (against no_semantic)"
    recon = _recon()
    recon["comparison"]["rows"][1]["feature_sim_change"] = -0.001
    assert flipped(recon=recon) == {name}
    recon = _recon()
    recon["comparison"]["rows"][3]["chamfer"] = 0.0441  # +10.25%
    assert flipped(recon=recon) == {name}
    retrieval_name = "retrieval (test, mAP@3): RIDA > regression > raw, RIDA / raw above 1.3x"
    assert flipped(retrieval=_retrieval(1.29)) == {retrieval_name}
    retrieval = _retrieval()
    next(r for r in retrieval["rows"] if r["method"] == "regression" and r["split"] == "test")["map"] = 0.19
    assert flipped(retrieval=retrieval) == {retrieval_name}  # regression below raw
    assert flipped(gen=_gen(-0.001)) == {"cfg 3 beats cfg 1 on class accuracy"}
    gen = _gen()
    gen["rows"][1]["class_acc"] = 0.53  # 0.736x the VAE's 0.72
    assert flipped(gen=gen) == {"cfg 3 class accuracy >= 0.75x the VAE's"}
    assert flipped(wall=45 * 60.0 + 1) == {"the whole demo in 45 min (2 idle cores)"}


def test_figures_and_missing_reports():
    claims = {c.name: c for c in check_claims(_recon(), None, None, None)}
    assert claims["Chamfer falls from k = 1 to 4"].figure == "-0.800 [-1.200, -0.400] x10^-2; per shape -13.0% [-18.0, -11.0]"
    assert claims["k = all within 1.5x of the VAE"].figure == "4.100 / 3.000 = 1.37x"
    assert claims["1-token class accuracy >= 5x chance"].figure == "0.600 = 10.8x chance (0.056)"
    missing = [c for c in claims.values() if c.verdict == MISSING]
    assert [c.figure for c in missing] == ["no retrieval report", "no generation report", "no generation report",
                                           "no samples record (generate.json)", "not made in one call"]
    table = claims_table(list(claims.values()))
    assert table.endswith("7 of 7 checked claims shown.\n")
    recon = _recon()
    del recon["comparison"]
    semantic = [c for c in check_claims(recon, None, None, None) if c.name.startswith("semantic")]
    assert semantic[0].verdict == MISSING and semantic[0].figure == "no comparison bundle in the recon report"


def test_demo_report_starts_with_the_claims(tmp_path):
    rep = tmp_path / "report"
    for name, data in (("recon", _recon()), ("retrieval", _retrieval()), ("gen", _gen(-0.02))):
        (rep / name).mkdir(parents=True)
        (rep / name / f"{name}.json").write_text(json.dumps(data))
        (rep / name / f"{name}.md").write_text(f"# {name} table\n")
    opts = DemoOptions.make(tmp_path)
    md = write_report(opts, {"vae": 100.0, "tokenizer": 200.0}, wall=3000.0).read_text()
    head, _, rest = md.partition("## What this run shows")
    assert "# LoST demo report" in head and rest.index("| claim | figure | shown |") < rest.index("## recon table")
    assert "| cfg 3 beats cfg 1 on class accuracy | 0.600 -> 0.640, paired change +0.040 [-0.020, +0.070] | no |" in rest
    assert "| the whole demo in 45 min (2 idle cores) | 50.0 min | no |" in rest
    assert "9 of 11 checked claims shown." in rest
    assert json.loads((rep / "gen.json").read_text()) == _gen(-0.02)
    assert _recon() == json.loads((rep / "recon.json").read_text())


def test_a_report_without_the_fields_is_not_judged():
    claims = check_claims({"seconds": 1}, {"rows": [{"method": "raw"}]}, _gen(), None)
    assert [(c.name, c.verdict) for c in claims[:2]] == [("reconstruction claims", MISSING),
                                                         ("retrieval claims", MISSING)]
    assert claims[0].figure == "recon.json lacks what they read (KeyError: 'rows')"
    assert [(c.verdict, c.figure) for c in claims[2:4]] == [  # guidance judged; the ceiling needs recon's VAE row
        ("yes", "0.600 -> 0.640, paired change +0.040 [+0.010, +0.070]"), (MISSING, "no VAE row in the recon report")]
