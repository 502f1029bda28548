"""The synthetic ultrasound phantom: determinism, geometry, speckle statistics, textbook
lesion/fatty/CEUS signatures, session video + sidecar, datasets, live source."""

from __future__ import annotations

import argparse
import csv
import dataclasses
import itertools
import json
import subprocess
import sys
import time
from pathlib import Path

import av
import cv2
import numpy as np
import pytest

from hepascope.core.frame import Frame
from hepascope.core.geometry import (
    PHANTOM_BMODE,
    PHANTOM_CEUS,
    PHANTOM_SCREEN_H,
    PHANTOM_SCREEN_W,
    PHANTOM_SECTOR,
)
from hepascope.phantom import (
    LESION_CLASSES,
    Phantom,
    iter_samples,
    make_case,
    write_clip_dataset,
    write_image_dataset,
    write_session,
)
from hepascope.phantom.annotations import TIMER_BOX, static_overlay
from hepascope.phantom.ceus import ceus_phase, enhancement
from hepascope.phantom.patient import PhantomCase
from hepascope.phantom.polar import polar_grid
from hepascope.phantom.speckle import SpeckleField, envelope
from hepascope.stream.sources.phantom import PhantomSource

MASK = PHANTOM_SECTOR.mask(PHANTOM_BMODE.h, PHANTOM_BMODE.w) > 0


def clean_case(seed: int, lesion: str, fatty_grade: int = 0) -> PhantomCase:
    """A case without vessels or diaphragm, so region means measure only the lesion."""
    return dataclasses.replace(make_case(seed, lesion, fatty_grade), vessels=(), diaphragm_r=None)


def mean_frames(case: PhantomCase, t_ceus: float = 20.0, n: int = 3) -> tuple[np.ndarray, dict]:
    """Average of n independent speckle realisations (jumps restart the chain) of a still
    scan (breathing off), as float grey; and the truth."""
    case = dataclasses.replace(case, breath_amp_px=0.0, drift_px=0.0)
    ph = Phantom(case)
    acc = np.zeros((PHANTOM_SCREEN_H, PHANTOM_SCREEN_W), np.float64)
    truth: dict = {}
    for k in range(n):
        frame, truth = ph.render(100 * k + 7, ceus_t_s=t_ceus)
        acc += frame[:, :, 1]
    return acc / n, truth


def ellipse_masks(truth: dict, inner: float, lo: float, hi: float
                  ) -> tuple[np.ndarray, np.ndarray]:
    """(inside scaled ellipse, annulus lo..hi radii) within the sector, B-mode view coords."""
    les = truth["lesion"]
    yy, xx = np.mgrid[0:PHANTOM_BMODE.h, 0:PHANTOM_BMODE.w]
    rho = np.hypot((xx - les["cx"]) / les["rx"], (yy - les["cy"]) / les["ry"])
    return (rho < inner) & MASK, (rho > lo) & (rho < hi) & MASK


def region_means(img: np.ndarray, truth: dict, x0: int = 0) -> tuple[float, float]:
    """(lesion core, surrounding parenchyma) mean of the pane at x offset ``x0``."""
    inside, ring = ellipse_masks(truth, 0.6, 1.4, 2.2)
    pane = img[:, x0:x0 + PHANTOM_BMODE.w]
    return float(pane[inside].mean()), float(pane[ring].mean())


# -- determinism --------------------------------------------------------------------------
def test_same_seed_same_frames_and_different_seeds_differ() -> None:
    a = Phantom(make_case(11, "hcc"), ceus_t0_s=10, ceus_speed=3.5)
    b = Phantom(make_case(11, "hcc"), ceus_t0_s=10, ceus_speed=3.5)
    for i in range(3):
        fa, ta = a.render(i)
        fb, tb = b.render(i)
        assert fa.shape == (PHANTOM_SCREEN_H, PHANTOM_SCREEN_W, 3) and fa.dtype == np.uint8
        assert np.array_equal(fa, fb) and ta == tb
    assert make_case(11) == make_case(11)
    fc, _ = Phantom(make_case(12, "hcc"), ceus_t0_s=10, ceus_speed=3.5).render(0)
    fa0, _ = Phantom(make_case(11, "hcc"), ceus_t0_s=10, ceus_speed=3.5).render(0)
    assert np.abs(fc.astype(int) - fa0.astype(int)).mean() > 5


def test_make_case_labels_and_fatty_rules() -> None:
    assert LESION_CLASSES == ("normal", "cyst", "hemangioma", "hcc", "metastasis", "fatty_sparing")
    cases = [make_case(s) for s in range(200)]
    assert {c.label for c in cases} == set(LESION_CLASSES)
    assert all(c.fatty_grade >= 1 for c in cases if c.label == "fatty_sparing")
    others = [c for c in cases if c.label != "fatty_sparing"]
    share = np.mean([c.fatty_grade >= 1 for c in others])
    assert 0.2 < share < 0.5
    assert all((c.lesion is None) == (c.label == "normal") for c in cases)
    with pytest.raises(ValueError):
        make_case(1, "adenoma")


# -- geometry -------------------------------------------------------------------------------
def test_black_outside_sector_except_burned_in_text() -> None:
    frame, _ = Phantom(make_case(3, "cyst")).render(0)
    ov = static_overlay().any(axis=2)
    x0, y0, x1, y1 = TIMER_BOX
    for rect in (PHANTOM_BMODE, PHANTOM_CEUS):
        pane = rect.crop(frame)
        free = ~MASK & ~rect.crop(ov)
        if rect is PHANTOM_CEUS:
            free[y0:y1, x0:x1] = False
        assert pane[free].max() == 0
        assert pane[100:160, 0:60].max() == 0  # a text-free stretch of the exterior
        assert (pane[0:60, 0:110] > 128).sum() > 50  # scanner text top left
        assert (pane[:, 360:] > 100).sum() > 30  # depth scale
        assert pane[MASK].mean() > 30  # tissue inside
    timer = PHANTOM_CEUS.crop(frame)[y0:y1, x0:x1]
    assert (timer > 100).sum() > 20


# -- speckle --------------------------------------------------------------------------------
def test_envelope_is_rayleigh_in_homogeneous_tissue() -> None:
    grid = polar_grid()
    sp = SpeckleField(grid, 0.9, np.random.default_rng(0))
    amp = np.ones((grid.n_depth, grid.n_beams), np.float32)
    snrs = []
    for _ in range(5):
        sp.step()
        env = envelope(sp.echo(amp))
        snrs.append(env.mean() / env.std())
    snr = float(np.mean(snrs))
    print(f"\nspeckle envelope SNR {snr:.3f} (Rayleigh 1.913)")
    assert 1.82 < snr < 2.0
    # unit mean power keeps the display level stable whatever the PSF
    assert 0.85 < float((env**2).mean()) < 1.15


# -- lesion signatures ----------------------------------------------------------------------
@pytest.mark.parametrize("seed", [1, 2])
def test_cyst_anechoic_with_posterior_enhancement(seed: int) -> None:
    img, truth = mean_frames(clean_case(seed, "cyst"))
    core, par = region_means(img, truth)
    assert core < 0.4 * par
    les = truth["lesion"]
    cx, cy, rx, ry = (int(les[k]) for k in ("cx", "cy", "rx", "ry"))
    band = slice(cy + ry + 4, cy + ry + 34)
    below = img[band, cx - rx // 2: cx + rx // 2]
    beside = np.concatenate([img[band, cx - 2 * rx - 12: cx - rx - 12],
                             img[band, cx + rx + 12: cx + 2 * rx + 12]], axis=1)
    bmask = np.concatenate([MASK[band, cx - 2 * rx - 12: cx - rx - 12],
                            MASK[band, cx + rx + 12: cx + 2 * rx + 12]], axis=1)
    assert below.mean() > beside[bmask].mean() + 6


@pytest.mark.parametrize("seed", [1, 2])
def test_hemangioma_bright_hcc_dark_metastasis_target(seed: int) -> None:
    img, truth = mean_frames(clean_case(seed, "hemangioma"))
    core, par = region_means(img, truth)
    assert core > par + 15
    img, truth = mean_frames(clean_case(seed, "hcc"))
    core, par = region_means(img, truth)
    assert core < par - 10
    img, truth = mean_frames(clean_case(seed, "metastasis"))
    centre, _ = ellipse_masks(truth, 0.3, 0, 0)
    _, rim = ellipse_masks(truth, 0, 0.8, 0.95)
    assert img[:, :384][centre].mean() > img[:, :384][rim].mean() + 15


def test_fatty_grade_brightens_near_field_and_attenuates_far_field() -> None:
    """Fat brightens the near field and darkens the far field, but the depth gain takes
    back half of its attenuation: a severely fatty liver is darker deep down, not black
    (far/near 0.23 before the depth gain did, where small deep lesions vanished)."""
    near, ratio = [], []
    for g in range(4):
        case = clean_case(5, "normal", fatty_grade=g)
        img, _ = mean_frames(case, n=2)
        pane = img[:, :384]
        col = slice(150, 234)
        top = int(PHANTOM_SECTOR.apex_y + PHANTOM_SECTOR.r_min + case.wall_px)  # liver capsule
        n_mean, f_mean = pane[top + 8:top + 40, col].mean(), pane[250:300, col].mean()
        near.append(n_mean)
        ratio.append(f_mean / n_mean)
    print(f"\nfatty near-field grey {np.round(near, 1)}, far/near {np.round(ratio, 2)}")
    assert all(b > a for a, b in itertools.pairwise(near))
    assert all(b < a for a, b in itertools.pairwise(ratio))
    assert 0.5 * ratio[0] < ratio[3] < 0.7 * ratio[0]


# -- CEUS -----------------------------------------------------------------------------------
@pytest.mark.parametrize("seed", [1, 2])
def test_ceus_hcc_arterial_hyper_late_washout(seed: int) -> None:
    case = clean_case(seed, "hcc")
    t_peak = case.ceus.arrival_s - 5 + case.ceus.bolus_peak_s
    assert 12 <= t_peak <= 26
    img, truth = mean_frames(case, t_ceus=t_peak)
    assert truth["ceus_phase"] == "arterial"
    core, par = region_means(img, truth, x0=PHANTOM_CEUS.x)
    assert core > par + 15
    img, truth = mean_frames(case, t_ceus=150.0)
    assert truth["ceus_phase"] == "late"
    core, par = region_means(img, truth, x0=PHANTOM_CEUS.x)
    assert core < par - 5


def test_ceus_cyst_never_enhances_and_phases() -> None:
    case = clean_case(4, "cyst")
    for t in (5.0, 20.0, 60.0, 150.0):
        img, truth = mean_frames(case, t_ceus=t, n=1)
        core, par = region_means(img, truth, x0=PHANTOM_CEUS.x)
        assert core < 0.5 * par or core < 12
    w = np.ones((4, 4), np.float32)
    lesion = np.zeros((4, 4, 4), np.float32)
    lesion[..., 0] = 1
    for t in (0.0, 20.0, 100.0, 200.0):
        e = enhancement(case, t, np.zeros_like(w), np.zeros_like(w), lesion)
        assert float(e.max()) == 0.0
    assert [ceus_phase(t) for t in (3, 20, 60, 150)] == ["pre", "arterial", "portal", "late"]


# -- session video, datasets, source -----------------------------------------------------------
@pytest.fixture(scope="module")
def session(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("session") / "demo.mp4"
    t0 = time.perf_counter()
    out = write_session(path, seed=5, seconds=2.0, fps=30.0, segment_s=1.0)
    print(f"\nwrite_session 60 frames in {time.perf_counter() - t0:.2f} s")
    return out


def test_write_session_mp4_and_sidecar(session: Path) -> None:
    side = json.loads(session.with_suffix(".truth.json").read_text())
    with av.open(str(session)) as c:
        v = c.streams.video[0]
        assert v.codec_context.name == "h264"
        frames = list(c.decode(v))
        assert v.average_rate is not None
        rate = float(v.average_rate)
    assert len(frames) == 60 == len(side["frames"])
    assert (frames[0].width, frames[0].height) == (side["width"], side["height"]) == (768, 384)
    assert abs(rate - 30.0) < 1e-6 and abs(frames[-1].time - 59 / 30) < 1e-3
    assert side["version"] == 1 and side["seed"] == 5 and side["fps"] == 30.0
    assert side["labels"] == list(LESION_CLASSES)
    assert side["layout"]["bmode"] == [0, 0, 384, 384]
    assert side["layout"]["ceus"] == [384, 0, 384, 384]
    assert side["layout"]["sector"]["r_max"] == PHANTOM_SECTOR.r_max
    assert [s["start_frame"] for s in side["segments"]] == [0, 30]
    f0, f45 = side["frames"][0], side["frames"][45]
    assert f0["index"] == 0 and f0["pts_s"] == 0.0 and f45["pts_s"] == pytest.approx(1.5)
    assert f45["label"] == side["segments"][1]["label"]
    assert f0["patient_id"] != f45["patient_id"]
    for f in side["frames"]:
        assert f["label"] in LESION_CLASSES and f["ceus_phase"] in ("pre", "arterial", "portal",
                                                                    "late")
        assert (f["lesion"] is None) == (f["label"] == "normal")
    # a 60 s session cycles through every class
    from hepascope.phantom.session import plan_segment
    assert {plan_segment(5, k).label for k in range(6)} == set(LESION_CLASSES)


def test_phantom_source_matches_session(session: Path) -> None:
    src = PhantomSource(5, fps=30.0, segment_s=1.0, max_rate=True)
    assert src.source_id == "phantom:5"
    got: list[Frame] = []
    truths = []
    with src:
        t0 = time.perf_counter()
        for fr in itertools.islice(iter(src), 60):
            got.append(fr)
            truths.append(src.last_truth)
        dt = (time.perf_counter() - t0) / 60
    print(f"\nPhantomSource {dt * 1e3:.2f} ms/frame (max rate)")
    assert [f.seq for f in got] == list(range(60))
    assert got[31].pts_s == pytest.approx(31 / 30)
    side = json.loads(session.with_suffix(".truth.json").read_text())
    assert truths == side["frames"]
    with av.open(str(session)) as c:
        decoded = [f.to_ndarray(format="bgr24") for f in c.decode(video=0)]
    diffs = [np.abs(a.image.astype(int) - b.astype(int)).mean() for a, b in zip(got, decoded,
                                                                                 strict=True)]
    assert max(diffs) < 8.0, diffs


def test_image_dataset_manifest(tmp_path: Path) -> None:
    manifest = write_image_dataset(tmp_path / "img", n_patients=3, frames_per_patient=2, seed=9)
    rows = list(csv.DictReader(manifest.open()))
    assert list(rows[0]) == ["path", "label", "patient_id", "fatty_grade", "frame_index",
                             "ceus_t_s"]
    assert len(rows) == 6 and len({r["patient_id"] for r in rows}) == 3
    for r in rows:
        p = manifest.parent / r["path"]
        assert p.parent.name == r["label"] and r["label"] in LESION_CLASSES
        img = cv2.imread(str(p))
        assert img is not None and img.shape == (384, 768, 3)
    assert len(list((tmp_path / "img").rglob("*.png"))) == 6
    # the in-memory generator yields the same frames
    first, _ = next(iter_samples(9, n_patients=1, frames_per_patient=2))
    written = cv2.imread(str(manifest.parent / rows[0]["path"]))
    assert written is not None and np.array_equal(first, written)


def test_clip_dataset(tmp_path: Path) -> None:
    manifest = write_clip_dataset(tmp_path / "clips", n_patients=2, clips_per_patient=1,
                                  frames=4, interval=15, seed=3)
    rows = list(csv.DictReader(manifest.open()))
    assert len(rows) == 2 and rows[0]["frames"] == "4" and rows[0]["interval"] == "15"
    with av.open(str(manifest.parent / rows[0]["path"])) as c:
        frames = list(c.decode(video=0))
    assert len(frames) == 4 and frames[0].width == 768


def test_cli_registers_phantom(tmp_path: Path) -> None:
    from hepascope.phantom.cli import add_subcommands

    parser = argparse.ArgumentParser()
    add_subcommands(parser.add_subparsers(dest="cmd"))
    args = parser.parse_args(["phantom", "images", "--out", str(tmp_path / "d"), "--patients",
                              "1", "--frames-per-patient", "1", "--seed", "2"])
    assert args.func(args) == 0
    assert (tmp_path / "d" / "manifest.csv").is_file()
    args = parser.parse_args(["phantom", "session", "--out", "x.mp4", "--seconds", "3"])
    assert args.seconds == 3.0 and args.segment_seconds == 10.0 and callable(args.func)
    with pytest.raises(SystemExit):
        parser.parse_args(["phantom", "clips", "--out", "d", "--patients", "0"])


def test_phantom_does_not_import_torch() -> None:
    code = ("import sys, hepascope.phantom, hepascope.stream.sources.phantom; "
            "sys.exit('torch' in sys.modules)")
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0


def test_render_time_per_frame() -> None:
    ph = Phantom(make_case(21, "hemangioma"), ceus_t0_s=10.0, ceus_speed=3.5)
    ph.render(0)
    n = 60
    t0 = time.perf_counter()
    for i in range(1, n + 1):
        ph.render(i)
    ms = (time.perf_counter() - t0) / n * 1e3
    t0 = time.perf_counter()
    Phantom(make_case(22, "metastasis"))
    init_ms = (time.perf_counter() - t0) * 1e3
    print(f"\nphantom render {ms:.2f} ms/frame (768x384 dual view), per-patient setup "
          f"{init_ms:.0f} ms")


def test_session_rendering_reports_progress_on_stderr(tmp_path: Path) -> None:
    """``hepascope phantom session`` (minutes for a demo session) says how far it is on
    stderr while its result line stays on stdout."""
    t0 = time.monotonic()
    res = subprocess.run([sys.executable, "-m", "hepascope.cli", "phantom", "session",
                          "--seconds", "3", "--fps", "10", "--out", str(tmp_path / "s.mp4")],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    lines = res.stderr.strip().splitlines()
    print(f"\n{time.monotonic() - t0:.1f} s; stderr: {lines}")
    assert lines and lines[-1].startswith("phantom session: 30/30 frames (100%")
    assert res.stdout.startswith("wrote ") and "frames (" not in res.stdout
