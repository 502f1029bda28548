"""Synthetic liver ultrasound phantom (numpy + OpenCV): dual-view B-mode | CEUS screen
captures with ground truth, deterministic by seed. The demo's, tests' and training data: a
room of its own on ``core`` only, used by ``stream`` (the ``phantom:`` source), ``train``
and the bench."""

from hepascope.phantom.ceus import CEUS_PHASES, ceus_phase
from hepascope.phantom.datasets import (
    iter_clips,
    iter_samples,
    write_clip_dataset,
    write_image_dataset,
)
from hepascope.phantom.patient import FATTY_GRADES, LESION_CLASSES, PhantomCase, make_case
from hepascope.phantom.render import Phantom
from hepascope.phantom.session import iter_session, plan_segment, write_session

__all__ = [
    "CEUS_PHASES",
    "FATTY_GRADES",
    "LESION_CLASSES",
    "Phantom",
    "PhantomCase",
    "ceus_phase",
    "iter_clips",
    "iter_samples",
    "iter_session",
    "make_case",
    "plan_segment",
    "write_clip_dataset",
    "write_image_dataset",
    "write_session",
]
