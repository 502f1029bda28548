"""A results publisher in its own process, sending what the pipeline sends: a result
every 1/RATE s and telemetry (the heartbeat, with this pid) every PERIOD s, until killed.

    python channel_publisher.py ENDPOINT [RATE] [PERIOD]
    python channel_publisher.py --fork-server      # then one ENDPOINT per stdin line

Prints ``bound ENDPOINT`` once its socket is bound. The fork server imports once and
forks a publisher per line read (printing ``child PID``), so many kill trials stay fast."""

from __future__ import annotations

import os
import signal
import sys
import time
import uuid

from hepascope.core.messages import SCHEMA_VERSION, TOPIC_RESULT, TOPIC_TELEMETRY
from hepascope.stream.publish import Publisher


def main(endpoint: str, rate: float = 30.0, period: float = 0.2) -> None:
    pub = Publisher(endpoint)
    print("bound", pub.bound, flush=True)
    run_id = uuid.uuid4().hex  # per start, as a pipeline's
    seq = 0
    next_tel = time.monotonic()
    while True:
        now = time.monotonic_ns()
        pub.send(TOPIC_RESULT, {
            "v": SCHEMA_VERSION, "stream": "phantom:0", "seq": seq, "model": "m",
            "labels": ["non_hcc", "hcc"], "probs": [0.4, 0.6], "top": "hcc", "status": "ok",
            "run_id": run_id, "t_capture_ns": now, "t_capture_utc_ns": time.time_ns(),
            "t_publish_ns": now, "latency_ms": {"total": 1.0}})
        seq += 1
        if time.monotonic() >= next_tel:
            pub.send(TOPIC_TELEMETRY, {
                "v": SCHEMA_VERSION, "stream": "phantom:0", "t_publish_ns": time.monotonic_ns(),
                "fps_in": rate, "fps_out": rate, "dropped": 0, "latency_p50_ms": 1.0,
                "latency_p99_ms": 2.0, "model": "m", "pid": os.getpid(), "run_id": run_id,
                "inference_up": True})
            next_tel += period
        time.sleep(1.0 / rate)


def fork_server() -> None:
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # children are reaped by the kernel
    for line in sys.stdin:
        pid = os.fork()
        if pid == 0:
            try:
                # the parent's stdout carries only its "child PID" lines
                sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - until _exit
                main(line.strip())
            finally:
                os._exit(1)
        print("child", pid, flush=True)


if __name__ == "__main__":
    if sys.argv[1] == "--fork-server":
        fork_server()
    else:
        main(sys.argv[1], *(float(a) for a in sys.argv[2:]))
