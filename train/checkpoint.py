"""Checkpoints without pickle: weights in safetensors, everything else in JSON.

``model.safetensors`` + ``model.json``: the best weights so far and how to rebuild the
model (name, kwargs, labels, preprocessing, window, metrics). ``resume/``: the state after
the last finished epoch (weights, optimizer tensors, torch RNG in ``state.safetensors``;
optimizer/scheduler scalars, numpy generator states, history in ``state.json``), so an
interrupted run continues to the same weights it would have reached."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from hepascope.core.errors import ModelError
from hepascope.core.export_format import CHECKPOINT_META, CHECKPOINT_WEIGHTS
from hepascope.train.models import create_model

CHECKPOINT_VERSION = 2
RESUME_DIR = "resume"


def atomic_json(path: Path, obj: Any) -> None:
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    tmp.write_text(json.dumps(obj, indent=1))
    os.replace(tmp, path)


def _state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}


def save_model(out: Path, model: nn.Module, meta: dict[str, Any]) -> None:
    """Write ``model.safetensors`` then ``model.json`` (the JSON last: it marks completion)."""
    out.mkdir(parents=True, exist_ok=True)
    save_file(_state(model), str(out / CHECKPOINT_WEIGHTS))
    atomic_json(out / CHECKPOINT_META, {"version": CHECKPOINT_VERSION, **meta})


def load_checkpoint(out_dir: str | Path) -> tuple[nn.Module, dict[str, Any]]:
    """(model in eval mode, model.json as a dict) from a directory ``train`` wrote."""
    d = Path(out_dir)
    if not (d / CHECKPOINT_META).is_file():
        raise ModelError(f"{d}: no model.json; train one with 'hepascope train'")
    meta = json.loads((d / CHECKPOINT_META).read_text())
    if meta.get("version") != CHECKPOINT_VERSION:
        raise ModelError(f"{d}/model.json: checkpoint version {meta.get('version')!r}, "
                         f"expected {CHECKPOINT_VERSION}")
    model = create_model(meta["model"], **meta["kwargs"])
    model.load_state_dict(load_file(str(d / CHECKPOINT_WEIGHTS)))
    return model.eval(), meta


def _split(obj: Any, prefix: str, tensors: dict[str, torch.Tensor]) -> Any:
    """Replace every tensor in a nested dict/list by a reference, collecting the tensors."""
    if isinstance(obj, torch.Tensor):
        tensors[prefix] = obj.detach().cpu().contiguous()
        return {"__tensor__": prefix}
    if isinstance(obj, dict):
        return {str(k): _split(v, f"{prefix}.{k}", tensors) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_split(v, f"{prefix}.{i}", tensors) for i, v in enumerate(obj)]
    return obj


def _join(obj: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(obj, dict):
        if set(obj) == {"__tensor__"}:
            return tensors[obj["__tensor__"]]
        return {k: _join(v, tensors) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_join(v, tensors) for v in obj]
    return obj


def save_resume(out: Path, *, model: nn.Module, optimizer: torch.optim.Optimizer,
                scheduler: Any, extra: dict[str, Any], average: Any = None) -> None:
    """State after a finished epoch; ``extra`` is JSON (epoch, history, generator states);
    ``average``: a ``steps.WeightAverage`` (its weights and update count) or None."""
    d = out / RESUME_DIR
    d.mkdir(parents=True, exist_ok=True)
    tensors: dict[str, torch.Tensor] = {f"model.{k}": v for k, v in _state(model).items()}
    if average is not None:
        tensors.update({f"avg.{k}": v for k, v in _state(average.module).items()})
        extra = {**extra, "average_updates": average.updates}
    tensors["rng.torch"] = torch.get_rng_state()
    opt = _split(optimizer.state_dict(), "opt", tensors)
    save_file(tensors, str(d / "state.safetensors"))
    atomic_json(d / "state.json", {"version": CHECKPOINT_VERSION, "optimizer": opt,
                                    "scheduler": scheduler.state_dict(), **extra})


def load_resume(out: Path, *, model: nn.Module, optimizer: torch.optim.Optimizer,
                scheduler: Any, average: Any = None) -> dict[str, Any]:
    """Restore what ``save_resume`` wrote into the given objects; return its ``extra``."""
    d = out / RESUME_DIR
    if not (d / "state.json").is_file():
        raise ModelError(f"{d}: nothing to resume (no state.json)")
    meta = json.loads((d / "state.json").read_text())
    if meta.get("version") != CHECKPOINT_VERSION:
        raise ModelError(f"{d}: resume state version {meta.get('version')!r}")
    tensors = load_file(str(d / "state.safetensors"))
    model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
    if average is not None:
        if "average_updates" not in meta:
            raise ModelError(f"{d}: the run to resume kept no weight average (ema_span differs)")
        average.module.load_state_dict({k[4:]: v for k, v in tensors.items()
                                        if k.startswith("avg.")})
        average.updates = int(meta.pop("average_updates"))
    opt = _join(meta.pop("optimizer"), tensors)
    # JSON turned the per-parameter state keys into strings; the optimizer wants ints
    opt["state"] = {int(k): v for k, v in opt["state"].items()}
    optimizer.load_state_dict(opt)
    scheduler.load_state_dict(meta.pop("scheduler"))
    torch.set_rng_state(tensors["rng.torch"])
    return meta
