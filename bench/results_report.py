"""What ``hepascope bench`` writes: results.json (everything), results.csv (one row per
model x engine x batch, one per pipeline section), summary.md (every figure with its unit
and method) and PNG plots (latency CDF, throughput vs batch, per-stage stacked bars,
stream scaling), drawn with matplotlib's Agg backend.

The pipeline sections' dicts are read generically: nested dicts flattened to dotted keys,
units read from the key names (``*_ms``, ``*_per_s``, ``*_pct``, ``*_mb``, ``*_s``; see
``bench/results_keys.py``)."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

from hepascope.bench.headline import headline_md
from hepascope.bench.peer_section import peer_md
from hepascope.bench.results_keys import find_value, flatten, unit

PIPELINE_SECTIONS = ("pipeline", "naive", "baseline_ratio", "pipeline_60fps", "naive_60fps",
                     "baseline_ratio_60fps", "scaling", "slow_model")
PLOTS = ("latency_cdf.png", "throughput.png", "stages.png", "scaling.png")


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.3g}" if abs(v) < 100 else f"{v:.0f}"
    if isinstance(v, list):
        return ", ".join(_fmt(x) for x in v)
    return "" if v is None else str(v)


# ---------------------------------------------------------------- JSON / CSV

def csv_rows(res: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per model x engine x batch (latency figures on the batch-1 row), then one
    per pipeline section (its scalar figures, flattened)."""
    rows: list[dict[str, Any]] = []
    for model, m in res["models"].items():
        for eng, e in m["engines"].items():
            base = {"section": "models", "model": model, "engine": eng, "params": m["params"],
                    "flops": m["flops"], "gmacs": m["gmacs"]}
            if "not_available" in e:
                rows.append({**base, "not_available": e["not_available"]})
                continue
            for b, fps in e["throughput_fps"].items():
                row = {**base, "batch": int(b), "frames_per_s": fps}
                if b == "1":
                    row.update({f"{k}_ms": v for k, v in e["latency_ms"].items() if k != "n"},
                               gflops_per_s=e.get("gflops_per_s"),
                               peak_share=e.get("peak_share"))
                rows.append(row)
    for name in PIPELINE_SECTIONS:
        flat = {k: v for k, v in flatten(res.get(name, {})).items() if not isinstance(v, list)}
        rows.append({"section": name, **flat})
    return rows


def write_csv(rows: list[dict[str, Any]], path: Path) -> None:
    fields: list[str] = []
    for r in rows:
        fields += [k for k in r if k not in fields]
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields, restval="")
        w.writeheader()
        w.writerows(rows)


# ---------------------------------------------------------------- plots

def _figure(n: int) -> tuple[Any, list[Any]]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = min(n, 3)
    rows = -(-n // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5.2 * cols, 4.0 * rows), squeeze=False)
    for ax in axes.flat[n:]:
        ax.axis("off")
    return fig, list(axes.flat[:n])


def _empty(path: Path, title: str, why: str) -> None:
    fig, (ax,) = _figure(1)
    ax.axis("off")
    ax.set_title(title)
    ax.text(0.5, 0.5, f"not available:\n{why}", ha="center", va="center", wrap=True)
    _save(fig, path)


def _save(fig: Any, path: Path) -> None:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_latency_cdf(res: dict[str, Any], path: Path) -> None:
    """Per model, the batch-1 latency CDF of each engine (log x)."""
    models = {k: m for k, m in res["models"].items()
              if any("samples_ms" in e for e in m["engines"].values())}
    if not models:
        _empty(path, "latency CDF, batch 1", "no engine timed")
        return
    import numpy as np

    fig, axes = _figure(len(models))
    for ax, (name, m) in zip(axes, models.items(), strict=True):
        for eng, e in m["engines"].items():
            if "samples_ms" not in e:
                continue
            t = np.sort(np.array(e["samples_ms"]))
            lat = e["latency_ms"]
            ax.step(t, np.arange(1, t.size + 1) / t.size, where="post",
                    label=f"{eng}: p50 {lat['p50']:.1f}, p99 {lat['p99']:.1f} ms")
        ax.set_xscale("log")
        _plain_log_ticks(ax.xaxis)
        ax.set_xlabel("latency per frame, batch 1 (ms, log scale)")
        ax.set_ylabel("fraction of calls ≤ x")
        ax.set_title(name)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8, loc="lower right")
    _save(fig, path)


def _plain_log_ticks(axis: Any) -> None:
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    axis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    axis.set_minor_formatter(NullFormatter())


def plot_throughput(res: dict[str, Any], path: Path) -> None:
    """Per model, frames/s of each engine against batch size."""
    models = {k: m for k, m in res["models"].items()
              if any("throughput_fps" in e for e in m["engines"].values())}
    if not models:
        _empty(path, "throughput vs batch", "no engine timed")
        return
    fig, axes = _figure(len(models))
    for ax, (name, m) in zip(axes, models.items(), strict=True):
        for eng, e in m["engines"].items():
            if "throughput_fps" in e:
                b = [int(x) for x in e["throughput_fps"]]
                ax.plot(b, list(e["throughput_fps"].values()), "o-", label=eng)
        ax.set_xscale("log", base=2)
        ax.set_xticks(b, [str(x) for x in b])
        ax.set_xlabel("batch size")
        ax.set_ylabel("frames/s (median call)")
        ax.set_ylim(bottom=0)
        ax.set_title(name)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    _save(fig, path)


def stage_table(section: dict[str, Any]) -> dict[str, dict[str, float]]:
    """{stage: {"p50_ms": .., "p99_ms": ..}} from the first dict under a key naming
    "stage" in ``section`` (empty when there is none)."""
    for k, v in section.items():
        if "stage" in k.lower() and isinstance(v, dict):
            out = {}
            for stage, figs in v.items():
                if isinstance(figs, dict):
                    out[stage] = {p: float(find_value(figs, p) or 0.0) for p in ("p50", "p99")}
            return out
    return {}


def plot_stages(res: dict[str, Any], path: Path) -> None:
    """Per section (own y scale), stacked bars of its per-stage p50 and p99 (ms)."""
    bars = {n: stage_table(res.get(n, {})) for n in PIPELINE_SECTIONS}
    # a bimodal model's "infer" is its "encode" + "fuse": stacking all three counts it twice
    bars = {n: {k: v for k, v in s.items() if not (k == "infer" and {"encode", "fuse"} <= set(s))}
            for n, s in bars.items() if s}
    if not bars:
        why = res.get("pipeline", {}).get("not_available", "no per-stage figures")
        _empty(path, "per-stage latency", str(why))
        return
    fig, axes = _figure(len(bars))
    for ax, (name, stages) in zip(axes, bars.items(), strict=True):
        bottom = [0.0, 0.0]
        for i, (stage, figs) in enumerate(stages.items()):
            h = [figs["p50"], figs["p99"]]
            ax.bar(["p50", "p99"], h, bottom=bottom, label=stage, color=f"C{i % 10}")
            bottom = [b + x for b, x in zip(bottom, h, strict=True)]
        ax.set_ylabel("ms per frame (sum of per-stage percentiles)")
        ax.set_title(f"{name}: per-stage latency")
        ax.legend(fontsize=8)
        ax.grid(True, axis="y", alpha=0.3)
    _save(fig, path)


def scaling_points(scaling: dict[str, Any]) -> list[tuple[int, float, list[float]]]:
    """(streams, total results/s, [results/s of each stream]) from the scaling section:
    entries keyed by stream count (``{"1": {...}}``, possibly under one sub-dict) or a list
    of entries with a ``streams`` count; per-stream figures under a key naming
    "per_stream" (numbers, or dicts with results_per_s)."""
    entries: list[tuple[int, Any]] = []
    for k, v in scaling.items():
        if isinstance(v, dict) and str(k).isdigit():
            entries.append((int(k), v))
        elif isinstance(v, dict) and v and all(str(x).isdigit() for x in v):
            entries += [(int(x), y) for x, y in v.items()]
        elif isinstance(v, list):
            entries += [(int(e["streams"]), e) for e in v
                        if isinstance(e, dict) and "streams" in e]
    out = []
    for n, e in sorted(entries, key=lambda x: x[0]):
        per: list[float] = []
        for k, v in e.items():
            if "per_stream" in k and isinstance(v, list):
                per = [float(x if isinstance(x, int | float)
                             else find_value(x, "results_per_s") or 0.0) for x in v]
        total = find_value({k: v for k, v in e.items() if "per_stream" not in k},
                           "results_per_s")
        out.append((n, float(total if total is not None else sum(per)), per))
    return out


def plot_scaling(res: dict[str, Any], path: Path) -> None:
    """Results/s in total and per stream against the number of streams."""
    sc = res.get("scaling", {})
    pts = scaling_points(sc)
    if not pts:
        _empty(path, "stream scaling", str(sc.get("not_available", sc.get("error", "no data"))))
        return
    fig, (ax,) = _figure(1)
    n = [p[0] for p in pts]
    ax.plot(n, [p[1] for p in pts], "o-", lw=2, label="total")
    batched = sc.get("batched", {}).get("runs", [])
    if batched:  # one process, one model batching across the streams
        ax.plot([r["streams"] for r in batched], [r["total_results_per_s"] for r in batched],
                "s--", lw=2, color="C2", label="total, batched (one process)")
    for i, p in enumerate(pts):
        ax.plot([p[0]] * len(p[2]), p[2], "x", color="C1",
                label="each stream" if i == 0 else None)
    ax.set_xticks(n)
    ax.set_xlabel("streams")
    ax.set_ylabel("results/s")
    ax.set_ylim(bottom=0)
    ax.set_title("stream scaling")
    ax.grid(True, alpha=0.3)
    ax.legend()
    _save(fig, path)


# ---------------------------------------------------------------- summary

def _models_md(res: dict[str, Any]) -> list[str]:
    batches = res["budget"]["batches"]
    head = ("| model | params (M) | GFLOPs/frame | GMACs/frame | engine | p50 ms | p95 ms "
            "| p99 ms | " + " | ".join(f"frames/s @b{b}" for b in batches)
            + " | GFLOP/s @p50 | share of peak |")
    out = [head, "|" + "---|" * (10 + len(batches))]
    for name, m in res["models"].items():
        pm = "?" if m["params"] is None else f"{m['params'] / 1e6:.2f}"
        gf = "?" if m["flops"] is None else f"{m['flops'] / 1e9:.2f}"
        gm = "?" if m["gmacs"] is None else f"{m['gmacs']:.2f}"
        for eng, e in m["engines"].items():
            if "not_available" in e:
                out.append(f"| {name} | {pm} | {gf} | {gm} | {eng} | not available: "
                           f"{e['not_available']} |" + " |" * (4 + len(batches)))
                continue
            lat = e["latency_ms"]
            fps = " | ".join(f"{e['throughput_fps'][str(b)]:.1f}" for b in batches)
            share = e.get("peak_share")
            out.append(f"| {name} | {pm} | {gf} | {gm} | {eng} | {lat['p50']:.2f} | "
                       f"{lat['p95']:.2f} | {lat['p99']:.2f} | {fps} | "
                       f"{_fmt(e.get('gflops_per_s'))} | "
                       f"{'?' if share is None else f'{100 * share:.1f}%'} |")
    return out


def _section_md(name: str, sec: dict[str, Any]) -> list[str]:
    """A section's scalars as figure | value | unit, each list of dicts (runs, windows) as
    its own table, one row per entry (nested lists of dicts left to results.json)."""
    out = [f"### {name}", ""]
    if "not_available" in sec or "error" in sec:
        return [*out, f"Not available: {sec.get('not_available', sec.get('error'))}", ""]
    lists = {k: v for k, v in sec.items()
             if isinstance(v, list) and v and all(isinstance(x, dict) for x in v)}
    notes = {k: v for k, v in sec.items() if isinstance(v, str) and len(v) > 60}
    rest = {k: v for k, v in sec.items() if k not in lists and k not in notes}
    out += ["| figure | value | unit |", "|---|---|---|"]
    for k, v in flatten(rest).items():
        out.append(f"| {k} | {_fmt(v)} | {'' if isinstance(v, bool) else unit(k)} |")
    for k, rows in lists.items():
        flat = [{c: x for c, x in flatten({c: y for c, y in r.items()
                                           if not isinstance(y, list)}).items()}
                for r in rows]
        cols = list(dict.fromkeys(c for r in flat for c in r))
        out += ["", f"{k} (units: " + ", ".join(f"{c} {unit(c)}" for c in cols if unit(c))
                + "):", "", "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
        out += ["| " + " | ".join(_fmt(r.get(c)) for c in cols) + " |" for r in flat]
    out += [f"\n{k}: {v}" for k, v in notes.items()]
    return [*out, ""]


def _seed_md(res: dict[str, Any]) -> list[str]:
    sp = res["seed_paper"]
    t, o = sp["theirs"], sp["ours"]
    return ["| | frames (results)/s | end-to-end delay p99 (ms) |", "|---|---|---|",
            f"| theirs: {t['label']} | {t['frames_per_s']:.0f} | "
            f"{t['end_to_end_delay_ms']:.0f} (their end-to-end delay) |",
            f"| ours: {res['facts']['machine']}, {res['pipeline_model']} | "
            f"{_fmt(o['results_per_s']) or 'n/a'} | "
            f"{_fmt(o['capture_to_overlay_p99_ms']) or 'n/a'} (capture->overlay) |", "",
            f"Ours from: {o['source']}. Their figures are quoted from S1, measured on their "
            "hardware; not comparable beyond order of magnitude.", ""]


def _method_md(res: dict[str, Any]) -> list[str]:
    pk, b = res["peak"], res["budget"]
    cpu = pk["cpu_gflops"]
    lines = [
        "* **params**: number of parameters of the model (count_params), millions.",
        "* **GFLOPs/frame**: FLOPs (not MACs) of one frame through every graph of the "
        "export, batch 1, at the input sizes listed below, counted by "
        "torch.utils.flop_counter (matrix products and convolutions, a multiply-add = 2 "
        "FLOPs); **GMACs** = FLOPs / 2 / 1e9.",
        f"* **latency** (ms): wall clock around one frame (every graph's `infer`, inputs "
        f"standard-normal), batch 1, {b['runs']} timed calls per engine after 3 warm-up "
        "calls, engines interleaved in chunks of 10 (bench/engine_compare.py `time_variants`); "
        "p50/p95/p99 of those calls.",
        f"* **frames/s @bN**: N / median wall time of a batch-N call, calls repeated for "
        f"{b['batch_s']} s (at least 3) after one warm-up call.",
        "* **GFLOP/s @p50** = FLOPs per frame / p50 latency. **share of peak** = that / the "
        f"peak measured in this run: CPU fp32 matmul at {pk['cpu_sizes']}, best of 3, "
        f"torch {cpu['torch']:.0f}, numpy {cpu['numpy']:.0f}"
        + (f", ONNX Runtime {cpu['ort']:.0f}" if "ort" in cpu else "") + " GFLOP/s, peak "
        f"{cpu['peak']:.0f} GFLOP/s (bench/engine_compare.py `measure_peak`, "
        "bench/ort_peak.py)"
        + (f"; GPU fp16 {pk['gpu_gflops']['fp16']:.0f} GFLOP/s, fp32 "
           f"{pk['gpu_gflops']['fp32']:.0f} GFLOP/s (8192^3 matmul, CUDA events, "
           "bench/gpu.py `matmul_peak`), the share of GPU engines against fp16"
           if "gpu_gflops" in pk else "")
        + (f". INT8 rows are against the CPU's INT8 peak, ONNX Runtime's MatMulInteger "
           f"(uint8 x int8), {pk['cpu_int8_gops']:.0f} GOP/s" if "cpu_int8_gops" in pk
           else ". INT8 rows are against the fp32 peak") + ".",
        "* Weights are random (latency does not depend on them); the INT8 variant is "
        "calibrated on random frames, so only its speed means anything here.",
        f"* **pipeline sections**: the live pipeline on a phantom source at "
        f"{b['pipeline_fps']:.0f} frames/s (pipeline, naive: also "
        f"{b.get('fast_fps', 60):.0f}) for {b['pipeline_seconds']:g} s each, streams "
        f"{b['streams']}; units from the key names (_ms: milliseconds, _per_s: per second, "
        "_pct: percent of one core, _mb: MiB); p50/p99 are percentiles over the results "
        "of the run.",
    ]
    for name, m in res["models"].items():
        lines.append(f"* {name} inputs: " + "; ".join(m["inputs"]))
    return lines


def summary_md(res: dict[str, Any]) -> str:
    f = res["facts"]
    v = ", ".join(f"{k} {x}" for k, x in f["versions"].items() if x)
    lines = [f"# hepascope bench: {f['machine']} ({f['device']})", "",
             f"{f['date']} · CPU {f['cpu']} ({', '.join(f['isa'])}), {f['cores']} cores"
             + (f" · GPU {f['gpu']}" if f.get("gpu") else "") + f" · {v}", "",
             "```bash", f["command"], "```", "",
             f"Total {res['total_s']:.0f} s{' (--quick)' if f['quick'] else ''}.", "",
             *headline_md(res), "## Models", "", *_models_md(res), "",
             "![latency CDF](latency_cdf.png)", "", "![throughput](throughput.png)", "",
             "## Live pipeline", ""]
    for name in PIPELINE_SECTIONS:
        lines += _section_md(name, res.get(name, {}))
    lines += ["![per-stage latency](stages.png)", "", "![stream scaling](scaling.png)", "",
              *peer_md(res.get("peer")),
              "## Seed paper beside ours", "", *_seed_md(res), "## Method", "",
              *_method_md(res)]
    return "\n".join(lines) + "\n"


def write_all(res: dict[str, Any], out: Path) -> list[Path]:
    """Write every file into ``out``; return their paths."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(res, indent=1, default=str))
    write_csv(csv_rows(res), out / "results.csv")
    for name, fn in zip(PLOTS, (plot_latency_cdf, plot_throughput, plot_stages, plot_scaling),
                        strict=True):
        fn(res, out / name)
    (out / "summary.md").write_text(summary_md(res))
    return [out / n for n in ("results.json", "results.csv", "summary.md", *PLOTS)]
