"""``hepascope build``: an ONNX model to a TensorRT plan and its sidecar.

The static op check (``train/engine_build/trt_ops``) runs first and refuses a graph that needs a
plugin. The ONNX parser's errors are collected into one ``ModelError``. Each input gets
an optimisation profile with batch min 1, opt 1 (the live pipeline's batch), max
``max_batch``. A timing cache (``timing.cache`` beside the plan unless given) is loaded and
saved again, so rebuilds skip tactic timing. ``fp16`` adds the FP16 flag; ``int8``
calibrates with an entropy calibrator over frames the model's own preprocessing makes
(``train/engine_build/calib.py``) and keeps a calibration cache per model, written only
after a build that calibrated succeeded and reused only when whole
(``train/engine_build/calibrator.py``); an explicitly quantised
(QDQ) model, from ``python -m hepascope.train.engine_build.quantize``, needs no calibrator.

In reduced precision SimAM's layers are pinned to fp32 (with OBEY_PRECISION_CONSTRAINTS).
Our SimAM already takes a *mean* of squared deviations, which cannot overflow fp16 where
the reference's sum over H*W can; the pin is belt and braces against a future export (or
a fusion) that sums. TensorRT 11 removed the FP16/INT8 flags and implicit calibration
(strong typing and QDQ instead): those builds say so in one line.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

import numpy as np

from hepascope.core.errors import ModelError
from hepascope.engines.plan import (
    PlanSidecar,
    Profile,
    atomic_write,
    hepascope_version,
    now_utc,
    sha256_file,
    write_plan,
)
from hepascope.train.engine_build.calibrator import CalibrationBatches as CalibrationBatches
from hepascope.train.engine_build.calibrator import make_calibrator, read_cache

if TYPE_CHECKING:
    import onnx

log = logging.getLogger("hepascope.build")
QDQ_OPS = frozenset({"QuantizeLinear", "DequantizeLinear"})
CALIB_BATCH = 8  # calibration batch size, at most max_batch
CALIB_LIMIT = 256  # frames drawn from --calib for calibration
PARAM_OPS = frozenset({"Conv", "ConvTranspose", "Gemm", "MatMul"})
CalibSource = str | Path | Sequence[dict[str, np.ndarray]] | None
QUANTIZE_HINT = ("quantise it with 'python -m hepascope.train.engine_build.quantize' and build "
                 "the QDQ model")


def load_onnx(path: Path) -> onnx.ModelProto:
    """The graph without its external weights (not needed to inspect it)."""
    import onnx

    if not path.is_file():
        raise ModelError(f"{path}: no such model file")
    try:
        return onnx.load(str(path), load_external_data=False)
    except Exception as e:  # protobuf raises its own unrelated classes
        raise ModelError(f"{path}: not an ONNX model ({type(e).__name__}: {e})") from e


def is_qdq(model: onnx.ModelProto) -> bool:
    """True for an explicitly quantised graph (QuantizeLinear / DequantizeLinear nodes)."""
    return any(n.op_type in QDQ_OPS for n in model.graph.node)


def simam_scopes(model: onnx.ModelProto) -> list[str]:
    """Name prefixes ("/stages/stages.0/stages.0.0/attn/") of the graph's SimAM modules.
    torch names each node by its module path; SimAM sits at ``attn`` (or a path naming
    ``simam``) and, unlike coordinate attention or squeeze-excitation there, has no
    parameters: no Conv/Gemm/MatMul in its scope, and it ends in a Sigmoid."""
    ops: dict[str, set[str]] = {}
    for node in model.graph.node:
        parts = node.name.split("/")
        for i, part in enumerate(parts[:-1]):
            if part == "attn" or "simam" in part.lower():
                ops.setdefault("/".join(parts[: i + 1]) + "/", set()).add(node.op_type)
                break
    return sorted(s for s, o in ops.items()
                  if not o & PARAM_OPS and "Sigmoid" in o and "ReduceMean" in o)


def _parse(trt: ModuleType, builder: Any, logger: Any, onnx_path: Path) -> tuple[Any, Any]:
    """The network for ``onnx_path``; every parser error in one ``ModelError``."""
    flags = 0
    strongly = getattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None)
    if strongly is not None and not hasattr(trt.BuilderFlag, "FP16"):
        flags |= 1 << int(strongly)  # TensorRT 11: networks are strongly typed
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = [str(parser.get_error(i)).strip() for i in range(parser.num_errors)]
        raise ModelError(f"{onnx_path.name}: the TensorRT ONNX parser refused it: "
                         + "; ".join(errors or [logger.last_error()]))
    return network, parser


def _profile(builder: Any, network: Any, max_batch: int, opt: int = 1) -> tuple[Any, Profile]:
    """One optimisation profile: batch ``1..max_batch`` (opt ``opt``) on every input."""
    profile, shapes = builder.create_optimization_profile(), {}
    for i in range(network.num_inputs):
        t = network.get_input(i)
        dims = tuple(int(d) for d in t.shape)
        if any(d < 0 for d in dims[1:]):
            raise ModelError(f"input {t.name!r} {dims}: only the batch axis may be dynamic")
        if dims[0] >= 0 and dims[0] != max_batch:
            raise ModelError(f"input {t.name!r} has a fixed batch of {dims[0]}; export it "
                             f"with a dynamic batch axis to build for up to {max_batch}")
        lo = dims if dims[0] >= 0 else (1, *dims[1:])
        mid = dims if dims[0] >= 0 else (min(opt, max_batch), *dims[1:])
        hi = (max_batch, *dims[1:])
        profile.set_shape(t.name, lo, mid, hi)
        shapes[t.name] = (lo, mid, hi)
    return profile, shapes


def pin_fp32(trt: ModuleType, network: Any, scopes: Sequence[str]) -> list[str]:
    """Pin the float layers of ``scopes`` to fp32 (precision and output types); return
    their names. Layers with a non-float input or output (shape arithmetic) are left."""
    floats = {trt.float32, trt.float16}
    pinned = []
    for i in range(network.num_layers):
        layer = network.get_layer(i)
        if not any(s in layer.name for s in scopes):
            continue
        ins = [layer.get_input(j) for j in range(layer.num_inputs)]
        outs = [layer.get_output(j) for j in range(layer.num_outputs)]
        if not all(t.dtype in floats for t in [*ins, *outs] if t is not None):
            continue
        layer.precision = trt.float32
        for j in range(layer.num_outputs):
            layer.set_output_type(j, trt.float32)
        pinned.append(layer.name)
    return pinned


def _timing_cache(config: Any, path: Path, logger: Any) -> Any:
    """Set ``path``'s timing cache on ``config`` (a new one where TensorRT cannot use the
    file: another TensorRT or GPU wrote it) and return it. ``create_timing_cache`` returns
    None when it fails: a ``ModelError`` here, not a TypeError in ``set_timing_cache``."""
    data = path.read_bytes() if path.is_file() else b""
    cache = config.create_timing_cache(data) if data else None
    if cache is not None and config.set_timing_cache(cache, False):
        return cache
    if data:
        log.warning("%s: timing cache not usable here, starting a new one", path)
    cache = config.create_timing_cache(b"")
    if cache is None or not config.set_timing_cache(cache, False):
        raise ModelError(f"TensorRT could not create a timing cache for {path.name} "
                         f"({logger.last_error()})")
    return cache


def _check_ops(model: onnx.ModelProto, name: str) -> None:
    from hepascope.train.engine_build.trt_ops import check_trt_ops

    problems = check_trt_ops(model)
    if problems:
        more = (f" (+{len(problems) - 1} more: python -m "
                f"hepascope.train.engine_build.trt_ops {name})") if len(problems) > 1 else ""
        raise ModelError(f"{name}: TensorRT cannot import it without a plugin: "
                         f"{problems[0]}{more}")


def _precision(trt: ModuleType, config: Any, *, fp16: bool, int8: bool, qdq: bool) -> str:
    """Set the builder flags for the precision asked; its sidecar name."""
    flags = trt.BuilderFlag
    if fp16 and not hasattr(flags, "FP16"):
        raise ModelError(f"TensorRT {trt.__version__} has no --fp16 (weak typing was removed "
                         "in 11): convert the ONNX model to fp16 first and build it as is")
    if qdq:
        if hasattr(flags, "INT8"):  # TensorRT 10: explicit quantization, weakly typed
            config.set_flag(flags.INT8)
        if fp16:
            config.set_flag(flags.FP16)
        return "qdq"
    if int8 and not (hasattr(flags, "INT8") and hasattr(config, "int8_calibrator")):
        raise ModelError(f"TensorRT {trt.__version__} removed INT8 calibration: "
                         f"{QUANTIZE_HINT}")
    if int8:
        config.set_flag(flags.INT8)
        config.set_flag(flags.FP16)  # layers without an int8 kernel fall back to fp16
        return "int8"
    if fp16:
        config.set_flag(flags.FP16)
        return "fp16"
    return "fp32"


def _calibration(trt: ModuleType, builder: Any, config: Any, network: Any, *, onnx_path: Path,
                 calib: CalibSource, cache: Path, max_batch: int, limit: int,
                 context: Any) -> Any:
    """Attach an entropy calibrator (and its static calibration profile) to ``config``.
    ``calib``: data for ``engines.calib.calibration_feeds``, or the batch-1 feeds. A usable
    ``cache`` is reused; an unusable one is refused, or replaced when there is data."""
    names = [network.get_input(i).name for i in range(network.num_inputs)]
    cached, problem = read_cache(cache, names)
    batches = None
    if cached is None:
        if calib is None:
            if problem:
                raise ModelError(f"{cache}: not a usable calibration cache ({problem}); "
                                 f"calibrate again with --calib DATA, or {QUANTIZE_HINT}")
            raise ModelError(f"--int8 needs --calib DATA to calibrate, or {QUANTIZE_HINT}")
        if problem:
            log.warning("%s: not a usable calibration cache (%s); calibrating again", cache,
                        problem)
        if isinstance(calib, (str, Path)):
            from hepascope.train.engine_build.calib import calibration_feeds

            feeds = calibration_feeds(onnx_path, calib, limit=limit, seed=0)
        else:
            feeds = list(calib)[:limit]
        size = max(1, min(CALIB_BATCH, max_batch, len(feeds)))
        batches = CalibrationBatches(feeds, size, names)
        log.info("calibrating on %d batches of %d", len(batches), size)
    size = batches.batch_size if batches is not None else 1
    profile, _ = _profile(builder, network, size, opt=size)
    calibrator = make_calibrator(trt, batches, cache, cached, context)
    config.int8_calibrator = calibrator
    config.set_calibration_profile(profile)
    return calibrator


@dataclass(frozen=True)
class _Job:
    """One ``build_plan`` call's checked arguments."""

    src: Path
    plan: Path
    model: onnx.ModelProto
    digest: str
    fp16: bool
    int8: bool
    calib: CalibSource
    calib_limit: int
    calib_cache: Path
    max_batch: int
    workspace_mb: int
    timing_cache: Path


def build_plan(onnx_path: str | Path, out: str | Path | None = None, *, fp16: bool = False,
               int8: bool = False, calib: CalibSource = None,
               calib_limit: int = CALIB_LIMIT, calib_cache: str | Path | None = None,
               max_batch: int = 1, workspace_mb: int = 1024,
               timing_cache: str | Path | None = None, device: int = 0) -> Path:
    """Build ``onnx_path`` into a TensorRT plan at ``out`` (default ``MODEL.plan`` beside
    it) with its sidecar ``out + ".json"``; return the plan's path. ``calib`` (for
    ``int8``) is calibration data (see ``engines.calib``) or batch-1 feeds; the calibration
    cache defaults to ``MODEL.<sha256[:12]>.calib`` beside the plan, so a changed model is
    never calibrated from a stale cache. See the module doc."""
    src = Path(onnx_path)
    if fp16 and int8:
        raise ModelError("choose --fp16 or --int8, not both")
    if max_batch < 1 or workspace_mb < 1 or calib_limit < 1:
        raise ModelError("max_batch, workspace_mb and calib_limit must be >= 1")
    plan = Path(out) if out is not None else src.with_suffix(".plan")
    model = load_onnx(src)
    _check_ops(model, src.name)
    digest = sha256_file(src)
    job = _Job(src, plan, model, digest, fp16, int8, calib, calib_limit,
               Path(calib_cache) if calib_cache else
               plan.with_name(f"{src.stem}.{digest[:12]}.calib"), max_batch, workspace_mb,
               Path(timing_cache) if timing_cache else plan.parent / "timing.cache")
    from hepascope.engines.cuda import CudaContext
    from hepascope.engines.tensorrt import import_tensorrt

    trt = import_tensorrt()
    ctx = CudaContext(device)
    try:
        with ctx:
            _build(trt, ctx, job)
    finally:
        ctx.close()
    return plan


def _configure(trt: ModuleType, builder: Any, network: Any, logger: Any,
               job: _Job) -> tuple[Any, Any, Profile, str, list[str]]:
    """The builder config for ``job``: (config, timing cache, profile shapes, precision,
    the layers pinned to fp32)."""
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, job.workspace_mb << 20)
    profile, shapes = _profile(builder, network, job.max_batch)
    if config.add_optimization_profile(profile) < 0:
        raise ModelError(f"{job.src.name}: TensorRT refused the optimisation profile "
                         f"{shapes} ({logger.last_error()})")
    cache = _timing_cache(config, job.timing_cache, logger)
    qdq = is_qdq(job.model)
    precision = _precision(trt, config, fp16=job.fp16, int8=job.int8 and not qdq, qdq=qdq)
    pinned: list[str] = []
    if precision in ("fp16", "int8"):
        pinned = pin_fp32(trt, network, simam_scopes(job.model))
        if pinned:
            config.set_flag(trt.BuilderFlag.OBEY_PRECISION_CONSTRAINTS)
    return config, cache, shapes, precision, pinned


def _build(trt: ModuleType, ctx: Any, job: _Job) -> None:
    """Build and write ``job``'s plan, sidecar, timing cache and, after an INT8 build that
    calibrated and succeeded, its calibration cache (``ctx`` current)."""
    from hepascope.engines.tensorrt import make_logger

    logger = make_logger(trt)
    builder = trt.Builder(logger)
    network, _parser = _parse(trt, builder, logger, job.src)  # the parser owns weights
    config, cache, shapes, precision, pinned = _configure(trt, builder, network, logger, job)
    calibrator = None
    try:
        if precision == "int8":
            calibrator = _calibration(
                trt, builder, config, network, onnx_path=job.src, calib=job.calib,
                cache=job.calib_cache, max_batch=job.max_batch, limit=job.calib_limit,
                context=ctx)
        serialized = builder.build_serialized_network(network, config)
        if calibrator is not None and calibrator.error is not None:
            raise calibrator.error
        if serialized is None:
            raise ModelError(f"{job.src.name}: TensorRT built no engine "
                             f"({logger.last_error()})")
        job.plan.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(job.timing_cache, bytes(cache.serialize()))
        write_plan(job.plan, serialized, PlanSidecar(
            tensorrt_version=trt.__version__, gpu_name=ctx.name,
            compute_capability=ctx.compute_capability, onnx_sha256=job.digest,
            onnx_name=job.src.name,
            onnx_metadata={p.key: p.value for p in job.model.metadata_props},
            precision=precision, max_batch=job.max_batch, profiles=(shapes,),
            fp32_layers=tuple(pinned), built_at=now_utc(),
            hepascope_version=hepascope_version()))
        if calibrator is not None:
            calibrator.save()  # only now: the calibration and the build succeeded
        log.info("built %s (%s, batch 1..%d, %d layers pinned to fp32)", job.plan,
                 precision, job.max_batch, len(pinned))
    except BaseException:
        if calibrator is not None:
            with contextlib.suppress(ModelError):  # the build's own error wins
                calibrator.close()
        raise
    if calibrator is not None:
        calibrator.close()
