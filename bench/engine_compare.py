"""CPU engines bench: one image model, every way hepascope can run it on this CPU, in one
run: plain ONNX Runtime, tuned ONNX Runtime, static INT8 (QDQ, calibrated on preprocessed
training frames) and PyTorch eager, each with latency p50/p99 at batch 1, achieved GFLOP/s,
ratio to the FLOP floor (model FLOPs / this machine's sgemm peak, measured in the same run),
accuracy on a held-out test set and agreement with the float ONNX model.

    python -m hepascope.bench.engine_compare --checkpoint CKPT --test TEST_DATA [--calib TRAIN_DATA]
        [--methods minmax,entropy,percentile] [--knobs] [--neighbour]
        [--branches bimodal_resnet18_lite] [--runs 300] --out DIR

``--knobs`` adds a row per tuning setting (tuned with that one setting changed), which is
what ``OrtTuning``'s defaults rest on; ``--neighbour`` times the main variants again beside
a process keeping one core busy, as the pipeline's capture and decoding do; ``--branches``
times a bimodal model's two encoders per frame three ways (``bench/branches.py``). Variants
are interleaved in short chunks, so a neighbour's load on a shared machine falls on all of
them alike. Writes results.json, results.csv and results.md into DIR."""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from hepascope.bench.engine_compare_md import machine_facts, write_markdown
from hepascope.bench.ort_peak import ort_matmul_peak
from hepascope.bench.variant import Variant
from hepascope.core.errors import ConfigError, DataError, guard_main
from hepascope.core.export_format import SINGLE_FILE
from hepascope.core.timing import interleaved_ms
from hepascope.engines.onnxruntime import OnnxRuntimeEngine, OrtTuning, cpu_budget
from hepascope.train.engine_build.calib import Samples, load_samples

FIELDS = ("variant", "description", "p50_ms", "p99_ms", "min_ms", "gflops_per_s",
          "x_floor", "accuracy", "balanced_accuracy", "agreement", "max_abs_dprob",
          "session_ms", "n_timed")


def measure_peak(threads: int, sizes: tuple[int, ...] = (2048, 4096), reps: int = 5
                 ) -> dict[str, float]:
    """This machine's fp32 matrix-multiply rate (GFLOP/s, best of ``reps`` at each of
    ``sizes``) with torch (MKL) and numpy (its BLAS) on ``threads`` threads; ``peak`` is
    the highest: the best the cores did, what a neighbour's load cannot raise."""
    import torch

    torch.set_num_threads(threads)
    rng = np.random.default_rng(0)
    out: dict[str, float] = {"torch": 0.0, "numpy": 0.0}
    for n in sizes:
        a, b = (rng.standard_normal((n, n), np.float32) for _ in range(2))
        ta, tb = torch.from_numpy(a), torch.from_numpy(b)
        pairs: tuple[tuple[str, Callable[..., Any], Any, Any], ...] = (
            ("torch", torch.mm, ta, tb), ("numpy", np.matmul, a, b))
        for name, fn, x, y in pairs:
            fn(x, y)
            best = min(_clock(fn, x, y) for _ in range(reps))
            out[name] = max(out[name], 2.0 * n**3 / best / 1e9)
    out["peak"] = max(out.values())
    return out


def _clock(fn: Callable[..., Any], *args: Any) -> float:
    t0 = time.perf_counter()
    fn(*args)
    return time.perf_counter() - t0


def _ort_plain(path: Path, name: str, copies: int) -> Variant:
    """ONNX Runtime as a user writes it first: default options, ``run`` with a dict."""
    import onnxruntime as ort

    t0 = time.perf_counter()
    sessions = [ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
                for _ in range(copies)]
    ms = (time.perf_counter() - t0) * 1e3 / copies
    return Variant("ort_plain", "ONNX Runtime defaults, run() with a dict",
                   [_plain_run(s, name) for s in sessions], lambda: None, ms)


def _plain_run(sess: Any, name: str) -> Callable[[np.ndarray], np.ndarray]:
    return lambda x: sess.run(None, {name: x})[0]


def _engine_run(eng: OnnxRuntimeEngine) -> Callable[[np.ndarray], np.ndarray]:
    inp, out = eng.inputs[0].name, eng.outputs[0].name
    return lambda x: eng.infer({inp: x})[out]


def _ort_engine(vname: str, desc: str, path: Path, copies: int, *,
                threads: int | None = None, tuning: OrtTuning | None = None) -> Variant:
    t0 = time.perf_counter()
    engines = [OnnxRuntimeEngine(path, threads=threads, tuning=tuning) for _ in range(copies)]
    ms = (time.perf_counter() - t0) * 1e3 / copies

    def close() -> None:
        for e in engines:
            e.close()

    return Variant(vname, desc, [_engine_run(e) for e in engines], close, ms)


def _torch_eager(model: Any, threads: int, copies: int) -> Variant:
    import copy

    import torch

    torch.set_num_threads(threads)

    def runner(m: Any) -> Callable[[np.ndarray], np.ndarray]:
        def run(x: np.ndarray) -> np.ndarray:
            with torch.inference_mode():
                return torch.softmax(m(torch.from_numpy(x)), 1).numpy()
        return run

    models = [model] + [copy.deepcopy(model) for _ in range(copies - 1)]
    return Variant("torch_eager", f"PyTorch {torch.__version__} eager fp32, inference_mode",
                   [runner(m) for m in models], lambda: None, 0.0)


KNOBS: tuple[tuple[str, str, dict[str, Any]], ...] = (
    ("knob_spinning", "tuned, threads spin (allow_spinning=1)", {"spinning": True}),
    ("knob_opt_basic", "tuned, graph optimisation basic", {"optimization": "basic"}),
    ("knob_opt_extended", "tuned, graph optimisation extended (no NCHWc)",
     {"optimization": "extended"}),
    ("knob_block_base4", "tuned, dynamic_block_base=4", {"dynamic_block_base": 4}),
    ("knob_denormal_zero", "tuned, set_denormal_as_zero=1", {"denormal_as_zero": True}),
    ("knob_no_iobinding", "tuned, run() with a dict, no I/O binding", {"io_binding": False}),
    ("knob_no_arena", "tuned, no CPU arena, no memory pattern",
     {"cpu_arena": False, "mem_pattern": False}),
)


def time_variants(variants: list[Variant], x: np.ndarray, runs: int, *, chunk: int = 10,
                  warmup: int = 10) -> dict[str, np.ndarray]:
    """Latency (ms) of ``runs`` batch-1 calls of each variant, interleaved
    (``core.timing.interleaved_ms``): rounds of ``chunk`` timed calls per variant, the order
    rotating each round, each chunk after a 30 ms pause (so spinning threads of the previous
    variant have parked) and one untimed call (the switch's cache misses are not the
    variant's), on the variant's next session copy (identical sessions differ by up to 15%
    here, by where their buffers landed)."""
    calls = {v.name: [partial(run, x) for run in v.runs] for v in variants}
    return interleaved_ms(calls, runs, chunk=chunk, warmup=warmup, settle=1, pause_s=0.03)


def predict(v: Variant, samples: Samples) -> np.ndarray:
    """(N, K) probabilities of every test sample."""
    name = next(iter(samples.feeds[0]))
    return np.concatenate([np.array(v.run(f[name]), np.float64) for f in samples.feeds])


def scores(probs: np.ndarray, labels: np.ndarray, ref: np.ndarray) -> dict[str, float]:
    """Accuracy, balanced accuracy (mean per-class recall), top-1 agreement with and max
    |probability difference| from the reference (float ONNX) predictions."""
    top = probs.argmax(1)
    recalls = [float((top[labels == c] == c).mean()) for c in np.unique(labels)]
    return {"accuracy": float((top == labels).mean()), "balanced_accuracy": float(np.mean(recalls)),
            "agreement": float((top == ref.argmax(1)).mean()),
            "max_abs_dprob": float(np.abs(probs - ref).max())}


def _model_labels(samples: Samples, labels: tuple[str, ...]) -> np.ndarray:
    """The test labels as indices into the model's labels (matched by name)."""
    missing = sorted(set(samples.classes) - set(labels))
    if missing:
        raise DataError(f"test classes {missing} are not among the model's {list(labels)}")
    return np.array([labels.index(samples.classes[i]) for i in samples.labels], np.int64)


def _default_calib(meta: dict[str, Any]) -> Path:
    root = meta.get("train", {}).get("data", {}).get("root")
    if root and Path(root).exists():
        return Path(root)
    raise ConfigError("--calib DATA is needed: the checkpoint names no training data here")


def build_variants(ckpt: Path, work: Path, args: argparse.Namespace,
                   facts: dict[str, Any]) -> tuple[list[Variant], Samples, np.ndarray]:
    """Export the checkpoint, quantise it, open every variant; the test samples and their
    labels in the model's order."""
    import torch

    from hepascope.train.checkpoint import load_checkpoint
    from hepascope.train.engine_build.quantize import quantize_int8
    from hepascope.train.export import export_checkpoint
    from hepascope.train.flops import count_flops

    model, meta = load_checkpoint(ckpt)
    export = export_checkpoint(model, meta, work / "onnx")
    path = work / "onnx" / SINGLE_FILE
    labels = tuple(meta["labels"])
    test = load_samples(path, args.test)
    calib_data = args.calib or _default_calib(meta)
    calib = load_samples(path, calib_data, limit=args.calib_limit, seed=0)
    shape = next(iter(test.feeds[0].values())).shape
    facts.update(model=meta["model"], input_shape=list(shape), labels=list(labels),
                 flops=count_flops(model, (torch.zeros(shape),)),
                 export_max_abs_diff=export["max_abs_diff"],
                 test={"data": str(args.test), "samples": len(test.feeds),
                       "patients": len(set(test.groups.tolist())), "classes": list(test.classes)},
                 calib={"data": str(calib_data), "samples": len(calib.feeds),
                        "patients": len(set(calib.groups.tolist()))},
                 patient_overlap_test_calib=len(set(test.groups.tolist())
                                                & set(calib.groups.tolist()) - {""}))
    name, threads = next(iter(test.feeds[0])), cpu_budget()
    facts["quantize_s"], int8 = {}, {}
    for method in args.methods:  # first: sessions are all made after calibration's churn
        t0 = time.perf_counter()
        int8[method] = quantize_int8(path, work / "onnx" / f"model.int8-{method}.onnx",
                                     calib.feeds, method=method)
        facts["quantize_s"][method] = round(time.perf_counter() - t0, 1)
    k = args.sessions
    variants = [_ort_plain(path, name, k),
                _ort_engine("ort_tuned", "hepascope OnnxRuntimeEngine, OrtTuning() defaults",
                            path, k)]
    for method, q in int8.items():
        suffix = "" if method == args.methods[0] else f"_{method}"
        variants.append(_ort_engine(f"ort_int8{suffix}", f"static INT8 QDQ, {method} "
                                    "calibration, OrtTuning() defaults", q, k))
    variants.append(_torch_eager(model, threads, k))
    if args.knobs:
        tuned = OrtTuning()
        variants += [_ort_engine(n, d, path, k, tuning=replace(tuned, **kw))
                     for n, d, kw in KNOBS]
        variants.append(_ort_engine("knob_1_thread", "tuned, 1 intra-op thread", path, k,
                                    threads=1))
    return variants, test, _model_labels(test, labels)


NEIGHBOUR = ("import time\n"
             "while True:\n"
             "    t = time.perf_counter()\n"
             "    while time.perf_counter() - t < 0.02:\n"
             "        pass\n"
             "    time.sleep(0.01)\n")
LOADED = ("ort_plain", "ort_tuned", "ort_int8", "torch_eager")  # timed beside a neighbour too


@contextlib.contextmanager
def neighbour() -> Iterator[None]:
    """A process that wants 2/3 of a core (20 ms spinning, 10 ms asleep), as capture,
    decoding and preprocessing do beside the engine in the pipeline."""
    proc = subprocess.Popen([sys.executable, "-c", NEIGHBOUR])
    try:
        time.sleep(0.2)
        yield
    finally:
        proc.terminate()
        proc.wait()


def _timings(variants: list[Variant], x: np.ndarray, args: argparse.Namespace
             ) -> dict[str, np.ndarray]:
    """Every variant's latencies, then (``--neighbour``) the main ones' beside a busy
    process, as ``NAME+neighbour``."""
    lat = time_variants(variants, x, args.runs, chunk=args.chunk)
    if args.neighbour:
        with neighbour():
            loaded = time_variants([v for v in variants if v.name in LOADED], x, args.runs,
                                   chunk=args.chunk)
        lat.update({f"{k}+neighbour": t for k, t in loaded.items()})
    return lat


def _rows(variants: list[Variant], lat: dict[str, np.ndarray], test: Samples,
          labels: np.ndarray, flops: int, floor_s: float, int8_floor_s: float
          ) -> list[dict[str, Any]]:
    ref = predict(variants[1], test)  # the float ONNX model, tuned
    by_name = {v.name: v for v in variants}
    acc = {v.name: scores(predict(v, test), labels, ref) for v in variants}
    rows = []
    for name, t in lat.items():
        v = by_name[name.split("+")[0]]
        desc = v.description + ("; beside a process wanting 2/3 of a core"
                                if name.endswith("+neighbour") else "")
        p50 = float(np.percentile(t, 50))
        rows.append({"variant": name, "description": desc, "p50_ms": p50,
                     "p99_ms": float(np.percentile(t, 99)), "min_ms": float(t.min()),
                     "gflops_per_s": flops / (p50 / 1e3) / 1e9, "x_floor": p50 / 1e3 / (
                         int8_floor_s if name.startswith("ort_int8") else floor_s),
                     **acc[v.name], "session_ms": v.session_ms, "n_timed": int(t.size)})
    return rows


def run_bench(args: argparse.Namespace) -> dict[str, Any]:
    threads = cpu_budget()
    facts: dict[str, Any] = {"date": time.strftime("%Y-%m-%d %H:%M"), "threads": threads,
                             "machine": machine_facts(), "runs": args.runs,
                             "chunk": args.chunk, "peak_sizes": args.peak_sizes,
                             "sessions": args.sessions}
    sizes = tuple(args.peak_sizes)

    def peak() -> dict[str, float]:  # fp32 (torch, numpy, ONNX Runtime) and INT8 (ORT)
        pk = {**measure_peak(threads, sizes), **ort_matmul_peak(threads, sizes)}
        return {**pk, "peak": max(pk["peak"], pk["ort_fp32"])}

    facts["peak"] = peak()
    with tempfile.TemporaryDirectory(prefix="hepascope-bench-") as tmp:
        variants, test, labels = build_variants(args.checkpoint, Path(tmp), args, facts)
        try:
            lat = _timings(variants, next(iter(test.feeds[0].values())), args)
            again = peak()  # after the timing too: keep the best
            facts["peak"] = {k: max(v, again[k]) for k, v in facts["peak"].items()}
            facts["floor_ms"] = facts["flops"] / facts["peak"]["peak"] / 1e6
            facts["int8_floor_ms"] = facts["flops"] / facts["peak"]["ort_int8"] / 1e6
            rows = _rows(variants, lat, test, labels, facts["flops"], facts["floor_ms"] / 1e3,
                         facts["int8_floor_ms"] / 1e3)
        finally:
            for v in variants:
                v.close()
        if args.branches:
            from hepascope.bench.branches import branch_rows, export_branches

            d, what = export_branches(args.branches, Path(tmp) / "bimodal")
            b_rows, b_facts = branch_rows(d, args.runs, args.chunk, time_variants)
            facts["branches"] = {"model": what, "facts": b_facts, "rows": b_rows}
    return {**facts, "rows": rows}


def write_results(res: dict[str, Any], out: Path, command: str, notes: str) -> None:
    out.mkdir(parents=True, exist_ok=True)
    res = {**res, "command": command}
    (out / "results.json").write_text(json.dumps(res, indent=1))
    with (out / "results.csv").open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(FIELDS))
        w.writeheader()
        for row in res["rows"]:
            w.writerow({k: (round(v, 4) if isinstance(v, float) else v) for k, v in row.items()})
    write_markdown(res, out / "results.md", notes)


@guard_main
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m hepascope.bench.engine_compare",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", required=True, type=Path, help="a 'hepascope train' dir")
    p.add_argument("--test", required=True, type=Path,
                   help="held-out data: ArraySet .npz, class folders or .csv manifest")
    p.add_argument("--calib", type=Path, help="training data for INT8 calibration "
                   "(default: the checkpoint's training data folder)")
    p.add_argument("--calib-limit", type=int, default=256, help="calibration frames")
    p.add_argument("--methods", default="minmax",
                   help="INT8 calibration methods, comma-separated; the first is 'ort_int8'")
    p.add_argument("--runs", type=int, default=300, help="timed calls per variant")
    p.add_argument("--chunk", type=int, default=10, help="timed calls per turn")
    p.add_argument("--sessions", type=int, default=3,
                   help="identical sessions per variant, taking turns (default 3)")
    p.add_argument("--peak-sizes", default="2048,4096", help="sgemm sizes for the peak")
    p.add_argument("--knobs", action="store_true", help="add a row per tuning setting")
    p.add_argument("--neighbour", action="store_true",
                   help="time the main variants again beside a process keeping a core busy")
    p.add_argument("--branches", metavar="NAME|CKPT",
                   help="also time a bimodal model's two encoders per frame: sequential, "
                   "parallel, merged (a registered name: random weights)")
    p.add_argument("--notes", type=Path, help="markdown appended to results.md")
    p.add_argument("--out", required=True, type=Path, help="results directory")
    args = p.parse_args(argv)
    args.methods = [m for m in args.methods.split(",") if m]
    args.peak_sizes = [int(n) for n in args.peak_sizes.split(",") if n]
    if min(args.runs, args.chunk, args.sessions) < 1 or not args.methods:
        p.error("--runs, --chunk and --sessions must be >= 1 and --methods non-empty")
    command = "python -m hepascope.bench.engine_compare " + " ".join(argv or sys.argv[1:])
    res = run_bench(args)
    notes = args.notes.read_text() if args.notes else ""
    write_results(res, args.out, command, notes)
    print(json.dumps({r["variant"]: {"p50_ms": round(r["p50_ms"], 2),
                                     "accuracy": round(r["accuracy"], 3)} for r in res["rows"]}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
