"""ONNX Runtime on CPU: the embedded default engine, with its session tuned.

``OrtTuning`` holds every setting that changes speed; ``OrtTuning.plain()`` is what ONNX
Runtime does when asked nothing. What each setting does to ResNet-18 at 224x224 on 2 cores
(``python -m hepascope.bench.engine_compare --knobs --neighbour``, results in
``bench/results/cpu-2core/*/engines/``): the "all" graph level (NCHWc blocked
convolutions) is 1.6x faster than "extended"/"basic"; 2 threads 1.6-1.75x faster than 1;
spinning threads are 2-6% faster on an idle machine but 15% slower (up to 1.6x under
heavier load) beside another busy process, which the pipeline always has (capture,
decoding), so they are off; dynamic block sizing, denormals-as-zero, the arena and memory
pattern and I/O binding change nothing measurable (within 2%), so ORT's defaults stay
(I/O binding is kept: outputs land in buffers allocated once)."""

from __future__ import annotations

import hashlib
import os
import platform
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort

from hepascope.core.errors import ModelError
from hepascope.engines.interface import Dim, TensorSpec, check_feeds

_ORT_TYPES: dict[str, np.dtype] = {
    "tensor(float)": np.dtype(np.float32),
    "tensor(float16)": np.dtype(np.float16),
    "tensor(double)": np.dtype(np.float64),
    "tensor(uint8)": np.dtype(np.uint8),
    "tensor(int8)": np.dtype(np.int8),
    "tensor(int32)": np.dtype(np.int32),
    "tensor(int64)": np.dtype(np.int64),
    "tensor(bool)": np.dtype(np.bool_),
}
_LEVELS = {
    "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,  # + NCHWc layout (x86 blocked convs)
}


def cpu_budget() -> int:
    """Cores this process may run on (affinity and cgroup-style limits seen by the OS)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def tensor_spec(arg: ort.NodeArg) -> TensorSpec:
    """An ORT input/output as a ``TensorSpec`` (symbolic dims become None)."""
    dtype = _ORT_TYPES.get(arg.type)
    if dtype is None:
        raise ModelError(f"tensor {arg.name!r} has unsupported type {arg.type}")
    shape: tuple[Dim, ...] = tuple(d if isinstance(d, int) else None for d in arg.shape)
    return TensorSpec(arg.name, shape, dtype)


@dataclass(frozen=True, slots=True)
class OrtTuning:
    """Session settings (defaults: the measured best, see the module docstring).
    ``optimization``: graph level (disable | basic | extended | all; "all" adds the NCHWc
    blocked-layout convolutions). ``spinning``: pool threads spin before sleeping (off: the
    cores are shared with capture, decoding and the other engines of a chain, which
    spinning threads starve). ``dynamic_block_base``: ORT's dynamic work splitting (0 =
    off). ``denormal_as_zero``: flush denormals. ``cpu_arena`` / ``mem_pattern``: ORT's
    allocator arena and planned buffers. ``io_binding``: outputs written into buffers
    allocated once (else ``run`` with a dict, a fresh array per call). ``cache_dir``: keep
    the optimised graph there, keyed by model digest, ORT version and CPU, so later
    sessions skip graph optimisation (off by default: for ResNet-18 a hit saves 10 of 130
    ms of session creation, a miss costs 100 ms and 45 MB of disk)."""

    optimization: str = "all"
    spinning: bool = False
    dynamic_block_base: int = 0
    denormal_as_zero: bool = False
    cpu_arena: bool = True
    mem_pattern: bool = True
    io_binding: bool = True
    cache_dir: Path | None = None

    def __post_init__(self) -> None:
        if self.optimization not in _LEVELS:
            raise ValueError(f"optimization must be one of {', '.join(_LEVELS)}, "
                             f"got {self.optimization!r}")
        if self.dynamic_block_base < 0:
            raise ValueError(f"dynamic_block_base must be >= 0, got {self.dynamic_block_base}")

    @classmethod
    def plain(cls) -> OrtTuning:
        """ONNX Runtime's own defaults (spinning threads, ``run`` with a dict)."""
        return cls(spinning=True, io_binding=False)

    def session_options(self, threads: int) -> ort.SessionOptions:
        opts = ort.SessionOptions()
        opts.graph_optimization_level = _LEVELS[self.optimization]
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        opts.log_severity_level = 3
        opts.enable_cpu_mem_arena = self.cpu_arena
        opts.enable_mem_pattern = self.mem_pattern
        opts.add_session_config_entry("session.intra_op.allow_spinning",
                                      "1" if self.spinning else "0")
        if self.dynamic_block_base:
            opts.add_session_config_entry("session.dynamic_block_base",
                                          str(self.dynamic_block_base))
        if self.denormal_as_zero:
            opts.add_session_config_entry("session.set_denormal_as_zero", "1")
        return opts


def _cpu_id() -> str:
    """The CPU model and flags: an optimised graph may use kernels of this CPU only."""
    try:
        with open("/proc/cpuinfo") as f:
            lines = [ln for ln in f if ln.startswith(("model name", "flags"))][:2]
    except OSError:
        lines = []
    return platform.machine() + "".join(lines)


def _cache_path(model: Path, data: bytes, tuning: OrtTuning, cache_dir: Path) -> Path:
    h = hashlib.sha256(data)
    h.update(f"\0{ort.__version__}\0{tuning.optimization}\0{_cpu_id()}".encode())
    return cache_dir / f"{model.stem}.{h.hexdigest()[:20]}.ort-opt.onnx"


def _open_session(path: Path, tuning: OrtTuning, threads: int) -> ort.InferenceSession:
    """The session; with a cache, from the stored optimised graph (no optimisation pass),
    or optimising now and storing the result atomically for the next session. The graph
    file is read once (its bytes are both hashed and loaded)."""
    if not path.is_file():
        raise ModelError(f"{path}: no such model file")
    opts = tuning.session_options(threads)
    data = path.read_bytes()
    load: str | bytes = data
    # a graph with external weights finds them beside its file, as when loaded by path
    opts.add_session_config_entry("session.model_external_initializers_file_folder_path",
                                  str(path.parent))
    store = None
    if tuning.cache_dir is not None and tuning.optimization != "disable":
        cached = _cache_path(path, data, tuning, tuning.cache_dir)
        if cached.is_file():
            load = str(cached)
            opts.graph_optimization_level = _LEVELS["disable"]
        else:
            tuning.cache_dir.mkdir(parents=True, exist_ok=True)
            store = cached
            opts.optimized_model_filepath = str(cached.with_name(f".{cached.name}.{os.getpid()}"))
    try:
        sess = ort.InferenceSession(load, sess_options=opts,
                                    providers=["CPUExecutionProvider"])
    except Exception as e:  # ORT raises its own unrelated exception classes
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ModelError(f"{path}: not a loadable ONNX model ({msg})") from e
    if store is not None and Path(opts.optimized_model_filepath).is_file():
        os.replace(opts.optimized_model_filepath, store)
    return sess


class OnnxRuntimeEngine:
    """An ONNX model on ONNX Runtime's CPU provider.

    With I/O binding (the default), outputs are written into arrays allocated once per
    shape, by tensor name (a symbolic batch axis is sized from the inputs, so exported
    models with a dynamic batch need no copy either); the returned dict holds those
    arrays, so a caller keeping a result past the next ``infer`` must copy it.
    """

    name = "onnxruntime"

    def __init__(self, path: str | Path, *, threads: int | None = None,
                 tuning: OrtTuning | None = None) -> None:
        self.path = Path(path)
        if threads is not None and threads < 1:
            raise ValueError(f"threads must be >= 1, got {threads}")
        self.tuning = tuning or OrtTuning()
        self.threads = threads or cpu_budget()
        self._session = _open_session(self.path, self.tuning, self.threads)
        self.inputs = tuple(tensor_spec(a) for a in self._session.get_inputs())
        self.outputs = tuple(tensor_spec(a) for a in self._session.get_outputs())
        meta = self._session.get_modelmeta()
        self.metadata: dict[str, str] = dict(meta.custom_metadata_map)
        self.graph_name: str = meta.graph_name
        self._in_dims = [tuple(a.shape) for a in self._session.get_inputs()]
        self._out_dims = [tuple(a.shape) for a in self._session.get_outputs()]
        self._binding = self._session.io_binding()
        self._out: dict[str, np.ndarray] = {}

    def _output_shape(self, k: int, sizes: dict[str, int]) -> tuple[int, ...] | None:
        """Output ``k``'s shape with symbolic dims named by inputs resolved, or None."""
        dims = [d if isinstance(d, int) else sizes.get(d) if isinstance(d, str) else None
                for d in self._out_dims[k]]
        return None if any(d is None for d in dims) else tuple(int(d) for d in dims)  # type: ignore[arg-type]

    def infer(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        check_feeds(self.inputs, feeds)
        if not self.tuning.io_binding:
            values = self._session.run(None, feeds)
            return {s.name: v for s, v in zip(self.outputs, values, strict=True)}
        b = self._binding
        # bind_cpu_input keeps a pointer, not a reference: hold the arrays until run returns.
        held = [np.ascontiguousarray(feeds[s.name], dtype=s.dtype) for s in self.inputs]
        sizes: dict[str, int] = {}
        for spec, dims, arr in zip(self.inputs, self._in_dims, held, strict=True):
            b.bind_cpu_input(spec.name, arr)
            sizes.update((d, n) for d, n in zip(dims, arr.shape, strict=True)
                         if isinstance(d, str))
        fixed = True
        for k, spec in enumerate(self.outputs):
            shape = self._output_shape(k, sizes)
            if shape is None:  # a size only the run knows: ORT allocates, we copy
                fixed = False
                b.bind_output(spec.name, "cpu")
                continue
            buf = self._out.get(spec.name)
            if buf is None or buf.shape != shape:
                buf = self._out[spec.name] = np.empty(shape, spec.dtype)
            b.bind_output(spec.name, "cpu", 0, buf.dtype, buf.shape, buf.ctypes.data)
        self._session.run_with_iobinding(b)
        del held
        if fixed:
            return {s.name: self._out[s.name] for s in self.outputs}
        values = b.copy_outputs_to_cpu()
        return {s.name: v for s, v in zip(self.outputs, values, strict=True)}

    def close(self) -> None:
        self._binding.clear_binding_inputs()
        self._binding.clear_binding_outputs()
        self._out.clear()
