"""Fuzzing of the file sources (video through PyAV, DICOM through pydicom), run in a
subprocess by tests/test_fuzz_sources.py so that a crash of native code (a segfault, an
abort) kills this process and shows as a non-zero exit, not as a dead pytest.

    python fuzz_sources.py WORKDIR [--cases N] [--seed S]

Builds real MP4/MKV (H.264), AVI (MPEG-4) and DICOM (grey, RGB, JPEG baseline) clips,
then runs N damaged copies (random bytes, bit flips at random rates, truncation, chunk
shuffles, overwritten headers, zero-filled runs) through ``open_source``. Each case must
either yield frames and end, or raise ``SourceError``; anything else is a crash, printed
with its traceback. Ends with ``fuzz cases run: N, crashes: C, max s per case: X``.
"""

from __future__ import annotations

import argparse
import random
import sys
import time
import traceback
import warnings
from collections import Counter
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from support.dicom_media import jpeg_cine, us_frames, write_cine
from support.media import write_video

from hepascope.core.errors import SourceError
from hepascope.stream.sources import SourceOptions, open_source

MAX_FRAMES = 400  # a damaged file cannot yield more than its base had; a guard all the same


def write_clip(path: Path, *, frames: int = 30, fps: int = 30, size: tuple[int, int] = (64, 96),
               gop: int = 10, codec: str = "libx264", preset: str = "ultrafast") -> Path:
    """A small clip of ``frame_pattern`` frames with a key frame every ``gop`` frames."""
    return write_video(path, frames=frames, fps=fps, size=size, codec=codec, gop=gop,
                       preset=preset)


def bases(d: Path) -> list[Path]:
    d.mkdir(parents=True, exist_ok=True)
    return [write_clip(d / "base.mp4"), write_clip(d / "base.mkv"),
            write_clip(d / "base.avi", codec="mpeg4"),
            write_cine(d / "grey.dcm", us_frames(8), frame_time_ms=33.3),
            write_cine(d / "rgb.dcm", us_frames(8, rgb=True), frame_time_vector=[0.0] + [40.0] * 7),
            jpeg_cine(d / "jpeg.dcm", us_frames(4, rgb=True))]


# -- mutations: (rng, data) -> damaged data ------------------------------------------------
def random_bytes(rng: random.Random, data: bytes) -> bytes:
    return rng.randbytes(rng.choice([0, 1, 16, 200, len(data) // 4, len(data)]))


def bit_flips(rng: random.Random, data: bytes) -> bytes:
    out = bytearray(data)
    rate = rng.choice([1e-5, 1e-4, 1e-3, 1e-2])
    for _ in range(max(1, int(len(out) * 8 * rate))):
        out[rng.randrange(len(out))] ^= 1 << rng.randrange(8)
    return bytes(out)


def truncate(rng: random.Random, data: bytes) -> bytes:
    return data[: rng.randrange(len(data))]


def shuffle_chunks(rng: random.Random, data: bytes) -> bytes:
    k = rng.randint(2, 8)
    cuts = sorted(rng.sample(range(1, len(data)), k - 1))
    chunks = [data[a:b] for a, b in zip([0, *cuts], [*cuts, len(data)], strict=True)]
    rng.shuffle(chunks)
    return b"".join(chunks)


def overwrite_header(rng: random.Random, data: bytes) -> bytes:
    n = rng.choice([4, 32, 132, 512, 2048])
    return rng.randbytes(n) + data[n:]


def zero_fill(rng: random.Random, data: bytes) -> bytes:
    a = rng.randrange(len(data))
    b = min(len(data), a + rng.choice([16, 256, 4096, len(data)]))
    return data[:a] + bytes(b - a) + data[b:]


MUTATIONS: list[Callable[[random.Random, bytes], bytes]] = [
    random_bytes, bit_flips, bit_flips, truncate, shuffle_chunks, overwrite_header, zero_fill]


def run_case(path: Path) -> tuple[str, int, float]:
    """('frames' | 'error:<Type>', frames yielded, seconds). Anything but a SourceError
    propagates: that is a crash."""
    t0 = time.monotonic()
    n = 0
    try:
        with open_source(str(path), SourceOptions(max_rate=True)) as src:
            for _ in src:
                n += 1
                if n >= MAX_FRAMES:
                    break
    except SourceError as e:
        return f"error:{type(e).__name__}", n, time.monotonic() - t0
    return "frames", n, time.monotonic() - t0


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("workdir", type=Path)
    ap.add_argument("--cases", type=int, default=300)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    warnings.simplefilter("ignore")  # pydicom warns about each oddity of a damaged file
    rng = random.Random(args.seed)
    originals = [(p, p.read_bytes()) for p in bases(args.workdir / "bases")]
    outcomes: Counter[str] = Counter()
    crashes, max_s, max_error_s = 0, 0.0, 0.0
    for i in range(args.cases):
        base, data = rng.choice(originals)
        mutate = rng.choice(MUTATIONS)
        case = args.workdir / f"case{base.suffix}"
        case.write_bytes(mutate(rng, data))
        try:
            outcome, _, seconds = run_case(case)
        except Exception:
            crashes += 1
            keep = args.workdir / f"crash{i}{base.suffix}"
            case.rename(keep)
            print(f"CRASH case {i} ({base.name}, {mutate.__name__}) kept as {keep}:\n"
                  f"{traceback.format_exc()}", flush=True)
            continue
        outcomes[f"{base.suffix}:{outcome}"] += 1
        max_s = max(max_s, seconds)
        if outcome.startswith("error"):
            max_error_s = max(max_error_s, seconds)
    print("outcomes: " + ", ".join(f"{k} {v}" for k, v in sorted(outcomes.items())))
    print(f"max s to a SourceError: {max_error_s:.3f}")
    print(f"fuzz cases run: {args.cases}, crashes: {crashes}, max s per case: {max_s:.3f}",
          flush=True)
    return 1 if crashes else 0


if __name__ == "__main__":
    sys.exit(main())
