"""`lost rida ...`: train the RIDA student (or the direct-regression baseline) and evaluate retrieval."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from .common import DataOpt, OutOpt, RecipeOpt, ResumeOpt, SetOpt, console, require_dir, resolve_config

app = typer.Typer(no_args_is_help=True, context_settings={"help_option_names": ["-h", "--help"]})


@app.command("train")
def train(data: DataOpt, out: OutOpt, recipe: RecipeOpt = None, sets: SetOpt = None, resume: ResumeOpt = False) -> None:
    """Train f_theta on the dataset's latents + teacher features (L_global + L_rank + 0.5 L_spatial).

    Needs the `latents` and `features` tables. Baseline: --set rida.objective=regression; ablations:
    --set rida.w_rank=0 (or w_global, w_spatial).
    Example: lost rida train --recipe recipes/tiny/rida.yaml --data prepared --out runs/rida
    """
    from ..config import to_dict
    from ..train.loop import seed_everything, train as run_train
    from ..train.rida import RidaDataset, RidaRunConfig, RidaTask, build_student_for, check_loss_config
    from .common import start_run

    cfg = resolve_config(RidaRunConfig, recipe, sets)
    check_loss_config(cfg.rida)
    require_dir(data, "dataset")
    dataset = RidaDataset(data, split=cfg.split)
    val, score = None, None
    if cfg.train.eval_every > 0:  # early stopping on the held-out split, scored as `lost rida eval` scores
        from ..eval.retrieval import evaluate_embeddings, load_retrieval_set, student_embeddings
        from ..train.rida import VAL_K

        val = load_retrieval_set(Path(data), cfg.val_split, cfg.val_split, top_k=VAL_K)

        def score(student) -> float:
            emb = student_embeddings(student, val.z)
            return evaluate_embeddings(val.teacher, emb, ks=(VAL_K,))[VAL_K]["map"]
    start_run(out, cfg)
    seed_everything(cfg.train.seed)
    student = build_student_for(cfg, dataset)
    task = RidaTask(student, cfg.rida, run_config=to_dict(cfg), teacher=dataset.teacher_info(), val_score=score)
    result = run_train(task, dataset, cfg.train, cfg.optim, out, resume=resume, run_config=to_dict(cfg))
    console.print(f"trained {cfg.rida.objective} student ({student.num_params() / 1e6:.2f}M params) on "
                  f"{len(dataset)} shapes: {result.steps} steps, final loss {result.final_loss:.4f} "
                  f"({result.seconds:.0f} s); export: {result.export_dir}")
    if val is not None:
        import json

        record = json.loads((Path(out) / "validation.json").read_text())
        console.print(f"{cfg.val_split} mAP@3: best {record['best_score']:.4f} at step {record['best_step']} "
                      f"(the export){'; stopped early' if record['stopped_early'] else ''}")


@app.command("eval")
def evaluate(
    rida: Annotated[Path, typer.Option("--rida", help="RIDA run directory or export folder.")],
    data: DataOpt,
    out: OutOpt,
    regression: Annotated[Optional[Path], typer.Option("--regression", help="Regression-baseline run or export.")] = None,
    split: Annotated[str, typer.Option("--split", help="In-distribution split(s) to evaluate, comma-separated "
                                       "(e.g. train,val,test).")] = "test",
    ood: Annotated[Optional[Path], typer.Option("--ood", help="Out-of-distribution dataset (all its items).")] = None,
    extra: Annotated[Optional[list[str]], typer.Option("--extra", help="More methods: NAME=RUN (repeatable).")] = None,
    reference: Annotated[Optional[str], typer.Option(
        "--reference", help="A student (rida, regression or an --extra NAME): every other student also gets its mAP@K "
                            "minus this one's, with a paired 95% interval.")] = None,
) -> None:
    """Retrieval of teacher neighbours (Recall@K, mAP@K, Jaccard; K = 3, 5) for raw latents and students.

    Writes OUT/retrieval.json and OUT/retrieval.md.
    Example: lost rida eval --rida runs/rida --regression runs/rida_reg --data prepared --out runs/retrieval
    Example: lost rida eval --rida runs/rida --regression runs/rida_reg --reference regression --data prepared
    """
    from ..errors import ConfigError
    from ..eval.retrieval import check_reference, load_retrieval_set, retrieval_table, write_report
    from ..models.rida import RidaStudent

    methods: dict = {"raw": None}
    named = [("regression", regression)] if regression is not None else []
    for spec in extra or []:
        if "=" not in spec or not spec.split("=", 1)[0]:
            raise ConfigError(f"--extra {spec}: expected NAME=RUN")
        named.append(tuple(spec.split("=", 1)))
    for name, path in [*named, ("rida", rida)]:
        if name in methods:
            raise ConfigError(f"--extra {name}: method name used twice")
        methods[name] = RidaStudent.from_pretrained(path)
    check_reference(methods, reference)  # before any data is read
    splits = [s.strip() for s in split.split(",") if s.strip()]
    if not splits or len(set(splits)) != len(splits):
        raise ConfigError(f"--split {split}: expected distinct split names, comma-separated")
    root = require_dir(data, "dataset")
    sets = [load_retrieval_set(root, s, s) for s in splits]
    if ood is not None:
        sets.append(load_retrieval_set(require_dir(ood, "OOD dataset"), None, "ood"))
        sets[-1].latent_stats = sets[0].latent_stats  # raw baseline: normalise as in-distribution (train stats)
    rows = retrieval_table(sets, methods, progress=lambda msg: console.print(f"[dim]{msg}[/dim]"), reference=reference)
    teacher = methods["rida"].extra_config.get("teacher", {}).get("name", "teacher")
    meta = {"teacher": teacher, "command": " ".join(["lost", *sys.argv[1:]]),
            **({"reference": reference} if reference else {})}
    json_path, md_path = write_report(rows, out, meta)
    for r in rows:
        if r["K"] == 3:
            lo, hi = r["map_ci"]
            ratio = (f"  = {r['map_vs_raw']:.2f}x raw [{r['map_vs_raw_ci'][0]:.2f}, {r['map_vs_raw_ci'][1]:.2f}]"
                     if "map_vs_raw" in r else "")
            if "map_minus_reference" in r:
                lo_d, hi_d = r["map_minus_reference_ci"]
                ratio += (f"; {100 * r['map_minus_reference']:+.2f} points vs {reference} "
                          f"[{100 * lo_d:+.2f}, {100 * hi_d:+.2f}]")
            console.print(f"{r['split']:>5} {r['method']:>12}: Recall@3 {100 * r['recall']:.1f}%  "
                          f"mAP@3 {100 * r['map']:.1f}% [{100 * lo:.1f}, {100 * hi:.1f}]  "
                          f"Jaccard {100 * r['jaccard']:.1f}%{ratio}")
    console.print(f"wrote {md_path} and {json_path}")
