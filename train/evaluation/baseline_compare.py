"""Networks against the texture baseline, fold by fold in the same folds: accuracy, macro
F1 and macro AUC of each, and each network's difference to the baseline (mean ± SD)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from hepascope.train.evaluation.baseline import BASELINE
from hepascope.train.evaluation.metrics import mean_sd

COMPARED = ("accuracy", "f1", "auc")


def versus_baseline(models: dict[str, dict[str, Any]],
                    classes: Sequence[str]) -> dict[str, Any] | None:
    """None without a baseline in ``models``; else per fold and per network the macro
    figures beside the baseline's and their differences."""
    if BASELINE not in models:
        return None
    base = {f["fold"]: f["metrics"]["macro"] for f in models[BASELINE]["folds"]}
    out: dict[str, Any] = {"baseline": BASELINE, "metrics": list(COMPARED), "networks": {}}
    for name, rep in models.items():
        if name == BASELINE:
            continue
        rows, diffs = [], {k: [] for k in COMPARED}  # type: ignore[var-annotated]
        for f in rep["folds"]:
            m, b = f["metrics"]["macro"], base.get(f["fold"])
            if b is None:
                continue
            row: dict[str, Any] = {"fold": f["fold"]}
            for k in COMPARED:
                row[k], row[f"baseline_{k}"] = m[k], b[k]
                d = None if m[k] is None or b[k] is None else m[k] - b[k]
                row[f"diff_{k}"] = d
                diffs[k].append(d)
            rows.append(row)
        wins = sum(1 for r in rows if (r["diff_accuracy"] or 0) > 0)
        out["networks"][name] = {"folds": rows, "wins_accuracy": wins,
                                 "diff": {k: mean_sd(v) for k, v in diffs.items()}}
    return out
