"""The self-describing model artifact, and the one way to run it on images.

    ARTIFACT/sift_model.json   backbone id + config, preprocessing, classes, thresholds and the rule
                               that chose them (worst mistake or macro-F1), temperature,
                               face detector (file, hash, classes, conf), run id, metrics
    ARTIFACT/backbone/         the (possibly fine-tuned) backbone: an HF tower (save_pretrained format) or
                               a torchvision CNN (sift_backbone.json + weights.pt), see train/backbones.py
    ARTIFACT/head.pt           head weights
    ARTIFACT/faces/<weights>   the detector weights, copied so the artifact stands alone
    ARTIFACT/onnx/             model.onnx (backbone + head, fp32) and model.int8.onnx (dynamic INT8), with
                               their measured agreement in sift_model.json's "runtimes" (train/runtime)

Serving, batch prediction and ``sift classify`` all call :class:`SiftModel`, which prepares images
exactly as training did (``flows.media.images`` then ``train.transforms``) and writes nothing.
"""
from __future__ import annotations

import functools
import io
import json
import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from PIL import Image

from flows.media.images import open_image, resize_short

from . import runtime as runtimes
from .colour import ColourStats
from .decision import Decision
from .model import Classifier, Head, HeadOutput, load_backbone
from .transforms import Preproc, center_crop, five_crops, normalize, square, tile_edge, to_uint8_batch

META = "sift_model.json"


class Outputs(NamedTuple):
    """A batch's outputs in numpy: logits (N, C), score (N,) in the targets' units or None, tag
    probabilities (N, T) or None."""
    logits: np.ndarray
    score: np.ndarray | None
    tags: np.ndarray | None


def save(out: Path, model: Classifier, *, backbone_id: str, preproc: Preproc, short_edge: int,
         classes: list[str], thresholds: list[float], temperature: float, faces: dict | None,
         run_id: str = "", metrics: dict | None = None, hidden: int, dropout: float,
         decision: dict | None = None, score_range: tuple[float, float] | None = None,
         tags: list[str] = (), tag_thresholds: list[float] = (), zero_shot: dict | None = None) -> Path:
    """Write the artifact directory (replacing ``out``)."""
    out = Path(out)
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    model.backbone.save(out / "backbone")
    torch.save(model.head.state_dict(), out / "head.pt")
    face_meta = None
    if faces:
        src = Path(faces["weights"])
        (out / "faces").mkdir()
        shutil.copy2(src, out / "faces" / src.name)
        face_meta = {**faces, "weights": f"faces/{src.name}"}
    meta = {
        "format": 1, "backbone_id": backbone_id, "backbone_config": model.backbone.config_dict(),
        "preprocessing": {**preproc.to_dict(), "short_edge": short_edge},
        "classes": list(classes), "thresholds": [float(t) for t in thresholds],
        "decision": decision or {"rule": "argmax"},
        "temperature": float(temperature), "faces": face_meta, "n_face": model.n_face,
        "colour_stats": model.stats is not None,
        "hidden": hidden, "dropout": dropout, "score_head": model.head.score is not None,
        "score_range": list(score_range) if score_range else None,
        "tags": list(tags), "tag_thresholds": [float(t) for t in tag_thresholds],
        "zero_shot": zero_shot,  # {prompts, scale}: the head holds the prompt embeddings
        "run_id": run_id, "metrics": metrics or {},
    }
    (out / META).write_text(json.dumps(meta, indent=2, default=float))
    return out


class SiftModel:
    """A loaded artifact: images in, calibrated probabilities and thresholded labels out."""

    def __init__(self, path: str | Path, device: str = "cpu", workers: int | None = None,
                 runtime: str = "auto", min_agreement: float | None = None):
        """``workers``: CPU forward workers (default: torch's thread count on CPU, 1 on a GPU); see
        :meth:`forward`. ``runtime``: auto | torch | onnx | onnx-int8 (``train.runtime.choose``:
        auto is INT8 ONNX on a CPU when the export's recorded agreement passes ``min_agreement``)."""
        self.path = Path(path)
        self.meta = json.loads((self.path / META).read_text())
        self.classes = self.meta["classes"]
        # the operating point (train/decision.py); :meth:`operating_point` moves it without retraining
        self.decision = Decision.from_meta(self.classes, self.meta["thresholds"], self.meta.get("decision"))
        self.temperature = float(self.meta["temperature"])
        pp = self.meta["preprocessing"]
        self.preproc, self.short_edge = Preproc.from_dict(pp), int(pp["short_edge"])
        # five-crop tiling starts from a larger decode than the stored short edge (never upscaled)
        self.tile_edge = max(self.short_edge, tile_edge(self.preproc.size))
        # a score head's output in [0, 1] maps back to the training targets' range
        self.score_range = tuple(self.meta.get("score_range") or (0.0, 1.0)) if self.meta["score_head"] else None
        self.tags = list(self.meta.get("tags") or [])
        self.tag_thresholds = np.asarray(self.meta.get("tag_thresholds") or [0.5] * len(self.tags), np.float64)
        self.device = device
        self.workers = max(1, workers or (torch.get_num_threads() if device == "cpu" else 1))
        self.runtime, self.runtime_reason = runtimes.choose(self.meta.get("runtimes"), runtime, device, min_agreement)
        self.graph, self.pool = None, None
        if self.runtime != "torch":
            from .runtime.session import OrtGraph

            # ONNX Runtime's own intra-op pool takes the worker budget (spin-wait off when shared)
            self.graph = OrtGraph(self.path / self.meta["runtimes"][self.runtime]["file"], threads=self.workers)
        else:
            _ = self.model  # loaded now, not on the first request
            if self.workers > 1:
                # each worker thread runs torch single-threaded: the thread count is per thread once set
                self.pool = ThreadPoolExecutor(self.workers, initializer=torch.set_num_threads, initargs=(1,),
                                               thread_name_prefix="sift-forward")
        self.detector = None
        faces = self.meta.get("faces")
        if faces:
            from .faces import FaceDetector

            self.detector = FaceDetector(weights=self.path / faces["weights"], face_classes=faces["face_classes"],
                                         extra_classes=faces.get("extra_classes", ()), conf=faces["conf"])

    @functools.cached_property
    def model(self) -> Classifier:
        """The torch Classifier, in eval mode on ``device``: loaded when the runtime is torch, and
        on first use otherwise (an ONNX runtime never needs it)."""
        backbone, _ = load_backbone(str(self.path / "backbone"))  # the preprocessing is the artifact's
        zs = self.meta.get("zero_shot")  # the buffer's shape, filled by head.pt
        model = Classifier(backbone, len(self.classes), self.meta["n_face"], self.meta["hidden"],
                           self.meta["dropout"], self.meta["score_head"], len(self.tags),
                           torch.zeros(len(self.classes), backbone.dim) if zs else None,
                           zs["scale"] if zs else 1.0,
                           stats=ColourStats(self.preproc.mean, self.preproc.std) if self.meta.get("colour_stats") else None)
        model.head.load_state_dict(torch.load(self.path / "head.pt", map_location="cpu", weights_only=True))
        return model.to(self.device).eval()

    @property
    def thresholds(self) -> np.ndarray:
        """(C,) the per-class thresholds of the current operating point."""
        return np.asarray(self.decision.thresholds, dtype=np.float64)

    @property
    def positive(self) -> int | None:
        """The worst-mistake class (its flags outrank other labels in a video), None without one."""
        return self.decision.positive

    def operating_point(self, thresholds: dict | None = None, max_rate: float | None = None,
                        fallback: str | None = None) -> "SiftModel":
        """Move the operating point in place (``Decision.override``): ``max_rate`` re-reads the
        positive's threshold off the validation curve the artifact carries, ``thresholds`` {class: t}
        sets them directly, ``fallback`` a class or "none". Nothing is written. ValueError when wrong."""
        self.decision = self.decision.override(self.classes, thresholds=thresholds, max_rate=max_rate,
                                               fallback=fallback)
        return self

    def decide(self, probs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Calibrated probs (N, C) -> (labels (N,) int, uncertain (N,) bool) by the operating point."""
        labels, sure = self.decision.labels(probs)
        return labels, ~sure

    # -- preparation: the same steps as preprocessing + training --------------------------------
    def input_edge(self, tiles: int = 1) -> int:
        """Short edge an input is prepared at: the stored one, or the tiling decode for 5 tiles."""
        return self.tile_edge if tiles == 5 else self.short_edge

    def prepare(self, item, max_pixels: int = 50_000_000, tiles: int = 1) -> Image.Image:
        """bytes / PIL image / (H,W,3) uint8 -> RGB image resized like a preprocessed item (at
        :meth:`input_edge` for tiling)."""
        edge = self.input_edge(tiles)
        if isinstance(item, (bytes, bytearray)):
            img = open_image(bytes(item), max_pixels=max_pixels, short_edge=edge)
        elif isinstance(item, np.ndarray):
            img = Image.fromarray(item)
        else:
            img = item.convert("RGB")
        return resize_short(img, edge)

    def logits(self, images: list[Image.Image], tiles: int = 1, tile_agg: str = "mean") -> np.ndarray:
        """Prepared RGB images -> raw logits (N, C); ``tiles=5`` averages (or maxes) five crops."""
        return self.outputs(images, tiles, tile_agg)[0]

    @torch.no_grad()
    def outputs(self, images: list[Image.Image], tiles: int = 1, tile_agg: str = "mean") -> Outputs:
        """Prepared RGB images -> Outputs(raw logits (N, C), score (N,) in the training targets' units
        or None without a score head, tag probabilities (N, T) or None without tags). Five tiles:
        logits averaged (or maxed), scores averaged, tag probabilities maxed (a tag seen in any tile)."""
        if not images:
            return Outputs(np.zeros((0, len(self.classes)), np.float32),
                           np.zeros(0) if self.score_range else None,
                           np.zeros((0, len(self.tags))) if self.tags else None)
        x, face = self.model_inputs(images, tiles)
        raw = self.forward(x, face)
        out = raw.logits.float().cpu().numpy()
        score = raw.score.float().cpu().numpy().astype(np.float64) if raw.score is not None else None
        tags = torch.sigmoid(raw.tags).float().cpu().numpy().astype(np.float64) if raw.tags is not None else None
        if tiles == 5:
            out = out.reshape(len(images), 5, -1)
            out = out.max(axis=1) if tile_agg == "max" else out.mean(axis=1)
            score = score.reshape(len(images), 5).mean(axis=1) if score is not None else None
            tags = tags.reshape(len(images), 5, -1).max(axis=1) if tags is not None else None
        if score is not None:
            lo, hi = self.score_range or (0.0, 1.0)
            score = lo + score * (hi - lo)
        return Outputs(out, score, tags)

    def model_inputs(self, images: list[Image.Image], tiles: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
        """Prepared RGB images -> the graph's inputs: normalised pixels (N or 5N, 3, S, S) float32 and
        face features (N or 5N, F) float32, on ``device``."""
        face = self._faces(images)
        if tiles == 5:
            sq = np.concatenate([five_crops(im, self.preproc.size) for im in images])
            face = np.repeat(face, 5, axis=0)
        else:
            sq = np.stack([square(im, self.preproc.size, self.preproc.fit) for im in images])
        x = normalize(center_crop(to_uint8_batch(sq), self.preproc.crop), self.preproc).to(self.device)
        return x, torch.from_numpy(face).to(self.device)

    def tag_lists(self, tag_probs: np.ndarray | None) -> list[list[str]]:
        """(N, T) tag probabilities -> per item the tags at or above their thresholds."""
        if tag_probs is None:
            return []
        on = tag_probs >= self.tag_thresholds
        return [[t for t, hit in zip(self.tags, row) if hit] for row in on]

    def forward(self, x: torch.Tensor, face: torch.Tensor) -> HeadOutput:
        """Model input (N,3,S,S) + face features (N,F) -> HeadOutput (logits (N,C), score (N,) in
        [0, 1] or None, tag logits (N,T) or None), no gradients.

        On CPU with several ``workers`` the batch runs as chunks, each on a single-threaded worker,
        instead of one forward with torch's intra-op threads. Why: intra-op parallelism splits every
        op across the threads and waits for the slowest at its end, a hundred times per ViT forward.
        When another process takes a core for a moment (Serve's proxy and preprocessing, ffmpeg in
        a scan), every one of those ops waits for the descheduled thread. Chunks sync once per
        batch, and with two chunks per worker one that gets its core back takes the spare. Measured
        on 2 cores, ViT-B/32, batch 32, next to a process using half a core: 2.40 s -> 1.83 s per
        batch; alone it is the same (1.43-1.47 s both ways).

        With an ONNX runtime the batch is one call of the exported graph (its own pool of
        ``workers`` threads, see ``train.runtime.session``).
        """
        if self.graph is not None:
            out = self.graph(x.cpu().numpy(), face.cpu().numpy())
            get = lambda k: torch.from_numpy(out[k]) if k in out else None  # noqa: E731
            return HeadOutput(get("logits"), get("score"), get("tags"))
        if self.pool is None or len(x) < 2:
            with torch.no_grad():
                return self.model(pixels=x, face=face)

        def run(part: tuple[torch.Tensor, torch.Tensor]):
            with torch.no_grad():  # grad mode is per thread
                return self.model(pixels=part[0], face=part[1])

        n = min(len(x), 2 * self.workers)
        parts = list(self.pool.map(run, zip(x.tensor_split(n), face.tensor_split(n))))
        return HeadOutput(*(torch.cat(f) if f[0] is not None else None for f in zip(*parts)))

    def _faces(self, images: list[Image.Image]) -> np.ndarray:
        if self.detector is None:
            return np.zeros((len(images), self.meta["n_face"]), np.float32)
        return self.detector.features([np.asarray(im) for im in images]).astype(np.float32)

    def probs(self, logits: np.ndarray) -> np.ndarray:
        z = logits / self.temperature
        z = z - z.max(axis=1, keepdims=True)
        e = np.exp(z)
        return e / e.sum(axis=1, keepdims=True)

    def predict(self, items: list, tiles: int = 1, tile_agg: str = "mean") -> list[dict]:
        """Items (bytes, PIL or arrays) -> per item ``{label, uncertain, probs{class: p}}`` (+ ``score``
        with a score head, ``tags`` / ``tag_probs`` with a tag head); ``uncertain``: no class reached
        its threshold (the label is then the fallback class)."""
        o = self.outputs([self.prepare(i, tiles=tiles) for i in items], tiles, tile_agg)
        p = self.probs(o.logits)
        pred, unsure = self.decide(p) if len(p) else ([], [])
        out = [{"label": self.classes[int(k)], "uncertain": bool(u), "probs": dict(zip(self.classes, map(float, row)))}
               for k, u, row in zip(pred, unsure, p)]
        self.add_heads(out, o)
        return out

    def add_heads(self, results: list[dict], o: "Outputs") -> list[dict]:
        """Put the score head's ``score`` and the tag head's ``tags`` / ``tag_probs`` on each result."""
        for r, s in zip(results, o.score if o.score is not None else []):
            r["score"] = float(s)
        for r, row, on in zip(results, o.tags if o.tags is not None else [], self.tag_lists(o.tags)):
            r["tags"], r["tag_probs"] = on, dict(zip(self.tags, map(float, row)))
        return results


def jpeg_bytes(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=90)
    return buf.getvalue()


__all__ = ["save", "SiftModel", "Head", "META", "jpeg_bytes"]
