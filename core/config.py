"""Configuration: frozen dataclasses loaded from one YAML file with a version key,
validated strictly with msgspec (the library that also checks the results channel's
messages): unknown keys are refused with the nearest valid name, types are checked (an int
may stand for a float; ``"false"`` is not a bool), and every error is one line naming the
file and the key path.

The packaged ``default.yaml`` is the reference; ``--config FILE`` replaces it whole (no
merging, so what runs is exactly what the file says)."""

from __future__ import annotations

import dataclasses
import difflib
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Literal, TypeVar

import msgspec
import yaml

from hepascope.core.errors import ConfigError
from hepascope.core.geometry import Rect, SectorGeometry

CONFIG_VERSION = 1
GPU_PREPROCESS = ("auto", "on", "off")  # pipeline.gpu_preprocess
T = TypeVar("T")


def parse_bind(value: int | str, name: str = "--igtl-serve") -> tuple[str, int]:
    """(host, port) of ``PORT`` or ``HOST:PORT`` (loopback when no host is given; port 0:
    any free one); ``name`` says where the value came from in the error."""
    text = str(value).strip()
    host, sep, port_text = text.rpartition(":")
    host = host.strip("[]") if sep else "127.0.0.1"
    try:
        port = int(port_text)
    except ValueError:
        raise ConfigError(f"{name}: {text!r} is not PORT or HOST:PORT") from None
    if not 0 <= port <= 65535:
        raise ConfigError(f"{name}: port {port} is not in 0-65535")
    if not host:
        raise ConfigError(f"{name}: {text!r} has an empty host")
    return host, port


@dataclass(frozen=True, slots=True)
class LayoutConfig:
    """Views of the captured frame by name, in order, and the sector inside each view."""

    views: tuple[tuple[str, Rect], ...]
    sector: SectorGeometry | None = None

    def __post_init__(self) -> None:
        if not self.views:
            raise ConfigError("layout.views must name at least one view")
        full = [name for name, rect in self.views if rect.is_full]
        if full and self.sector is not None:
            # the sector is in pixels of a fixed-size view; a full view has no fixed size
            raise ConfigError(f"layout.sector needs fixed-size views; {', '.join(full)} "
                              "is 'full' (drop the sector or give the view as [x, y, w, h])")

    @property
    def view_names(self) -> tuple[str, ...]:
        return tuple(name for name, _ in self.views)

    def rect(self, name: str) -> Rect:
        for view, rect in self.views:
            if view == name:
                return rect
        raise ConfigError(f"layout has no view {name!r} (views: {', '.join(self.view_names)})")


@dataclass(frozen=True, slots=True)
class PreprocessConfig:
    gaussian_sigma: float = 1.0
    clahe_clip: float = 2.0
    clahe_tiles: int = 8
    size: tuple[int, int] = (128, 128)
    mean: float = 0.5
    std: float = 0.25

    def __post_init__(self) -> None:
        if self.gaussian_sigma < 0 or self.clahe_clip < 0:
            raise ConfigError("preprocess.gaussian_sigma and clahe_clip must be >= 0")
        if self.clahe_tiles < 1:
            raise ConfigError("preprocess.clahe_tiles must be >= 1")
        if len(self.size) != 2 or min(self.size) < 8:
            raise ConfigError(f"preprocess.size must be [H, W] >= 8, got {self.size}")
        if self.std <= 0:
            raise ConfigError("preprocess.std must be > 0")


@dataclass(frozen=True, slots=True)
class PipelineConfig:
    ring_slots: int = 8
    telemetry_period_s: float = 0.2  # the heartbeat: overlay.heartbeat_timeout_ms >= 2 periods
    latency_window: int = 300
    # the main model in a supervised child process (a crash there stops neither capture
    # nor recording; it is restarted) or in a thread of this one
    inference: str = "process"
    inference_max_crashes: int = 5        # crashes within the window that end the run
    inference_crash_window_s: float = 60.0
    # a child with a frame waiting that makes no progress for 10 x its p99 step time, at
    # least min_s and at most max_s (max_s until its first step), is hung: killed, restarted
    inference_hang_min_s: float = 1.0
    inference_hang_max_s: float = 10.0
    inference_max_invalid: int = 30  # model-fault results in a row that are a fault
    # an unpaced source (a file replayed as fast as it decodes) keeps frames waiting: the
    # main model takes up to this many, oldest first, in one engine run (1: one at a time).
    # A live source's model always takes the newest frame alone (latency first)
    unpaced_batch: int = 4
    # a single-frame model's preprocessing as CUDA kernels writing the engine's input on the
    # GPU (stream/classifier.py): auto (where the engine can be fed on the device, else the
    # host, saying why), on (or the run does not start), off (the host). YAML's bare on/off
    # are booleans: taken as "on"/"off"
    gpu_preprocess: str | bool = "auto"

    def __post_init__(self) -> None:
        if isinstance(self.gpu_preprocess, bool):
            object.__setattr__(self, "gpu_preprocess", "on" if self.gpu_preprocess else "off")
        if self.gpu_preprocess not in GPU_PREPROCESS:
            raise ConfigError(f"pipeline.gpu_preprocess must be auto, on or off, "
                              f"got {self.gpu_preprocess!r}")
        if self.inference not in ("process", "thread"):
            raise ConfigError(f"pipeline.inference must be process or thread, "
                              f"got {self.inference!r}")
        if self.inference_max_crashes < 1 or not self.inference_crash_window_s > 0:
            raise ConfigError("pipeline.inference_max_crashes must be >= 1 and "
                              "inference_crash_window_s > 0")
        if not 0 < self.inference_hang_min_s <= self.inference_hang_max_s:
            raise ConfigError("pipeline.inference_hang_min_s must be > 0 and <= "
                              "inference_hang_max_s")
        if self.inference_max_invalid < 1:
            raise ConfigError("pipeline.inference_max_invalid must be >= 1")
        if self.ring_slots < 2:
            raise ConfigError("pipeline.ring_slots must be >= 2")
        if not 1 <= self.unpaced_batch <= self.ring_slots // 2:
            raise ConfigError(f"pipeline.unpaced_batch must be in [1, ring_slots / 2] (a "
                              f"batch in flight and the next one decoded fit in the ring), "
                              f"got {self.unpaced_batch} with {self.ring_slots} slots")
        if not (0 < self.telemetry_period_s <= 1.0):
            raise ConfigError("pipeline.telemetry_period_s must be in (0, 1]: it is the heartbeat")
        if self.latency_window < 10:
            raise ConfigError("pipeline.latency_window must be >= 10")


@dataclass(frozen=True, slots=True)
class PublishConfig:
    endpoint: str = "tcp://127.0.0.1:5555"
    send_hwm: int = 64
    keys: str | None = None  # CURVE keys dir: server.key_secret + clients/*.key (allow-list)
    insecure: bool = False   # allow a non-loopback bind without keys (warned)
    igtl_serve: int | str | None = None  # OpenIGTLink results server: PORT or HOST:PORT

    def __post_init__(self) -> None:
        if self.send_hwm < 1:
            raise ConfigError("publish.send_hwm must be >= 1")
        if self.igtl_serve is not None:
            parse_bind(self.igtl_serve, "publish.igtl_serve")


@dataclass(frozen=True, slots=True)
class OverlayConfig:
    stale_ms: float = 250.0
    fps: float = 30.0
    heartbeat_timeout_ms: float = 600.0  # NO DATA when nothing was published this long
    server_key: str | None = None  # the publisher's pinned public key file (CURVE)
    client_key: str | None = None  # this overlay's .key_secret file (CURVE)

    def __post_init__(self) -> None:
        if self.stale_ms <= 0 or self.fps <= 0 or self.heartbeat_timeout_ms <= 0:
            raise ConfigError("overlay.stale_ms, fps and heartbeat_timeout_ms must be > 0")
        if (self.server_key is None) != (self.client_key is None):
            raise ConfigError("overlay.server_key and overlay.client_key go together")


@dataclass(frozen=True, slots=True)
class VerdictConfig:
    """How the main model's per-frame outputs become a result (stream/verdict.py): a scene
    cut (a new patient, the probe lifted) resets the model's window and the smoothing; a
    window model is ``warming_up`` until its window spans ``warmup_fraction`` of itself."""

    smooth_s: float = 1.0  # mean of the probabilities over this much media time; 0: none
    # mean |difference| (0-1) of two consecutive 16x16 grey thumbnails of the B-mode view
    # that is a scene cut; phantom: motion <= 0.008 at 3 fps, patient changes >= 0.014
    scene_cut_threshold: float = 0.011
    scene_black_level: float = 0.03  # a B-mode view darker than this (mean, 0-1): no scene
    warmup_fraction: float = 0.5

    def __post_init__(self) -> None:
        if not 0 <= self.smooth_s <= 60:
            raise ConfigError("verdict.smooth_s must be in [0, 60]")
        if not self.scene_cut_threshold > 0:
            raise ConfigError("verdict.scene_cut_threshold must be > 0 (above 1: never)")
        if not 0 <= self.scene_black_level < 1:
            raise ConfigError("verdict.scene_black_level must be in [0, 1) (0: never)")
        if not 0 <= self.warmup_fraction <= 1:
            raise ConfigError("verdict.warmup_fraction must be in [0, 1]")


@dataclass(frozen=True, slots=True)
class Config:
    version: int
    layout: LayoutConfig
    preprocess: PreprocessConfig = field(default_factory=PreprocessConfig)
    pipeline: PipelineConfig = field(default_factory=PipelineConfig)
    publish: PublishConfig = field(default_factory=PublishConfig)
    overlay: OverlayConfig = field(default_factory=OverlayConfig)
    verdict: VerdictConfig = field(default_factory=VerdictConfig)

    def __post_init__(self) -> None:
        # a pipeline alive but idle must not look dead: two heartbeats fit in the timeout
        if self.overlay.heartbeat_timeout_ms < 2000 * self.pipeline.telemetry_period_s:
            raise ConfigError("overlay.heartbeat_timeout_ms must be >= 2 x "
                              "pipeline.telemetry_period_s")


def view_rect(value: Any) -> Rect:
    """A view from YAML/JSON: ``[x, y, w, h]`` or ``"full"`` (the whole frame, any size)."""
    if value == "full":
        return Rect.full()
    if isinstance(value, str) or len(value) != 4:
        raise ValueError(f"a view is [x, y, w, h] or 'full', got {value!r}")
    x, y, w, h = (int(v) for v in value)
    if w <= 0 or h <= 0:  # all zeros is the full sentinel: spell it 'full'
        raise ValueError(f"invalid view {value!r}: w and h must be > 0")
    return Rect(x, y, w, h)


def view_value(rect: Rect) -> str | list[int]:
    """Inverse of ``view_rect``."""
    return "full" if rect.is_full else [rect.x, rect.y, rect.w, rect.h]


_SECTIONS: dict[str, type] = {"preprocess": PreprocessConfig, "pipeline": PipelineConfig,
                              "publish": PublishConfig, "overlay": OverlayConfig,
                              "verdict": VerdictConfig}
_TOP_KEYS = ("version", "layout", *_SECTIONS)


def _check_keys(data: dict[Any, Any], valid: Sequence[str], path: str, where: str) -> None:
    """``ConfigError`` naming the first unknown key and the valid name nearest to it."""
    for key in data:
        if key in valid:
            continue
        name = f"{path}.{key}" if path else str(key)
        near = difflib.get_close_matches(str(key), valid, n=1, cutoff=0.6)
        hint = f"did you mean {near[0]!r}?" if near else f"valid: {', '.join(valid)}"
        raise ConfigError(f"{where}: {name}: unknown key; {hint}")


def _mapping(value: Any, path: str, where: str) -> dict[Any, Any]:
    """A section's mapping (an empty section in YAML is null: no keys)."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ConfigError(f"{where}: {path}: expected a mapping, got {type(value).__name__}")
    return value


def _shown(value: Any) -> str:
    """A config value in an error line: YAML-ish, short."""
    text = json.dumps(value) if isinstance(value, (str, bool)) or value is None else repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _lookup(data: Any, steps: str) -> tuple[bool, Any]:
    """The value at a msgspec error path (``.key[1].other``) inside ``data``."""
    for key, index in re.findall(r"\.([^.\[]+)|\[(\d+)\]", steps):
        try:
            data = data[key] if key else data[int(index)]
        except (KeyError, IndexError, TypeError):
            return False, None
    return True, data


def _convert(data: dict[Any, Any], cls: type[T], path: str, where: str) -> T:
    """``cls`` from ``data`` with msgspec's strict types (an int may stand for a float, no
    other coercion): unknown keys and type errors are one ``ConfigError`` line naming the
    key path; the dataclass's own checks (``__post_init__``) keep their message."""
    _check_keys(data, [f.name for f in dataclasses.fields(cls)], path, where)  # type: ignore[arg-type]
    try:
        return msgspec.convert(data, cls, strict=True)
    except msgspec.ValidationError as e:
        if isinstance(e.__cause__, ConfigError):
            raise ConfigError(f"{where}: {e.__cause__}") from e
        m = re.fullmatch(r"(.*?)(?: - at `\$(.*)`)?", str(e), re.S)
        what, steps = (m.group(1), m.group(2) or "") if m else (str(e), "")
        found, value = _lookup(data, steps)
        typed = "got `" in what  # "Expected `bool`, got `str`": add the value itself
        what = what.replace("`", "")
        what = what[:1].lower() + what[1:]
        if found and typed:
            what = f"{what} {_shown(value)}"
        elif found and ", got " not in what:  # a range: "Expected `int` >= 1"
            what = f"{what}, got {type(value).__name__} {_shown(value)}"
        raise ConfigError(f"{where}: {path}{steps}: {what}") from e


@dataclass(frozen=True, slots=True)
class _LayoutData:
    """``layout`` as written: views by name (``[x, y, w, h]`` or ``full``), sector."""

    views: dict[str, Literal["full"] | list[int]]
    sector: dict[str, Any] | None = None


def _layout(raw: dict[str, Any], where: str) -> LayoutConfig:
    data = raw.get("layout")
    if isinstance(data, dict):
        _check_keys(data, ("views", "sector"), "layout", where)
    if not isinstance(data, dict) or not isinstance(data.get("views"), dict):
        raise ConfigError(f"{where}: 'layout.views' must map view names to [x, y, w, h] "
                          "or 'full'")
    given = _convert(data, _LayoutData, "layout", where)
    sector = None
    if given.sector is not None:
        sector = _convert(given.sector, SectorGeometry, "layout.sector", where)
    try:
        views = tuple((name, view_rect(r)) for name, r in given.views.items())
    except ValueError as e:
        raise ConfigError(f"{where}: invalid layout: {e}") from e
    try:
        return LayoutConfig(views, sector)
    except ConfigError as e:
        raise ConfigError(f"{where}: {e}") from e


def config_from_dict(raw: Any, where: str = "<dict>") -> Config:
    """A ``Config`` from parsed YAML, strictly: see ``_convert``."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: expected a mapping at the top level")
    _check_keys(raw, _TOP_KEYS, "", where)
    version = raw.get("version")
    if version != CONFIG_VERSION or isinstance(version, bool):
        raise ConfigError(f"{where}: config version {version!r} is not supported "
                          f"(this hepascope reads version {CONFIG_VERSION})")
    layout = _layout(raw, where)
    sections: dict[str, Any] = {
        key: _convert(_mapping(raw.get(key), key, where), cls, key, where)
        for key, cls in _SECTIONS.items()}
    try:
        return Config(version=version, layout=layout, **sections)
    except ConfigError as e:
        raise ConfigError(f"{where}: {e}") from e


def load_packaged_config(name: str) -> Config:
    """A config shipped in ``core/configs/`` by name (``single_view``: one full B-mode
    view, for image-only data)."""
    res = resources.files("hepascope.core").joinpath("configs", f"{name}.yaml")
    if not res.is_file():
        folder = resources.files("hepascope.core").joinpath("configs")
        names = sorted(f.name[:-5] for f in folder.iterdir() if f.name.endswith(".yaml"))
        raise ConfigError(f"{name}: no such config file, nor a packaged config "
                          f"({', '.join(names)})")
    try:
        raw = yaml.safe_load(res.read_text())
    except yaml.YAMLError as e:
        raise ConfigError(f"configs/{name}.yaml: not valid YAML ({e})") from e
    return config_from_dict(raw, f"configs/{name}.yaml")


def load_config(path: str | Path | None = None) -> Config:
    """The packaged default, the YAML file at ``path``, or a packaged config by name
    (``single_view``: a bare name that is not a file)."""
    if path is None:
        text = resources.files("hepascope.core").joinpath("default.yaml").read_text()
        where = "default.yaml"
    else:
        p = Path(path)
        if not p.is_file() and p.suffix == "" and len(p.parts) == 1:
            return load_packaged_config(p.name)
        if not p.is_file():
            raise ConfigError(f"{p}: no such config file")
        text, where = p.read_text(), str(p)
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ConfigError(f"{where}: not valid YAML ({e})") from e
    return config_from_dict(raw, where)
