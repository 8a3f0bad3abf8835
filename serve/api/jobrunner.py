"""Runs queued jobs in the ingress replica: claim from SQLite, preprocess + batched model, store.

A thread per ingress replica claims jobs atomically (several replicas can share the DB), works
through each job's items concurrently via the same deployment handles as the synchronous API (so
job items join the same model batches), heartbeats its lease and stores results as they come.
After a crash or restart, a job whose lease expired is claimed again and finished.
"""
from __future__ import annotations

import base64
import os
import socket
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from serve.api.jobs import JobStore


def jobs_db(cfg) -> Path:
    if cfg.jobs_db:
        return Path(cfg.jobs_db)
    from train.config import state_dir

    home = state_dir()
    home.mkdir(parents=True, exist_ok=True)
    return home / "jobs.db"


class JobRunner:
    def __init__(self, api, cfg, lease_s: float = 30.0):
        self.api, self.cfg, self.lease_s = api, cfg, lease_s
        self.store = JobStore(jobs_db(cfg))
        self.worker = f"{socket.gethostname()}:{os.getpid()}"
        self.store.requeue_stale()
        self.pool = ThreadPoolExecutor(cfg.job_concurrency, thread_name_prefix="sift-job-item")
        self.stopped = False

    def submit(self, payload) -> str:
        items = [{"name": name, "image_b64": base64.b64encode(data).decode()} for name, data in payload.items]
        return self.store.submit(items, {"tiles": payload.tiles, "tile_agg": payload.tile_agg})

    def run_forever(self) -> None:
        while not self.stopped:
            try:
                job = self.store.claim(self.worker, lease_s=self.lease_s)
            except Exception:  # a locked or briefly unavailable DB: try again shortly
                job = None
            if job is None:
                time.sleep(0.25)
                continue
            try:
                self.process(job)
            except Exception as exc:  # the job fails with a reason; the runner lives on
                self.store.fail(job["id"], self.worker, f"{type(exc).__name__}: {exc}", retry=True)

    def _item(self, item: dict, options: dict) -> dict:
        from serve.predictor import ApiError

        data = base64.b64decode(item["image_b64"])
        try:
            info = self.api._info or self.api.model.info.remote().result()
            tiles = options.get("tiles", 1)
            edge = info["tile_edge"] if tiles == 5 else info["short_edge"]
            res = self.api.pre.classify.remote(data, edge, tiles, options.get("tile_agg", "mean")).result()
            if "error" in res:
                return {"name": item["name"], "status": res["status"], "error": res["error"]}
            return {"name": item["name"], **res}
        except ApiError as exc:
            return {"name": item["name"], "status": exc.status, **exc.body()}

    def process(self, job: dict) -> None:
        done = set(i for i, r in enumerate(self.store.get(job["id"])["results"]) if r is not None)
        todo = [(i, it) for i, it in enumerate(job["items"]) if i not in done]  # resume after a restart
        futures = {i: self.pool.submit(self._item, it, job["options"] or {}) for i, it in todo}
        last_beat = time.time()
        for i, fut in futures.items():
            self.store.put_results(job["id"], [(i, fut.result())])
            if time.time() - last_beat > self.lease_s / 3:
                self.store.heartbeat(job["id"], self.worker, self.lease_s)
                last_beat = time.time()
        self.store.complete(job["id"], self.worker)
