"""vq.bench — benchmarks as library code: codebook utilization of quantizers x sizes on a fit /
held-out split (:func:`bench_utilization`), with peers, and reports (results.json, PNG plots,
a self-contained report.html). CLI: ``vq bench utilization`` (:mod:`vq.bench.commands`)."""
from vq.bench.data import BUILTIN_SETS, BenchData, load_array, load_data
from vq.bench.report import read_results, summarize, write_report
from vq.bench.utilization import SCHEMA, UtilizationConfig, bench_utilization

__all__ = [
    "BUILTIN_SETS",
    "SCHEMA",
    "BenchData",
    "UtilizationConfig",
    "bench_utilization",
    "load_array",
    "load_data",
    "read_results",
    "summarize",
    "write_report",
]
