"""CLI registration for ``hepascope bench``. Torch-free at import: the handler imports the
bench (and torch) only when it runs."""

from __future__ import annotations

import argparse
from typing import Any

from hepascope.bench.options import add_arguments
from hepascope.train.commands import needs_torch


@needs_torch
def cmd_bench(args: argparse.Namespace) -> int:
    from hepascope.bench.run import bench_exit, run_from_args

    return bench_exit(run_from_args(args))


def add_subcommands(sub: Any) -> None:
    p = sub.add_parser("bench", help="benchmark the models and the live pipeline on this machine",
                       description="Per model and engine: params, FLOPs, latency p50/p95/p99, "
                       "throughput, GFLOP/s against a peak measured in the same run; the live "
                       "pipeline against a naive loop, stream scaling, a slow model; JSON, "
                       "CSV, PNG plots and a markdown summary.")
    add_arguments(p)
    p.set_defaults(func=cmd_bench)
