"""The export format, defined once: the files of an export directory, the roles of its
graphs and the ``hepascope.*`` ONNX metadata keys. ``train/export.py`` writes it,
``stream/model_loader.py`` (and the engines) read it; no other module spells these strings.

An export is a bimodal directory (``bmode_encoder.onnx``, ``ceus_encoder.onnx``,
``head.onnx``) or one graph ``model.onnx`` (role ``image`` or ``clip``: the input's
name), with ``export.json`` (the parity figures), beside each graph the ``torch.export`` program
the torch engine runs (``<graph>.pt2``), and the checkpoint (``model.safetensors`` +
``model.json``) when the model can be rebuilt from it."""

from __future__ import annotations

from pathlib import Path

FORMAT_VERSION = "1"  # the value of META_VERSION that this code writes and accepts

# roles (META_ROLE): what each graph computes
ROLE_BMODE, ROLE_CEUS, ROLE_HEAD = "bmode_encoder", "ceus_encoder", "head"
ROLE_IMAGE, ROLE_CLIP = "image", "clip"  # single-graph models: the role is the input's name
ROLES = (ROLE_BMODE, ROLE_CEUS, ROLE_HEAD, ROLE_IMAGE, ROLE_CLIP)

# files
BMODE_FILE, CEUS_FILE, HEAD_FILE = "bmode_encoder.onnx", "ceus_encoder.onnx", "head.onnx"
BIMODAL_GRAPHS = (BMODE_FILE, CEUS_FILE, HEAD_FILE)
SINGLE_FILE = "model.onnx"  # a single-graph export's file name in its directory
CHECKPOINT_WEIGHTS, CHECKPOINT_META = "model.safetensors", "model.json"  # a checkpoint's files
WEIGHTS_FILES = (CHECKPOINT_WEIGHTS, CHECKPOINT_META)  # the checkpoint kept beside the graphs
REPORT_FILE = "export.json"  # the export's parity figures
MANIFEST_FILE = "manifest.json"  # a packaged model's files, SHA-256s, recipe and precision
INT8_HEAD_FILE = "head.int8.onnx"  # the INT8 configuration's head; its parts name its encoders
PROGRAM_SUFFIX = ".pt2"  # the torch.export program of a graph, beside it
PROGRAM_META = "hepascope.json"  # a program's own record: model, labels, role

# metadata keys, required (stream/model_loader.py REQUIRED says which on which role)
META_VERSION = "hepascope.version"
META_MODEL = "hepascope.model"
META_ROLE = "hepascope.role"
META_LABELS = "hepascope.labels"        # JSON list of class names
META_PREPROCESS = "hepascope.preprocess"  # JSON: the view's preprocessing spec
META_INPUTS = "hepascope.inputs"        # JSON: {input name: view name}
META_OUTPUT = "hepascope.output"        # probs | logits | auto
META_WINDOW = "hepascope.window"        # JSON: the CEUS window (head, clip)
META_PARTS = "hepascope.parts"          # JSON: {role: file} of a bimodal head
# optional, on the graph that outputs the probabilities (the head of a bimodal export)
META_TEMPERATURE = "hepascope.temperature"  # > 0: the logits are divided by it
META_ABSTAIN = "hepascope.abstain_threshold"  # [0, 1]: a smoothed confidence below it is uncertain
META_WARMUP = "hepascope.warmup_fraction"  # [0, 1]: CEUS window fill before a confident verdict
META_CALIBRATION = "hepascope.calibration"  # JSON: the fit's figures (patients, method)
META_QUANTIZATION = "hepascope.quantization"  # JSON: how an INT8 graph was quantised
CALIBRATION_KEYS = (META_TEMPERATURE, META_ABSTAIN, META_WARMUP)


def program_file(graph: Path) -> Path:
    """The ``torch.export`` program beside the graph at ``graph``."""
    return graph.with_suffix(PROGRAM_SUFFIX)
