"""`hepascope run` in a subprocess, watched by a real subscriber feeding the overlay's own
state: what the inference-process and fault tests start, poll and stop."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from hepascope.core.messages import TOPIC_RESULT
from hepascope.stream.overlay import OverlayState
from hepascope.stream.publish import Subscriber

CLI = [sys.executable, "-m", "hepascope.cli"]
START_S = 60.0  # generous: two processes start on a loaded 2-core machine


class ListSink:
    """A pipeline sink that keeps every message (an in-process run's publisher)."""

    def __init__(self) -> None:
        self.messages: list[tuple[bytes, dict[str, Any]]] = []

    def send(self, topic: bytes, msg: dict[str, Any]) -> None:
        self.messages.append((topic, msg))

    def of(self, topic: bytes) -> list[dict[str, Any]]:
        return [m for t, m in self.messages if t == topic]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Watcher:
    """A real subscriber feeding the overlay's state, polled every ~10 ms by the test."""

    def __init__(self, endpoint: str, stale_ms: float) -> None:
        self.sub = Subscriber(endpoint)
        self.state = OverlayState(stale_ms)
        self.telemetry: dict[str, Any] = {}
        self.results: list[tuple[int, dict[str, Any]]] = []  # (local receipt ns, msg)
        self.statuses: list[tuple[int, str]] = []

    def pump(self, until: Callable[[int], bool], timeout_s: float, what: str) -> int:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            self.sub.poll(10)
            now = time.monotonic_ns()
            for topic, msg in self.sub.drain():
                self.state.update(topic, msg, now)
                if topic == TOPIC_RESULT:
                    self.results.append((now, msg))
                else:
                    self.telemetry = msg
            self.statuses.append((now, self.state.view(now).status))
            if until(now):
                return now
        raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")

    @property
    def status(self) -> str:
        return self.statuses[-1][1] if self.statuses else "NO DATA"

    def close(self) -> None:
        self.sub.close()


def start_run(tmp_path: Path, model: Path, video: Path, *extra: str,
              config: Path | None = None, loop: bool = True,
              ) -> tuple[subprocess.Popen[str], str]:
    """``hepascope -v run`` of ``video`` (looped) through ``model`` in a child process,
    publishing on a free loopback port; the summary goes to ``tmp_path/summary.json``."""
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    args = [*CLI, "-v", "run", "--source", str(video), "--model", str(model),
            "--publish", endpoint, "--inference", "process",
            "--summary", str(tmp_path / "summary.json"), *extra]
    if loop:
        args.append("--loop")
    if config is not None:
        args += ["--config", str(config)]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    STARTED.append(proc)
    return proc, endpoint


STARTED: list[subprocess.Popen[str]] = []  # every run start_run made, for reap_runs


def reap_runs() -> None:
    """Kill what ``start_run`` started and is still running, its inference child too: a
    test that fails between starting a run and its own ``finally`` (seen: a config error
    in ``load_config`` there) must not leave a looped run spinning through later tests."""
    while STARTED:
        proc = STARTED.pop()
        kill_run(proc)
        for pipe in (proc.stdout, proc.stderr):
            if pipe is not None:
                pipe.close()


def stop_run(proc: subprocess.Popen[str]) -> tuple[int, str]:
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)  # stop_on_signals: a clean stop, files finalised
    _, err = proc.communicate(timeout=60)
    return proc.returncode, err


def children(pid: int) -> list[int]:
    """The pids of ``pid``'s children (Linux /proc)."""
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:  # it ended while we looked
            continue
        if int(fields[1]) == pid:
            out.append(int(stat.parent.name))
    return out


def kill_run(proc: subprocess.Popen[str]) -> None:
    """A run the test expected to end by itself and did not: no process left behind, its
    inference child (which may be spinning in a hung model) included."""
    if proc.poll() is None:
        for pid in children(proc.pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        proc.kill()
        proc.wait()


def write_config(tmp_path: Path, **pipeline: object) -> Path:
    """The packaged default config with ``pipeline`` keys replaced, as a file."""
    raw = yaml.safe_load((Path(__file__).parents[2] / "core" / "default.yaml").read_text())
    raw["pipeline"].update(pipeline)
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path
