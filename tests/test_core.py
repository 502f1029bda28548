"""Frame, config, preprocessing, messages: the units the pipeline is built from."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from hepascope.core.config import config_from_dict, load_config
from hepascope.core.errors import ConfigError
from hepascope.core.frame import Frame
from hepascope.core.geometry import PHANTOM_SECTOR
from hepascope.core.messages import (
    MessageError,
    decode,
    encode,
    parse,
    validate_result,
)
from hepascope.core.preprocess import PreprocessSpec, preprocess


def test_frame_validates_on_construction() -> None:
    img = np.zeros((4, 5, 3), np.uint8)
    f = Frame(img, 0, 1, "s")
    assert (f.height, f.width) == (4, 5)
    assert Frame(np.zeros((4, 5), np.uint8), 1, 1, "s").bgr().shape == (4, 5, 3)
    with pytest.raises(ValueError, match="uint8"):
        Frame(img.astype(np.float32), 0, 1, "s")
    with pytest.raises(ValueError, match="channels"):
        Frame(np.zeros((4, 5, 2), np.uint8), 0, 1, "s")
    with pytest.raises(ValueError, match="seq"):
        Frame(img, -1, 1, "s")
    with pytest.raises(ValueError, match="source_id"):
        Frame(img, 0, 1, "")
    with pytest.raises(TypeError):
        Frame([[1]], 0, 1, "s")  # type: ignore[arg-type]


def test_default_config_loads_and_versions_are_checked(tmp_path: Path) -> None:
    cfg = load_config()
    assert cfg.version == 1 and cfg.layout.view_names == ("bmode", "ceus")
    bad = tmp_path / "c.yaml"
    bad.write_text("version: 2\nlayout: {views: {a: [0, 0, 8, 8]}}\n")
    with pytest.raises(ConfigError, match="version 2"):
        load_config(bad)
    with pytest.raises(ConfigError, match="no such config"):
        load_config(tmp_path / "missing.yaml")
    bad.write_text("version: [\n")
    with pytest.raises(ConfigError, match="YAML"):
        load_config(bad)
    with pytest.raises(ConfigError, match="preprocess"):
        config_from_dict({"version": 1, "layout": {"views": {"a": [0, 0, 8, 8]}},
                          "preprocess": {"bogus": 1}})


def _spec(channels: int = 1, size: tuple[int, int] = (64, 64)) -> PreprocessSpec:
    cfg = load_config()
    return PreprocessSpec(cfg.layout, cfg.preprocess, size, channels)


def test_preprocess_shapes_masking_and_determinism() -> None:
    rng = np.random.default_rng(0)
    img = rng.integers(0, 255, (384, 768, 3), dtype=np.uint8)
    out = preprocess(img, _spec())
    assert set(out) == {"bmode", "ceus"}
    for arr in out.values():
        assert arr.shape == (1, 64, 64) and arr.dtype == np.float32
    again = preprocess(img.copy(), _spec())
    np.testing.assert_array_equal(out["bmode"], again["bmode"])
    # outside the sector everything is black, i.e. (0 - mean) / std after normalisation
    cfg = load_config()
    black = (0.0 - cfg.preprocess.mean) / cfg.preprocess.std
    assert out["bmode"][0, -1, 0] == pytest.approx(black)
    assert out["bmode"][0, 32, 32] != pytest.approx(black)
    three = preprocess(img, _spec(channels=3))["ceus"]
    assert three.shape == (3, 64, 64)
    np.testing.assert_array_equal(three[0], three[2])


def test_preprocess_is_what_training_sees_for_grey_and_bgr() -> None:
    grey = np.random.default_rng(1).integers(0, 255, (384, 768), dtype=np.uint8)
    bgr = np.repeat(grey[:, :, None], 3, axis=2)
    a = preprocess(grey, _spec())["bmode"]
    b = preprocess(bgr, _spec())["bmode"]
    np.testing.assert_allclose(a, b, atol=1e-6)


def test_preprocess_refuses_a_frame_the_layout_does_not_fit() -> None:
    with pytest.raises(ConfigError, match="does not fit"):
        preprocess(np.zeros((240, 320, 3), np.uint8), _spec())


def test_sector_mask_matches_geometry() -> None:
    m = PHANTOM_SECTOR.mask(384, 384)
    assert m[0, 0] == 0 and m[200, 192] == 255 and m[383, 192] == 0


def _result(**over: object) -> dict:
    msg = {"v": 2, "stream": "s", "seq": 3, "model": "m", "labels": ["a", "b"],
           "probs": [0.25, 0.75], "status": "ok", "run_id": "r1", "t_capture_ns": 1,
           "t_capture_utc_ns": 5, "t_publish_ns": 2, "latency_ms": {"total": 1.0}}
    msg.update(over)
    return msg


def test_messages_roundtrip_and_validation() -> None:
    topic, msg = parse([b"result", encode(_result())])
    assert topic == b"result" and msg["probs"] == [0.25, 0.75]
    for bad in (_result(v=1), _result(probs=[0.5, 0.6]), _result(labels=["a"]),
                _result(seq="3"), _result(latency_ms={"x": "1"})):
        with pytest.raises(MessageError):
            validate_result(bad)
    with pytest.raises(MessageError):
        decode(b"\xc1garbage")
    with pytest.raises(MessageError):
        parse([b"result"])
    with pytest.raises(MessageError):
        parse([b"other", encode(_result())])


def test_latency_histogram_matches_numpy_within_a_bin() -> None:
    from hepascope.stream.stats import LatencyHistogram

    rng = np.random.default_rng(0)
    values = rng.gamma(2.0, 5.0, 5000)
    h = LatencyHistogram()
    for v in values:
        h.add(float(v))
    for q in (50, 90, 99):
        assert abs(h.percentile(q) - np.percentile(values, q)) <= 0.1
    assert h.max == pytest.approx(values.max()) and h.mean == pytest.approx(values.mean())
    h.add(5000.0)  # beyond the range: the maximum, exactly
    assert h.percentile(100) == 5000.0


def test_preprocessing_is_thread_safe() -> None:
    """Two threads preprocessing at once (main and clip model) get exactly the results of
    one thread: CLAHE's working buffers are per thread."""
    import threading

    from hepascope.core.config import load_config
    from hepascope.core.preprocess import PreprocessSpec, preprocess_view

    cfg = load_config()
    spec = PreprocessSpec(cfg.layout, cfg.preprocess, (64, 64), 1, ("ceus",))
    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 255, (384, 768, 3), dtype=np.uint8) for _ in range(4)]
    want = [preprocess_view(f, spec, "ceus") for f in frames]
    bad: list[int] = []

    def work(k: int) -> None:
        for i in range(150):
            j = (i + k) % len(frames)
            if not np.array_equal(preprocess_view(frames[j], spec, "ceus"), want[j]):
                bad.append(j)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not bad
