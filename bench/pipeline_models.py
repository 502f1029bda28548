"""What the pipeline benchmark sections need besides the pipeline: source pacing options, the
naive loop's torch model (eager, CPU, whatever GPU the machine has), and a classifier made
slower than its source on purpose (built with onnx.helper, calibrated on this machine)."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from hepascope.core.config import Config
from hepascope.core.errors import ModelError
from hepascope.core.export_format import (
    HEAD_FILE,
    META_LABELS,
    META_MODEL,
    META_PREPROCESS,
    META_ROLE,
    META_WINDOW,
    ROLE_BMODE,
    ROLE_CEUS,
)
from hepascope.core.preprocess import spec_from_dict
from hepascope.engines import open_engine
from hepascope.stream.bimodal_streamer import BimodalStreamer, describe_parts
from hepascope.stream.classifier import Classifier, FrameClassifier
from hepascope.stream.sources import SourceOptions
from hepascope.stream.sources.file import FileSource

SLOW_LABELS = ("normal", "cyst", "hemangioma", "hcc", "metastasis", "fatty_sparing")
SLOW_INPUT = (1, 1, 64, 64)
SLOW_WIDTH = 32  # channels of each slow convolution


def source_options(source: str, fps: float, *, max_rate: bool = False) -> SourceOptions:
    """Options that pace ``source`` at ``fps``: a phantom renders at ``fps``; a file loops,
    its own rate scaled to ``fps``. ``max_rate`` renders/decodes as fast as it can."""
    if fps <= 0:
        raise ValueError(f"fps must be > 0, got {fps}")
    if source.startswith("phantom:"):
        return SourceOptions(fps=fps, max_rate=max_rate)
    if "://" in source or source.startswith(("v4l2:", "cam:", "shm:")):
        raise ValueError(f"the benchmark paces phantom or file sources only, got {source!r}")
    probe = FileSource(source)
    probe.open()
    try:
        native = probe.fps or 30.0
    finally:
        probe.close()
    return SourceOptions(loop=True, speed=fps / native, max_rate=max_rate)


def _json(meta: dict[str, str], key: str, path: Path) -> object:
    try:
        return json.loads(meta[key])
    except (KeyError, json.JSONDecodeError) as e:
        raise ModelError(f"{path.name}: missing or invalid metadata {key!r}") from e


def open_torch_cpu(model: Path, config: Config, *, threads: int | None = None) -> Classifier:
    """``model`` (a bimodal export directory, or a single-image-graph export) as eager
    PyTorch modules, fp32 on CPU even where a GPU exists: the naive baseline
    (``bench/eager.py``). Needs the weights an export keeps beside its graphs
    (``ModelError`` otherwise)."""
    from hepascope.bench.eager import EagerEngine, eager_model

    p = Path(model)
    head = p / HEAD_FILE if p.is_dir() else p
    if p.is_dir() and not head.is_file():
        graphs = sorted(p.glob("*.onnx"))
        if len(graphs) != 1:
            raise ModelError(f"{p}: no {HEAD_FILE} and not one single graph")
        head = graphs[0]

    weights = eager_model(head)

    def engine(path: Path) -> EagerEngine:
        return EagerEngine(path, weights, threads=threads)

    first = engine(head)
    if first.metadata.get(META_ROLE) != "head":
        return FrameClassifier(first, config, model_name=first.metadata.get(
            META_MODEL, head.stem))
    meta = first.metadata
    parts = describe_parts(meta, head.parent)
    bmode, ceus = engine(parts[ROLE_BMODE]), engine(parts[ROLE_CEUS])
    window = _json(meta, META_WINDOW, head)
    labels = _json(meta, META_LABELS, head)
    if not isinstance(window, dict) or not isinstance(labels, list):
        raise ModelError(f"{head.name}: invalid window or labels metadata")
    return BimodalStreamer(
        bmode, ceus, first, labels=tuple(str(x) for x in labels),
        bmode_spec=spec_from_dict(_json(bmode.metadata, META_PREPROCESS, head)),
        ceus_spec=spec_from_dict(_json(ceus.metadata, META_PREPROCESS, head)),
        window=int(window["frames"]), interval_s=float(window["interval_s"]),
        model_name=meta.get(META_MODEL, "model"))


def write_slow_model(path: Path, convs: int, *, seed: int = 0) -> Path:
    """A grey 64x64 image classifier of ``convs`` 3x3 convolutions (32 channels) -> global
    average pool -> linear -> softmax, with labels: as slow as ``convs`` makes it."""
    if convs < 1:
        raise ValueError(f"convs must be >= 1, got {convs}")
    rng = np.random.default_rng(seed)
    nodes, inits, x, c = [], [], "bmode", SLOW_INPUT[1]
    for i in range(convs):
        w = rng.normal(0, (2.0 / (9 * c)) ** 0.5, (SLOW_WIDTH, c, 3, 3)).astype(np.float32)
        inits.append(numpy_helper.from_array(w, f"w{i}"))
        nodes += [helper.make_node("Conv", [x, f"w{i}"], [f"c{i}"], pads=[1, 1, 1, 1]),
                  helper.make_node("Relu", [f"c{i}"], [f"r{i}"])]
        x, c = f"r{i}", SLOW_WIDTH
    k = len(SLOW_LABELS)
    inits += [numpy_helper.from_array(rng.normal(0, 1, (c, k)).astype(np.float32), "W"),
              numpy_helper.from_array(np.zeros(k, np.float32), "b")]
    nodes += [helper.make_node("GlobalAveragePool", [x], ["gap"]),
              helper.make_node("Flatten", ["gap"], ["feat"]),
              helper.make_node("Gemm", ["feat", "W", "b"], ["logits"]),
              helper.make_node("Softmax", ["logits"], ["probs"], axis=1)]
    graph = helper.make_graph(
        nodes, "slow-classifier",
        [helper.make_tensor_value_info("bmode", TensorProto.FLOAT, list(SLOW_INPUT))],
        [helper.make_tensor_value_info("probs", TensorProto.FLOAT, [1, k])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    helper.set_model_props(model, {META_LABELS: json.dumps(list(SLOW_LABELS))})
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


def infer_ms(path: Path, *, threads: int = 1, runs: int = 5) -> float:
    """Median ONNX Runtime inference time of ``path`` (ms), after one warm-up run."""
    eng = open_engine(path, "onnxruntime", threads=threads)
    try:
        feeds = {s.name: np.zeros(s.at_batch(1, unknown=1),
                                  s.dtype) for s in eng.inputs}
        eng.infer(feeds)
        times = []
        for _ in range(runs):
            t0 = time.perf_counter()
            eng.infer(feeds)
            times.append((time.perf_counter() - t0) * 1e3)
        return float(np.median(times))
    finally:
        eng.close()


def calibrate_slow_model(work_dir: Path, target_ms: float, *,
                         threads: int = 1) -> tuple[Path, int, float]:
    """A slow model whose inference takes about ``target_ms`` here: four convolutions are
    timed, the count scaled to the target. Returns (path, convolutions, measured ms)."""
    if target_ms <= 0:
        raise ValueError(f"target_ms must be > 0, got {target_ms}")
    probe = write_slow_model(work_dir / "slow-probe.onnx", 4)
    per_conv = max(infer_ms(probe, threads=threads) / 4, 1e-3)
    convs = max(1, math.ceil(target_ms / per_conv))
    path = write_slow_model(work_dir / f"slow-{convs}.onnx", convs)
    return path, convs, infer_ms(path, threads=threads, runs=3)
