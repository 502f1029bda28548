"""Whether the TensorRT tests can run here: ``tensorrt`` importable and of the major version
they, and the build's fp16/INT8 flags and implicit calibration, are written for (10; 11
removed those). pyproject's ``gpu`` extra pins the same range."""

from __future__ import annotations

TESTED_MAJOR = 10
TRT_REASON = ("tensorrt not importable: its wheels download libraries from pypi.nvidia.com, "
              "outside this environment's registries")


def tensorrt_skip_reason() -> str | None:
    """Why the TensorRT tests skip here (not importable, or another major version than
    10.x), or None when they run."""
    try:
        import tensorrt as trt
    except ImportError:
        return TRT_REASON
    version = str(getattr(trt, "__version__", "unknown"))
    if version.split(".")[0] != str(TESTED_MAJOR):
        return (f"TensorRT {version} installed; these tests are written for TensorRT "
                f"{TESTED_MAJOR}.x (pyproject's gpu extra: tensorrt>={TESTED_MAJOR},"
                f"<{TESTED_MAJOR + 1})")
    return None
