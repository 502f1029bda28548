"""The bimodal model's two encoders per frame, three ways, for ``bench/engine_compare.py``:
``sequential`` (one engine per branch, all cores each, one after the other: what
``BimodalStreamer`` does), ``parallel`` (one 1-thread engine per branch, run at once on
two threads; ONNX Runtime releases the GIL) and ``merged`` (both encoders as one graph,
one ``run`` per frame, ONNX Runtime's parallel executor running the two branches side by
side, 1 intra-op thread each)."""

from __future__ import annotations

import json
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from hepascope.core.export_format import BMODE_FILE, CEUS_FILE, CHECKPOINT_META
from hepascope.engines.onnxruntime import OnnxRuntimeEngine, OrtTuning, cpu_budget

ENCODERS = (BMODE_FILE, CEUS_FILE)


def export_branches(name_or_ckpt: str, out: Path) -> tuple[Path, str]:
    """Export the bimodal split of a checkpoint directory, or of registered model
    ``name_or_ckpt`` at its default sizes with random weights (speed does not depend on
    them); returns the directory and what was exported."""
    from hepascope.core.config import load_config
    from hepascope.core.preprocess import PreprocessSpec
    from hepascope.train.checkpoint import load_checkpoint
    from hepascope.train.export import export_bimodal
    from hepascope.train.models import create_model

    if (Path(name_or_ckpt) / CHECKPOINT_META).is_file():
        model, meta = load_checkpoint(name_or_ckpt)
        what = f"checkpoint {name_or_ckpt} ({meta['model']})"
    else:
        model = create_model(name_or_ckpt, num_classes=2).eval()
        cfg = load_config()
        m: Any = model
        meta = {"model": name_or_ckpt, "labels": ["a", "b"], "window": m.window,
                "interval_s": 1.0, "preprocess": {
                    v: PreprocessSpec(cfg.layout, cfg.preprocess, size, 1, (v,)).to_dict()
                    for v, size in (("bmode", m.bmode_size), ("ceus", m.ceus_size))}}
        what = f"{name_or_ckpt}, random weights"
    export_bimodal(model, meta, out)
    return out, what


def _merge(d: Path) -> Path:
    """One graph holding both encoders, side by side (no edge between them)."""
    import onnx
    from onnx import compose

    b, c = (onnx.load(str(d / f)) for f in ENCODERS)
    for m in (b, c):  # their metadata differs (role, preprocess): the merge needs none
        del m.metadata_props[:]
    merged = compose.merge_models(
        compose.add_prefix(b, "b_", rename_inputs=False, rename_outputs=False),
        compose.add_prefix(c, "c_", rename_inputs=False, rename_outputs=False), io_map=[])
    path = d / "encoders.merged.onnx"
    onnx.save(merged, str(path))
    return path


def _inputs(engine: OnnxRuntimeEngine) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {s.name: rng.standard_normal(s.at_batch(1, unknown=1)
                                        ).astype(np.float32) for s in engine.inputs}


def branch_modes(d: Path) -> tuple[dict[str, Callable[[], dict[str, np.ndarray]]],
                                   Callable[[], None], dict[str, Any]]:
    """Per-frame callables (each returns both features), a closer, and the layout facts."""
    import onnxruntime as ort

    seq = [OnnxRuntimeEngine(d / f) for f in ENCODERS]
    one = [OnnxRuntimeEngine(d / f, threads=1) for f in ENCODERS]
    xb, xc = _inputs(seq[0]), _inputs(seq[1])
    pool = ThreadPoolExecutor(max_workers=1)
    opts = OrtTuning().session_options(1)
    opts.execution_mode = ort.ExecutionMode.ORT_PARALLEL
    opts.inter_op_num_threads = 2
    opts.add_session_config_entry("session.inter_op.allow_spinning", "0")
    merged = ort.InferenceSession(str(_merge(d)), sess_options=opts,
                                  providers=["CPUExecutionProvider"])
    feeds = {**xb, **xc}

    def sequential() -> dict[str, np.ndarray]:
        return {**seq[0].infer(xb), **seq[1].infer(xc)}

    def parallel() -> dict[str, np.ndarray]:
        other = pool.submit(one[1].infer, xc)
        return {**one[0].infer(xb), **other.result()}

    def together() -> dict[str, np.ndarray]:
        names = [o.name for o in merged.get_outputs()]
        return dict(zip(names, merged.run(None, feeds), strict=True))

    def close() -> None:
        pool.shutdown()
        for e in seq + one:
            e.close()

    facts = {"threads": cpu_budget(), "inputs": {k: list(v.shape) for k, v in feeds.items()}}
    return {"sequential": sequential, "parallel": parallel, "merged": together}, close, facts


def _ignore_input(f: Callable[[], dict[str, np.ndarray]]) -> Callable[[np.ndarray], Any]:
    return lambda _x: f()


def branch_rows(d: Path, runs: int, chunk: int, time_fn: Callable[..., dict[str, np.ndarray]]
                ) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """p50/p99 (ms) of each mode, its speed-up over sequential and max |feature diff|."""
    from hepascope.bench.variant import Variant

    modes, close, facts = branch_modes(d)
    try:
        ref = {k: v.copy() for k, v in modes["sequential"]().items()}
        variants = [Variant(n, n, [_ignore_input(f)], lambda: None, 0.0)
                    for n, f in modes.items()]
        lat = time_fn(variants, np.zeros(1), runs, chunk=chunk)
        diffs = {n: max(float(np.abs(f()[k] - ref[k]).max()) for k in ref)
                 for n, f in modes.items()}
    finally:
        close()
    base = float(np.percentile(lat["sequential"], 50))
    rows = [{"mode": n, "p50_ms": float(np.percentile(t, 50)),
             "p99_ms": float(np.percentile(t, 99)),
             "speedup": base / float(np.percentile(t, 50)), "max_abs_dfeat": diffs[n]}
            for n, t in lat.items()]
    return rows, facts


def branch_table(res: dict[str, Any]) -> list[str]:
    """The markdown section of the two-branch rows."""
    b = res["branches"]
    out = ["", "## Two branches per frame (bimodal encoders)", "",
           f"{b['model']}; inputs {json.dumps(b['facts']['inputs'])}. "
           + __doc__.split("per frame, three ways, for ``bench/engine_compare.py``:")[1]
           .strip().replace("\n", " "),
           "", "| mode | p50 ms | p99 ms | speed-up vs sequential | max abs Δfeature |",
           "|---|---|---|---|---|"]
    out += [f"| {r['mode']} | {r['p50_ms']:.2f} | {r['p99_ms']:.2f} | {r['speedup']:.2f} "
            f"| {r['max_abs_dfeat']:.1e} |" for r in b["rows"]]
    return out
