"""The FAST peer's unpaced pairs alone, ABAB (hepascope, then FAST), on the bench's own video
and model: a developer's quick look at the unpaced ratio, e.g. under a load the full bench
does not make. One JSON line per pair. Needs pyfast and an OpenCL platform (as the bench).

    python tools/peer_unpaced.py [SECONDS [PAIRS]]
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path


def main(argv: list[str]) -> int:
    from hepascope.bench import peer_section as ps
    from hepascope.bench.peer_fast import availability
    from hepascope.engines.onnxruntime import cpu_budget

    avail = availability()
    if "not_available" in avail:
        print(f"FAST not available: {avail['not_available']}", file=sys.stderr)
        return 2
    seconds = float(argv[0]) if argv else 10.0
    pairs = int(argv[1]) if len(argv) > 1 else 2
    work = Path(tempfile.mkdtemp())
    model, clip = ps.peer_model(work), ps.peer_video(work)
    fps = ps.video_facts(clip)["fps"]
    for _ in range(pairs):
        hep = ps._hepascope_run(model, clip, fps=fps, seconds=seconds, unpaced=True,
                                threads=cpu_budget())
        fast = ps._fast_run(model, clip, seconds=seconds, unpaced=True)
        keep = ("results_per_s", "p50_ms", "p99_ms", "frames_in", "dropped")
        print(json.dumps({"hep": hep, "fast": {k: fast.get(k) for k in keep},
                          "ratio": round(hep["results_per_s"] / fast["results_per_s"], 3)}),
              flush=True)
    return 0


if __name__ == "__main__":  # spawned children import this module: run only as a script
    sys.exit(main(sys.argv[1:]))
