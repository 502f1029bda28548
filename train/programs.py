"""The ``torch.export`` programs the torch engine runs in place of an export's ONNX graphs:
written by the export step beside each graph (``<graph>.pt2``), so that engine needs no
model definition from ``train/`` (it loads the program with ``torch.export.load``).

A program is the graph's fp32 module in eval mode with BatchNorm folded (as ONNX Runtime
and TensorRT do: ``torch_module.prepare_module``), its batch axis dynamic. The engine runs
fp16 from the same program (half weights under autocast, which keeps SimAM's squares and
sums in fp32 on CUDA). Each program carries its own record (model, labels, role) that the
engine checks against the graph's metadata, so a program from another export is refused."""

from __future__ import annotations

import inspect
import json
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from torch import nn

from hepascope.core.errors import ModelError
from hepascope.core.export_format import (
    FORMAT_VERSION,
    META_LABELS,
    META_MODEL,
    META_ROLE,
    PROGRAM_META,
    program_file,
)
from hepascope.train.torch_module import prepare_module

MAX_BATCH = 4096  # the dynamic batch axis' upper bound (export needs one; no engine nears it)
ModuleOf = Callable[[str], nn.Module]  # role -> a fresh module computing that graph


def _read_graph(path: Path) -> tuple[tuple[torch.Tensor, ...], dict[str, str]]:
    """(example inputs at batch 2, metadata) of the ONNX graph at ``path``: batch 1 would
    be specialised by export."""
    graph = onnx.load(str(path), load_external_data=False)
    gen = torch.Generator().manual_seed(0)
    inits = {i.name for i in graph.graph.initializer}
    args = tuple(torch.randn(2, *[d.dim_value for d in v.type.tensor_type.shape.dim][1:],
                             generator=gen)
                 for v in graph.graph.input if v.name not in inits)
    return args, {p.key: p.value for p in graph.metadata_props}


def _export(module: nn.Module, args: tuple[torch.Tensor, ...]) -> Any:
    """``torch.export`` of ``module`` with the batch axis of every input dynamic."""
    batch = torch.export.Dim("batch", min=1, max=MAX_BATCH)
    specs: tuple[Any, ...] = tuple({0: batch} for _ in args)
    params = inspect.signature(module.forward).parameters.values()
    if any(p.kind is inspect.Parameter.VAR_POSITIONAL for p in params):
        specs = (specs,)  # forward(*xs): the inputs are one argument, a tuple
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore", UserWarning)
        return torch.export.export(module, args, dynamic_shapes=specs)


def _parity(program: Any, module: nn.Module, args: tuple[torch.Tensor, ...]) -> float:
    """Max |program - module| at batch 1 and 3 (the batch axis is dynamic: check it is)."""
    run = program.module()
    diffs = []
    for batch in (1, 3):
        gen = torch.Generator().manual_seed(batch)
        xs = tuple(torch.randn(batch, *a.shape[1:], generator=gen) for a in args)
        with torch.no_grad():
            diffs.append(float(np.abs(run(*xs).numpy() - module(*xs).numpy()).max()))
    return max(diffs)


def write_program(module_of: ModuleOf, graph_path: Path, tol: float) -> float:
    """Write the program of the graph at ``graph_path`` (role, model and labels read from
    its metadata) for the module ``module_of`` gives for its role, checked against that
    module (max |diff| <= ``tol``, else ``ModelError``); returns the max |diff|."""
    args, meta = _read_graph(graph_path)
    role = meta.get(META_ROLE, "")
    module = prepare_module(module_of(role), device="cpu", fp16=False, channels_last=False)
    program = _export(module, args)
    diff = _parity(program, module_of(role).eval(), args)
    if diff > tol:
        raise ModelError(f"{graph_path.name}: torch.export program parity {diff:.2e} > "
                         f"{tol:.0e}")
    record = {"format": FORMAT_VERSION, "model": meta.get(META_MODEL), "role": role,
              "labels": json.loads(meta.get(META_LABELS, "null"))}
    torch.export.save(program, str(program_file(graph_path)),
                      extra_files={PROGRAM_META: json.dumps(record)})
    return diff


def write_programs(module_of: ModuleOf, graphs: list[Path], tol: float) -> dict[str, float]:
    """``write_program`` for every graph of an export; {graph file name: max |diff|}.
    ``module_of(role)`` must make a fresh module on each call (BatchNorm is folded in
    place)."""
    return {g.name: write_program(module_of, g, tol) for g in graphs}
