"""The results channel under real faults, over real loopback sockets: a subscriber that
sleeps 1 s per message beside a normal overlay, a publisher process SIGKILLed at random
moments (NO DATA within 1 s), and malformed messages injected into a running overlay."""

from __future__ import annotations

import json
import math
import os
import random
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import msgpack
import numpy as np
import zmq
from support import wire
from support.budget import trials

from hepascope.core.messages import (
    SCHEMA_VERSION,
    TOPIC_RESULT,
    TOPIC_TELEMETRY,
    MessageError,
    encode,
    parse,
)
from hepascope.stream.overlay import OverlayState, run_overlay
from hepascope.stream.publish import MAX_MESSAGE_BYTES, Publisher, Subscriber

SUPPORT = Path(__file__).parent / "support" / "channel_publisher.py"
STALE_MS = 250.0
HEARTBEAT_MS = 600.0  # the pipeline's telemetry comes every 200 ms: 3 of them


RUN = uuid.uuid4().hex


def _result(seq: int, **extra: Any) -> dict[str, Any]:
    return wire.result(seq, RUN, **extra)


def _telemetry(pid: int = 1) -> dict[str, Any]:
    return wire.telemetry(RUN, pid, fps_in=100.0, fps_out=100.0)


def _pct(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else math.nan


# --- a slow subscriber ---------------------------------------------------------------------

PAD = "x" * 60_000  # ~60 KB results: the slow subscriber's pipe fills within a second
RUN_S = 3.0
RATE_HZ = 100.0


def _slow_consumer(endpoint: str, ready: threading.Event, stop: threading.Event,
                   out: dict[str, Any]) -> None:
    """A real SUB that takes one message, then sleeps 1 s, judging each with OverlayState;
    at the end it drains what is left. Small receive buffers so its pipe fills quickly."""
    ctx = zmq.Context()
    sock = ctx.socket(zmq.SUB)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.RCVHWM, 2)
    sock.setsockopt(zmq.RCVBUF, 64 * 1024)
    sock.setsockopt(zmq.SUBSCRIBE, b"")
    sock.connect(endpoint)
    state = OverlayState(STALE_MS, HEARTBEAT_MS)
    seqs: list[int] = []
    judged: list[tuple[str, float]] = []  # (status shown, true age in ms) per message taken

    def take(frames: list[bytes]) -> None:
        topic, msg = parse(frames)
        now = time.monotonic_ns()
        state.update(topic, msg, now)
        if topic == TOPIC_RESULT:
            seqs.append(msg["seq"])
            judged.append((state.view(now).status, (now - msg["t_publish_ns"]) / 1e6))

    try:
        while not stop.is_set():
            if sock.poll(50):
                take(sock.recv_multipart())
                ready.set()
                time.sleep(1.0)  # the slow part
        out["slow_taken"] = len(judged)
        while sock.poll(300):  # what is still queued, as fast as possible
            take(sock.recv_multipart())
        now = time.monotonic_ns()
        out.update(seqs=seqs, judged=judged, final=state.view(now).status,
                   final_age_ms=(now - state.result["t_publish_ns"]) / 1e6
                   if state.result else None)
    finally:
        sock.close(0)
        ctx.term()


def test_a_slow_subscriber_neither_blocks_the_publisher_nor_ages_the_overlay() -> None:
    pub = Publisher("tcp://127.0.0.1:*")
    fast = Subscriber(pub.bound)
    ready, stop_slow, stop_pub = threading.Event(), threading.Event(), threading.Event()
    slow_out: dict[str, Any] = {}
    slow = threading.Thread(target=_slow_consumer, args=(pub.bound, ready, stop_slow, slow_out))
    slow.start()
    send_ns: list[tuple[float, int]] = []  # (seconds since start, send time in ns)
    sent = [0]

    def publish() -> None:
        t0 = time.monotonic()
        seq = 0
        next_tel = t0
        while not stop_pub.is_set():
            t = time.perf_counter_ns()
            pub.send(TOPIC_RESULT, _result(seq, pad=PAD))
            send_ns.append((time.monotonic() - t0, time.perf_counter_ns() - t))
            seq += 1
            if time.monotonic() >= next_tel:
                pub.send(TOPIC_TELEMETRY, _telemetry())
                next_tel += 0.2
            time.sleep(1.0 / RATE_HZ)
        sent[0] = seq

    state = OverlayState(STALE_MS, HEARTBEAT_MS)
    ages: list[float] = []
    statuses: dict[str, int] = {}
    try:
        publisher = threading.Thread(target=publish)
        publisher.start()
        assert ready.wait(10), "the slow subscriber never got a message"
        t_end = time.monotonic() + RUN_S
        while time.monotonic() < t_end:  # the normal overlay, at 30 fps
            fast.poll(33)
            now = time.monotonic_ns()
            for topic, msg in fast.drain():
                state.update(topic, msg, now)
            view = state.view(now)
            statuses[view.status] = statuses.get(view.status, 0) + 1
            if state.result is not None:
                ages.append((now - state.result["t_publish_ns"]) / 1e6)
        stop_pub.set()
        publisher.join()
        stop_slow.set()
        slow.join(30)
    finally:
        stop_pub.set()
        stop_slow.set()
        fast.close()
        pub.close()
    times_ms = [ns / 1e6 for _, ns in send_ns]
    per_s = [_pct([ns / 1e6 for t, ns in send_ns if int(t) == s], 99)
             for s in range(int(send_ns[-1][0]) + 1)]
    lost = sent[0] - len(slow_out["seqs"])
    old_as_live = [a for s, a in slow_out["judged"] if s == "LIVE" and a > STALE_MS]
    receipt_would = [a for _, a in slow_out["judged"] if a > STALE_MS]
    print(f"\npublisher: {len(times_ms)} sends of ~60 KB at {RATE_HZ:.0f} Hz, send time "
          f"p50 {_pct(times_ms, 50):.3f} ms, p99 {_pct(times_ms, 99):.3f} ms, "
          f"max {max(times_ms):.3f} ms; p99 per second: "
          + ", ".join(f"{v:.3f}" for v in per_s)
          + f"\nnormal overlay: shown result age (publish -> display) p50 "
          f"{_pct(ages, 50):.1f} ms, p99 {_pct(ages, 99):.1f} ms; views {statuses}"
          f"\nslow subscriber: took {slow_out['slow_taken']} results at 1/s, then drained: "
          f"{len(slow_out['seqs'])} of {sent[0]} results ({lost} lost at its high-water "
          f"mark); (status, true age ms) while slow: "
          f"{[(s, round(a)) for s, a in slow_out['judged']][:slow_out['slow_taken']]}; "
          f"old results shown as LIVE: {len(old_as_live)} (receipt-time freshness would have "
          f"shown {len(receipt_would)}); after draining: {slow_out['final']} "
          f"(newest it holds is {slow_out['final_age_ms']:.0f} ms old)")
    # the publisher never waited for the slow one: a blocking send would last >= its 1 s sleep
    assert max(times_ms) < 1000.0
    assert lost > 0  # its pipe did fill: the publisher dropped for it instead of waiting
    # the normal overlay kept showing fresh results throughout
    assert _pct(ages, 99) < STALE_MS and statuses.get("LIVE", 0) > 0
    # the slow one never presented an old result as new
    assert not old_as_live and receipt_would
    assert slow_out["final"] != "LIVE" or slow_out["final_age_ms"] <= STALE_MS


# --- heartbeats: a publisher SIGKILLed ------------------------------------------------------

TRIALS = trials(6, 20)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _pump(sub: Subscriber, state: OverlayState, until: str, timeout_s: float) -> int:
    """Drain into ``state`` until its view says ``until``; the local time it did, in ns."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        sub.poll(5)
        now = time.monotonic_ns()
        for topic, msg in sub.drain():
            state.update(topic, msg, now)
        if state.view(now).status == until:
            return now
    raise AssertionError(f"the overlay never showed {until} within {timeout_s} s")


def test_no_data_within_one_second_of_a_killed_publisher() -> None:
    endpoint = f"tcp://127.0.0.1:{_free_port()}"
    server = subprocess.Popen([sys.executable, str(SUPPORT), "--fork-server"],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert server.stdin is not None and server.stdout is not None
    ctx = zmq.Context()
    sub = Subscriber(endpoint, context=ctx)  # one subscriber for every trial: it reconnects
    state = OverlayState(STALE_MS, HEARTBEAT_MS)
    rng = random.Random(7)
    delays, relive = [], []
    try:
        for _ in range(TRIALS):
            t_start = time.monotonic_ns()
            server.stdin.write(endpoint + "\n")
            server.stdin.flush()
            line = server.stdout.readline()
            while not re.fullmatch(r"child \d+\n", line):
                assert line, "the fork server ended"
                line = server.stdout.readline()
            child = int(line.split()[1])
            try:
                relive.append((_pump(sub, state, "LIVE", 10.0) - t_start) / 1e6)
                end = time.monotonic() + rng.uniform(0.02, 0.25)
                while time.monotonic() < end:  # LIVE for a random while
                    _pump(sub, state, "LIVE", 1.0)
            finally:
                t_kill = time.monotonic_ns()
                os.kill(child, signal.SIGKILL)
            delays.append((_pump(sub, state, "NO DATA", 5.0) - t_kill) / 1e6)
    finally:
        sub.close()
        ctx.term()
        server.kill()
        server.wait()
    print(f"\nkilled publisher -> NO DATA over {TRIALS} trials: p50 {_pct(delays, 50):.0f} ms, "
          f"p99 {_pct(delays, 99):.0f} ms, max {max(delays):.0f} ms (heartbeat timeout "
          f"{HEARTBEAT_MS:.0f} ms); a restarted publisher LIVE again after p50 "
          f"{_pct(relive, 50):.0f} ms, max {max(relive):.0f} ms")
    assert len(delays) == TRIALS and max(delays) < 1000.0


def test_idle_publisher_is_stale_not_no_data() -> None:
    """Telemetry without results (publisher alive, inference stopped): STALE, not NO DATA;
    when telemetry stops too: NO DATA."""
    state = OverlayState(STALE_MS, HEARTBEAT_MS)
    t0 = time.monotonic_ns()
    state.update(TOPIC_RESULT, {**_result(1), "t_publish_ns": t0}, t0)
    ms = 1_000_000
    for k in range(1, 6):  # heartbeats every 200 ms, no result
        state.update(TOPIC_TELEMETRY, {**_telemetry(), "t_publish_ns": t0 + k * 200 * ms},
                     t0 + k * 200 * ms + ms)
    assert state.view(t0 + 100 * ms).status == "LIVE"
    assert state.view(t0 + 1000 * ms).status == "STALE"
    assert state.view(t0 + 1000 * ms + int(HEARTBEAT_MS) * ms + 2 * ms).status == "NO DATA"
    # a result that sat 2 s in some queue is judged by when it was published, not received
    late = {**_result(2), "t_publish_ns": t0 + 1100 * ms}
    state.update(TOPIC_RESULT, late, t0 + 3100 * ms)
    assert state.view(t0 + 3100 * ms).status == "NO DATA"


# --- malformed messages into a running overlay ---------------------------------------------


def _malformed() -> list[list[bytes]]:
    good = _result(0)
    bad_maps = [
        {k: v for k, v in good.items() if k != "probs"},                 # missing field
        {**good, "seq": "7"},                                             # wrong type
        {**good, "seq": True},                                            # bool for int
        {**good, "probs": [math.nan, 1.0]},                               # NaN
        {**good, "probs": [0.5, math.inf]},                               # inf
        {**good, "probs": [0.9, 0.9]},                                    # not summing to 1
        {**good, "labels": ["a"]},                                        # length mismatch
        {**good, "latency_ms": {"total": math.nan}},                      # NaN latency
        {**good, "v": SCHEMA_VERSION + 1},                                # other schema
        {**good, "status": "fine"},                                       # unknown status
        {**good, "probs": [], "status": "model_fault"},                   # fault, no reason
        {**good, "seq": -1},                                              # negative
        {**good, "window_fill": 3.0},                                     # out of range
        {**good, **{f"k{i}": i for i in range(60_000)}},                  # huge map
        {**good, "labels": ["a"] * 50_000, "probs": [0.0] * 50_000},      # huge arrays
    ]
    frames = [[TOPIC_RESULT, msgpack.packb(m)] for m in bad_maps]
    frames += [
        [TOPIC_TELEMETRY, msgpack.packb({**_telemetry(), "models": "all"})],  # bad telemetry
        [TOPIC_TELEMETRY, msgpack.packb({**_telemetry(), "fps_in": "30"})],   # wrong type
        [TOPIC_RESULT, os.urandom(200)],                                  # garbage
        [TOPIC_RESULT, b"\xc1"],                                          # never-used byte
        [TOPIC_RESULT, msgpack.packb([1, 2, 3])],                         # not a map
        [TOPIC_RESULT, msgpack.packb({1: 2})],                            # int keys
        [TOPIC_RESULT, b"\x91" * 5000 + b"\x90"],                         # deep nesting
        [TOPIC_RESULT, b"\xd9\x05\xff\xfe\xfd\xfc\xfb"],                  # invalid UTF-8
        [TOPIC_RESULT, encode(good)[:-3]],                                # truncated
        [TOPIC_RESULT],                                                   # one part
        [TOPIC_RESULT, encode(good), b"extra"],                           # three parts
        [b"result-x", encode(good)],                                      # unknown topic
        [TOPIC_TELEMETRY, b""],                                           # empty payload
    ]
    for f in frames:  # each really is refused by the schema, and reaches it (size limit)
        assert sum(map(len, f)) < MAX_MESSAGE_BYTES
        try:
            parse(f)
        except MessageError:
            continue
        raise AssertionError(f"not malformed: {f!r:.80}")
    return frames


def test_malformed_messages_never_crash_the_overlay(tmp_path: Path) -> None:
    bad = _malformed()
    ctx = zmq.Context()
    xpub = ctx.socket(zmq.XPUB)  # XPUB: it hears the overlay's subscription, so we know it joined
    xpub.setsockopt(zmq.LINGER, 0)
    xpub.bind("tcp://127.0.0.1:*")
    endpoint = xpub.getsockopt_string(zmq.LAST_ENDPOINT)
    stop = threading.Event()
    out: dict[str, Any] = {}

    def overlay() -> None:
        out.update(run_overlay(endpoint, out=tmp_path / "o.mp4", window=False, background=None,
                               stale_ms=STALE_MS, fps=20, duration_s=30, stop=stop))

    thread = threading.Thread(target=overlay)
    thread.start()
    valid = 0
    rounds = 3
    try:
        assert xpub.poll(10_000), "the overlay never subscribed"
        while xpub.poll(200):  # both topics subscribed
            xpub.recv()
        t0 = time.monotonic()
        seq = 0
        for _ in range(rounds):
            for frames in bad:
                xpub.send_multipart(frames)
                xpub.send_multipart([TOPIC_RESULT, encode(_result(seq))])
                seq += 1
                xpub.send_multipart([TOPIC_TELEMETRY, encode(_telemetry())])
                valid += 2
                time.sleep(0.005)
        # a frame over MAX_MESSAGE_BYTES: libzmq drops the connection before any decoding;
        # the overlay reconnects and goes on
        xpub.send_multipart([TOPIC_RESULT, b"\x00" * (MAX_MESSAGE_BYTES + 1)])
        # the dropped connection unsubscribes; the reconnection subscribes again
        events: list[bytes] = []
        while not (events and events[-1][:1] == b"\x01") and xpub.poll(5000):
            events.append(xpub.recv())
        assert events[:1] == [b"\x00" + TOPIC_RESULT] or events[:1] == [b"\x00" + TOPIC_TELEMETRY]
        assert events[-1][:1] == b"\x01", "the overlay did not reconnect after the oversize frame"
        while xpub.poll(200):
            xpub.recv()
        for _ in range(5):
            xpub.send_multipart([TOPIC_RESULT, encode(_result(seq))])
            seq += 1
            valid += 1
            time.sleep(0.01)
        elapsed = time.monotonic() - t0
        time.sleep(0.3)
    finally:
        stop.set()
        thread.join(30)
        xpub.close(0)
        ctx.term()
    assert not thread.is_alive() and out, "the overlay loop died"
    frames_log = [json.loads(line) for line in (tmp_path / "o.mp4.jsonl").read_text().splitlines()]
    shown = {f["seq"] for f in frames_log if f["seq"] is not None}
    print(f"\nmalformed injected: {len(bad) * rounds} ({len(bad)} kinds x {rounds}) between "
          f"{valid} valid in {elapsed:.1f} s, plus 1 oversize frame; overlay summary: {out}; "
          f"last shown seq {frames_log[-1]['seq']} of {seq - 1}")
    assert out["malformed"] == len(bad) * rounds  # each counted once; the oversize never decoded
    assert out["received"] == valid               # every valid one taken
    assert frames_log[-1]["seq"] == seq - 1 and frames_log[-1]["malformed"] == out["malformed"]
    assert len(shown) > 1 and out["frames"] == len(frames_log)
