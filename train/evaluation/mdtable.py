"""Markdown table cells and the number formats of report.md, shared by ``markdown`` and
``markdown_extra``."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

HEAD = ("Accuracy", "Sensitivity", "Specificity", "PPV", "NPV", "F1", "AUC")
KEYS = ("accuracy", "sensitivity", "specificity", "ppv", "npv", "f1", "auc")
NA = "n/a"


def _cell(text: Any) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _row(cells: Sequence[Any]) -> str:
    return "| " + " | ".join(_cell(c) for c in cells) + " |"


def table(head: Sequence[str], rows: Sequence[Sequence[Any]], right_from: int = 1) -> list[str]:
    align = [":---" if i < right_from else "---:" for i in range(len(head))]
    return [_row(head), _row(align), *(_row(r) for r in rows)]


def pct(v: float | None) -> str:
    return NA if v is None else f"{100 * v:.1f}"


def pm(stat: dict[str, Any] | None, scale: float = 100.0, digits: int = 1) -> str:
    """ "mean ± SD" of a mean_sd dict; n/a when undefined in every fold."""
    if not stat or stat.get("mean") is None:
        return NA
    return f"{scale * stat['mean']:.{digits}f} ± {scale * stat['sd']:.{digits}f}"
