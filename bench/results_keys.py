"""How the bench's results are read generically: nested dicts flattened to dotted keys,
a figure found by the tokens of its key, its unit read from the key's name (``*_ms``,
``*_per_s``, ``*_pct``, ``*_mb``, ``*_s``)."""

from __future__ import annotations

from typing import Any

UNITS = (("_per_s", "per s"), ("_ms", "ms"), ("_pct", "% of one core"), ("_mb", "MB"), ("_s", "s"),
         ("fps", "frames/s"), ("_x", "x"))


def flatten(d: Any, prefix: str = "") -> dict[str, Any]:
    """Nested dicts -> {"a.b.c": scalar}; lists of scalars kept whole, other lists indexed."""
    out: dict[str, Any] = {}
    if isinstance(d, dict):
        for k, v in d.items():
            out.update(flatten(v, f"{prefix}{k}."))
    elif isinstance(d, list) and not all(isinstance(x, int | float | str) for x in d):
        for i, v in enumerate(d):
            out.update(flatten(v, f"{prefix}{i}."))
    else:
        out[prefix[:-1]] = d
    return out


def find_value(d: Any, *tokens: str) -> Any:
    """The first scalar in ``d`` whose dotted key contains every token (case-insensitive),
    or None."""
    for k, v in flatten(d).items():
        if all(t.lower() in k.lower() for t in tokens) and isinstance(v, int | float):
            return v
    return None


def unit(key: str) -> str:
    last = key.rsplit(".", 1)[-1].lower()
    for stat in ("_mean", "_min", "_max", "_median"):  # a statistic of a figure: its unit
        last = last.removesuffix(stat)
    return next((u for suffix, u in UNITS if last.endswith(suffix)), "")
