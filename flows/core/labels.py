"""The label store: human corrections and feed reports in one SQLite file (``$SIFT_HOME/labels.db``).

Why a separate store instead of rewriting the preprocessed parquet: a correction must survive the
next ``sift preprocess`` (item ids are content hashes, so they are stable across re-ingestion), must
say who changed what when and from which label (label noise is argued about, not just fixed), and
must be undoable without losing the history. So nothing is ever deleted: every review is a row in
``corrections`` (a new label, or a ``skip`` that records "seen, not sure"), an undo only marks its row
undone, and the current label of an item is its latest live label row ("latest wins").
``sift train`` reads :meth:`LabelStore.latest_rows` and applies it to the items it trains on.

``reports`` holds "wrong verdict" clicks from the filtered feed: they are *not* labels (the feed user
saw a verdict, not the item's training label), they queue the item for review; the review that
follows resolves them and is recorded with ``source='feed'``.

Pure sqlite3 (WAL, so the review server can write while a training run reads); no Ray, no train
import; nothing happens at import time.
"""
from __future__ import annotations

import os
import sqlite3
import time
from contextlib import closing, contextmanager
from pathlib import Path
from typing import Iterable, Iterator

from flows.core.errors import SiftError

SKIP = "skip"
SOURCES = ("review", "feed")

SCHEMA = """
CREATE TABLE IF NOT EXISTS corrections (
  seq INTEGER PRIMARY KEY AUTOINCREMENT,
  item_id TEXT NOT NULL,
  path TEXT NOT NULL DEFAULT '',
  group_id TEXT NOT NULL DEFAULT '',
  action TEXT NOT NULL CHECK (action IN ('label', 'skip')),
  label TEXT,                       -- the new class name; NULL for a skip
  previous TEXT NOT NULL DEFAULT '',-- the label the item had when it was reviewed
  who TEXT NOT NULL,
  at REAL NOT NULL,                 -- unix seconds
  source TEXT NOT NULL CHECK (source IN ('review', 'feed')),
  strategy TEXT NOT NULL DEFAULT '',-- the queue the item was reviewed from
  note TEXT NOT NULL DEFAULT '',
  undone_at REAL,                   -- set by undo; the row stays as history
  undone_by TEXT
);
CREATE INDEX IF NOT EXISTS corrections_item ON corrections (item_id, seq);
CREATE TABLE IF NOT EXISTS reports (
  seq INTEGER PRIMARY KEY AUTOINCREMENT,
  item_id TEXT NOT NULL,
  url TEXT NOT NULL DEFAULT '',
  page TEXT NOT NULL DEFAULT '',
  verdict TEXT NOT NULL DEFAULT '', -- the label the model gave in the feed
  suggested TEXT NOT NULL DEFAULT '',
  who TEXT NOT NULL,
  at REAL NOT NULL,
  status TEXT NOT NULL DEFAULT 'open' CHECK (status IN ('open', 'resolved')),
  resolved_by INTEGER,              -- corrections.seq of the review that resolved it
  note TEXT NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS reports_item ON reports (item_id);
"""


class LabelError(SiftError, ValueError):
    """A correction or report the store refuses (unknown label, empty id, ...); the message says why."""

    reason = "bad_label"


def default_path() -> Path:
    """``$SIFT_HOME/labels.db`` (the state dir of every stage)."""
    from flows.core.runtime import state_dir

    return state_dir() / "labels.db"


def default_user() -> str:
    return os.environ.get("USER") or os.environ.get("USERNAME") or "unknown"


class LabelStore:
    """One SQLite file; a short-lived connection per call, so one store object is safe across the
    threads of a web server. ``classes`` is the label set writes are validated against."""

    def __init__(self, path: str | Path | None = None, classes: Iterable[str] = ()):
        self.path = Path(path) if path else default_path()
        self.classes = tuple(classes)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._db() as con:
            con.execute("PRAGMA journal_mode=WAL")
            con.executescript(SCHEMA)

    @contextmanager
    def _db(self) -> Iterator[sqlite3.Connection]:
        with closing(sqlite3.connect(self.path, timeout=30)) as con:
            con.row_factory = sqlite3.Row
            con.execute("PRAGMA busy_timeout=30000")
            with con:  # one transaction: committed on success, rolled back on error
                yield con

    # ------------------------------------------------------------------ writes

    def add_correction(self, item_id: str, label: str, *, who: str = "", previous: str = "", path: str = "",
                       group_id: str = "", source: str = "review", strategy: str = "", note: str = "",
                       resolves: Iterable[int] = (), at: float | None = None) -> dict:
        """Record a review of one item: ``label`` (a class) or ``"skip"``.

        ``previous`` is the label the reviewer saw (the data's); if the store already holds a live
        label for the item, that one is the item's real current label and is recorded instead.
        ``resolves``: report ``seq``s this review answers (they become ``resolved``).
        """
        item_id = str(item_id or "").strip()
        if not item_id:
            raise LabelError("item id is empty")
        if not self.classes:
            raise LabelError("the store was opened without a class list: cannot validate labels")
        if label != SKIP and label not in self.classes:
            raise LabelError(f"unknown label {label!r}: expected one of {list(self.classes)} or {SKIP!r}")
        if source not in SOURCES:
            raise LabelError(f"source must be one of {list(SOURCES)}, got {source!r}")
        now = time.time() if at is None else float(at)
        with self._db() as con:
            live = con.execute("SELECT label FROM corrections WHERE item_id = ? AND action = 'label' AND "
                               "undone_at IS NULL ORDER BY seq DESC LIMIT 1", (item_id,)).fetchone()
            prev = live["label"] if live else str(previous or "")
            cur = con.execute(
                "INSERT INTO corrections (item_id, path, group_id, action, label, previous, who, at, source,"
                " strategy, note) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (item_id, str(path or ""), str(group_id or ""), "skip" if label == SKIP else "label",
                 None if label == SKIP else label, prev, who or default_user(), now, source, strategy, note))
            seq = cur.lastrowid
            ids = [int(r) for r in resolves]
            if ids:
                con.execute(f"UPDATE reports SET status = 'resolved', resolved_by = ? WHERE status = 'open' "
                            f"AND seq IN ({','.join('?' * len(ids))})", (seq, *ids))
            return dict(con.execute("SELECT * FROM corrections WHERE seq = ?", (seq,)).fetchone())

    def undo(self, seq: int | None = None, *, who: str = "") -> dict | None:
        """Undo review ``seq`` (default: the latest live one by ``who``). The row stays, marked undone;
        reports it resolved are open again. Returns the undone row, or None when there is none."""
        who = who or default_user()
        with self._db() as con:
            # the read belongs to the write: two undos at once must not both see the row live
            con.execute("BEGIN IMMEDIATE")
            if seq is None:
                row = con.execute("SELECT * FROM corrections WHERE who = ? AND undone_at IS NULL "
                                  "ORDER BY seq DESC LIMIT 1", (who,)).fetchone()
            else:
                row = con.execute("SELECT * FROM corrections WHERE seq = ? AND undone_at IS NULL",
                                  (int(seq),)).fetchone()
            if row is None:
                return None
            now = time.time()
            if con.execute("UPDATE corrections SET undone_at = ?, undone_by = ? WHERE seq = ? AND undone_at IS NULL",
                           (now, who, row["seq"])).rowcount != 1:
                return None
            con.execute("UPDATE reports SET status = 'open', resolved_by = NULL WHERE resolved_by = ?", (row["seq"],))
            return {**dict(row), "undone_at": now, "undone_by": who}

    def add_report(self, item_id: str, *, url: str = "", page: str = "", verdict: str = "", suggested: str = "",
                   who: str = "", note: str = "") -> dict:
        """A "wrong verdict" click from the feed: queues the item for review (not a label)."""
        item_id = str(item_id or "").strip()
        if not item_id:
            raise LabelError("item id is empty")
        if suggested and self.classes and suggested not in self.classes:
            raise LabelError(f"unknown suggested label {suggested!r}: expected one of {list(self.classes)}")
        with self._db() as con:
            cur = con.execute("INSERT INTO reports (item_id, url, page, verdict, suggested, who, at, note) "
                              "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                              (item_id, str(url or ""), str(page or ""), str(verdict or ""), str(suggested or ""),
                               who or default_user(), time.time(), str(note or "")))
            return dict(con.execute("SELECT * FROM reports WHERE seq = ?", (cur.lastrowid,)).fetchone())

    # ------------------------------------------------------------------ reads

    def history(self, item_id: str | None = None) -> list[dict]:
        """Every review row (undone ones too), oldest first."""
        q, args = "SELECT * FROM corrections", ()
        if item_id is not None:
            q, args = q + " WHERE item_id = ?", (item_id,)
        with self._db() as con:
            return [dict(r) for r in con.execute(q + " ORDER BY seq", args)]

    def latest_rows(self) -> list[dict]:
        """The live label of each corrected item (its latest label row that is not undone)."""
        with self._db() as con:
            rows = con.execute(
                "SELECT c.* FROM corrections c JOIN (SELECT item_id, MAX(seq) AS seq FROM corrections "
                "WHERE action = 'label' AND undone_at IS NULL GROUP BY item_id) m ON c.seq = m.seq ORDER BY c.seq")
            return [dict(r) for r in rows]

    def latest(self) -> dict[str, str]:
        """``{item id: label}``: what training applies."""
        return {r["item_id"]: r["label"] for r in self.latest_rows()}

    def reviewed(self) -> set[str]:
        """Items with a live review (a label or a skip): they leave the review queues."""
        with self._db() as con:
            return {r[0] for r in con.execute("SELECT DISTINCT item_id FROM corrections WHERE undone_at IS NULL")}

    def counts(self) -> dict[str, int]:
        """Live corrections by new class."""
        out: dict[str, int] = {}
        for label in self.latest().values():
            out[label] = out.get(label, 0) + 1
        return out

    def reports(self, status: str | None = None) -> list[dict]:
        """Feed reports, oldest first; ``status``: ``open`` or ``resolved`` (default: all)."""
        q, args = "SELECT * FROM reports", ()
        if status is not None:
            q, args = q + " WHERE status = ?", (status,)
        with self._db() as con:
            return [dict(r) for r in con.execute(q + " ORDER BY seq", args)]
