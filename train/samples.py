"""Torch views of an ``ArraySet``: the dataset each model kind reads, and the class-balanced
sampler (the seeds balance classes), rank-aware for DDP."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from hepascope.train.augment import Augment
from hepascope.train.datasets.arrays import KINDS, ArraySet

Sample = tuple[tuple[torch.Tensor, ...], int]


class ArrayDataset(Dataset[Sample]):
    """``((inputs...), label)`` for samples ``indices`` of ``data``, as ``kind`` reads them:
    image ``(bmode (C,H,W),)``; clip ``(ceus as (C,T,h,w),)``; bimodal ``(bmode, ceus
    (T,C,h,w))``. ``augment``: an ``Augment`` (own seeded generator; DataLoader workers 0).

    ``partial_window``: the share of bimodal samples whose CEUS window is cut to its newest
    m frames (m uniform in 1..T-1), the older slots repeating the oldest kept frame: what
    the live window holds right after a scene cut resets it (the streamer repeats its
    oldest feature until the window is full), so results can be trusted sooner."""

    def __init__(self, data: ArraySet, indices: np.ndarray | Sequence[int], kind: str, *,
                 augment: Augment | None = None, seed: int = 0,
                 partial_window: float = 0.0, keep_frames: int | None = None) -> None:
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
        if not 0 <= partial_window <= 1:
            raise ValueError(f"partial_window must be in [0, 1], got {partial_window}")
        if not data.supports(kind):
            raise ValueError(f"this data set has no {'CEUS' if data.ceus is None else 'B-mode'} "
                             f"view, which {kind} models need")
        self.data, self.kind, self.augment = data, kind, augment
        if keep_frames is not None and keep_frames < 1:
            raise ValueError(f"keep_frames must be >= 1, got {keep_frames}")
        self.partial_window = partial_window
        self.keep_frames = keep_frames  # every window cut to its newest m frames (validation)
        self.indices = np.asarray(indices, np.int64)
        self.rng = np.random.default_rng(seed)
        # normalised values of black (outside the image) and white, per view
        self.range = {v: (-d["mean"] / d["std"], (1 - d["mean"]) / d["std"])
                      for v, d in data.preprocess.items()}

    def __len__(self) -> int:
        return len(self.indices)

    def labels(self) -> np.ndarray:
        return self.data.labels[self.indices]

    def _view(self, name: str, k: int, geom: dict[str, float] | None) -> np.ndarray:
        arr = getattr(self.data, name)[k]
        if geom is None or self.augment is None:
            return np.asarray(arr, np.float32)
        return self.augment.apply(arr, geom, self.rng, *self.range[name])

    def _cut_window(self, ceus: np.ndarray) -> np.ndarray:
        """(T, C, h, w) -> the same with its oldest T - m frames replaced by frame T - m
        (with probability ``partial_window``)."""
        t = len(ceus)
        if self.keep_frames is not None and self.keep_frames < t:
            out = np.array(ceus, np.float32)
            out[:t - self.keep_frames] = out[t - self.keep_frames]
            return out
        if self.partial_window <= 0 or t < 2 or self.rng.random() >= self.partial_window:
            return ceus
        first = t - int(self.rng.integers(1, t))  # keep frames first..T-1 (m = T - first)
        out = np.array(ceus, np.float32)
        out[:first] = out[first]
        return out

    def __getitem__(self, i: int) -> Sample:
        k = int(self.indices[i])
        geom = self.augment.draw(self.rng) if self.augment is not None else None
        xs: list[np.ndarray] = []
        if self.kind in ("image", "bimodal"):
            xs.append(self._view("bmode", k, geom))
        if self.kind == "clip":
            xs.append(self._view("ceus", k, geom).transpose(1, 0, 2, 3))  # (C, T, h, w)
        elif self.kind == "bimodal":
            xs.append(self._cut_window(self._view("ceus", k, geom)))
        return tuple(torch.from_numpy(np.ascontiguousarray(x)) for x in xs), \
            int(self.data.labels[k])


class BalancedSampler(Sampler[int]):
    """Every class equally often per epoch, without replacement where the class has enough
    samples: each class's indices are permuted and cycled up to the largest class's count.
    Under DDP every rank draws the same epoch order (same seed) and takes every
    ``world``-th index from ``rank``: disjoint shards of equal length, no communication."""

    def __init__(self, labels: np.ndarray, seed: int, *, rank: int = 0, world: int = 1) -> None:
        if not 0 <= rank < world:
            raise ValueError(f"need 0 <= rank < world, got {rank}, {world}")
        self.by_class = [np.flatnonzero(labels == c) for c in np.unique(labels)]
        self.n_max = max(len(ix) for ix in self.by_class)
        self.rng = np.random.default_rng(seed)
        self.rank, self.world = rank, world

    def __len__(self) -> int:
        return self.n_max * len(self.by_class) // self.world

    def __iter__(self) -> Iterator[int]:
        picks = [np.resize(self.rng.permutation(ix), self.n_max) for ix in self.by_class]
        order = self.rng.permutation(np.concatenate(picks))
        return iter(order[self.rank::self.world][:len(self)].tolist())


class ShuffleSampler(BalancedSampler):
    """Plain shuffling (no class balancing), with the same DDP sharding."""

    def __init__(self, labels: np.ndarray, seed: int, *, rank: int = 0, world: int = 1) -> None:
        super().__init__(np.zeros(len(labels), np.int64), seed, rank=rank, world=world)
