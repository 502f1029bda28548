"""GPU preprocessing kernels vs the CPU function, per frame, on a phantom frame resized to
each packaged layout (``hepascope.bench.gpu`` reports it too).

    python -m hepascope.bench.preprocess_gpu --bench   # per-frame GPU vs CPU time
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from hepascope.core.errors import ModelError, guard_main
from hepascope.engines.gpu_preprocess import bench


def rows(n: int = 200) -> list[str]:
    """One line per layout and variant (blur+CLAHE, fused): CPU, GPU events, GPU wall."""
    from hepascope.phantom import Phantom, make_case

    return bench(Phantom(make_case(0)).render(0)[0], n)


@guard_main
def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m hepascope.bench.preprocess_gpu",
                                 description="GPU preprocessing kernels")
    ap.add_argument("--bench", action="store_true", help="time GPU vs CPU per frame")
    ap.add_argument("--frames", type=int, default=200, help="frames timed per case")
    args = ap.parse_args(argv)
    if not args.bench:
        ap.print_help()
        return 0
    try:
        for line in rows(max(1, args.frames)):
            print(line)
    except ModelError as e:
        print(f"hepascope: {e}")
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
