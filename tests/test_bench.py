"""`lost bench`: the timing helper, FLOP counting, peak memory, the report files and bad arguments."""

from __future__ import annotations

import dataclasses
import json
import math

import pytest
import torch
import torch.nn.functional as F

from conftest import cli, one_error
from lostcli.bench import (PRESETS, STAGES, BenchConfig, PeakMemory, count_flops, measure, parse_ints, parse_stages,
                           peak_tflops_for, resolve_config)
from lostcli.errors import ConfigError

pytestmark = pytest.mark.usefixtures("one_thread")

ROW_KEYS = {"stage", "kind", "setting", "model", "params", "batch_size", "median_s", "q1_s", "q3_s", "min_s",
            "max_s", "repeats", "warmup", "samples_per_s", "peak_mem_bytes", "mem_kind", "flops", "tflops", "mfu",
            "note"}
POSITIVE = ("params", "batch_size", "median_s", "q1_s", "q3_s", "min_s", "max_s", "samples_per_s", "peak_mem_bytes")


class FakeClock:
    """A clock that only moves when the benchmarked function says so."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_measure_discards_warmup_and_counts_repeats():
    clock = FakeClock()
    durations = [50.0, 40.0, 3.0, 1.0, 5.0, 2.0, 4.0]  # two slow warm-up calls, then 5 timed ones
    calls, syncs = [], []

    def fn() -> None:
        clock.now += durations[len(calls)]
        calls.append(1)

    t = measure(fn, repeats=5, warmup=2, clock=clock, sync=lambda: syncs.append(1))
    assert len(calls) == 7  # warm-up calls ran, untimed
    assert t.times == [3.0, 1.0, 5.0, 2.0, 4.0] and t.repeats == 5 and t.warmup == 2
    assert t.median == 3.0 and t.quantile(0.25) == 2.0 and t.quantile(0.75) == 4.0
    assert min(t.times) == 1.0 and max(t.times) == 5.0
    assert len(syncs) == 6  # once after warm-up, once after every timed call


def test_measure_even_repeats_interpolate():
    clock = FakeClock()
    it = iter([1.0, 2.0, 10.0, 4.0])

    def fn() -> None:
        clock.now += next(it)

    t = measure(fn, repeats=4, warmup=0, clock=clock)
    assert t.median == 3.0  # (2 + 4) / 2: the outlier 10 does not move the median
    assert t.quantile(0.25) == pytest.approx(1.75) and t.quantile(0.75) == pytest.approx(5.5)


def test_linear_flops_are_exactly_2_b_in_out():
    B, n_in, n_out = 3, 5, 7
    lin = torch.nn.Linear(n_in, n_out)
    x = torch.randn(B, n_in)
    assert count_flops(lambda: lin(x)) == 2 * B * n_in * n_out
    xg = x.clone().requires_grad_(True)
    # backward: grad of the input and of the weight, each another 2 B in out
    assert count_flops(lambda: lin(xg).sum().backward()) == 3 * 2 * B * n_in * n_out


def test_cpu_attention_is_counted():
    """torch's counter only knows the CUDA attention kernels; the CPU kernel must not count as 0."""
    B, h, S, d = 2, 3, 16, 8
    q = torch.randn(B, h, S, d)
    assert count_flops(lambda: F.scaled_dot_product_attention(q, q, q)) == 2 * (2 * B * h * S * S * d)


# Dense bf16 tensor-core peak = SMs x bf16 FMAs per SM per clock x 2 FLOPs x clock. An Ampere SM's 4 tensor cores do
# 4 x 256 FMAs per clock, a Hopper SM's 4 x 512. Clocks: A100's 1.41 GHz boost; H100 SXM's 1.83 GHz tensor clock; for
# H100 PCIe 1.62 GHz, the clock its datasheet figure implies (1,513 sparse TFLOPS / (114 SMs x 8,192)).
HARDWARE = {  # torch.cuda.get_device_name(): (SMs, bf16 FMAs per SM per clock, GHz)
    "NVIDIA A100-SXM4-80GB": (108, 4 * 256, 1.41),
    "NVIDIA A100-PCIE-40GB": (108, 4 * 256, 1.41),
    "NVIDIA H100 80GB HBM3": (132, 4 * 512, 1.83),
    "NVIDIA H100 PCIe": (114, 4 * 512, 1.62),
    "NVIDIA H200": (132, 4 * 512, 1.83),  # the H100 SXM chip with more, faster memory
}


@pytest.mark.parametrize("name", sorted(HARDWARE))
def test_peak_table_matches_the_hardware(name):
    sms, fmas, ghz = HARDWARE[name]
    assert peak_tflops_for(name, "bf16") == pytest.approx(sms * fmas * 2 * ghz * 1e9 / 1e12, rel=1e-3)


def test_peak_is_none_without_a_bf16_tensor_core_figure():
    assert peak_tflops_for("NVIDIA A100-SXM4-80GB", "fp32") is None
    assert peak_tflops_for("AMD EPYC 7B13", "bf16") is None
    assert peak_tflops_for("NVIDIA GeForce RTX 4090", "bf16") is None


def test_cpu_peak_memory_sees_an_allocation():
    with PeakMemory(torch.device("cpu")) as idle:
        pass
    if idle.kind != "cpu_rss_hwm":
        pytest.skip("the RSS high-water mark cannot be reset here")
    with PeakMemory(torch.device("cpu")) as busy:
        x = torch.ones(40 * 2**20)  # 160 MiB, touched
        del x
    assert busy.kind == "cpu_rss_hwm"
    assert busy.bytes - idle.bytes > 120 * 2**20


def test_parsers_and_defaults():
    assert parse_stages("all") is None
    assert parse_stages("decode, vae,decode") == ["decode", "vae"]
    assert parse_ints("10,25", "--steps") == [10, 25]
    cfg = resolve_config(BenchConfig(device="cpu"))
    assert cfg.dtype == "fp32" and cfg.stages == list(STAGES)
    for bad in (lambda: parse_stages("vae,nope"), lambda: parse_ints("10,x", "--steps"),
                lambda: parse_ints("0", "--steps"), lambda: resolve_config(BenchConfig(device="tpu"))):
        with pytest.raises(ConfigError):
            bad()


def test_bench_tiny_writes_json_and_markdown(capsys, tmp_path, monkeypatch):
    # gpt_tiny, generating 8 tokens of 5 head steps instead of 32 x 25 (seconds, not tens of seconds)
    short = dataclasses.replace(PRESETS["tiny"], gpt_overrides={"num_tokens": 8, "diffloss": {"sample_steps": 5}})
    monkeypatch.setitem(PRESETS, "tiny", short)
    out = tmp_path / "bench"
    code, stdout, err = cli(capsys, "bench", "--preset", "tiny", "--device", "cpu", "--batch-size", 2, "--repeats", 2,
                            "--warmup", 1, "--steps", "1,2", "--resolution", 12, "--peak-tflops", 2.0, "--out", out)
    assert code == 0, err
    report = json.loads((out / "bench.json").read_text())
    rows, meta = report["rows"], report["meta"]
    assert [r["stage"] for r in rows] == ["vae", "rida", "tokenizer", "tokenizer_sem", "gpt", "tokenize", "decode",
                                          "decode", "mesh", "generate"]
    assert meta["device"] == "cpu" and meta["dtype"] == "fp32" and meta["batch_size"] == 2
    assert meta["threads"] == torch.get_num_threads() and meta["peak_tflops"] == 2.0
    assert meta["command"].startswith("lost bench --preset tiny --device cpu") and str(out) in meta["command"]
    for r in rows:
        assert set(r) == ROW_KEYS, r["stage"]
        assert r["repeats"] == 2 and r["warmup"] == 1
        for key in POSITIVE:
            assert math.isfinite(r[key]) and r[key] > 0, (r["stage"], key)
        assert r["min_s"] <= r["q1_s"] <= r["median_s"] <= r["q3_s"] <= r["max_s"]
        assert r["samples_per_s"] == pytest.approx(r["batch_size"] / r["median_s"])
        assert r["mem_kind"].startswith("cpu_rss_hwm")
        if r["stage"] == "mesh":  # marching cubes: CPU work, no FLOP count; one latent
            assert r["flops"] is None and r["mfu"] is None and r["batch_size"] == 1
            continue
        assert r["flops"] > 0 and r["tflops"] == pytest.approx(r["flops"] / r["median_s"] / 1e12)
        assert r["mfu"] == pytest.approx(r["tflops"] / 2.0)
    train = {r["stage"]: r for r in rows if r["kind"] == "train"}
    assert set(train) == {"vae", "rida", "tokenizer", "tokenizer_sem", "gpt"}
    # the semantic loss adds the frozen student's forward and backward to the same tokenizer step
    assert train["tokenizer_sem"]["flops"] > train["tokenizer"]["flops"]
    assert train["tokenizer_sem"]["params"] == train["tokenizer"]["params"]  # the student is frozen
    assert rows[-1]["setting"].startswith("8 tokens x 5 head steps, cfg=3")
    decode = [r for r in rows if r["stage"] == "decode"]
    assert decode[1]["flops"] == 2 * decode[0]["flops"]  # FLOPs scale with the sampler steps
    md = (out / "bench.md").read_text()
    assert "| stage | setting | batch | median ms |" in md and md.count("\n| decode |") == 2
    assert "process RSS high-water mark" in md and "bench" in stdout


def test_decode_flops_are_steps_times_one_step():
    """The bench counts one sampler step and multiplies: every step must be the same decoder call."""
    from lostcli.latent.direct3d import TriplaneVAE
    from lostcli.models.lost import build_tokenizer
    from lostcli.pipeline import LostPipeline

    vae, tok = TriplaneVAE.from_preset("tiny"), build_tokenizer("lost_tiny")
    pipe = LostPipeline(vae, tok, model_id="test")
    tokens = torch.randn(2, 32, 32)
    flops = [count_flops(lambda: pipe.decode_latents(tokens, k=4, steps=s, guidance=2.0), frozen=(tok,))
             for s in (1, 3)]
    assert flops[0] > 0 and flops[1] == 3 * flops[0]


@pytest.mark.parametrize("args, start", [
    (["--stages", "vae,warp"], "error: --stages: unknown stage 'warp'"),
    (["--repeats", "0"], "error: --repeats: must be >= 1"),
    (["--warmup", "-1"], "error: --warmup: must be >= 0"),
    (["--batch-size", "1", "--stages", "rida"], "error: --batch-size: the rida stage needs >= 2"),
    (["--dtype", "fp16"], "error: --dtype: must be one of fp32, bf16"),
    (["--steps", "10,0"], "error: --steps: expected positive integers"),
    (["--preset", "huge"], "error: --preset: 'huge' is not one of tiny, paper"),
])
def test_bad_arguments_are_one_line_exit_2(capsys, tmp_path, args, start):
    code, _, err = cli(capsys, "bench", "--device", "cpu", *args, "--out", tmp_path / "b")
    assert code == 2
    assert one_error(err).startswith(start)
    assert not (tmp_path / "b").exists()


def test_cuda_request_without_cuda(capsys):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    code, _, err = cli(capsys, "bench", "--device", "cuda")
    assert code == 2 and one_error(err) == "error: --device cuda: CUDA is not available on this machine"


def test_bundle_latency_rows(capsys, tmp_path):
    from lostcli.latent.direct3d import TriplaneVAE
    from lostcli.models.lost import build_tokenizer
    from lostcli.bundle import export_bundle

    TriplaneVAE.from_preset("tiny").save_pretrained(tmp_path / "vae")
    build_tokenizer("lost_tiny").save_pretrained(tmp_path / "tok")
    bundle = tmp_path / "bundle"
    export_bundle(tmp_path / "tok", tmp_path / "vae", bundle)
    code, _, err = cli(capsys, "bench", "--device", "cpu", "--model", bundle, "--stages", "tokenize,decode",
                       "--batch-size", 1, "--repeats", 1, "--warmup", 0, "--steps", 1, "--out", tmp_path / "b")
    assert code == 0, err
    rows = json.loads((tmp_path / "b" / "bench.json").read_text())["rows"]
    assert [r["stage"] for r in rows] == ["tokenize", "decode"]
    assert all(r["model"].startswith(f"bundle {bundle}") for r in rows)
    code, _, err = cli(capsys, "bench", "--device", "cpu", "--model", tmp_path / "nothing", "--out", tmp_path / "c")
    assert code == 2 and one_error(err).startswith(f"error: {tmp_path / 'nothing'}: no such folder")
    assert not (tmp_path / "c").exists()
    # the bundle has no gpt/: asking for generate names the missing part
    code, _, err = cli(capsys, "bench", "--device", "cpu", "--model", bundle, "--stages", "generate")
    assert code == 2 and "component 'gpt' is missing" in one_error(err)
