"""Preprocessing's ``video_mode=sample`` on real ffmpeg: frames on a grid from a start, by fps or every
Nth frame, capped (spread over the video), for frames-from-folder-videos tasks."""
import shutil
import subprocess

import pytest

from flows.core.config import ConfigError

from flows.ingest.config import load_preprocess
from flows.ingest.process import process_item

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    if not shutil.which("ffmpeg"):
        pytest.skip("ffmpeg not installed")
    path = tmp_path_factory.mktemp("v") / "ten.mp4"  # 10 s at 10 fps
    subprocess.run(["ffmpeg", "-nostdin", "-loglevel", "error", "-y", "-f", "lavfi", "-i",
                    "testsrc=s=160x120:d=10:r=10", "-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt",
                    "yuv420p", str(path)], check=True)
    return str(path)


def _rows(clip, *overrides):
    cfg = load_preprocess(None, ["video_mode=sample", "short_edge=64", "classes=[indoor, outdoor]", *overrides])
    item = {"path": clip, "label": 1, "label_name": "outdoor", "pool": "clean", "group": "", "source": "t",
            "score": float("nan"), "tags": "", "reject": "", "detail": "", "spans": "", "whole": True,
            "url": "", "local": ""}
    return process_item(item, cfg)


def test_fps_from_a_start(clip):
    rows = _rows(clip, "video_start_s=2", "video_fps=1")
    assert [r["kind"] for r in rows] == ["frame"] * 8 and all(not r["reject_reason"] for r in rows)
    assert [r["timestamp"] for r in rows] == pytest.approx([2, 3, 4, 5, 6, 7, 8, 9], abs=0.051)
    assert len({r["group_id"] for r in rows}) == 1 and {r["label_name"] for r in rows} == {"outdoor"}


def test_every_nth_frame_and_the_cap_spreads_frames(clip):
    every = _rows(clip, "video_fps=0", "video_every_n_frames=25")
    assert [r["timestamp"] for r in every] == pytest.approx([0, 2.5, 5, 7.5], abs=0.051)
    capped = _rows(clip, "video_fps=5", "video_max_frames=4")
    assert [r["timestamp"] for r in capped] == pytest.approx([0, 2.5, 5, 7.5], abs=0.051)


def test_a_start_past_the_end_is_a_reject_and_both_rates_are_refused(clip):
    (row,) = _rows(clip, "video_start_s=30")
    assert row["reject_reason"] == "video_error" and "past the end" in row["reject_detail"]
    with pytest.raises(ConfigError, match="exactly one"):
        load_preprocess(None, ["video_mode=sample", "video_fps=2", "video_every_n_frames=3"])
