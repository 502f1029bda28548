"""FAST (pyfast; https://fast-imaging.github.io) as the live pipeline's peer: the same video,
decoded by the same code, through FAST's own streaming pipeline (a ``PythonStreamer``, then
``ColorToGrayscale``, ``ImageResizer`` and ``NeuralNetwork`` on FAST's ONNX Runtime engine),
results pulled with ``DataStream`` as a FAST user does.

    python -m hepascope.bench.peer_fast --video F.mp4 --model model.onnx --seconds 8 \\
        [--unpaced] [--size 112 112] [--mean 0.5] [--std 0.25]

Not ``MovieStreamer``: it plays a file in real time only (Qt Multimedia over GStreamer)
and its frames carry no presentation time or frame number to time a result against.

It runs in a process of its own (``run_fast``): FAST loads its own ONNX Runtime (1.22 in
pyfast 4.18) and Qt, prints a banner on stdout and must be imported in a main thread; its
figures come back as one ``PEER_RESULT {json}`` line.

Capture time on both sides is ``time.monotonic_ns()`` when hepascope's ``FileSource``
hands a decoded (and, when paced, due) frame on; here it rides with the frame as FAST frame
data (which FAST copies from each input to its outputs) and the latency is its arrival in
``DataStream`` minus that. Paced: ``NewestFrameOnly`` (FAST's newest-frame-wins, as
hepascope's ring); unpaced: ``ProcessAllFrames`` (the streamer waits for the network, as
hepascope's unpaced file source does). Timing starts at the first result (FAST's kernel
compilation and first inference excluded)."""

from __future__ import annotations

import argparse
import ctypes
import importlib.util
import json
import os
import subprocess
import sys
import threading
import time
from importlib import metadata
from pathlib import Path
from typing import Any

FAST_MODULE = "fast"  # the module pyfast installs
RESULT_TAG = "PEER_RESULT "
_CL_PLATFORM_NAME, _CL_PLATFORM_VERSION = 0x0902, 0x0901
_MS = 1e-6


def _fast_dir() -> Path | None:
    """The installed ``fast`` package's folder, None when it cannot be imported (a
    ``sys.modules`` entry of None, as tests set, counts as not installed)."""
    try:
        spec = importlib.util.find_spec(FAST_MODULE)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def opencl_platforms(lib_dir: Path | None = None) -> list[str]:
    """Names and versions of the OpenCL platforms the ICD loader finds (FAST's bundled
    loader in ``lib_dir`` where present), [] when none or no loader: read without
    importing FAST, which would print its banner and start Qt in this process."""
    names = [str(lib_dir / "libOpenCL.so.1")] if lib_dir else []
    lib = None
    for name in [*names, "libOpenCL.so.1", "libOpenCL.so"]:
        try:
            lib = ctypes.CDLL(name)
            break
        except OSError:
            continue
    if lib is None:
        return []
    count = ctypes.c_uint()
    if lib.clGetPlatformIDs(0, None, ctypes.byref(count)) != 0 or count.value == 0:
        return []
    ids = (ctypes.c_void_p * count.value)()
    lib.clGetPlatformIDs(count.value, ids, None)
    out = []
    for pid in ids:
        fields = []
        for key in (_CL_PLATFORM_NAME, _CL_PLATFORM_VERSION):
            buf = ctypes.create_string_buffer(512)
            lib.clGetPlatformInfo(ctypes.c_void_p(pid), key, len(buf), buf, None)
            fields.append(buf.value.decode(errors="replace").strip())
        out.append(" / ".join(fields))
    return out


def availability() -> dict[str, Any]:
    """``{"fast": version, "opencl": [platforms]}`` where FAST can run here, else
    ``{"not_available": why}`` (one line: what is missing and how to get it)."""
    pkg = _fast_dir()
    if pkg is None:
        return {"not_available": "pyfast is not installed (pip install pyfast)"}
    platforms = opencl_platforms(pkg / "lib")
    if not platforms:
        return {"not_available": "pyfast is installed but no OpenCL platform was found (FAST "
                "needs one; on a CPU-only machine: apt-get install pocl-opencl-icd)"}
    try:
        version = metadata.version("pyfast")
    except metadata.PackageNotFoundError:
        version = "unknown"
    return {"fast": version, "opencl": platforms}


def _streamer_class(fast: Any, video: Path, unpaced: bool) -> Any:
    """A FAST ``PythonStreamer`` over hepascope's ``FileSource`` on ``video`` (looped; at
    its own rate unless ``unpaced``): each decoded frame as a FAST image carrying its
    sequence number and capture time as frame data. The settings live in the class: FAST
    runs ``generateStream`` on its own Python object, not the one ``create`` returns."""
    from hepascope.stream.sources.file import FileSource

    class FileStreamer(fast.PythonStreamer):
        def __init__(self) -> None:
            super().__init__()
            self.createOutputPort(0)

        def generateStream(self) -> None:  # FAST's name; runs in FAST's own thread
            with FileSource(video, max_rate=unpaced, loop=True) as src:
                for frame in src:
                    if self.isStopped():
                        return
                    image = fast.Image.createFromArray(frame.image)
                    image.setFrameData("seq", str(frame.seq))
                    image.setFrameData("t_capture_ns", str(frame.t_capture_ns))
                    try:
                        self.addOutputData(0, image)
                        self.frameAdded()
                    except Exception:  # FAST raises here once the pipeline stops
                        return

    return FileStreamer


def _watchdog(seconds: float, got_result: threading.Event) -> None:
    """End the process with a ``PEER_RESULT`` error when no result came within
    ``seconds`` (``DataStream`` blocks in C++ for ever when the streamer dies)."""
    def watch() -> None:
        if not got_result.wait(seconds):
            print(RESULT_TAG + json.dumps({"error": f"FAST gave no result within "
                                           f"{seconds:.0f} s"}), flush=True)
            os._exit(1)

    threading.Thread(target=watch, daemon=True, name="peer-watchdog").start()


def measure(video: Path, model: Path, *, seconds: float, unpaced: bool,
            size: tuple[int, int], mean: float, std: float) -> dict[str, Any]:
    """Run the FAST pipeline on ``video`` (looped, at its own rate unless ``unpaced``) for
    ``seconds`` after the first result; results/s and capture->result percentiles."""
    import fast  # lazily: FAST must be imported in a main thread (the child's)
    import numpy as np

    first = threading.Event()
    _watchdog(60.0, first)
    streamer = _streamer_class(fast, video, unpaced).create()
    streamer.setStreamingMode(fast.StreamingMode_ProcessAllFrames if unpaced
                              else fast.StreamingMode_NewestFrameOnly)
    grey = fast.ColorToGrayscale.create().connect(streamer)
    # blurOnDownsampling off: FAST's Gaussian pre-blur costs ~0.2 s a frame on PoCL; off,
    # FAST does less work than hepascope's INTER_AREA resize (in FAST's favour)
    resize = fast.ImageResizer.create(size[1], size[0], blurOnDownsampling=False).connect(grey)
    # FAST feeds (x - meanIntensity) * scaleFactor / standardDeviationIntensity (x raw,
    # checked on a flat frame against ONNX Runtime): hepascope's (x / 255 - mean) / std
    net = fast.NeuralNetwork.create(str(model), scaleFactor=1.0 / 255.0,
                                    meanIntensity=255.0 * mean, standardDeviationIntensity=std,
                                    inferenceEngine="ONNXRuntime").connect(resize)
    lat_ms: list[float] = []
    t_first = t_last = 0
    first_seq = last_seq = results = 0
    for tensor in fast.DataStream(net):
        now = time.monotonic_ns()
        np.asarray(tensor)  # the probabilities reach Python, as a user's code reads them
        seq = int(tensor.getFrameData("seq"))
        if not t_first:
            t_first, first_seq = now, seq
            first.set()
            continue
        results += 1
        t_last, last_seq = now, seq
        lat_ms.append((now - int(tensor.getFrameData("t_capture_ns"))) * _MS)
        if now - t_first >= seconds * 1e9:
            break
    # no streamer.stop(): it joins the streamer thread while holding the GIL that the
    # thread needs to finish (a deadlock); main() leaves with os._exit instead
    wall = max((t_last - t_first) / 1e9, 1e-9)
    frames = last_seq - first_seq  # frames the source handed on over the same span
    return {"engine": f"FAST NeuralNetwork ({net.getInferenceEngine().getName()})",
            "mode": "unpaced" if unpaced else "paced", "seconds": round(wall, 3),
            "results": results, "results_per_s": round(results / wall, 2),
            "frames_in": frames, "dropped": max(frames - results, 0),
            "capture_to_result_p50_ms": _pct(lat_ms, 50),
            "capture_to_result_p99_ms": _pct(lat_ms, 99),
            "streaming_mode": "ProcessAllFrames" if unpaced else "NewestFrameOnly"}


def _pct(values: list[float], q: float) -> float | None:
    import numpy as np

    return round(float(np.percentile(values, q)), 3) if values else None


def run_fast(video: Path, model: Path, *, seconds: float, unpaced: bool, size: tuple[int, int],
             mean: float, std: float, timeout_s: float = 120.0) -> dict[str, Any]:
    """``measure`` in a child process; its dict, ``{"not_available": why}`` where FAST does
    not load there, or ``{"error": ...}`` with the child's last error line (a crash in FAST
    cannot take the bench with it)."""
    cmd = [sys.executable, "-m", "hepascope.bench.peer_fast", "--video", str(video),
           "--model", str(model), "--seconds", str(seconds), "--size", str(size[0]),
           str(size[1]), "--mean", str(mean), "--std", str(std)]
    env = {**os.environ, "QT_QPA_PLATFORM": os.environ.get("QT_QPA_PLATFORM", "offscreen")}
    try:
        proc = subprocess.run([*cmd, *(["--unpaced"] if unpaced else [])], env=env,
                              capture_output=True, text=True, timeout=timeout_s, check=False)
    except subprocess.TimeoutExpired:
        return {"error": f"FAST run did not finish within {timeout_s:.0f} s"}
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith(RESULT_TAG):
            out: dict[str, Any] = json.loads(line[len(RESULT_TAG):])
            return out
    tail = [x for x in proc.stderr.splitlines() if x.strip()][-1:] or [f"exit {proc.returncode}"]
    return {"error": f"FAST run failed: {tail[0][:300]}"}


def main(argv: list[str] | None = None) -> int:
    """The child: parse, measure, print one ``PEER_RESULT`` line, leave without waiting on
    FAST's threads (``os._exit``)."""
    p = argparse.ArgumentParser(prog="python -m hepascope.bench.peer_fast",
                                description=(__doc__ or "").split("\n\n")[0])
    p.add_argument("--video", type=Path, required=True)
    p.add_argument("--model", type=Path, required=True, help="a single-image ONNX graph")
    p.add_argument("--seconds", type=float, default=8.0)
    p.add_argument("--unpaced", action="store_true", help="decode as fast as FAST takes frames")
    p.add_argument("--size", type=int, nargs=2, default=(112, 112), metavar=("H", "W"))
    p.add_argument("--mean", type=float, default=0.5)
    p.add_argument("--std", type=float, default=0.25)
    args = p.parse_args(argv)
    try:
        import fast  # noqa: F401 (here, so that a FAST that cannot load is a skip, not a failure)
    except (ImportError, OSError) as e:
        print(RESULT_TAG + json.dumps({"not_available": f"pyfast does not load: {e}"}),
              flush=True)
        os._exit(0)
    try:
        out = measure(args.video, args.model, seconds=args.seconds, unpaced=args.unpaced,
                      size=tuple(args.size), mean=args.mean, std=args.std)
        code = 0
    except Exception as e:  # reported to the parent as the section's error
        out, code = {"error": f"{type(e).__name__}: {e}"}, 1
    print(RESULT_TAG + json.dumps(out), flush=True)
    os._exit(code)


if __name__ == "__main__":
    raise SystemExit(main())
