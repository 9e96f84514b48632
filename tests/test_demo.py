"""`lost demo`: the stage plan, skipping finished stages, resuming training, failures, the report."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import cli, one_error

from lostcli.data.store import ShardWriter
from lostcli.demo import (
    RECIPE_FILES,
    DemoOptions,
    StageError,
    build_plan,
    find_recipes,
    read_record,
    run_demo,
    stage_done,
    rebalance,
    thread_share,
    threads_file,
)
from lostcli.errors import ConfigError
from lostcli.train.tokenizer import STUDENT_WEIGHTS

ORDER = ["synth", "prepare", "vae", "latents", "teacher", "features", "classifier", "rida", "rida_reg", "tokenizer",
         "tokenizer_nosem", "bundle", "bundle_nosem", "tokens", "gpt", "gpt_export", "recon", "retrieval", "gen",
         "samples"]
IDS = ["synth-000000", "synth-000001", "synth-000002"]


def _opts(tmp_path: Path, **kw) -> DemoOptions:
    return DemoOptions(out=tmp_path / "run", recipes=tmp_path / "recipes", **kw)


def _table(root: Path, table: str, ids: list[str]) -> None:
    """A real dataset-store table holding `ids` (one tiny array each)."""
    with ShardWriter(root, table) as w:
        for i in ids:
            w.add(i, {"x": np.zeros(2, np.float32)}, {"split": "test"} if table == "items" else None)


def _checkpoint(run_dir: Path, step: int) -> None:
    ckpt = run_dir / "checkpoints" / f"step-{step:07d}"
    ckpt.mkdir(parents=True, exist_ok=True)
    (ckpt / "state.json").write_text(json.dumps({"step": step}))


def _finish(stage) -> None:
    """What a successful stage leaves behind: its products (and a full table for dataset passes)."""
    for p in stage.products:
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text("{}")
    if stage.table is not None:
        _table(stage.table[0], stage.table[1], IDS)
    if stage.run_dir is not None:  # training leaves its last checkpoint
        _checkpoint(stage.run_dir, 2)
    if stage.name in ("recon", "retrieval", "gen"):
        folder = stage.products[0].parent
        (folder / f"{stage.name}.md").write_text(f"# {stage.name} table\n\n| a | b |\n|---|---|\n| 1 | 2 |\n")


class FakeRunner:
    """Records command lines; finishes each stage, or fails the one named `fail`."""

    def __init__(self, fail: str | None = None) -> None:
        self.calls: dict[str, list[str]] = {}
        self.fail = fail

    def __call__(self, stage, log: Path, threads: int | None = None) -> int:
        self.calls[stage.name] = stage.command_line()
        self.threads = getattr(self, "threads", {})
        self.threads[stage.name] = threads
        log.parent.mkdir(parents=True, exist_ok=True)
        if stage.name == self.fail:
            log.write_text("loading...\nerror: data/x.glb: vertices contain NaN or inf\n")
            return 2
        if stage.name == "prepare":  # the items table the dataset passes are checked against
            _table(stage.products[0].parent, "items", IDS)
        _finish(stage)
        return 0


def run_with(runner, opts: DemoOptions, **kw):
    """`run_demo(opts, **kw)` with `runner(stage, log, threads)` in place of the subprocess `run_stage`."""
    import lostcli.demo as demo_mod

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(demo_mod, "run_stage", runner)
        return run_demo(opts, **kw)


def _parse(args: list[str]):
    """Parse a stage's arguments with the real `lost` command (no command runs): the click context."""
    import typer

    from lostcli.cli.app import app

    group = typer.main.get_command(app)
    rest = list(args)
    while rest and hasattr(group, "commands") and rest[0] in group.commands:
        group = group.commands[rest.pop(0)]
    assert not hasattr(group, "commands"), f"{args}: not a command"
    return group.make_context(group.name, rest)


def _needs_closure(plan: dict) -> dict[str, set[str]]:
    """Every stage's needs, transitively."""
    out: dict[str, set[str]] = {}

    def walk(name: str) -> set[str]:
        if name not in out:
            out[name] = set(plan[name].needs)
            for n in plan[name].needs:
                out[name] |= walk(n)
        return out[name]

    for name in plan:
        walk(name)
    return out


@pytest.mark.parametrize("quick", [False, True])
def test_every_stage_parses_with_the_real_cli_and_needs_what_it_reads(tmp_path, quick):
    opts = _opts(tmp_path, quick=quick, **({"n": 72} if quick else {}))
    plan = {s.name: s for s in build_plan(opts)}
    assert list(plan) == ORDER
    closure = _needs_closure(plan)
    # which stage writes which folder: a run directory, or the folder of its products
    writers = {}
    for s in plan.values():
        for p in s.products:
            writers.setdefault(str(p.parent if s.run_dir is None else s.run_dir), s.name)
    writers[str(opts.out / "prepared")] = "prepare"
    for name, stage in plan.items():
        ctx = _parse(stage.command_line())  # the real options: types, required options, no unknown flags
        assert ctx.params, name
        assert all(n in plan and ORDER.index(n) < ORDER.index(name) for n in stage.needs), name
        for value in ctx.params.values():  # every run folder it reads is written by a stage it needs
            for v in value if isinstance(value, (list, tuple)) else [value]:
                text = str(v)
                for folder, writer in writers.items():
                    reads = text == folder or text.startswith(folder + "/") or text.endswith("=" + folder)
                    if reads and writer != name and not text.endswith(str(stage.run_dir or "//")):
                        assert writer in closure[name], f"{name} reads {text} of {writer} without needing it"


def test_plan_settings(tmp_path):
    opts = _opts(tmp_path)
    plan = {s.name: s for s in build_plan(opts)}
    tok, plain = _parse(plan["tokenizer"].args).params, _parse(plan["tokenizer_nosem"].args).params
    assert tok["rida"] == opts.out / "rida" / "export" and not any("semantic_weight" in x for x in tok["sets"] or [])
    for name in STUDENT_WEIGHTS:  # every term that runs the RIDA student is off in the ablation
        assert f"tokenizer.{name}=0" in plain["sets"]
    recon = _parse(plan["recon"].args).params
    assert recon["compare"] == f"no_semantic={opts.out / 'bundle_nosem'}" and recon["limit"] >= 72
    assert recon["guidance"] is None and recon["model"] == opts.out / "bundle"  # the bundle's: 1.0 in the recipe
    assert _parse(plan["retrieval"].args).params["split"] == "train,val,test"
    gen = _parse(plan["gen"].args).params
    assert gen["cfg"] == "1,3" and gen["prompts"] == 3 and gen["seeds"] == 4
    samples = plan["samples"]
    assert _parse(samples.args).params["n"] == 4
    assert samples.files[opts.out / "samples" / "prompts.txt"].splitlines()[0] == "a round table with a single pedestal leg"
    weighted = {s.name: s for s in build_plan(_opts(tmp_path, semantic_weight=0.5))}
    sets = _parse(weighted["tokenizer"].args).params["sets"]
    assert "tokenizer.semantic_weight=0.5" in sets and "tokenizer.semantic_x0_weight=0.5" in sets
    quick = {s.name: s for s in build_plan(_opts(tmp_path, n=72, quick=True))}
    for name in ("vae", "teacher", "rida", "rida_reg", "classifier", "tokenizer", "tokenizer_nosem", "gpt"):
        assert "train.steps=2" in _parse(quick[name].args).params["sets"], name
    assert _parse(quick["recon"].args).params["limit"] == 4


def test_finished_stages_skipped_and_training_resumed(tmp_path):
    opts = _opts(tmp_path)
    plan = {s.name: s for s in build_plan(opts)}
    # finished before the demo: synth, prepare, vae (products only, e.g. made by hand)
    for name in ("synth", "prepare", "vae"):
        _finish(plan[name])
    _table(opts.out / "prepared", "items", IDS)
    # the teacher was interrupted: a complete checkpoint, no export
    _checkpoint(opts.out / "teacher", 250)
    (opts.out / "rida" / "checkpoints" / "step-0000050.tmp").mkdir(parents=True)  # incomplete: not resumable
    # the features pass was interrupted: stats.json and one of three items
    _table(opts.out / "prepared", "features", IDS[:1])
    (opts.out / "prepared" / "features" / "stats.json").write_text("{}")
    assert not stage_done(plan["features"])

    runner = FakeRunner()
    events = []
    result = run_with(runner, opts, progress=lambda e, i, n, s, sec: events.append((e, s.name)))

    assert result.skipped == ["synth", "prepare", "vae"]
    assert result.ran == ORDER[3:] and list(runner.calls) == ORDER[3:]
    assert runner.calls["teacher"][-1] == "--resume" and "--resume" not in runner.calls["rida"]
    assert ("skip", "vae") in events and ("start", "gpt") in events and ("done", "samples") in events
    assert (opts.out / "samples" / "prompts.txt").read_text().count("\n") == 3  # written before the command
    record = read_record(opts.out)
    assert record["settings"] == opts.settings() and set(record["stages"]) == set(ORDER[3:])
    assert record["stages"]["teacher"]["command"].endswith("--resume")
    assert record["stages"]["rida"]["command"].endswith(f"--out {opts.out / 'rida'}")  # as run: fresh
    assert result.seconds["vae"] is None and result.seconds["gpt"] >= 0
    # the report: the three JSON copies, the tables under one title, the time table
    rep = opts.out / "report"
    assert all((rep / f"{n}.json").is_file() for n in ("recon", "retrieval", "gen"))
    md = result.report.read_text()
    assert md.startswith("# LoST demo report") and "## recon table" in md and "## gen table" in md
    assert "| vae | finished outside the demo |" in md and "| **sum of the stages** |" in md
    assert "wall clock" not in md  # part of the run was made earlier: no single wall clock

    # a rerun finds everything finished and runs nothing
    again = FakeRunner()
    assert run_with(again, opts).ran == [] and again.calls == {}


def test_failed_stage_names_its_log_and_rerun_resumes(tmp_path):
    opts = _opts(tmp_path)
    with pytest.raises(StageError) as e:
        run_with(FakeRunner(fail="vae"), opts)
    log = opts.out / "logs" / "vae.log"
    msg = str(e.value)
    assert msg.startswith(f"{log}: stage vae failed (exit 2): data/x.glb: vertices contain NaN or inf")
    assert set(read_record(opts.out)["stages"]) == {"synth", "prepare"}
    runner = FakeRunner()
    result = run_with(runner, opts)
    assert result.skipped == ["synth", "prepare"] and list(runner.calls)[0] == "vae"


def test_stage_without_product_is_an_error(tmp_path):
    opts = _opts(tmp_path)
    with pytest.raises(StageError, match="stage synth exited 0 but is not finished .*metadata.jsonl"):
        run_with(lambda stage, log, threads: 0, opts)


class TimedRunner(FakeRunner):
    """FakeRunner that takes a little time and records how many stages ran at once."""

    def __init__(self, fail: str | None = None) -> None:
        import threading

        super().__init__(fail)
        self.lock, self.now, self.peak, self.order = threading.Lock(), 0, 0, []

    def __call__(self, stage, log, threads=None):
        import time

        with self.lock:
            self.now += 1
            self.peak = max(self.peak, self.now)
            self.order.append(stage.name)
        time.sleep(0.02)
        try:
            return super().__call__(stage, log, threads)
        finally:
            with self.lock:
                self.now -= 1


def test_two_jobs_run_side_by_side_after_their_needs(tmp_path, monkeypatch):
    import lostcli.demo as demo_mod

    monkeypatch.setattr(demo_mod, "cpu_threads", lambda: 2)
    opts = _opts(tmp_path)
    runner = TimedRunner()
    result = run_with(runner, opts, jobs=2)
    assert sorted(result.ran) == sorted(ORDER) and runner.peak == 2
    plan = {s.name: s for s in build_plan(opts)}
    for name in ORDER:  # nothing started before the stages it needs had finished
        assert all(runner.order.index(n) < runner.order.index(name) for n in plan[name].needs)
    assert runner.threads["synth"] == 2  # alone: both threads
    assert 1 in runner.threads.values()  # beside another stage: one each
    record = read_record(opts.out)
    assert record["wall_seconds"] is not None and record["stages"]["teacher"]["threads"] in (1, 2)
    md = result.report.read_text()
    assert "| **wall clock** |" in md and "| **sum of the stages** |" in md
    one = TimedRunner()
    run_with(one, _opts(tmp_path / "one"), jobs=1)
    assert one.peak == 1 and one.order == ORDER  # one job: plan order
    with pytest.raises(ConfigError, match="--jobs"):
        run_with(one, opts, jobs=0)


def test_rebalance_rewrites_only_changed_shares(tmp_path):
    logs = tmp_path / "logs"
    logs.mkdir()
    # vae ran beside teacher (1 + 1); teacher finished: vae gets both cores, its file says so
    assert rebalance(2, {"vae": 1}, logs) == {"vae": 2}
    assert threads_file(logs / "vae.log").read_text() == "2\n"
    assert not threads_file(logs / "teacher.log").exists()
    # a new stage starts beside it with 1: vae gives one back
    assert rebalance(2, {"vae": 2, "rida": 1}, logs) == {"vae": 1, "rida": 1}
    assert threads_file(logs / "vae.log").read_text() == "1\n" and not threads_file(logs / "rida.log").exists()
    assert rebalance(5, {"a": 1, "b": 1}, logs) == {"a": 3, "b": 2}  # the first gets the remainder
    assert rebalance(2, {"a": 1, "b": 1, "c": 1}, logs) == {"a": 1, "b": 1, "c": 1}  # never below 1
    assert rebalance(2, {}, logs) == {}


def test_training_loop_follows_the_threads_file(tmp_path, monkeypatch):
    import torch

    from lostcli.train.loop import ThreadShare

    before = torch.get_num_threads()
    path = tmp_path / "stage.threads"
    try:
        assert ThreadShare(str(path)).poll() is None  # no file yet: nothing changes
        monkeypatch.setenv("LOST_THREADS_FILE", str(path))
        share = ThreadShare()
        torch.set_num_threads(1)
        path.write_text("2\n")
        assert share.poll() == 2 and torch.get_num_threads() == 2
        assert share.poll() is None  # unchanged file: no second read
        path.write_text("1\n")
        os.utime(path, ns=(1, 1))  # a new stamp even within the clock's resolution
        assert share.poll() == 1 and torch.get_num_threads() == 1
        path.write_text("lots\n")
        os.utime(path, ns=(2, 2))
        assert share.poll() is None and torch.get_num_threads() == 1  # a bad value is ignored
    finally:
        torch.set_num_threads(before)


def test_thread_share():
    assert thread_share(2, running=0, ready=0, jobs=2) == 2
    assert thread_share(2, running=1, ready=0, jobs=2) == 1
    assert thread_share(2, running=0, ready=3, jobs=2) == 1
    assert thread_share(16, running=0, ready=1, jobs=4) == 8
    assert thread_share(1, running=1, ready=1, jobs=2) == 1


def test_a_failure_lets_running_stages_finish(tmp_path):
    opts = _opts(tmp_path)
    with pytest.raises(StageError, match="stage teacher failed"):
        run_with(TimedRunner(fail="teacher"), opts, jobs=2)
    done = set(read_record(opts.out)["stages"])
    assert {"synth", "prepare"} <= done and "teacher" not in done and "features" not in done
    result = run_with(TimedRunner(), opts, jobs=2)  # the rerun resumes
    assert "teacher" in result.ran and not set(result.ran) & done


def test_other_settings_refused(tmp_path):
    run_with(FakeRunner(), _opts(tmp_path, n=72, quick=True))
    with pytest.raises(ConfigError, match="n=72, quick=True"):
        run_with(FakeRunner(), _opts(tmp_path))


def test_cli_demo(tmp_path, capsys, monkeypatch):
    import lostcli.demo as demo_mod

    recipes = tmp_path / "recipes"
    recipes.mkdir()
    for name in RECIPE_FILES:
        (recipes / f"{name}.yaml").write_text("{}\n")
    monkeypatch.setattr(demo_mod, "run_stage", FakeRunner())
    out = tmp_path / "run"
    code, stdout, _ = cli(capsys, "demo", "--quick", "--out", out, "--recipes", recipes)
    assert code == 0
    assert f"report:  {out}/report/report.md" in stdout and f"bundle:  {out}/bundle" in stdout
    assert "seconds per stage: synth 0, prepare 0" in stdout
    code, _, err = cli(capsys, "demo", "--out", out, "--recipes", recipes)  # not the quick settings
    assert code == 2 and "demo.json: this folder holds a demo run with n=72, quick=True" in one_error(err)


def test_find_recipes_is_the_repository_folder():
    assert find_recipes() == Path(__file__).resolve().parent.parent / "recipes" / "tiny"


@pytest.mark.slow
def test_quick_demo_end_to_end(tmp_path, request):
    """The real pipeline at --quick scale (about 3 minutes on 2 busy cores): run with `pytest -m slow`."""
    if "slow" not in (request.config.getoption("markexpr") or ""):
        pytest.skip("end-to-end demo (~3 min); select it with -m slow")
    out = tmp_path / "demo"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "-m", "lostcli", "demo", "--quick", "--out", str(out)], env=env,
                          capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    record = read_record(out)
    assert list(record["stages"]) == ORDER
    for name in ("recon", "retrieval", "gen"):
        assert json.loads((out / "report" / f"{name}.json").read_text())
    assert (out / "bundle" / "gpt" / "model.safetensors").is_file()
    gen = json.loads((out / "samples" / "generate.json").read_text())
    assert len(gen["samples"]) == 3
    md = (out / "report" / "report.md").read_text()
    assert "Recall@3" in md and "| **sum of the stages** |" in md and "## What this run shows" in md
