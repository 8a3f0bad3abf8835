"""Short synthetic videos for the corpus: rendered scenes with hard cuts, encoded by ffmpeg.

Each scene is one picture of its class (``flows.corpus.draw``) seen through a slowly panning and
zooming window; ``flows.corpus`` plans which scenes each video gets and records the truth.
"""
from __future__ import annotations

import subprocess
import tempfile
from pathlib import Path

import ffmpeg
import numpy as np
from PIL import Image

from flows.corpus.draw import render
from flows.corpus.paint import add_noise


def write_video(path: Path, scenes, size: tuple[int, int], fps: int, rng) -> dict:
    """Encode ``scenes`` [(class, seconds), ...] into ``path`` (container from the suffix).

    Each scene is one rendered picture seen through a slowly panning and zooming window, with light
    noise so no two frames are equal; cuts are hard. Frames stream into ffmpeg's stdin one at a
    time, so a long video never sits in memory. Returns {"duration", "scenes", "cuts"} in seconds.
    """
    cmd = encode_cmd(path, size, fps)
    records, frame = [], 0
    with tempfile.TemporaryFile() as err:  # a file, not a pipe: ffmpeg can never block on stderr
        proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=err)
        try:
            for cls, seconds in scenes:
                n = max(1, round(seconds * fps))
                for frame_img in _scene_frames(cls, n, size, rng):
                    proc.stdin.write(frame_img.tobytes())
                records.append({"start": frame / fps, "end": (frame + n) / fps, "label": cls})
                frame += n
            proc.stdin.close()
        except BrokenPipeError:
            pass  # ffmpeg died; its return code and stderr say why
        if proc.wait() != 0:
            err.seek(0)
            raise RuntimeError(f"ffmpeg failed on {path}: {err.read().decode(errors='replace')[-2000:]}")
    return {"duration": frame / fps, "scenes": records, "cuts": [r["start"] for r in records[1:]]}


def encode_cmd(path: Path, size: tuple[int, int], fps: int) -> list[str]:
    """ffmpeg encoding raw RGB24 frames of ``size`` (w, h) at ``fps`` read from stdin into ``path``
    (VP8 for .webm, else H.264), bit-exact and without metadata so that a seed gives the same bytes.

    Not under the guard of ``flows.media.video``: its input is our own pipe, and it must read stdin."""
    w, h = size
    codec = ({"c:v": "libvpx", "deadline": "realtime", "cpu-used": 8, "b:v": "400k"}
             if Path(path).suffix == ".webm" else {"c:v": "libx264", "preset": "veryfast", "crf": 26})
    frames = ffmpeg.input("pipe:0", format="rawvideo", pix_fmt="rgb24", s=f"{w}x{h}", r=fps)
    out = frames.output(str(path), an=None, threads=1, **codec, pix_fmt="yuv420p", g=2 * fps, map_metadata=-1,
                        fflags="+bitexact", **{"flags:v": "+bitexact"})
    return out.global_args("-hide_banner", "-loglevel", "error").overwrite_output().compile()


def _scene_frames(cls: str, n: int, size: tuple[int, int], rng):
    """``n`` frames of one scene: a window gliding from one crop of a large picture to another."""
    w, h = size
    big = render(cls, rng, (int(w * 1.4), int(h * 1.4)))
    bw, bh = big.size

    def box():
        scale = rng.uniform(0.72, 1.0)  # the window is 72-100% of the picture
        x, y = rng.uniform(0, bw * (1 - scale)), rng.uniform(0, bh * (1 - scale))
        return np.array([x, y, x + bw * scale, y + bh * scale])

    a, b = box(), box()
    for i in range(n):
        t = i / max(1, n - 1)
        crop = big.resize(size, Image.Resampling.BILINEAR, box=tuple(a + (b - a) * t))
        yield add_noise(crop, rng, 2.0)
