"""The whole preprocessing flow on a real Ray, on a generated corpus."""
import json

import pyarrow.parquet as pq
import pytest

from flows.ingest.config import load_preprocess
from flows.corpus import make_corpus
from flows.ingest.preprocess import run


@pytest.mark.slow
def test_preprocess_flow_end_to_end(tmp_path, ray_session):
    # the pool can only grow into free CPUs: an earlier test must have given back what it held
    free = ray_session.available_resources().get("CPU", 0)
    assert free >= 1.5, f"Ray CPUs held before this test: {ray_session.available_resources()}"
    corpus = tmp_path / "corpus"
    make_corpus(corpus, images=100, videos=3, seed=3, workers=1, progress=False)
    truth = [json.loads(l) for l in (corpus / "_meta" / "truth.jsonl").read_text().splitlines()]
    # an exact duplicate (same bytes, other folder) and a near duplicate (re-encoded) of one image
    src = next(t for t in truth if t["kind"] == "image" and t["format"] == "jpeg")
    data = (corpus / src["path"]).read_bytes()
    (corpus / "unlabeled" / "copy_of_first.jpg").write_bytes(data)
    from PIL import Image
    Image.open(corpus / src["path"]).convert("RGB").save(corpus / "unlabeled" / "near.jpg", quality=70)

    # 2-item batches: ~37 blocks queue up behind the first actor, and two half-CPU actors fit this
    # 2-CPU Ray beside the writer, so the autoscaling pool has both a reason and room to grow
    cfg = load_preprocess(None, ["video_keyframes=3", "min_actors=1", "max_actors=2", "batch_size=2",
                                 "actor_cpus=0.5"])
    m, started = _watch_actors_during(lambda: run(corpus, tmp_path / "out", cfg), "Preprocessor")

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
    # the pool started at min_actors and grew to max_actors while input was queued: Ray Data started a
    # second actor process. Whether it processes batches before the queue runs dry depends on how long
    # it takes to start (its imports on 2 busy cores can take as long as the rest of the run), so the
    # second one's batches (``batches_per_actor``) are recorded, not asserted
    pool = m["actor_pool"]
    assert len(started) == 2 and pool["timeline"][0][1] == 1 and 1 <= pool["actors"] <= 2, (started, pool)
    assert json.loads((out / "manifest.json").read_text())["classes"] == ["BAD", "GOOD", "NEUTRAL"]  # the data says, sorted
    assert not (out / "_staging").exists() and not (out / "_work").exists()
    print(json.dumps({k: m[k] for k in ("timings", "throughput", "actor_pool")})[:600])

    # a preprocessing actor killed mid-run (SIGKILL, a real process death): Ray Data restarts it and
    # retries its batches; the output is the clean run's, nothing lost or doubled
    killed = _kill_one_actor_during(lambda: run(corpus, tmp_path / "out2", cfg), "Preprocessor")
    assert killed, "no preprocessing actor was seen alive to kill"
    again = pq.read_table(tmp_path / "out2" / "data").to_pandas()
    cols = ["id", "path", "split", "label", "kind"]
    key = lambda df: df[cols].sort_values("id").reset_index(drop=True)
    assert key(again).equals(key(data))
    assert set(pq.read_table(tmp_path / "out2" / "rejects.parquet").column("path").to_pylist()) == set(rejects["path"])


def _actors(class_part: str) -> list[int]:
    """Live Ray actor processes whose title names ``class_part`` (Ray titles its workers
    ``ray::<Class>...``). This session's Ray descends from this process: another Ray on the machine
    is not seen."""
    import os

    import psutil

    found = []
    for proc in psutil.Process(os.getpid()).children(recursive=True):
        try:
            title = " ".join(proc.cmdline())
        except psutil.Error:
            continue
        if title.startswith("ray::") and class_part in title:
            found.append(proc.pid)
    return found


def _watch_actors_during(job, class_part: str):
    """``(job(), pids)``: the actor processes naming ``class_part`` that were alive while it ran."""
    import threading
    import time

    before, seen, done = set(_actors(class_part)), set(), threading.Event()

    def watch():
        while not done.is_set():
            seen.update(_actors(class_part))
            time.sleep(0.1)

    t = threading.Thread(target=watch, daemon=True)
    t.start()
    try:
        out = job()
    finally:
        done.set()
        t.join(10)
    return out, seen - before


def _kill_one_actor_during(job, class_part: str) -> list[int]:
    """Run ``job`` while a thread SIGKILLs the first live Ray actor process whose title names
    ``class_part``."""
    import os
    import signal
    import threading
    import time

    killed, done = [], threading.Event()

    # an earlier run's actor may still be exiting when this job starts: it is not this job's
    before = set(_actors(class_part))

    def killer():
        while not done.is_set() and not killed:
            for pid in _actors(class_part):
                if pid in before:
                    continue
                time.sleep(0.3)  # let it take a batch first
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    continue  # it ended by itself meanwhile: look for the next one
                killed.append(pid)
                break
            time.sleep(0.05)

    t = threading.Thread(target=killer, daemon=True)
    t.start()
    try:
        job()
    finally:
        done.set()
        t.join(10)
    return killed
