"""Face features for the classifier head, from a YOLO detector run fully offline.

The default detector is the YOLOv8n shipped inside the ``nudenet`` wheel (``320n.onnx``, 18 body-part
classes including FACE_FEMALE and FACE_MALE, input 320). Any Ultralytics detection weights (.pt, .onnx,
...) work as long as they name the requested classes.

Ultralytics is imported lazily, after :func:`configure_offline` has set its environment, so
importing this module has no side effects and never touches the network.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import sys
import tempfile
import warnings
from pathlib import Path

import numpy as np

DEFAULT_CLASSES = ("FACE_FEMALE", "FACE_MALE")
BASE_FEATURES = ("face_count", "face_area_max", "face_area_total", "face_conf_max")
MERGE_IOU = 0.5  # face boxes of different face classes overlapping this much are one face


def default_weights() -> Path:
    """Path of the YOLOv8n ``320n.onnx`` shipped in the nudenet wheel.

    Found with ``find_spec`` rather than an import: ``import nudenet`` pulls in cv2 and builds nothing
    we need.
    """
    spec = importlib.util.find_spec("nudenet")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("nudenet is not installed; pass explicit detector weights")
    path = Path(next(iter(spec.submodule_search_locations))) / "320n.onnx"
    if not path.is_file():
        raise FileNotFoundError(f"nudenet weights not found at {path}")
    return path


def weights_hash(path: str | Path) -> str:
    """First 16 hex chars of the sha256 of a weights file (or of every file under a weights directory)."""
    path = Path(path)
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    digest = hashlib.sha256()
    for file in files:
        with open(file, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()[:16]


def feature_names(extra_classes: tuple[str, ...] = ()) -> list[str]:
    """Names of the F features returned by :func:`face_features`, in order."""
    return [*BASE_FEATURES, *(f"det_{c}_conf" for c in extra_classes)]


def _merge_faces(boxes: np.ndarray, confs: np.ndarray, iou: float) -> np.ndarray:
    """Indices of the boxes kept by greedy NMS, best confidence first.

    Ultralytics runs NMS per class, and the nudenet model often emits FACE_MALE *and* FACE_FEMALE for
    the same face; without this merge every such face would be counted twice.
    """
    keep: list[int] = []
    for i in np.argsort(-confs, kind="stable"):
        if all(_iou(boxes[i], boxes[j]) < iou for j in keep):
            keep.append(int(i))
    return np.asarray(keep, dtype=np.int64)


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    """Intersection over union of two xyxy boxes."""
    w = min(a[2], b[2]) - max(a[0], b[0])
    h = min(a[3], b[3]) - max(a[1], b[1])
    inter = max(w, 0.0) * max(h, 0.0)
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return float(inter / union) if union > 0 else 0.0


def face_features(
    boxes_xyxy: np.ndarray,
    confs: np.ndarray,
    class_names: list[str],
    width: int,
    height: int,
    face_classes: tuple[str, ...] = DEFAULT_CLASSES,
    extra_classes: tuple[str, ...] = (),
) -> np.ndarray:
    """Map one image's detections to a (F,) float32 feature vector (F = 4 + len(extra_classes)).

    Args:
        boxes_xyxy: (N, 4) boxes in pixels of the original image.
        confs: (N,) confidences in [0, 1].
        class_names: (N,) class name of each box.
        width, height: original image size in pixels.

    Features, all in [0, 1] except the first:
        face_count: ``log1p(#faces)`` (0 for none, 0.69 for one, 1.1 for two ...), so crowds don't
            dominate the head's input scale. Overlapping boxes of different face classes are one face.
        face_area_max: largest face box area / image area.
        face_area_total: summed face areas / image area, clipped at 1.
        face_conf_max: best face confidence, 0 when there is no face.
        det_<c>_conf: best confidence of each extra class, 0 when absent.
    """
    boxes = np.asarray(boxes_xyxy, dtype=np.float64).reshape(-1, 4)
    confs = np.asarray(confs, dtype=np.float64).reshape(-1)
    names = list(class_names)
    if not len(boxes) == len(confs) == len(names):
        raise ValueError(f"got {len(boxes)} boxes, {len(confs)} confs, {len(names)} names")
    if width <= 0 or height <= 0:
        raise ValueError(f"image size must be positive, got {width}x{height}")
    # Clip to the frame so a box spilling over the border can't claim area outside the image.
    boxes = np.clip(boxes, 0, [width, height, width, height])

    out = np.zeros(len(BASE_FEATURES) + len(extra_classes), dtype=np.float32)
    is_face = np.array([n in face_classes for n in names], dtype=bool)
    if is_face.any():
        fb, fc = boxes[is_face], confs[is_face]
        keep = _merge_faces(fb, fc, MERGE_IOU)
        fb, fc = fb[keep], fc[keep]
        areas = np.clip(fb[:, 2] - fb[:, 0], 0, None) * np.clip(fb[:, 3] - fb[:, 1], 0, None)
        areas = areas / float(width * height)
        out[:4] = (np.log1p(len(fb)), areas.max(), min(areas.sum(), 1.0), fc.max())
    for k, cls in enumerate(extra_classes):
        hits = [c for c, n in zip(confs, names) if n == cls]
        out[len(BASE_FEATURES) + k] = max(hits, default=0.0)
    return out


def configure_offline(config_dir: str | Path | None = None) -> Path:
    """Forbid Ultralytics and ONNX Runtime any network access or package install; return the config dir.

    Only fully effective before the process first imports ultralytics and onnxruntime, so call it
    first thing in a worker (FaceDetector does, and imports both lazily after it):
    - ultralytics resolves ONLINE (a DNS probe unless YOLO_OFFLINE) and its settings file at import;
    - ultralytics reads ULTRALYTICS_SAFE_LOAD at import (a .pt detector is loaded weights-only);
    - onnxruntime (seen in 1.31 on Linux) reads ORT_DISABLE_TELEMETRY at import; without it, a session
      start resolves mobile.events.data.microsoft.com and writes ~/.cache/Microsoft/DeveloperTools.
    The config dir defaults to an existing YOLO_CONFIG_DIR, else a per-user temp dir, so ~/.config
    is never written.
    """
    cfg = config_dir or os.environ.get("YOLO_CONFIG_DIR")
    cfg = Path(cfg or Path(tempfile.gettempdir()) / f"sift-ultralytics-{os.getuid()}")
    os.environ["YOLO_CONFIG_DIR"] = str(cfg)
    os.environ["YOLO_OFFLINE"] = "1"  # is_online() -> False without any DNS lookup
    os.environ["YOLO_AUTOINSTALL"] = "0"  # never pip/uv install a missing package
    # a .pt detector is a pickle: load it with torch.load(weights_only=True) and Ultralytics' allow-list
    # of its own classes (safe load), so a crafted weights file cannot run code
    os.environ["ULTRALYTICS_SAFE_LOAD"] = "1"
    # Read at call time, so also covers a process that imported ultralytics earlier: the ONNX backend
    # otherwise asks for `onnx` (not installed, not needed for inference) and would try to install it.
    os.environ["ULTRALYTICS_SKIP_REQUIREMENTS_CHECKS"] = "1"
    ort_late = "onnxruntime" in sys.modules and os.environ.get("ORT_DISABLE_TELEMETRY") != "1"
    os.environ["ORT_DISABLE_TELEMETRY"] = "1"
    os.environ.setdefault("YOLO_VERBOSE", "False")
    if "ultralytics.utils.events" in sys.modules:  # imported before us: at least stop analytics posts
        sys.modules["ultralytics.utils.events"].events.enabled = False
    if ort_late:
        warnings.warn(
            "onnxruntime was imported before ORT_DISABLE_TELEMETRY=1 was set, so it will try to send "
            "telemetry; set the variable in the worker environment (e.g. Ray runtime_env env_vars).",
            RuntimeWarning,
            stacklevel=2,
        )
    return cfg


def _tame_onnx_session(model, weights: Path) -> int | None:
    """Rebuild an ONNX Runtime CPU session with torch's thread count and no spin-waiting.

    Ultralytics opens ONNX Runtime sessions with ORT's defaults: one intra-op thread per core, each
    spin-waiting after its work. In a Ray actor that has 1 of 2 cores (and a torch model beside it),
    those spinning threads compete with everything else in the process and on the node (measured in
    ``bench/scan.py``: ~38 ms CPU per 320x320 frame on 2 threads). Ultralytics creates the session
    lazily at the first predict and offers no options for it, so this swaps it once afterwards. Any
    other backend (``.pt``, CUDA) is left alone. Returns the new thread count, or None if untouched.
    """
    backend = getattr(getattr(getattr(model, "predictor", None), "model", None), "backend", None)
    session = getattr(backend, "session", None)
    if session is None or getattr(backend, "use_io_binding", False):
        return None
    try:
        import onnxruntime as ort
        import torch

        if session.get_providers() != ["CPUExecutionProvider"]:
            return None
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = max(1, torch.get_num_threads())
        opts.inter_op_num_threads = 1
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        path = getattr(session, "_model_path", None) or str(weights)
        backend.session = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
        return opts.intra_op_num_threads
    except Exception as e:  # an Ultralytics/ORT layout we do not know: keep the working session
        warnings.warn(f"face detector: ONNX Runtime session left at its defaults ({e})")
        return None


def _to_bgr(image: np.ndarray) -> np.ndarray:
    """HxWx3 uint8 RGB -> contiguous BGR, the layout Ultralytics assumes for numpy inputs."""
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"expected HxWx3 uint8 RGB, got shape {image.shape} dtype {image.dtype}")
    return np.ascontiguousarray(image[..., ::-1])


def _yolo():
    """Import and return ``ultralytics.YOLO``, leaving ``PIL.Image.open`` as Pillow made it.

    Importing Ultralytics replaces ``PIL.Image.open`` process-wide with a wrapper that, on a file
    Pillow cannot identify, tries to install and import ``pi-heif`` and raises ``ModuleNotFoundError``
    offline. Every other image read in the process (corpus checks, uploads, preprocessing) must see a
    corrupt file as ``PIL.UnidentifiedImageError``, a bad item, so the original is put back.
    """
    import PIL.Image

    original = PIL.Image.open
    from ultralytics import YOLO  # lazy: heavy, and must follow configure_offline()

    wrapper = getattr(sys.modules.get("ultralytics.utils.patches"), "image_open", None)
    if original is wrapper:  # imported earlier in this process: the wrapper kept Pillow's own
        original = sys.modules["ultralytics.utils.patches"]._image_open
    if PIL.Image.open is wrapper:
        PIL.Image.open = original
    return YOLO


class FaceDetector:
    """Batched face features from an Ultralytics detector, built once per process (e.g. per Ray actor).

    Pickling sends only the constructor arguments; unpickling reloads the model from ``weights``.
    """

    def __init__(
        self,
        weights: str | Path | None = None,
        face_classes: tuple[str, ...] = DEFAULT_CLASSES,
        extra_classes: tuple[str, ...] = (),
        conf: float = 0.25,
        imgsz: int = 320,
        device: str = "cpu",
    ):
        self.weights = Path(weights) if weights is not None else default_weights()
        # A missing path would make Ultralytics try to download a release asset of that name.
        if not self.weights.exists():
            raise FileNotFoundError(f"detector weights not found: {self.weights}")
        self.face_classes, self.extra_classes = tuple(face_classes), tuple(extra_classes)
        self.conf, self.imgsz, self.device = float(conf), int(imgsz), device
        configure_offline()
        self._model = _yolo()(str(self.weights), task="detect")
        self._id_to_name = {int(k): str(v) for k, v in self._model.names.items()}
        missing = [c for c in (*self.face_classes, *self.extra_classes) if c not in self.names]
        if missing:
            raise ValueError(f"classes {missing} not in {self.weights.name}; available: {list(self.names)}")
        self.weights_sha = weights_hash(self.weights)
        self._tuned, self.onnx_threads = False, None

    def __reduce__(self):
        args = (str(self.weights), self.face_classes, self.extra_classes, self.conf, self.imgsz, self.device)
        return (type(self), args)

    @property
    def names(self) -> tuple[str, ...]:
        """All class names of the model, in class-id order."""
        return tuple(self._id_to_name[k] for k in sorted(self._id_to_name))

    @property
    def dim(self) -> int:
        """F, the length of each feature row."""
        return len(feature_names(self.extra_classes))

    @property
    def hash(self) -> str:
        """16 hex chars identifying the features: weights content plus every setting that changes them."""
        key = repr((self.weights_sha, self.face_classes, self.extra_classes, self.conf, self.imgsz, MERGE_IOU))
        return hashlib.sha256(key.encode()).hexdigest()[:16]

    def features(self, images: list[np.ndarray]) -> np.ndarray:
        """(B, F) float32 features for B HxWx3 uint8 RGB images of any sizes, in one predict call."""
        if len(images) == 0:
            return np.zeros((0, self.dim), dtype=np.float32)
        bgr = [_to_bgr(im) for im in images]
        results = self._model.predict(
            bgr, conf=self.conf, imgsz=self.imgsz, device=self.device, batch=len(bgr), verbose=False
        )
        if not self._tuned:
            self._tuned = True
            self.onnx_threads = _tame_onnx_session(self._model, self.weights)
        return np.stack([self._row(r) for r in results])

    def _row(self, result) -> np.ndarray:
        """(F,) features of one Ultralytics ``Results``."""
        height, width = result.orig_shape
        boxes = result.boxes
        names = [self._id_to_name[int(c)] for c in boxes.cls.tolist()]
        return face_features(
            boxes.xyxy.cpu().numpy(), boxes.conf.cpu().numpy(), names, width, height,
            self.face_classes, self.extra_classes,
        )
