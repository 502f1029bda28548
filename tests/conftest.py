from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from support import budget
from support.media import write_video
from support.models import make_classifier
from support.runs import reap_runs


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--slow", action="store_true",
                     help="also run the long variants (tests marked slow: more trials, the "
                     "2-minute soak); by default one short variant of each kind runs")


def pytest_configure(config: pytest.Config) -> None:
    if config.getoption("--slow"):
        os.environ[budget.ENV] = "1"  # read by support.budget, in subprocesses too


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if budget.full():
        return
    skip = pytest.mark.skip(reason="long variant: run with --slow (a short one of the same "
                            "kind runs by default)")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _no_run_left_behind() -> Iterator[None]:
    """After each test, no ``hepascope run`` that ``support.runs.start_run`` started."""
    yield
    reap_runs()


@pytest.fixture(scope="session")
def video30(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """3 s of 768x384 H.264 at 30 fps."""
    return write_video(tmp_path_factory.mktemp("media") / "clip.mp4", frames=90, fps=30)


@pytest.fixture(scope="session")
def small_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_classifier(tmp_path_factory.mktemp("models") / "small.onnx")


@pytest.fixture(scope="session")
def bimodal_export(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small bimodal export with its checkpoint and programs (the torch engine runs them),
    made once: the bench's sections and its end-to-end run time it."""
    import torch
    from support.models import BIMODAL_SMALL, shrink_kwargs, small_export_meta, small_model

    from hepascope.train.export import export_checkpoint

    torch.manual_seed(0)
    model, size = small_model("bimodal_resnet18_lite")
    out = tmp_path_factory.mktemp("bimodal")
    kwargs = {"num_classes": 3, **BIMODAL_SMALL, **shrink_kwargs("bimodal_resnet18_lite")}
    export_checkpoint(model, {**small_export_meta("bimodal_resnet18_lite", size),  # type: ignore[arg-type]
                              "kwargs": kwargs}, out)
    return out
