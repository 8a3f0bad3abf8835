"""What ``sift review`` reads: its config, a run's predictions, the preprocessed items and their JPEGs.

Kept apart from the web app so the app stays a thin shell: this module finds a run's
``predictions.parquet`` (by run name, MLflow run id or "latest" for this data), indexes the small
columns of the preprocessed shards once, and reads one item's JPEG on demand with a parquet filter
(the ``image`` column is never loaded whole).
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Iterable

import numpy as np
import pandas as pd

from flows.core.config import ConfigError, knob, load

from serve.config import is_loopback

ITEM_COLUMNS = ["id", "group_id", "kind", "label", "pool", "split", "path", "timestamp", "source"]


@dataclasses.dataclass(frozen=True)
class ReviewConfig:
    """``sift review`` settings."""
    # sift review: defaults. Override as flags (--data, --run, --host, --port, --token, --user) or key=value,
    # e.g. `sift review --data .sift/demo/data queue_limit=100 labels_db=/shared/labels.db`.
    data: str = knob("", help="output folder of `sift preprocess`")  # output folder of `sift preprocess` (--data)
    # run name, MLflow run id, or latest (the newest run on this data)
    run: str = knob("latest", help="run name, MLflow run id, or latest (newest run on this data)")
    # or a predictions.parquet file directly
    predictions: str = knob("", help="a predictions.parquet file (overrides run)")
    host: str = "127.0.0.1"  # loopback; anything else needs a token
    port: int = knob(8765, lo=1, hi=65535)
    # $SIFT_REVIEW_TOKEN; empty on loopback: a random token is generated and printed
    token: str = knob("", help="required beyond loopback; empty on loopback: a random one is printed")
    # who corrections are recorded as (default: $USER)
    user: str = knob("", help="who corrections are recorded as (default: $USER)")
    # the label store (default: $SIFT_HOME/labels.db; sift train reads the same)
    labels_db: str = knob("", help="label store (default: $SIFT_HOME/labels.db)")
    queue_limit: int = knob(50, lo=1, hi=1000)  # cards fetched per queue request
    max_frames: int = knob(8, lo=0, hi=64, help="frames of a video shown on its card")  # frames shown on a video's card
    # origins allowed to POST /api/report: "null" is a feed.html opened as a file
    cors_origins: tuple[str, ...] = ("null",)

    def validate(self) -> None:
        if not self.data:
            raise ValueError("data must be set (--data: the output folder of sift preprocess)")
        if not is_loopback(self.host) and not self.token:
            raise ValueError(f"host={self.host} is beyond loopback: set a token (--token or $SIFT_REVIEW_TOKEN); "
                             "the review server refuses to serve without one there")


def load_review(path: str | Path | None = None, overrides: Iterable[str] | dict = ()) -> ReviewConfig:
    return load(ReviewConfig, path, overrides)


def _meta(path: Path) -> dict:
    import pyarrow.parquet as pq

    md = pq.read_schema(path).metadata or {}
    return json.loads(md.get(b"sift", b"{}"))


def find_predictions(run: str, data: Path, home: Path) -> Path:
    """A run's ``predictions.parquet``: a file path, a run name under ``home/runs``, an MLflow run id
    (its local run dir, else downloaded from MLflow), or ``latest``: the newest run on ``data``."""
    runs = home / "runs"
    if run and run != "latest":
        for cand in (Path(run), runs / run / "predictions.parquet"):
            if cand.is_file():
                return cand
        for summary in runs.glob("*/summary.json"):
            if json.loads(summary.read_text()).get("run_id") == run and (summary.parent / "predictions.parquet").is_file():
                return summary.parent / "predictions.parquet"
        from train.tracking import use

        try:
            return Path(use().artifacts.download_artifacts(run_id=run, artifact_path="predictions.parquet",
                                                           dst_path=str(home / "review" / run)))
        except Exception as exc:  # unknown run, or a run without predictions
            raise ConfigError(f"run {run!r}: no predictions.parquet (not a run dir, file or MLflow run with "
                              f"one: {type(exc).__name__}: {str(exc)[:200]})") from None
    found = [p for p in runs.glob("*/predictions.parquet") if _meta(p).get("data") == str(data.resolve())]
    if not found:
        raise ConfigError(f"no run on {data} has predictions.parquet under {runs}: run `sift train --data {data}` "
                          "first, or give --run")
    return max(found, key=lambda p: p.stat().st_mtime)


class ReviewData:
    """The items of one preprocessed dataset joined with one run's predictions."""

    def __init__(self, data: str | Path, predictions: str | Path, max_frames: int = 8):
        import pyarrow.dataset as pads

        from train.predictions import read

        self.data = Path(data).resolve()
        manifest = json.loads((self.data / "manifest.json").read_text())
        self.classes: list[str] = list(manifest["classes"])
        self.max_frames = max_frames
        parts = sorted((self.data / "data").glob("*.parquet"))
        frames = []
        for f in parts:
            t = pads.dataset(str(f), format="parquet").to_table(columns=ITEM_COLUMNS).to_pandas()
            t["file"] = str(f)
            frames.append(t)
        self.items = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=ITEM_COLUMNS + ["file"])
        self.by_id = {v: i for i, v in enumerate(self.items["id"])}
        preds, probs, self.meta = read(predictions)
        if self.meta.get("classes") and list(self.meta["classes"]) != self.classes:
            raise ConfigError(f"{predictions}: classes {self.meta['classes']} differ from the data's {self.classes}")
        known = preds["id"].isin(self.by_id).to_numpy()  # predictions of items no longer in the data are dropped
        self.preds = preds[known].reset_index(drop=True)
        self.probs = {k: v[known] for k, v in probs.items()}
        self.pred_row = {v: i for i, v in enumerate(self.preds["id"])}
        self.predictions = Path(predictions)

    def name(self, k) -> str:
        k = int(k)
        return self.classes[k] if 0 <= k < len(self.classes) else "unlabeled"

    def item(self, item_id: str) -> dict | None:
        i = self.by_id.get(item_id)
        return None if i is None else self.items.iloc[i].to_dict()

    def current_label(self, item_id: str) -> str:
        """The label the run trained on (corrections applied), else the data's."""
        i = self.pred_row.get(item_id)
        return self.name(self.preds["label"].iat[i] if i is not None else self.items["label"].iat[self.by_id[item_id]])

    def frames(self, group_id: str) -> list[str]:
        """Ids of a video's thumbnail and frames (by time), at most ``max_frames``."""
        g = self.items[(self.items["group_id"] == group_id) & (self.items["kind"] != "image")]
        return g.sort_values("timestamp")["id"].head(self.max_frames).tolist()

    def jpeg(self, item_id: str) -> bytes | None:
        """The stored JPEG of one item, read from its shard by a filter on ``id``."""
        import pyarrow.compute as pc
        import pyarrow.dataset as pads

        i = self.by_id.get(item_id)
        if i is None:
            return None
        t = pads.dataset(self.items["file"].iat[i], format="parquet").to_table(
            columns=["image"], filter=pc.field("id") == item_id)
        return bytes(t["image"][0].as_py()) if t.num_rows else None

    def probs_of(self, item_id: str) -> tuple[dict, dict] | None:
        i = self.pred_row.get(item_id)
        if i is None:
            return None
        s, t = self.probs["student"][i], self.probs["teacher"][i]
        return ({c: round(float(p), 4) for c, p in zip(self.classes, s)},
                {c: round(float(p), 4) for c, p in zip(self.classes, t)})


def finite(v):
    """JSON-safe scalar (NaN -> None)."""
    if isinstance(v, (float, np.floating)):
        return None if not np.isfinite(v) else float(v)
    if isinstance(v, np.integer):
        return int(v)
    return v
