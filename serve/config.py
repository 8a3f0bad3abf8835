"""The serving stage's config: a frozen dataclass, each default written once, on its field."""
from __future__ import annotations

import dataclasses
import ipaddress
from pathlib import Path
from typing import Iterable

from flows.core.config import build, knob, load
from train.decision import OperatingPointKnobs
from train.runtime import RuntimeKnobs



@dataclasses.dataclass(frozen=True)
class ServeConfig(OperatingPointKnobs, RuntimeKnobs):
    # the operating point (thresholds, max_rate, fallback) comes from OperatingPointKnobs, the engine
    # (runtime=auto|torch|onnx|onnx-int8, min_agreement) from RuntimeKnobs
    # sift serve: defaults. Override as key=value: `sift serve model=/path/to/artifact port=8080`.
    model: str = "models:/sift-classifier@champion"  # or a local artifact dir (train's .sift/runs/RUN/model)
    tracking_uri: str = ""  # default: $MLFLOW_TRACKING_URI or .sift/mlflow.db
    host: str = "127.0.0.1"
    port: int = knob(8000, lo=1, hi=65535)
    # bearer token ($SIFT_API_TOKEN); required when host is not loopback
    token: str = knob("", help="bearer token; required when binding beyond loopback ($SIFT_API_TOKEN)")
    device: str = knob("auto", choices=("auto", "cpu", "cuda"))  # cuda when the replica has a GPU
    # batching (model deployment)
    # Dynamic batching on the model deployment. max_ongoing_requests must be >= max_batch_size,
    # otherwise Serve never routes enough requests to a replica to fill a batch.
    max_batch_size: int = knob(32, lo=1, hi=4096)
    batch_wait_timeout_s: float = knob(0.01, lo=0.0, hi=10.0)
    max_ongoing_requests: int = knob(64, lo=1, help="per model replica; >= max_batch_size or batches never fill")
    max_queued_requests: int = knob(256, lo=-1, help="beyond this the API answers 503")  # beyond this: 503
    min_replicas: int = knob(1, lo=0, hi=1024)
    max_replicas: int = knob(1, lo=1, hi=1024)
    target_ongoing_requests: float = knob(16.0, lo=0.1)
    model_cpus: float = knob(1.0, lo=0.0, hi=64)
    model_gpus: float = knob(0.0, lo=0.0, hi=16)
    preprocess_replicas: int = knob(1, lo=1, hi=1024)
    preprocess_cpus: float = knob(0.5, lo=0.0, hi=64)
    ingress_cpus: float = knob(0.25, lo=0.0, hi=64)
    # Serve's access log writes a line per request in each replica (proxy, Api, Preprocess, Model) and
    # ships it to the driver. /metrics counts requests and latencies anyway.
    access_log: bool = knob(False, help="Serve's per-request log line in every replica (/metrics counts requests)")
    # Limits: bad input gets a 4xx with a JSON error, never a 500.
    max_body_bytes: int = knob(25_000_000, lo=1)
    max_video_bytes: int = knob(200_000_000, lo=1)
    max_items: int = knob(64, lo=1, help="images per /v1/classify request")
    max_pixels: int = knob(50_000_000, lo=1)
    image_formats: tuple[str, ...] = ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF", "MPO")
    video_formats: tuple[str, ...] = ("mp4", "mov", "webm", "mkv")
    request_timeout_s: float = knob(60.0, lo=0.1)
    # Video: thumbnail + scene keyframes + frames sampled at video_fps.
    video_fps: float = knob(1.0, lo=0.01, hi=60.0, help="sampled frames per second")
    video_keyframes: int = knob(8, lo=0, hi=256)
    video_max_seconds: float = knob(1800.0, lo=1.0)
    # frames one video request may make (keyframes + duration x fps): more is 413 before decoding;
    # the frames stream to the model in batches of video_batch, so memory does not grow with them
    max_video_frames: int = knob(3600, lo=1, hi=1_000_000, help="frames per video request (keyframes + "
                                 "duration x fps); more is refused with 413 too_many_frames")
    video_batch: int = knob(32, lo=1, hi=1024, help="frames decoded ahead and sent to the model at once")
    video_aggregate: str = knob("max", choices=("max", "mean", "topk"))  # max | mean | topk
    video_smooth: int = knob(3, lo=1, hi=101)
    # Jobs: persistent SQLite queue (survives restarts).
    jobs_db: str = knob("", help="SQLite file of the job queue (default: $SIFT_HOME/jobs.db)")
    max_pending_jobs: int = knob(1000, lo=1)
    job_concurrency: int = knob(8, lo=1, hi=1024)
    job_lease_s: float = knob(30.0, lo=1.0, hi=3600.0, help="a claimed job is its worker's this long, renewed while it "
                              "works; a dead worker's job is taken again after it")
    job_max_attempts: int = knob(3, lo=1, hi=100, help="workers a job may cost (a crash, a lost lease) before it "
                                 "is failed with the reason")
    job_retention_s: float = knob(7 * 86400.0, lo=60.0, help="finished jobs (and their payloads) are purged "
                                  "this long after they ended")

    def validate(self) -> None:
        if self.min_replicas > self.max_replicas:
            raise ValueError("min_replicas must be <= max_replicas")
        if not is_loopback(self.host) and not self.token:
            raise ValueError(f"host={self.host} is beyond loopback: set token=... (or $SIFT_API_TOKEN); "
                             "the API refuses to serve without auth there")


def is_loopback(host: str) -> bool:
    if host in ("localhost",):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def load_serve(path: str | Path | None = None, overrides: Iterable[str] | dict = ()) -> ServeConfig:
    return load(ServeConfig, path, overrides)


def from_args(args: dict) -> ServeConfig:
    """For ``serve deploy``: the application's ``args`` over the YAML defaults, checked the same way."""
    base = dataclasses.asdict(load_serve())
    base.update(args or {})
    return build(ServeConfig, base, where="serve args")
