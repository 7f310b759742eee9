"""``kairos-loadgen``: the open-loop load generator for V2 inference endpoints.

Python API (what the demo and the live benchmarks call)::

    report = await run_load(LoadConfig(url="grpc://127.0.0.1:8001", model="rm2", rate=200, duration_s=10))
    report.to_json(); render_table(report); plot_report(report, "run.png")
    result = await find_max(LoadConfig(url=..., model="rm2", rate=100), step_queries=2000)
    result.max_qps

Modules: ``config`` (LoadConfig, the query schedule), ``payloads`` (V2 bodies per model),
``transport`` (HTTP/gRPC targets, error kinds), ``runner`` (the open-loop sender),
``report`` (LoadReport and its JSON schema), ``search`` (find_max), ``render`` (table, PNG),
``cli`` (the command).
"""

from benchmarks.loadgen.config import LoadConfig, build_workload, parse_ramp
from benchmarks.loadgen.payloads import MODEL_INPUTS, InputSpec, PayloadFactory
from benchmarks.loadgen.render import plot_report, render_find_max, render_table
from benchmarks.loadgen.report import SCHEMA, LoadReport, RunInfo, Samples
from benchmarks.loadgen.runner import run_async, run_load
from benchmarks.loadgen.search import FindMaxResult, FindMaxStep, find_max, search_rates
from benchmarks.loadgen.transport import Endpoint, Outcome, Target, TargetUnreachable, parse_url

__all__ = [
    "MODEL_INPUTS",
    "SCHEMA",
    "Endpoint",
    "FindMaxResult",
    "FindMaxStep",
    "InputSpec",
    "LoadConfig",
    "LoadReport",
    "Outcome",
    "PayloadFactory",
    "RunInfo",
    "Samples",
    "Target",
    "TargetUnreachable",
    "build_workload",
    "find_max",
    "parse_ramp",
    "parse_url",
    "plot_report",
    "render_find_max",
    "render_table",
    "run_async",
    "run_load",
    "search_rates",
]
