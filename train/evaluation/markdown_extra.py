"""report.md sections beyond the per-class tables: networks against the texture baseline,
calibration, abstention, per-patient results and the warnings of capped folds."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from hepascope.train.evaluation.mdtable import HEAD, KEYS, NA, pct, pm, table

CAP_MARK = "⚠"


def caps_note(rep: dict[str, Any]) -> list[str]:
    """A warning line beside a model's figures when a cap cut any of its folds short."""
    if not rep.get("capped"):
        return []
    return [f"**{CAP_MARK} {rep['caps_warning']}.** Figures marked {CAP_MARK} come from "
            "under-trained folds: rerun without the cap (or a larger one) to trust them.", ""]


def epochs_cell(fold: dict[str, Any], capped: Sequence[dict[str, Any]]) -> str:
    x = fold.get("extra") or {}
    if x.get("epochs_run") is None:
        return "-"
    text = f"{x['epochs_run']}/{x.get('epochs')}, best {x.get('best_epoch')} ({x.get('stopped')})"
    return text + (f" {CAP_MARK}" if any(c["fold"] == fold["fold"] for c in capped) else "")


def versus_baseline(report: dict[str, Any]) -> list[str]:
    vs = report.get("versus_baseline")
    if not vs:
        return []
    base = vs["baseline"]
    results = report["results"]
    lines = ["## Networks against the texture baseline (same folds)", "",
             f"{base}: GLCM and LBP texture features with a random forest (balanced class "
             "weights, fixed seed), trained on the same learning part of each fold and "
             "calibrated on the same validation part.", ""]
    for name, net in vs["networks"].items():
        mark = f" {CAP_MARK}" if results[name].get("capped") else ""
        rows = [[r["fold"], pct(r["accuracy"]), pct(r["baseline_accuracy"]),
                 pct(r["diff_accuracy"]), pct(r["f1"]), pct(r["baseline_f1"]),
                 pct(r["auc"]), pct(r["baseline_auc"])] for r in net["folds"]]
        d = net["diff"]
        rows.append(["**Mean ± SD diff**", "", "", pm(d["accuracy"]), pm(d["f1"]), "",
                     pm(d["auc"]), ""])
        lines += [f"{name}{mark} vs {base}, macro (%); the network is ahead in "
                  f"{net['wins_accuracy']} of {len(net['folds'])} folds on accuracy:", "",
                  *table(("Fold", "Net acc", "Base acc", "Diff", "Net F1", "Base F1",
                           "Net AUC", "Base AUC"), rows), ""]
        lines += _per_class_side(results[name], results[base], name, base)
    return lines


def _per_class_side(net: dict[str, Any], base: dict[str, Any], name: str,
                    bname: str) -> list[str]:
    keys = ("ppv", "sensitivity", "f1")
    rows = []
    for c in net["aggregate"]["classes"]:
        a, b = net["aggregate"]["per_class"][c], base["aggregate"]["per_class"][c]
        rows.append([c, *(pm(a[k]) for k in keys), *(pm(b[k]) for k in keys)])
    a, b = net["aggregate"]["macro"], base["aggregate"]["macro"]
    rows.append(["**Macro**", *(pm(a[k]) for k in keys), *(pm(b[k]) for k in keys)])
    head = ("Class", f"{name} precision", "recall", "F1", f"{bname} precision", "recall", "F1")
    return [f"Per class, mean ± SD over folds (%), {name} | {bname}:", "",
            *table(head, rows), ""]


def calibration(rep: dict[str, Any]) -> list[str]:
    cal = rep["calibration"]
    rows = [[f["fold"], f"{f['temperature']:.3f}", pct(f["ece_before"]), pct(f["ece_after"]),
             f"{f['nll_before']:.3f}", f"{f['nll_after']:.3f}", f["n_val"]]
            for f in cal["folds"]]
    rows.append(["**Mean ± SD**", pm(cal["temperature"], 1.0, 3), pm(cal["ece_before"]),
                 pm(cal["ece_after"]), pm(cal["nll_before"], 1.0, 3),
                 pm(cal["nll_after"], 1.0, 3), ""])
    return ["Calibration: a temperature per fold, fitted on the fold's validation part (NLL), "
            "applied to its test fold; ECE over 15 bins (%):", "",
            *table(("Fold", "Temperature", "ECE before", "ECE after", "NLL before",
                     "NLL after", "Val samples"), rows), ""]


def abstention(rep: dict[str, Any]) -> list[str]:
    ab = rep["abstention"]
    target = ab["target"]
    rows = [[f["fold"], f"{f['threshold']:.3f}", "yes" if f["met_on_validation"] else "no",
             pct(f["val_coverage"]), pct(f["val_selective_accuracy"]), pct(f["coverage"]),
             pct(f["selective_accuracy"])] for f in ab["folds"]]
    rows.append(["**Mean ± SD**", pm(ab["threshold"], 1.0, 3), "", "", "", pm(ab["coverage"]),
                 pm(ab["selective_accuracy"])])
    pooled = ab["pooled"]
    return [f"Abstention: per fold, the lowest threshold on the calibrated confidence whose "
            f"selective accuracy on the validation part reaches {pct(target)}%; below it a "
            "sample is `uncertain`. Test coverage and selective accuracy at it (%):", "",
            *table(("Fold", "Threshold", "Target met (val)", "Val coverage",
                     "Val sel. accuracy", "Test coverage", "Test sel. accuracy"), rows), "",
            f"Pooled over test folds: coverage {pc(pooled['coverage'])}, selective accuracy "
            f"{pc(pooled['selective_accuracy'])}.", ""]


def patients(rep: dict[str, Any]) -> list[str]:
    pt = rep["patients"]
    agg = pt["aggregate"]
    rows = [[c, *(pm(agg["per_class"][c][k]) for k in KEYS)] for c in agg["classes"]]
    rows.append(["**Macro**", *(pm(agg["macro"][k]) for k in KEYS)])
    n = sum(f["patients"] for f in pt["folds"])
    single = (" Every patient has one sample here, so this table repeats the per-sample one."
              if n == rep["data"]["samples"] else "")
    return [f"Per patient ({n} test patients): a patient's answer is the mean of its samples' "
            f"calibrated probabilities; one-vs-rest, mean ± SD over folds (%).{single}", "",
            *table(("Class", *HEAD), rows), "",
            f"Majority vote over a patient's samples: accuracy {pc(pt['vote_accuracy'])}. "
            f"Abstention per patient (the mean's confidence against the fold's threshold): "
            f"coverage {pc(pt['coverage'])}, selective accuracy "
            f"{pc(pt['selective_accuracy'])}. ECE {pc(agg['ece'])}.", ""]


def pc(stat: Any) -> str:
    """A mean ± SD dict or a value, as a percentage with its sign ("n/a" alone)."""
    text = pm(stat) if isinstance(stat, dict) else pct(stat)
    return text if text == NA else f"{text}%"


def model_sections(rep: dict[str, Any]) -> list[str]:
    figs = rep["figures"]
    return [*calibration(rep), *abstention(rep), f"![risk-coverage]({figs['risk_coverage']})",
            "", *patients(rep)]


def warnings_section(report: dict[str, Any]) -> list[str]:
    warns = report.get("caps_warnings") or []
    if not warns:
        return []
    return ["## Warnings", "", *(f"- {CAP_MARK} {w}" for w in warns), ""]


__all__ = ["NA", "abstention", "calibration", "caps_note", "epochs_cell", "model_sections",
           "patients", "versus_baseline", "warnings_section"]
