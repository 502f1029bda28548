"""The naive baseline's engine: each graph's PyTorch module run eagerly on the CPU, rebuilt
from the checkpoint an export keeps beside its graphs (``model.safetensors`` +
``model.json``), as a user's plain PyTorch loop would run it.

The product's torch backend (``engines/torch.py``) runs the ``torch.export`` program
instead, which needs no model code but pays Python dispatch per op on the CPU (measured
1.28x slower on a small CEUS encoder, quiet 2-core machine): the baseline must not be
handicapped by that, so the bench, which may import ``train/``, runs the eager module."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import numpy as np

from hepascope.core.errors import ModelError
from hepascope.core.export_format import META_ROLE
from hepascope.engines.interface import check_feeds, weights_dir


class EagerEngine:
    """The graph at ``path`` as the eager module of ``model`` (BatchNorm folded), fp32 on
    the CPU with ``threads`` intra-op threads; the Engine interface (``infer``)."""

    name = "torch-eager"

    def __init__(self, path: Path, model: Any, threads: int | None = None) -> None:
        import torch  # torch inside functions only, outside train/ (.importlinter)

        from hepascope.engines.torch import read_graph
        from hepascope.train.export import graph_module
        from hepascope.train.torch_module import prepare_module

        self.path = Path(path)
        self.inputs, self.outputs, self.metadata = read_graph(self.path)
        self._threads = threads or torch.get_num_threads()
        role = self.metadata.get(META_ROLE, "")
        self._module: Any = prepare_module(
            graph_module(copy.deepcopy(model), role), device="cpu", fp16=False,
            channels_last=False)

    def infer(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if self._module is None:
            raise ModelError(f"{self.path.name}: engine is closed")
        import torch

        check_feeds(self.inputs, feeds)
        if torch.get_num_threads() != self._threads:  # not on every frame: it resets the pool
            torch.set_num_threads(self._threads)
        xs = [torch.from_numpy(np.ascontiguousarray(feeds[s.name], np.float32))
              for s in self.inputs]
        with torch.inference_mode():
            y = self._module(*xs)
        return {self.outputs[0].name: y.numpy().copy()}

    def close(self) -> None:
        self._module = None


def eager_model(graph: Path) -> Any:
    """The model of the checkpoint beside ``graph`` (read once for all its graphs)."""
    from hepascope.train.checkpoint import load_checkpoint

    d = weights_dir(graph)
    if d is None:
        raise ModelError(f"{graph.name}: no checkpoint beside it; the eager baseline "
                         "needs an export with its weights (hepascope export)")
    return load_checkpoint(d)[0].eval()
