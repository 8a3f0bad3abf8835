"""serve.api.jobrunner's control loop on a real SQLite queue, without Ray: the deployment handles are
plain callables behind the same ``.remote(...).result(timeout_s=)`` surface the runner uses."""
import base64
import threading
import time

import pytest

from flows.core.config import ConfigError
from serve.api.jobrunner import JobRunner, check_jobs_db
from serve.api.jobs import JobStore
from serve.config import load_serve


class _Response:
    def __init__(self, fn, args):
        self.fn, self.args = fn, args

    def result(self, timeout_s=None):
        return self.fn(*self.args)


class _Handle:
    def __init__(self, fn):
        self.fn = fn

    def remote(self, *args):
        return _Response(self.fn, args)


class _Api:
    """What JobRunner reads of the ingress: model info and the Preprocess handle."""

    def __init__(self, classify):
        self._info = {"short_edge": 32, "tile_edge": 40}
        self.pre = type("Pre", (), {"classify": _Handle(classify)})()


def _items(n):
    return [{"name": f"i{k}", "image_b64": base64.b64encode(b"x%d" % k).decode()} for k in range(n)]


def _cfg(db, *kw):
    return load_serve(None, [f"jobs_db={db}", "job_concurrency=2", *kw])


def _wait(pred, timeout=20.0):
    t0 = time.time()
    while time.time() - t0 < timeout:
        if pred():
            return True
        time.sleep(0.05)
    return False


def test_an_item_slower_than_the_lease_keeps_its_job(tmp_path):
    slow = threading.Event()

    def classify(data, edge, tiles, agg):
        slow.wait(6.0)  # longer than the lease: only heartbeats while waiting keep it
        return {"label": "A", "probs": {"A": 1.0}}

    runner = JobRunner(_Api(classify), _cfg(tmp_path / "j.db"), lease_s=1.5)
    job = runner.store.submit(_items(1))
    rival = JobStore(tmp_path / "j.db")
    try:
        runner.ensure_running()
        assert _wait(lambda: runner.store.get(job)["status"] == "running")
        for _ in range(10):  # 3 s: twice the lease; a rival never gets the job
            assert rival.claim("rival", lease_s=5) is None
            time.sleep(0.3)
        slow.set()
        assert _wait(lambda: runner.store.get(job)["status"] == "done")
        assert runner.store.get(job)["results"][0]["label"] == "A"
    finally:
        runner.stopped = True
        rival.close()


def test_the_loop_survives_a_failing_store_and_is_restarted_if_it_dies(tmp_path, monkeypatch):
    def classify(data, edge, tiles, agg):
        if data == b"x0":
            raise RuntimeError("model blew up")
        return {"label": "A"}

    runner = JobRunner(_Api(classify), _cfg(tmp_path / "j.db", "job_max_attempts=2"), lease_s=1.0)
    real_fail, calls = runner.store.fail, []

    def flaky_fail(*a, **kw):
        calls.append(a)
        if len(calls) == 1:
            raise OSError("disk I/O error")  # the old runner thread died here, silently
        return real_fail(*a, **kw)

    monkeypatch.setattr(runner.store, "fail", flaky_fail)
    bad = runner.store.submit(_items(1))
    good = runner.store.submit(_items(2)[1:])
    try:
        runner.ensure_running()
        assert _wait(lambda: runner.store.get(good)["status"] == "done")
        assert calls and runner.thread.is_alive()  # fail() raised once and the loop went on
        # the failing job: its first fail() raised, so its lease expires and it is claimed again;
        # after job_max_attempts workers it is failed with the reason, not retried forever
        assert _wait(lambda: runner.store.get(bad)["status"] == "failed", timeout=30)
        assert runner.store.get(bad)["attempts"] == 2 and "model blew up" in runner.store.get(bad)["error"]
        # a thread that ended anyway is replaced by the supervisor (/readyz and submit call it)
        runner.stopped = True
        runner.thread.join(5)
        runner.stopped = False
        assert not runner.health()["alive"] and runner.ensure_running() and runner.health()["alive"]
        assert runner.restarts == 1
    finally:
        runner.stopped = True


def test_finished_jobs_are_purged_after_the_retention(tmp_path):
    db = tmp_path / "j.db"
    old = JobStore(db, clock=lambda: time.time() - 3 * 86400)
    gone = old.submit(_items(1))
    old.claim("w")
    old.complete(gone, "w")
    old.close()
    runner = JobRunner(_Api(lambda *a: {"label": "A"}), _cfg(db, "job_retention_s=86400"))
    kept = runner.store.submit(_items(1))
    try:
        runner.ensure_running()
        assert _wait(lambda: runner.store.get(kept)["status"] == "done")
        assert runner.store.get(gone) is None
    finally:
        runner.stopped = True


def test_a_default_queue_missing_on_this_node_is_refused(tmp_path, monkeypatch):
    from flows.core.config import replace

    monkeypatch.setenv("SIFT_HOME", str(tmp_path / "home"))
    cfg = replace(load_serve(None, []), jobs_db=str(tmp_path / "elsewhere" / "jobs.db"))  # filled in, not written
    with pytest.raises(ConfigError, match="shared storage"):
        check_jobs_db(cfg)
    assert check_jobs_db(load_serve(None, [f"jobs_db={tmp_path / 'mine.db'}"])) == tmp_path / "mine.db"
