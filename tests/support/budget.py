"""The test budget: CI (the README's test command) runs a short variant of every kind of
fault and soak test; ``pytest --slow`` (or ``HEPASCOPE_SLOW=1``) runs the long ones too:
more trials, the 2-minute soak. Tests marked ``slow`` are the long variants."""

from __future__ import annotations

import os

ENV = "HEPASCOPE_SLOW"


def full() -> bool:
    """Whether this run takes the long variants (``--slow`` sets the variable)."""
    return os.environ.get(ENV) == "1"


def trials(ci: int, slow: int) -> int:
    """How many trials a repeated fault test makes: ``ci`` by default, ``slow`` with --slow."""
    if not 0 < ci <= slow:
        raise ValueError(f"need 0 < ci <= slow, got {ci}, {slow}")
    return slow if full() else ci
