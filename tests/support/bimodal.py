"""A tiny random-weight bimodal export and the phantom windows it reads, for the INT8 tests
(needs torch: import it after ``pytest.importorskip("torch")``)."""

from __future__ import annotations

from pathlib import Path

import torch

from hepascope.train.datasets.arrays import ArraySet
from hepascope.train.datasets.phantom import ClipWindow, phantom_arrays
from hepascope.train.export import export_bimodal
from hepascope.train.models import create_model


def tiny_bimodal_export(out: Path, patients_per_class: int) -> ArraySet:
    """Export a 2-class ``bimodal_resnet18_lite`` (48x48 B-mode, 32x32 CEUS, window 2) into
    ``out`` and return sol2 phantom windows of that geometry."""
    data = phantom_arrays("sol2", patients_per_class=patients_per_class, samples_per_patient=2,
                          kinds={"bimodal"}, bmode_size=(48, 48), ceus_size=(32, 32),
                          window=ClipWindow(2, 1 / 3), workers=1)
    torch.manual_seed(0)
    model = create_model("bimodal_resnet18_lite", num_classes=2, window=2, width=16,
                         ceus_width=8, bmode_size=(48, 48), ceus_size=(32, 32))
    export_bimodal(model, {"model": "bimodal_resnet18_lite", "labels": list(data.classes),
                           "window": 2, "interval_s": 1 / 3, "preprocess": data.preprocess},
                   out)
    return data
