"""Name -> constructor registry, so the CLI, tests and export refer to models by name.

Every model class says what it reads with two class attributes: ``input_kind`` ("image":
one B-mode frame (B, C, H, W); "clip": a CEUS clip (B, C, T, H, W); "bimodal": a B-mode
frame and a CEUS window, ``forward(bmode (B, C, H, W), ceus (B, T, C, h, w))``) and
``default_input_size`` ((H, W); (T, H, W); ((H, W), (T, h, w)) respectively)."""

from __future__ import annotations

import typing
from collections.abc import Callable
from functools import cache
from typing import Any, TypeVar

import torch
from torch import nn

F = TypeVar("F", bound=Callable[..., nn.Module])
_REGISTRY: dict[str, Callable[..., nn.Module]] = {}
KINDS = ("image", "clip", "bimodal")


def register_model(fn: F) -> F:
    """Decorator: register ``fn`` under its function name."""
    if fn.__name__ in _REGISTRY:
        raise ValueError(f"model {fn.__name__!r} registered twice")
    _REGISTRY[fn.__name__] = fn
    return fn


def list_models() -> list[str]:
    return sorted(_REGISTRY)


def _constructor(name: str) -> Callable[..., nn.Module]:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise KeyError(f"unknown model {name!r}; registered: {', '.join(list_models())}") from None


def create_model(name: str, **kwargs: Any) -> nn.Module:
    return _constructor(name)(**kwargs)


@cache
def model_kind(name: str) -> str:
    """"image", "clip" or "bimodal": read from the constructor's return annotation (the
    model class), else from a model built on the meta device (no memory, no init)."""
    fn = _constructor(name)
    cls = typing.get_type_hints(fn).get("return")
    kind = getattr(cls, "input_kind", None)
    if kind is None:
        with torch.device("meta"):
            kind = getattr(fn(), "input_kind", None)
    if kind not in KINDS:
        raise TypeError(f"model {name!r} has no input_kind among {KINDS}")
    return str(kind)


def example_inputs(model: nn.Module, batch: int = 1, size: Any = None,
                   generator: torch.Generator | None = None) -> tuple[torch.Tensor, ...]:
    """Random inputs of the shapes ``model`` reads, on its device: image (B, C, H, W) with
    ``size`` (H, W); clip (B, C, T, H, W) with ``size`` (T, H, W); bimodal
    ((B, C, H, W), (B, T, C, h, w)) with ``size`` ((H, W), (T, h, w)). ``size`` defaults
    to the model's own (a bimodal model's sizes and window, else ``default_input_size``)."""
    m: Any = model
    kind, chans = m.input_kind, int(getattr(m, "in_chans", 1))
    device = next(model.parameters()).device

    def rand(*shape: int) -> torch.Tensor:
        if device.type == "meta":
            return torch.empty(batch, *shape, device=device)
        return torch.randn(batch, *shape, generator=generator).to(device)

    if kind == "bimodal":
        (h, w), (t, ch, cw) = size or (m.bmode_size, (m.window, *m.ceus_size))
        return rand(chans, h, w), rand(t, chans, ch, cw)
    dims = tuple(size or m.default_input_size)
    if len(dims) != (2 if kind == "image" else 3):
        raise ValueError(f"{kind} model: size {dims} is not "
                         f"{'(H, W)' if kind == 'image' else '(T, H, W)'}")
    return (rand(chans, *dims),)
