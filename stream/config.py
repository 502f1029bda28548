"""Configuration: frozen dataclasses loaded from one YAML file with a version key.

The packaged ``default.yaml`` is the reference; ``--config FILE`` replaces it whole (no
merging, so what runs is exactly what the file says)."""

from __future__ import annotations

from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from hepascope.stream.errors import ConfigError
from hepascope.stream.geometry import Rect, SectorGeometry

CONFIG_VERSION = 1


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

    def __post_init__(self) -> None:
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

    def __post_init__(self) -> None:
        if self.send_hwm < 1:
            raise ConfigError("publish.send_hwm must be >= 1")


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
class Config:
    version: int
    layout: LayoutConfig
    preprocess: PreprocessConfig = field(default_factory=PreprocessConfig)
    pipeline: PipelineConfig = field(default_factory=PipelineConfig)
    publish: PublishConfig = field(default_factory=PublishConfig)
    overlay: OverlayConfig = field(default_factory=OverlayConfig)

    def __post_init__(self) -> None:
        # a pipeline alive but idle must not look dead: two heartbeats fit in the timeout
        if self.overlay.heartbeat_timeout_ms < 2000 * self.pipeline.telemetry_period_s:
            raise ConfigError("overlay.heartbeat_timeout_ms must be >= 2 x "
                              "pipeline.telemetry_period_s")


def _section(raw: dict[str, Any], key: str, cls: type, where: str) -> Any:
    data = raw.get(key) or {}
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: '{key}' must be a mapping")
    try:
        if "size" in data:
            data = {**data, "size": tuple(int(v) for v in data["size"])}
        return cls(**data)
    except TypeError as e:
        raise ConfigError(f"{where}: section '{key}': {e}") from e


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


def _layout(raw: dict[str, Any], where: str) -> LayoutConfig:
    data = raw.get("layout")
    if not isinstance(data, dict) or not isinstance(data.get("views"), dict):
        raise ConfigError(f"{where}: 'layout.views' must map view names to [x, y, w, h] "
                          "or 'full'")
    try:
        views = tuple((str(k), view_rect(r)) for k, r in data["views"].items())
        sector = data.get("sector")
        geom = SectorGeometry(**{k: float(v) for k, v in sector.items()}) if sector else None
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{where}: invalid layout: {e}") from e
    return LayoutConfig(views, geom)


def config_from_dict(raw: Any, where: str = "<dict>") -> Config:
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: expected a mapping at the top level")
    version = raw.get("version")
    if version != CONFIG_VERSION:
        raise ConfigError(f"{where}: config version {version!r} is not supported "
                          f"(this hepascope reads version {CONFIG_VERSION})")
    return Config(
        version=version,
        layout=_layout(raw, where),
        preprocess=_section(raw, "preprocess", PreprocessConfig, where),
        pipeline=_section(raw, "pipeline", PipelineConfig, where),
        publish=_section(raw, "publish", PublishConfig, where),
        overlay=_section(raw, "overlay", OverlayConfig, where),
    )


def load_packaged_config(name: str) -> Config:
    """A config shipped in ``stream/configs/`` by name (``single_view``: one full B-mode
    view, for image-only data)."""
    res = resources.files("hepascope.stream").joinpath("configs", f"{name}.yaml")
    if not res.is_file():
        folder = resources.files("hepascope.stream").joinpath("configs")
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
        text = resources.files("hepascope.stream").joinpath("default.yaml").read_text()
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
