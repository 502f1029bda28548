"""A way to run a model in the engine comparison (``bench/engine_compare.py``), also timed
by the model section and the bimodal branches."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np


@dataclass
class Variant:
    """A way to run the model: each of ``runs`` (copies of one session, or of the torch
    model) maps a (1, C, H, W) frame to probabilities."""

    name: str
    description: str
    runs: list[Callable[[np.ndarray], np.ndarray]]
    close: Callable[[], None]
    session_ms: float

    @property
    def run(self) -> Callable[[np.ndarray], np.ndarray]:
        return self.runs[0]
