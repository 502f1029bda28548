"""Crash-safe recording, for real: a recording process is SIGKILLed at random moments and
what it left is replayed; and a finished recording cut at random bytes still replays a
bit-exact prefix of its frames, never an error."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import av
import numpy as np
import pytest
from support.budget import trials

from hepascope.core.errors import DataError, SourceError
from hepascope.core.frame import Frame
from hepascope.stream.record import (
    CLUSTER_MS,
    VIDEO_NAME,
    FrameRow,
    VideoRecorder,
    read_index,
    read_results,
    read_session,
)
from hepascope.stream.replay import replay_deterministic
from hepascope.stream.sources.file import FileSource
from hepascope.stream.sources.phantom import PhantomSource

CHILD = Path(__file__).parent / "support" / "record_child.py"
TRIALS = trials(2, 5)
SEED = 7
BOUND_S = 1.0  # the spec: a kill loses at most the last second


def _decode(path: Path) -> list[np.ndarray]:
    """Every frame the replay source gets out of ``path`` (it must not raise)."""
    with FileSource(path, max_rate=True) as src:
        return [f.image for f in src]


def _packets(path: Path) -> tuple[int, int]:
    """(packets the demuxer returns, byte offset where the last complete one ends)."""
    n, end = 0, 0
    with av.open(str(path)) as c:
        for p in c.demux(video=0):
            if p.size and p.pos is not None:
                n, end = n + 1, max(end, p.pos + p.size)
    return n, end


def _phantom_frames(seed: int, count: int) -> list[np.ndarray]:
    with PhantomSource(seed, max_rate=True) as src:
        out = []
        for f in src:
            out.append(f.image)
            if len(out) == count:
                return out
    raise AssertionError("phantom ended early")


def _run_and_kill(d: Path, model: Path, ring: str, delay_s: float) -> int:
    """Start the recording child, wait until it records, then ``delay_s`` more; SIGKILL it.
    Returns the kill time (monotonic ns, the clock frames are stamped with)."""
    proc = subprocess.Popen([sys.executable, str(CHILD), str(d), str(model), ring],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 60
        while not ((d / "frames.csv").is_file() and read_index(d)[0]):
            assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
            assert time.monotonic() < deadline, "the recorder never started"
            time.sleep(0.05)
        time.sleep(delay_s)
        t_kill = time.monotonic_ns()
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
        assert proc.returncode == -signal.SIGKILL
        return t_kill
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stderr is not None:
            proc.stderr.close()
        Path("/dev/shm", ring).unlink(missing_ok=True)  # a killed writer leaves its ring


def test_sigkill_loses_at_most_one_second(tmp_path: Path, small_model: Path) -> None:
    rng = random.Random(SEED)
    losses = []
    for trial in range(TRIALS):
        d = tmp_path / f"rec{trial}"
        delay = 2.0 + rng.uniform(0.0, 1.5)
        t_kill = _run_and_kill(d, small_model, f"hepascope-crash-{os.getpid()}-{trial}", delay)
        meta = read_session(d)  # written atomically at start: there, and valid JSON
        assert meta["complete"] is False and meta["model"] == str(small_model.resolve())
        rows, torn_row = read_index(d)
        frames = _decode(d / VIDEO_NAME)
        assert 0 < len(frames) <= len(rows)
        # lossless and cut at a frame boundary: the last decodable frame is the very frame
        # the source made (a half-written frame would have come out concealed)
        last = rows[len(frames) - 1]
        assert np.array_equal(frames[-1], _phantom_frames(3, last.seq + 1)[-1])
        loss_s = (t_kill - last.t_capture_ns) / 1e9
        size = (d / VIDEO_NAME).stat().st_size
        packets, end = _packets(d / VIDEO_NAME)
        assert packets == len(frames)
        per_frame = end / packets
        results, torn_line = read_results(d)  # every complete line parses, or DataError
        lag_s = (t_kill - rows[-1].t_capture_ns) / 1e9  # the source's own lag, not a loss
        print(f"trial {trial}: killed {delay:.2f} s after the first frame; last decodable "
              f"frame captured {loss_s:.3f} s before the kill (last indexed {lag_s:.3f} s); "
              f"{len(rows)} indexed, "
              f"{len(frames)} decodable ({len(rows) - len(frames)} lost, ~"
              f"{(len(rows) - len(frames)) * per_frame / 1e6:.2f} MB); file {size} B, "
              f"{size - end} B after the last complete packet; {len(results)} results, "
              f"torn last line: results {torn_line}, index {torn_row}")
        losses.append(loss_s)
        if trial == 0:  # the killed recording replays in lockstep: the live results again
            rep = replay_deterministic(d, tmp_path / "replay0.jsonl")
            assert rep.count == len(frames) and not rep.complete
            replayed = [json.loads(ln) for ln in rep.results.read_text().splitlines()]
            live = {m["seq"]: m["probs"] for m in results}
            assert all(m["probs"] == live[m["seq"]] for m in replayed)
            print(f"trial 0 replayed deterministically: {rep.count} results, probabilities "
                  f"bit-identical to the live ones, sha256 {rep.sha256}")
        (d / VIDEO_NAME).unlink()  # ~30 MB a trial
    print(f"max loss {max(losses):.3f} s over {TRIALS} kills (bound {BOUND_S} s, "
          f"cluster {CLUSTER_MS} ms)")
    assert max(losses) <= BOUND_S


def test_truncated_recording_replays_exact_prefix(tmp_path: Path) -> None:
    """Cut a closed recording at random bytes (and just after its header): FileSource
    never raises, and what it decodes is exactly the first frames recorded."""
    seed = 1
    images = _phantom_frames(seed, 24)
    rec = VideoRecorder(tmp_path)
    for i, img in enumerate(images):
        rec.write(Frame(img, i, 1_000_000_000 + i * 33_333_333, "phantom", i / 30))
    rec.close()
    whole = (tmp_path / VIDEO_NAME).read_bytes()
    rng = random.Random(seed)
    cuts = sorted({300, *(rng.randrange(300, len(whole)) for _ in range(10)), len(whole)})
    with av.open(str(tmp_path / VIDEO_NAME)) as c:
        first_packet = min(p.pos for p in c.demux(video=0) if p.pos is not None)
    counts = []
    for cut in cuts:
        part = tmp_path / f"cut{cut}.mkv"
        part.write_bytes(whole[:cut])
        try:
            got = _decode(part)
        except SourceError as e:  # only a cut header may give one (typed, nothing else)
            assert cut <= first_packet, f"cut at {cut} of {len(whole)} bytes: {e!r}"
            got = []
        assert all(np.array_equal(a, b) for a, b in zip(got, images, strict=False))
        counts.append(len(got))
        part.unlink()
    print(f"cut at {cuts} bytes -> {counts} exact frames of {len(images)}")
    assert counts == sorted(counts) and counts[-1] == len(images)


def test_torn_last_lines_are_skipped(tmp_path: Path) -> None:
    """A kill in the middle of a line: the readers drop that line (even a cut number that
    still parses), and refuse a bad line anywhere else."""
    (tmp_path / "frames.csv").write_text("index,seq,t_capture_ns,pts_s\n0,0,100,0.0\n1,1,12")
    (tmp_path / "results.jsonl").write_text('{"seq":0}\n{"seq":1}\n{"se')
    assert read_index(tmp_path) == ([FrameRow(0, 0, 100, 0.0)], True)
    assert read_results(tmp_path) == ([{"seq": 0}, {"seq": 1}], True)
    (tmp_path / "results.jsonl").write_text('{"seq":0}\n{"se\n{"seq":2}\n')
    with pytest.raises(DataError, match=":2: not JSON"):
        read_results(tmp_path)
    (tmp_path / "frames.csv").write_text("index,seq,t_capture_ns,pts_s\n0,0,1x0,0.0\n")
    with pytest.raises(DataError, match=":2: malformed"):
        read_index(tmp_path)
