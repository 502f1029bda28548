from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from support.media import write_video
from support.models import make_classifier


@pytest.fixture(scope="session")
def video30(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """3 s of 768x384 H.264 at 30 fps."""
    return write_video(tmp_path_factory.mktemp("media") / "clip.mp4", frames=90, fps=30)


@pytest.fixture(scope="session")
def small_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_classifier(tmp_path_factory.mktemp("models") / "small.onnx")
