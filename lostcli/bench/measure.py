"""`lost bench` measuring helpers: wall time (`measure`), peak memory (`PeakMemory`), FLOPs (`count_flops`),
and the device name / bf16 peak table MFU is computed against."""

from __future__ import annotations

import platform
import resource
import time
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode, sdpa_backward_flop_count, sdpa_flop_count

# Dense bf16 tensor-core peaks (vendor datasheets), matched in order against torch.cuda.get_device_name.
PEAK_TFLOPS_BF16: tuple[tuple[str, float], ...] = (
    ("H100 PCIe", 756.0),
    ("H100", 989.0),  # SXM
    ("H200", 989.0),
    ("A100", 312.0),
)


def peak_tflops_for(device_name: str, dtype: str) -> float | None:
    """Dense bf16 peak TFLOP/s of a known GPU (None for fp32, a CPU or an unknown device)."""
    if dtype != "bf16":
        return None
    return next((peak for key, peak in PEAK_TFLOPS_BF16 if key.lower() in device_name.lower()), None)


def device_name(device: torch.device) -> str:
    """The GPU's name, or the CPU model from /proc/cpuinfo (platform.processor() elsewhere)."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "cpu"


# ----------------------------------------------------------------------------------------------------
# Measuring: time, memory, FLOPs
# ----------------------------------------------------------------------------------------------------


@dataclass
class Timing:
    """Seconds per call of the timed repeats (warm-up calls are not in `times`)."""

    times: list[float]  # one per repeat, in order
    warmup: int  # calls run and discarded before timing

    @property
    def repeats(self) -> int:
        return len(self.times)

    def quantile(self, q: float) -> float:
        """Linear-interpolated quantile q in [0, 1] of the repeats."""
        return float(np.quantile(np.asarray(self.times, dtype=np.float64), q))

    @property
    def median(self) -> float:
        return self.quantile(0.5)


def measure(fn: Callable[[], Any], repeats: int, warmup: int, clock: Callable[[], float] = time.perf_counter,
            sync: Callable[[], None] | None = None) -> Timing:
    """Call `fn` warmup times untimed, then `repeats` times timed one by one.

    Args:
        clock: the timer read around each call, like `timeit.Timer(timer=...)`: wall time by default,
            e.g. `time.process_time` for this process's CPU time.
        sync: waits for queued device work (torch.cuda.synchronize) before each clock read.
    """
    sync = sync or (lambda: None)
    for _ in range(warmup):
        fn()
    sync()
    times = []
    for _ in range(repeats):
        t0 = clock()
        fn()
        sync()
        times.append(clock() - t0)
    return Timing(times=times, warmup=warmup)


def _reset_rss_hwm() -> bool:
    """Reset the process's peak RSS to its current RSS (Linux >= 4.0: /proc/self/clear_refs "5")."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


class PeakMemory(AbstractContextManager):
    """Peak memory of the block: CUDA `max_memory_allocated`, or the process RSS high-water mark on a CPU.

    After the block: `bytes` and `kind` ("cuda_max_allocated", "cpu_rss_hwm" when the high-water mark could
    be reset at entry, else "cpu_rss_hwm_process": the peak of the whole process so far).
    """

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.bytes = 0
        self.kind = ""

    def __enter__(self) -> PeakMemory:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.kind = "cuda_max_allocated"
        else:
            self.kind = "cpu_rss_hwm" if _reset_rss_hwm() else "cpu_rss_hwm_process"
        return self

    def __exit__(self, *exc: object) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.bytes = int(torch.cuda.max_memory_allocated(self.device))
        else:
            self.bytes = int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024  # KiB on Linux


def _sdpa_cpu(q, k, v, *args, out_shape=None, **kwargs) -> int:
    return sdpa_flop_count(q, k, v)


def _sdpa_cpu_backward(grad_out, q, k, v, *args, out_shape=None, **kwargs) -> int:
    return sdpa_backward_flop_count(grad_out, q, k, v)


# torch's counter knows the CUDA attention kernels only; the CPU flash kernel would count 0 FLOPs.
_CPU_ATTENTION = {
    torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _sdpa_cpu,
    torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward: _sdpa_cpu_backward,
}


@contextmanager
def _frozen(modules: tuple[torch.nn.Module, ...]) -> Iterator[None]:
    """Parameters of `modules` with requires_grad False inside the block (restored after).

    FlopCounterMode's module tracker fails on a view of a parameter taken under no_grad (it still requires
    grad but has no grad_fn); inference needs no gradients, so the count runs with them switched off.
    """
    params = [p for m in modules for p in m.parameters() if p.requires_grad]
    for p in params:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p in params:
            p.requires_grad_(True)


def count_flops(fn: Callable[[], Any], frozen: tuple[torch.nn.Module, ...] = ()) -> int:
    """Matmul / conv / attention FLOPs of one call of `fn` (a multiply-add counts 2), forward and backward.

    Args:
        frozen: modules an inference `fn` runs (see `_frozen`); leave empty for a training step.
    """
    with _frozen(frozen), FlopCounterMode(display=False, custom_mapping=_CPU_ATTENTION) as counter:
        fn()
    return int(counter.get_total_flops())
