"""results.md of ``bench/engine_compare.py``: the table, units, method and machine."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from hepascope.engines.onnxruntime import cpu_budget


def machine_facts() -> dict[str, Any]:
    """CPU model (lscpu), cores this process may use, and library versions."""
    import platform
    import subprocess

    import onnxruntime
    import torch

    try:
        text = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        cpu = next(ln.split(":", 1)[1].strip() for ln in text.splitlines()
                   if ln.startswith("Model name"))
    except (OSError, subprocess.CalledProcessError, StopIteration):
        cpu = platform.processor() or "unknown"
    with open("/proc/cpuinfo") as f:
        flags = next((ln.split(":", 1)[1].split() for ln in f if ln.startswith("flags")), [])
    isa = [x for x in ("avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8")
           if x in flags]
    return {"cpu": cpu, "isa": isa, "cores": cpu_budget(), "python": platform.python_version(),
            "onnxruntime": onnxruntime.__version__, "torch": torch.__version__,
            "numpy": np.__version__}


def _table(rows: list[dict[str, Any]]) -> list[str]:
    head = ("| variant | p50 ms | p99 ms | min ms | GFLOP/s | × floor | accuracy "
            "| balanced acc. | top-1 agreement | max abs Δp | session ms |")
    out = [head, "|" + "---|" * 11]
    for r in rows:
        out.append(f"| {r['variant']} | {r['p50_ms']:.2f} | {r['p99_ms']:.2f} "
                   f"| {r['min_ms']:.2f} | {r['gflops_per_s']:.0f} | {r['x_floor']:.2f} "
                   f"| {r['accuracy']:.3f} | {r['balanced_accuracy']:.3f} "
                   f"| {r['agreement']:.3f} | {r['max_abs_dprob']:.4f} "
                   f"| {r['session_ms']:.0f} |")
    return [*out, "", *(f"* `{r['variant']}`: {r['description']}" for r in rows)]


def write_markdown(res: dict[str, Any], path: Path, notes: str) -> None:
    """results.md: the table, with units and how every figure was measured."""
    m, pk, t, c = res["machine"], res["peak"], res["test"], res["calib"]
    q = ", ".join(f"{k} {v} s" for k, v in res["quantize_s"].items())
    lines = [
        f"# CPU engines: {res['model']} {'x'.join(map(str, res['input_shape']))}", "",
        f"{res['date']} · {m['cpu']} ({', '.join(m['isa'])}), {m['cores']} cores for this "
        f"process · onnxruntime {m['onnxruntime']}, torch {m['torch']}, numpy {m['numpy']}, "
        f"Python {m['python']}", "", "```bash", res["command"], "```", "",
        *_table(res["rows"]), "", "## Method", "",
        f"* Model: {res['flops'] / 1e9:.2f} GFLOPs per frame (convolutions and matrix "
        "products counted by torch's FlopCounterMode, a multiply-add = 2 FLOPs; "
        f"{res['flops'] / 2e9:.2f} GMACs). Float ONNX export parity with torch: max abs "
        f"diff {res['export_max_abs_diff']:.1e}.",
        f"* Peak: fp32 matmul at {res['peak_sizes']} (best of 5 each), {res['threads']} "
        f"threads, before and after the timing in this run: torch {pk['torch']:.0f}, numpy "
        f"{pk['numpy']:.0f}, ONNX Runtime {pk.get('ort_fp32', 0):.0f} GFLOP/s; peak = the "
        f"best, {pk['peak']:.0f} GFLOP/s. FLOP floor = FLOPs / peak = {res['floor_ms']:.2f} "
        "ms; × floor = p50 / floor. INT8 rows: against ONNX Runtime's MatMulInteger peak "
        f"({pk.get('ort_int8', 0):.0f} GOP/s), floor {res.get('int8_floor_ms', 0):.2f} ms.",
        f"* Latency: one preprocessed test frame, batch 1, {res['runs']} timed calls per "
        "variant after 10 warm-up calls, interleaved: rounds of chunks of "
        f"{res['chunk']} calls per variant, the order rotating, each chunk after a 30 ms "
        f"pause and one untimed call, on the next of {res['sessions']} identical sessions "
        "of the variant (sessions differ by where their buffers land). p50/p99/min: "
        "percentiles of those calls' wall time (perf_counter_ns) in ms; GFLOP/s = FLOPs / "
        "p50; session ms: session creation.",
        f"* Accuracy: {t['samples']} test frames of {t['patients']} patients ({t['data']}), "
        "preprocessed by the model's own metadata spec; balanced accuracy = mean per-class "
        "recall; agreement = top-1 equal to the float ONNX model's (ort_tuned); max abs Δp "
        "= the largest probability difference from it.",
        f"* INT8: static QDQ (weights int8 per output channel, activations uint8, softmax "
        f"float), calibrated on {c['samples']} preprocessed training frames of "
        f"{c['patients']} patients ({c['data']}); quantisation took {q}. Patients shared by "
        f"the test and calibration sets: {res['patient_overlap_test_calib']}.",
    ]
    if any(r["variant"].endswith("+neighbour") for r in res["rows"]):
        lines.append("* `+neighbour` rows: the same sessions timed again (same method) while "
                     "a process that wants 2/3 of a core (20 ms spinning, 10 ms asleep) "
                     "runs beside them, as capture, decoding and preprocessing do in the pipeline; "
                     "their accuracy columns are the unloaded variant's.")
    if "branches" in res:
        from hepascope.bench.branches import branch_table

        lines += branch_table(res)
    if notes:
        lines += ["", notes.strip()]
    path.write_text("\n".join(lines) + "\n")
