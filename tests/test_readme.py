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
