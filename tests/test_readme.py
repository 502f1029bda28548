"""The README's two commands are the project's contract: keep CI running the same one."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    quick = text.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    return [b.strip() for b in re.findall(r"```bash\n(.*?)```", quick, re.S)]


def test_ci_runs_the_readme_test_command() -> None:
    demo, tests = _commands()[:2]
    ci = (ROOT / ".ci" / "run").read_text()
    assert tests in ci, "the README's test command and .ci/run have drifted apart"
    assert "hepascope demo" in demo
    assert "torch==2.13.0" in demo and "torch==2.13.0" in tests  # never a CUDA build here


def _extras() -> dict[str, list[str]]:
    import tomllib

    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())
    return {"": meta["project"]["dependencies"], **meta["project"]["optional-dependencies"],
            "exclude": meta["tool"]["scikit-build"]["wheel"]["exclude"]}


def test_train_takes_a_torch_range_that_the_readme_pin_satisfies() -> None:
    from packaging.requirements import Requirement

    torch = next(Requirement(r) for r in _extras()["train"] if r.startswith("torch"))
    assert "==" not in str(torch.specifier), "a pin keeps GPU machines on the CPU build"
    assert torch.specifier.contains("2.13.0")  # the README's CPU pin still resolves
    assert torch.specifier.contains("2.5.1+cu124")  # and so does a CUDA build


def test_packaging_names_dicom_display_and_keeps_results_out_of_the_wheel() -> None:
    extras = _extras()
    names = {r.split(">")[0].split("=")[0] for r in extras[""]}
    assert {"pydicom", "pillow"} <= names  # DICOM is read by the core (a live source)
    assert any(r.startswith("opencv-python>") for r in extras["display"])
    assert "display" in (ROOT / "README.md").read_text()
    assert {"hepascope/bench/results/**", "hepascope/bench/test_*.py"} <= set(extras["exclude"])


def test_the_readme_says_what_hepascope_must_not_be_used_for() -> None:
    text = (ROOT / "README.md").read_text()
    intended = text.split("## Intended use", 1)[1].split("\n## ", 1)[0]
    assert "not a medical device" in intended and "research software" in intended
    assert "must not be used" in intended and "diagnose" in intended
    assert text.index("## Intended use") < text.index("## Quick start")
