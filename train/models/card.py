"""The models card: every registered model's kind, input size, parameters, FLOPs and ONNX
parity, as a table.

    python -m hepascope.train.models.card [--markdown] [--no-parity] [--models NAME ...]

Parameters are counted at the task's 5 classes and 1 (grey) channel, and also at the
published configuration where a paper gives a figure (ImageNet: 1000 classes, 3 channels;
Kinetics: 400), next to that figure. FLOPs are at batch 1 and the model's default input
size (counted on the meta device: no memory, no time); GMACs = GFLOPs / 2, the unit most
papers call "GFLOPs". Parity is max |torch - onnxruntime| on probabilities of the export
the pipeline would load (``export_checkpoint``, at the default input size)."""

from __future__ import annotations

import argparse
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from hepascope.core.errors import guard_main
from hepascope.train.flops import count_flops, count_params
from hepascope.train.models import create_model, example_inputs, list_models

TASK_CLASSES = 5
CLIP_INTERVAL_S = 2.0  # S3: one frame per 2 s over the first minute
# name -> (constructor kwargs of the published configuration, published M parameters);
# a "*" in the table marks a figure for the backbone only (see NOTES)
PUBLISHED: dict[str, tuple[dict[str, Any], float]] = {
    "resnet18": ({"num_classes": 1000, "in_chans": 3}, 11.69),  # He et al. 2016
    "resnet50": ({"num_classes": 1000, "in_chans": 3}, 25.56),  # He et al. 2016
    "vgg16": ({"num_classes": 1000, "in_chans": 3}, 138.36),  # Simonyan & Zisserman 2015
    "vgg16_bn": ({"num_classes": 1000, "in_chans": 3}, 138.37),  # torchvision
    "res3d_18": ({"num_classes": 400, "in_chans": 3}, 33.2),  # Hara et al. 2018
    # the backbone alone (no SE, no fusion): Szegedy et al. 2016 as in timm
    "se_inception_resnet_v2": ({"num_classes": 1000, "in_chans": 3, "attn_layer": None,
                                "fusion": False}, 55.84),
}
NOTES = {"se_inception_resnet_v2": "Inception-ResNet-v2 without SE and multi-level fusion"}


@dataclass
class CardRow:
    name: str
    kind: str
    input_size: str
    params_m: float  # at TASK_CLASSES classes, 1 channel
    published_cfg_m: float | None  # ours at the published configuration
    published_m: float | None  # the paper's figure
    gflops: float
    parity: float | None  # None: not checked


def _meta_model(name: str, **kwargs: Any) -> nn.Module:
    with torch.device("meta"):
        return create_model(name, **kwargs)


def _size_text(model: Any) -> str:
    if model.input_kind == "bimodal":
        return (f"{model.bmode_size[0]}x{model.bmode_size[1]} + "
                f"{model.window}x{model.ceus_size[0]}x{model.ceus_size[1]}")
    return "x".join(str(v) for v in model.default_input_size)


def _parity(model: Any, name: str) -> float:
    from hepascope.core.config import load_config
    from hepascope.core.preprocess import PreprocessSpec
    from hepascope.train.export import export_checkpoint

    cfg = load_config()
    kind = model.input_kind
    if kind == "bimodal":
        sizes, frames = {"bmode": model.bmode_size, "ceus": model.ceus_size}, model.window
    else:
        hw = tuple(model.default_input_size[-2:])
        sizes, frames = {"bmode": hw, "ceus": hw}, model.default_input_size[0]
    pre = {v: PreprocessSpec(cfg.layout, cfg.preprocess, s, model.in_chans, (v,)).to_dict()
           for v, s in sizes.items()}
    meta = {"model": name, "labels": [f"class{i}" for i in range(TASK_CLASSES)],
            "window": frames, "interval_s": CLIP_INTERVAL_S, "preprocess": pre}
    with tempfile.TemporaryDirectory() as out:
        return float(export_checkpoint(model.eval(), meta, out, programs=False)["max_abs_diff"])


def card_row(name: str, parity: bool = True) -> CardRow:
    meta_model: Any = _meta_model(name, num_classes=TASK_CLASSES)
    cfg, figure = PUBLISHED.get(name, (None, None))
    published_cfg = (count_params(_meta_model(name, **cfg)) / 1e6) if cfg is not None else None
    flops = count_flops(meta_model, example_inputs(meta_model))
    diff = None
    if parity:
        torch.manual_seed(0)
        diff = _parity(create_model(name, num_classes=TASK_CLASSES), name)
    return CardRow(name, meta_model.input_kind, _size_text(meta_model),
                   count_params(meta_model) / 1e6, published_cfg, figure, flops / 1e9, diff)


HEADER = ("model", "kind", "input", "params M (5 cls)", "params M (published cfg)",
          "paper M", "GFLOPs", "GMACs", "ONNX max abs diff")


def _cells(r: CardRow) -> tuple[str, ...]:
    def opt(v: float | None, fmt: str) -> str:
        return "-" if v is None else format(v, fmt)

    star = "*" if r.name in NOTES else ""
    return (r.name, r.kind, r.input_size, f"{r.params_m:.2f}",
            opt(r.published_cfg_m, ".2f") + star, opt(r.published_m, "g") + star,
            f"{r.gflops:.2f}", f"{r.gflops / 2:.2f}", opt(r.parity, ".1e"))


def format_table(rows: Sequence[CardRow], markdown: bool = False) -> str:
    cells = [HEADER, *(_cells(r) for r in rows)]
    if markdown:
        lines = ["| " + " | ".join(c) + " |" for c in cells]
        lines.insert(1, "|" + "|".join("---" for _ in HEADER) + "|")
    else:
        widths = [max(len(c[i]) for c in cells) for i in range(len(HEADER))]
        lines = ["  ".join(v.ljust(w) for v, w in zip(c, widths, strict=True)).rstrip()
                 for c in cells]
    notes = [f"* {r.name}: {NOTES[r.name]}" for r in rows if r.name in NOTES]
    return "\n".join(lines + (["", *notes] if notes else []))


@guard_main
def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m hepascope.train.models.card",
                                description="Parameters, FLOPs and ONNX parity of every "
                                "registered model.")
    p.add_argument("--markdown", action="store_true", help="print a markdown table")
    p.add_argument("--no-parity", action="store_true",
                   help="skip the ONNX export and parity check (seconds instead of minutes)")
    p.add_argument("--models", nargs="+", choices=list_models(), metavar="NAME",
                   help="only these models (default: all registered)")
    args = p.parse_args(argv)
    rows = [card_row(n, parity=not args.no_parity) for n in args.models or list_models()]
    print(format_table(rows, markdown=args.markdown))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
