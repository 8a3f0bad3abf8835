"""Configs of the two offline stages on the model: ``sift scan`` and ``sift predict``.

Each default is written once, on its field (``sift scan --knobs``, ``sift predict --knobs``);
``key=value`` overrides and unknown-key rejection work as for every other stage (``flows.core.config``).

Both run a Ray Data pipeline whose CPU reservations must fit the cluster: Ray Data waits forever,
without an error, for an actor or task that can never be scheduled. :meth:`cpus_needed` is what
``serve.offline.batch.check_budget`` compares with the cluster before anything starts.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Iterable

from flows.core.config import knob, load
from train.decision import OperatingPointKnobs
from train.runtime import RuntimeKnobs

MODEL = "models:/sift-classifier@champion"


@dataclasses.dataclass(frozen=True)
class ScanConfig(OperatingPointKnobs, RuntimeKnobs):
    # sift scan: defaults. Override as key=value: `sift scan a.mp4 --output out fps=1 smooth=5`.
    model: str = MODEL  # or a local artifact dir (train's .sift/runs/RUN/model)
    tracking_uri: str = ""  # default: $MLFLOW_TRACKING_URI or .sift/mlflow.db
    # Sampling: one frame at or after every 1/fps s, plus the first frame of each scene. Cuts come from
    # ffmpeg's scene score in the same decode pass (no second pass over the video).
    fps: float = knob(2.0, lo=0.05, hi=30.0, help="sampled frames per second (a fixed grid from 0)")
    keyframes: bool = knob(True, help="also score the first frame of every scene (at each cut)")
    scene_threshold: float = knob(0.3, lo=0.01, hi=1.0, help="ffmpeg scene score above which a frame starts a scene")
    # cuts closer than this to the previous one are ignored (strobes, noise)
    min_scene_s: float = knob(0.5, lo=0.04, hi=60.0, help="no two cuts closer than this (bounds keyframes in strobes)")
    # one decode task per chunk; starts snapped to keyframes (shorter: less
    chunk_s: float = knob(60.0, lo=2.0, hi=86400.0, help="video seconds per decode task (snapped to keyframes)")
    # Timeline: moving average of the probabilities over `smooth` frames, never across a cut.
    smooth: int = knob(3, lo=1, hi=101, help="moving average over this many frames, within a scene")
    # limits
    max_video_seconds: float = knob(4 * 3600.0, lo=1.0)
    max_pixels: int = knob(3840 * 2160, lo=1)  # 3840x2160
    ffmpeg_timeout: float = knob(600.0, lo=1.0, help="seconds per decode task")  # per decode task
    # Ray
    # Ray: decode tasks feed an autoscaling pool of model actors. decoders * decode_cpus +
    # max_actors * actor_cpus + io_cpus must fit the cluster's CPUs (checked before the run).
    # One actor with 2 torch threads by default: every actor loads the model (~6 CPU-s) and on a
    # 2-core machine a second one cost more than it gave (bench/scan.py: tiny model 37 -> 30 s with
    # one actor, ViT-B/32 93.5 s with 2 x 1 thread -> 89.3 s with 1 x 2). Raise max_actors with cores.
    batch_size: int = knob(32, lo=1, hi=4096, help="frames per model call")
    min_actors: int = knob(1, lo=1, hi=1024)
    max_actors: int = knob(1, lo=1, hi=1024, help="model actors at most (each loads the model)")
    actor_cpus: float = knob(2.0, lo=0.05, hi=64)
    threads: int = knob(2, lo=1, hi=256, help="torch threads per model actor")
    decoders: int = knob(2, lo=1, hi=1024, help="decode tasks at once (one ffmpeg each)")
    decode_cpus: float = knob(0.5, lo=0.05, hi=64, help="CPUs reserved by each decode task")
    # per decode task: the chunks are the parallelism (0: ffmpeg's own choice)
    ffmpeg_threads: int = knob(1, lo=0, hi=64, help="decoder threads per ffmpeg (0: ffmpeg's choice); "
                                                   "the chunks are already decoded in parallel")
    io_cpus: float = knob(0.1, lo=0.01, hi=8)
    # output
    plot: bool = True  # DIR/<stem>.png

    def validate(self) -> None:
        if self.min_actors > self.max_actors:
            raise ValueError("min_actors must be <= max_actors")

    def cpus_needed(self) -> float:
        """CPUs the pipeline reserves at its widest: every decoder, every actor, one read task."""
        return self.decoders * self.decode_cpus + self.max_actors * self.actor_cpus + self.io_cpus


@dataclasses.dataclass(frozen=True)
class PredictConfig(OperatingPointKnobs, RuntimeKnobs):
    # sift predict: defaults. Override as key=value: `sift predict --input d --output p.parquet max_actors=3`.
    model: str = MODEL  # or a local artifact dir (train's .sift/runs/RUN/model)
    tracking_uri: str = ""  # default: $MLFLOW_TRACKING_URI or .sift/mlflow.db
    # 5: mean over five crops, as /v1/classify?tiles=5
    tiles: int = knob(1, choices=(1, 5), help="5: average five crops per image (large images)")
    # Ray: an autoscaling pool of model actors (each decodes, prepares and scores its batch).
    # max_actors * actor_cpus + io_cpus must fit the cluster's CPUs (checked before the run).
    batch_size: int = knob(32, lo=1, hi=4096)
    min_actors: int = knob(1, lo=1, hi=1024)
    max_actors: int = knob(2, lo=1, hi=1024)
    actor_cpus: float = knob(1.0, lo=0.05, hi=64)
    threads: int = knob(1, lo=1, hi=256, help="torch threads per model actor")
    io_cpus: float = knob(0.1, lo=0.01, hi=8)
    progress_s: float = knob(5.0, lo=0.0, help="seconds between progress lines (0: none)")

    def validate(self) -> None:
        if self.min_actors > self.max_actors:
            raise ValueError("min_actors must be <= max_actors")

    def cpus_needed(self) -> float:
        return self.max_actors * self.actor_cpus + self.io_cpus


def load_scan(path: str | Path | None = None, overrides: Iterable[str] | dict = ()) -> ScanConfig:
    return load(ScanConfig, path, overrides)


def load_predict(path: str | Path | None = None, overrides: Iterable[str] | dict = ()) -> PredictConfig:
    return load(PredictConfig, path, overrides)
