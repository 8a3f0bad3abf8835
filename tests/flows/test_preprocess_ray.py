"""The whole preprocessing flow on a real Ray, on a generated corpus."""
import json

import pyarrow.parquet as pq
import pytest

from flows.config import load_preprocess
from flows.corpus import make_corpus
from flows.preprocess import run


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
    assert seen == inputs and m["inputs"] == len(inputs)
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
    assert json.loads((out / "manifest.json").read_text())["classes"] == ["BAD", "NEUTRAL", "GOOD"]
    assert not (out / "_staging").exists()
    print(json.dumps({k: m[k] for k in ("timings", "throughput", "actor_pool")})[:600])
