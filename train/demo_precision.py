"""INT8 for the demo model only where it pays: the precision step of its export.

Each graph of the bimodal export is quantised (ONNX Runtime static INT8, QDQ, ranges from
training windows: ``engine_build/quantize.py``) and timed against its fp32 graph on this
machine (batch 1, the two interleaved, p50, one thread and the live thread count). The INT8
configuration is INT8 where a graph is at least ``MIN_SPEEDUP`` faster at every thread count,
fp32 elsewhere; its validation accuracy is measured on the validation windows calibration uses
(full windows, argmax) beside fp32's. ``decide``: INT8 when some graph is faster and accuracy
drops by at most ``MAX_ACCURACY_DROP``; then ``head.int8.onnx`` (the INT8 head, or a copy of
the fp32 one, whose parts name the encoders of the configuration) and the INT8 encoders are
written beside the fp32 graphs and listed in the manifest with the ``precision`` block, which
the live loader reads (``stream/model_loader.py``). Temperature and threshold stay fp32's: the
block records INT8's ECE with them and the temperature INT8 alone would get, to show whether
a refit would matter."""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from hepascope.core.errors import DataError
from hepascope.core.export_format import (
    BIMODAL_GRAPHS,
    BMODE_FILE,
    CEUS_FILE,
    HEAD_FILE,
    INT8_HEAD_FILE,
    MANIFEST_FILE,
    META_PARTS,
    ROLE_BMODE,
    ROLE_CEUS,
)
from hepascope.core.timing import interleaved_ms
from hepascope.engines.onnxruntime import OnnxRuntimeEngine, cpu_budget
from hepascope.engines.plan import sha256_file
from hepascope.train.datasets.arrays import ArraySet

MAX_ACCURACY_DROP = 0.01  # 1 point of validation accuracy
MIN_SPEEDUP = 1.05  # fp32 p50 / INT8 p50 at every thread count; below it (noise) fp32 stays
CALIB_WINDOWS = 256  # training windows whose frames calibrate the activation ranges
TIMED_RUNS = 300  # batch-1 calls per graph, precision and thread count
BATCH = 64  # windows per call when scoring validation


def int8_file(name: str) -> str:
    """``bmode_encoder.onnx`` -> ``bmode_encoder.int8.onnx``."""
    return INT8_HEAD_FILE if name == HEAD_FILE else name.replace(".onnx", ".int8.onnx")


def decide(fp32_accuracy: float, int8_accuracy: float, speedup: dict[str, float], *,
           max_drop: float = MAX_ACCURACY_DROP, min_speedup: float = MIN_SPEEDUP
           ) -> dict[str, Any]:
    """The decision: ``int8`` (with the graphs that run INT8) when some graph's ``speedup``
    (fp32 / INT8 p50, the worst over thread counts) is at least ``min_speedup`` and
    ``int8_accuracy`` (of the configuration with those graphs INT8) is at most ``max_drop``
    below ``fp32_accuracy``; ``fp32`` otherwise, with the reason."""
    faster = sorted(g for g, s in speedup.items() if s >= min_speedup)
    drop = fp32_accuracy - int8_accuracy
    if not faster:
        return {"precision": "fp32", "int8_graphs": [],
                "reason": f"no graph is {min_speedup:g}x faster in INT8 on this machine"}
    if drop > max_drop + 1e-9:
        return {"precision": "fp32", "int8_graphs": [],
                "reason": f"INT8 validation accuracy {100 * drop:.2f} points below fp32 "
                          f"(more than {100 * max_drop:g})"}
    return {"precision": "int8", "int8_graphs": faster,
            "reason": f"INT8 is faster for {', '.join(faster)} and validation accuracy "
                      f"changes by {-100 * drop:+.2f} points (limit -{100 * max_drop:g})"}


def int8_feeds(directory: Path, data: ArraySet, train_idx: np.ndarray,
                      seed: int = 0) -> dict[str, list[dict[str, np.ndarray]]]:
    """Batch-1 feeds per graph from up to ``CALIB_WINDOWS`` training windows (never
    validation ones): B-mode frames, one CEUS frame of each window, and for the head the
    fp32 encoders' features of those windows."""
    bmodes, ceus = _views(data)
    rng = np.random.default_rng(seed)
    pick = np.sort(rng.choice(train_idx, min(CALIB_WINDOWS, len(train_idx)), replace=False))
    frames = rng.integers(0, ceus.shape[1], len(pick))
    engines = _open(directory, BIMODAL_GRAPHS, cpu_budget())
    try:
        bname, cname = engines[BMODE_FILE].inputs[0].name, engines[CEUS_FILE].inputs[0].name
        bfeat, cfeat = _features(engines[BMODE_FILE], engines[CEUS_FILE], data, pick)
        heads = _head_feeds(engines[HEAD_FILE], bfeat, cfeat)
    finally:
        _close(engines)
    bm = np.asarray(bmodes[pick], np.float32)
    ce = np.asarray(ceus[pick, frames], np.float32)
    return {BMODE_FILE: [{bname: bm[i:i + 1]} for i in range(len(pick))],
            CEUS_FILE: [{cname: ce[i:i + 1]} for i in range(len(pick))],
            HEAD_FILE: [{k: v[i:i + 1] for k, v in heads.items()} for i in range(len(pick))]}


def _open(directory: Path, names: tuple[str, ...] | list[str],
          threads: int) -> dict[str, OnnxRuntimeEngine]:
    engines: dict[str, OnnxRuntimeEngine] = {}
    try:
        for n in names:
            engines[n] = OnnxRuntimeEngine(directory / n, threads=threads)
    except BaseException:
        _close(engines)
        raise
    return engines


def _close(engines: dict[str, OnnxRuntimeEngine]) -> None:
    for e in engines.values():
        e.close()


def _encode(engine: OnnxRuntimeEngine, x: np.ndarray) -> np.ndarray:
    """``engine``'s one output over ``x`` in batches of ``BATCH`` (copied: see infer)."""
    name, out = engine.inputs[0].name, engine.outputs[0].name
    return np.concatenate([engine.infer({name: np.asarray(x[i:i + BATCH], np.float32)})[out]
                           .copy() for i in range(0, len(x), BATCH)])


def _views(data: ArraySet) -> tuple[np.ndarray, np.ndarray]:
    """(B-mode frames, CEUS windows) of a bimodal set; ``DataError`` when one is missing."""
    if data.bmode is None or data.ceus is None:
        raise DataError("the INT8 check needs bimodal data (B-mode frames and CEUS windows)")
    return data.bmode, data.ceus


def _features(bmode: OnnxRuntimeEngine, ceus: OnnxRuntimeEngine, data: ArraySet,
              idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(B-mode features (n, F), CEUS features (n, T, G)) of windows ``idx``."""
    bmodes, windows = _views(data)
    b, c = [], []
    for i in range(0, len(idx), BATCH):
        k = idx[i:i + BATCH]
        b.append(_encode(bmode, bmodes[k]))
        win = np.asarray(windows[k], np.float32)
        c.append(_encode(ceus, win.reshape(-1, *win.shape[2:])).reshape(len(k), win.shape[1], -1))
    return np.concatenate(b), np.concatenate(c)


def _head_feeds(head: OnnxRuntimeEngine, bfeat: np.ndarray,
                cfeat: np.ndarray) -> dict[str, np.ndarray]:
    """The head's feeds by name: the 3-D input takes the CEUS features, the other B-mode's."""
    return {s.name: (cfeat if len(s.shape) == 3 else bfeat) for s in head.inputs}


def _head_probs(head: OnnxRuntimeEngine, bfeat: np.ndarray, cfeat: np.ndarray) -> np.ndarray:
    out, feeds = head.outputs[0].name, _head_feeds(head, bfeat, cfeat)
    return np.concatenate([head.infer({k: v[i:i + BATCH] for k, v in feeds.items()})[out].copy()
                           for i in range(0, len(bfeat), BATCH)])


def time_graph(fp32: Path, int8: Path, feed: dict[str, np.ndarray], threads: int,
               runs: int = TIMED_RUNS, chunk: int = 10) -> dict[str, float]:
    """p50 latency (ms) of batch-1 ``feed`` through the two graphs, interleaved
    (``core.timing.interleaved_ms``): rounds of ``chunk`` calls each, the order alternating,
    after an untimed call (so a background load hits both alike)."""
    engines = [OnnxRuntimeEngine(p, threads=threads) for p in (fp32, int8)]
    try:
        ms = interleaved_ms({"fp32": [partial(engines[0].infer, feed)],
                             "int8": [partial(engines[1].infer, feed)]},
                            runs, chunk=chunk, warmup=10, settle=1)
    finally:
        for e in engines:
            e.close()
    p50 = [float(np.median(ms[k])) for k in ("fp32", "int8")]
    return {"fp32_p50_ms": round(p50[0], 4), "int8_p50_ms": round(p50[1], 4),
            "speedup": round(p50[0] / p50[1], 4)}


def thread_counts() -> list[int]:
    """One thread and the live path's default (the cores this process may use)."""
    return sorted({1, cpu_budget()})


def score(probs: np.ndarray, y: np.ndarray, temperature: float,
          reference: np.ndarray | None = None) -> dict[str, Any]:
    """Accuracy, ECE with ``temperature`` applied, and agreement of the top class with
    ``reference`` probabilities (fp32's) when given."""
    from hepascope.train.evaluation.calibration import calibrate
    from hepascope.train.evaluation.metrics import expected_calibration_error

    out: dict[str, Any] = {"accuracy": float(np.mean(probs.argmax(1) == y)),
                           "ece": expected_calibration_error(y, calibrate(probs, temperature))}
    if reference is not None:
        out["agreement_with_fp32"] = float(np.mean(probs.argmax(1) == reference.argmax(1)))
    return out


def validation_probs(fp32_dir: Path, int8_dir: Path, data: ArraySet, val_idx: np.ndarray,
                     configs: dict[str, list[str]]) -> dict[str, np.ndarray]:
    """Probabilities over windows ``val_idx`` of each configuration (name: the graphs that
    run INT8, from ``int8_dir``; the others fp32, from ``fp32_dir``). Each encoder runs
    once per precision: the head combines the features."""
    feats: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    heads: dict[str, OnnxRuntimeEngine] = {}
    try:
        for kind, d in (("fp32", fp32_dir), ("int8", int8_dir)):
            enc = _open(d, [BMODE_FILE, CEUS_FILE], cpu_budget())
            try:
                feats[kind] = _features(enc[BMODE_FILE], enc[CEUS_FILE], data, val_idx)
            finally:
                _close(enc)
            heads[kind] = OnnxRuntimeEngine(d / HEAD_FILE, threads=cpu_budget())

        def of(g: str, int8: list[str]) -> str:
            return "int8" if g in int8 else "fp32"

        return {name: _head_probs(heads[of(HEAD_FILE, g)], feats[of(BMODE_FILE, g)][0],
                                  feats[of(CEUS_FILE, g)][1]) for name, g in configs.items()}
    finally:
        _close(heads)


def _set_parts(path: Path, parts: dict[str, str]) -> None:
    """Rewrite ``path``'s parts metadata (which encoder files its head runs with)."""
    import onnx

    model = onnx.load(str(path))
    for p in model.metadata_props:
        if p.key == META_PARTS:
            p.value = json.dumps(parts)
    onnx.save(model, str(path))


def install(directory: Path, int8_dir: Path, int8_graphs: list[str]) -> list[str]:
    """Write the INT8 configuration beside the fp32 graphs (removing any older one); with
    no INT8 graph, only remove. Returns the files written."""
    for name in BIMODAL_GRAPHS:
        (directory / int8_file(name)).unlink(missing_ok=True)
    if not int8_graphs:
        return []
    written = []
    for name in (BMODE_FILE, CEUS_FILE):
        if name in int8_graphs:
            shutil.copyfile(int8_dir / name, directory / int8_file(name))
            written.append(int8_file(name))
    head_src = int8_dir if HEAD_FILE in int8_graphs else directory
    shutil.copyfile(head_src / HEAD_FILE, directory / INT8_HEAD_FILE)
    _set_parts(directory / INT8_HEAD_FILE,
               {ROLE_BMODE: int8_file(BMODE_FILE) if BMODE_FILE in int8_graphs else BMODE_FILE,
                ROLE_CEUS: int8_file(CEUS_FILE) if CEUS_FILE in int8_graphs else CEUS_FILE})
    return [*written, INT8_HEAD_FILE]


def record(directory: Path, block: dict[str, Any], files: list[str]) -> dict[str, Any]:
    """Put ``block`` into the manifest as ``precision`` and list ``files`` (and the fp32
    graphs, nothing else) with their SHA-256."""
    path = directory / MANIFEST_FILE
    manifest: dict[str, Any] = json.loads(path.read_text())
    manifest["files"] = {n: sha256_file(directory / n) for n in (*BIMODAL_GRAPHS, *files)}
    manifest["precision"] = block
    path.write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def _speed(directory: Path, int8_dir: Path,
           feeds: dict[str, list[dict[str, np.ndarray]]]) -> dict[str, dict[str, Any]]:
    """Per graph: fp32 vs INT8 p50 at each thread count of ``thread_counts``."""
    return {name: {f"threads_{t}": time_graph(directory / name, int8_dir / name,
                                              feeds[name][0], t) for t in thread_counts()}
            for name in BIMODAL_GRAPHS}


def _machine() -> dict[str, Any]:
    """Where the timings were taken: CPU, cores, and the load when timing began (other
    work on the cores slows both precisions, interleaved, but widens the spread)."""
    import os
    import platform

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((ln.split(":", 1)[1].strip() for ln in f
                        if ln.startswith("model name")), cpu)
    except OSError:
        pass
    return {"cpu": cpu, "cores": cpu_budget(),
            "load_1min": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None}


def apply_precision(directory: Path, data: ArraySet, train_idx: np.ndarray,
                    val_idx: np.ndarray, temperature: float, *, seed: int = 0,
                    notes: dict[str, Any] | None = None, progress: Any = None,
                    max_drop: float = MAX_ACCURACY_DROP,
                    min_speedup: float = MIN_SPEEDUP) -> dict[str, Any]:
    """The precision step on the fp32 export in ``directory`` (with its manifest):
    quantise with training windows ``train_idx``, time, score validation windows
    ``val_idx``, decide (``decide``'s limits), install the INT8 configuration or not, and
    record the figures (and ``notes``) in the manifest's ``precision`` block. Returns it."""
    import onnxruntime

    from hepascope.train.engine_build.quantize import quantize_int8
    from hepascope.train.evaluation.calibration import fit_temperature

    say = progress or (lambda msg: None)
    y = data.labels[val_idx]
    with tempfile.TemporaryDirectory(prefix="hepascope-int8-") as tmp:
        q = Path(tmp)
        say(f"quantising the graphs on {min(CALIB_WINDOWS, len(train_idx))} training windows")
        feeds = int8_feeds(directory, data, train_idx, seed)
        for name in BIMODAL_GRAPHS:
            quantize_int8(directory / name, q / name, feeds[name])
        say("timing fp32 against INT8 per graph")
        machine = _machine()
        speed = _speed(directory, q, feeds)
        speedup = {n: min(v["speedup"] for v in s.values()) for n, s in speed.items()}
        faster = sorted(n for n, s in speedup.items() if s >= min_speedup)
        say(f"scoring {len(val_idx)} validation windows in fp32 and INT8")
        configs = {"fp32": [], "int8": faster, "int8_all_graphs": list(BIMODAL_GRAPHS)}
        probs = validation_probs(directory, q, data, val_idx, configs)
        scores = {k: {**score(p, y, temperature, probs["fp32"]),
                      "temperature_refit": fit_temperature(p, y)} for k, p in probs.items()}
        decision = decide(scores["fp32"]["accuracy"], scores["int8"]["accuracy"], speedup,
                          max_drop=max_drop, min_speedup=min_speedup)
        files = install(directory, q, decision["int8_graphs"])
    block = {
        **decision, "entry": INT8_HEAD_FILE if files else HEAD_FILE,
        "rule": {"max_accuracy_drop": max_drop, "min_speedup": min_speedup,
                 "speedup": "fp32 p50 / INT8 p50 of batch-1 calls, interleaved, the worst "
                            "over thread counts", "runs": TIMED_RUNS},
        "validation": {"windows": len(val_idx),
                       "patients": len(np.unique(data.groups[val_idx])),
                       "temperature": temperature, **scores},
        "speed": speed, "speedup": speedup,
        "quantization": {"format": "QDQ", "method": "minmax", "weights": "int8 per channel",
                         "activations": "uint8", "calibration_windows":
                         min(CALIB_WINDOWS, len(train_idx)), "from": "training windows"},
        "onnxruntime": onnxruntime.__version__, "threads": thread_counts(), "machine": machine,
        "date": time.strftime("%Y-%m-%d"), **(notes or {})}
    record(directory, block, files)
    return block
