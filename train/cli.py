"""CLI registration of ``hepascope train`` and ``hepascope eval`` (handlers in ``jobs``).
Torch-free at import: the model names are read from the registry's source, and the handlers
import the training stack only when they run."""

from __future__ import annotations

import argparse
import ast
from pathlib import Path

MODELS_DIR = Path(__file__).resolve().parent / "models"


def registered_models() -> list[str]:
    """Names of every registered model (functions decorated ``@register_model``), from the
    source of ``train/models``: importing the registry would import torch."""
    names = []
    for f in sorted(MODELS_DIR.glob("*.py")):
        for node in ast.parse(f.read_text()).body:
            if isinstance(node, ast.FunctionDef) and any(
                    isinstance(d, ast.Name) and d.id == "register_model"
                    for d in node.decorator_list):
                names.append(node.name)
    return sorted(names)


def bimodal_models() -> list[str]:
    """Names of the registered bimodal models (by the naming convention: ``bimodal*``)."""
    return [n for n in registered_models() if n.startswith("bimodal")]


def add_subcommands(sub: argparse._SubParsersAction) -> None:
    """Register ``train`` and ``eval`` on the ``hepascope`` command's subparsers."""
    from hepascope.train.jobs import add_train_eval

    add_train_eval(sub, registered_models())
