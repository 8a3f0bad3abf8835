"""sift scan: chunk planning, the one-pass decode (grid + cuts + keyframes) on generated clips with
known cut times, timeline assembly and files; then one Ray-backed scan of a good, a corrupt and a
truncated video in one call."""
from __future__ import annotations

import csv
import json
import math
import os
import random
import shutil
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pytest

from flows.core.config import ConfigError
from flows.media.video import VideoError, output_size, probe, scene_cuts
from flows.media.video.sample import sample_frames
from serve.offline.scan import decode as sd
from serve.offline.batch.config import load_scan
from serve.offline.scan import plan as sp
from serve.offline.scan import timeline as st
from serve.offline.scan.job import main, split_inputs, stems
from tests.flows.test_video_clips import X264, _lavfi

S = "320x180"
CLASSES = ["BAD", "NEUTRAL", "GOOD"]

# ---------------------------------------------------------------- pure: no ffmpeg, no Ray


def _covers(chunks, duration):
    assert chunks[0].seek == chunks[0].start == 0.0 and chunks[-1].end == duration
    assert chunks[-1].last and not any(c.last for c in chunks[:-1])
    for a, b in zip(chunks, chunks[1:]):
        assert a.end == b.start  # contiguous: every instant owned by exactly one chunk
    for c in chunks:
        assert c.seek <= c.start < c.end


def test_plan_chunks_snaps_to_keyframes_and_covers_the_video():
    kf = [float(k) for k in range(0, 600, 10)]  # a keyframe every 10 s
    chunks = sp.plan_chunks(600.0, kf, 60.0, lead=0.12)
    _covers(chunks, 600.0)
    for c in chunks[1:]:
        assert c.seek - sp.SEEK_PAST in kf  # seeks just past a keyframe: nothing decoded in vain
        assert c.start == pytest.approx(c.seek + 0.12)
    assert all(c.end - c.start >= 15.0 for c in chunks) and len(chunks) == 10
    # no keyframes known: nominal starts; a short video: one chunk
    _covers(sp.plan_chunks(95.0, [], 30.0, 0.2), 95.0)
    assert [c.seek for c in sp.plan_chunks(95.0, [], 30.0, 0.2)] == [0.0, 30.0, 60.2]
    assert len(sp.plan_chunks(20.0, kf, 60.0, 0.1)) == 1 and sp.plan_chunks(0.0, kf, 60.0, 0.1) == []


def test_scan_cmd_seeks_before_input_and_selects_before_scaling():
    c = sp.Chunk(seek=10.001, start=10.121, end=20.121, last=False)
    cmd = sd.scan_cmd("a.mp4", 84, 48, 2.0, c, 0.3, 0.5)
    src = cmd.index("file:" + os.path.abspath("a.mp4"))
    assert cmd[src - 1] == "-i" and cmd.index("-ss") < src and cmd[cmd.index("-ss") + 1] == "10.001000"
    assert cmd.index("-t") > src and float(cmd[cmd.index("-t") + 1]) == pytest.approx(10.12 + sd.SPAN_MARGIN)
    vf = cmd[cmd.index("-filter_complex") + 1]  # the expression's commas escaped for the graph
    assert vf.index("select=") < vf.index("settb=AVTB") < vf.index("metadata@scan") < vf.index("scale=84:48")
    assert "gt(scene\\,0.3)" in vf and "(t+10.001000)*2/1" in vf
    assert cmd[cmd.index("-frames:v") + 1] == str(sd.max_frames(c, 2.0, 0.5))
    last = sd.scan_cmd("a.mp4", 84, 48, 2.0, sp.Chunk(0.0, 0.0, 5.0, True), 0.3, 0.5)
    assert "-ss" not in last and "-t" not in last
    with pytest.raises(VideoError):
        sd.scan_cmd("http://x/a.mp4", 84, 48, 2.0, c, 0.3, 0.5)
    # one decoder thread per ffmpeg by default (the chunks are the parallelism); 0 = ffmpeg's choice
    assert cmd[cmd.index("-threads") + 1] == "1" and cmd.index("-threads") < src
    assert "-threads" not in sd.scan_cmd("a.mp4", 84, 48, 2.0, c, 0.3, 0.5, threads=0)


def test_scan_cmd_carries_the_ffmpeg_guard():
    from tests.flows.test_video_graph import assert_guarded

    for chunk in (sp.Chunk(seek=10.001, start=10.121, end=20.121, last=False), sp.Chunk(0.0, 0.0, 5.0, True)):
        cmd = sd.scan_cmd("a.mp4", 84, 48, 2.0, chunk, 0.3, 0.5)
        assert_guarded(cmd)  # whitelists on the input, -nostdin -hide_banner -nostats -loglevel
        assert cmd[cmd.index("-filter_complex") + 1].startswith("[0:V:0]select=")
        assert cmd[cmd.index("-nostdin") - 1] == "pipe:1"


def test_run_large_reads_everything_once_and_fails_clearly():
    py = [sys.executable, "-c"]
    out, err = sd.run_large(py + ["import sys; sys.stdout.buffer.write(bytes(range(256)) * 12_000); "
                                  "sys.stderr.write('log line')"], 30, size_hint=1000)  # grows past the hint
    assert bytes(out) == bytes(range(256)) * 12_000 and err == "log line"
    with pytest.raises(VideoError, match="timed out after 0.5 s"):
        sd.run_large(py + ["import time; time.sleep(30)"], 0.5, 1000)
    with pytest.raises(VideoError, match="bad input here") as e:
        sd.run_large(py + ["import sys; sys.stderr.write('bad input here'); sys.exit(3)"], 30, 1000)
    assert e.value.reason == "video_error"
    with pytest.raises(VideoError, match="cannot run"):
        sd.run_large(["/nonexistent/ffmpeg"], 30, 1000)


def test_decoded_frames_share_ffmpegs_buffer():
    size, buf = 12, memoryview(bytearray(range(60)))
    d = sd.Decoded([0.0, 0.5, 1.0], [0.0, 0.9, 0.1], [True, False, True], buf[12:48], size)
    col = d.frame_column()
    assert col.to_pylist() == [bytes(range(12, 24)), bytes(range(24, 36)), bytes(range(36, 48))]
    assert col.buffers()[2].address == pa.py_buffer(buf[12:48]).address  # wrapped, not copied
    assert [(f.t, f.score, f.grid, bytes(f.pixels)) for f in d][1] == (0.5, 0.9, False, bytes(range(24, 36)))
    # a chunk that cannot be read is one error row with the schema of the frames
    cfg = load_scan(None, ["model=/nowhere"])
    item = pa.table({"video": [3], "path": ["/nonexistent.mp4"], "seek": [0.0], "start": [0.0],
                     "end": [5.0], "last": [True], "width": [84], "height": [48]})
    rows = sd.decode_task(item, cfg)
    assert rows.schema == sd.DECODED and rows.num_rows == 1
    assert rows.column("error").to_pylist() == ["video_error"] and rows.column("video").to_pylist() == [3]


def test_decode_workers_import_no_model_code():
    # Ray imports serve.offline.scan.decode in every decode worker: torch there cost ~1.3 CPU-s per worker
    code = "import sys, serve.offline.scan.decode; print(sorted({'torch', 'transformers', 'ultralytics'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
    assert out.stdout.strip() == "[]"


def test_parsers():
    log = "\n".join([
        "[metadata@scan @ 0x1] [info] frame:0    pts:120000  pts_time:0.12",
        "[metadata@scan @ 0x1] [info] lavfi.scene_score=0.000000",
        "[metadata@scan @ 0x1] [info] sift=1",
        "[h264 @ 0x2] [error] something",
        "[metadata@scan @ 0x1] [info] frame:1    pts:2000040  pts_time:2.00004",
        "[metadata@scan @ 0x1] [info] lavfi.scene_score=0.612000",
        "[metadata@scan @ 0x1] [info] frame:2    pts:NOPTS  pts_time:NOPTS"])
    recs = sd.parse_log(log)
    assert recs[:2] == [(0.12, 0.0), (2.00004, 0.612)] and math.isnan(recs[2][0])
    text = "packet,0.080000,K__\npacket,0.120000,___\npacket,N/A,K__\npacket,10.080000,K__\nformat,0.080000\n"
    assert sp.parse_keyframes(text) == pytest.approx([0.0, 10.0])
    assert sp.lead_for(25.0) == pytest.approx(0.12) and sp.lead_for(0.0) == 0.2


def test_final_cuts_and_smoothing_never_crosses_a_cut():
    assert st.final_cuts([0.2, 3.0, 3.3, 3.6, 9.0, 3.0], 0.5) == [3.0, 3.6, 9.0]
    probs = np.array([[1, 0], [1, 0], [1, 0], [0, 1], [0, 1], [0, 1]], float)
    sm = st.scene_smooth(probs, np.array([0, 0, 0, 1, 1, 1]), 3)
    assert np.array_equal(sm, probs)  # within a scene a constant stays constant, even at its edges
    assert not np.array_equal(st.scene_smooth(probs, np.zeros(6, int), 3), probs)


def _timeline(keyframes=True):
    # grid every 0.5 s over 4 s; a cut at 2.3 s (a keyframe off the grid); class 0 before, 2 after
    t = [k / 2 for k in range(8)] + [2.3]
    score = [0.0] * 8 + [0.9]
    grid = [True] * 8 + [False]
    probs = [[0.8, 0.1, 0.1] if x < 2.3 else [0.1, 0.1, 0.8] for x in t]
    return st.build(t[::-1], score[::-1], grid[::-1], probs[::-1], classes=CLASSES, thresholds=[1, 1, 1],
                    duration=4.0, scene_threshold=0.3, min_gap=0.5, window=3, keyframes=keyframes)


def test_build_segments_start_at_cuts():
    tl = _timeline()
    assert tl["cuts"] == [2.3]
    ts = [f["t"] for f in tl["frames"]]
    assert ts == sorted(ts) and len(ts) == 9
    assert [f["kind"] for f in tl["frames"] if f["t"] == 2.3] == ["keyframe"]
    assert [(s["start"], s["end"], s["label"]) for s in tl["segments"]] == [(0.0, 2.3, "BAD"), (2.3, 4.0, "GOOD")]
    for f in tl["frames"]:
        assert sum(f["probs"].values()) == pytest.approx(1.0) and f["scene"] == (f["t"] >= 2.3)
    plain = _timeline(keyframes=False)
    assert 2.3 not in [f["t"] for f in plain["frames"]] and plain["cuts"] == [2.3]
    assert plain["segments"][1]["start"] == 2.5  # without the keyframe the change shows on the grid


def test_files(tmp_path):
    tl = {"video": "/x/clip.mp4", "duration": 4.0, "classes": CLASSES, "model": {"name": "m", "version": "1"},
          **_timeline()}
    rows = list(csv.DictReader(open(st.write_csv(tmp_path / "a.csv", tl))))
    assert len(rows) == len(tl["frames"]) and rows[0].keys() >= {"t", "kind", "label", "prob_BAD", "smoothed_GOOD"}
    assert json.loads(st.write_json(tmp_path / "a.json", tl).read_text()) == tl
    st.plot(tmp_path / "a.png", tl)
    assert (tmp_path / "a.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cli_helpers(tmp_path):
    odd = tmp_path / "a=b.mp4"
    odd.write_bytes(b"")
    assert split_inputs(["x.mp4", "fps=1", str(odd), "smooth=5"]) == (["x.mp4", str(odd)], ["fps=1", "smooth=5"])
    assert stems(["/a/clip.mp4", "/b/clip.mkv", "/c/other.mp4"]) == ["clip", "clip-2", "other"]


# ---------------------------------------------------------------- real ffmpeg on generated clips

CUTS = [2.0, 5.3, 7.0]  # red | testsrc | blue | testsrc2, 9.5 s: one cut off the 0.5 s grid


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    if not (shutil.which("ffmpeg") and shutil.which("ffprobe")):
        pytest.skip("ffmpeg/ffprobe not installed")
    d = tmp_path_factory.mktemp("scan_clips")
    src = [f"color=c=red:s={S}:d=2:r=25", f"testsrc=s={S}:d=3.3:r=25", f"color=c=blue:s={S}:d=1.7:r=25",
           f"testsrc2=s={S}:d=2.5:r=25"]
    c = {"gop25": _lavfi(d / "gop25.mp4", src, *X264, "-g", "25", "-movflags", "+faststart"),
         "gop250": _lavfi(d / "gop250.mkv", src, *X264, "-g", "250", "-sc_threshold", "0")}
    data = open(c["gop25"], "rb").read()
    c["truncated"] = str(d / "truncated.mp4")  # faststart: the index survives, the tail is gone
    open(c["truncated"], "wb").write(data[: len(data) // 2])
    c["corrupt"] = str(d / "corrupt.mp4")  # an mp4 header, then noise
    open(c["corrupt"], "wb").write(data[:64] + random.Random(0).randbytes(100_000))
    return c


def _scan(path, chunk_s, fps=2.0):
    info = probe(path)
    w, h = output_size(info.width, info.height, 448)
    chunks = sp.plan_chunks(info.duration, sp.keyframe_times(path), chunk_s, sp.lead_for(info.fps))
    return chunks, [f for c in chunks for f in sd.decode_chunk(path, w, h, fps, c, 0.3, 0.5, 60)], (w, h)


@pytest.mark.parametrize("name", ["gop25", "gop250"])
@pytest.mark.parametrize("chunk_s", [2.0, 60.0])
def test_one_pass_finds_cuts_keyframes_and_the_sampling_grid(clips, name, chunk_s):
    chunks, frames, (w, h) = _scan(clips[name], chunk_s)
    assert (len(chunks) == 1) == (chunk_s == 60.0) and len(chunks) in (1, 4, 5)
    tl = st.build([f.t for f in frames], [f.score for f in frames], [f.grid for f in frames],
                  np.full((len(frames), 3), 1 / 3), classes=CLASSES, thresholds=[1, 1, 1], duration=chunks[-1].end,
                  scene_threshold=0.3, min_gap=0.5, window=1)
    assert len(tl["cuts"]) == len(CUTS)
    assert np.allclose(tl["cuts"], CUTS, atol=0.25)  # the bar; in fact within one frame:
    assert np.allclose(tl["cuts"], CUTS, atol=0.041)
    # the grid is exactly the long-video sampler's, chunked or not
    grid = [f.t for f in frames if f.grid]
    ref = [f.timestamp for f in sample_frames(clips[name], 2.0, 448)]
    assert len(grid) == len(ref) >= 19 and np.allclose(grid, ref, atol=1e-3)
    assert sorted(f.t for f in frames) == [f.t for f in frames]  # chunks in order, none twice
    # the keyframe at the off-grid cut is the first frame of the new (blue) scene
    k = min(frames, key=lambda f: abs(f.t - 5.3))
    assert abs(k.t - 5.3) < 0.041 and not k.grid
    rgb = np.frombuffer(k.pixels, np.uint8).reshape(h * w, 3).mean(0)
    assert rgb[2] > 200 and rgb[0] < 60


def test_cuts_agree_with_the_scene_detector(clips):
    _, frames, _ = _scan(clips["gop25"], 2.0)
    mine = st.final_cuts([f.t for f in frames if f.score > 0.3], 0.5)
    assert np.allclose(mine, scene_cuts(clips["gop25"], 0.3), atol=0.041)


def test_truncated_and_corrupt(clips):
    with pytest.raises(VideoError) as e:
        _scan(clips["truncated"], 2.0)
    assert e.value.reason == "decode_error"
    with pytest.raises(VideoError) as e:
        _scan(clips["corrupt"], 2.0)
    assert e.value.reason == "video_error"


# ---------------------------------------------------------------- Ray: the whole command


# Sized for the shared test Ray (4 logical CPUs), where the session's Serve app holds some of them.
SMALL = ["max_actors=1", "actor_cpus=1", "threads=1"]


def test_scan_good_corrupt_and_truncated_in_one_call(ray_session, trained, clips, tmp_path):
    from serve.offline.scan.job import make_reel

    out = tmp_path / "scan"
    args = [clips["gop25"], clips["corrupt"], "--output", str(out), clips["truncated"], "--model",
            str(trained["model"]), "--reel", CLASSES[0], "chunk_s=3", "batch_size=8", *SMALL,
            "--export-spans", str(tmp_path / "spans.jsonl"), "runtime=onnx-int8"]
    assert main(args) == 0  # one video scanned: success, the others reported
    summary = json.loads((out / "scan.json").read_text())
    assert [v["video"] for v in summary["videos"]] == [clips["gop25"]]
    errors = {e["video"]: e for e in summary["errors"]}
    assert errors[clips["corrupt"]]["error"] == "video_error" and errors[clips["corrupt"]]["detail"]
    assert errors[clips["truncated"]]["error"] == "decode_error"
    assert "of 9.6 s" in errors[clips["truncated"]]["detail"] or "no frames" in errors[clips["truncated"]]["detail"]

    tl = json.loads((out / "gop25.timeline.json").read_text())
    assert tl["video"] == clips["gop25"] and tl["fps"] == 2.0 and tl["model"]["version"] == "local"
    assert tl["model"]["runtime"] == "onnx-int8"  # the INT8 graph scored every frame
    assert np.allclose(tl["cuts"], CUTS, atol=0.25)
    ts = [f["t"] for f in tl["frames"]]
    assert ts == sorted(ts) and len(ts) == len(set(ts)) >= 19 + len(CUTS) - 1
    assert {f["t"] for f in tl["frames"] if f["kind"] == "keyframe"} == set(tl["cuts"])
    for f in tl["frames"]:
        assert f["label"] in tl["classes"] and sum(f["probs"].values()) == pytest.approx(1.0, abs=1e-4)
    segs = tl["segments"]
    assert segs[0]["start"] == 0.0 and segs[-1]["end"] == pytest.approx(tl["duration"], abs=1e-3)
    assert all(a["end"] == b["start"] and a["label"] != b["label"] for a, b in zip(segs, segs[1:]))
    assert all(0.0 <= s["score"] <= 1.0 for s in segs)
    # the segments as span lines that preprocessing reads back as labels: one video, one span each
    from flows.ingest.inputs import discover
    from flows.ingest.spans import spans_of

    lines = [json.loads(x) for x in (tmp_path / "spans.jsonl").read_text().splitlines()]
    assert [(x["start"], x["end"], x["label"]) for x in lines] == [(s["start"], s["end"], s["label"]) for s in segs]
    (item,) = discover(tmp_path / "spans.jsonl", tuple(tl["classes"]), set())
    assert item["path"] == clips["gop25"] and not item["reject"]
    assert [(sp["start"], sp["label_name"]) for sp in spans_of(item)] == [(s["start"], s["label"]) for s in segs]
    rows = list(csv.DictReader(open(out / "gop25.timeline.csv")))
    assert [float(r["t"]) for r in rows] == ts
    assert (out / "gop25.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    entry = summary["videos"][0]
    wanted = [s for s in segs if s["label"] == CLASSES[0]]
    assert (entry["reel"] is None) == (not wanted) and "reel_error" not in entry
    # the reel of the first segment's label, through the same call the command makes
    label = segs[0]["label"]
    res = make_reel(clips["gop25"], segs, label, out / "first.reel.mp4", overlay=True)
    want = sum(s["end"] - s["start"] for s in segs if s["label"] == label)
    assert res["reel"] and probe(res["reel"]).duration == pytest.approx(want, abs=0.15)

    # a pool that cannot fit the cluster is refused up front (Ray Data would wait forever)
    with pytest.raises(ConfigError, match="reserves up to"):
        main([clips["gop25"], "--output", str(tmp_path / "big"), "--model", str(trained["model"]), "actor_cpus=64"])
    # nothing readable: exit status 1, still a summary
    assert main([clips["corrupt"], "--output", str(tmp_path / "bad"), "--model", str(trained["model"]), *SMALL]) == 1
    assert json.loads((tmp_path / "bad" / "scan.json").read_text())["videos"] == []


def test_a_pool_that_other_work_leaves_no_room_for_is_refused(ray_session):
    import ray

    from serve.offline.batch import check_budget

    free = ray.available_resources().get("CPU", 0.0)
    hold = ray.remote(num_cpus=free - 0.5)(type("Hold", (), {"ping": lambda self: 1})).remote()
    try:
        ray.get(hold.ping.remote())  # placed: it holds all but half a CPU
        check_budget(0.4, "small", wait_s=1.0)
        with pytest.raises(ConfigError, match=r"reserves up to 1 CPUs but only 0.5 of the cluster's .* are free"):
            check_budget(1.0, "sift scan", wait_s=1.0)
    finally:
        ray.kill(hold)
