"""Human corrections from the label store (:mod:`flows.core.labels`) applied to the items a run trains on.

Why here and not in ``sift preprocess``: preprocessing is the expensive pass and its output is the
cache key of the embedding cache; a correction only changes two small columns (``label``, ``pool``),
so applying it when training reads the cache keeps the cache valid, and every new correction is used
by the next ``sift train`` without re-preprocessing.

A corrected item becomes a *clean* labeled item with its new label, whatever pool it came from (the
NEUTRAL noisy pool or the unlabeled pool included): a person looked at it. Items match by ``id``
(a content hash, stable across re-ingestion), else by ``path`` (plus the frame suffix of the id, so
a correction of one video frame never spreads to the other frames of the video) for an item whose
file changed but kept its place.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from flows.core.config import ConfigError

CLEAN = "clean"


def item_key(item_id: str, path: str) -> str:
    """The path-based identity of an item: its path, plus ``#t=…`` for a video frame."""
    item_id, path = str(item_id), str(path or "")
    return path + ("#" + item_id.split("#", 1)[1] if "#" in item_id else "") if path else ""


@dataclass
class Corrections:
    """The store's live labels as class indices, looked up by id and by path key."""
    classes: list[str]
    by_id: dict[str, int] = field(default_factory=dict)  # store item id -> class index
    by_key: dict[str, str] = field(default_factory=dict)  # path key -> store item id
    rows: dict[str, dict] = field(default_factory=dict)  # store item id -> store row (who, when, previous)
    ignored: list[str] = field(default_factory=list)  # ids whose label is not a class of this data
    source: str = ""

    @classmethod
    def from_rows(cls, rows: list[dict], classes: list[str], source: str = "") -> "Corrections":
        c = cls(list(classes), source=source)
        for r in rows:
            if r["label"] not in c.classes:
                c.ignored.append(r["item_id"])
                continue
            c.by_id[r["item_id"]] = c.classes.index(r["label"])
            c.rows[r["item_id"]] = r
            key = item_key(r["item_id"], r.get("path", ""))
            if key:
                c.by_key[key] = r["item_id"]
        return c

    def match(self, item_id: str, path: str) -> str:
        """The store id whose correction applies to this item, or ""."""
        item_id = str(item_id)
        if item_id in self.by_id:
            return item_id
        return self.by_key.get(item_key(item_id, path), "")

    def __bool__(self) -> bool:
        return bool(self.by_id)


def apply(ids, paths, labels, pools, corr: Corrections) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Pure: arrays of one batch -> ``(labels, pools, matched)``, ``matched`` the store id applied to
    each item ("" for none). Matched items take the corrected label and the clean pool."""
    labels = np.asarray(labels).copy()
    pools = np.asarray(pools, dtype=object).copy()
    matched = [corr.match(i, p) for i, p in zip(ids, paths)]
    for i, sid in enumerate(matched):
        if sid:
            labels[i], pools[i] = corr.by_id[sid], CLEAN
    return labels, pools, matched


def apply_table(table, corr: Corrections):
    """A pyarrow batch (``map_batches(batch_format="pyarrow")``) with corrected ``label`` and ``pool``."""
    import pyarrow as pa

    labels, pools, _ = apply(table["id"].to_pylist(), table["path"].to_pylist(), table["label"].to_numpy(),
                             table["pool"].to_pylist(), corr)
    for name, values in (("label", labels), ("pool", list(pools))):
        i = table.schema.get_field_index(name)
        table = table.set_column(i, name, pa.array(values, type=table.schema.field(name).type))
    return table


def summarize(meta, corr: Corrections) -> dict:
    """What a run used: counts for MLflow and the per-item list for ``corrections.json``.

    ``meta`` is the cache's small columns (id, path, split, label, pool) *before* corrections.
    """
    ids, paths = [str(v) for v in meta["id"]], [str(v) for v in meta["path"]]
    before, pools = np.asarray(meta["label"]), [str(v) for v in meta["pool"]]
    labels, _, matched = apply(ids, paths, before, pools, corr)
    names = corr.classes
    items = []
    for i, sid in enumerate(matched):
        if not sid:
            continue
        row = corr.rows[sid]
        items.append({"id": ids[i], "path": paths[i], "split": str(meta["split"].iloc[i]),
                      "matched_by": "id" if sid == ids[i] else "path", "label": names[int(labels[i])],
                      "before": names[int(before[i])] if before[i] >= 0 else "unlabeled", "pool_before": pools[i],
                      "who": row["who"], "at": row["at"], "store_previous": row["previous"]})
    by_class = {c: sum(1 for it in items if it["label"] == c) for c in names}
    changed = sum(1 for it in items if it["label"] != it["before"] or it["pool_before"] != CLEAN)
    return {"labels_db": corr.source, "used": len(items), "by_class": by_class, "changed": changed,
            "unmatched": sorted(set(corr.by_id) - set(matched)), "ignored": sorted(corr.ignored), "items": items}


def metrics(summary: dict) -> dict[str, float]:
    """MLflow metrics: ``corrections_used``, ``corrections_<CLASS>``, changed / unmatched / ignored."""
    out = {"corrections_used": float(summary["used"]), "corrections_changed": float(summary["changed"]),
           "corrections_unmatched": float(len(summary["unmatched"])),
           "corrections_ignored": float(len(summary["ignored"]))}
    out.update({f"corrections_{c}": float(n) for c, n in summary["by_class"].items()})
    return out


def load(cfg, classes: list[str]) -> Corrections | None:
    """The store named by ``labels_db`` (else ``$SIFT_HOME/labels.db`` when it exists), or None when
    corrections are off or there is no store."""
    from flows.core.labels import LabelStore, default_path

    if not cfg.use_corrections:
        return None
    path = Path(cfg.labels_db).expanduser().resolve() if cfg.labels_db else default_path()
    if not path.exists():
        if cfg.labels_db:
            raise ConfigError(f"labels_db={cfg.labels_db} does not exist")
        return None
    return Corrections.from_rows(LabelStore(path, classes).latest_rows(), classes, source=str(path))


def write(summary: dict, out_dir: Path) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "corrections.json"
    path.write_text(json.dumps(summary, indent=1, default=str))
    return path
