"""A good local file opens even when the machine is so loaded that the opening process gets
only a sliver of a core (a demo beside a training run on a 2-core laptop): the open timeout
exists to stop a demuxer scanning garbage, which burns CPU, not to fail a starved one. The
starvation is real: the opening process runs at nice 19 pinned to one core while a busy
process at nice 0 holds that core."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

CHILD = """
import os, sys, time
os.sched_setaffinity(0, {cpu})
os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
from hepascope.stream.sources.file import FileSource
print("ready", flush=True)
sys.stdin.readline()
t0 = time.monotonic()
try:
    with FileSource(sys.argv[1], max_rate=True) as src:
        frame = next(iter(src))
    print("ok", frame.width, frame.height, round(time.monotonic() - t0, 3), flush=True)
except Exception as e:
    print("error", type(e).__name__, e, round(time.monotonic() - t0, 3), flush=True)
"""
HOG = "import os; os.sched_setaffinity(0, {cpu})\nwhile True: pass"


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="needs Linux CPU affinity")
def test_a_starved_open_of_a_good_file_still_opens(video30: Path) -> None:
    cpu = min(os.sched_getaffinity(0))
    child = subprocess.Popen([sys.executable, "-c", CHILD.format(cpu={cpu}), str(video30)],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    hog = None
    try:
        assert child.stdin is not None and child.stdout is not None
        assert child.stdout.readline().strip() == "ready"
        hog = subprocess.Popen([sys.executable, "-c", HOG.format(cpu={cpu})])
        time.sleep(0.3)  # the hog holds the core
        child.stdin.write("go\n")
        child.stdin.flush()
        line = child.stdout.readline().strip()
    finally:
        if hog is not None:
            hog.kill()
            hog.wait()
        child.kill()
        child.wait()
    print(f"\nstarved open: {line}")
    assert line.startswith("ok 768 384"), line
