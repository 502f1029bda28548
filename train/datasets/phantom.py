"""Phantom data for any task preset, as an ``ArraySet``.

Patient ``p`` of a task gets class ``classes[p % n]``, a lesion and fatty grade from the
class's recipe, and its own case seed, 2e9 + seed * 1e5 + p: a block disjoint from the
bimodal training set's (``train/data.py``: 1e6 + ...; demo sessions draw random 32-bit
seeds, as unlikely to fall here as there). Each of its samples is a fresh moment of the
scan (breathing phase, drift, speckle) and, for clips, a CEUS window of T frames
``interval_s`` apart; only the frames a sample needs are rendered (image-only: one frame;
clips: the T window frames, the B-mode of the newest). Frames go through
``preprocess_view``, the function the live pipeline runs, and are stored as float16.
``write_task_dataset`` writes the same patients to disk as a class-folder dataset."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from hepascope.core.config import Config, load_config
from hepascope.core.errors import ConfigError
from hepascope.core.preprocess import PreprocessSpec, preprocess_view
from hepascope.phantom.patient import make_case
from hepascope.phantom.render import Phantom
from hepascope.train.datasets.arrays import KINDS, ArraySet
from hepascope.train.datasets.pool import Progress, map_pool
from hepascope.train.tasks import Task, get_task

TASK_SEED_BASE = 2_000_000_000  # train/data.py uses 1e6 + seed * 1e5 + i (< 1.001e9)
SEEDS_PER_SET = 100_000
MAX_SEED = 10_000  # TASK_SEED_BASE + MAX_SEED * SEEDS_PER_SET < 2**32 (make_case's range)
FPS = 30.0
MOTION_RANGE_S = 60.0  # moments of a patient's scan are drawn from this long
CACHE_VERSION = 1  # bump when what phantom_arrays stores changes (invalidates caches)


@dataclass(frozen=True)
class ClipWindow:
    """A CEUS window: ``frames`` T, ``interval_s`` apart (wall clock); the CEUS clock runs
    ``ceus_speed`` (drawn per sample from the range) seconds per second, and the oldest
    frame's CEUS time is drawn from ``ceus_start_s``."""

    frames: int
    interval_s: float
    ceus_speed: tuple[float, float] = (1.0, 1.0)
    ceus_start_s: tuple[float, float] = (0.0, 120.0)

    def __post_init__(self) -> None:
        if self.frames < 1 or self.interval_s <= 0:
            raise ConfigError(f"window needs frames >= 1 and interval_s > 0, got {self}")
        lo, hi = self.ceus_speed
        s0, s1 = self.ceus_start_s
        if not (0 < lo <= hi) or not (0 <= s0 <= s1):
            raise ConfigError(f"window needs 0 < ceus_speed lo <= hi and 0 <= ceus_start_s "
                              f"lo <= hi, got {self}")

    def to_dict(self) -> dict[str, Any]:
        return {"frames": self.frames, "interval_s": self.interval_s,
                "ceus_speed": list(self.ceus_speed), "ceus_start_s": list(self.ceus_start_s)}


# S3: 30 CEUS frames, one per 2 s, the first minute after injection (real time)
CLIP_WINDOW = ClipWindow(30, 2.0, (1.0, 1.0), (0.0, 5.0))
# the live bimodal model's window: 6 frames 10 source frames apart at 30 fps; demo sessions
# run the CEUS clock 3-4x real time (phantom/session.py), so does this
BIMODAL_WINDOW = ClipWindow(6, 1.0 / 3.0, (3.0, 4.0), (5.0, 120.0))


def default_window(kinds: set[str]) -> ClipWindow | None:
    """The bimodal window when bimodal samples are asked for, S3's for clips, else None."""
    if "bimodal" in kinds:
        return BIMODAL_WINDOW
    return CLIP_WINDOW if "clip" in kinds else None


def phantom_version() -> str:
    """Hash of the phantom's sources: a changed phantom is a different data set."""
    from hepascope import phantom

    h = hashlib.sha256()
    for f in sorted(Path(phantom.__file__).parent.glob("*.py")):
        h.update(f.name.encode() + b"\0" + f.read_bytes())
    return h.hexdigest()[:16]


def view_spec(config: Config, view: str, size: tuple[int, int], channels: int = 1
              ) -> PreprocessSpec:
    """Spec of one layout view at ``size`` (H, W); ConfigError if the layout lacks it."""
    config.layout.rect(view)
    return PreprocessSpec(config.layout, config.preprocess, (int(size[0]), int(size[1])),
                          channels, (view,))


def patient_plan(task: Task, seed: int, p: int) -> dict[str, Any]:
    """Case seed, class, lesion, fatty grade and id of the task's patient ``p``."""
    case_seed = TASK_SEED_BASE + seed * SEEDS_PER_SET + p
    label = task.classes[p % len(task.classes)]
    recipe = task.recipe(label)
    rng = np.random.default_rng(np.random.SeedSequence([case_seed, 0x7A5C]))
    return {"case_seed": case_seed, "label": label,
            "patient_id": f"{task.name}_s{seed}_p{p:05d}",
            "lesion": recipe.lesions[int(rng.integers(len(recipe.lesions)))],
            "fatty_grade": int(recipe.fatty_grades[int(rng.integers(len(recipe.fatty_grades)))])}


@dataclass(frozen=True)
class _Job:
    plan: dict[str, Any]
    samples: int
    window: ClipWindow | None
    bmode: PreprocessSpec | None
    ceus: PreprocessSpec | None


def _sample_times(rng: np.random.Generator, win: ClipWindow | None
                  ) -> tuple[np.ndarray, np.ndarray]:
    """(source frame indices, CEUS times) of one sample's frames, oldest first."""
    motion = int(MOTION_RANGE_S * FPS)
    if win is None:
        return np.array([rng.integers(0, motion)]), np.array([rng.uniform(0.0, 180.0)])
    k = np.arange(win.frames)
    step = win.interval_s * FPS
    newest = int(rng.integers(0, motion)) + round((win.frames - 1) * step)
    idx = newest - np.round((win.frames - 1 - k) * step).astype(np.int64)
    t = rng.uniform(*win.ceus_start_s) + k * win.interval_s * rng.uniform(*win.ceus_speed)
    return idx, t


def _render_patient(job: _Job) -> tuple[np.ndarray | None, np.ndarray | None]:
    """Worker: (bmode (S, C, H, W), ceus (S, T, C, h, w)) float16 of one patient."""
    plan, win = job.plan, job.window
    case = make_case(plan["case_seed"], lesion=plan["lesion"], fatty_grade=plan["fatty_grade"],
                     patient_id=plan["patient_id"])
    ph = Phantom(case, fps=FPS)
    rng = np.random.default_rng(np.random.SeedSequence([plan["case_seed"], 0x5A3]))
    sb, sc = job.bmode, job.ceus
    bm = None if sb is None else np.empty((job.samples, sb.channels, *sb.size), np.float16)
    ce = None if sc is None or win is None else \
        np.empty((job.samples, win.frames, sc.channels, *sc.size), np.float16)
    for s in range(job.samples):
        idx, ts = _sample_times(rng, win)
        for k, (i, t) in enumerate(zip(idx, ts, strict=True)):
            frame, _ = ph.render(int(i), ceus_t_s=float(t))
            if ce is not None and sc is not None:
                ce[s, k] = preprocess_view(frame, sc, "ceus")
        if bm is not None and sb is not None:  # the newest frame is the last one rendered
            bm[s] = preprocess_view(frame, sb, "bmode")
    return bm, ce


def _check_task(task: Task, patients_per_class: int, seed: int) -> None:
    if not task.has_phantom:
        task.recipe(task.classes[0])  # raises: a user-defined task has no recipes
    if patients_per_class < 1:
        raise ConfigError(f"patients_per_class must be >= 1, got {patients_per_class}")
    if patients_per_class * len(task.classes) > SEEDS_PER_SET or not 0 <= seed < MAX_SEED:
        raise ConfigError(f"need at most {SEEDS_PER_SET} patients and 0 <= seed < {MAX_SEED}")


def phantom_arrays(task: Task | str, *, patients_per_class: int, samples_per_patient: int,
                   kinds: set[str], bmode_size: tuple[int, int] = (112, 112),
                   ceus_size: tuple[int, int] = (64, 64), window: ClipWindow | None = None,
                   config: Config | None = None, channels: int = 1, seed: int = 0,
                   workers: int = 2, cache_dir: str | Path | None = None,
                   progress: Progress | None = None) -> ArraySet:
    """Phantom samples of ``task`` for models of ``kinds`` (image: bmode; clip: ceus;
    bimodal: both). ``window`` defaults by kinds (``default_window``); ``config`` (layout
    and preprocessing parameters) defaults to the packaged one, the phantom's screen.
    With ``cache_dir`` the set is stored there, keyed by every parameter and the phantom's
    source hash (``workers`` and ``progress`` do not change the data)."""
    task = get_task(task) if isinstance(task, str) else task
    kinds = set(kinds)
    _check_task(task, patients_per_class, seed)
    if not kinds or not kinds <= set(KINDS):
        raise ConfigError(f"kinds must be a non-empty subset of {KINDS}, got {sorted(kinds)}")
    if samples_per_patient < 1:
        raise ConfigError(f"samples_per_patient must be >= 1, got {samples_per_patient}")
    need_b = bool(kinds & {"image", "bimodal"})
    need_c = bool(kinds & {"clip", "bimodal"})
    win = (window or default_window(kinds)) if need_c else None
    cfg = config or load_config()
    sb = view_spec(cfg, "bmode", bmode_size, channels) if need_b else None
    sc = view_spec(cfg, "ceus", ceus_size, channels) if need_c else None
    key_src = {"task": task.name, "classes": list(task.classes),
               "recipes": {c: asdict(r) for c, r in task.recipes.items()},
               "patients_per_class": patients_per_class, "samples": samples_per_patient,
               "kinds": sorted(kinds), "window": None if win is None else win.to_dict(),
               "bmode": None if sb is None else sb.to_dict(),
               "ceus": None if sc is None else sc.to_dict(), "seed": seed,
               "_phantom": phantom_version(), "_version": CACHE_VERSION}
    key = hashlib.sha256(json.dumps(key_src, sort_keys=True).encode()).hexdigest()[:20]
    path = None if cache_dir is None else \
        Path(cache_dir).expanduser() / f"task-{task.name}-{key}.npz"
    if path is not None and path.is_file() and path.with_suffix(".json").is_file():
        return ArraySet.load(path)
    n = patients_per_class * len(task.classes)
    plans = [patient_plan(task, seed, p) for p in range(n)]
    jobs = [_Job(plan, samples_per_patient, win, sb, sc) for plan in plans]
    results = map_pool(_render_patient, jobs, workers, progress)
    per = samples_per_patient
    arrays = ArraySet(
        classes=task.classes,
        labels=np.repeat([task.classes.index(pl["label"]) for pl in plans], per).astype(np.int64),
        groups=np.repeat([pl["patient_id"] for pl in plans], per),
        bmode=np.concatenate([r[0] for r in results if r[0] is not None]) if need_b else None,
        ceus=np.concatenate([r[1] for r in results if r[1] is not None]) if need_c else None,
        preprocess={v: s.to_dict() for v, s in (("bmode", sb), ("ceus", sc)) if s is not None},
        window=None if win is None else win.to_dict(),
        source={"kind": "phantom", "task": task.name, "seed": seed,
                "patients_per_class": patients_per_class, "samples_per_patient": per,
                "n_patients": n, "n_samples": n * per, "kinds": sorted(kinds),
                "phantom": phantom_version(),
                "lesion": [pl["lesion"] for pl in plans for _ in range(per)],
                "fatty_grade": [pl["fatty_grade"] for pl in plans for _ in range(per)]})
    if path is not None:
        arrays.save(path)
    return arrays


# -- on-disk datasets -------------------------------------------------------------------
MANIFEST_COLUMNS = ("path", "label", "patient_id", "lesion", "fatty_grade", "kind")


@dataclass(frozen=True)
class _WriteJob:
    plan: dict[str, Any]
    out: Path
    images: int
    clips: int
    window: ClipWindow


def _write_patient(job: _WriteJob) -> list[dict[str, Any]]:
    """Worker: write one patient's full-screen PNGs and FFV1 clips; their manifest rows."""
    from hepascope.train.datasets.io import write_clip, write_image

    plan = job.plan
    case = make_case(plan["case_seed"], lesion=plan["lesion"], fatty_grade=plan["fatty_grade"],
                     patient_id=plan["patient_id"])
    ph = Phantom(case, fps=FPS)
    rng = np.random.default_rng(np.random.SeedSequence([plan["case_seed"], 0xD15C]))
    base = {"label": plan["label"], "patient_id": plan["patient_id"],
            "lesion": plan["lesion"], "fatty_grade": plan["fatty_grade"]}
    rows = []
    for k in range(job.images):
        (i,), (t,) = _sample_times(rng, None)
        rel = f"{plan['label']}/{plan['patient_id']}_i{k:03d}.png"
        write_image(job.out / rel, ph.render(int(i), ceus_t_s=float(t))[0])
        rows.append({"path": rel, **base, "kind": "image"})
    for k in range(job.clips):
        idx, ts = _sample_times(rng, job.window)
        frames = [ph.render(int(i), ceus_t_s=float(t))[0] for i, t in zip(idx, ts, strict=True)]
        rel = f"{plan['label']}/{plan['patient_id']}_c{k:03d}.mkv"
        write_clip(job.out / rel, frames, 1.0 / job.window.interval_s)
        rows.append({"path": rel, **base, "kind": "clip"})
    return rows


def write_task_dataset(task: Task | str, out_dir: str | Path, *, patients_per_class: int,
                       images_per_patient: int, clips_per_patient: int = 0,
                       window: ClipWindow = CLIP_WINDOW, seed: int = 0, workers: int = 2,
                       progress: Progress | None = None) -> Path:
    """A class-folder dataset of ``task`` in the format hospitals bring: ``out/<class>/``
    full dual-view screen PNGs and lossless FFV1 clips (.mkv, ``window``'s frames at
    1/interval_s fps), ``manifest.csv`` (path, label, patient_id, lesion, fatty_grade, kind)
    and, when there are clips, ``images.csv``/``clips.csv`` with each kind alone. Returns
    manifest.csv. Patients are ``phantom_arrays``' with the same task and seed."""
    import csv

    task = get_task(task) if isinstance(task, str) else task
    _check_task(task, patients_per_class, seed)
    if images_per_patient < 0 or clips_per_patient < 0 or \
            images_per_patient + clips_per_patient == 0:
        raise ConfigError("need images_per_patient and clips_per_patient >= 0, not both 0")
    out = Path(out_dir)
    for c in task.classes:
        (out / c).mkdir(parents=True, exist_ok=True)
    plans = [patient_plan(task, seed, p) for p in range(patients_per_class * len(task.classes))]
    jobs = [_WriteJob(pl, out, images_per_patient, clips_per_patient, window) for pl in plans]
    rows = [r for rs in map_pool(_write_patient, jobs, workers, progress) for r in rs]
    subsets = {"manifest.csv": rows}
    if clips_per_patient:
        subsets["images.csv"] = [r for r in rows if r["kind"] == "image"]
        subsets["clips.csv"] = [r for r in rows if r["kind"] == "clip"]
    for name, subset in subsets.items():
        if not subset:
            continue
        with (out / name).open("w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(MANIFEST_COLUMNS))
            w.writeheader()
            w.writerows(subset)
    return out / "manifest.csv"
