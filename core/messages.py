"""The results channel's wire format, in one place: topics, schema version, encoding and
validation. ``Result`` and ``Telemetry`` (msgspec Structs) are the schema; the same
definitions give the JSON Schema in ``core/messages.schema.json`` (regenerate with
``python -m hepascope.core.messages --schema``) and README.md documents it for
third-party subscribers.

Every message is a ZeroMQ multipart ``[topic, msgpack map]``; maps carry ``v`` (schema
version). Subscribers validate every message and drop (and count) what does not conform.
Unknown fields are allowed (a newer publisher may add optional ones); known fields must
have their type and range. Schema 2 (from schema 1) added ``run_id``, ``status``,
``t_capture_utc_ns`` and ``fault`` to results, ``run_id``, ``inference_up`` (now
required) and ``invalid_outputs`` to telemetry. Within version 2, telemetry gained the
optional ``result_age_ms`` and ``stale`` (a stream's freshness, sent by a multi-stream
run, stream/multi.py); a result's ``stream`` tells the streams of such a run apart."""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import msgpack
import msgspec
from msgspec import Meta

from hepascope.core.errors import guard_main

SCHEMA_VERSION = 2
TOPIC_RESULT = b"result"
TOPIC_TELEMETRY = b"telemetry"
STATUSES = ("ok", "uncertain", "warming_up", "model_fault")
SCHEMA_FILE = Path(__file__).with_name("messages.schema.json")

Status = Literal["ok", "uncertain", "warming_up", "model_fault"]
Count = Annotated[int, Meta(ge=0)]
Nanos = Annotated[int, Meta(ge=0, description="nanoseconds")]
Prob = Annotated[float, Meta(ge=0.0, le=1.0)]
Rate = Annotated[float, Meta(ge=0.0, description="finite")]
RunId = Annotated[str, Meta(min_length=1, max_length=64, description=(
    "random, made once per pipeline start: a restarted publisher has a new one, even with "
    "the same pid"))]
# what the frame ring accepts (stream/ring.py): an optional leading '/', then no '/' or NUL
RingName = Annotated[str, Meta(pattern="^/?[^/\x00]{1,250}$")]


MODEL_FAULT = "model_fault"  # a result's status when its output cannot be shown (fault says why)


class MessageError(ValueError):
    """A message that does not follow the schema."""


class Result(msgspec.Struct, kw_only=True):
    """A model's verdict on one frame (topic ``result``). ``status`` ``model_fault``: the
    model's output was unusable (not finite, not probabilities); ``probs`` is empty, there
    is no ``top`` and ``fault`` says why."""

    v: Literal[2]  # SCHEMA_VERSION
    stream: str
    seq: Count
    model: str
    labels: Annotated[list[str], Meta(min_length=1)]
    probs: list[Prob]
    status: Status
    run_id: RunId
    t_capture_ns: Annotated[Nanos, Meta(description="capture, publisher's monotonic clock")]
    t_capture_utc_ns: Annotated[Nanos, Meta(description="capture, wall-clock UTC")]
    t_publish_ns: Annotated[Nanos, Meta(description="publish, publisher's monotonic clock")]
    latency_ms: dict[str, float]
    top: str | None = None
    fault: str | None = None
    pts_s: float | None = None
    window_fill: Prob | None = None  # a window model (bimodal, clip): how full its window is

    def __post_init__(self) -> None:
        if self.status == "model_fault":
            if self.probs or self.top is not None or not self.fault:
                raise ValueError("a model_fault result has probs [], no top and a fault")
        else:
            if len(self.labels) != len(self.probs):
                raise ValueError("labels and probs must be non-empty and of equal length")
            if abs(math.fsum(self.probs) - 1.0) > 1e-3:
                raise ValueError("probs must sum to 1")
            if self.fault is not None:
                raise ValueError("only a model_fault result has a fault")
            if self.top is not None and self.top not in self.labels:
                raise ValueError(f"top {self.top!r} is not one of the labels")
        if not all(math.isfinite(x) for x in self.latency_ms.values()):
            raise ValueError("latency_ms must map stage names to finite numbers")
        if self.t_publish_ns < self.t_capture_ns:
            raise ValueError("t_publish_ns is before t_capture_ns")
        if self.pts_s is not None and not math.isfinite(self.pts_s):
            raise ValueError("pts_s must be finite")


class ModelEntry(msgspec.Struct):
    """One model's figures in telemetry's ``models`` list."""

    model: str


class Telemetry(msgspec.Struct, kw_only=True):
    """The heartbeat (topic ``telemetry``), every ``pipeline.telemetry_period_s``: the main
    model's figures at the top level, every model's in ``models``."""

    v: Literal[2]  # SCHEMA_VERSION
    stream: str
    t_publish_ns: Nanos
    fps_in: Rate
    fps_out: Rate
    dropped: Count
    latency_p50_ms: Rate
    latency_p99_ms: Rate
    run_id: RunId
    inference_up: bool
    model: str | None = None
    engine: str | None = None
    ring: RingName | None = None
    pid: Count | None = None
    frames_in: Count | None = None
    frames_out: Count | None = None
    invalid_outputs: Annotated[Count, Meta(description="model_fault results so far")] \
        | None = None
    models: list[ModelEntry] | None = None
    source_health: dict[str, Any] | None = None
    inference: str | None = None
    inference_pid: Count | None = None
    inference_restarts: Count | None = None
    result_age_ms: Annotated[Rate, Meta(description=(
        "ms from the capture of the stream's newest published result to now"))] | None = None
    stale: Annotated[bool, Meta(description=(
        "no result yet, or the newest result's frame older than overlay.stale_ms"))] \
        | None = None

    def __post_init__(self) -> None:
        if not all(math.isfinite(x) for x in (self.fps_in, self.fps_out, self.latency_p50_ms,
                                              self.latency_p99_ms)):
            raise ValueError("rates and latencies must be finite")


@dataclass(frozen=True, slots=True)
class RunStamp:
    """Who is publishing: ``run_id``, random per pipeline start (a restarted publisher is
    told apart even with the same pid), and the offset from the monotonic clock to UTC,
    measured once, that turns a capture time into ``t_capture_utc_ns``."""

    run_id: str
    utc_offset_ns: int

    @classmethod
    def new(cls) -> RunStamp:
        return cls(uuid.uuid4().hex, time.time_ns() - time.monotonic_ns())

    def stamp(self, msg: dict[str, Any]) -> None:
        """Add the run's id and the capture's UTC time to a result map."""
        msg["run_id"] = self.run_id
        msg["t_capture_utc_ns"] = msg["t_capture_ns"] + self.utc_offset_ns


def output_fault(probs: Sequence[float], n_labels: int) -> str | None:
    """Why ``probs`` are not a probability per label (the schema's rule), or None."""
    if len(probs) != n_labels:
        return f"{len(probs)} outputs for {n_labels} labels"
    if not all(math.isfinite(p) for p in probs):
        return "non-finite output"
    if not all(0.0 <= p <= 1.0 for p in probs):
        return "output outside [0, 1]"
    total = math.fsum(probs)
    if abs(total - 1.0) > 1e-3:
        return f"outputs sum to {total:.4g}, not 1"
    return None


def encode(msg: dict[str, Any]) -> bytes:
    return msgpack.packb(msg, use_bin_type=True)


# decode limits: what the schema can need, far below what would cost a display frame
# (a map of a million entries is refused before it is built)
_LIMITS = {"max_map_len": 256, "max_array_len": 4096, "max_str_len": 1 << 16,
           "max_bin_len": 1 << 16, "max_ext_len": 0}


def decode(payload: bytes) -> dict[str, Any]:
    try:
        msg = msgpack.unpackb(payload, raw=False, strict_map_key=True, **_LIMITS)
    except Exception as e:  # msgpack raises several unrelated classes on garbage
        raise MessageError(f"not msgpack: {type(e).__name__}") from e
    if not isinstance(msg, dict):
        raise MessageError("payload is not a map")
    return msg


def _validate(msg: dict[str, Any], schema: type[msgspec.Struct]) -> dict[str, Any]:
    v = msg.get("v")
    if type(v) is not int or v != SCHEMA_VERSION:  # never repr a value: it may nest deep
        shown = v if type(v) is int else type(v).__name__
        raise MessageError(f"schema version {shown} is not {SCHEMA_VERSION}")
    try:
        msgspec.convert(msg, schema)
    except msgspec.ValidationError as e:
        raise MessageError(str(e)) from None
    return msg


def validate_result(msg: dict[str, Any]) -> dict[str, Any]:
    """``msg`` if it is a valid ``Result``, else ``MessageError``."""
    return _validate(msg, Result)


def validate_telemetry(msg: dict[str, Any]) -> dict[str, Any]:
    """``msg`` if it is valid ``Telemetry``, else ``MessageError``."""
    return _validate(msg, Telemetry)


def parse(frames: list[bytes]) -> tuple[bytes, dict[str, Any]]:
    """(topic, validated map) of a received multipart message, or ``MessageError``."""
    if len(frames) != 2:
        raise MessageError(f"expected [topic, payload], got {len(frames)} parts")
    topic, payload = frames
    msg = decode(payload)
    if topic == TOPIC_RESULT:
        return topic, validate_result(msg)
    if topic == TOPIC_TELEMETRY:
        return topic, validate_telemetry(msg)
    raise MessageError(f"unknown topic {topic!r:.40}")


def json_schema() -> dict[str, Any]:
    """The JSON Schema of both messages (``$defs``: ``Result``, ``Telemetry``)."""
    (result, telemetry), defs = msgspec.json.schema_components(
        (Result, Telemetry), ref_template="#/$defs/{name}")
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": f"hepascope results channel, schema version {SCHEMA_VERSION}",
        "description": "Each ZeroMQ message is [topic, msgpack map]; topic 'result' carries "
        "a Result, topic 'telemetry' a Telemetry. Unknown fields are allowed. Checked "
        "besides: v == 2; status model_fault <=> probs == [] with a fault and no top; "
        "otherwise len(probs) == len(labels), probs sum to 1 (1e-3), top in labels; "
        "t_publish_ns >= t_capture_ns; every number finite.",
        "x-topics": {"result": result, "telemetry": telemetry},
        "anyOf": [result, telemetry],
        "$defs": defs,
    }


def schema_text() -> str:
    return json.dumps(json_schema(), indent=2, ensure_ascii=False) + "\n"


@guard_main
def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m hepascope.core.messages",
                                description="Write the results channel's JSON Schema.")
    p.add_argument("--schema", nargs="?", const=SCHEMA_FILE, type=Path, metavar="PATH",
                   help=f"write it to PATH (default {SCHEMA_FILE})")
    args = p.parse_args(argv)
    if args.schema is None:
        sys.stdout.write(schema_text())
        return 0
    args.schema.write_text(schema_text())
    print(f"wrote {args.schema}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
