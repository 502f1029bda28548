"""The overlay never crashes on a message: 10,000 random and mutated msgpack messages (wrong
types in every field, nested junk, huge and negative ints, NaN, unknown statuses, truncated
payloads, random bytes) go over a real loopback socket into the overlay's subscriber and
state, interleaved with valid ones. Each bad one is counted as malformed and ignored;
each valid one is taken and the newest is shown. Fixed seed: the same messages every run."""

from __future__ import annotations

import itertools
import json
import math
import random
import struct
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import msgpack
import numpy as np
import zmq
from support.wire import result, telemetry

from hepascope.core.messages import SCHEMA_VERSION, TOPIC_RESULT, TOPIC_TELEMETRY
from hepascope.stream.draw import draw_overlay
from hepascope.stream.overlay import OverlayState, run_overlay
from hepascope.stream.publish import Subscriber

SEED = 15
MESSAGES = 10_000
BATCH = 400  # below the subscriber's receive high-water mark (1000): nothing is lost
RUN = uuid.uuid4().hex

Gen = Callable[[random.Random], Any]


def _junk(rng: random.Random, depth: int = 0) -> Any:
    """Any msgpack value: scalars at their edges, strings, bytes, nested containers."""
    kinds = ["none", "bool", "int", "float", "str", "bytes"] + (["list", "map"] if depth < 4
                                                                else [])
    kind = rng.choice(kinds)
    if kind == "none":
        return None
    if kind == "bool":
        return rng.random() < 0.5
    if kind == "int":
        return rng.choice([0, 1, -1, 2, 255, -(2**63), 2**63 - 1, 2**64 - 1, rng.randint(-9, 9),
                           rng.randint(-(2**40), 2**40)])
    if kind == "float":
        return rng.choice([math.nan, math.inf, -math.inf, -0.0, 1e308, -1e-308, 0.5, 2.5])
    if kind == "str":
        return "".join(rng.choice("ab/\\\x00é漢 _-.:") for _ in range(rng.randint(0, 12)))
    if kind == "bytes":
        return rng.randbytes(rng.randint(0, 12))
    if kind == "list":
        return [_junk(rng, depth + 1) for _ in range(rng.randint(0, 4))]
    return {f"k{i}": _junk(rng, depth + 1) for i in range(rng.randint(0, 4))}


def _not(pred: Callable[[Any], bool]) -> Gen:
    """Junk that fails ``pred`` (what the field accepts)."""
    def gen(rng: random.Random) -> Any:
        while True:
            v = _junk(rng)
            if not pred(v):
                return v
    return gen


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _uint(v: Any) -> bool:
    return _is_int(v) and v >= 0


def _num(v: Any) -> bool:
    return (_is_int(v) or isinstance(v, float)) and math.isfinite(v) and v >= 0


def _finite(v: Any) -> bool:
    return (_is_int(v) or isinstance(v, float)) and math.isfinite(v)


def _str(v: Any) -> bool:
    return isinstance(v, str)


def _opt(pred: Callable[[Any], bool]) -> Callable[[Any], bool]:
    return lambda v: v is None or pred(v)


def _bad_probs(rng: random.Random) -> Any:
    return rng.choice([
        _junk(rng), [math.nan, 1.0], [0.5, math.inf], [-0.1, 1.1], [0.9, 0.9], [1.0],
        [0.3, 0.7, 0.0], ["0.3", "0.7"], [True, False], [[0.3], [0.7]], [0.3, None],
        [2**64 - 1, 0], [0.5, -(2**63)]])


def _bad_labels(rng: random.Random) -> Any:
    return rng.choice([_not(lambda v: isinstance(v, list))(rng), [], ["a"], ["a", "b", "c"],
                       [1, 2], ["a", None], [["a"], "b"], [b"a", b"b"]])


def _bad_latency(rng: random.Random) -> Any:
    return rng.choice([_not(lambda v: isinstance(v, dict) and all(
        _num(x) for x in v.values()))(rng), {"total": math.nan}, {"total": "1"},
        {"total": None}, {"total": [1]}, {"total": -math.inf}, {"total": {"a": 1}}])


def _bad_status(rng: random.Random) -> Any:
    return rng.choice(["OK", "live", "fault", "", "model fault", 1, None, ["ok"], b"ok",
                       _not(lambda v: v in ("ok", "uncertain", "warming_up", "model_fault"))(rng)])


def _bad_version(rng: random.Random) -> Any:
    return rng.choice([SCHEMA_VERSION - 1, SCHEMA_VERSION + 1, -1, 2**64 - 1, str(SCHEMA_VERSION),
                       float(SCHEMA_VERSION), True, None])


def _bad_ring(rng: random.Random) -> Any:
    return rng.choice([_not(_opt(_str))(rng), "../etc/passwd", "a/b", "\x00", "x" * 5000, ""])


def _bad_models(rng: random.Random) -> Any:
    return rng.choice([_not(_opt(lambda v: isinstance(v, list)))(rng), [1], [{}],
                       [{"model": 3}], [{"model": ["m"]}], ["m"], [None]])


# field -> junk it must refuse
RESULT_BAD: dict[str, Gen] = {
    "v": _bad_version, "stream": _not(_str), "seq": _not(_uint), "model": _not(_str),
    "labels": _bad_labels, "probs": _bad_probs, "top": lambda r: r.choice(
        [_not(_opt(_str))(r), "not_a_label"]),
    "status": _bad_status, "run_id": _not(_str), "t_capture_ns": _not(_uint),
    "t_capture_utc_ns": _not(_uint), "t_publish_ns": _not(_uint), "latency_ms": _bad_latency,
    "window_fill": lambda r: r.choice([_not(_opt(lambda v: _num(v) and v <= 1))(r), 1.5]),
    "fault": _not(_opt(_str)), "pts_s": _not(_opt(_finite)),
}
TELEMETRY_BAD: dict[str, Gen] = {
    "v": _bad_version, "stream": _not(_str), "t_publish_ns": _not(_uint), "fps_in": _not(_num),
    "fps_out": _not(_num), "dropped": _not(_uint), "latency_p50_ms": _not(_num),
    "latency_p99_ms": _not(_num), "run_id": _not(_str), "inference_up": _not(
        lambda v: isinstance(v, bool)), "model": _not(_opt(_str)), "ring": _bad_ring,
    "pid": _not(_opt(_uint)), "models": _bad_models, "invalid_outputs": _not(_opt(_uint)),
    "source_health": _not(_opt(lambda v: isinstance(v, dict))), "frames_in": _not(_opt(_uint)),
    "engine": _not(_opt(_str)),
}
REQUIRED_RESULT = ("v", "stream", "seq", "model", "labels", "probs", "status", "run_id",
                   "t_capture_ns", "t_capture_utc_ns", "t_publish_ns", "latency_ms")
REQUIRED_TELEMETRY = ("v", "stream", "t_publish_ns", "fps_in", "fps_out", "dropped",
                      "latency_p50_ms", "latency_p99_ms", "run_id", "inference_up")


def _pack(msg: Any) -> bytes:
    return msgpack.packb(msg, use_bin_type=True)


def _bad(rng: random.Random, seq: int) -> tuple[str, list[bytes]]:
    """(kind, frames) of one message the schema must refuse."""
    is_result = rng.random() < 0.6
    topic = TOPIC_RESULT if is_result else TOPIC_TELEMETRY
    good = result(seq, RUN) if is_result else telemetry(RUN, ring="hepascope-1-abc")
    bad, required = (RESULT_BAD, REQUIRED_RESULT) if is_result else \
        (TELEMETRY_BAD, REQUIRED_TELEMETRY)
    r = rng.random()
    if r < 0.55:  # one field of the wrong type or value
        key = rng.choice(sorted(bad))
        return f"{topic.decode()}.{key}", [topic, _pack({**good, key: bad[key](rng)})]
    if r < 0.65:  # a required field missing
        key = rng.choice(required)
        return "missing", [topic, _pack({k: v for k, v in good.items() if k != key})]
    if r < 0.75:  # truncated
        payload = _pack(good)
        return "truncated", [topic, payload[: rng.randrange(len(payload))]]
    if r < 0.82:  # random bytes
        return "random", [topic, rng.randbytes(rng.randint(0, 300))]
    if r < 0.88:  # not a map at the top, or junk keys
        return "shape", [topic, _pack(rng.choice([
            [good], list(good.values()), _junk(rng, 3), {1: 2, **{str(k): 0 for k in range(3)}},
            {f"k{i}": i for i in range(300)}]))]
    if r < 0.94:  # deep nesting inside a field, beyond what a packer would write
        key = rng.choice(sorted(bad))
        rest = {k: v for k, v in good.items() if k != key}
        payload = b"\xde" + struct.pack(">H", len(rest) + 1) + b"".join(
            _pack(k) + _pack(v) for k, v in rest.items())
        return "nested", [topic, payload + _pack(key) + b"\x91" * rng.randint(10, 5000)
                          + b"\x90"]
    # (a topic the subscription does not match never reaches it: only matching prefixes)
    return "framing", rng.choice([[topic], [topic, _pack(good), b"x"], [topic + b"-x", _pack(good)],
                                  [topic, b""], [topic + b"\x00", _pack(good)]])


def _messages(rng: random.Random) -> Iterator[tuple[str, list[bytes]]]:
    """Endless messages, each made when taken (fresh times): about one valid (a result or
    telemetry, some with unknown extra fields) to three bad ones."""
    seq = k = 0
    while True:
        k += 1
        if rng.random() < 0.25:
            extra = {f"x_{rng.randint(0, 99)}": _junk(rng)} if rng.random() < 0.3 else {}
            if rng.random() < 0.7:
                yield f"good:{seq}", [TOPIC_RESULT, _pack(result(seq, RUN, **extra))]
                seq += 1
            else:
                yield "good", [TOPIC_TELEMETRY, _pack(telemetry(RUN, **extra))]
        else:
            yield _bad(rng, 10**6 + k)  # a bad one never outranks a good seq


def _xpub() -> tuple[zmq.Context[Any], zmq.Socket[Any], str]:
    ctx: zmq.Context[Any] = zmq.Context()
    xpub = ctx.socket(zmq.XPUB)  # it hears the subscription: no message sent before it joined
    xpub.setsockopt(zmq.LINGER, 0)
    xpub.setsockopt(zmq.SNDHWM, 10_000)
    xpub.bind("tcp://127.0.0.1:*")
    return ctx, xpub, xpub.getsockopt_string(zmq.LAST_ENDPOINT)


def _await_subscribed(xpub: zmq.Socket[Any]) -> None:
    assert xpub.poll(10_000), "the subscriber never joined"
    while xpub.poll(200):  # both topics
        xpub.recv()


def test_ten_thousand_bad_messages_never_crash_the_overlay() -> None:
    messages = _messages(random.Random(SEED))
    sent: list[str] = []
    ctx, xpub, endpoint = _xpub()
    sub = Subscriber(endpoint, context=ctx)
    state = OverlayState(250.0, 600.0)
    canvas = np.zeros((96, 192, 3), np.uint8)
    kinds: dict[str, int] = {}
    t0 = time.monotonic()
    try:
        _await_subscribed(xpub)
        for start in range(0, MESSAGES, BATCH):
            batch = list(itertools.islice(messages, BATCH))
            sent += [k for k, _ in batch]
            n_good = sum(k.startswith("good") for k, _ in batch)
            last_seq = max((int(k[5:]) for k, _ in batch if k.startswith("good:")), default=None)
            before = (sub.received, sub.malformed)
            for kind, frames in batch:
                xpub.send_multipart(frames)
                kinds[kind.split(":")[0]] = kinds.get(kind.split(":")[0], 0) + 1
            deadline = time.monotonic() + 10
            while sub.received + sub.malformed - sum(before) < len(batch):
                assert time.monotonic() < deadline, "messages lost on loopback"
                sub.poll(50)
                now = time.monotonic_ns()
                for topic, msg in sub.drain():
                    state.update(topic, msg, now)
                    state.view(now)
            assert sub.received - before[0] == n_good, f"batch at {start}"
            assert sub.malformed - before[1] == len(batch) - n_good, f"batch at {start}"
            view = state.view(time.monotonic_ns())
            draw_overlay(canvas, view)
            if last_seq is not None:  # the valid ones interleaved are still shown
                assert state.result is not None and state.result["seq"] == last_seq
                # LIVE unless this (loaded) machine took longer than stale_ms to get here
                # (then STALE, or NO DATA once nothing came for the 600-ms heartbeat timeout)
                if (view.age_ms or 0) <= 250.0:
                    assert view.status == "LIVE"
                else:
                    assert view.status in ("STALE", "NO DATA")
    finally:
        sub.close()
        xpub.close(0)
        ctx.term()
    elapsed = time.monotonic() - t0
    print(f"\nfuzz: {len(sent)} messages (seed {SEED}) in {elapsed:.1f} s "
          f"({len(sent) / elapsed:.0f}/s): {sub.received} valid taken, {sub.malformed} "
          f"malformed counted; kinds {dict(sorted(kinds.items()))}")
    assert len(sent) == MESSAGES
    assert sub.malformed == sum(not k.startswith("good") for k in sent)


def test_bad_messages_into_the_running_overlay_loop(tmp_path: Path) -> None:
    """A few hundred of the same through ``run_overlay`` itself (display loop, MP4, log)."""
    messages = _messages(random.Random(SEED + 1))
    sent: list[str] = []
    ctx, xpub, endpoint = _xpub()
    stop = threading.Event()
    out: dict[str, Any] = {}
    thread = threading.Thread(target=lambda: out.update(run_overlay(
        endpoint, out=tmp_path / "o.mp4", window=False, background=None, stale_ms=250.0,
        fps=20, duration_s=30, stop=stop)))
    thread.start()
    try:
        _await_subscribed(xpub)
        for k, (kind, frames) in enumerate(itertools.islice(messages, 400)):
            xpub.send_multipart(frames)
            sent.append(kind)
            if k % 50 == 49:
                time.sleep(0.06)  # a few displayed frames meanwhile
        time.sleep(0.3)
    finally:
        stop.set()
        thread.join(30)
        xpub.close(0)
        ctx.term()
    assert not thread.is_alive() and out, "the overlay loop died"
    log = [json.loads(line) for line in (tmp_path / "o.mp4.jsonl").read_text().splitlines()]
    last_good = max(int(k[5:]) for k in sent if k.startswith("good:"))
    n_bad = sum(not k.startswith("good") for k in sent)
    print(f"\noverlay loop: {len(sent)} messages, {n_bad} bad; summary {out}")
    assert out["malformed"] == n_bad and out["received"] == len(sent) - n_bad
    assert log[-1]["seq"] == last_good and log[-1]["malformed"] == n_bad
