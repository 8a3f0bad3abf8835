"""A persistent job queue in SQLite for ``POST /v1/jobs``: survives restarts, shared by replicas.

Jobs live in ``jobs`` (one row each: status, lease, attempts) and their items in ``items`` (one row per
item, holding its payload and, once processed, its result), so saving a result rewrites one small row
rather than a job-sized blob.

Threading model: one connection per ``JobStore`` guarded by a lock; calls from threads in one process are
serialized (each is a few milliseconds of SQLite work). Several processes/replicas open their own
``JobStore`` on the same file; SQLite's file locking plus ``BEGIN IMMEDIATE`` make claims atomic across
them (WAL lets readers proceed while one writer claims).

Restart: nothing lives in memory. A job a dead worker held stays ``running`` until its lease expires;
then ``claim`` takes it again (``attempts`` + 1) and ``requeue_stale`` puts it back to ``queued``.
Results already saved survive, and ``claim`` lists them in ``done`` so a worker can skip those items.
"""
from __future__ import annotations

import contextlib
import json
import sqlite3
import threading
import time
import uuid
from pathlib import Path
from typing import Callable, Iterator

STATUSES = ("queued", "running", "done", "failed")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY, status TEXT NOT NULL, created REAL NOT NULL, updated REAL NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0, worker TEXT, lease_until REAL, error TEXT,
    options TEXT NOT NULL, n_items INTEGER NOT NULL);
CREATE INDEX IF NOT EXISTS jobs_status_created ON jobs (status, created);
CREATE TABLE IF NOT EXISTS items (
    job_id TEXT NOT NULL, idx INTEGER NOT NULL, payload TEXT NOT NULL, result TEXT,
    PRIMARY KEY (job_id, idx)) WITHOUT ROWID;
"""


class JobStore:
    """Durable job queue: submit / claim (leased) / heartbeat / put_results / complete / fail / get."""

    def __init__(self, path: str | Path, clock: Callable[[], float] = time.time, busy_timeout_s: float = 30.0,
                 synchronous: str = "FULL"):
        """Open (creating if missing) the DB at ``path``; ``clock`` is injectable so tests can skip time.

        ``synchronous="FULL"`` fsyncs every commit, so a job answered with 202 survives even a power
        loss (~5 ms a commit on a plain disk); ``"NORMAL"`` is several times faster and still survives
        any process crash or restart, losing only the last commits on an OS crash.
        """
        if synchronous.upper() not in ("NORMAL", "FULL", "EXTRA"):
            raise ValueError(f"synchronous must be NORMAL, FULL or EXTRA, not {synchronous!r}")
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._clock = clock
        self._lock = threading.RLock()
        # autocommit mode: we issue BEGIN/COMMIT ourselves so claims can use BEGIN IMMEDIATE;
        # check_same_thread=False because the lock, not thread affinity, guards the connection.
        conn = sqlite3.connect(str(self.path), isolation_level=None, check_same_thread=False,
                               timeout=busy_timeout_s)
        self._conn: sqlite3.Connection | None = conn
        try:
            # busy_timeout first: switching to WAL needs a lock another process may be holding.
            conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout_s * 1000)}")
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute(f"PRAGMA synchronous = {synchronous.upper()}")
            with self._tx() as c:
                for stmt in filter(str.strip, _SCHEMA.split(";")):
                    c.execute(stmt)
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        """Close the connection; jobs in flight stay as they are in the DB (picked up after their lease)."""
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    def __enter__(self) -> JobStore:
        """Use as ``with JobStore(path) as store:``."""
        return self

    def __exit__(self, *exc) -> None:
        """Close on leaving the block."""
        self.close()

    @contextlib.contextmanager
    def _tx(self, mode: str = "IMMEDIATE") -> Iterator[sqlite3.Connection]:
        """One transaction under the lock; IMMEDIATE takes the write lock up front (no upgrade races)."""
        with self._lock:
            if self._conn is None:
                raise RuntimeError(f"JobStore({self.path}) is closed")
            conn = self._conn
            conn.execute(f"BEGIN {mode}")
            try:
                yield conn
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:  # also when COMMIT itself failed: never leave one open
                    conn.execute("ROLLBACK")
                raise

    def submit(self, items: list[dict], options: dict | None = None) -> str:
        """Store a new ``queued`` job with one row per item; returns its id (uuid4 hex, URL-safe)."""
        if not isinstance(items, list) or not items:
            raise ValueError("a job needs a non-empty list of items")
        job_id = uuid.uuid4().hex
        # serialize before the transaction so a bad item never leaves a half-written job
        payloads = [(job_id, i, json.dumps(item)) for i, item in enumerate(items)]
        opts = json.dumps(options or {})
        with self._tx() as c:
            now = self._clock()
            c.execute("INSERT INTO jobs (id, status, created, updated, options, n_items) VALUES (?,?,?,?,?,?)",
                      (job_id, "queued", now, now, opts, len(items)))
            c.executemany("INSERT INTO items (job_id, idx, payload) VALUES (?,?,?)", payloads)
        return job_id

    def claim(self, worker: str, lease_s: float = 60.0, max_attempts: int | None = None) -> dict | None:
        """Atomically take the oldest queued job (or a running one whose lease expired) for ``worker``.

        Returns ``{"id", "items", "options", "attempts", "done"}`` (``done``: indices that already have
        results from an earlier attempt) or None. With ``max_attempts``, an expired job that already had
        that many attempts is marked failed instead: an item that kills its worker must not loop forever.
        """
        with self._tx() as c:
            now = self._clock()
            if max_attempts is not None:
                self._fail_exhausted(c, now, max_attempts)
            row = c.execute(
                "SELECT id, options, attempts FROM jobs WHERE status = 'queued' OR "
                "(status = 'running' AND lease_until < ?) ORDER BY created, rowid LIMIT 1", (now,)).fetchone()
            if row is None:
                return None
            job_id, opts, attempts = row
            c.execute("UPDATE jobs SET status='running', worker=?, lease_until=?, attempts=?, updated=? "
                      "WHERE id=?", (worker, now + lease_s, attempts + 1, now, job_id))
            rows = c.execute("SELECT idx, payload, result IS NOT NULL FROM items WHERE job_id=? ORDER BY idx",
                             (job_id,)).fetchall()
        return {"id": job_id, "items": [json.loads(p) for _, p, _ in rows], "options": json.loads(opts),
                "attempts": attempts + 1, "done": [i for i, _, has in rows if has]}

    @staticmethod
    def _fail_exhausted(c: sqlite3.Connection, now: float, max_attempts: int) -> int:
        """Mark expired running jobs that used up their attempts as failed; returns how many."""
        return c.execute(
            "UPDATE jobs SET status='failed', error=?, worker=NULL, lease_until=NULL, updated=? "
            "WHERE status='running' AND lease_until < ? AND attempts >= ?",
            (f"worker lost {max_attempts} times (lease expired)", now, now, max_attempts)).rowcount

    def heartbeat(self, job_id: str, worker: str, lease_s: float = 60.0) -> bool:
        """Extend the lease to now + ``lease_s`` if ``worker`` still owns the running job."""
        with self._tx() as c:
            now = self._clock()
            cur = c.execute("UPDATE jobs SET lease_until=?, updated=? WHERE id=? AND worker=? AND status='running'",
                            (now + lease_s, now, job_id, worker))
            return cur.rowcount == 1

    def put_results(self, job_id: str, results: list[tuple[int, dict]]) -> None:
        """Save per-item results; re-saving an index overwrites it (idempotent on re-processing).

        Ownership is not checked: a worker that lost its lease writes the same results a new owner
        would, so letting it finish is harmless. An unknown job or index raises ValueError (nothing saved).
        """
        rows = [(json.dumps(res), job_id, int(idx)) for idx, res in results]
        with self._tx() as c:
            if c.executemany("UPDATE items SET result=? WHERE job_id=? AND idx=?", rows).rowcount != len(rows):
                raise ValueError(f"job {job_id} has no such item among {[r[2] for r in rows]}")
            c.execute("UPDATE jobs SET updated=? WHERE id=?", (self._clock(), job_id))

    def complete(self, job_id: str, worker: str) -> bool:
        """Mark the job done; False if ``worker`` no longer owns it (its lease went to someone else)."""
        with self._tx() as c:
            cur = c.execute("UPDATE jobs SET status='done', error=NULL, lease_until=NULL, updated=? "
                            "WHERE id=? AND worker=? AND status='running'", (self._clock(), job_id, worker))
            return cur.rowcount == 1

    def fail(self, job_id: str, worker: str, error: str, retry: bool = False, max_attempts: int = 3) -> str | None:
        """Fail the job (or re-queue it when ``retry`` and attempts < ``max_attempts``).

        Returns the new status (``queued`` or ``failed``), or None if ``worker`` does not own the job.
        """
        with self._tx() as c:
            row = c.execute("SELECT attempts FROM jobs WHERE id=? AND worker=? AND status='running'",
                            (job_id, worker)).fetchone()
            if row is None:
                return None
            status = "queued" if retry and row[0] < max_attempts else "failed"
            c.execute("UPDATE jobs SET status=?, error=?, worker=NULL, lease_until=NULL, updated=? WHERE id=?",
                      (status, str(error), self._clock(), job_id))
            return status

    def get(self, job_id: str) -> dict | None:
        """The job's status and per-item results (None where not yet processed), or None if unknown."""
        with self._tx("DEFERRED") as c:  # one snapshot for both reads
            row = c.execute("SELECT status, created, updated, attempts, n_items, error, options FROM jobs "
                            "WHERE id=?", (job_id,)).fetchone()
            if row is None:
                return None
            results = [r for (r,) in c.execute("SELECT result FROM items WHERE job_id=? ORDER BY idx", (job_id,))]
        status, created, updated, attempts, n_items, error, opts = row
        return {"id": job_id, "status": status, "created": created, "updated": updated, "attempts": attempts,
                "n_items": n_items, "n_done": sum(r is not None for r in results), "error": error,
                "results": [None if r is None else json.loads(r) for r in results], "options": json.loads(opts)}

    def counts(self) -> dict[str, int]:
        """Number of jobs per status (every status present, zero if none)."""
        with self._tx("DEFERRED") as c:
            found = dict(c.execute("SELECT status, COUNT(*) FROM jobs GROUP BY status").fetchall())
        return {s: found.get(s, 0) for s in STATUSES}

    def pending(self) -> int:
        """Jobs still waiting or in progress (queued + running): the API's backpressure signal."""
        with self._tx("DEFERRED") as c:
            return c.execute("SELECT COUNT(*) FROM jobs WHERE status IN ('queued','running')").fetchone()[0]

    def requeue_stale(self, max_attempts: int | None = None) -> int:
        """Put running jobs whose lease expired back to queued (on startup); returns how many.

        With ``max_attempts``, those that already used that many attempts are failed instead.
        """
        with self._tx() as c:
            now = self._clock()
            if max_attempts is not None:
                self._fail_exhausted(c, now, max_attempts)
            return c.execute("UPDATE jobs SET status='queued', worker=NULL, lease_until=NULL, updated=? "
                             "WHERE status='running' AND lease_until < ?", (now, now)).rowcount

    def purge(self, older_than_s: float) -> int:
        """Delete finished (done/failed) jobs last updated more than ``older_than_s`` ago; returns how many."""
        with self._tx() as c:
            cutoff = self._clock() - older_than_s
            old = "SELECT id FROM jobs WHERE status IN ('done','failed') AND updated < ?"
            c.execute(f"DELETE FROM items WHERE job_id IN ({old})", (cutoff,))
            return c.execute(f"DELETE FROM jobs WHERE id IN ({old})", (cutoff,)).rowcount
