"""The phantom training set of the bimodal model: B-mode frames and CEUS windows,
preprocessed by the same ``preprocess_view`` the live pipeline runs.

Each case is one patient: its own case seed (disjoint from demo sessions' seeds), its class's
lesion, a fatty grade drawn from the live task's recipe (``tasks.live_task``: within fatty
livers the grade is independent of the class, so fat is no shortcut to focal fatty
sparing), a CEUS clock drawn like ``plan_segment``'s (t0 in [5, 60] s, 3-4x real time) and a
stretch of a live segment (``segment_s``, the demo's 6 s by default) so contrast times match
what the live pipeline sees. Only frames at multiples of ``interval_frames`` are rendered
and stored (float16); a sample is (case, position p >= T - 1): B-mode at p, CEUS at
p - (T - 1) .. p, oldest first, i.e. exactly what the pipeline's window holds at p."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from hepascope.core.config import Config
from hepascope.core.preprocess import PreprocessSpec, preprocess_view
from hepascope.phantom import LESION_CLASSES, Phantom, PhantomCase, make_case
from hepascope.train.datasets.arrays import ArraySet, load_pair, save_pair
from hepascope.train.datasets.phantom import phantom_version
from hepascope.train.datasets.pool import Progress, map_pool
from hepascope.train.tasks import live_task

TRAIN_SEED_BASE = 1_000_000  # demo sessions draw 32-bit case seeds; training uses this block
SEEDS_PER_SET = 100_000
DATA_VERSION = 2  # bump when the layout of a PhantomSet changes (invalidates caches)
LIVE_SEGMENT_S = 6.0  # the demo session's segment (one patient): training cases match it


def source_digest(*modules: str) -> str:
    """SHA-256 (16 hex) of the named ``hepascope`` modules' source files (a package: all its
    ``.py`` files): cache keys that change when the code that made an artifact changes."""
    import importlib

    h = hashlib.sha256()
    for name in modules:
        mod = importlib.import_module(f"hepascope.{name}")
        path = Path(str(mod.__file__))
        files = sorted(path.parent.rglob("*.py")) if path.name == "__init__.py" else [path]
        for f in files:
            h.update(f"{name}:{f.name}".encode() + b"\0" + f.read_bytes())
    return h.hexdigest()[:16]


DATA_CODE = ("train.data", "train.tasks", "core.preprocess", "phantom")


@dataclass(frozen=True)
class WindowSpec:
    """T CEUS frames, ``interval_frames`` source frames apart (at ``fps``)."""

    window: int = 6
    interval_frames: int = 10
    fps: float = 30.0

    def __post_init__(self) -> None:
        if self.window < 1 or self.interval_frames < 1 or self.fps <= 0:
            raise ValueError(f"invalid window spec {self}: window, interval_frames >= 1, fps > 0")

    @property
    def interval_s(self) -> float:
        return self.interval_frames / self.fps


def make_specs(config: Config, bmode_size: tuple[int, int] = (112, 112),
               ceus_size: tuple[int, int] = (64, 64)) -> tuple[PreprocessSpec, PreprocessSpec]:
    """(B-mode spec, CEUS spec): one grey channel each, from the config's layout/params."""
    bs, cs = (int(bmode_size[0]), int(bmode_size[1])), (int(ceus_size[0]), int(ceus_size[1]))
    return (PreprocessSpec(config.layout, config.preprocess, bs, 1, ("bmode",)),
            PreprocessSpec(config.layout, config.preprocess, cs, 1, ("ceus",)))


def case_plan(seed: int, i: int, classes: Sequence[str], max_start: int = 0) -> dict[str, Any]:
    """Case seed, class, fatty grade (the live task's recipe for the class), patient id,
    CEUS clock (as ``plan_segment``) and first frame (in [0, max_start]: a short case is a
    random stretch of a live segment) of case ``i``."""
    case_seed = TRAIN_SEED_BASE + seed * SEEDS_PER_SET + i
    rng = np.random.default_rng(np.random.SeedSequence([case_seed, 0x5E6]))
    label = classes[i % len(classes)]
    grades = live_task().recipe(label).fatty_grades
    fat = np.random.default_rng(np.random.SeedSequence([case_seed, 0xFA7]))  # own stream
    return {"case_seed": case_seed, "label": label,
            "patient_id": f"train{seed}-{i:05d}", "ceus_t0_s": float(rng.uniform(5.0, 60.0)),
            "ceus_speed": float(rng.uniform(3.0, 4.0)),
            "start": int(rng.integers(0, max_start + 1)),
            "fatty_grade": int(grades[int(fat.integers(len(grades)))])}


def training_case(plan: dict[str, Any]) -> PhantomCase:
    """The phantom case of a ``case_plan``: its class's lesion and the plan's fatty grade."""
    return make_case(plan["case_seed"], lesion=plan["label"], fatty_grade=plan["fatty_grade"],
                     patient_id=plan["patient_id"])


def render_case(job: tuple[dict[str, Any], int, WindowSpec, tuple[PreprocessSpec, ...]]
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """Worker: (bmode f16, ceus f16, frame indices, fatty grade) of one case (also what
    ``train.demo_int8`` renders its validation cases with: the same frames)."""
    plan, n_frames, win, (sb, sc) = job
    case = training_case(plan)
    ph = Phantom(case, fps=win.fps, ceus_t0_s=plan["ceus_t0_s"], ceus_speed=plan["ceus_speed"])
    idx = plan["start"] + np.arange(n_frames, dtype=np.int32) * win.interval_frames
    bm = np.empty((n_frames, 1, *sb.size), np.float16)
    ce = np.empty((n_frames, 1, *sc.size), np.float16)
    for k, i in enumerate(idx):
        frame, _ = ph.render(int(i))
        bm[k] = preprocess_view(frame, sb, "bmode")
        ce[k] = preprocess_view(frame, sc, "ceus")
    return bm, ce, idx, case.fatty_grade


@dataclass
class PhantomSet:
    """Frames of all cases (contiguous per case, in time order) and per-case truth."""

    bmode: np.ndarray  # (N, 1, H, W) float16
    ceus: np.ndarray  # (N, 1, h, w) float16
    case_index: np.ndarray  # (N,) int32
    frame_index: np.ndarray  # (N,) int32, source frame number within the case
    labels: np.ndarray  # (n_cases,) int64 class index
    patient_ids: tuple[str, ...]
    fatty_grades: np.ndarray  # (n_cases,) int32
    classes: tuple[str, ...]
    window: WindowSpec
    preprocess: dict[str, dict[str, Any]]  # {"bmode": spec.to_dict(), "ceus": ...}
    seed: int
    params: dict[str, Any] = field(default_factory=dict)

    @property
    def n_cases(self) -> int:
        return len(self.labels)

    @property
    def position(self) -> np.ndarray:
        """Position of each frame within its case (0, 1, ...)."""
        starts = np.searchsorted(self.case_index, self.case_index, side="left")
        return np.arange(len(self.case_index)) - starts

    @property
    def sample_rows(self) -> np.ndarray:
        """Frame row of each sample's newest frame (only rows with a full window)."""
        return np.flatnonzero(self.position >= self.window.window - 1)

    @property
    def sample_labels(self) -> np.ndarray:
        return self.labels[self.case_index[self.sample_rows]]

    def metadata(self) -> dict[str, Any]:
        return {"version": DATA_VERSION, "classes": list(self.classes), "seed": self.seed,
                "window": asdict(self.window), "preprocess": self.preprocess,
                "patient_ids": list(self.patient_ids), "params": self.params}

    def save(self, path: str | Path) -> Path:
        """Write ``path`` (.npz, compressed) and its .json metadata; returns the .npz path."""
        return save_pair(path, {"bmode": self.bmode, "ceus": self.ceus,
                                "case_index": self.case_index, "frame_index": self.frame_index,
                                "labels": self.labels, "fatty_grades": self.fatty_grades},
                         self.metadata(), compress=True)

    @classmethod
    def load(cls, path: str | Path) -> PhantomSet:
        arrays, meta = load_pair(path, DATA_VERSION, "phantom set")
        return cls(**arrays, patient_ids=tuple(meta["patient_ids"]),
                   classes=tuple(meta["classes"]), window=WindowSpec(**meta["window"]),
                   preprocess=meta["preprocess"], seed=int(meta["seed"]), params=meta["params"])


def build_phantom_set(*, n_cases_per_class: int, seconds_per_case: float = 3.0,
                      window: WindowSpec, specs: tuple[PreprocessSpec, PreprocessSpec],
                      seed: int, classes: Sequence[str] = LESION_CLASSES, workers: int = 2,
                      segment_s: float = LIVE_SEGMENT_S, progress: Progress | None = None
                      ) -> PhantomSet:
    """Render and preprocess ``n_cases_per_class * len(classes)`` cases on ``workers``
    processes; ``progress(done, total)`` is called per case. A case shorter than the live
    ``segment_s`` starts at a random frame of it, so CEUS times cover the live range."""
    classes = tuple(classes)
    if not classes or len(set(classes)) != len(classes) or set(classes) - set(LESION_CLASSES):
        raise ValueError(f"classes must be distinct names from {LESION_CLASSES}, got {classes}")
    n_cases = n_cases_per_class * len(classes)
    if n_cases_per_class < 1 or n_cases > SEEDS_PER_SET or not 0 <= seed < 10_000:
        raise ValueError(f"need n_cases_per_class >= 1 (got {n_cases_per_class}, at most "
                         f"{SEEDS_PER_SET} cases) and 0 <= seed < 10000 (got {seed})")
    n_frames = round(seconds_per_case * window.fps) // window.interval_frames
    if n_frames < window.window:
        raise ValueError(f"{seconds_per_case} s per case gives {n_frames} frames at "
                         f"{window.interval_s:.3g} s intervals, fewer than window {window.window}")
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    max_start = round(segment_s * window.fps) - (n_frames - 1) * window.interval_frames - 1
    plans = [case_plan(seed, i, classes, max(0, max_start)) for i in range(n_cases)]
    jobs = [(plan, n_frames, window, tuple(specs)) for plan in plans]
    results = map_pool(render_case, jobs, workers, progress)
    return PhantomSet(
        bmode=np.concatenate([r[0] for r in results]),
        ceus=np.concatenate([r[1] for r in results]),
        case_index=np.repeat(np.arange(n_cases, dtype=np.int32), n_frames),
        frame_index=np.concatenate([r[2] for r in results]),
        labels=np.array([classes.index(p["label"]) for p in plans], np.int64),
        patient_ids=tuple(p["patient_id"] for p in plans),
        fatty_grades=np.array([r[3] for r in results], np.int32),
        classes=classes, window=window, seed=seed,
        preprocess={"bmode": specs[0].to_dict(), "ceus": specs[1].to_dict()},
        params={"n_cases_per_class": n_cases_per_class, "seconds_per_case": seconds_per_case,
                "segment_s": segment_s, "start_frame": [p["start"] for p in plans],
                "n_cases": n_cases, "frames_per_case": n_frames, "phantom": phantom_version(),
                "fatty_grades": {c: list(live_task().recipe(c).fatty_grades) for c in classes},
                "code": source_digest(*DATA_CODE),
                "ceus_t0_s": [p["ceus_t0_s"] for p in plans],
                "ceus_speed": [p["ceus_speed"] for p in plans]})


def cached_phantom_set(cache_dir: str | Path, *, progress: Progress | None = None,
                       **params: Any) -> PhantomSet:
    """``build_phantom_set(**params)``, stored under ``cache_dir`` keyed by the params, the
    phantom's source hash and the data version (``workers`` does not change the data)."""
    key_src = {k: v for k, v in params.items() if k != "workers"}
    key_src["specs"] = [s.to_dict() for s in params["specs"]]
    key_src["window"] = asdict(params["window"])
    key_src["classes"] = list(params.get("classes", LESION_CLASSES))
    key_src["_phantom"], key_src["_version"] = phantom_version(), DATA_VERSION
    key_src["_code"] = source_digest(*DATA_CODE)
    key = hashlib.sha256(json.dumps(key_src, sort_keys=True).encode()).hexdigest()[:20]
    path = Path(cache_dir).expanduser() / f"phantom-{key}.npz"
    if path.is_file() and path.with_suffix(".json").is_file():
        return PhantomSet.load(path)
    pset = build_phantom_set(progress=progress, **params)
    pset.save(path)
    return pset


def phantom_set_arrays(pset: PhantomSet) -> ArraySet:
    """The set's windows as an ``ArraySet`` (one sample per full window, CEUS frames
    materialised oldest first): what the trainer reads."""
    rows, t = pset.sample_rows, pset.window.window
    ceus = np.stack([pset.ceus[r - t + 1:r + 1] for r in rows])
    cases = pset.case_index[rows]
    return ArraySet(pset.classes, pset.labels[cases],
                    np.array([pset.patient_ids[c] for c in cases], dtype=str),
                    bmode=pset.bmode[rows], ceus=ceus, preprocess=pset.preprocess,
                    window={"frames": t, "interval_s": pset.window.interval_s},
                    source={"phantom_set": pset.seed, **asdict(pset.window),
                            **{k: v for k, v in pset.params.items()
                               if k not in ("ceus_t0_s", "ceus_speed", "start_frame")}})
