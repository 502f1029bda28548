"""Dataset indexes: which files (or frame ranges) make a dataset, their labels and patients.

Two on-disk forms. Class folders: ``root/<class>/`` holds images, videos, DICOM files
(a multi-frame DICOM is a clip) and folders of images (each one clip); patient ids come
from ``root/patients.csv`` (path,patient_id) or ``root/manifest.csv`` if present. A CSV
manifest: columns path, label, patient_id and optional start, stop (a frame range of a
clip), paths relative to the CSV's folder. Every split is made by patient: items without a
patient id are allowed but raise one ``PatientLeakWarning``."""

from __future__ import annotations

import csv
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from hepascope.core.errors import DataError
from hepascope.train.datasets.io import IMAGE_EXTS, folder_frames, is_media

PATIENT_FILES = ("patients.csv", "manifest.csv")


class PatientLeakWarning(UserWarning):
    """Some samples have no patient id: a split may put one patient on both sides, and
    validation scores come out optimistic."""


@dataclass(frozen=True)
class Item:
    """One image or clip: ``frames`` (start, stop) limits a clip to frames start..stop-1."""

    path: Path
    label: str
    patient_id: str = ""  # "" = unknown
    frames: tuple[int, int] | None = None


@dataclass(frozen=True)
class DatasetIndex:
    items: tuple[Item, ...]
    classes: tuple[str, ...]
    root: Path

    def __post_init__(self) -> None:
        if not self.items:
            raise DataError(f"{self.root}: the dataset has no items")
        bad = sorted({it.label for it in self.items} - set(self.classes))
        if bad:
            raise DataError(f"{self.root}: labels {bad} not among classes {list(self.classes)}")

    def __len__(self) -> int:
        return len(self.items)

    @property
    def labels(self) -> np.ndarray:
        return np.array([self.classes.index(it.label) for it in self.items], np.int64)

    @property
    def groups(self) -> np.ndarray:
        return np.array([it.patient_id for it in self.items], dtype=str)

    def class_counts(self) -> dict[str, int]:
        counts = dict.fromkeys(self.classes, 0)
        for it in self.items:
            counts[it.label] += 1
        return counts

    @classmethod
    def from_folder(cls, root: str | Path, classes: Sequence[str] | None = None
                    ) -> DatasetIndex:
        """Each sub-folder of ``root`` is a class (``classes`` fixes the order, e.g. a
        task's; default: sorted folder names)."""
        r = Path(root)
        if not r.is_dir():
            raise DataError(f"{r}: no such dataset folder")
        dirs = sorted(d for d in r.iterdir() if d.is_dir() and not d.name.startswith("."))
        if not dirs:
            raise DataError(f"{r}: no class folders (expected {r}/<class>/<images or clips>)")
        order = _class_order([d.name for d in dirs], classes, r)
        pids = _patient_map(r)
        items: list[Item] = []
        skipped: list[str] = []
        for d in dirs:
            for f in sorted(d.iterdir()):
                if f.is_dir():
                    if not folder_frames(f):
                        raise DataError(f"{f}: a folder inside a class folder is a clip and "
                                        f"must hold images ({', '.join(sorted(IMAGE_EXTS))})")
                elif not is_media(f):
                    if not f.name.startswith("."):
                        skipped.append(str(f.relative_to(r)))
                    continue
                key = f.relative_to(r).as_posix()
                items.append(Item(f, d.name, pids.get(key, "")))
        if skipped:
            warnings.warn(f"{r}: skipped {len(skipped)} file(s) that are not images, videos "
                          f"or DICOM (e.g. {skipped[0]})", stacklevel=2)
        return _finish(items, order, r)

    @classmethod
    def from_manifest(cls, csv_path: str | Path, classes: Sequence[str] | None = None
                      ) -> DatasetIndex:
        """Rows of a CSV (path, label, patient_id[, start, stop]); ``classes`` fixes the
        order (default: sorted labels)."""
        p = Path(csv_path)
        if not p.is_file():
            raise DataError(f"{p}: no such manifest")
        items = [_row_item(p, line, row) for line, row in _read_rows(p)]
        if not items:
            raise DataError(f"{p}: manifest has no rows")
        order = _class_order(sorted({it.label for it in items}), classes, p)
        return _finish(items, order, p.parent)


def index_from(path: str | Path, classes: Sequence[str] | None = None) -> DatasetIndex:
    """A class-folder dataset (a directory) or a manifest (a .csv file)."""
    p = Path(path)
    if p.is_dir():
        return DatasetIndex.from_folder(p, classes)
    if p.suffix.lower() == ".csv":
        return DatasetIndex.from_manifest(p, classes)
    raise DataError(f"{p}: expected a dataset folder or a .csv manifest")


def _class_order(found: Sequence[str], classes: Sequence[str] | None, where: Path
                 ) -> tuple[str, ...]:
    if classes is None:
        return tuple(sorted(found))
    unknown = sorted(set(found) - set(classes))
    if unknown:
        raise DataError(f"{where}: classes {unknown} are not in the task's classes "
                        f"{list(classes)}")
    return tuple(classes)


def _finish(items: list[Item], classes: tuple[str, ...], root: Path) -> DatasetIndex:
    missing = sum(1 for it in items if not it.patient_id)
    if missing:
        warnings.warn(f"{root}: {missing} of {len(items)} items have no patient id; splits "
                      "cannot keep a patient on one side (give patients.csv or a manifest "
                      "with patient_id)", PatientLeakWarning, stacklevel=3)
    return DatasetIndex(tuple(items), classes, root)


def _read_rows(p: Path) -> list[tuple[int, dict[str, str]]]:
    """(line number, row) of a CSV with a header; DataError for a missing path/label column
    or a row with too few/many fields."""
    try:
        with p.open(newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            cols = [c.strip() for c in reader.fieldnames or []]
            for need in ("path", "label"):
                if need not in cols:
                    raise DataError(f"{p}: no '{need}' column (columns: {', '.join(cols)})")
            rows = []
            for row in reader:
                line = reader.line_num
                if None in row:
                    raise DataError(f"{p} line {line}: more fields than columns")
                clean = {k.strip(): (v or "").strip() for k, v in row.items()}
                missing = [k for k in ("path", "label") if not clean.get(k)]
                if missing:
                    raise DataError(f"{p} line {line}: missing {', '.join(missing)}")
                rows.append((line, clean))
            return rows
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise DataError(f"{p}: cannot read manifest ({e})") from e


def _row_item(p: Path, line: int, row: dict[str, str]) -> Item:
    f = Path(row["path"])
    f = f if f.is_absolute() else p.parent / f
    if not f.exists():
        raise DataError(f"{p} line {line}: no such file {row['path']!r}")
    start, stop = row.get("start", ""), row.get("stop", "")
    frames = None
    if start or stop:
        try:
            frames = (int(start), int(stop))
        except ValueError as e:
            raise DataError(f"{p} line {line}: bad frame range start={start!r} "
                            f"stop={stop!r} (need integers, both or neither)") from e
        if frames[0] < 0 or frames[1] <= frames[0]:
            raise DataError(f"{p} line {line}: bad frame range [{start}, {stop}) "
                            "(need 0 <= start < stop)")
    return Item(f, row["label"], row.get("patient_id", ""), frames)


def _patient_map(root: Path) -> dict[str, str]:
    """{relative posix path: patient id} from the first of PATIENT_FILES present."""
    for name in PATIENT_FILES:
        p = root / name
        if not p.is_file():
            continue
        with p.open(newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            cols = [c.strip() for c in reader.fieldnames or []]
            if "path" not in cols or "patient_id" not in cols:
                raise DataError(f"{p}: needs columns path and patient_id "
                                f"(columns: {', '.join(cols)})")
            out = {}
            for row in reader:
                path = Path((row.get("path") or "").strip()).as_posix()
                out[path] = (row.get("patient_id") or "").strip()
            return out
    return {}
