"""JobStore invariants: lifecycle, restart recovery, leases, retries, atomic claims across threads/processes."""
from __future__ import annotations

import multiprocessing as mp
import sqlite3
import threading
import time

import pytest

from serve.api.jobs import JobStore


class Clock:
    """A hand-driven clock so lease expiry needs no sleeping."""

    def __init__(self, t: float = 1000.0):
        self.t = t

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def clock():
    return Clock()


@pytest.fixture
def store(tmp_path, clock):
    s = JobStore(tmp_path / "jobs.db", clock=clock)
    yield s
    s.close()


def items(n):
    return [{"name": f"x{i}.jpg", "data_b64": "AAAA"} for i in range(n)]


def test_lifecycle_results_in_item_order(store):
    job_id = store.submit(items(3), {"top_k": 2})
    assert len(job_id) == 32 and job_id.isalnum()
    got = store.get(job_id)
    assert got["status"] == "queued" and got["n_items"] == 3 and got["n_done"] == 0
    assert got["results"] == [None, None, None] and got["options"] == {"top_k": 2} and got["attempts"] == 0

    job = store.claim("w1")
    assert job["id"] == job_id and job["items"] == items(3) and job["attempts"] == 1 and job["done"] == []
    assert store.claim("w2") is None  # claimed once only
    assert store.get(job_id)["status"] == "running"

    store.put_results(job_id, [(2, {"label": "c"}), (0, {"label": "a"})])
    assert store.get(job_id)["n_done"] == 2
    store.put_results(job_id, [(1, {"label": "b"}), (0, {"label": "a2"})])  # re-processing overwrites
    with pytest.raises(ValueError):
        store.put_results(job_id, [(1, {"label": "zz"}), (7, {"label": "?"})])
    assert store.get(job_id)["results"][1] == {"label": "b"}  # the bad batch saved nothing
    assert store.complete(job_id, "w1")
    got = store.get(job_id)
    assert got["status"] == "done" and got["n_done"] == 3 and got["error"] is None
    assert got["results"] == [{"label": "a2"}, {"label": "b"}, {"label": "c"}]


def test_submit_validates_and_unknown_job(store):
    with pytest.raises(ValueError):
        store.submit([])
    with pytest.raises(TypeError):
        store.submit([{"x": object()}])
    assert store.counts()["queued"] == 0  # the bad job left nothing behind
    assert store.get("nope") is None
    assert store.claim("w") is None


def test_claims_oldest_first(store, clock):
    ids = []
    for _ in range(3):
        ids.append(store.submit(items(1)))
        clock.t += 1
    assert [store.claim("w")["id"] for _ in range(3)] == ids


def test_restart_recovers_running_job(tmp_path, clock):
    path = tmp_path / "jobs.db"
    s1 = JobStore(path, clock=clock)
    job_id = s1.submit(items(2), {"k": 1})
    assert s1.claim("w1", lease_s=30)["attempts"] == 1
    s1.put_results(job_id, [(0, {"label": "a"})])
    s1.close()  # the server dies without completing

    s2 = JobStore(path, clock=clock)
    assert s2.get(job_id)["status"] == "running"
    assert s2.requeue_stale() == 0  # lease still valid: the old worker might be alive
    clock.t += 31
    assert s2.requeue_stale() == 1
    assert s2.get(job_id)["status"] == "queued"
    job = s2.claim("w2")
    assert job["id"] == job_id and job["attempts"] == 2 and job["done"] == [0] and job["options"] == {"k": 1}
    assert s2.get(job_id)["results"] == [{"label": "a"}, None]  # results survived the reopen
    assert not s2.complete(job_id, "w1")  # the dead worker's identity no longer owns it
    s2.put_results(job_id, [(1, {"label": "b"})])
    assert s2.complete(job_id, "w2")
    assert s2.get(job_id)["results"] == [{"label": "a"}, {"label": "b"}]
    s2.close()


def test_expired_lease_is_claimed_directly(store, clock):
    job_id = store.submit(items(1))
    store.claim("w1", lease_s=10)
    clock.t += 11
    job = store.claim("w2")
    assert job["id"] == job_id and job["attempts"] == 2


def test_heartbeat_ownership_and_lease_extension(store, clock):
    job_id = store.submit(items(1))
    store.claim("w1", lease_s=10)
    assert not store.heartbeat(job_id, "intruder")
    clock.t += 5
    assert store.heartbeat(job_id, "w1", lease_s=10)  # lease now ends at +15
    clock.t += 7  # +12: past the original lease, within the extended one
    assert store.claim("w2") is None and store.requeue_stale() == 0
    clock.t += 4  # +16
    assert store.claim("w2")["attempts"] == 2
    assert not store.heartbeat(job_id, "w1") and store.heartbeat(job_id, "w2")
    assert store.fail(job_id, "w1", "late") is None and store.get(job_id)["status"] == "running"


def test_fail_retries_until_max_attempts(store):
    job_id = store.submit(items(1))
    for attempt, expect in [(1, "queued"), (2, "queued"), (3, "failed")]:
        job = store.claim("w")
        assert job["attempts"] == attempt
        assert store.fail(job_id, "w", f"boom {attempt}", retry=True, max_attempts=3) == expect
    got = store.get(job_id)
    assert got["status"] == "failed" and got["error"] == "boom 3" and got["attempts"] == 3
    assert store.claim("w") is None

    other = store.submit(items(1))
    store.claim("w")
    assert store.fail(other, "w", "bad input") == "failed"  # no retry: final at once


def test_poison_job_fails_after_max_attempts(store, clock):
    job_id = store.submit(items(1))
    for _ in range(2):
        store.claim("w", lease_s=1, max_attempts=2)
        clock.t += 2  # the worker dies each time
    assert store.claim("w", max_attempts=2) is None
    got = store.get(job_id)
    assert got["status"] == "failed" and "lease expired" in got["error"]


def test_counts_pending_purge(store, clock, tmp_path):
    old_done, queued, new_done, failed = (store.submit(items(2)) for _ in range(4))
    for job_id in (old_done, queued, new_done, failed):  # claim all in submit order (same created time)
        assert store.claim("w", lease_s=1000)["id"] == job_id
    store.complete(old_done, "w")
    store.fail(failed, "w", "x")
    assert store.counts() == {"queued": 0, "running": 2, "done": 1, "failed": 1}
    assert store.pending() == 2
    clock.t += 100
    store.complete(new_done, "w")
    store.fail(queued, "w", "again", retry=True)
    assert store.counts() == {"queued": 1, "running": 0, "done": 2, "failed": 1}
    assert store.pending() == 1

    clock.t += 100
    assert store.purge(150) == 2  # old_done and failed (t=1000); new_done (t=1100) is too recent
    assert store.get(old_done) is None and store.get(failed) is None and store.get(new_done) is not None
    assert store.purge(0) == 1 and store.get(queued)["status"] == "queued"  # unfinished jobs stay
    with sqlite3.connect(tmp_path / "jobs.db") as db:
        assert db.execute("SELECT COUNT(*) FROM items").fetchone()[0] == 2  # only the queued job's items


def _claim_all(store: JobStore, name: str, barrier, out: list) -> None:
    """Claim and complete until the queue is empty, recording each job id taken."""
    barrier.wait()
    while (job := store.claim(name)) is not None:
        out.append(job["id"])
        time.sleep(0.001)  # "work" outside the DB lock, so the claimers interleave as real workers do
        assert store.complete(job["id"], name)


@pytest.mark.parametrize("shared", [True, False], ids=["one-store", "store-per-thread"])
def test_threads_claim_each_job_once(tmp_path, shared):
    path = tmp_path / "jobs.db"
    main = JobStore(path)
    ids = {main.submit(items(1)) for _ in range(60)}
    n = 6
    stores = [main] * n if shared else [JobStore(path) for _ in range(n)]
    barrier, outs = threading.Barrier(n), [[] for _ in range(n)]
    threads = [threading.Thread(target=_claim_all, args=(stores[i], f"t{i}", barrier, outs[i])) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    taken = [j for out in outs for j in out]
    assert len(taken) == len(ids) and set(taken) == ids
    assert main.counts()["done"] == len(ids)
    for s in set(stores) | {main}:
        s.close()


def _process_worker(path: str, name: str, barrier, queue) -> None:
    """Child process: its own JobStore on the shared file, claiming until empty."""
    out: list = []
    with JobStore(path) as store:
        _claim_all(store, name, barrier, out)
    queue.put(out)


def test_processes_claim_each_job_once(tmp_path):
    path = str(tmp_path / "jobs.db")
    with JobStore(path) as store:
        ids = {store.submit(items(1)) for _ in range(40)}
    ctx = mp.get_context("spawn")
    barrier, queue = ctx.Barrier(2), ctx.Queue()
    procs = [ctx.Process(target=_process_worker, args=(path, f"p{i}", barrier, queue)) for i in range(2)]
    for p in procs:
        p.start()
    outs = [queue.get(timeout=60) for _ in procs]
    for p in procs:
        p.join(30)
        assert p.exitcode == 0
    taken = [j for out in outs for j in out]
    assert len(taken) == len(ids) and set(taken) == ids
    with JobStore(path) as store:
        assert store.counts()["done"] == len(ids) and store.pending() == 0
