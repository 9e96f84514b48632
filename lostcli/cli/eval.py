"""`lost eval ...`: the render classifier, the reconstruction, generation and retrieval tables."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from .common import (DataOpt, OutOpt, RecipeOpt, ResumeOpt, SeedOpt, SetOpt, console, err_console, require_dir,
                     require_int_range, require_nonnegative, resolve_config)

app = typer.Typer(no_args_is_help=True, context_settings={"help_option_names": ["-h", "--help"]})


@app.command("classifier")
def classifier(data: DataOpt, out: OutOpt, recipe: RecipeOpt = None, sets: SetOpt = None,
               resume: ResumeOpt = False) -> None:
    """Train the render classifier on renders of the train split, then measure it on real test renders.

    A small CNN (one random augmented view per shape per step, shared training loop). Its accuracy on the
    test split's real renders (per view, and per shape from view-averaged logits) is printed and stored in
    OUT/eval.json and OUT/export/eval.json; `lost eval recon --classifier OUT` reports it beside its own.
    Example: lost eval classifier --recipe recipes/tiny/classifier.yaml --data prepared --out runs/cls
    """
    from ..train.classifier import ClassifierRunConfig, train_classifier
    from .common import start_run

    cfg = resolve_config(ClassifierRunConfig, recipe, sets)
    require_dir(data, "dataset")
    start_run(out, cfg)
    run = train_classifier(cfg, data, out, resume=resume)
    ev = run.evaluation
    if not ev:  # a non-main process of a distributed run
        return
    console.print(f"trained {run.result.steps} steps on {run.train_items} {cfg.split} shapes "
                  f"({run.result.seconds:.0f} s), final loss {run.result.final_loss:.4f}; export: {run.result.export_dir}")
    console.print(f"{ev['split']} accuracy on real renders ({ev['n']} shapes, {len(ev['categories'])} categories): "
                  f"per view {ev['per_view_acc']:.3f}, shape-level {ev['shape_acc']:.3f} "
                  f"(chance {ev['chance']:.3f}) -> {out / 'eval.json'}")


ClassifierOpt = Annotated[Optional[Path], typer.Option(
    "--classifier", help="Render classifier run or export (lost eval classifier) for class accuracy.")]
BundleOpt = Annotated[Path, typer.Option("--model", "-m", help="Model bundle (lost tokenizer export).")]
PrefixesOpt = Annotated[str, typer.Option("--tokens", help="Prefix lengths k, comma-separated; 'all' = every register.")]


@app.command("recon")
def recon(
    model: BundleOpt,
    data: DataOpt,
    out: OutOpt,
    split: Annotated[str, typer.Option("--split", help="Dataset split to reconstruct ('all': every item).")] = "test",
    tokens: PrefixesOpt = "1,4,16,all",
    classifier_dir: ClassifierOpt = None,
    teacher: Annotated[Optional[str], typer.Option("--teacher", "-t", help="Feature network for render similarity (a teacher spec, see lost teacher eval).")] = None,
    steps: Annotated[Optional[int], typer.Option("--steps", help="Sampling steps of the decoder (default: the bundle's).")] = None,
    guidance: Annotated[Optional[float], typer.Option("--guidance", help="Classifier-free guidance scale (default: the bundle's).")] = None,
    temperature: Annotated[Optional[float], typer.Option("--temperature", help="Scale of the decoder's starting noise (default: the bundle's).")] = None,
    resolution: Annotated[int, typer.Option("--resolution", help="Marching-cubes grid.")] = 64,
    limit: Annotated[Optional[int], typer.Option("--limit", help="Only the first N shapes of the split.")] = None,
    points: Annotated[int, typer.Option("--points", help="Surface samples per mesh for Chamfer / F-score.")] = 100_000,
    batch_size: Annotated[int, typer.Option("--batch-size", help="Shapes decoded together.")] = 8,
    fd_network: Annotated[str, typer.Option("--fd-network", help="FD/KID features: auto, none, inception, classifier or a teacher spec (auto: Inception if local, else the classifier, else --teacher).")] = "auto",
    compare: Annotated[Optional[str], typer.Option("--compare", help="NAME=BUNDLE: also decode another bundle on the same shape VAE (e.g. an ablation) from the same shapes and seeds, and compare the two per k with paired intervals.")] = None,
    seed: SeedOpt = 0,
) -> None:
    """Reconstruction table: tokenize each shape, decode prefixes of k tokens, measure and classify.

    Rows per k, plus the shape VAE's own reconstruction ("vae", upper bound) and the dataset's mean latent
    decoded ("mean", floor): median Chamfer (raw, docs/protocols.md), median F-score, class accuracy of the
    reconstructions' renders (beside the classifier's own test accuracy and chance), feature similarity to the
    real renders (--teacher) and FD / KID against them (--fd-network). Writes OUT/recon.json,
    OUT/recon.md, a PNG of a few decodes per row and a curve of each metric against k.
    Example: lost eval recon --model bundle --data prepared --tokens 1,4,16,all --classifier runs/cls --out reports/recon
    """
    from ..errors import ConfigError
    from ..models.classifier import load_classifier
    from ..eval.recon import ReconConfig, evaluate_recon, parse_tokens
    from ..pipeline import LostPipeline
    from .common import ProgressBar

    require_nonnegative("--temperature", temperature)
    require_int_range("--steps", steps, 1)
    require_nonnegative("--guidance", guidance)
    require_dir(data, "dataset")
    require_dir(model, "model bundle")
    pipe = LostPipeline.from_pretrained(model)
    other = None
    if compare is not None:
        label, _, path = compare.partition("=")
        if not label or not path or ":" in label:
            raise ConfigError(f"--compare {compare}: expected NAME=BUNDLE (a name without ':')")
        other = (label, LostPipeline.from_pretrained(require_dir(Path(path), "compared bundle")))
    cls = load_classifier(classifier_dir) if classifier_dir is not None else None
    feat = None
    if teacher is not None:
        from ..teachers import load_teacher
        feat = load_teacher(teacher)
    cfg = ReconConfig(split=split, ks=parse_tokens(tokens), steps=steps, guidance=guidance, temperature=temperature,
                      resolution=resolution, limit=limit, n_points=points, batch_size=batch_size, seed=seed,
                      fd_network=fd_network)
    command = " ".join(["lost", *sys.argv[1:]])
    with ProgressBar("recon", None) as tick:
        result = evaluate_recon(pipe, data, cfg, classifier=cls, teacher=feat, out_dir=out, command=command,
                                progress=tick, compare=other)
    rep = result.report
    if rep["dropped_ks"]:
        err_console.print(f"note: k = {', '.join(map(str, rep['dropped_ks']))} skipped: the model has R = "
                          f"{rep['num_tokens']} tokens", highlight=False)
    for row in result.rows:
        console.print(row_line(row))
    for row in (rep.get("comparison") or {}).get("rows", []):
        console.print(f"k={row['k']:>5} vs {rep['comparison']['name']}: " + "  ".join(
            f"{key} {row[key] * scale:.3f} / {row[key + '_other'] * scale:.3f} (change "
            f"{row[key + '_change'] * scale:+.3f} [{row[key + '_change_ci'][0] * scale:+.3f}, "
            f"{row[key + '_change_ci'][1] * scale:+.3f}])"
            for key, scale in (("class_acc", 1), ("feature_sim", 1), ("chamfer", 100))
            if row.get(key) is not None and row.get(key + "_other") is not None and None not in row[key + "_change_ci"]))
    console.print(f"class accuracy: chance {_fmt(rep['chance'])}, the classifier's own test accuracy on real renders "
                  f"{_fmt(rep['classifier_test_acc'])} ({result.seconds:.0f} s) -> {out / 'recon.md'}, {out / 'recon.json'}")


@app.command("tokens")
def tokens_probe(
    model: BundleOpt,
    data: DataOpt,
    out: OutOpt,
    split: Annotated[str, typer.Option("--split", help="Split that is scored.")] = "val",
    probe_split: Annotated[str, typer.Option("--probe-split", help="Split the linear probes are fitted on.")] = "train",
    tokens: PrefixesOpt = "1,2,4,8,16,all",
    t: Annotated[float, typer.Option("--t", help="Noise level (0..1) of the decoder's one-pass posterior estimate.")] = 0.95,
    steps: Annotated[int, typer.Option("--steps", help="Sampling steps of the full decodes (0: skip them).")] = 25,
    guidance: Annotated[float, typer.Option("--guidance", help="Classifier-free guidance of the full decodes.")] = 1.0,
    limit: Annotated[Optional[int], typer.Option("--limit", help="At most N latents of each split.")] = None,
    seed: SeedOpt = 0,
) -> None:
    """What each token prefix carries and how much of it the decoder reads (why a recon curve is flat).

    Per k, on the dataset's stored latents (`lost dataset latents` with the bundle's VAE): the cosine of token k
    to token 1, NMSE of a linear (ridge) and a kernel (RBF) probe from the first k tokens (fitted on
    --probe-split), of a PCA code with as many numbers as k tokens, of the decoder's one-pass clean-latent
    estimate at noise level --t, and of full decodes.
    Writes OUT/tokens.json and OUT/tokens.md.
    Example: lost eval tokens --model bundle --data prepared --split val --out reports/tokens
    """
    from ..eval.recon import parse_tokens
    from ..eval.token_probe import TokenProbeConfig, evaluate_token_probe
    from ..pipeline import LostPipeline

    cfg = TokenProbeConfig(split=split, probe_split=probe_split, ks=tuple(parse_tokens(tokens)), t=t, steps=steps,
                           guidance=guidance, limit=limit, seed=seed)
    require_dir(data, "dataset")
    require_dir(model, "model bundle")
    pipe = LostPipeline.from_pretrained(model)
    rep = evaluate_token_probe(pipe, data, cfg, out_dir=out, command=" ".join(["lost", *sys.argv[1:]]))
    for r in rep["rows"]:
        console.print(f"k={r['k']:>4}: cos to token 1 {_fmt(r['cosine_to_first'])}  linear probe "
                      f"{_fmt(r['probe_nmse'])}  kernel probe {_fmt(r['kernel_nmse'])}  PCA {_fmt(r['pca_nmse'])}  "
                      f"decoder posterior {_fmt(r['posterior_nmse'])}  decoded samples {_fmt(r['sample_nmse'])}")
    console.print(f"NMSE on {rep['n']} {split} latents (split mean {rep['mean_nmse']:.3f}); mean token-to-token "
                  f"cosine {rep['token_cosine']:.3f} -> {out / 'tokens.md'}")


def _fmt(v: float | None, scale: float = 1.0) -> str:
    return "-" if v is None else f"{v * scale:.3f}"


def row_line(row: dict) -> str:
    """One printed line per table row (CD x 10^-2 as the paper prints it)."""
    change = row.get("chamfer_change_ci")
    change = (f" (change {100 * row['chamfer_change']:+.3f} [{100 * change[0]:+.3f}, {100 * change[1]:+.3f}])"
              if change and None not in change and row.get("chamfer_change") is not None else "")
    shape = row.get("chamfer_shape_change_ci")
    if shape and None not in shape and row.get("chamfer_shape_change") is not None:
        change += (f" (per shape {100 * row['chamfer_shape_change']:+.1f}% [{100 * shape[0]:+.1f}, "
                   f"{100 * shape[1]:+.1f}], fell for {100 * row['chamfer_fall_share']:.0f}%)")
    return (f"k={row['k']:>5}: CD x1e-2 {_fmt(row['chamfer'], 100)}{change}  F@0.01 {_fmt(row['fscore_0.01'])}  "
            f"class acc {_fmt(row['class_acc'])}  feature sim {_fmt(row.get('feature_sim'))}  "
            f"FD {_fmt(row.get('fd'))}  failures {row['failures']}/{row['n']}")


@app.command("gen")
def gen(
    model: Annotated[Path, typer.Option("--model", "-m", help="Model bundle with gpt/ and text_encoder/ (lost gpt export).")],
    data: Annotated[Path, typer.Option("--ref", "--data", "-d", help="Reference: a prepared dataset (its split's renders; its categories are prompted unless --prompts).")],
    out: OutOpt,
    split: Annotated[str, typer.Option("--split", help="Split whose categories are prompted and whose renders are the FD reference.")] = "test",
    prompt_file: Annotated[Optional[Path], typer.Option("--prompts", help="Prompt file instead of per-category prompts: one per line, or CATEGORY<TAB>prompt (graded by the classifier).")] = None,
    cfg: Annotated[str, typer.Option("--cfg", help="Guidance scales, comma-separated: one row each.")] = "1,3",
    classifier_dir: ClassifierOpt = None,
    prompts: Annotated[int, typer.Option("--prompts-per-category", help="Prompts per category.")] = 5,
    seeds: Annotated[int, typer.Option("--seeds", help="Samples (seeded draws) per prompt.")] = 4,
    fd_network: Annotated[str, typer.Option("--fd-network", help="FD features: auto, inception, classifier or a teacher spec.")] = "auto",
    temperature: Annotated[Optional[float], typer.Option("--temperature", help="Sampling temperature (default: the bundle's).")] = None,
    schedule: Annotated[Optional[str], typer.Option("--cfg-schedule", help="Guidance schedule over the tokens: constant or linear (default: the bundle's).")] = None,
    tokens: Annotated[Optional[int], typer.Option("--tokens", help="Tokens generated and decoded (default: the GPT's length).")] = None,
    resolution: Annotated[int, typer.Option("--resolution", help="Marching-cubes grid.")] = 64,
    batch_size: Annotated[int, typer.Option("--batch-size", help="Prompts generated together (x seeds samples).")] = 8,
    seed: SeedOpt = 0,
) -> None:
    """Text-to-shape table: per guidance scale, class accuracy of the generated shapes and FD/KID of their renders.

    Prompts: PER_CATEGORY for each category of the split (built-in captions' phrasing), or the lines of
    --prompts FILE; SEEDS draws each, the same prompts and seeds in every row. Also the CLIP score of the
    conditioning text tower. Writes OUT/gen.json, OUT/gen.md and OUT/gen_grid.png.
    Example: lost eval gen --model bundle --ref prepared --split test --cfg 1,3 --classifier runs/cls --out reports/gen
    Example: lost eval gen --model bundle --prompts prompts.txt --ref prepared --out reports/gen_mine
    """
    from ..models.classifier import load_classifier
    from ..data.prompts import read_prompt_file
    from ..eval.gen import GenEvalConfig, evaluate_gen, parse_cfgs
    from ..pipeline import LostPipeline
    from .common import ProgressBar

    settings = GenEvalConfig(split=split, cfgs=parse_cfgs(cfg), prompts_per_category=prompts, seeds=seeds,
                             temperature=temperature, guidance_schedule=schedule, num_tokens=tokens,
                             resolution=resolution, batch_size=batch_size, seed=seed, fd_network=fd_network,
                             prompts=read_prompt_file(prompt_file) if prompt_file is not None else None)
    require_dir(data, "dataset")
    require_dir(model, "model bundle")
    pipe = LostPipeline.from_pretrained(model)
    cls = load_classifier(classifier_dir) if classifier_dir is not None else None
    with ProgressBar("gen", None) as tick:
        result = evaluate_gen(pipe, data, settings, classifier=cls, out_dir=out,
                              command=" ".join(["lost", *sys.argv[1:]]), progress=tick)
    rep = result.report
    for row in result.rows:
        ci = row.get("class_acc_change_ci")
        change = (f" (vs cfg {result.rows[0]['cfg']:g}: {row['class_acc_change']:+.3f} [{ci[0]:+.3f}, {ci[1]:+.3f}])"
                  if ci and None not in ci else "")
        console.print(f"cfg {row['cfg']:g}: class acc {_fmt(row['class_acc'])}{change}  {rep['fd_metric']} "
                      f"{_fmt(row['fd'])}  KID {_fmt(row['kid'])}  CLIP score {_fmt(row.get('clip_score'))}  "
                      f"failures {row['failures']}/{row['n']}")
    if rep["fd_warning"]:
        err_console.print(f"warning: {rep['fd_warning']}", highlight=False)
    console.print(f"class accuracy: chance {_fmt(rep['chance'])}, the classifier's own test accuracy on real renders "
                  f"{_fmt(rep['classifier_test_acc'])} ({result.seconds:.0f} s) -> {out / 'gen.md'}, {out / 'gen.json'}")


def _retrieval_command() -> None:
    """`lost eval retrieval`: the same command as `lost rida eval` (one implementation, two names)."""
    from .rida import evaluate

    app.command("retrieval", help=(evaluate.__doc__ or "") + "\n\nSame as `lost rida eval`.")(evaluate)


_retrieval_command()


@app.command("lift")
def lift(
    model: Annotated[str, typer.Option("--model", "-m", help="Image-to-3D folder (lost image3d train's export).")],
    data: DataOpt,
    out: OutOpt,
    classifier: Annotated[Optional[Path], typer.Option("--classifier", help="Render classifier (lost eval classifier).")] = None,
    n: Annotated[int, typer.Option("--n", help="Test shapes to render and lift (>= 2).")] = 20,
    points: Annotated[int, typer.Option("--points", help="Surface points per mesh for the Chamfer distance.")] = 20000,
    steps: Annotated[int, typer.Option("--steps", help="Sampling steps.")] = 25,
    guidance: Annotated[float, typer.Option("--guidance", help="Classifier-free guidance scale.")] = 3.0,
    resolution: Annotated[int, typer.Option("--resolution", help="Marching-cubes cells per axis.")] = 64,
    seed: SeedOpt = 0,
) -> None:
    """Lift one render of N test shapes, then Chamfer to their own shape vs a random other, and the category.

    Writes OUT/inputs/*.png (front view of each shape), OUT/lifted/ (lost dataset lift's store), OUT/lift_eval.json
    and OUT/lift_grid.png.
    Example: lost eval lift --model runs/image3d/export --data prepared --classifier runs/cls --out runs/lift_eval
    """
    from ..batch.lift import LiftSettings, discover_images, finalize_lift, lift_images
    from ..eval.lift import evaluate_lift, export_renders, write_report
    from ..image3d.pipeline import ImageTo3D
    from .common import require_finite

    require_int_range("--n", n, 2)
    require_int_range("--points", points, 100)
    require_int_range("--steps", steps, 1)
    require_finite("--guidance", guidance)
    require_int_range("--resolution", resolution, 8, 1024)
    require_dir(data, "dataset")
    export_renders(data, out / "inputs", n=n, seed=seed)
    settings = LiftSettings(model=str(Path(model).resolve()), steps=steps, guidance=float(guidance), seed=seed,
                            resolution=resolution)
    lift_images(ImageTo3D.from_pretrained(model), discover_images(out / "inputs"), out / "lifted", settings)
    finalize_lift(out / "lifted")
    report = evaluate_lift(out / "lifted", data, classifier, points=points, seed=seed, grid=out / "lift_grid.png",
                           inputs=out / "inputs")
    write_report(report, out / "lift_eval.json")
    agree = (f"; category agreement {report['category_agreement']:.2f} (chance {report['chance']:.2f})"
             if "category_agreement" in report else "")
    console.print(f"{report['n']} shapes, median Chamfer (x1e-2, {points} points) own "
                  f"{report['chamfer_own_median'] * 100:.3f} vs other {report['chamfer_other_median'] * 100:.3f}, "
                  f"own < other for {report['own_below_other']:.0%}{agree} -> {out / 'lift_eval.json'}", markup=False)
