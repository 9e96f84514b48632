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
)
from lostcli.errors import ConfigError

ORDER = ["synth", "prepare", "vae", "latents", "teacher", "features", "rida", "rida_reg", "classifier", "tokenizer",
         "bundle", "tokens", "gpt", "gpt_export", "recon", "retrieval", "gen", "samples"]
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

    def __call__(self, stage, log: Path) -> int:
        self.calls[stage.name] = stage.command_line()
        log.parent.mkdir(parents=True, exist_ok=True)
        if stage.name == self.fail:
            log.write_text("loading...\nerror: data/x.glb: vertices contain NaN or inf\n")
            return 2
        if stage.name == "prepare":  # the items table the dataset passes are checked against
            _table(stage.products[0].parent, "items", IDS)
        _finish(stage)
        return 0


def test_plan_command_lines(tmp_path):
    opts = _opts(tmp_path)
    d, r = str(opts.out), str(opts.recipes)
    plan = {s.name: s for s in build_plan(opts)}
    assert list(plan) == ORDER
    assert plan["synth"].args == ["dataset", "synth", "--out", f"{d}/synth", "--n", "1008", "--seed", "0"]
    assert plan["prepare"].args == ["dataset", "prepare", f"{d}/synth", "--out", f"{d}/prepared", "--workers", "2"]
    assert plan["vae"].command_line() == ["vae", "train", "--recipe", f"{r}/vae.yaml", "--data", f"{d}/prepared",
                                          "--out", f"{d}/vae"]
    assert plan["vae"].products == [opts.out / "vae" / "export" / "model.safetensors"]
    assert plan["features"].args == ["dataset", "features", f"{d}/prepared", "--teacher", f"{d}/teacher/export",
                                     "--grid", "4"]
    assert plan["rida_reg"].args[-4:] == ["--set", "rida.objective=regression", "--out", f"{d}/rida_reg"]
    assert plan["classifier"].args[:3] == ["eval", "classifier", "--recipe"]
    assert plan["classifier"].run_dir == opts.out / "cls"
    assert plan["classifier"].products[-1] == opts.out / "cls" / "eval.json"
    tok = plan["tokenizer"].args
    assert "--rida" not in tok and tok[-4:] == ["--set", "tokenizer.semantic_weight=0", "--out", f"{d}/tokenizer"]
    assert plan["bundle"].args == ["tokenizer", "export", f"{d}/tokenizer", "--vae", f"{d}/vae/export",
                                   "--out", f"{d}/bundle"]
    assert plan["gpt"].args[-6:-1] == ["--model", f"{d}/bundle", "--text-encoder", f"{d}/teacher/export", "--out"]
    assert plan["gpt_export"].args == ["gpt", "export", f"{d}/gpt", "--into", f"{d}/bundle"]
    assert plan["recon"].args == ["eval", "recon", "--model", f"{d}/bundle", "--data", f"{d}/prepared", "--classifier",
                                  f"{d}/cls", "--teacher", f"{d}/teacher/export", "--guidance", "1.0", "--limit", "36",
                                  "--out", f"{d}/report/recon"]
    assert plan["retrieval"].args == ["rida", "eval", "--rida", f"{d}/rida", "--regression", f"{d}/rida_reg", "--data",
                                      f"{d}/prepared", "--split", "test", "--out", f"{d}/report/retrieval"]
    assert plan["gen"].args == ["eval", "gen", "--model", f"{d}/bundle", "--data", f"{d}/prepared", "--split", "test",
                                "--cfg", "1,3", "--classifier", f"{d}/cls", "--prompts-per-category", "3", "--seeds", "4",
                                "--out", f"{d}/report/gen"]
    prompts = opts.out / "samples" / "prompts.txt"
    assert plan["samples"].args[:4] == ["generate", "--model", f"{d}/bundle", "--prompts"]
    assert len(plan["samples"].files[prompts].splitlines()) == 3


def test_plan_quick_and_semantic_weight(tmp_path):
    opts = _opts(tmp_path, n=72, quick=True, semantic_weight=0.5)
    d = str(opts.out)
    plan = {s.name: s for s in build_plan(opts)}
    assert plan["synth"].args[4:6] == ["--n", "72"]
    quick = ["--set", "train.steps=2", "--set", "train.batch_size=8"]
    for name in ("vae", "teacher", "rida", "rida_reg", "classifier", "tokenizer", "gpt"):  # every training stage
        args = plan[name].args
        assert args[-6:-2] == quick and args[-2] == "--out", name
    for name in ("synth", "prepare", "latents", "bundle", "recon", "gen", "samples"):
        assert "train.steps=2" not in plan[name].args, name
    tok = plan["tokenizer"].args
    assert tok[tok.index("--rida") + 1] == f"{d}/rida/export" and "tokenizer.semantic_weight=0.5" in tok
    recon = plan["recon"].args
    assert recon[recon.index("--limit") + 1] == "4" and recon[recon.index("--resolution") + 1] == "32"
    gen = plan["gen"].args
    assert gen[gen.index("--prompts-per-category") + 1] == "1" and gen[gen.index("--seeds") + 1] == "1"


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
    result = run_demo(opts, progress=lambda e, i, n, s, sec: events.append((e, s.name)), runner=runner)

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
    assert "| vae | finished outside the demo |" in md and "| **total** |" in md

    # a rerun finds everything finished and runs nothing
    again = FakeRunner()
    assert run_demo(opts, runner=again).ran == [] and again.calls == {}


def test_failed_stage_names_its_log_and_rerun_resumes(tmp_path):
    opts = _opts(tmp_path)
    with pytest.raises(StageError) as e:
        run_demo(opts, runner=FakeRunner(fail="vae"))
    log = opts.out / "logs" / "vae.log"
    msg = str(e.value)
    assert msg.startswith(f"{log}: stage vae failed (exit 2): data/x.glb: vertices contain NaN or inf")
    assert set(read_record(opts.out)["stages"]) == {"synth", "prepare"}
    runner = FakeRunner()
    result = run_demo(opts, runner=runner)
    assert result.skipped == ["synth", "prepare"] and list(runner.calls)[0] == "vae"


def test_stage_without_product_is_an_error(tmp_path):
    opts = _opts(tmp_path)
    with pytest.raises(StageError, match="stage synth exited 0 but is not finished .*metadata.jsonl"):
        run_demo(opts, runner=lambda stage, log: 0)


def test_other_settings_refused(tmp_path):
    run_demo(_opts(tmp_path, n=72, quick=True), runner=FakeRunner())
    with pytest.raises(ConfigError, match="n=72, quick=True"):
        run_demo(_opts(tmp_path), runner=FakeRunner())


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
    assert "Recall@3" in md and "| **total** |" in md
