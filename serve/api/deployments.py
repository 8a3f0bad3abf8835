"""The two worker deployments: CPU preprocessing and the batched model.

    ingress (FastAPI) --bytes--> Preprocess (CPU: validate, decode, resize; ffmpeg for video)
                      --RGB arrays--> Model (@serve.batch; GPU when present)

Preprocess calls the Model itself and hands back only the small result: a decoded image (~1 MB at
448 px) then crosses the object store once instead of twice (Preprocess -> ingress -> Model), and
the ingress never (de)serialises it.

Errors from bad input come back as values (``{"error": …, "status": …}``), not exceptions, so the
ingress maps them to 4xx answers without unwrapping Ray's exception types.
"""
from __future__ import annotations

import asyncio
import os
import queue
import tempfile
import threading
import time
from collections import defaultdict

import numpy as np
from ray import serve

from serve.config import ServeConfig
from serve.predictor import ApiError, Limits, Predictor, prepare_image, resolve_model, sniff_kind, video_stream


def _error(exc: ApiError) -> dict:
    return {"status": exc.status, **exc.body()}


@serve.deployment(name="Preprocess")
class Preprocess:
    def __init__(self, cfg: ServeConfig, model=None):
        from flows.core.runtime import quiet_env

        quiet_env()
        self.cfg, self.limits, self.model = cfg, Limits.of(cfg), model

    async def classify(self, data: bytes, short_edge: int, tiles: int = 1, tile_agg: str = "mean") -> dict:
        """Image bytes -> the Model's result dict, or an error dict for bad input. Decoding (a few ms)
        runs on the event loop: a thread hop would cost about as much."""
        arr = self.image(data, short_edge)
        if isinstance(arr, dict):
            return arr
        return await self.model.remote(arr, tiles, tile_agg)

    async def classify_video(self, data: bytes, short_edge: int, fps: float, how: str, window: int) -> dict:
        """Video bytes -> the Model's timeline and video label, or an error dict.

        ffmpeg decodes in a thread (image requests on this replica go on meanwhile) into a queue of
        at most two batches of ``video_batch`` frames; each batch goes to the Model as it comes, and
        only its probabilities are kept. So memory stays flat however long the video, and when the
        request ends early (the ingress's timeout cancels it, the client left) ``stop`` is set: the
        thread stops at the next frame and ffmpeg is killed."""
        stop, q = threading.Event(), queue.Queue(maxsize=2)
        worker = threading.Thread(target=self._decode, args=(data, short_edge, fps, stop, q), daemon=True,
                                  name="sift-video")
        worker.start()
        times, kinds, probs, scores = [], [], [], []
        try:
            while True:
                msg = await asyncio.to_thread(_get, q, stop)
                if msg[0] == "error":
                    return msg[1]
                if msg[0] == "end":
                    duration = msg[1]
                    break
                _, batch = msg
                res = await self.model.frames.remote([f.image for f in batch])
                times += [f.timestamp for f in batch]
                kinds += [f.kind for f in batch]
                probs += res["probs"]
                scores += res["scores"] or []
            return await self.model.summary.remote(times, kinds, probs, duration, how, window, scores or None)
        finally:
            stop.set()  # also on cancellation: the decoding thread ends and kills ffmpeg

    def image(self, data: bytes, short_edge: int):
        try:
            return prepare_image(data, self.limits, short_edge)
        except ApiError as exc:
            return _error(exc)

    def _decode(self, data: bytes, short_edge: int, fps: float, stop: threading.Event, q: queue.Queue) -> None:
        """The producer: validate, write a private temp file (ffmpeg needs to seek in mp4/mov), decode
        batches into ``q``; ("end", duration) or ("error", error dict) last. Never raises."""
        def put(msg) -> bool:
            while not stop.is_set():
                try:
                    q.put(msg, timeout=0.5)
                    return True
                except queue.Full:
                    continue
            return False

        try:
            if sniff_kind(data, self.limits) != "video":
                raise ApiError(415, "unsupported_format", "expected a video (mp4, webm, mov, mkv)")
            with tempfile.TemporaryDirectory(prefix="sift-video-") as d:
                path = os.path.join(d, "upload")
                with open(path, "wb") as f:
                    f.write(data)
                duration, stream = video_stream(path, short_edge, fps, self.cfg)
                batch = []
                try:
                    for frame in stream:
                        if stop.is_set():
                            return
                        batch.append(frame)
                        if len(batch) == self.cfg.video_batch:
                            if not put(("batch", batch)):
                                return
                            batch = []
                finally:
                    stream.close()
                if batch and not put(("batch", batch)):
                    return
            put(("end", duration))
        except ApiError as exc:
            put(("error", _error(exc)))
        except Exception as exc:  # a bug, not the upload's fault: still an answer
            put(("error", _error(ApiError(500, "internal_error", f"{type(exc).__name__}: {exc}"[:200]))))


def _get(q: queue.Queue, stop: threading.Event):
    """The next message, waking every half second so a stopped request does not wait on it."""
    while not stop.is_set():
        try:
            return q.get(timeout=0.5)
        except queue.Empty:
            continue
    return ("error", _error(ApiError(499, "cancelled", "the request ended")))


@serve.deployment(name="Model")
class Model:
    def __init__(self, cfg: ServeConfig):
        from flows.core.runtime import quiet_env

        quiet_env()
        self.cfg = cfg
        self.predictor: Predictor | None = None
        self.uri = None
        self._load(cfg.model)
        self.infer.set_max_batch_size(cfg.max_batch_size)
        self.infer.set_batch_wait_timeout_s(cfg.batch_wait_timeout_s)

    def _load(self, uri: str) -> None:
        """Load the model, then swap it in: requests in flight finish on the old one."""
        import torch

        path, name, version = resolve_model(uri, self.cfg.tracking_uri or None)
        device = self.cfg.device
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.predictor = Predictor(path, name, version, device=device, operating_point=self.cfg.operating_point(),
                                   runtime=self.cfg.runtime_kwargs())
        self.uri = uri

    def reconfigure(self, user_config: dict) -> None:
        """``serve deploy`` with a new ``user_config`` (e.g. after ``sift promote``) reloads the
        model in place: the alias is resolved again, so a new champion is picked up."""
        uri = (user_config or {}).get("model", self.uri)
        if user_config.get("reload") or uri != self.uri:
            self._load(uri)

    def info(self) -> dict:
        p = self.predictor
        return {"model": p.name, "version": p.version, "classes": p.classes,
                "operating_point": p.model.decision.describe(p.classes),
                "runtime": p.model.runtime, "runtime_reason": p.model.runtime_reason,
                "short_edge": p.model.short_edge, "tile_edge": p.model.tile_edge, "uri": self.uri}

    @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.01)
    async def infer(self, requests: list[tuple]) -> list[dict]:
        """Batched: ``(rgb array, tiles, tile_agg)`` per request -> result dict per request."""
        t0 = time.perf_counter()
        out: list[dict | None] = [None] * len(requests)
        groups: dict[tuple, list[int]] = defaultdict(list)
        for i, (_, tiles, agg) in enumerate(requests):
            groups[(tiles, agg)].append(i)
        for (tiles, agg), idx in groups.items():
            res = self.predictor.classify([requests[i][0] for i in idx], tiles=tiles, tile_agg=agg)
            for i, r in zip(idx, res):
                out[i] = r
        ms = (time.perf_counter() - t0) * 1000
        for r in out:
            r["batch_size"], r["latency_ms"] = len(requests), round(ms, 2)
        return out

    async def __call__(self, array: np.ndarray, tiles: int = 1, tile_agg: str = "mean") -> dict:
        return await self.infer((array, tiles, tile_agg))

    async def frames(self, frames: list[np.ndarray]) -> dict:
        """One batch of a video's frames through the same batcher as images: {probs: [[p per class]],
        scores: [score] or None}."""
        res = await asyncio.gather(*[self.infer((f, 1, "mean")) for f in frames])
        classes = self.predictor.classes
        return {"probs": [[r["probs"][c] for c in classes] for r in res],
                "scores": [r["score"] for r in res] if res and "score" in res[0] else None}

    def summary(self, times: list[float], kinds: list[str], probs: list[list[float]], duration: float,
                how: str, window: int, scores: list[float] | None = None) -> dict:
        """A whole video's frame probabilities -> the timeline and the video label."""
        return self.predictor.video_summary(times, kinds, np.asarray(probs, dtype=np.float64).reshape(
            len(times), len(self.predictor.classes)), duration, how=how, window=window, scores=scores)
