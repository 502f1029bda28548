"""Export a trained bimodal checkpoint as the three ONNX graphs the pipeline chains:
``bmode_encoder.onnx``, ``ceus_encoder.onnx`` and ``head.onnx`` (softmax included), each
carrying in its metadata the labels, its input spec and preprocessing parameters, so the
pipeline needs nothing else. Parity with PyTorch is checked at export, part by part and
through the streaming chain; the figures go to ``export.json``."""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from torch import nn

from hepascope.stream.bimodal import ROLE_BMODE, ROLE_CEUS, ROLE_HEAD
from hepascope.stream.errors import ModelError
from hepascope.stream.models import HEAD_FILE, META_VERSION

OPSET = 17
PARITY_TOL = 1e-4  # max |torch - onnxruntime| on probabilities


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


def _set_metadata(path: Path, meta: dict[str, str]) -> None:
    model = onnx.load(str(path))
    onnx.helper.set_model_props(model, meta)
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


def export_bimodal(model: nn.Module, meta: dict[str, Any], out_dir: str | Path) -> dict[str, Any]:
    """Write the three graphs for ``model`` (eval mode) described by checkpoint ``meta``;
    return the parity report."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    m: Any = model.eval()
    t_win, labels = int(meta["window"]), list(meta["labels"])
    bh, bw = m.bmode_size
    ch, cw = m.ceus_size
    gen = torch.Generator().manual_seed(0)
    examples = {
        ROLE_BMODE: (torch.randn(1, 1, bh, bw, generator=gen),),
        ROLE_CEUS: (torch.randn(1, 1, ch, cw, generator=gen),),
        ROLE_HEAD: (torch.randn(1, m.bmode_dim, generator=gen),
                    torch.randn(1, t_win, m.ceus_dim, generator=gen)),
    }
    names = {ROLE_BMODE: (["bmode"], ["bmode_feat"]), ROLE_CEUS: (["ceus"], ["ceus_feat"]),
             ROLE_HEAD: (["bmode_feat", "ceus_feats"], ["probs"])}
    files = {ROLE_BMODE: "bmode_encoder.onnx", ROLE_CEUS: "ceus_encoder.onnx",
             ROLE_HEAD: HEAD_FILE}
    common = {"hepascope.version": META_VERSION, "hepascope.model": str(meta["model"]),
              "hepascope.labels": json.dumps(labels)}
    report: dict[str, Any] = {"opset": OPSET, "parts": {}}
    for role, args in examples.items():
        ins, outs = names[role]
        path = out / files[role]
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore", DeprecationWarning)  # legacy exporter: no onnxscript
            # SimAM's n = H*W is traced as a constant: right, since input sizes are fixed
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            # the wrapper must be in eval mode too: export restores the wrapper's mode
            # recursively afterwards, which would put the model back in training mode
            torch.onnx.export(_Part(m, role).eval(), args, str(path), dynamo=False,
                              opset_version=OPSET, input_names=ins, output_names=outs,
                              dynamic_axes={n: {0: "batch"} for n in ins + outs})
        part_meta = {**common, "hepascope.role": role}
        if role == ROLE_HEAD:
            part_meta["hepascope.window"] = json.dumps(
                {"frames": t_win, "interval_s": float(meta["interval_s"])})
            part_meta["hepascope.parts"] = json.dumps(
                {ROLE_BMODE: files[ROLE_BMODE], ROLE_CEUS: files[ROLE_CEUS]})
            part_meta["hepascope.output"] = "probs"
        else:
            view = "bmode" if role == ROLE_BMODE else "ceus"
            part_meta["hepascope.preprocess"] = json.dumps(meta["preprocess"][view])
            part_meta["hepascope.inputs"] = json.dumps({ins[0]: view})
        _set_metadata(path, part_meta)
        report["parts"][role] = {"file": path.name, "max_abs_diff": _parity(path, m, role, args)}
    worst = max(p["max_abs_diff"] for p in report["parts"].values())
    report["max_abs_diff"] = worst
    if report["parts"][ROLE_HEAD]["max_abs_diff"] > PARITY_TOL:
        raise ModelError(f"ONNX parity failed: head max |diff| {worst:.2e} > {PARITY_TOL:.0e}")
    (out / "export.json").write_text(json.dumps(report, indent=2))
    return report


def _parity(path: Path, m: nn.Module, role: str, args: tuple[torch.Tensor, ...]) -> float:
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    gen = torch.Generator().manual_seed(1)
    diffs = []
    for batch in (1, 3):  # the batch axis is dynamic: check it really is
        xs = tuple(torch.randn(batch, *a.shape[1:], generator=gen) for a in args)
        with torch.no_grad():
            want = _Part(m, role).eval()(*xs).numpy()
        feeds = {i.name: x.numpy() for i, x in zip(sess.get_inputs(), xs, strict=True)}
        got = sess.run(None, feeds)[0]
        diffs.append(float(np.abs(got - want).max()))
    return max(diffs)
