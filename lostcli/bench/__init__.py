"""`lost bench`: training-step throughput, inference latency, peak memory and FLOPs of every stage.

Reads in order: `config` (stage names, what each `--preset` maps to, `BenchConfig`), `measure` (`measure`,
`PeakMemory`, `count_flops`, the bf16 peak table), `cases` (what each stage times) and `report` (the runner
`run_bench` and the report writers; its docstring lists the fields of a row).

Layer (README, Code layout): above `train` and `pipeline` (it times their steps); only `cli` imports it.
"""

from .config import PRESETS, STAGES, BenchConfig, parse_ints, parse_stages, resolve_config
from .measure import PeakMemory, count_flops, measure, peak_tflops_for
from .report import run_bench, table_rows, write_report

__all__ = ["PRESETS", "STAGES", "BenchConfig", "PeakMemory", "count_flops", "measure", "parse_ints", "parse_stages",
           "peak_tflops_for", "resolve_config", "run_bench", "table_rows", "write_report"]
