"""report.md from the report.json content: per model a per-class table in the form of S2's
Table 1 (mean ± SD over folds, %), the per-fold table, the pooled confusion matrix, figures;
then the comparison across models (S3's Table 1 / S2's Figure 5)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from hepascope.train.evaluation.mdtable import HEAD, KEYS, NA, pct, pm, table


def human(n: Any, unit: str = "") -> str:
    """11689512 -> 11.69 M; strings pass through; None -> n/a."""
    if n is None:
        return NA
    if isinstance(n, str):
        return n
    for div, suffix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(n) >= div:
            return f"{n / div:.2f} {suffix}{unit}"
    return f"{n:g} {unit}".strip()


def _meta(meta: dict[str, Any]) -> list[str]:
    lines = []
    for key in sorted(meta):
        if key == "models":  # params/FLOPs: shown in the comparison table
            continue
        value = meta[key]
        if isinstance(value, dict):
            value = ", ".join(f"{k}={value[k]}" for k in sorted(value))
        elif isinstance(value, list):
            value = " ".join(str(v) for v in value)
        lines.append(f"- **{key}**: {value}" if key != "command" else f"- **command**: `{value}`")
    return lines


def _data(name: str | None, data: dict[str, Any], classes: Sequence[str]) -> list[str]:
    rows = [[c, data["per_class"][c]["samples"], data["per_class"][c]["patients"]]
            for c in classes]
    rows.append(["**Total**", data["samples"], data["patients"]])
    lines = [f"Model {name}:", ""] if name else []
    lines += table(("Class", "Samples", "Patients"), rows)
    if data["patients"] == data["samples"] and not data["unknown_patient_samples"]:
        lines += ["", "Every patient has exactly one sample. If these ids name images rather "
                  "than people (a data set without patient ids), one person's images may be "
                  "on both sides of a split and the figures may be optimistic."]
    if data["unknown_patient_samples"]:
        lines += ["", f"{data['unknown_patient_samples']} samples have no patient id "
                  "(not counted in Patients)."]
    return [*lines, ""]


def _leakage(results: dict[str, Any]) -> list[str]:
    lines = []
    for name, rep in results.items():
        lk = rep["leakage"]
        if not lk["test_patients"]:
            lines.append(f"- {name}: **not verifiable**: no test sample has a patient id, so "
                         "images of one patient may be in train and test (splits may leak).")
            continue
        text = (f"- {name}: **passed**: no patient is in both train and test of any of its "
                f"{lk['folds']} folds ({lk['test_patients']} test patients checked)")
        if lk["unknown_test_samples"]:
            text += (f"; {lk['unknown_test_samples']} test samples have no patient id and "
                     "cannot be checked: those splits may leak")
        lines.append(text + ".")
    return [*lines, ""]


def _per_class(rep: dict[str, Any]) -> list[str]:
    agg = rep["aggregate"]
    rows = [[c, *(pm(agg["per_class"][c][k]) for k in KEYS)] for c in agg["classes"]]
    rows.append(["**Macro**", *(pm(agg["macro"][k]) for k in KEYS)])
    lines = [f"Per class, one-vs-rest, mean ± SD over {agg['folds']} folds (%):", ""]
    lines += table(("Class", *HEAD), rows)
    lines += ["", "Macro row: unweighted mean over classes, except Accuracy = top-1 accuracy. "
              f"{NA}: undefined in every fold (a class absent or never predicted).", ""]
    extra = [f"ECE (15 bins, calibrated): {pm(agg['ece'])} % over folds, "
             f"{pct(agg['ece_pooled'])} % "
             "pooled."]
    if "auc_positive" in agg:
        extra.insert(0, f"Positive class ({agg['positive_class']}) AUC: "
                        f"{pm(agg['auc_positive'])} %.")
    return [*lines, " ".join(extra), ""]


def _per_fold(rep: dict[str, Any]) -> list[str]:
    from hepascope.train.evaluation.markdown_extra import epochs_cell

    agg = rep["aggregate"]
    head = ("Fold", *HEAD, "ECE", "Test samples", "Test patients", "Epochs", "Seconds")
    rows = []
    for f in rep["folds"]:
        m = f["metrics"]
        rows.append([f["fold"], *(pct(m["macro"][k]) for k in KEYS), pct(m["ece"]),
                     f["test_samples"], f["test_patients"],
                     epochs_cell(f, rep.get("capped") or []), f"{f['seconds']:.1f}"])
    stats = [*(agg["macro"][k] for k in KEYS), agg["ece"]]
    rows.append(["**Average**", *(pct(s["mean"]) for s in stats), "", "", "",
                 f"{rep['seconds']['mean']:.1f}"])
    rows.append(["**SD**", *(pct(s["sd"]) for s in stats), "", "", "",
                 f"{rep['seconds']['sd']:.1f}"])
    return ["Per fold, macro (%):", "", *table(head, rows), ""]


def _confusion(rep: dict[str, Any]) -> list[str]:
    agg = rep["aggregate"]
    classes = agg["classes"]
    rows = []
    for c, counts in zip(classes, agg["confusion"], strict=True):
        n = sum(counts)
        rows.append([c, *(f"{v} ({100 * v / n:.1f}%)" if n else "0" for v in counts), n])
    return ["Confusion matrix, pooled over folds (rows = true class, columns = predicted; "
            "row %):", "", *table(("True \\ Predicted", *classes, "Total"), rows), ""]


def _comparison(rows: Sequence[dict[str, Any]], basis: str) -> list[str]:
    head = ("Model", "Params", "FLOPs", "Accuracy", "Sensitivity", "Specificity", "PPV", "F1",
            "AUC", "ECE before", "ECE", "Coverage", "Sel. accuracy", "Seconds / fold")
    body = [[r["model"] + (" ⚠" if r.get("capped") else ""), human(r["params"]),
             human(r["flops"]), pm(r["accuracy"]),
             *(pm(r.get(k)) for k in ("sensitivity", "specificity", "ppv", "f1", "auc",
                                      "ece_before", "ece", "coverage", "selective_accuracy")),
             pm(r["seconds"], scale=1.0)] for r in rows]
    of = "macro averages over classes" if basis.startswith("macro") else f"those of the {basis}"
    return [f"Mean ± SD over folds (%; time in seconds). Accuracy is top-1; sensitivity, "
            f"specificity, PPV, F1 and AUC are {of}; ECE after calibration unless marked "
            "before; coverage and selective accuracy at each fold's abstention threshold. "
            "⚠: a cap cut folds short.", "",
            *table(head, body), ""]


def render_markdown(report: dict[str, Any]) -> str:
    """The whole report.md text."""
    results = report["results"]
    classes = report["classes"]
    lines = [f"# {report['title']}", "", *_meta(report["meta"]),
             f"- **classes**: {', '.join(classes)}", "", "## Data", ""]
    datas = [rep["data"] for rep in results.values()]
    if all(d == datas[0] for d in datas):
        lines += _data(None, datas[0], classes)
    else:
        for name, rep in results.items():
            lines += _data(name, rep["data"], classes)
    from hepascope.train.evaluation import markdown_extra as extra

    lines += ["## Patient leakage check", "", *_leakage(results), *extra.warnings_section(report)]
    lines += extra.versus_baseline(report)
    for name, rep in results.items():
        figs = rep["figures"]
        lines += [f"## {name}", "", *extra.caps_note(rep), *_per_class(rep), *_per_fold(rep),
                  *_confusion(rep),
                  f"![confusion matrix]({figs['confusion']}) ![ROC curves]({figs['roc']}) "
                  f"![reliability diagram]({figs['reliability']})", "",
                  *extra.model_sections(rep)]
    lines += ["## Comparison", "", *_comparison(report["comparison"], report["comparison_basis"])]
    if report.get("comparison_figure"):
        lines += [f"![model comparison]({report['comparison_figure']})", ""]
    if report.get("predictions"):
        lines += [f"Every test sample's calibrated probabilities, predicted label and status "
                  f"(ok / uncertain), per model and fold: [{report['predictions']}]"
                  f"({report['predictions']}).", ""]
    return "\n".join(lines)
