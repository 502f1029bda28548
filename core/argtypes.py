"""argparse value types shared by every room's command-line registration."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any


def positive(kind: Callable[[str], Any]) -> Callable[[str], Any]:
    """argparse type: a number of ``kind`` that must be > 0."""

    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError as e:
            raise argparse.ArgumentTypeError(f"not a number: {text!r}") from e
        if value <= 0:
            raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
        return value

    return parse


def above_zero(kind: type) -> Callable[[str], Any]:
    """argparse type: a ``kind`` > 0, named after ``kind`` (argparse's own "invalid int
    value" when the text is not one): the ``phantom`` commands' habit."""

    def conv(s: str) -> object:
        v = kind(s)
        if v <= 0:
            raise argparse.ArgumentTypeError(f"must be > 0, got {s}")
        return v

    conv.__name__ = kind.__name__
    return conv
