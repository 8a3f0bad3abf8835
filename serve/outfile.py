"""``--out results.csv|.parquet|.jsonl`` of ``sift classify`` / ``sift score-folder``: one row per file.

Columns: ``path``, ``kind`` (image/video), ``label``, ``uncertain``, ``prob_<class>`` per class (the
columns of ``sift predict``), ``score``, ``tags``, ``status`` (200, or the file's HTTP-style status;
empty when the server could not be reached), ``error_code``, ``error``. The format comes from the
suffix, checked before any work (:func:`out_format`); the file is written whole under a temporary
name, then renamed.
"""
from __future__ import annotations

import csv
import json
from pathlib import Path

from flows.core.config import ConfigError

FORMATS = {".csv": "csv", ".parquet": "parquet", ".jsonl": "jsonl"}
HEAD = ("path", "kind", "label", "uncertain")
TAIL = ("score", "tags", "status", "error_code", "error")


def out_format(path: str | Path) -> str:
    """The format of ``path`` by its suffix; ConfigError (one line) for any other suffix."""
    suffix = Path(path).suffix.lower()
    if suffix not in FORMATS:
        raise ConfigError(f"--out {path}: unknown format {suffix or '(no suffix)'!r}; use .csv, .parquet or .jsonl")
    return FORMATS[suffix]


def row(path: Path, r: dict) -> dict:
    """One file's result (an API item result, a video summary, or an error) -> a flat row."""
    from serve.bulk import is_video

    # prob_<class>: sift predict's column names (serve.offline.batch.prob_column, not imported: it
    # pulls in torch, and the remote client stays light)
    err = r.get("error") if isinstance(r.get("error"), dict) else None
    out = {"path": str(path), "kind": "video" if is_video(Path(path)) else "image",
           "label": None if err else r.get("label"), "uncertain": None if err else bool(r.get("uncertain", False))}
    out.update({f"prob_{c}": float(p) for c, p in (r.get("probs") or {}).items()})
    tags = r.get("tags")
    out.update({"score": r.get("score"), "tags": ",".join(tags) if isinstance(tags, list) else None,
                "status": r.get("status") if err else 200,
                "error_code": err.get("code") if err else None, "error": err.get("message") if err else None})
    return out


def columns(rows: list[dict]) -> list[str]:
    """HEAD, every prob_ column in the order first seen, TAIL."""
    probs = list(dict.fromkeys(k for r in rows for k in r if k.startswith("prob_")))
    return [*HEAD, *probs, *TAIL]


def write(path: str | Path, rows: list[dict]) -> Path:
    """Write ``rows`` (from :func:`row`) to ``path`` in the format of its suffix; returns the path."""
    path = Path(path)
    fmt, cols = out_format(path), columns(rows)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    if fmt == "jsonl":
        tmp.write_text("".join(json.dumps({c: r.get(c) for c in cols}) + "\n" for r in rows))
    elif fmt == "csv":
        with open(tmp, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=cols)
            w.writeheader()
            w.writerows({c: "" if r.get(c) is None else r.get(c) for c in cols} for r in rows)
    else:
        import pyarrow as pa
        import pyarrow.parquet as pq

        types = {"uncertain": pa.bool_(), "score": pa.float64(), "status": pa.int32()}
        schema = pa.schema([(c, pa.float64() if c.startswith("prob_") else types.get(c, pa.string())) for c in cols])
        pq.write_table(pa.Table.from_pylist([{c: r.get(c) for c in cols} for r in rows], schema=schema), tmp)
    tmp.replace(path)
    return path
