"""Corrections applied to training items and the per-item loss of predictions.parquet (pure parts)."""
import numpy as np
import pandas as pd
import pyarrow as pa

from train.corrections import Corrections, apply, apply_table, item_key, metrics, summarize
from train.predictions import per_item_loss

CLASSES = ["BAD", "NEUTRAL", "GOOD"]


def _rows(*specs):
    return [{"item_id": i, "label": lab, "path": p, "who": "ann", "at": 1.0, "previous": ""} for i, lab, p in specs]


def test_matched_items_become_clean_with_the_new_label_by_id_then_by_path():
    corr = Corrections.from_rows(_rows(("a", "GOOD", "x/a.jpg"), ("old-b", "BAD", "x/b.jpg"),
                                       ("v#t=2.000", "GOOD", "x/v.mp4"), ("z", "UGLY", "")), CLASSES)
    ids = ["a", "new-b", "v2#t=2.000", "v2#t=4.000", "c"]
    paths = ["elsewhere/a.jpg", "x/b.jpg", "x/v.mp4", "x/v.mp4", "x/c.jpg"]
    labels, pools, matched = apply(ids, paths, [-1, 1, 0, 0, 1], ["unlabeled", "noisy", "clean", "clean", "noisy"], corr)
    assert matched == ["a", "old-b", "v#t=2.000", "", ""]  # id wins; path keeps frames apart
    assert labels.tolist() == [2, 0, 2, 0, 1]
    assert pools.tolist() == ["clean", "clean", "clean", "clean", "noisy"]
    assert corr.ignored == ["z"]  # not a class of this data: never applied
    assert item_key("v#t=2.000", "x/v.mp4") == "x/v.mp4#t=2.000" and item_key("a", "") == ""


def test_apply_table_changes_only_label_and_pool():
    corr = Corrections.from_rows(_rows(("a", "GOOD", "")), CLASSES)
    t = pa.table({"id": ["a", "b"], "path": ["p", "q"], "label": pa.array([-1, 1], pa.int32()),
                  "pool": ["unlabeled", "noisy"], "emb": [[0.5, 1.0], [2.0, 3.0]]})
    out = apply_table(t, corr)
    assert out.schema == t.schema and out["label"].to_pylist() == [2, 1]
    assert out["pool"].to_pylist() == ["clean", "noisy"] and out["emb"].equals(t["emb"])


def test_summary_counts_what_was_used():
    corr = Corrections.from_rows(_rows(("a", "GOOD", ""), ("b", "GOOD", ""), ("c", "BAD", ""), ("gone", "BAD", "")),
                                 CLASSES, source="labels.db")
    meta = pd.DataFrame({"id": ["a", "b", "c", "d"], "path": ["", "", "", ""], "split": ["train", "val", "train", "test"],
                         "label": [-1, 2, 1, 0], "pool": ["unlabeled", "clean", "noisy", "clean"]})
    s = summarize(meta, corr)
    assert s["used"] == 3 and s["by_class"] == {"BAD": 1, "NEUTRAL": 0, "GOOD": 2}
    assert s["changed"] == 2 and s["unmatched"] == ["gone"]  # b was already a clean GOOD
    assert {it["id"]: it["before"] for it in s["items"]} == {"a": "unlabeled", "b": "GOOD", "c": "NEUTRAL"}
    m = metrics(s)
    assert m["corrections_used"] == 3 and m["corrections_GOOD"] == 2 and m["corrections_unmatched"] == 1


def test_per_item_loss_is_cross_entropy_and_nan_when_unlabeled():
    p = np.array([[0.5, 0.25, 0.25], [0.1, 0.1, 0.8], [0.2, 0.3, 0.5]], np.float32)
    loss = per_item_loss(p, np.array([0, 1, -1]))
    assert np.allclose(loss[:2], [-np.log(0.5), -np.log(0.1)], atol=1e-6) and np.isnan(loss[2])
