"""This machine's matrix-multiply peaks as ONNX Runtime reaches them: fp32 (``MatMul``) and
INT8 (``MatMulInteger``, uint8 x int8 -> int32, the kernel INT8 QDQ models run on), in
GFLOP/s (GOP/s for INT8), best of ``reps`` at each size.

A nominal peak (cores x clock x lanes) is wrong wherever the kernels use units it leaves out
(AVX-512 VNNI, AMX): an engine figure then reads above 100 % of it. Measured with the same
library, threads and instruction set as the engines, the floor is one the engines can reach
and none can beat by more than noise."""

from __future__ import annotations

import time

import numpy as np
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper


def _matmul_graph(n: int, int8: bool) -> bytes:
    """A ``MatMul`` (fp32) or ``MatMulInteger`` (uint8 x int8) of an (n, n) input by an
    (n, n) constant weight, serialised."""
    rng = np.random.default_rng(0)
    if int8:
        w = rng.integers(-127, 128, (n, n), dtype=np.int8)
        node = helper.make_node("MatMulInteger", ["a", "w"], ["y"])
        a_type, y_type = TensorProto.UINT8, TensorProto.INT32
    else:
        w = rng.standard_normal((n, n)).astype(np.float32)
        node = helper.make_node("MatMul", ["a", "w"], ["y"])
        a_type = y_type = TensorProto.FLOAT
    graph = helper.make_graph(
        [node], "peak", [helper.make_tensor_value_info("a", a_type, [n, n])],
        [helper.make_tensor_value_info("y", y_type, [n, n])],
        initializer=[numpy_helper.from_array(w, "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return bytes(model.SerializeToString())


def ort_matmul_peak(threads: int, sizes: tuple[int, ...] = (1024, 2048), reps: int = 5
                    ) -> dict[str, float]:
    """{"ort_fp32": GFLOP/s, "ort_int8": GOP/s}: the best of ``reps`` runs at each of
    ``sizes`` on ``threads`` intra-op threads (a multiply-add = 2 operations)."""
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    rng = np.random.default_rng(1)
    out = {"ort_fp32": 0.0, "ort_int8": 0.0}
    for n in sizes:
        for key, int8 in (("ort_fp32", False), ("ort_int8", True)):
            sess = ort.InferenceSession(_matmul_graph(n, int8), sess_options=opts,
                                        providers=["CPUExecutionProvider"])
            a = (rng.integers(0, 256, (n, n), dtype=np.uint8) if int8
                 else rng.standard_normal((n, n)).astype(np.float32))
            sess.run(None, {"a": a})  # warm-up: packing, thread pool
            best = float("inf")
            for _ in range(reps):
                t0 = time.perf_counter()
                sess.run(None, {"a": a})
                best = min(best, time.perf_counter() - t0)
            out[key] = max(out[key], 2.0 * n**3 / best / 1e9)
    return out

