"""The embedded default: the whole offline pipeline as a resumable plan of `lost` commands.

`build_plan` turns a run directory into the stages (built-in dataset -> prepare -> VAE -> latents ->
teacher -> features -> RIDA (+ regression baseline) -> classifier -> tokenizer (+ the same without the
semantic loss) -> bundles -> tokens -> GPT -> reconstruction, retrieval and generation reports -> samples),
each a `lost` command line with the files whose existence means it is finished and the stages whose products
it reads. `run_demo` runs the unfinished ones as subprocesses (`python -m lostcli ...`, output into
DIR/logs/<stage>.log), up to `jobs` at a time once their inputs exist, splitting the CPU threads among
the stages running together; it records finished stages, their seconds and threads in DIR/demo.json, and
`write_report` gathers the tables into DIR/report/report.md.

Layout of DIR: synth/ prepared/ vae/ teacher/ rida/ rida_reg/ cls/ tokenizer/ gpt/ (runs), bundle/ (the
model), report/{recon,retrieval,gen}/ + report/{recon,retrieval,gen}.json + report/report.md, samples/,
logs/, demo.json.

Resume rules: a stage whose products exist is skipped (whoever made them); a training stage whose run
directory holds a checkpoint but no export is re-run with `--resume`; dataset passes (prepare, latents,
features, tokens) skip the items already stored.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path

from .config import THREADS_FILE_ENV
from .errors import ConfigError, LostError
from .eval.claims import check_claims, claims_table
from .persist import atomic_write_text

RECIPE_FILES = ("vae", "teacher", "rida", "classifier", "tokenizer", "gpt")  # recipes/tiny/<name>.yaml
RECORD_FILE = "demo.json"
# Shapes in the built-in dataset: the default, and with --quick. 3024 (2419 train shapes), not 1008: with 1008 the
# median Chamfer's fall from 4 to 16 tokens spanned 0 in every run (demo14-17); with 3024 it lies below 0 in both runs
# (-0.421 [-0.809, -0.063] and -0.626 [-1.133, -0.355] x10^-2), and retrieval ranks RIDA > regression > raw on test
# beyond noise. The price: 140 minutes on 2 cores instead of 100 (docs/level-of-semantics.md, "demo18").
FULL_N, QUICK_N = 3024, 72
REPORTS = ("recon", "retrieval", "gen")  # DIR/report/<name>/<name>.{json,md}
RECON_SHAPES = 72  # test shapes in the reconstruction tables (of 302 at the default n, 101 at n = 1008)
SAMPLE_PROMPTS = (  # the built-in captions' phrasing, three categories that look nothing alike
    "a round table with a single pedestal leg",
    "a tall bottle with a narrow neck",
    "a rocket with four fins",
)


class StageError(LostError):
    """A demo stage exited non-zero; the message names its log file."""


@dataclass(frozen=True)
class DemoOptions:
    """What `lost demo` runs; `settings()` must match the record of an earlier run in the same DIR."""

    out: Path  # run directory
    recipes: Path  # folder holding the tiny recipes (vae.yaml, teacher.yaml, ...)
    n: int = FULL_N  # shapes in the built-in dataset
    quick: bool = False  # smoke test: 2 training steps per stage, tiny evaluations
    semantic_weight: float | None = None  # tokenizer semantic loss weight; None: the recipe's (the loss is on)
    seed: int = 0  # seed of the built-in dataset

    def __post_init__(self) -> None:
        if self.n <= 0:
            raise ConfigError(f"--n: must be positive, got {self.n}")
        if self.semantic_weight is not None and not self.semantic_weight >= 0:
            raise ConfigError(f"--semantic-weight: must be >= 0, got {self.semantic_weight}")

    @classmethod
    def make(cls, out: Path, n: int | None = None, quick: bool = False, semantic_weight: float | None = None,
             recipes: Path | None = None) -> DemoOptions:
        """The options of `lost demo`: `n` defaults to QUICK_N shapes with `quick`, else FULL_N; `recipes` to
        `find_recipes()`."""
        n = n if n is not None else (QUICK_N if quick else FULL_N)
        return cls(out=out, recipes=recipes or find_recipes(), n=n, quick=quick, semantic_weight=semantic_weight)

    def settings(self) -> dict:
        """The options that change the products (stored in demo.json, checked on resume)."""
        return {"n": self.n, "quick": self.quick, "semantic_weight": self.semantic_weight, "seed": self.seed}


@dataclass
class Stage:
    """One `lost` command of the plan."""

    name: str  # short key: log file name, demo.json key
    title: str  # what the progress display shows
    args: list[str]  # arguments after `lost`
    products: list[Path]  # all exist <=> the stage is finished
    run_dir: Path | None = None  # training run: `--resume` is added when it holds a checkpoint
    table: tuple[Path, str] | None = None  # (dataset, table): finished only when it holds every item
    files: dict[Path, str] = field(default_factory=dict)  # small inputs written before the command runs
    needs: tuple[str, ...] = ()  # stages whose products this one reads: it starts once they are finished

    def command_line(self) -> list[str]:
        """The arguments after `lost`, with `--resume` when the run directory holds a checkpoint."""
        return self.args + (["--resume"] if self.run_dir is not None and has_checkpoint(self.run_dir) else [])


@dataclass
class DemoResult:
    """What `run_demo` did."""

    seconds: dict[str, float | None]  # per stage, this run or an earlier one; None: finished outside the demo
    ran: list[str]  # stages run this time
    skipped: list[str]  # stages found finished
    report: Path  # DIR/report/report.md
    bundle: Path  # DIR/bundle
    samples: Path  # DIR/samples
    total_seconds: float  # wall time of this call


# ----------------------------------------------------------------------------------------------------
# The plan
# ----------------------------------------------------------------------------------------------------


def find_recipes() -> Path:
    """The repository's recipes/tiny (next to the package), else ./recipes/tiny.

    Raises:
        ConfigError: neither folder holds the tiny recipes.
    """
    for root in (Path(__file__).resolve().parent.parent, Path.cwd()):
        folder = root / "recipes" / "tiny"
        if all((folder / f"{name}.yaml").is_file() for name in RECIPE_FILES):
            return folder
    raise ConfigError(f"{Path.cwd() / 'recipes' / 'tiny'}: tiny recipes not found (need "
                      f"{', '.join(n + '.yaml' for n in RECIPE_FILES)}); pass --recipes FOLDER")


def build_plan(opts: DemoOptions) -> list[Stage]:
    """The stages for `opts.out` in plan order (paths are `opts.out / ...`, recipes `opts.recipes / NAME.yaml`);
    each names the stages it `needs`."""
    d, r = Path(opts.out), Path(opts.recipes)
    data = d / "prepared"
    bundle, plain = d / "bundle", d / "bundle_nosem"
    # --quick: two optimiser steps of small batches (72 shapes hold ~57 training shapes) per training stage
    short = ["--set", "train.steps=2", "--set", "train.batch_size=8"] if opts.quick else []

    def train(name: str, title: str, group: list[str], recipe: str, run: str, *extra: str,
              also: tuple[str, ...] = (), needs: tuple[str, ...] = ()) -> Stage:
        """A training command on the shared loop: finished when its export (and `also` files of the run) exist."""
        return Stage(name, title, [*group, "--recipe", str(r / f"{recipe}.yaml"), "--data", str(data),
                                   *extra, *short, "--out", str(d / run)],
                     [d / run / "export" / "model.safetensors", *(d / run / f for f in also)], run_dir=d / run,
                     needs=needs)

    def export(name: str, run: str, out: Path, needs: tuple[str, ...]) -> Stage:
        return Stage(name, f"export {out.name}", ["tokenizer", "export", str(d / run), "--vae", str(d / "vae" / "export"),
                                                  "--out", str(out)],
                     [out / "bundle.json", out / "tokenizer" / "model.safetensors"], needs=needs)

    from .train.tokenizer import SEMANTIC_WEIGHTS, STUDENT_WEIGHTS

    # --semantic-weight W sets both terms of the semantic loss; the ablation turns off every term using the student
    weight = [] if opts.semantic_weight is None else [
        a for name in SEMANTIC_WEIGHTS for a in ("--set", f"tokenizer.{name}={opts.semantic_weight:g}")]
    sem = ["--rida", str(d / "rida" / "export"), *weight]  # the recipe's semantic loss (on by default)
    nosem = [a for name in STUDENT_WEIGHTS for a in ("--set", f"tokenizer.{name}=0")]
    return [
        Stage("synth", "built-in dataset", ["dataset", "synth", "--out", str(d / "synth"), "--n", str(opts.n),
                                            "--seed", str(opts.seed), "--workers", "2"], [d / "synth" / "metadata.jsonl"]),
        Stage("prepare", "prepare: sample, label, render", ["dataset", "prepare", str(d / "synth"), "--out",
                                                            str(data), "--workers", "2"], [data / "manifest.json"],
              needs=("synth",)),
        train("vae", "shape VAE", ["vae", "train"], "vae", "vae", needs=("prepare",)),
        Stage("latents", "latents of every shape", ["dataset", "latents", str(data), "--vae",
                                                    str(d / "vae" / "export")],
              [data / "latents" / "stats.json"], needs=("vae",)),
        train("teacher", "built-in teacher", ["teacher", "train"], "teacher", "teacher", needs=("prepare",)),
        Stage("features", "teacher features", ["dataset", "features", str(data), "--teacher",
                                               str(d / "teacher" / "export"), "--grid", "4"],
              [data / "features" / "stats.json"], table=(data, "features"), needs=("teacher",)),
        train("classifier", "render classifier", ["eval", "classifier"], "classifier", "cls", also=("eval.json",),
              needs=("prepare",)),
        train("rida", "RIDA student", ["rida", "train"], "rida", "rida", needs=("latents", "features")),
        train("rida_reg", "regression baseline", ["rida", "train"], "rida", "rida_reg",
              "--set", "rida.objective=regression", needs=("latents", "features")),
        train("tokenizer", "LoST tokenizer", ["tokenizer", "train"], "tokenizer", "tokenizer", *sem,
              needs=("latents", "rida")),
        train("tokenizer_nosem", "LoST tokenizer without the semantic loss", ["tokenizer", "train"], "tokenizer",
              "tokenizer_nosem", *nosem, needs=("latents",)),
        export("bundle", "tokenizer", bundle, ("tokenizer",)),
        export("bundle_nosem", "tokenizer_nosem", plain, ("tokenizer_nosem",)),
        Stage("tokens", "tokens of every shape", ["dataset", "tokens", str(data), "--model", str(bundle)],
              [data / "tokens" / "stats.json"], table=(data, "tokens"), needs=("bundle",)),
        train("gpt", "LoST-GPT", ["gpt", "train"], "gpt", "gpt", "--model", str(bundle),
              "--text-encoder", str(d / "teacher" / "export"), needs=("tokens", "teacher")),
        Stage("gpt_export", "add the GPT to the bundle", ["gpt", "export", str(d / "gpt"), "--into", str(bundle)],
              [bundle / "gpt" / "model.safetensors"], needs=("gpt",)),
        *_report_stages(opts),
    ]


def _report_stages(opts: DemoOptions) -> list[Stage]:
    """The plan's last stages: the reconstruction, retrieval and generation reports and the text samples."""
    d = Path(opts.out)
    data, bundle, plain, rep = d / "prepared", d / "bundle", d / "bundle_nosem", d / "report"
    recon_size = (["--limit", "4", "--resolution", "32", "--steps", "5", "--points", "10000"] if opts.quick
                  else ["--limit", str(RECON_SHAPES)])
    gen_size = ["--prompts-per-category", "1", "--seeds", "1", "--resolution", "32"] if opts.quick \
        else ["--prompts-per-category", "3", "--seeds", "4"]
    prompts = d / "samples" / "prompts.txt"
    return [
        Stage("recon", "reconstruction tables", ["eval", "recon", "--model", str(bundle), "--data", str(data),
                                                 "--compare", f"no_semantic={plain}", "--classifier", str(d / "cls"),
                                                 "--teacher", str(d / "teacher" / "export"),
                                                 *recon_size, "--out", str(rep / "recon")],
              [rep / "recon" / "recon.json"], needs=("bundle", "bundle_nosem", "classifier", "teacher")),
        Stage("retrieval", "retrieval table", ["rida", "eval", "--rida", str(d / "rida"), "--regression",
                                               str(d / "rida_reg"), "--reference", "regression", "--data", str(data),
                                               "--split", "train,val,test", "--out", str(rep / "retrieval")],
              [rep / "retrieval" / "retrieval.json"], needs=("rida", "rida_reg")),
        Stage("gen", "generation table", ["eval", "gen", "--model", str(bundle), "--data", str(data), "--split",
                                          "test", "--cfg", "1,3", "--classifier", str(d / "cls"),
                                          *gen_size, "--out", str(rep / "gen")],
              [rep / "gen" / "gen.json"], needs=("gpt_export", "classifier")),
        Stage("samples", "text -> shape samples", ["generate", "--model", str(bundle), "--prompts", str(prompts),
                                                   "-n", "4", "--seed", "0",
                                                   *(["--resolution", "32"] if opts.quick else []),
                                                   "--out", str(d / "samples")],
              [d / "samples" / "generate.json"], files={prompts: "\n".join(SAMPLE_PROMPTS) + "\n"},
              needs=("gpt_export",)),
    ]


def has_checkpoint(run_dir: Path) -> bool:
    """True when `run_dir` holds a complete training checkpoint (what `--resume` continues from)."""
    from .train.state import latest_checkpoint

    return latest_checkpoint(run_dir) is not None


def stage_done(stage: Stage) -> bool:
    """Every product exists and, for a dataset table, it holds every prepared item."""
    if not all(p.is_file() for p in stage.products):
        return False
    if stage.table is None:
        return True
    from .data.store import DatasetStore

    root, table = stage.table
    store = DatasetStore(root)
    return set(store.ids()) <= store.done_ids(table)


# ----------------------------------------------------------------------------------------------------
# Running it
# ----------------------------------------------------------------------------------------------------


def read_record(out: Path) -> dict:
    """DIR/demo.json, or an empty record."""
    path = Path(out) / RECORD_FILE
    if not path.is_file():
        return {"version": 1, "settings": None, "stages": {}}
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise ConfigError(f"{path}: unreadable demo record ({type(e).__name__}); delete it to start over") from None
    if not isinstance(record, dict) or not isinstance(record.get("stages"), dict):
        raise ConfigError(f"{path}: not a demo record (no 'stages'); delete it to start over")
    return record


def _write_record(out: Path, record: dict) -> None:
    from .persist import atomic_write_json

    atomic_write_json(Path(out) / RECORD_FILE, record)


def check_start(opts: DemoOptions, jobs: int) -> None:
    """What `run_demo` refuses before it starts anything: `jobs` < 1, or a DIR holding a demo made with other
    settings (callers with a display check first, so a refusal is one clean line)."""
    if jobs < 1:
        raise ConfigError(f"--jobs: must be >= 1, got {jobs}")
    check_settings(opts, read_record(opts.out))


def check_settings(opts: DemoOptions, record: dict) -> None:
    """A resumed demo must use the settings its products were made with."""
    old = record.get("settings")
    if old is not None and old != opts.settings():
        diff = ", ".join(f"{k}={old.get(k)!r}" for k in opts.settings() if old.get(k) != opts.settings()[k])
        raise ConfigError(f"{Path(opts.out) / RECORD_FILE}: this folder holds a demo run with {diff}; "
                          f"rerun with the same options or use another --out")


def child_env() -> dict[str, str]:
    """The environment of a stage: offline hub, and this very `lostcli` first on the import path."""
    env = dict(os.environ)
    env.setdefault("HF_HUB_OFFLINE", "1")
    root = str(Path(__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join([root, *([env["PYTHONPATH"]] if env.get("PYTHONPATH") else [])])
    env.setdefault("COLUMNS", "160")  # progress lines in the logs stay on one line
    return env


def _last_line(log: Path) -> str:
    """The last non-empty line of a log (the error line of a failed `lost` command)."""
    try:
        lines = [ln.strip() for ln in log.read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return ""
    return lines[-1].removeprefix("error: ")[:300] if lines else ""


def run_stage(stage: Stage, log: Path, threads: int | None = None) -> int:
    """Run one stage as `python -m lostcli ...`, stdout and stderr appended to `log`; the exit code.

    `threads`: the stage's share of the CPU (OMP_NUM_THREADS, which torch reads at start-up); None keeps
    the environment's setting. With a share, `threads_file(log)` holds it too, and `run_demo` rewrites that file
    when the share changes (training stages follow it: `train.loop.ThreadShare`)."""
    argv = stage.command_line()
    log.parent.mkdir(parents=True, exist_ok=True)
    env = child_env()
    if threads is not None:
        env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(threads)
        _write_share(log, threads)
        env[THREADS_FILE_ENV] = str(threads_file(log))
    with open(log, "a") as f:
        f.write(f"\n$ lost {' '.join(argv)}    # {time.strftime('%Y-%m-%d %H:%M:%S')}"
                f"{f', {threads} thread(s)' if threads else ''}\n")
        f.flush()
        proc = subprocess.run([sys.executable, "-m", "lostcli", *argv], stdout=f, stderr=subprocess.STDOUT,
                              stdin=subprocess.DEVNULL, env=env, check=False)
    return proc.returncode


def threads_file(log: Path) -> Path:
    """Where a running stage reads its current CPU share: beside its log, `<stage>.threads`."""
    return log.with_suffix(".threads")


def _write_share(log: Path, threads: int) -> None:
    """Tell the stage logging to `log` that its CPU share is now `threads`."""
    atomic_write_text(threads_file(log), f"{threads}\n", fsync=False)


def rebalance(cores: int, shares: dict[str, int], logs: Path) -> dict[str, int]:
    """Split the cores evenly among the running stages (`shares`: name -> threads now; the first ones get
    the remainder) and rewrite the threads file of each stage whose share changed; the new shares."""
    if not shares:
        return {}
    base, extra = divmod(cores, len(shares))
    new = {name: max(1, base + (i < extra)) for i, name in enumerate(shares)}
    for name, n in new.items():
        if n != shares[name]:
            _write_share(logs / f"{name}.log", n)
    return new


ProgressFn = Callable[[str, int, int, Stage, float], None]  # (event, index, total, stage, seconds)


def cpu_threads() -> int:
    """The CPU threads the demo may use: OMP_NUM_THREADS when set, else the cores this process may run on."""
    env = os.environ.get("OMP_NUM_THREADS", "")
    if env.isdigit() and int(env) > 0:
        return int(env)
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def thread_share(cores: int, running: int, ready: int, jobs: int) -> int:
    """Threads for a stage starting now beside `running` others while `ready` more wait: the cores split among
    the stages that will run together (at most `jobs`), at least 1."""
    return max(1, cores // max(1, min(jobs, running + 1 + ready)))


def run_demo(opts: DemoOptions, progress: ProgressFn | None = None, jobs: int = 1) -> DemoResult:
    """Run every unfinished stage once the stages it needs are finished, up to `jobs` at a time, then write
    the report. With one job the stages run in plan order.

    Args:
        opts: the run directory and settings.
        progress: called with ("skip" | "start" | "done", i, total, stage, seconds) for every stage.
        jobs: stages run at the same time; the CPU threads (`cpu_threads`) are split among them.

    Raises:
        ConfigError: DIR holds a demo made with other settings, or `jobs` < 1.
        StageError: a stage exited non-zero, or exited 0 without its products ("LOG: stage NAME ...");
            stages already running are let finish (and recorded) first.
    """
    check_start(opts, jobs)
    t0 = time.time()
    out = Path(opts.out)
    record = _open_record(opts)
    stages = build_plan(opts)
    index = {s.name: i for i, s in enumerate(stages)}
    skipped = _skip_finished(stages, progress)
    finished = set(skipped)
    pending = [s for s in stages if s.name not in finished]
    cores = cpu_threads()
    ran: list[str] = []
    shares: dict[str, int] = {}  # running stage -> its current CPU threads
    failure: StageError | None = None
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        running: dict[Future, tuple[Stage, float, str, int]] = {}
        while (pending and failure is None) or running:
            ready = [s for s in pending if all(n in finished for n in s.needs)] if failure is None else []
            while ready and len(running) < jobs:
                stage = ready.pop(0)
                pending.remove(stage)
                threads = thread_share(cores, len(running), len(ready), jobs)
                running[pool.submit(_start, stage, out, threads)] = (
                    stage, time.time(), "lost " + " ".join(stage.command_line()), threads)
                shares[stage.name] = threads
                if progress:
                    progress("start", index[stage.name], len(stages), stage, 0.0)
            shares = rebalance(cores, shares, out / "logs")
            if not running:
                if pending and failure is None:  # nothing can start: a need that no stage provides
                    names = ", ".join(f"{s.name} (needs {', '.join(s.needs)})" for s in pending)
                    raise ConfigError(f"demo plan: stages wait for stages that never finish: {names}")
                break
            done, _ = wait(running, return_when=FIRST_COMPLETED)
            for fut in done:
                stage, s0, command, threads = running.pop(fut)
                shares.pop(stage.name, None)
                seconds = time.time() - s0
                error = _check_finished(stage, fut.result(), out / "logs" / f"{stage.name}.log")
                if error is not None:
                    failure = failure or error
                    continue
                record["stages"][stage.name] = {"seconds": round(seconds, 2), "command": command, "threads": threads,
                                                "started": round(s0 - t0, 2),
                                                "finished": time.strftime("%Y-%m-%dT%H:%M:%S")}
                _write_record(out, record)
                finished.add(stage.name)
                ran.append(stage.name)
                if progress:
                    progress("done", index[stage.name], len(stages), stage, seconds)
    if failure is not None:
        raise failure
    wall = time.time() - t0
    if ran:
        record["wall_seconds"] = round(wall, 2) if not skipped else None  # only a run made in one call
        _write_record(out, record)
    seconds = {s.name: (record["stages"].get(s.name) or {}).get("seconds") for s in stages}
    report = write_report(opts, seconds, record.get("wall_seconds"))
    return DemoResult(seconds=seconds, ran=ran, skipped=skipped, report=report, bundle=out / "bundle",
                      samples=out / "samples", total_seconds=wall)


def _open_record(opts: DemoOptions) -> dict:
    """Create DIR, read its demo.json, check that it was made with these settings and store them."""
    out = Path(opts.out)
    out.mkdir(parents=True, exist_ok=True)
    record = read_record(out)
    check_settings(opts, record)
    record["settings"] = opts.settings()
    _write_record(out, record)
    return record


def _skip_finished(stages: list[Stage], progress: ProgressFn | None) -> list[str]:
    """The names of the stages already finished, in plan order (each reported as a "skip")."""
    skipped = []
    for i, stage in enumerate(stages):
        if stage_done(stage):
            skipped.append(stage.name)
            if progress:
                progress("skip", i, len(stages), stage, 0.0)
    return skipped


def _start(stage: Stage, out: Path, threads: int) -> int:
    """Write the stage's small input files, then run it (in a worker thread); its exit code."""
    for path, text in stage.files.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return run_stage(stage, out / "logs" / f"{stage.name}.log", threads)


def _check_finished(stage: Stage, code: int, log: Path) -> StageError | None:
    """The error of a stage that failed or left its products missing, else None."""
    if code != 0:
        last = _last_line(log)
        return StageError(f"{log}: stage {stage.name} failed (exit {code})" + (f": {last}" if last else "")
                          + "; rerun the same `lost demo` command to resume")
    if not stage_done(stage):
        missing = [str(p) for p in stage.products if not p.is_file()]
        return StageError(f"{log}: stage {stage.name} exited 0 but is not finished "
                          f"({', '.join(missing) or 'dataset table incomplete'})")
    return None


# ----------------------------------------------------------------------------------------------------
# The report
# ----------------------------------------------------------------------------------------------------


def time_table(seconds: dict[str, float | None], wall: float | None = None) -> str:
    """Markdown table of seconds per stage, their sum and (when the run was made in one call) its wall clock,
    which is shorter than the sum when stages ran side by side."""
    rows = ["| stage | seconds |", "|---|---|"]
    for name, s in seconds.items():
        rows.append(f"| {name} | {'finished outside the demo' if s is None else f'{s:.1f}'} |")
    total = sum(s for s in seconds.values() if s is not None)
    rows.append(f"| **sum of the stages** | **{total:.1f}** ({total / 60:.1f} min) |")
    if wall is not None:
        rows.append(f"| **wall clock** | **{wall:.1f}** ({wall / 60:.1f} min) |")
    return "\n".join(rows) + "\n"


def write_report(opts: DemoOptions, seconds: dict[str, float | None], wall: float | None = None) -> Path:
    """Copy recon/retrieval/gen JSON to DIR/report/ and write DIR/report/report.md; its path."""
    rep = Path(opts.out) / "report"
    weight = "the recipe's" if opts.semantic_weight is None else f"{opts.semantic_weight:g}"
    flag = "" if opts.semantic_weight is None else f" --semantic-weight {opts.semantic_weight:g}"
    parts = [f"# LoST demo report\n\nBuilt-in dataset of {opts.n} shapes (seed {opts.seed}), tiny recipes"
             f"{' scaled down by --quick (2 training steps per stage: smoke test, not results)' if opts.quick else ''}"
             f"; tokenizer semantic loss weight {weight}, compared with the same tokenizer trained without it "
             f"(`no_semantic`). Command: `lost demo --out {opts.out} --n {opts.n}{' --quick' if opts.quick else ''}"
             f"{flag}`\n"]
    reports, sections = {}, []
    for name in REPORTS:
        src = rep / name / f"{name}.json"
        if src.is_file():
            shutil.copyfile(src, rep / f"{name}.json")
            reports[name] = json.loads(src.read_text())
        md = rep / name / f"{name}.md"
        sections.append(_demote(md.read_text()) if md.is_file() else f"## {name}\n\n(missing: {md})\n")
    made = Path(opts.out) / "samples" / "generate.json"
    samples = json.loads(made.read_text()) if made.is_file() else None
    claims = check_claims(reports.get("recon"), reports.get("retrieval"), reports.get("gen"), wall, samples)
    parts.append("## What this run shows\n\nEach claim of the method against this run's own reports (the bars: "
                 "docs/level-of-semantics.md, \"What the demo must show\").\n\n" + claims_table(claims))
    parts += sections
    extras = [("reconstruction vs k", rep / "recon" / "recon_curve.png"),
              ("generations", rep / "gen" / "gen_grid.png"),
              ("samples", Path(opts.out) / "samples" / "grid.png")]
    figures = [f"![{label}]({os.path.relpath(p, rep)})" for label, p in extras if p.is_file()]
    if figures:
        parts.append("## Figures\n\n" + "\n\n".join(figures) + "\n")
    parts.append("## Time per stage\n\n" + time_table(seconds, wall))
    rep.mkdir(parents=True, exist_ok=True)
    path = rep / "report.md"
    path.write_text("\n".join(parts))
    return path


def _demote(md: str) -> str:
    """Shift every Markdown heading one level down, so each report sits under the demo's title."""
    return "\n".join("#" + ln if ln.startswith("#") else ln for ln in md.splitlines()) + "\n"
