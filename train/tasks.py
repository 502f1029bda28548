"""Task presets: the class sets of the five seed papers, and how the phantom makes each class.

A ``Task`` names its classes in output order; a ``Recipe`` says which phantom cases belong
to a class: the lesion is drawn uniformly from ``lesions`` and the fatty grade uniformly
from ``fatty_grades`` (repeat a grade to weight it), independently.

Fat must not be a shortcut where it is not the label. Focal fatty sparing only exists in a
fatty liver (grade 1-3), so in every task with a fatty-sparing class, *all* classes draw
grade 1-3 uniformly: the grade distribution is then the same in every class and brightness
and attenuation say nothing about the label. In ``fll5-s0`` fatty liver *is* a class
(lesion-free, grade 2-3) and "normal" is lesion-free grade 0; the lesion classes draw
grades 0-3 so that fat does not rule a lesion out (a model must look for the lesion).
In ``steatosis4`` the grade is the label and there is no lesion. The live product's six
classes (``live_task``, the demo's) follow the same rule; see ``LIVE_GRADES``. No torch here."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from hepascope.core.errors import ConfigError
from hepascope.phantom.patient import LESION_CLASSES

FATTY = (1, 2, 3)  # the grades focal fatty sparing needs
ANY_GRADE = (0, 1, 2, 3)
LIVE_TASK = "lesion6"


@dataclass(frozen=True)
class Recipe:
    """Phantom cases of one class: lesion from ``lesions`` ("normal" = none) and fatty
    grade from ``fatty_grades``, each uniformly."""

    lesions: tuple[str, ...]
    fatty_grades: tuple[int, ...]

    def __post_init__(self) -> None:
        bad = [x for x in self.lesions if x not in LESION_CLASSES]
        if not self.lesions or bad:
            raise ConfigError(f"recipe lesions must be from {LESION_CLASSES}, got {self.lesions}")
        if not self.fatty_grades or any(not 0 <= g <= 3 for g in self.fatty_grades):
            raise ConfigError(f"recipe fatty grades must be 0..3, got {self.fatty_grades}")
        if "fatty_sparing" in self.lesions and 0 in self.fatty_grades:
            raise ConfigError("focal fatty sparing needs a fatty liver: grades must be >= 1")


@dataclass(frozen=True)
class Task:
    """A classification task: class names in output order, and (for phantom data) a recipe
    per class. A user-defined task (``task_from_classes``) has no recipes."""

    name: str
    classes: tuple[str, ...]
    recipes: Mapping[str, Recipe] = field(default_factory=dict, hash=False)
    seed_paper: str = ""
    description: str = ""

    def __post_init__(self) -> None:
        if not self.name:
            raise ConfigError("a task needs a name")
        if len(self.classes) < 2 or len(set(self.classes)) != len(self.classes):
            raise ConfigError(f"task {self.name!r}: need >= 2 distinct classes, "
                              f"got {self.classes}")
        if self.recipes and set(self.recipes) != set(self.classes):
            raise ConfigError(f"task {self.name!r}: recipes for {sorted(self.recipes)}, "
                              f"classes {list(self.classes)}")

    @property
    def has_phantom(self) -> bool:
        """Whether the phantom can generate this task's data."""
        return bool(self.recipes)

    def recipe(self, label: str) -> Recipe:
        if not self.recipes:
            raise ConfigError(f"task {self.name!r} is user-defined: the phantom has no recipe "
                              "for its classes (use a preset: " + ", ".join(list_tasks()) + ")")
        try:
            return self.recipes[label]
        except KeyError as e:
            raise ConfigError(f"task {self.name!r} has no class {label!r}") from e


def _task(name: str, paper: str, description: str,
          recipes: Sequence[tuple[str, Recipe]]) -> Task:
    return Task(name, tuple(c for c, _ in recipes), dict(recipes), paper, description)


_PRESETS: dict[str, Task] = {t.name: t for t in (
    _task("fll5", "S2", "5 focal liver lesion classes on B-mode (S2: ResNet50, 5-fold CV); "
          "every class fatty (grade 1-3) so fat is no shortcut to focal fatty sparing",
          [("non_fll", Recipe(("normal",), FATTY)),
           ("cyst", Recipe(("cyst",), FATTY)),
           ("hemangioma", Recipe(("hemangioma",), FATTY)),
           ("focal_fatty_sparing", Recipe(("fatty_sparing",), FATTY)),
           ("hcc", Recipe(("hcc",), FATTY))]),
    _task("fll5-s0", "S0", "S0's 5 classes on B-mode (ResNet18): normal, cyst, hemangioma, "
          "metastasis, fatty liver; lesion classes fatty or not (grade 0-3)",
          [("normal", Recipe(("normal",), (0,))),
           ("cyst", Recipe(("cyst",), (0, 1, 2, 3))),
           ("hemangioma", Recipe(("hemangioma",), (0, 1, 2, 3))),
           ("metastasis", Recipe(("metastasis",), (0, 1, 2, 3))),
           ("fatty_liver", Recipe(("normal",), (2, 3)))]),
    _task("hcc", "S3", "HCC vs non-HCC (S3: B-mode ROIs vs 30-frame CEUS clips); all livers "
          "fatty (grade 1-3) since non-HCC includes focal fatty sparing",
          # non-HCC first: a binary report's positive class is the second (as S3 reports HCC)
          [("non_hcc", Recipe(("normal", "cyst", "hemangioma", "metastasis", "fatty_sparing"),
                              FATTY)),
           ("hcc", Recipe(("hcc",), FATTY))]),
    _task("steatosis4", "S4", "fatty liver grading (S4): normal, mild, moderate, severe; "
          "no lesion",
          [(n, Recipe(("normal",), (g,))) for g, n in
           enumerate(("normal", "mild", "moderate", "severe"))]),
    _task("sol2", "S1", "benign vs malignant space-occupying lesion (S1: bimodal B-mode + "
          "CEUS); all livers fatty (grade 1-3) since benign includes focal fatty sparing",
          [("benign", Recipe(("cyst", "hemangioma", "fatty_sparing"), FATTY)),
           ("malignant", Recipe(("hcc", "metastasis"), FATTY))]),
)}


def list_tasks() -> list[str]:
    return list(_PRESETS)


def get_task(name: str) -> Task:
    try:
        return _PRESETS[name]
    except KeyError as e:
        raise ConfigError(f"unknown task {name!r}; presets: {', '.join(_PRESETS)}") from e


def task_from_classes(classes: Sequence[str], name: str = "custom") -> Task:
    """A user-defined task (e.g. the class folders of a dataset): classes in the given
    order, no phantom recipes."""
    return Task(name, tuple(str(c) for c in classes), {}, "", "user-defined classes")


def live_task() -> Task:
    """The live pipeline's six classes (``LESION_CLASSES`` order, the demo's), each its own
    lesion. Fatty grades: every class draws grades 1-3 alike, so within fatty livers the
    grade says nothing about the class; the classes that can occur without fat also draw
    grade 0, as often as each other grade (a fat-free liver only rules out fatty sparing,
    which needs fat). Compared with ``make_case``'s default (every fatty-sparing liver fatty,
    the others 35 %), "fatty" no longer points to fatty sparing: P(sparing | fatty) is
    0.21 against 0.17 for balanced classes (it was 0.36), and demo sessions' fat-free livers
    (65 % of theirs) are still trained on."""
    return Task(LIVE_TASK, LESION_CLASSES,
                {c: Recipe((c,), FATTY if c == "fatty_sparing" else ANY_GRADE)
                 for c in LESION_CLASSES},
                "S1", "the live product's six classes (the demo's)")
