"""Bring-your-own data: readers (images, videos, frame folders, DICOM incl. pydicom's real
ultrasound files), dataset indexes, task presets, phantom and folder ArraySets, whole-frame
views. No torch."""

from __future__ import annotations

import csv
import re
import warnings
from pathlib import Path

import cv2
import numpy as np
import pytest
from support.media import matches_pattern, write_video

from hepascope.core.config import config_from_dict, load_config, load_packaged_config
from hepascope.core.errors import ConfigError, DataError
from hepascope.core.geometry import Rect
from hepascope.core.preprocess import PreprocessSpec, preprocess_view, spec_from_dict
from hepascope.phantom import make_case
from hepascope.train.datasets.folder import FolderWindow, folder_arrays, window_indices
from hepascope.train.datasets.index import DatasetIndex, PatientLeakWarning, index_from
from hepascope.train.datasets.io import (
    clip_length,
    is_clip,
    read_clip,
    read_image,
    write_clip,
    write_image,
)
from hepascope.train.datasets.phantom import ClipWindow, patient_plan, phantom_arrays
from hepascope.train.tasks import get_task, list_tasks, task_from_classes

pydicom = pytest.importorskip("pydicom")


def _noise(seed: int, shape: tuple[int, ...]) -> np.ndarray:
    img = np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)
    return cv2.GaussianBlur(img, (5, 5), 0)  # compressible, so JPEG stays close


def _dicom(path: Path, arr: np.ndarray, photometric: str = "MONOCHROME2", bits: int = 8,
           **tags: object) -> Path:
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, UltrasoundImageStorage, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UltrasoundImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = UltrasoundImageStorage, meta.MediaStorageSOPInstanceUID
    ds.Modality = "US"
    if arr is not None:
        ds.set_pixel_data(arr, photometric, bits)
    for k, v in tags.items():
        setattr(ds, k, v)
    ds.save_as(path, enforce_file_format=True)
    return path


# -- readers ----------------------------------------------------------------------------
def test_read_raster_images_any_path(tmp_path: Path) -> None:
    d = tmp_path / "échographie foie"
    d.mkdir()
    grey, colour = _noise(0, (37, 53)), _noise(1, (40, 30, 3))
    for ext in (".png", ".bmp", ".tiff"):
        write_image(d / f"g{ext}", grey)
        write_image(d / f"c{ext}", colour)
        assert np.array_equal(read_image(d / f"g{ext}"), grey)
        assert np.array_equal(read_image(d / f"c{ext}"), colour)
    write_image(d / "c.jpg", colour)
    back = read_image(d / "c.jpg")
    assert back.shape == colour.shape and back.dtype == np.uint8
    assert np.abs(back.astype(int) - colour).mean() < 6
    wide = (np.arange(64, dtype=np.uint16).reshape(8, 8) * 500 + 1000)  # 16-bit PNG
    write_image(d / "w.png", wide)
    w8 = read_image(d / "w.png")
    assert w8.dtype == np.uint8 and w8.min() == 0 and w8.max() == 255
    assert not is_clip(d / "g.png")


def test_unreadable_images_are_data_errors(tmp_path: Path) -> None:
    img = _noise(2, (64, 64, 3))
    png, jpg = write_image(tmp_path / "a.png", img), write_image(tmp_path / "a.jpg", img)
    (tmp_path / "cut.png").write_bytes(png.read_bytes()[:200])
    (tmp_path / "cut.jpg").write_bytes(jpg.read_bytes()[:-400])
    (tmp_path / "junk.png").write_bytes(b"not an image at all" * 10)
    (tmp_path / "empty.bmp").write_bytes(b"")
    for name in ("cut.png", "cut.jpg", "junk.png", "empty.bmp"):
        with pytest.raises(DataError, match=re.escape(name)):
            read_image(tmp_path / name)
    with pytest.raises(DataError, match=r"missing\.png: no such file"):
        read_image(tmp_path / "missing.png")
    with pytest.raises(DataError, match=r"missing\.mp4"):
        read_clip(tmp_path / "missing.mp4")
    (tmp_path / "a.txt").write_text("x")
    with pytest.raises(DataError, match="unsupported"):
        read_image(tmp_path / "a.txt")


def test_read_video_clip_and_ranges(tmp_path: Path) -> None:
    mp4 = write_video(tmp_path / "v.mp4", frames=12, fps=10, size=(48, 96))
    frames = read_clip(mp4)
    assert len(frames) == 12 and frames[0].shape == (48, 96, 3) and clip_length(mp4) == 12
    part = read_clip(mp4, (4, 7))
    assert len(part) == 3 and all(matches_pattern(f, 4 + k) for k, f in enumerate(part))
    with pytest.raises(DataError, match="beyond"):
        read_clip(mp4, (10, 20))
    with pytest.raises(DataError, match="bad frame range"):
        read_clip(mp4, (5, 5))
    lossless = [_noise(10 + k, (32, 40, 3)) for k in range(5)]
    mkv = write_clip(tmp_path / "x.mkv", lossless, fps=0.5)
    assert is_clip(mkv) and clip_length(mkv) == 5
    assert all(np.array_equal(a, b) for a, b in zip(read_clip(mkv), lossless, strict=True))
    assert np.array_equal(read_clip(mkv, (2, 4))[1], lossless[3])


def test_read_frame_folder_in_name_order(tmp_path: Path) -> None:
    d = tmp_path / "clip"
    d.mkdir()
    imgs = [_noise(20 + k, (16, 24)) for k in range(12)]
    for k, im in enumerate(imgs):  # frame2 must come before frame10
        write_image(d / f"frame{k}.png", im)
    (d / "notes.txt").write_text("ignored")
    assert is_clip(d) and clip_length(d) == 12
    got = read_clip(d)
    assert all(np.array_equal(a, b) for a, b in zip(got, imgs, strict=True))
    assert np.array_equal(read_clip(d, (9, 11))[1], imgs[10])


def test_dicom_from_arrays(tmp_path: Path) -> None:
    g8 = _noise(3, (20, 30))
    assert np.array_equal(read_image(_dicom(tmp_path / "g8.dcm", g8)), g8)
    assert np.array_equal(read_image(_dicom(tmp_path / "m1.dcm", g8, "MONOCHROME1")), 255 - g8)
    g16 = (g8.astype(np.uint16) * 16 + 100)  # 12 bits stored, no window: 0..4095 -> 0..255
    out = read_image(_dicom(tmp_path / "g16", g16, bits=12))  # no extension: DICM magic
    ref = (g16 * (255.0 / 4095) + 0.5).astype(np.uint8)  # the live source's rule
    assert np.array_equal(out, ref)
    win = read_image(_dicom(tmp_path / "w.dcm", g16, bits=12, WindowCenter=1000,
                            WindowWidth=1000))
    ref = np.clip((g16.astype(np.float32) - 500) * 255 / 1000 + 0.5, 0, 255).astype(np.uint8)
    assert np.abs(win.astype(int) - ref).max() <= 1  # DICOM's LINEAR window (c - 0.5, w - 1)
    rgb = _noise(4, (10, 12, 3))
    assert np.array_equal(read_image(_dicom(tmp_path / "rgb.dcm", rgb, "RGB")), rgb[..., ::-1])
    cine = np.stack([_noise(30 + k, (8, 10)) for k in range(4)])
    mf = _dicom(tmp_path / "cine.dcm", cine)
    assert is_clip(mf) and clip_length(mf) == 4
    assert np.array_equal(np.stack(read_clip(mf)), cine)
    assert np.array_equal(read_clip(mf, (1, 3))[1], cine[2])
    with pytest.raises(DataError, match="read_clip"):
        read_image(mf)


def test_dicom_without_pixels_or_decoder(tmp_path: Path) -> None:
    from pydicom.uid import JPEGLSLossless

    empty = _dicom(tmp_path / "report.dcm", None)  # type: ignore[arg-type]
    with pytest.raises(DataError, match="no pixel data"):
        read_image(empty)
    p = _dicom(tmp_path / "jls.dcm", _noise(5, (8, 8)))
    ds = pydicom.dcmread(p)
    ds.file_meta.TransferSyntaxUID = JPEGLSLossless
    from pydicom.encaps import encapsulate

    ds.PixelData = encapsulate([b"\xff\xd8garbage\xff\xd9"])
    ds["PixelData"].VR = "OB"
    ds.save_as(p)
    with pytest.raises(DataError, match=r"JPEG-LS Lossless.*pip install"):
        read_image(p)
    (tmp_path / "bad.dcm").write_bytes(b"\0" * 50)
    with pytest.raises(DataError, match=r"bad\.dcm"):
        read_image(tmp_path / "bad.dcm")


@pytest.mark.parametrize(("name", "shape"), [
    ("rgb_color", (240, 320, 3)), ("palette_color", (350, 800, 3)),
    ("jpeg2k", (480, 640, 3)), ("ybr_color", (240, 320, 3))])
def test_real_ultrasound_dicoms(name: str, shape: tuple[int, int, int]) -> None:
    from pydicom import examples

    path = examples.get_path(name)
    ds = pydicom.dcmread(path)
    if name == "ybr_color":  # 30-frame JPEG baseline YBR cine
        assert is_clip(path)
        frames = read_clip(path, (5, 8))
        assert len(frames) == 3 and frames[0].shape == shape
        from pydicom.pixels import convert_color_space, pixel_array

        raw = pixel_array(ds, index=6, raw=True)
        rgb = convert_color_space(raw, "YBR_FULL", "RGB")
        assert np.abs(frames[1][..., ::-1].astype(int) - rgb).max() <= 1
        return
    img = read_image(path)
    assert img.shape == shape and img.dtype == np.uint8 and img.std() > 5
    if name == "palette_color":
        from pydicom.pixels import apply_color_lut

        ref = (apply_color_lut(ds.pixel_array, ds) >> 8).astype(np.uint8)
        assert np.array_equal(img[..., ::-1], ref)
    else:
        assert np.array_equal(img[..., ::-1], ds.pixel_array)  # RGB -> BGR, nothing else


# -- indexes ----------------------------------------------------------------------------
def _folder_dataset(root: Path) -> None:
    for c in ("cyst", "normal"):
        (root / c).mkdir(parents=True)
    write_image(root / "cyst" / "a.png", _noise(40, (20, 20)))
    write_image(root / "cyst" / "b.jpg", _noise(41, (20, 20, 3)))
    clip = root / "normal" / "clip1"
    clip.mkdir()
    for k in range(3):
        write_image(clip / f"{k}.png", _noise(50 + k, (20, 20)))
    _dicom(root / "normal" / "cine.dcm", np.stack([_noise(60 + k, (20, 20)) for k in range(4)]))
    (root / "normal" / "README.txt").write_text("not data")


def test_index_from_folder_with_patients(tmp_path: Path) -> None:
    _folder_dataset(tmp_path)
    rows = [("cyst/a.png", "P1"), ("cyst/b.jpg", "P2"), ("normal/clip1", "P3"),
            ("normal/cine.dcm", "P3")]
    with (tmp_path / "patients.csv").open("w", newline="") as f:
        csv.writer(f).writerows([("path", "patient_id"), *rows])
    with warnings.catch_warnings():
        warnings.simplefilter("error", PatientLeakWarning)
        with pytest.warns(UserWarning, match="README.txt"):
            ix = index_from(tmp_path)
    assert ix.classes == ("cyst", "normal") and len(ix) == 4
    assert {(it.path.relative_to(tmp_path).as_posix(), it.patient_id) for it in ix.items} \
        == set(rows)
    assert ix.labels.tolist() == [0, 0, 1, 1]
    (tmp_path / "normal" / "README.txt").unlink()
    ordered = DatasetIndex.from_folder(tmp_path, classes=("normal", "cyst", "hcc"))
    assert ordered.labels.tolist() == [1, 1, 0, 0] and ordered.class_counts()["hcc"] == 0
    with pytest.raises(DataError, match="not in the task"):
        DatasetIndex.from_folder(tmp_path, classes=("normal", "hcc"))
    (tmp_path / "patients.csv").write_text("path,patient_id\ncyst/a.png,P1\n")
    with pytest.warns(PatientLeakWarning, match="3 of 4"):
        index_from(tmp_path)


def test_index_from_manifest_and_bad_rows(tmp_path: Path) -> None:
    _folder_dataset(tmp_path)
    m = tmp_path / "m.csv"
    m.write_text("path,label,patient_id,start,stop\ncyst/a.png,cyst,P1,,\n"
                 "normal/cine.dcm,normal,P2,1,3\nnormal/cine.dcm,normal,P2,0,2\n")
    ix = index_from(m)
    assert [it.frames for it in ix.items] == [None, (1, 3), (0, 2)]
    assert ix.groups.tolist() == ["P1", "P2", "P2"] and ix.root == tmp_path
    bad = {"cyst/a.png,,P1,,": "line 2: missing label",
           "cyst/zzz.png,cyst,P1,,": "line 2: no such file 'cyst/zzz.png'",
           "normal/cine.dcm,normal,P2,3,1": "line 2: bad frame range",
           "normal/cine.dcm,normal,P2,a,4": "line 2: bad frame range",
           "normal/cine.dcm,normal,P2,1,": "line 2: bad frame range"}
    for row, msg in bad.items():
        m.write_text("path,label,patient_id,start,stop\n" + row + "\n")
        with pytest.raises(DataError, match=msg):
            index_from(m)
    m.write_text("file,label\ncyst/a.png,cyst\n")
    with pytest.raises(DataError, match="no 'path' column"):
        index_from(m)
    m.write_text("path,label\ncyst/a.png,cyst\nnormal/cine.dcm,normal\n")
    with pytest.warns(PatientLeakWarning):
        assert index_from(m).groups.tolist() == ["", ""]


# -- tasks and phantom sets -------------------------------------------------------------
def test_task_presets_are_consistent() -> None:
    assert list_tasks() == ["fll5", "fll5-s0", "hcc", "steatosis4", "sol2"]
    for name in list_tasks():
        t = get_task(name)
        grades = {r.fatty_grades for r in t.recipes.values()}
        if any("fatty_sparing" in r.lesions for r in t.recipes.values()):
            assert grades == {(1, 2, 3)}, name  # fat says nothing about the class
    assert get_task("fll5-s0").recipe("fatty_liver").lesions == ("normal",)
    with pytest.raises(ConfigError, match="unknown task"):
        get_task("nope")
    custom = task_from_classes(["b", "a"])
    assert custom.classes == ("b", "a") and not custom.has_phantom
    with pytest.raises(ConfigError, match="user-defined"):
        phantom_arrays(custom, patients_per_class=1, samples_per_patient=1, kinds={"image"})


@pytest.mark.parametrize("name", ["fll5", "fll5-s0", "hcc", "steatosis4", "sol2"])
def test_every_task_generates_phantom_arrays(name: str) -> None:
    task = get_task(name)
    a = phantom_arrays(task, patients_per_class=2, samples_per_patient=1, kinds={"bimodal"},
                       bmode_size=(24, 24), ceus_size=(16, 16), window=ClipWindow(2, 1.0),
                       workers=1)
    n = 2 * len(task.classes)
    assert a.bmode is not None and a.bmode.shape == (n, 1, 24, 24)
    assert a.ceus is not None and a.ceus.shape == (n, 2, 1, 16, 16)
    assert a.bmode.dtype == np.float16 and a.supports("bimodal")
    assert a.classes == task.classes and a.class_counts() == dict.fromkeys(task.classes, 2)
    assert len(set(a.groups.tolist())) == n and a.has_patients
    assert a.window == ClipWindow(2, 1.0).to_dict() and set(a.preprocess) == {"bmode", "ceus"}
    for p in range(n):
        plan = patient_plan(task, 0, p)
        recipe = task.recipe(task.classes[int(a.labels[p])])
        case = make_case(plan["case_seed"], lesion=plan["lesion"],
                         fatty_grade=plan["fatty_grade"])
        assert case.label in recipe.lesions and case.fatty_grade in recipe.fatty_grades
        assert (case.label, case.fatty_grade) == (a.source["lesion"][p],
                                                  a.source["fatty_grade"][p])
        assert plan["patient_id"] == a.groups[p] and plan["case_seed"] >= 2_000_000_000


def test_phantom_arrays_cache_and_workers(tmp_path: Path) -> None:
    kw = {"patients_per_class": 1, "samples_per_patient": 2, "kinds": {"image"},
          "bmode_size": (16, 16), "seed": 3}
    a = phantom_arrays("hcc", workers=2, cache_dir=tmp_path, **kw)
    assert a.ceus is None and a.window is None and len(a) == 4
    assert len(list(tmp_path.glob("task-hcc-*.npz"))) == 1
    b = phantom_arrays("hcc", workers=1, **kw)
    c = phantom_arrays("hcc", workers=1, cache_dir=tmp_path, **kw)
    assert a.bmode is not None and b.bmode is not None and c.bmode is not None
    assert np.array_equal(a.bmode, b.bmode) and np.array_equal(a.bmode, c.bmode)
    assert c.source == a.source and not np.array_equal(a.bmode[0], a.bmode[1])
    with pytest.raises(ConfigError, match="ceus"):
        phantom_arrays("hcc", kinds={"clip"}, patients_per_class=1, samples_per_patient=1,
                       config=load_packaged_config("single_view"))


# -- folder sets ------------------------------------------------------------------------
def test_window_indices() -> None:
    p = Path("x")
    uni = window_indices(10, FolderWindow(4), 2, True, p)
    assert [w.tolist() for w in uni] == [[0, 1, 3, 4], [5, 6, 8, 9]]
    iv = window_indices(10, FolderWindow(3, 2), 2, True, p)
    assert [w.tolist() for w in iv] == [[0, 2, 4], [5, 7, 9]]
    assert window_indices(3, FolderWindow(3, 2), 4, True, p)[0].tolist() == [0, 2, 2]
    with pytest.raises(DataError, match="needs 5"):
        window_indices(3, FolderWindow(3, 2), 1, False, p)
    assert window_indices(2, FolderWindow(4), 1, True, p)[0].tolist() == [0, 1, 1, 1]


def test_folder_arrays_equal_direct_preprocessing(tmp_path: Path) -> None:
    single = load_packaged_config("single_view")
    for c, sizes in (("a", [(50, 70), (64, 64, 3)]), ("b", [(90, 40)])):
        (tmp_path / c).mkdir()
        for k, shape in enumerate(sizes):  # whole frames of any size
            write_image(tmp_path / c / f"{k}.png", _noise(70 + k + len(c), shape))
    with pytest.warns(PatientLeakWarning):
        ix = index_from(tmp_path)
    a = folder_arrays(ix, config=single, kinds={"image"}, bmode_size=(32, 32), channels=3)
    spec = PreprocessSpec(single.layout, single.preprocess, (32, 32), 3, ("bmode",))
    assert a.bmode is not None and a.bmode.shape == (3, 3, 32, 32) and a.ceus is None
    for it, got in zip(ix.items, a.bmode, strict=True):
        ref = preprocess_view(read_image(it.path), spec, "bmode").astype(np.float16)
        assert np.array_equal(got, ref)
    assert a.labels.tolist() == [0, 0, 1] and a.preprocess == {"bmode": spec.to_dict()}
    with pytest.raises(DataError, match="'ceus' view"):
        folder_arrays(ix, config=single, kinds={"clip"})


def test_folder_clips_windows_match_direct_preprocessing(tmp_path: Path) -> None:
    cfg = load_config()  # the dual-view layout: B-mode left, CEUS right of 768x384
    frames = [_noise(80 + k, (384, 768, 3)) for k in range(7)]
    (tmp_path / "hcc").mkdir()
    write_clip(tmp_path / "hcc" / "c.mkv", frames, fps=1.0)
    (tmp_path / "m.csv").write_text("path,label,patient_id,start,stop\n"
                                    "hcc/c.mkv,hcc,P1,1,7\nhcc/c.mkv,hcc,P2,,\n")
    ix = index_from(tmp_path / "m.csv", classes=("non_hcc", "hcc"))
    a = folder_arrays(ix, config=cfg, kinds={"bimodal"}, bmode_size=(24, 24),
                      ceus_size=(16, 16), window=FolderWindow(3, 2), windows_per_clip=2)
    assert a.ceus is not None and a.bmode is not None and a.ceus.shape == (4, 3, 1, 16, 16)
    sb = PreprocessSpec(cfg.layout, cfg.preprocess, (24, 24), 1, ("bmode",))
    sc = PreprocessSpec(cfg.layout, cfg.preprocess, (16, 16), 1, ("ceus",))
    # item 1 is frames 1..6 (6 frames): windows end at 4 and 5 -> source frames 5, 6
    expect = [[1, 3, 5], [2, 4, 6], [0, 2, 4], [2, 4, 6]]
    for s, idx in enumerate(expect):
        ref = np.stack([preprocess_view(frames[i], sc, "ceus") for i in idx])
        assert np.array_equal(a.ceus[s], ref.astype(np.float16))
        assert np.array_equal(a.bmode[s], preprocess_view(frames[idx[-1]], sb, "bmode")
                              .astype(np.float16))
    assert a.labels.tolist() == [1] * 4 and a.groups.tolist() == ["P1", "P1", "P2", "P2"]
    assert a.window == {"frames": 3, "interval_frames": 2, "interval_s": None}
    with pytest.raises(DataError, match="needs 13"):
        folder_arrays(ix, config=cfg, kinds={"clip"}, window=FolderWindow(3, 6),
                      pad_short=False)


def test_phantom_dataset_cli_round_trip(tmp_path: Path) -> None:
    from hepascope.cli import main

    out = tmp_path / "ds"
    assert main(["phantom", "dataset", "--task", "steatosis4", "--out", str(out),
                 "--patients-per-class", "1", "--images-per-patient", "1",
                 "--clips-per-patient", "1", "--clip-frames", "3", "--workers", "1"]) == 0
    with warnings.catch_warnings():
        warnings.simplefilter("error", PatientLeakWarning)
        ix = index_from(out, classes=get_task("steatosis4").classes)
        clips = index_from(out / "clips.csv", classes=ix.classes)
    assert len(ix) == 8 and ix.class_counts() == dict.fromkeys(ix.classes, 2)
    assert all(is_clip(it.path) and clip_length(it.path) == 3 for it in clips.items)
    a = folder_arrays(clips, config=load_config(), kinds={"clip"}, ceus_size=(16, 16),
                      window=FolderWindow(3, 1))
    assert a.ceus is not None and a.ceus.shape == (4, 3, 1, 16, 16)
    assert len(set(a.groups.tolist())) == 4


# -- whole-frame views ------------------------------------------------------------------
def test_full_view_config_round_trip() -> None:
    cfg = load_packaged_config("single_view")
    rect = cfg.layout.rect("bmode")
    assert rect == Rect.full() and rect.is_full and cfg.layout.sector is None
    img = _noise(90, (33, 47))
    assert rect.crop(img) is img
    spec = PreprocessSpec(cfg.layout, cfg.preprocess, (16, 16))
    d = spec.to_dict()
    assert d["views"] == {"bmode": "full"} and spec_from_dict(d).to_dict() == d
    sector = {"apex_x": 8, "apex_y": 0, "r_min": 1, "r_max": 10, "half_angle_deg": 30}
    with pytest.raises(ConfigError, match="full"):
        config_from_dict({"version": 1, "layout": {"views": {"b": "full"}, "sector": sector}})
    for bad in ([0, 0, 0, 0], "whole", [1, 2, 3]):
        with pytest.raises(ConfigError):
            config_from_dict({"version": 1, "layout": {"views": {"b": bad}}})
    mixed = config_from_dict({"version": 1, "layout": {"views": {"b": "full",
                                                                 "c": [0, 0, 8, 8]}}})
    assert mixed.layout.rect("c") == Rect(0, 0, 8, 8)
    with pytest.raises(ConfigError, match="nor a packaged config"):
        load_packaged_config("nope")
