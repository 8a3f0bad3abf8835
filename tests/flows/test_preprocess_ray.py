"""The whole preprocessing flow on a real Ray, on a generated corpus."""
import json

import pyarrow.parquet as pq
import pytest

from flows.ingest.config import load_preprocess
from flows.corpus import make_corpus
from flows.ingest.preprocess import run


@pytest.mark.slow
def test_preprocess_flow_end_to_end(tmp_path, ray_session):
    corpus = tmp_path / "corpus"
    make_corpus(corpus, images=60, videos=3, seed=3, workers=1, progress=False)
    truth = [json.loads(l) for l in (corpus / "_meta" / "truth.jsonl").read_text().splitlines()]
    # an exact duplicate (same bytes, other folder) and a near duplicate (re-encoded) of one image
    src = next(t for t in truth if t["kind"] == "image" and t["format"] == "jpeg")
    data = (corpus / src["path"]).read_bytes()
    (corpus / "unlabeled" / "copy_of_first.jpg").write_bytes(data)
    from PIL import Image
    Image.open(corpus / src["path"]).convert("RGB").save(corpus / "unlabeled" / "near.jpg", quality=70)

    cfg = load_preprocess(None, ["video_keyframes=3", "min_actors=1", "max_actors=2", "batch_size=8"])
    m = run(corpus, tmp_path / "out", cfg)

    out = tmp_path / "out"
    data = pq.read_table(out / "data").to_pandas()
    rejects = pq.read_table(out / "rejects.parquet").to_pandas()
    dups = pq.read_table(out / "duplicates.parquet").to_pandas()
    inputs = {str(corpus / t["path"]) for t in truth} | {str(corpus / "unlabeled" / "copy_of_first.jpg"),
                                                         str(corpus / "unlabeled" / "near.jpg")}
    # nothing lost: every input is in the data, the rejects or the duplicates
    seen = set(data["path"]) | set(rejects["path"]) | set(dups["path"])
    assert seen == inputs and m["inputs"] == m["entries"] == len(inputs)
    # rejects carry the reasons the corpus expects
    expect = {str(corpus / t["path"]): t["expect_reject"] for t in truth if t.get("expect_reject")}
    got = dict(zip(rejects["path"], rejects["reason"]))
    for path, reason in expect.items():
        ok = {reason, "video_error"} if path.endswith((".mp4", ".webm")) else {reason}
        assert got.get(path) in ok, path
    assert set(got) == set(expect)
    # duplicates: the byte-identical copy is an exact dup, the re-encode a near dup; labeled copy kept
    reasons = dict(zip(dups["path"], dups["reason"]))
    assert reasons[str(corpus / "unlabeled" / "copy_of_first.jpg")] == "exact"
    assert reasons[str(corpus / "unlabeled" / "near.jpg")] == "near"
    # group-aware split: one split per group; all frames of a video share a group
    assert (data.groupby("group_id")["split"].nunique() == 1).all()
    assert (data.groupby("path")["group_id"].nunique() == 1).all()
    assert set(data["split"]) <= {"train", "val", "test"}
    # schema, budget and sizes
    assert list(data.columns)[:3] == ["id", "group_id", "kind"]
    assert (data["bytes"] <= cfg.byte_budget).all() and (data[["width", "height"]].min(axis=1) <= 448).all()
    assert set(data["kind"]) == {"image", "thumbnail", "frame"}
    # manifest
    assert m["rows"] == len(data) and m["rejects"]["total"] == len(rejects)
    assert sum(m["by_split"].values()) == len(data)
    assert m["actor_pool"]["max_size"] >= 1 and m["actor_pool"]["sizes_seen"]
    assert json.loads((out / "manifest.json").read_text())["classes"] == ["BAD", "GOOD", "NEUTRAL"]  # the data says, sorted
    assert not (out / "_staging").exists()
    print(json.dumps({k: m[k] for k in ("timings", "throughput", "actor_pool")})[:600])


@pytest.mark.slow
def test_span_labels_through_the_ray_flow(tmp_path, ray_session):
    """Spans of one video, two labels: frames of both labels, all in the video's one split; the
    conflicting spans and a corrupt video end in rejects, by line."""
    import subprocess

    ins = [a for c in ("red", "blue") for a in ("-f", "lavfi", "-i", f"color=c={c}:s=160x120:d=3:r=25")]
    subprocess.run(["ffmpeg", "-nostdin", "-loglevel", "error", "-y", *ins, "-filter_complex",
                    "[0][1]concat=n=2:v=1[v]", "-map", "[v]", "-c:v", "libx264", "-preset",
                    "ultrafast", "-pix_fmt", "yuv420p", str(tmp_path / "v.mp4")], check=True, timeout=60)
    (tmp_path / "bad.mp4").write_bytes(b"\x00\x00\x00\x18ftypisom" + b"\x01" * 5000)
    lines = [{"path": "v.mp4", "start": 0, "end": 2.5, "label": "BAD"},
             {"path": "v.mp4", "start": 3, "end": 4.5, "label": "GOOD"},
             {"path": "v.mp4", "start": 4.5, "end": 6, "label": "GOOD"},
             {"path": "v.mp4", "start": 5, "end": 6, "label": "BAD"},  # clashes with 4.5-6 GOOD
             {"path": "bad.mp4", "start": 0, "end": 1, "label": "BAD"}]
    (tmp_path / "m.jsonl").write_text("".join(json.dumps(l) + "\n" for l in lines))
    cfg = load_preprocess(None, ["span_fps=2", "short_edge=64", "batch_size=2"])
    m = run(tmp_path / "m.jsonl", tmp_path / "out", cfg)
    data = pq.read_table(tmp_path / "out" / "data").to_pandas()
    rejects = pq.read_table(tmp_path / "out" / "rejects.parquet").to_pandas()
    assert set(data["kind"]) == {"frame"} and sorted(data["label_name"].unique()) == ["BAD", "GOOD"]
    assert (data["label_name"] == "BAD").sum() == 5  # 0-2.5 s at 2 fps
    assert (data["label_name"] == "GOOD").sum() == 3  # 3-4.5 s
    assert data["group_id"].nunique() == 1 and data["split"].nunique() == 1
    assert sorted(rejects["reason"]) == ["span_conflict", "span_conflict", "video_error"]
    assert m["rejects"]["by_reason"]["span_conflict"] == 2 and m["frames"] == len(data)
    assert m["inputs"] == 2 and m["entries"] == 5  # two videos, five lines
