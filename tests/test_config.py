"""The config is validated strictly: unknown keys are refused with the nearest valid name,
types are checked (``insecure: "false"`` is an error, not true), and every error is one
line naming the file and the key path."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from hepascope.core.config import config_from_dict, load_config
from hepascope.core.errors import ConfigError

LAYOUT = {"views": {"b": [0, 0, 8, 8]}}


def _cfg(**sections: Any) -> dict[str, Any]:
    return {"version": 1, "layout": LAYOUT, **sections}


def _error(raw: dict[str, Any]) -> str:
    with pytest.raises(ConfigError) as info:
        config_from_dict(raw, "c.yaml")
    msg = str(info.value)
    print(f"\n  {msg}")
    assert "\n" not in msg and msg.startswith("c.yaml: ")
    return msg


@pytest.mark.parametrize(("raw", "want"), [
    (_cfg(publish={"insecur": True}), "publish.insecur: unknown key; did you mean 'insecure'?"),
    (_cfg(overlays={"fps": 30}), "overlays: unknown key; did you mean 'overlay'?"),
    (_cfg(pipeline={"telemetry_period": 0.2}),
     "pipeline.telemetry_period: unknown key; did you mean 'telemetry_period_s'?"),
    (_cfg(layout={"views": {"b": [0, 0, 8, 8]}, "sector": {
        "apex_x": 4, "apex_y": 0, "r_min": 1, "r_maz": 6, "half_angle_deg": 30}}),
     "layout.sector.r_maz: unknown key; did you mean 'r_max'?"),
    (_cfg(layout={"view": {"b": [0, 0, 8, 8]}}), "layout.view: unknown key; did you mean 'views'?"),
])
def test_unknown_keys_name_the_nearest_valid_one(raw: dict[str, Any], want: str) -> None:
    assert _error(raw) == f"c.yaml: {want}"


@pytest.mark.parametrize(("raw", "want"), [
    (_cfg(publish={"insecure": "false"}), 'publish.insecure: expected bool, got str "false"'),
    (_cfg(publish={"insecure": 0}), "publish.insecure: expected bool, got int 0"),
    (_cfg(publish={"send_hwm": "64"}), 'publish.send_hwm: expected int, got str "64"'),
    (_cfg(publish={"send_hwm": 6.5}), "publish.send_hwm: expected int, got float 6.5"),
    (_cfg(overlay={"stale_ms": "250"}), 'overlay.stale_ms: expected float, got str "250"'),
    (_cfg(overlay={"stale_ms": True}), "overlay.stale_ms: expected float, got bool true"),
    (_cfg(preprocess={"size": [128, "128"]}), 'preprocess.size[1]: expected int, got str "128"'),
    (_cfg(preprocess={"size": [128]}), "preprocess.size: expected array of length 2, got 1"),
    (_cfg(publish={"keys": 5}), "publish.keys: expected str | null, got int 5"),
    (_cfg(pipeline=[1, 2]), "pipeline: expected a mapping, got list"),
    (_cfg(pipeline={"inference": "gpu"}),
     "pipeline.inference must be process or thread, got 'gpu'"),
    (_cfg(pipeline={"ring_slots": 1}), "pipeline.ring_slots must be >= 2"),
    (_cfg(pipeline={"unpaced_batch": 5}), "pipeline.unpaced_batch must be in [1, ring_slots "
     "/ 2] (a batch in flight and the next one decoded fit in the ring), got 5 with 8 slots"),
    (_cfg(overlay={"heartbeat_timeout_ms": 100}),
     "overlay.heartbeat_timeout_ms must be >= 2 x pipeline.telemetry_period_s"),
])
def test_types_are_checked_and_each_error_is_one_line(raw: dict[str, Any], want: str) -> None:
    assert _error(raw) == f"c.yaml: {want}"


def test_ints_where_floats_are_expected_and_empty_sections_are_fine() -> None:
    cfg = config_from_dict(_cfg(overlay={"stale_ms": 250, "fps": 30}, publish=None))
    assert cfg.overlay.stale_ms == 250.0 and isinstance(cfg.overlay.stale_ms, float)
    assert cfg.publish.insecure is False
    for name in (None, "single_view"):
        load_config(name)  # the packaged configs pass the strict check


def test_a_config_error_reaches_the_user_as_one_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    raw = yaml.safe_load(Path(__file__).parents[1].joinpath("core", "default.yaml")
                         .read_text())
    raw["publish"]["insecure"] = "false"
    bad.write_text(yaml.safe_dump(raw))
    res = subprocess.run([sys.executable, "-m", "hepascope.cli", "overlay", "--config",
                          str(bad), "--duration", "0.1", "--out", str(tmp_path / "o.mp4")],
                         capture_output=True, text=True,
                         timeout=120)
    print(f"\n  exit {res.returncode}: {res.stderr.strip()}")
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert res.stderr.strip().splitlines() == [
        f'hepascope: error: {bad}: publish.insecure: expected bool, got str "false"']
