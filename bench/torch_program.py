"""The torch backend on the CPU against the eager module it replaced: the ``torch.export``
program as the engine runs it (``lean_module``), the same program without that pass, and
the eager module rebuilt from the model definition, interleaved round by round, one thread
each, on one random-weights export. ``python -m hepascope.bench.torch_program``; prints the
p50s and the ratios to eager (issue 17: "benchmark figures within noise")."""

from __future__ import annotations

import argparse
import copy
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from hepascope.core.config import load_config
from hepascope.core.errors import guard_main
from hepascope.core.preprocess import PreprocessSpec
from hepascope.core.timing import interleaved_ms

# torch, the torch backend and the model code are imported inside the functions (the layer
# contract: torch only in train/, and lazily in the torch backend and the bench)


def _export(model_name: str, size: int, out: Path) -> Any:
    import torch

    from hepascope.train.export import export_checkpoint
    from hepascope.train.models import create_model

    torch.manual_seed(0)
    model = create_model(model_name, num_classes=6).eval()
    cfg = load_config()
    pre = {v: PreprocessSpec(cfg.layout, cfg.preprocess, (size, size), 1, (v,)).to_dict()
           for v in ("bmode", "ceus")}
    meta = {"model": model_name, "labels": [str(i) for i in range(6)], "window": 6,
            "interval_s": 1 / 3, "preprocess": pre}
    export_checkpoint(model, meta, out)
    return model


def _interleave(runs: dict[str, Callable[[], object]], rounds: int) -> dict[str, float]:
    """p50 ms of each run, one call per turn (``core.timing.interleaved_ms``), after
    ``rounds // 8`` untimed calls of each."""
    import torch

    with torch.inference_mode():
        ms = interleaved_ms({k: [run] for k, run in runs.items()}, rounds, chunk=1,
                            warmup=rounds // 8, settle=0)
    return {k: float(np.median(v)) for k, v in ms.items()}


def _graph_runs(graph: Path, model: Any) -> tuple[dict[str, Callable[[], object]], list[Any]]:
    """The three ways to run ``graph`` on one random input, and the engines to close."""
    import torch

    from hepascope.engines import torch as torch_engine
    from hepascope.train.export import graph_module
    from hepascope.train.torch_module import prepare_module

    lean = torch_engine.TorchEngine(graph, device="cpu", threads=1)
    real = torch_engine.lean_module
    torch_engine.lean_module = lambda gm: gm
    try:
        plain = torch_engine.TorchEngine(graph, device="cpu", threads=1)
    finally:
        torch_engine.lean_module = real
    eager = prepare_module(graph_module(copy.deepcopy(model), graph.stem), device="cpu",
                           fp16=False, channels_last=False)
    rng = np.random.default_rng(0)
    feeds = {s.name: rng.standard_normal(s.at_batch(1)).astype(np.float32)
             for s in lean.inputs}
    x = torch.from_numpy(next(iter(feeds.values())))
    return {"lean": lambda: lean.infer(feeds), "plain": lambda: plain.infer(feeds),
            "eager": lambda: eager(x).numpy()}, [lean, plain]


def compare(model_name: str, size: int, rounds: int) -> dict[str, dict[str, float]]:
    """Per encoder graph of the export: p50 ms of ``lean``, ``plain``, ``eager`` and the
    ratios to eager."""
    import torch

    torch.set_num_threads(1)
    out: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        model = _export(model_name, size, d)
        for graph in sorted(d.glob("*_encoder.onnx")):
            runs, engines = _graph_runs(graph, model)
            p50 = _interleave(runs, rounds)
            out[graph.stem] = {**p50, "lean/eager": p50["lean"] / p50["eager"],
                               "plain/eager": p50["plain"] / p50["eager"]}
            for e in engines:
                e.close()
    return out


@guard_main
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m hepascope.bench.torch_program",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="bimodal_resnet18_lite")
    p.add_argument("--size", type=int, default=112)
    p.add_argument("--rounds", type=int, default=150)
    args = p.parse_args(argv)
    for graph, r in compare(args.model, args.size, args.rounds).items():
        print(f"{graph}: p50 ms lean {r['lean']:.2f}, without the pass {r['plain']:.2f}, "
              f"eager {r['eager']:.2f}; lean/eager {r['lean/eager']:.3f}, "
              f"without/eager {r['plain/eager']:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
