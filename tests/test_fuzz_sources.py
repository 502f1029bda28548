"""The file sources under fuzzing, in a subprocess (a segfault or abort in FFmpeg or
pydicom kills it, not pytest): every damaged MP4/MKV/AVI/DICOM input either yields frames
or raises ``SourceError``, nothing else."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

FUZZ = Path(__file__).parent / "support" / "fuzz_sources.py"
SEED = 2024


@pytest.mark.parametrize("cases", [1000, pytest.param(2500, marks=pytest.mark.slow)])
def test_fuzzed_files_yield_frames_or_a_source_error(tmp_path: Path, cases: int) -> None:
    res = subprocess.run([sys.executable, str(FUZZ), str(tmp_path), "--cases", str(cases),
                          "--seed", str(SEED)], capture_output=True, text=True, timeout=300)
    print(f"\n{res.stdout.strip()}")
    assert res.returncode == 0, (res.returncode, res.stdout[-4000:], res.stderr[-4000:])
    summary = re.search(r"fuzz cases run: (\d+), crashes: (\d+), max s per case: ([\d.]+)",
                        res.stdout)
    assert summary and int(summary.group(1)) == cases and int(summary.group(2)) == 0
    to_error = re.search(r"max s to a SourceError: ([\d.]+)", res.stdout)
    assert to_error and float(to_error.group(1)) <= 1.0  # the spec's bound
    # both outcomes occur for every kind of input: the mutations really damaged them
    for ext in (".mp4", ".mkv", ".avi", ".dcm"):
        assert f"{ext}:frames" in res.stdout and f"{ext}:error:" in res.stdout, ext
