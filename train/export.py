"""Export trained models to ONNX with everything the pipeline needs in the metadata.

* ``export_bimodal``: a two-branch bimodal model as the three graphs the pipeline chains,
  ``bmode_encoder.onnx``, ``ceus_encoder.onnx`` and ``head.onnx`` (softmax included), so
  each frame is encoded once and its features cached.
* ``export_single``: an image or clip model (or a single-branch bimodal ablation, read as
  one) as one graph ``model.onnx``: input "image" (N, C, H, W) or "clip" (N, C, T, H, W),
  output "probs" (softmax included).
* ``export_checkpoint``: whichever of the two a trained checkpoint needs, with the
  ``torch.export`` program of each graph's function beside it (``programs.py``: what the
  torch engine runs), and the checkpoint itself (``model.safetensors`` +
  ``model.json``) when the model can be rebuilt from it.

Each graph carries the labels, its input spec and preprocessing parameters; parity with
PyTorch is checked at export (batch 1 and 3, max |diff| on probabilities <= 1e-4, else
``ModelError``); the figures go to ``export.json``."""

from __future__ import annotations

import copy
import json
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from torch import nn

from hepascope.core.errors import ModelError
from hepascope.core.export_format import (
    BMODE_FILE,
    CEUS_FILE,
    FORMAT_VERSION,
    HEAD_FILE,
    META_ABSTAIN,
    META_CALIBRATION,
    META_INPUTS,
    META_LABELS,
    META_MODEL,
    META_OUTPUT,
    META_PARTS,
    META_PREPROCESS,
    META_ROLE,
    META_TEMPERATURE,
    META_VERSION,
    META_WARMUP,
    META_WINDOW,
    REPORT_FILE,
    ROLE_BMODE,
    ROLE_CEUS,
    ROLE_CLIP,
    ROLE_HEAD,
    ROLE_IMAGE,
    SINGLE_FILE,
)

OPSET = 17
# Optional metadata (core/export_format.py), beside the required keys (stream/model_loader.py
# REQUIRED), on the graph that outputs "probs" (model.onnx, or head.onnx of the streaming
# split): what the live path applies (META_TEMPERATURE, META_ABSTAIN, META_WARMUP), and the
# whole record of evaluation.calibration.calibration_record (how they were fitted, on which
# validation patients) under META_CALIBRATION. Absent: not calibrated (T 1, no abstention).
PARITY_TOL = 1e-4  # max |torch - onnxruntime| on probabilities
VIEW_OF = {ROLE_IMAGE: "bmode", ROLE_CLIP: "ceus"}  # which preprocessed view each reads


class _Part(nn.Module):
    def __init__(self, model: nn.Module, role: str) -> None:
        super().__init__()
        self.model, self.role = model, role

    def forward(self, *xs: torch.Tensor) -> torch.Tensor:
        m: Any = self.model
        if self.role == ROLE_BMODE:
            return m.encode_bmode(xs[0])
        if self.role == ROLE_CEUS:
            return m.encode_ceus(xs[0])
        return torch.softmax(m.forward_head(xs[0], xs[1]), dim=1)


class _Single(nn.Module):
    """softmax(logits) of an image or clip model; a single-branch bimodal model is read as
    one: its B-mode branch from an image, its CEUS branch from a clip (N, C, T, h, w)."""

    def __init__(self, model: nn.Module, kind: str) -> None:
        super().__init__()
        self.model, self.kind = model, kind

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m: Any = self.model
        if m.input_kind != "bimodal":
            logits = m(x)
        elif self.kind == ROLE_IMAGE:
            logits = m.forward_head(m.encode_bmode(x), None)
        else:
            logits = m.forward_head(None, m.encode_window(x.transpose(1, 2)))
        return torch.softmax(logits, dim=1)


def graph_module(model: nn.Module, role: str) -> nn.Module:
    """The module whose trace is the graph of ``role`` ("bmode_encoder", "ceus_encoder",
    "head", "image" or "clip"): what the torch engine runs in that graph's place."""
    if role in (ROLE_BMODE, ROLE_CEUS, ROLE_HEAD):
        return _Part(model, role)
    if role in VIEW_OF:
        return _Single(model, role)
    raise ModelError(f"no graph has role {role!r}")


def single_graph_kind(model: nn.Module) -> str | None:
    """"image" or "clip" for a model exported as one graph, None for a two-branch bimodal
    model (exported as the streaming split)."""
    m: Any = model
    kind = getattr(m, "input_kind", None)
    if kind in (ROLE_IMAGE, ROLE_CLIP):
        return str(kind)
    if kind != "bimodal":
        raise ModelError(f"{type(model).__name__} has no input_kind: not a hepascope model")
    branches = tuple(m.branches)
    if len(branches) == 2:
        return None
    return ROLE_IMAGE if branches == ("bmode",) else ROLE_CLIP


def _export_graph(module: nn.Module, args: tuple[torch.Tensor, ...], path: Path,
                  ins: list[str], outs: list[str]) -> None:
    """Trace ``module`` (eval mode) to ``path``, batch axis dynamic on every input/output."""
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore", DeprecationWarning)  # legacy exporter: no onnxscript
        # sizes read in forward (SimAM's n = H*W, static pooling matrices) are traced as
        # constants: right, since only the batch axis varies
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        # the wrapper must be in eval mode too: export restores the wrapper's mode
        # recursively afterwards, which would put the model back in training mode
        torch.onnx.export(module.eval(), args, str(path), dynamo=False, opset_version=OPSET,
                          input_names=ins, output_names=outs,
                          dynamic_axes={n: {0: "batch"} for n in ins + outs})


def _set_metadata(path: Path, meta: dict[str, str]) -> None:
    model = onnx.load(str(path))
    onnx.helper.set_model_props(model, meta)
    onnx.save(model, str(path))
    # checked from the file: checking the in-memory proto serialises it again (seconds for
    # VGG-16's 0.5 GB)
    onnx.checker.check_model(str(path))


def _parity(path: Path, module: nn.Module, args: tuple[torch.Tensor, ...]) -> float:
    """Max |torch - onnxruntime| of ``module`` at batch 1 and 3 (the batch axis is dynamic:
    check it really is)."""
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    gen = torch.Generator().manual_seed(1)
    diffs = []
    for batch in (1, 3):
        xs = tuple(torch.randn(batch, *a.shape[1:], generator=gen) for a in args)
        with torch.no_grad():
            want = module.eval()(*xs).numpy()
        feeds = {i.name: x.numpy() for i, x in zip(sess.get_inputs(), xs, strict=True)}
        got = sess.run(None, feeds)[0]
        diffs.append(float(np.abs(got - want).max()))
    return max(diffs)


def export_bimodal(model: nn.Module, meta: dict[str, Any], out_dir: str | Path) -> dict[str, Any]:
    """Write the three graphs for ``model`` (eval mode) described by checkpoint ``meta``;
    return the parity report."""
    kind = single_graph_kind(model)
    if kind is not None:
        raise ModelError(f"{meta['model']}: a {kind} model has no streaming split; export it "
                         f"as one graph with export_single(kind={kind!r}) or export_checkpoint")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    m: Any = model.eval()
    chans = int(getattr(m, "in_chans", 1))
    t_win, labels = int(meta["window"]), list(meta["labels"])
    bh, bw = m.bmode_size
    ch, cw = m.ceus_size
    gen = torch.Generator().manual_seed(0)
    examples = {
        ROLE_BMODE: (torch.randn(1, chans, bh, bw, generator=gen),),
        ROLE_CEUS: (torch.randn(1, chans, ch, cw, generator=gen),),
        ROLE_HEAD: (torch.randn(1, m.bmode_dim, generator=gen),
                    torch.randn(1, t_win, m.ceus_dim, generator=gen)),
    }
    names = {ROLE_BMODE: (["bmode"], ["bmode_feat"]), ROLE_CEUS: (["ceus"], ["ceus_feat"]),
             ROLE_HEAD: (["bmode_feat", "ceus_feats"], ["probs"])}
    files = {ROLE_BMODE: BMODE_FILE, ROLE_CEUS: CEUS_FILE, ROLE_HEAD: HEAD_FILE}
    common = {META_VERSION: FORMAT_VERSION, META_MODEL: str(meta["model"]),
              META_LABELS: json.dumps(labels)}
    report: dict[str, Any] = {"opset": OPSET, "parts": {}}
    for role, args in examples.items():
        ins, outs = names[role]
        path = out / files[role]
        _export_graph(_Part(m, role), args, path, ins, outs)
        part_meta = {**common, META_ROLE: role}
        if role == ROLE_HEAD:
            part_meta.update(calibration_metadata(meta))
            part_meta[META_WINDOW] = json.dumps(
                {"frames": t_win, "interval_s": float(meta["interval_s"])})
            part_meta[META_PARTS] = json.dumps(
                {ROLE_BMODE: files[ROLE_BMODE], ROLE_CEUS: files[ROLE_CEUS]})
            part_meta[META_OUTPUT] = "probs"
        else:
            view = "bmode" if role == ROLE_BMODE else "ceus"
            part_meta[META_PREPROCESS] = json.dumps(meta["preprocess"][view])
            part_meta[META_INPUTS] = json.dumps({ins[0]: view})
        _set_metadata(path, part_meta)
        report["parts"][role] = {"file": path.name,
                                "max_abs_diff": _parity(path, _Part(m, role), args)}
    worst = max(p["max_abs_diff"] for p in report["parts"].values())
    report["max_abs_diff"] = worst
    if report["parts"][ROLE_HEAD]["max_abs_diff"] > PARITY_TOL:
        raise ModelError(f"ONNX parity failed: head max |diff| {worst:.2e} > {PARITY_TOL:.0e}")
    (out / REPORT_FILE).write_text(json.dumps(report, indent=2))
    return report


def _single_input(kind: str, preprocess: dict[str, Any], window: dict[str, Any] | None,
                  chans: int) -> tuple[int, ...]:
    """The input shape at batch 1, from the preprocessing spec (and window) the pipeline
    will feed: what the graph is traced at."""
    try:
        h, w = (int(v) for v in preprocess["size"])
        c = int(preprocess.get("channels", chans))
    except (KeyError, TypeError, ValueError) as e:
        raise ModelError(f"preprocess spec has no usable 'size' (H, W): {e!r}") from e
    if c != chans:
        raise ModelError(f"preprocess gives {c} channels, the model reads {chans}")
    if kind == ROLE_IMAGE:
        return (1, c, h, w)
    if not window or int(window.get("frames", 0)) < 1 or "interval_s" not in window:
        raise ModelError("a clip model needs window {'frames': T, 'interval_s': s}")
    return (1, c, int(window["frames"]), h, w)


def calibration_metadata(meta: dict[str, Any]) -> dict[str, str]:
    """The calibration metadata of an exported graph from a checkpoint's ``calibration``
    record (temperature and abstention threshold as JSON numbers, the record beside), or {}."""
    cal = meta.get("calibration")
    if cal is None:
        return {}
    if not isinstance(cal, dict) or not float(cal.get("temperature", 0)) > 0:
        raise ModelError(f"{meta.get('model')}: invalid calibration record {cal!r}")
    out = {META_TEMPERATURE: json.dumps(float(cal["temperature"])),
           # a threshold fitted at the top confidence can exceed 1 by a rounding error
           META_ABSTAIN: json.dumps(min(max(float(cal.get("abstain_threshold", 0.0)), 0.0), 1.0)),
           META_CALIBRATION: json.dumps(cal, sort_keys=True)}
    if cal.get("warmup_fraction") is not None:
        out[META_WARMUP] = json.dumps(min(max(float(cal["warmup_fraction"]), 0.0), 1.0))
    return out


def export_single(model: nn.Module, *, kind: str, labels: list[str], preprocess: dict[str, Any],
                  window: dict[str, Any] | None, model_name: str,
                  out_dir: str | Path, extra_meta: dict[str, str] | None = None
                  ) -> dict[str, Any]:
    """Write ``out_dir/model.onnx`` for an image or clip ``model`` (``kind``; a single-branch
    bimodal ablation goes as the kind of its branch). ``preprocess`` is the spec dict of the
    view it reads (B-mode for image, CEUS for clip), ``window`` ({"frames": T,
    "interval_s": s}) is required for clips. Returns the parity report (also written to
    ``export.json``), shaped as ``export_bimodal``'s."""
    if kind not in VIEW_OF:
        raise ModelError(f"kind must be {ROLE_IMAGE!r} or {ROLE_CLIP!r}, got {kind!r}")
    own = single_graph_kind(model)
    if own != kind:
        what = "a two-branch bimodal" if own is None else f"an {own}"
        raise ModelError(f"{model_name} is {what} model, not exportable as {kind!r}")
    if not labels or not all(isinstance(x, str) for x in labels):
        raise ModelError("labels must be a non-empty list of names")
    m: Any = model.eval()
    shape = _single_input(kind, preprocess, window, int(getattr(m, "in_chans", 1)))
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / SINGLE_FILE
    args = (torch.randn(*shape, generator=torch.Generator().manual_seed(0)),)
    _export_graph(_Single(m, kind), args, path, [kind], ["probs"])
    meta = {META_VERSION: FORMAT_VERSION, META_MODEL: model_name,
            META_ROLE: kind, META_LABELS: json.dumps(list(labels)),
            META_PREPROCESS: json.dumps(preprocess),
            META_INPUTS: json.dumps({kind: VIEW_OF[kind]}), META_OUTPUT: "probs",
            **(extra_meta or {})}
    if kind == ROLE_CLIP and window is not None:  # a clip without window: refused above
        meta[META_WINDOW] = json.dumps(
            {"frames": int(window["frames"]), "interval_s": float(window["interval_s"])})
    _set_metadata(path, meta)
    diff = _parity(path, _Single(m, kind), args)
    report: dict[str, Any] = {"opset": OPSET, "kind": kind, "max_abs_diff": diff,
                              "parts": {kind: {"file": SINGLE_FILE, "max_abs_diff": diff}}}
    if diff > PARITY_TOL:
        raise ModelError(f"ONNX parity failed: max |diff| {diff:.2e} > {PARITY_TOL:.0e}")
    (out / REPORT_FILE).write_text(json.dumps(report, indent=2))
    return report


def _write_weights(model: nn.Module, meta: dict[str, Any], out: Path) -> None:
    """The checkpoint beside the graphs, checked to rebuild ``model``: same structure (the
    repr lists every layer's hyperparameters) and the same tensors (strict load)."""
    from hepascope.train.checkpoint import load_checkpoint, save_model

    save_model(out, model, meta)
    rebuilt, _ = load_checkpoint(out)
    if repr(rebuilt) != repr(model):
        raise ModelError(f"{meta['model']} with kwargs {meta['kwargs']} does not rebuild the "
                         "exported model")


def export_checkpoint(model: nn.Module, meta: dict[str, Any], out_dir: str | Path, *,
                      programs: bool = True) -> dict[str, Any]:
    """Export ``model`` as its checkpoint ``meta`` (model, labels, preprocess per view,
    window, interval_s) says: the streaming split for a two-branch bimodal model, one graph
    otherwise; with ``programs``, each graph's ``torch.export`` program beside it (the
    torch engine's input; its parity joins the report). When ``meta`` says how to
    rebuild the model ("kwargs", as ``train`` writes it), the weights and ``meta`` go
    beside the graphs too (``model.safetensors`` + ``model.json``)."""
    kind = single_graph_kind(model)
    if kind is None:
        report = export_bimodal(model, meta, out_dir)
    else:
        window = None if kind == ROLE_IMAGE else {"frames": int(meta["window"]),
                                                  "interval_s": float(meta["interval_s"])}
        report = export_single(model, kind=kind, labels=list(meta["labels"]),
                               preprocess=meta["preprocess"][VIEW_OF[kind]], window=window,
                               model_name=str(meta["model"]), out_dir=out_dir,
                               extra_meta=calibration_metadata(meta))
    out = Path(out_dir)
    if programs:
        from hepascope.train.programs import write_programs

        graphs = [out / p["file"] for p in report["parts"].values()]
        report["programs_max_abs_diff"] = write_programs(
            lambda role: graph_module(copy.deepcopy(model), role), graphs, PARITY_TOL)
        (out / REPORT_FILE).write_text(json.dumps(report, indent=2))
    if "kwargs" in meta:
        _write_weights(model, meta, out)
    return report
