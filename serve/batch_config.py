"""Configs of the two offline stages on the model: ``sift scan`` and ``sift predict``.

Defaults live in ``serve/configs/scan.yaml`` and ``serve/configs/predict.yaml``; ``key=value``
overrides and unknown-key rejection work as for every other stage (``flows.config``).

Both run a Ray Data pipeline whose CPU reservations must fit the cluster: Ray Data waits forever,
without an error, for an actor or task that can never be scheduled. :meth:`cpus_needed` is what
``serve.batch.check_budget`` compares with the cluster before anything starts.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Iterable

from flows.config import knob, load
from train.decision import OperatingPointKnobs

CONFIG_DIR = Path(__file__).parent / "configs"
MODEL = "models:/sift-classifier@champion"


@dataclasses.dataclass(frozen=True)
class ScanConfig(OperatingPointKnobs):
    model: str = MODEL
    tracking_uri: str = ""
    # sampling and cuts
    fps: float = knob(2.0, lo=0.05, hi=30.0, help="sampled frames per second (a fixed grid from 0)")
    keyframes: bool = knob(True, help="also score the first frame of every scene (at each cut)")
    scene_threshold: float = knob(0.3, lo=0.01, hi=1.0, help="ffmpeg scene score above which a frame starts a scene")
    min_scene_s: float = knob(0.5, lo=0.04, hi=60.0, help="no two cuts closer than this (bounds keyframes in strobes)")
    chunk_s: float = knob(60.0, lo=2.0, hi=86400.0, help="video seconds per decode task (snapped to keyframes)")
    # timeline
    smooth: int = knob(3, lo=1, hi=101, help="moving average over this many frames, within a scene")
    # limits
    max_video_seconds: float = knob(4 * 3600.0, lo=1.0)
    max_pixels: int = knob(3840 * 2160, lo=1)
    ffmpeg_timeout: float = knob(600.0, lo=1.0, help="seconds per decode task")
    # Ray
    batch_size: int = knob(32, lo=1, hi=4096, help="frames per model call")
    min_actors: int = knob(1, lo=1, hi=1024)
    max_actors: int = knob(1, lo=1, hi=1024, help="model actors at most (each loads the model)")
    actor_cpus: float = knob(2.0, lo=0.05, hi=64)
    threads: int = knob(2, lo=1, hi=256, help="torch threads per model actor")
    decoders: int = knob(2, lo=1, hi=1024, help="decode tasks at once (one ffmpeg each)")
    decode_cpus: float = knob(0.5, lo=0.05, hi=64, help="CPUs reserved by each decode task")
    ffmpeg_threads: int = knob(1, lo=0, hi=64, help="decoder threads per ffmpeg (0: ffmpeg's choice); "
                                                   "the chunks are already decoded in parallel")
    io_cpus: float = knob(0.1, lo=0.01, hi=8)
    # output
    plot: bool = True

    def validate(self) -> None:
        if self.min_actors > self.max_actors:
            raise ValueError("min_actors must be <= max_actors")

    def cpus_needed(self) -> float:
        """CPUs the pipeline reserves at its widest: every decoder, every actor, one read task."""
        return self.decoders * self.decode_cpus + self.max_actors * self.actor_cpus + self.io_cpus


@dataclasses.dataclass(frozen=True)
class PredictConfig(OperatingPointKnobs):
    model: str = MODEL
    tracking_uri: str = ""
    tiles: int = knob(1, choices=(1, 5), help="5: average five crops per image (large images)")
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
    return load(ScanConfig, path, overrides, default_path=CONFIG_DIR / "scan.yaml")


def load_predict(path: str | Path | None = None, overrides: Iterable[str] | dict = ()) -> PredictConfig:
    return load(PredictConfig, path, overrides, default_path=CONFIG_DIR / "predict.yaml")
