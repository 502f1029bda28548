"""The results channel's schema (version 2): what each message may hold, and the JSON Schema
published from the same definitions (``core/messages.schema.json``)."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

from support.wire import fault, result, telemetry

from hepascope.core import messages
from hepascope.core.messages import MessageError, encode, parse

SCHEMA_FILE = Path(__file__).parents[1] / "core" / "messages.schema.json"
RUN = uuid.uuid4().hex


def _without(msg: dict[str, Any], key: str) -> dict[str, Any]:
    return {k: v for k, v in msg.items() if k != key}


def _parses(topic: bytes, msg: dict[str, Any]) -> bool:
    try:
        parse([topic, encode(msg)])
    except MessageError as e:
        print(f"  refused: {e}")
        return False
    return True


def test_result_statuses_and_model_faults() -> None:
    assert messages.SCHEMA_VERSION == 2
    assert _parses(b"result", result(1, RUN))
    for status in ("ok", "uncertain", "warming_up"):
        assert _parses(b"result", result(1, RUN, status=status))
    assert _parses(b"result", fault(1, RUN))
    for bad in (result(1, RUN, status="fault"), result(1, RUN, status=None),
                result(1, RUN, probs=[], top=None),  # no probabilities only for a fault
                fault(1, RUN, probs=[0.3, 0.7]), fault(1, RUN, top="hcc"),
                fault(1, RUN, fault=None), result(1, RUN, top="cyst"),
                result(1, RUN, v=1), _without(result(1, RUN), "run_id"),
                result(1, RUN, t_capture_utc_ns=None), result(1, RUN, t_capture_utc_ns=-5),
                result(1, RUN, t_capture_ns=10, t_publish_ns=5),  # published before captured
                result(1, RUN, probs=[math.nan, 1.0]), result(1, RUN, probs=[0.9, 0.9]),
                result(1, RUN, latency_ms={"total": math.inf}), result(-1, RUN)):
        assert not _parses(b"result", bad), bad


def test_telemetry_fields() -> None:
    assert _parses(b"telemetry", telemetry(RUN, invalid_outputs=3, ring="hepascope-1-ab"))
    assert _parses(b"telemetry", telemetry(RUN, model=None, pid=None))  # optional
    for bad in (_without(telemetry(RUN), "run_id"), telemetry(RUN, inference_up="true"),
                telemetry(RUN, inference_up=None), telemetry(RUN, invalid_outputs=-1),
                telemetry(RUN, model=["m"]), telemetry(RUN, ring=3), telemetry(RUN, ring="a/b"),
                telemetry(RUN, pid="1"), telemetry(RUN, models=[{"model": 1}]),
                telemetry(RUN, fps_in=math.nan)):
        assert not _parses(b"telemetry", bad), bad


def test_the_published_json_schema_is_what_the_code_validates(tmp_path: Path) -> None:
    committed = json.loads(SCHEMA_FILE.read_text())
    assert committed == messages.json_schema(), \
        "core/messages.schema.json is out of date: python -m hepascope.core.messages --schema"
    out = tmp_path / "s.json"
    res = subprocess.run([sys.executable, "-m", "hepascope.core.messages", "--schema",
                          str(out)], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    assert out.read_text() == SCHEMA_FILE.read_text()
    defs = committed["$defs"]
    assert set(defs["Result"]["required"]) >= {"run_id", "status", "t_capture_utc_ns"}
    assert set(defs["Result"]["properties"]["status"]["enum"]) == {
        "ok", "uncertain", "warming_up", "model_fault"}
    assert {"run_id", "inference_up"} <= set(defs["Telemetry"]["required"])

