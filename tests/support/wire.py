"""Messages as the pipeline sends them (every field of schema v2), for tests that publish
their own: a result, a model-fault result, telemetry. Schema v1 code ignores the fields
it does not know, so the same messages can be replayed against older code."""

from __future__ import annotations

import time
from typing import Any

from hepascope.core.messages import SCHEMA_VERSION

MS = 1_000_000


def result(seq: int, run_id: str, *, t_capture_ns: int | None = None,
           t_publish_ns: int | None = None, **extra: Any) -> dict[str, Any]:
    """A result for frame ``seq``; an ``extra`` set to None removes that field."""
    pub = time.monotonic_ns() if t_publish_ns is None else t_publish_ns
    cap = pub if t_capture_ns is None else t_capture_ns
    msg = {"v": SCHEMA_VERSION, "stream": "s", "seq": seq, "model": "m",
           "labels": ["non_hcc", "hcc"], "probs": [0.3, 0.7], "top": "hcc", "status": "ok",
           "run_id": run_id, "t_capture_ns": cap, "t_capture_utc_ns": time.time_ns(),
           "t_publish_ns": pub, "latency_ms": {"total": (pub - cap) / MS}}
    msg.update(extra)
    return {k: v for k, v in msg.items() if v is not None}


def fault(seq: int, run_id: str, **extra: Any) -> dict[str, Any]:
    """A model-fault result: no probabilities, no top class, a reason."""
    return result(seq, run_id, **{"probs": [], "top": None, "status": "model_fault",
                                  "fault": "non-finite output", **extra})


def telemetry(run_id: str, pid: Any = 4242, **extra: Any) -> dict[str, Any]:
    msg = {"v": SCHEMA_VERSION, "stream": "s", "t_publish_ns": time.monotonic_ns(),
           "fps_in": 30.0, "fps_out": 30.0, "dropped": 0, "latency_p50_ms": 1.0,
           "latency_p99_ms": 2.0, "model": "m", "pid": pid, "run_id": run_id,
           "inference_up": True, **extra}
    return {k: v for k, v in msg.items() if v is not None}
