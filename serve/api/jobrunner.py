"""Runs queued jobs in the ingress replica: claim from SQLite, preprocess + batched model, store.

A thread per ingress replica claims jobs atomically (several replicas can share the DB), works
through each job's items concurrently via the same deployment handles as the synchronous API (so
job items join the same model batches), heartbeats its lease while it waits on items and stores
results as they come. After a crash or restart, a job whose lease expired is claimed again and
finished; one that has cost ``job_max_attempts`` workers is failed with that reason instead of
looping forever.

The loop cannot die quietly: every step (claim, purge, fail) is guarded, the last error and the
time of the last turn are kept for ``/readyz``, and :meth:`JobRunner.ensure_running` (called by
``/readyz`` and before each submit) starts a new thread if the old one ended anyway. Finished jobs
older than ``job_retention_s`` are purged, so payloads do not pile up.
"""
from __future__ import annotations

import base64
import concurrent.futures
import logging
import os
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from flows.core.config import ConfigError, explicit
from serve.api.jobs import JobStore

log = logging.getLogger("sift.jobs")
PURGE_EVERY_S = 600.0


def jobs_db(cfg) -> Path:
    if cfg.jobs_db:
        return Path(cfg.jobs_db)
    from train.config import state_dir

    home = state_dir()
    home.mkdir(parents=True, exist_ok=True)
    return home / "jobs.db"


def check_jobs_db(cfg) -> Path:
    """The queue's file. A default one (not written by the user) was created where the app was built
    (:func:`serve.api.app.resolved`); a replica that does not find it runs on another node, where
    a second, private queue would lose jobs: ConfigError asking for shared storage."""
    path = jobs_db(cfg)
    if "jobs_db" not in explicit(cfg) and cfg.jobs_db and not path.exists():
        raise ConfigError(f"jobs_db {path} does not exist on node {socket.gethostname()}: this replica runs on "
                          "another node than the one the app was built on. On a cluster put the job queue on "
                          "shared storage: jobs_db=/shared/path/jobs.db")
    return path


class JobRunner:
    def __init__(self, api, cfg, lease_s: float | None = None):
        self.api, self.cfg, self.lease_s = api, cfg, lease_s or cfg.job_lease_s
        self.store = JobStore(check_jobs_db(cfg))
        self.worker = f"{socket.gethostname()}:{os.getpid()}"
        self.max_attempts = cfg.job_max_attempts
        self.store.requeue_stale(self.max_attempts)
        self.pool = ThreadPoolExecutor(cfg.job_concurrency, thread_name_prefix="sift-job-item")
        self.stopped = False
        self.thread: threading.Thread | None = None
        self.last_turn = time.time()
        self.last_error: str | None = None
        self.restarts = 0
        self._start_lock = threading.Lock()

    # -- supervision --------------------------------------------------------------------------
    def ensure_running(self) -> bool:
        """Start the loop's thread, or a new one if it ended; True when one is running."""
        with self._start_lock:
            if self.stopped:
                return False
            if self.thread is None or not self.thread.is_alive():
                if self.thread is not None:
                    self.restarts += 1
                    log.error("job runner thread had ended (%s); restarted", self.last_error)
                self.thread = threading.Thread(target=self.run_forever, daemon=True, name="sift-jobs")
                self.thread.start()
            return True

    def health(self) -> dict:
        """For /readyz: is the loop alive and turning, and what went wrong last."""
        alive = self.thread is not None and self.thread.is_alive()
        return {"alive": alive, "seconds_since_turn": round(time.time() - self.last_turn, 1),
                "restarts": self.restarts, "last_error": self.last_error}

    def submit(self, payload) -> str:
        items = [{"name": name, "image_b64": base64.b64encode(data).decode()} for name, data in payload.items]
        return self.store.submit(items, {"tiles": payload.tiles, "tile_agg": payload.tile_agg})

    # -- the loop ----------------------------------------------------------------------------
    def run_forever(self) -> None:
        next_purge = 0.0
        while not self.stopped:
            self.last_turn = time.time()
            job = None
            try:
                if self.last_turn >= next_purge:
                    next_purge = self.last_turn + PURGE_EVERY_S
                    self.store.purge(self.cfg.job_retention_s)
                job = self.store.claim(self.worker, lease_s=self.lease_s, max_attempts=self.max_attempts)
            except Exception as exc:  # a locked or briefly unavailable DB: try again shortly
                self._error("claim", exc)
            if job is None:
                time.sleep(0.25)
                continue
            try:
                self.process(job)
            except Exception as exc:  # the job fails with a reason (or is retried); the runner lives on
                self._error(f"job {job['id']}", exc)
                try:
                    self.store.fail(job["id"], self.worker, f"{type(exc).__name__}: {exc}", retry=True,
                                    max_attempts=self.max_attempts)
                except Exception as exc2:  # not even that: the lease expires and the job is claimed again
                    self._error(f"failing job {job['id']}", exc2)
                    time.sleep(1.0)

    def _error(self, where: str, exc: BaseException) -> None:
        self.last_error = f"{where}: {type(exc).__name__}: {exc}"[:500]
        log.warning("job runner: %s", self.last_error)

    def _item(self, item: dict, options: dict) -> dict:
        from serve.predictor import ApiError

        data = base64.b64decode(item["image_b64"])
        timeout = self.cfg.request_timeout_s
        try:
            info = self.api._info or self.api.model.info.remote().result(timeout_s=timeout)
            tiles = options.get("tiles", 1)
            edge = info["tile_edge"] if tiles == 5 else info["short_edge"]
            res = self.api.pre.classify.remote(data, edge, tiles, options.get("tile_agg", "mean")).result(
                timeout_s=timeout)
            if "error" in res:
                return {"name": item["name"], "status": res["status"], "error": res["error"]}
            return {"name": item["name"], **res}
        except ApiError as exc:
            return {"name": item["name"], "status": exc.status, **exc.body()}
        except TimeoutError:
            return {"name": item["name"], "status": 504,
                    "error": {"code": "timeout", "message": f"no answer within {timeout} s"}}

    def process(self, job: dict) -> None:
        done = set(job.get("done") or ())
        todo = [(i, it) for i, it in enumerate(job["items"]) if i not in done]  # resume after a restart
        futures = {i: self.pool.submit(self._item, it, job["options"] or {}) for i, it in todo}
        last_beat = time.time()
        for i, fut in futures.items():
            while True:  # the lease is renewed while an item is still being worked on, not only between items
                try:
                    res = fut.result(timeout=self.lease_s / 3)
                    break
                except concurrent.futures.TimeoutError:
                    self.store.heartbeat(job["id"], self.worker, self.lease_s)
                    last_beat = time.time()
            self.store.put_results(job["id"], [(i, res)])
            if time.time() - last_beat > self.lease_s / 3:
                self.store.heartbeat(job["id"], self.worker, self.lease_s)
                last_beat = time.time()
        self.store.complete(job["id"], self.worker)
