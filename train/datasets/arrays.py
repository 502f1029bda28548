"""``ArraySet``: preprocessed samples in memory, what every model kind trains and is
evaluated on, whichever the data came from (a phantom task, class folders, a manifest).

A sample is one patient's image or clip after the one preprocessing function of
``core/preprocess.py``: ``bmode`` the B-mode view of its newest (or only) frame,
``ceus`` the CEUS view of a window of frames, oldest first. Image models read ``bmode``,
clip models ``ceus`` (as (1, T, h, w)), bimodal models both. ``groups`` holds each
sample's patient id: every split is made on it."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from hepascope.core.errors import DataError

ARRAYS_VERSION = 1
KINDS = ("image", "clip", "bimodal")


@dataclass
class ArraySet:
    classes: tuple[str, ...]
    labels: np.ndarray  # (N,) int64 index into classes
    groups: np.ndarray  # (N,) str patient id ("" = unknown: splits may leak)
    bmode: np.ndarray | None = None  # (N, C, H, W) float16
    ceus: np.ndarray | None = None  # (N, T, C, h, w) float16, oldest first
    preprocess: dict[str, dict[str, Any]] = field(default_factory=dict)  # view -> spec dict
    window: dict[str, Any] | None = None  # {"frames": T, "interval_s": s} of ``ceus``
    source: dict[str, Any] = field(default_factory=dict)  # provenance (task, seed, root...)

    def __post_init__(self) -> None:
        n = len(self.labels)
        if len(self.groups) != n:
            raise DataError(f"{len(self.groups)} patient ids for {n} labels")
        for name in ("bmode", "ceus"):
            arr = getattr(self, name)
            if arr is not None and len(arr) != n:
                raise DataError(f"{name} has {len(arr)} samples, labels {n}")
        if self.bmode is None and self.ceus is None:
            raise DataError("an ArraySet needs bmode or ceus arrays")
        if n and (self.labels.min() < 0 or self.labels.max() >= len(self.classes)):
            raise DataError("labels out of range of classes")

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def has_patients(self) -> bool:
        return bool(len(self.groups)) and bool(np.all(self.groups != ""))

    def supports(self, kind: str) -> bool:
        """Whether a model of ``kind`` (image | clip | bimodal) can read this set."""
        need = {"image": ("bmode",), "clip": ("ceus",), "bimodal": ("bmode", "ceus")}[kind]
        return all(getattr(self, n) is not None for n in need)

    def subset(self, idx: np.ndarray) -> ArraySet:
        idx = np.asarray(idx, np.int64)
        return ArraySet(self.classes, self.labels[idx], self.groups[idx],
                        None if self.bmode is None else self.bmode[idx],
                        None if self.ceus is None else self.ceus[idx],
                        self.preprocess, self.window, self.source)

    def class_counts(self) -> dict[str, int]:
        return {c: int((self.labels == i).sum()) for i, c in enumerate(self.classes)}

    def metadata(self) -> dict[str, Any]:
        return {"version": ARRAYS_VERSION, "classes": list(self.classes),
                "preprocess": self.preprocess, "window": self.window, "source": self.source,
                "groups": [str(g) for g in self.groups]}

    def save(self, path: str | Path) -> Path:
        """``path`` (.npz) and its .json metadata, written atomically; returns the .npz."""
        arrays = {"labels": self.labels}
        if self.bmode is not None:
            arrays["bmode"] = self.bmode
        if self.ceus is not None:
            arrays["ceus"] = self.ceus
        return save_pair(path, arrays, self.metadata(), compress=False)

    @classmethod
    def load(cls, path: str | Path) -> ArraySet:
        arrays, meta = load_pair(path, ARRAYS_VERSION, "array set")
        return cls(tuple(meta["classes"]), arrays["labels"], np.array(meta["groups"], dtype=str),
                   arrays.get("bmode"), arrays.get("ceus"), meta["preprocess"], meta["window"],
                   meta["source"])


def save_pair(path: str | Path, arrays: dict[str, np.ndarray], meta: dict[str, Any], *,
              compress: bool) -> Path:
    """``path`` as .npz plus a .json of ``meta``; the .npz is renamed into place last, so
    its presence means the pair is complete (a cache a killed run leaves is never half)."""
    p = Path(path).with_suffix(".npz")
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(p.stem + f".tmp{os.getpid()}.npz")
    if compress:
        np.savez_compressed(tmp, **arrays)  # type: ignore[arg-type]
    else:
        np.savez(tmp, **arrays)  # type: ignore[arg-type]
    p.with_suffix(".json").write_text(json.dumps(meta))
    os.replace(tmp, p)
    return p


def load_pair(path: str | Path, version: int, what: str
              ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """(arrays, metadata) that ``save_pair`` wrote; ``DataError`` if missing, unreadable or
    of another version."""
    p = Path(path).with_suffix(".npz")
    try:
        meta = json.loads(p.with_suffix(".json").read_text())
        if meta.get("version") != version:
            raise DataError(f"{p}: {what} version {meta.get('version')!r}, expected {version}")
        with np.load(p) as z:
            return {k: z[k] for k in z.files}, meta
    except (OSError, ValueError, KeyError) as e:
        raise DataError(f"{p}: cannot load {what} ({e})") from e
