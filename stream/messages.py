"""The results channel's wire format, in one place: topics, schema version, encoding and
validation. README.md documents the same schema for third-party subscribers.

Every message is a ZeroMQ multipart ``[topic, msgpack map]``; maps carry ``v`` (schema
version). Subscribers validate every message and drop (and count) what does not conform."""

from __future__ import annotations

import math
from typing import Any

import msgpack

SCHEMA_VERSION = 1
TOPIC_RESULT = b"result"
TOPIC_TELEMETRY = b"telemetry"

# field -> accepted Python types after msgpack decoding
_RESULT_FIELDS: dict[str, tuple[type, ...]] = {
    "v": (int,), "stream": (str,), "seq": (int,), "model": (str,), "labels": (list,),
    "probs": (list,), "t_capture_ns": (int,), "t_publish_ns": (int,), "latency_ms": (dict,),
}
_TELEMETRY_FIELDS: dict[str, tuple[type, ...]] = {
    "v": (int,), "stream": (str,), "t_publish_ns": (int,), "fps_in": (int, float),
    "fps_out": (int, float), "dropped": (int,), "latency_p50_ms": (int, float),
    "latency_p99_ms": (int, float),
}


class MessageError(ValueError):
    """A message that does not follow the schema."""


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


def _check_fields(msg: dict[str, Any], fields: dict[str, tuple[type, ...]]) -> None:
    for key, types in fields.items():
        if key not in msg:
            raise MessageError(f"missing field {key!r}")
        value = msg[key]
        if isinstance(value, bool) or not isinstance(value, types):
            raise MessageError(f"field {key!r} has type {type(value).__name__}")
    if msg["v"] != SCHEMA_VERSION:
        raise MessageError(f"schema version {msg['v']} is not {SCHEMA_VERSION}")


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def validate_result(msg: dict[str, Any]) -> dict[str, Any]:
    _check_fields(msg, _RESULT_FIELDS)
    # optional: how full a clip model's window was (held frames / T)
    if "window_fill" in msg and not (_number(msg["window_fill"])
                                     and 0.0 <= msg["window_fill"] <= 1.0):
        raise MessageError("window_fill must be a number in [0, 1]")
    labels, probs = msg["labels"], msg["probs"]
    if not labels or len(labels) != len(probs):
        raise MessageError("labels and probs must be non-empty and of equal length")
    if not all(isinstance(x, str) for x in labels):
        raise MessageError("labels must be strings")
    if not all(isinstance(p, (int, float)) and not isinstance(p, bool) and math.isfinite(p)
               and 0.0 <= p <= 1.0 for p in probs):
        raise MessageError("probs must be finite numbers in [0, 1]")
    if abs(sum(probs) - 1.0) > 1e-3:
        raise MessageError("probs must sum to 1")
    if not all(isinstance(k, str) and _number(v) for k, v in msg["latency_ms"].items()):
        raise MessageError("latency_ms must map stage names to finite numbers")
    if min(msg["seq"], msg["t_capture_ns"], msg["t_publish_ns"]) < 0:
        raise MessageError("seq and times must be >= 0")
    return msg


def validate_telemetry(msg: dict[str, Any]) -> dict[str, Any]:
    _check_fields(msg, _TELEMETRY_FIELDS)
    if msg["t_publish_ns"] < 0:
        raise MessageError("t_publish_ns must be >= 0")
    health = msg.get("source_health")  # optional: a reconnecting/guarded source's counters
    if health is not None and not (isinstance(health, dict)
                                   and all(isinstance(k, str) for k in health)):
        raise MessageError("source_health must be a map with string keys")
    models = msg.get("models")  # optional: one map per model, the main one first
    if models is not None and not (isinstance(models, list) and all(
            isinstance(m, dict) and isinstance(m.get("model"), str) for m in models)):
        raise MessageError("models must be a list of maps, each naming its model")
    return msg


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
    raise MessageError(f"unknown topic {topic!r}")
