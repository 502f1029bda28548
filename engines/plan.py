"""A TensorRT plan's sidecar: what the plan was built with and from, written beside it as
``MODEL.plan.json``, and the check that refuses a plan the running TensorRT or GPU cannot
use, or one built from another ONNX file than the one beside it.

A serialized TensorRT engine is tied to the TensorRT version and the GPU model that built
it; deserializing it elsewhere fails (or, across minor GPU differences, runs slower than
it should) with messages that do not say what to do. The sidecar makes that one line:
what differs, and the command that rebuilds the plan. Pure Python: no TensorRT, no GPU.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from hepascope.core.errors import ModelError

SIDECAR_VERSION = 1
PRECISIONS = ("fp32", "fp16", "int8", "qdq")
Profile = dict[str, tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]]


def hepascope_version() -> str:
    """The installed package's version, or "dev" in a source checkout."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("hepascope")
    except PackageNotFoundError:
        return "dev"


def sha256_file(path: str | Path) -> str:
    """Hex SHA-256 of a file, read in 1 MiB chunks (a VGG-16 graph is 0.5 GB)."""
    h = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            while chunk := f.read(1 << 20):
                h.update(chunk)
    except OSError as e:
        raise ModelError(f"{path}: cannot read to hash it ({e.strerror or e})") from e
    return h.hexdigest()


def sidecar_path(plan: str | Path) -> Path:
    """``MODEL.plan`` -> ``MODEL.plan.json``."""
    p = Path(plan)
    return p.with_name(p.name + ".json")


def sm(compute_capability: tuple[int, int]) -> str:
    """(9, 0) -> "sm_90"."""
    return f"sm_{compute_capability[0]}{compute_capability[1]}"


@dataclass(frozen=True)
class PlanSidecar:
    """What one plan was built with (TensorRT, GPU) and from (the ONNX file's hash, name
    and metadata), and how (precision, batch range, optimisation profiles)."""

    tensorrt_version: str
    gpu_name: str
    compute_capability: tuple[int, int]
    onnx_sha256: str
    onnx_name: str
    onnx_metadata: dict[str, str] = field(default_factory=dict)
    precision: str = "fp32"
    max_batch: int = 1
    profiles: tuple[Profile, ...] = ()
    fp32_layers: tuple[str, ...] = ()  # layers pinned to fp32 in a reduced-precision build
    built_at: str = ""
    hepascope_version: str = ""
    sidecar_version: int = SIDECAR_VERSION

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise ModelError(f"precision must be one of {PRECISIONS}, got {self.precision!r}")
        if self.max_batch < 1:
            raise ModelError(f"max_batch must be >= 1, got {self.max_batch}")
        if len(self.onnx_sha256) != 64:
            raise ModelError(f"onnx_sha256 must be 64 hex digits, got {self.onnx_sha256!r}")

    def target(self) -> str:
        """"TensorRT 10.3.0 for NVIDIA H100 80GB HBM3 (sm_90)"."""
        return f"TensorRT {self.tensorrt_version} for {self.gpu_name} " \
               f"({sm(self.compute_capability)})"

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["compute_capability"] = list(self.compute_capability)
        d["profiles"] = [{name: {"min": list(s[0]), "opt": list(s[1]), "max": list(s[2])}
                          for name, s in prof.items()} for prof in self.profiles]
        d["fp32_layers"] = list(self.fp32_layers)
        return d

    @classmethod
    def from_json(cls, d: Any) -> PlanSidecar:
        """Raises ``KeyError``, ``TypeError`` or ``ValueError`` on a malformed dict (the
        reader turns them into one ``ModelError``)."""
        if not isinstance(d, dict):
            raise TypeError(f"a JSON object, not {type(d).__name__}")
        if d.get("sidecar_version") != SIDECAR_VERSION:
            raise ValueError(f"sidecar version {d.get('sidecar_version')!r}, this reads "
                             f"{SIDECAR_VERSION}")
        cc = d["compute_capability"]
        if not (isinstance(cc, list) and len(cc) == 2 and all(isinstance(x, int) for x in cc)):
            raise ValueError(f"compute_capability {cc!r} is not [major, minor]")
        meta = d.get("onnx_metadata", {})
        if not isinstance(meta, dict) or not all(isinstance(v, str) for v in meta.values()):
            raise TypeError("onnx_metadata is not a string map")
        profiles = tuple({str(name): (tuple(int(x) for x in s["min"]),
                                      tuple(int(x) for x in s["opt"]),
                                      tuple(int(x) for x in s["max"]))
                          for name, s in prof.items()} for prof in d.get("profiles", []))
        strings = ("tensorrt_version", "gpu_name", "onnx_sha256", "onnx_name", "precision")
        for key in strings:
            if not isinstance(d[key], str):
                raise TypeError(f"{key} is not a string")
        return cls(tensorrt_version=d["tensorrt_version"], gpu_name=d["gpu_name"],
                   compute_capability=(cc[0], cc[1]), onnx_sha256=d["onnx_sha256"],
                   onnx_name=d["onnx_name"], onnx_metadata=dict(meta),
                   precision=d["precision"], max_batch=int(d["max_batch"]), profiles=profiles,
                   fp32_layers=tuple(str(x) for x in d.get("fp32_layers", [])),
                   built_at=str(d.get("built_at", "")),
                   hepascope_version=str(d.get("hepascope_version", "")),
                   sidecar_version=SIDECAR_VERSION)


def now_utc() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def atomic_write(path: Path, data: bytes) -> None:
    """Write ``data`` to a temporary file in ``path``'s directory, fsync, then rename it
    over ``path``: a reader sees the old file or the whole new one, never a torn one."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_plan(plan: str | Path, engine: bytes | memoryview, sidecar: PlanSidecar) -> Path:
    """Write the serialized engine to ``plan`` and its sidecar beside it, each atomically.
    The old sidecar goes first and the new one last, so an interrupted write leaves a plan
    without a sidecar (refused on load), never a new plan under an old sidecar."""
    p = Path(plan)
    p.parent.mkdir(parents=True, exist_ok=True)
    side = sidecar_path(p)
    side.unlink(missing_ok=True)
    atomic_write(p, bytes(engine))
    atomic_write(side, (json.dumps(sidecar.to_json(), indent=2) + "\n").encode())
    return side


def read_sidecar(plan: str | Path) -> PlanSidecar:
    """The sidecar of ``plan``; ``ModelError`` if it is missing or not one."""
    p = Path(plan)
    side = sidecar_path(p)
    onnx = p.with_suffix(".onnx").name
    try:
        text = side.read_text()
    except FileNotFoundError:
        raise ModelError(f"{p.name}: no sidecar {side.name} (what the plan was built with); "
                         f"rebuild it with 'hepascope build {onnx}'") from None
    except OSError as e:
        raise ModelError(f"{side}: cannot read ({e.strerror or e})") from e
    try:
        return PlanSidecar.from_json(json.loads(text))
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
        what = f"missing {e}" if isinstance(e, KeyError) else str(e).splitlines()[0]
        raise ModelError(f"{side.name}: not a plan sidecar ({what}); rebuild the plan with "
                         f"'hepascope build {onnx}'") from e


def check_plan(sidecar: PlanSidecar, *, trt_version: str, gpu_name: str,
               compute_capability: tuple[int, int], onnx_path: str | Path | None = None,
               onnx_sha256: str | None = None, plan_name: str = "the plan") -> None:
    """Refuse, with one ``ModelError`` line naming every difference and the rebuild
    command, a plan built by another TensorRT version, for another GPU model or compute
    capability, or from another ONNX file than ``onnx_path`` (or ``onnx_sha256``). With
    neither given the model is not checked."""
    if onnx_path is not None and onnx_sha256 is not None:
        raise ValueError("give onnx_path or onnx_sha256, not both")
    rebuild = f"rebuild with 'hepascope build {sidecar.onnx_name}'"
    cc = tuple(compute_capability)
    here: list[str] = []
    if trt_version != sidecar.tensorrt_version:
        here.append(f"TensorRT {trt_version}")
    if gpu_name != sidecar.gpu_name or cc != sidecar.compute_capability:
        here.append(f"{gpu_name} ({sm((cc[0], cc[1]))})")
    problems = []
    if here:
        problems.append(f"{plan_name} was built with {sidecar.target()}; this is "
                        f"{' on '.join(here)}")
    digest = sha256_file(onnx_path) if onnx_path is not None else onnx_sha256
    if digest is not None and digest != sidecar.onnx_sha256:
        name = Path(onnx_path).name if onnx_path is not None else sidecar.onnx_name
        problems.append(f"{plan_name} was built from another {name} (sha256 "
                        f"{sidecar.onnx_sha256[:12]}, now {digest[:12]})")
    if problems:
        raise ModelError("; ".join(problems) + f": {rebuild}")
