"""The serving core without Ray: resolve a model, validate input, classify images and videos.

The HTTP app (``serve/api/app.py``) and the local client (``sift classify`` without ``--server``) both
use this, so a request means the same thing whether it goes over HTTP or not.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from flows.core.config import ConfigError
from flows.core.errors import HttpError
from flows.media.images import open_image, resize_short
from flows.media.validate import Reject, check
from train.artifact import SiftModel
from serve.timeline import aggregate, segments, smooth, video_label

# reject reason -> HTTP status: 413 too big, 415 not a supported medium, 422 undecodable, 400 else
STATUS = {"empty": 400, "too_large": 413, "too_many_pixels": 413, "video_too_long": 413, "video_too_big": 413,
          "not_media": 415, "unsupported_format": 415, "decode_error": 422, "too_small": 422,
          "video_error": 422}


class ApiError(HttpError):
    """A request the API refuses: ``status`` (4xx/503), a machine ``code`` and a human ``message``."""

    @classmethod
    def raise_for(cls, res: dict) -> dict:
        """A Preprocess result: returned as is, or raised when it is an error dict
        (``{"status", "error": {"code", "message"}}``: errors cross the deployment boundary as data)."""
        if "error" in res:
            raise cls(res["status"], res["error"]["code"], res["error"]["message"])
        return res


def from_reject(exc: Reject, what: str = "") -> ApiError:
    return ApiError(STATUS.get(exc.reason, 400), exc.reason, f"{what}{exc.reason}: {exc.detail}".strip())


def resolve_model(uri: str, tracking_uri: str | None = None, cache: Path | None = None) -> tuple[Path, str, str]:
    """``models:/NAME@ALIAS``, ``models:/NAME/VERSION`` or a local dir -> (local dir, name, version)
    (``train.tracking.resolve_model``)."""
    from train.tracking import resolve_model as resolve

    return resolve(uri, tracking_uri, cache)


@dataclass(frozen=True)
class Limits:
    max_bytes: int
    max_video_bytes: int
    max_pixels: int
    image_formats: tuple[str, ...]
    video_formats: tuple[str, ...]

    @classmethod
    def of(cls, cfg) -> "Limits":
        return cls(cfg.max_body_bytes, cfg.max_video_bytes, cfg.max_pixels, tuple(cfg.image_formats),
                   tuple(cfg.video_formats))


def sniff_kind(data: bytes, limits: Limits) -> str:
    """'image' or 'video', or an ApiError saying why neither (size, format, not media)."""
    try:
        return check(data[:512], len(data), max_bytes=limits.max_bytes, image_formats=limits.image_formats,
                     video_formats=limits.video_formats, max_video_bytes=limits.max_video_bytes).kind
    except Reject as exc:
        raise from_reject(exc) from None


def prepare_image(data: bytes, limits: Limits, short_edge: int) -> np.ndarray:
    """Encoded image -> RGB uint8 (H, W, 3) resized like a preprocessed item; ApiError if bad."""
    if sniff_kind(data, limits) != "image":
        raise ApiError(415, "unsupported_format", "expected an image, got a video (use /v1/classify/video)")
    try:
        img = open_image(data, max_pixels=limits.max_pixels, short_edge=short_edge)
    except Reject as exc:
        raise from_reject(exc) from None
    return np.asarray(resize_short(img, short_edge))


def sampled_frames(path: str, fps: float, short_edge: int, cfg):
    """Frames sampled evenly at ``fps`` (the long-video sampler), within ``cfg``'s serving limits."""
    from flows.media.video.sample import sample_frames

    return sample_frames(path, fps=fps, short_edge=short_edge, timeout=cfg.request_timeout_s,
                         max_seconds=cfg.video_max_seconds, max_pixels=cfg.max_pixels)


def video_stream(path: str, short_edge: int, fps: float, cfg):
    """A local video file -> (duration, frames): thumbnail + scene keyframes, then the frames sampled
    at ``fps`` as a generator that decodes while it is read (closing it kills ffmpeg). The probe and
    every limit run now: length and pixels (``cfg``'s serving limits), and the number of frames the
    request would make (``max_video_frames``: ``fps=60`` on a long clip is refused before any
    decoding, 413 ``too_many_frames`` with the rate that would fit). The one video path of the server
    and of ``sift classify``'s local mode: a VideoError becomes an ApiError with the status the API
    answers (413 for too long / too big / too many frames, 422 otherwise)."""
    import itertools

    from flows.media import video as v

    try:
        info = v.probe(path, timeout=30)
        v.check_limits(info, cfg.video_max_seconds, cfg.max_pixels)
        n = cfg.video_keyframes + 1 + math.ceil(info.duration * fps)
        if n > cfg.max_video_frames:
            fits = max(cfg.max_video_frames - cfg.video_keyframes - 1, 1) / max(info.duration, 1e-9)
            raise ApiError(413, "too_many_frames", f"{info.duration:.0f} s at fps={fps:g} is about {n} frames > "
                           f"max_video_frames={cfg.max_video_frames}; ask fps <= {fits:.3g}")
        frames = v.extract_keyframes(path, short_edge=short_edge, k=cfg.video_keyframes,
                                     timeout=cfg.request_timeout_s, max_seconds=cfg.video_max_seconds,
                                     max_pixels=cfg.max_pixels)
        sampled = sampled_frames(path, fps, short_edge, cfg)
    except v.VideoError as exc:
        raise ApiError(STATUS.get(exc.reason, 422), exc.reason, exc.detail) from None

    def frames_then_errors():
        try:
            yield from itertools.chain(frames, sampled)
        except v.VideoError as exc:
            raise ApiError(STATUS.get(exc.reason, 422), exc.reason, exc.detail) from None
        finally:
            sampled.close()  # kills and reaps ffmpeg however the reader stops
    return info.duration, frames_then_errors()


def video_frames(path: str, short_edge: int, fps: float, cfg) -> dict:
    """:func:`video_stream` collected: {times, kinds, frames, duration} (local mode: one video, and
    at most ``max_video_frames`` frames)."""
    duration, stream = video_stream(path, short_edge, fps, cfg)
    frames = list(stream)
    return {"times": [f.timestamp for f in frames], "kinds": [f.kind for f in frames],
            "frames": [f.image for f in frames], "duration": duration}


class Predictor:
    """A loaded model plus the response format; ``classify`` takes prepared RGB arrays."""

    def __init__(self, model_dir: Path, name: str = "", version: str = "", device: str = "cpu",
                 operating_point: dict | None = None, runtime: dict | None = None):
        """``operating_point``: ``SiftModel.operating_point`` keywords (serve-time thresholds);
        ``runtime``: ``SiftModel``'s engine keywords (``RuntimeKnobs.runtime_kwargs``)."""
        self.model = SiftModel(model_dir, device=device, **(runtime or {}))  # a runtime it lacks: RuntimeChoiceError
        if operating_point:
            try:
                self.model.operating_point(**operating_point)
            except ValueError as exc:
                raise ConfigError(f"operating point: {exc}") from None
        self.name, self.version = name or Path(model_dir).name, version or "local"
        self.classes = self.model.classes

    def classify(self, arrays: list[np.ndarray], tiles: int = 1, tile_agg: str = "mean") -> list[dict]:
        """Prepared images -> per item {label, probs, thresholds, model, version} (+ score with a
        score head)."""
        t0 = time.perf_counter()
        o = self.model.outputs([Image.fromarray(a) for a in arrays], tiles=tiles, tile_agg=tile_agg)
        return self.model.add_heads(self.format(self.model.probs(o.logits),
                                                latency_ms=(time.perf_counter() - t0) * 1000), o)

    def format(self, probs: np.ndarray, latency_ms: float = 0.0) -> list[dict]:
        """``uncertain``: no class reached its threshold (the label is the fallback class)."""
        pred, unsure = self.model.decide(probs) if len(probs) else ([], [])
        thresholds = dict(zip(self.classes, map(float, self.model.thresholds)))
        return [{"label": self.classes[int(k)], "uncertain": bool(u), "probs": dict(zip(self.classes, map(float, row))),
                 "thresholds": thresholds, "model": self.name, "version": self.version,
                 "latency_ms": round(latency_ms, 2)} for k, u, row in zip(pred, unsure, probs)]

    def video_summary(self, times: list[float], kinds: list[str], probs: np.ndarray, duration: float,
                      how: str = "max", window: int = 3, scores: list[float] | None = None) -> dict:
        """Frame probabilities -> per-frame scores, a smoothed timeline and a video-level label.

        With a score head, ``scores`` (one per frame) come back per frame and as the video's
        ``score``, aggregated like the probabilities (max, mean or top-k mean)."""
        order = np.argsort(times, kind="stable")
        t = np.asarray(times, dtype=float)[order]
        p = probs[order]
        sm = smooth(p, window)
        labels = self.model.decision.predict(sm)
        video = aggregate(sm if how == "max" else p, how)
        video = video / video.sum()
        vlabel = video_label(p, sm, self.model.decision, how, positive=self.model.positive)
        frames = [{"t": float(t[i]), "kind": kinds[int(order[i])], "label": self.classes[int(labels[i])],
                   "probs": dict(zip(self.classes, map(float, p[i])))} for i in range(len(t))]
        out = {"label": self.classes[vlabel], "probs": dict(zip(self.classes, map(float, video))),
               "aggregate": how, "frames": frames, "segments": segments(t, labels, sm, self.classes, end=duration),
               "duration": duration, "model": self.name, "version": self.version}
        if scores is not None and len(scores) == len(t):
            s = np.asarray(scores, dtype=float)[order]
            for f, v in zip(frames, s):
                f["score"] = float(v)
            out["score"] = float(aggregate(smooth(s[:, None], window) if how == "max" else s[:, None], how)[0])
        return out
