"""Face features (train/faces.py): the pure box->feature map, and the real offline detector."""
from __future__ import annotations

import importlib.util
import math
import pickle
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from train.faces import DEFAULT_CLASSES, FaceDetector, face_features, feature_names

W, H = 200, 100


def _feats(boxes, confs, names, extra=()):
    return face_features(np.array(boxes, dtype=float).reshape(-1, 4), np.array(confs), names, W, H,
                         DEFAULT_CLASSES, extra)


# ---------------------------------------------------------------- pure face_features


def test_no_boxes_gives_zeros():
    f = _feats([], [], [], extra=("FEET_EXPOSED",))
    assert f.dtype == np.float32 and f.shape == (5,)
    assert not f.any()


def test_one_quarter_face():
    f = _feats([[0, 0, 100, 50]], [0.8], ["FACE_MALE"])
    np.testing.assert_allclose(f, [math.log1p(1), 0.25, 0.25, 0.8], rtol=1e-6)


def test_two_faces_sum_max_and_clip():
    f = _feats([[0, 0, 100, 50], [100, 50, 150, 100]], [0.4, 0.9], ["FACE_MALE", "FACE_FEMALE"])
    np.testing.assert_allclose(f, [math.log1p(2), 0.25, 0.375, 0.9], rtol=1e-6)
    # Two distinct faces that each cover 75% of the frame: the total saturates at 1.
    # Three distinct (IoU < 0.5) faces of 40% each: the total saturates at 1.
    big = _feats([[0, 0, 80, 100], [60, 0, 140, 100], [120, 0, 200, 100]], [0.5, 0.6, 0.2], ["FACE_MALE"] * 3)
    np.testing.assert_allclose(big, [math.log1p(3), 0.4, 1.0, 0.6], rtol=1e-6)


def test_male_and_female_box_on_one_face_count_once():
    f = _feats([[10, 10, 60, 60], [11, 10, 60, 61]], [0.6, 0.3], ["FACE_MALE", "FACE_FEMALE"])
    assert f[0] == pytest.approx(math.log1p(1)) and f[3] == pytest.approx(0.6)


def test_non_face_classes_only_count_as_extras():
    boxes, confs = [[0, 0, 200, 100], [0, 0, 10, 10], [5, 5, 20, 20]], [0.7, 0.2, 0.5]
    names = ["FEET_EXPOSED", "FEET_EXPOSED", "FACE_FEMALE"]
    plain = _feats(boxes, confs, names)
    np.testing.assert_allclose(plain, [math.log1p(1), 225 / (W * H), 225 / (W * H), 0.5], rtol=1e-6)
    extra = _feats(boxes, confs, names, extra=("FEET_EXPOSED", "BELLY_EXPOSED", "FACE_FEMALE"))
    np.testing.assert_allclose(extra, [*plain, 0.7, 0.0, 0.5], rtol=1e-6)


def test_boxes_clipped_to_the_frame():
    f = _feats([[-100, -100, 100, 50]], [0.5], ["FACE_MALE"])
    assert f[1] == pytest.approx(0.25)


def test_mismatched_lengths_rejected():
    with pytest.raises(ValueError):
        face_features(np.zeros((2, 4)), np.zeros(1), ["FACE_MALE"] * 2, W, H)


def test_feature_names():
    assert feature_names() == ["face_count", "face_area_max", "face_area_total", "face_conf_max"]
    assert feature_names(("FEET_EXPOSED",))[-1] == "det_FEET_EXPOSED_conf"


# ---------------------------------------------------------------- real detector (nudenet 320n.onnx)


def _asset(name: str) -> np.ndarray:
    """An RGB photo shipped inside the ultralytics wheel (real people, real faces)."""
    from PIL import Image

    path = Path(next(iter(importlib.util.find_spec("ultralytics").submodule_search_locations))) / "assets" / name
    if not path.is_file():
        pytest.skip(f"ultralytics no longer ships {name}")
    return np.asarray(Image.open(path).convert("RGB"))


def _synthetic() -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [
        rng.integers(0, 256, (448, 448, 3), dtype=np.uint8),
        rng.integers(0, 256, (240, 500, 3), dtype=np.uint8),
        np.full((300, 200, 3), (200, 30, 30), dtype=np.uint8),
        np.zeros((64, 64, 3), dtype=np.uint8),
    ]


@pytest.fixture(scope="module")
def detector():
    return FaceDetector()


@pytest.mark.slow
def test_detector_shape_range_determinism(detector):
    assert set(DEFAULT_CLASSES) <= set(detector.names) and len(detector.names) == 18
    assert detector.dim == len(feature_names()) == 4
    a, b = detector.features(_synthetic()), detector.features(_synthetic())
    assert a.shape == (4, detector.dim) and a.dtype == np.float32
    assert np.isfinite(a).all() and (a >= 0).all() and (a[:, 1:] <= 1).all()
    np.testing.assert_array_equal(a, b)
    assert detector.features([]).shape == (0, 4)


@pytest.mark.slow
def test_detector_finds_the_face_in_a_real_photo(detector):
    # Right half of zidane.jpg: one man's face (~155x165 px). The model reports it as FACE_MALE and,
    # on the same box, FACE_FEMALE; the merge must count it once.
    photo = _asset("zidane.jpg")[:, 640:]
    f = detector.features([photo, _synthetic()[2]])
    assert f[0, 0] == pytest.approx(math.log1p(1))
    assert 0.02 < f[0, 1] < 0.15 and f[0, 1] == f[0, 2]
    assert f[0, 3] > 0.4
    assert not f[1].any()  # a flat colour has no face


@pytest.mark.slow
def test_extra_classes_reflect_raw_detections(detector):
    """Every det_<c>_conf equals the best raw box of class c, whatever the model fires on."""
    photos = [_asset("bus.jpg")[300:800, :350], _asset("zidane.jpg")[:, 640:]]
    names = detector.names
    full = FaceDetector(extra_classes=names, conf=0.1)
    f = full.features(photos)
    assert f.shape == (2, 4 + len(names))
    raw = full._model.predict([np.ascontiguousarray(p[..., ::-1]) for p in photos], conf=0.1, imgsz=320,
                              verbose=False)
    fired = 0
    for row, res in zip(f, raw):
        for k, name in enumerate(names):
            confs = [float(c) for c, i in zip(res.boxes.conf, res.boxes.cls) if names[int(i)] == name]
            assert row[4 + k] == pytest.approx(max(confs, default=0.0))
            fired += bool(confs)
    assert fired > 0  # both photos contain people, something must fire at conf 0.1


@pytest.mark.slow
def test_unknown_class_lists_available_names():
    with pytest.raises(ValueError, match="FACE_FEMALE") as err:
        FaceDetector(extra_classes=("CAT",))
    assert "CAT" in str(err.value)


@pytest.mark.slow
def test_missing_weights_never_download(tmp_path):
    with pytest.raises(FileNotFoundError):
        FaceDetector(weights=tmp_path / "yolov8n.pt")


@pytest.mark.slow
def test_pickle_reloads_and_hash_tracks_settings(detector):
    clone = pickle.loads(pickle.dumps(detector))
    assert clone.hash == detector.hash and clone is not detector
    np.testing.assert_array_equal(clone.features(_synthetic()[:2]), detector.features(_synthetic()[:2]))
    assert FaceDetector(conf=0.5).hash != detector.hash


@pytest.mark.slow
def test_no_network_in_process(monkeypatch, detector):
    import socket

    def refuse(*args, **kwargs):
        raise OSError("network disabled by test")

    def no_install(args, *rest, **kwargs):
        if "install" in str(args):
            raise OSError(f"package install attempted: {args}")
        return popen(args, *rest, **kwargs)

    popen = subprocess.Popen
    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setattr(subprocess, "Popen", no_install)
    fresh = FaceDetector(extra_classes=("FEET_EXPOSED",))
    assert fresh.features(_synthetic()[:2]).shape == (2, 5)


@pytest.mark.slow
def test_a_corrupt_image_stays_a_bad_image_after_the_detector_loads(tmp_path, detector):
    """Ultralytics wraps PIL.Image.open process-wide (an unreadable file -> pi-heif install attempt ->
    ModuleNotFoundError offline); every other reader in the process must still get Pillow's error."""
    import PIL.Image

    junk = tmp_path / "upload.jpg"
    junk.write_bytes(b"this is not an image" * 10)
    for _ in range(2):  # the first detector of the process, then one built after Ultralytics is imported
        with pytest.raises(PIL.UnidentifiedImageError):
            PIL.Image.open(junk)
        FaceDetector()


@pytest.mark.slow
def test_no_network_fresh_process(tmp_path):
    """From a clean interpreter, as in a fresh Ray worker.

    Ultralytics probes DNS at import unless told it is offline, and onnxruntime's C++ telemetry
    (invisible to a Python socket patch) leaves ~/.cache/Microsoft behind when it is on.
    """
    script = textwrap.dedent("""
        import socket, subprocess
        def refuse(*a, **k):
            raise SystemExit(f"network attempted: {a}")
        def no_install(args, *rest, _popen=subprocess.Popen, **kw):
            if "install" in str(args):  # torch's import legitimately runs ldconfig
                raise SystemExit(f"package install attempted: {args}")
            return _popen(args, *rest, **kw)
        socket.socket.connect = socket.getaddrinfo = refuse
        subprocess.Popen = no_install
        import numpy as np
        from train.faces import FaceDetector
        f = FaceDetector().features([np.zeros((100, 120, 3), np.uint8)])
        import io, PIL.Image
        try:
            PIL.Image.open(io.BytesIO(b"not an image"))
        except PIL.UnidentifiedImageError:
            print("OK", f.shape)
    """)
    env = {"HOME": str(tmp_path), "PATH": "/usr/bin:/bin", "PYTHONPATH": str(Path(__file__).parents[2])}
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "OK (1, 4)" in out.stdout
    assert not (tmp_path / ".config" / "Ultralytics").exists()  # settings went to the temp config dir
    assert not (tmp_path / ".cache" / "Microsoft").exists()  # ORT telemetry stayed off


@pytest.mark.slow
def test_onnx_session_follows_torch_threads_without_spinning():
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        det = FaceDetector()
        first = det.features(_synthetic())  # ORT's default session, then swapped
        session = det._model.predictor.model.backend.session
        opts = session.get_session_options()
        assert det.onnx_threads == 1 and opts.intra_op_num_threads == 1
        assert opts.get_session_config_entry("session.intra_op.allow_spinning") == "0"
        # same model, same answers
        np.testing.assert_allclose(det.features(_synthetic()), first, atol=1e-5)
    finally:
        torch.set_num_threads(before)


def test_a_pickled_detector_that_would_run_code_is_refused(tmp_path):
    """A .pt detector is a pickle: the safe load (weights_only + Ultralytics' allow-list) refuses one
    whose unpickling would call os.system, and nothing runs. In a fresh process: the flag is read when
    ultralytics is first imported."""
    import subprocess
    import sys

    import torch

    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            import os
            return (os.system, (f"touch {marker}",))

    torch.save({"model": Evil()}, tmp_path / "evil.pt")
    code = f"from train.faces import FaceDetector; FaceDetector({str(tmp_path / 'evil.pt')!r})"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                       cwd=str(__import__("pathlib").Path(__file__).resolve().parents[2]))
    assert r.returncode != 0 and not marker.exists(), (r.returncode, r.stderr[-800:])
