"""Batch inference on Ray Data: one model per actor, any table of images or decoded frames in.

    rows (encoded image bytes | a file path | a raw RGB frame)
      --> actor pool [prepare exactly like serving -> SiftModel -> calibrated probs -> thresholds]
      --> the same rows, minus the pixels, plus prob_<class>..., label, error, detail

``sift predict`` (images) and ``sift scan`` (video frames) both run :func:`score`. The pure cores,
:func:`prepare_batch` and :func:`prob_columns`, run without Ray. A row that cannot be prepared or
scored keeps its place with an ``error`` code and NaN probabilities: one bad input never fails a
batch, let alone the job.
"""
from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass
from typing import Iterator

import numpy as np
import pyarrow as pa

from flows.core.config import ConfigError
from flows.media.validate import Reject, read_limited

from serve.predictor import ApiError, Limits, prepare_image, sniff_kind

PIXELS = ("image", "frame")  # input columns dropped from the output
RAW, ENCODED = "raw", "encoded"


def prob_column(cls: str) -> str:
    return f"prob_{cls}"


@dataclass
class Prepared:
    """Per input row: the RGB array (None when bad), an error code ('' when fine), a detail, and
    the sha256 of the bytes read (encoded inputs; '' otherwise)."""
    arrays: list
    error: list[str]
    detail: list[str]
    sha256: list[str]

    @property
    def ok(self) -> np.ndarray:
        return np.array([a is not None for a in self.arrays], dtype=bool)


def frame_array(buf: bytes, height: int, width: int) -> np.ndarray:
    """Raw RGB24 bytes -> (height, width, 3) uint8, or ValueError when the sizes disagree."""
    if height <= 0 or width <= 0 or len(buf) != height * width * 3:
        raise ValueError(f"{len(buf)} bytes is not a {width}x{height} RGB frame")
    return np.frombuffer(buf, np.uint8).reshape(height, width, 3)


def load_image(data: bytes | None, path: str | None, limits: Limits, short_edge: int
               ) -> tuple[np.ndarray, str]:
    """Encoded bytes (or the file at ``path`` when there are none) -> (RGB array prepared as the
    API prepares an upload, sha256 of the bytes). ApiError / Reject say why not."""
    if data is None:
        if not path:
            raise ApiError(400, "empty", "no image and no path")
        data = read_limited(path, limits.max_bytes)
    if sniff_kind(data, limits) == "video":
        raise ApiError(415, "unsupported_format", "a video: videos are scanned with `sift scan`")
    return prepare_image(data, limits, short_edge), hashlib.sha256(data).hexdigest()


def prepare_batch(table: pa.Table, source: str, limits: Limits | None, short_edge: int) -> Prepared:
    """A batch -> prepared arrays. ``source`` RAW reads ``frame`` (bytes) + ``height`` + ``width``;
    ENCODED reads ``image`` (bytes, may be null) or else ``path``. Rows that already carry an
    ``error`` are passed over untouched."""
    n = table.num_rows
    col = lambda name: table.column(name).to_pylist() if name in table.column_names else [None] * n
    prior = [e or "" for e in col("error")]
    out = Prepared([None] * n, prior, [d or "" for d in col("detail")], [""] * n)
    if source == RAW:
        inputs = list(zip(col("frame"), col("height"), col("width")))
    elif source == ENCODED:
        inputs = list(zip(col("image"), col("path")))
    else:
        raise ValueError(f"source must be {RAW!r} or {ENCODED!r}, not {source!r}")
    for i, item in enumerate(inputs):
        if prior[i]:
            continue
        try:
            if source == RAW:
                out.arrays[i] = frame_array(item[0] or b"", int(item[1] or 0), int(item[2] or 0))
            else:
                out.arrays[i], out.sha256[i] = load_image(item[0], item[1], limits, short_edge)
        except ApiError as exc:  # its message repeats the code: "decode_error: ..."
            out.error[i], out.detail[i] = exc.code, exc.message.removeprefix(f"{exc.code}: ")
        except Reject as exc:
            out.error[i], out.detail[i] = exc.reason, exc.detail
        except Exception as exc:  # never let one input take the batch down
            out.error[i], out.detail[i] = "internal_error", f"{type(exc).__name__}: {exc}"[:300]
    return out


SCORE = "predicted_score"  # the score head's column ("score" is the manifest's target, or a scene score)
TAGS = "predicted_tags"  # the tag head's column ("tags" is the manifest's annotation)


def check_operating_point(meta: dict, cfg):
    """The artifact's operating point moved by ``cfg``'s (``OperatingPointKnobs``), checked before Ray
    starts: a ConfigError names what is wrong."""
    from flows.core.config import ConfigError
    from train.decision import Decision

    try:
        return Decision.from_meta(meta["classes"], meta["thresholds"], meta.get("decision")).override(
            meta["classes"], **cfg.operating_point())
    except ValueError as exc:
        raise ConfigError(f"operating point: {exc}") from None


def check_runtime(meta: dict, cfg) -> tuple[str, str]:
    """(runtime, why): the engine the actors will run (``train.runtime.choose`` on the CPU), checked
    before Ray starts; a runtime the artifact lacks is a RuntimeChoiceError."""
    from train.runtime import choose

    kw = cfg.runtime_kwargs()
    return choose(meta.get("runtimes"), kw["runtime"], "cpu", kw["min_agreement"])


def prob_columns(probs: np.ndarray, ok: np.ndarray, classes: list[str], decision) -> dict[str, pa.Array]:
    """(M, C) probabilities of the M ``ok`` rows (of N) -> N-long columns: ``prob_<class>`` (NaN
    where not ok), ``label`` (the operating point's class, a ``train.decision.Decision`` or plain
    thresholds; '' where not ok) and ``uncertain`` (no class reached its threshold; null where not ok)."""
    from train.decision import Decision

    full = np.full((len(ok), len(classes)), np.nan)
    full[ok] = probs
    labels = np.full(len(ok), "", dtype=object)
    unsure = np.full(len(ok), None, dtype=object)
    if ok.any():
        pred, sure = Decision.of(decision).labels(probs)
        labels[ok] = [classes[int(k)] for k in pred]
        unsure[ok] = [not bool(s) for s in sure]
    cols = {prob_column(c): pa.array(full[:, j], pa.float64()) for j, c in enumerate(classes)}
    cols["label"] = pa.array(labels.tolist(), pa.string())
    cols["uncertain"] = pa.array(unsure.tolist(), pa.bool_())
    return cols


class Scorer:
    """``map_batches`` callable (batch_format="pyarrow"): the model is loaded once per actor."""

    def __init__(self, model_dir: str, source: str, limits: Limits | None = None, threads: int = 1,
                 tiles: int = 1, operating_point: dict | None = None, runtime: dict | None = None):
        import torch

        from flows.core.runtime import quiet_env
        from train.artifact import SiftModel

        quiet_env()
        torch.set_num_threads(threads)
        self.model = SiftModel(model_dir, workers=threads, **(runtime or {}))
        if operating_point:
            self.model.operating_point(**operating_point)
        self.source, self.limits, self.tiles = source, limits, tiles

    def _outputs(self, arrays: list[np.ndarray]):
        """``Outputs`` of M arrays with probabilities in place of logits: (probs (M, C), predicted
        score (M,), NaN without a score head, tag probabilities (M, T), T = 0 without tags)."""
        from PIL import Image

        from train.artifact import Outputs

        o = self.model.outputs([Image.fromarray(a) for a in arrays], tiles=self.tiles)
        n = len(o.logits)
        return Outputs(self.model.probs(o.logits), o.score if o.score is not None else np.full(n, np.nan),
                       o.tags if o.tags is not None else np.zeros((n, 0)))

    def __call__(self, table: pa.Table) -> pa.Table:
        prep = prepare_batch(table, self.source, self.limits, self.model.input_edge(self.tiles))
        ok = prep.ok
        arrays = [a for a in prep.arrays if a is not None]
        try:
            probs, scores, tags = self._outputs(arrays)
        except Exception:  # find the culprit: score one by one, mark only the ones that fail
            rows, idx = [], np.flatnonzero(ok)
            for i, a in zip(idx, arrays):
                try:
                    rows.append(self._outputs([a]))
                except Exception as exc:
                    ok[i] = False
                    prep.error[i], prep.detail[i] = "internal_error", f"{type(exc).__name__}: {exc}"[:300]
            probs, scores, tags = (np.concatenate(f) for f in zip(*rows)) if rows else self._outputs([])
        out = table.drop_columns([c for c in (*PIXELS, "error", "detail", "label")
                                  if c in table.column_names])
        if self.source == ENCODED and "id" not in out.column_names:
            out = out.append_column("id", pa.array(prep.sha256, pa.string()))
        for name, column in prob_columns(probs, ok, self.model.classes, self.model.decision).items():
            out = out.append_column(name, column)
        if self.model.score_range is not None:  # the score head's output, in the targets' units
            full = np.full(len(ok), np.nan)
            full[ok] = scores
            out = out.append_column(SCORE, pa.array(full, pa.float64()))
        if self.model.tags:  # the tags at or above their thresholds, as a JSON list ('' where not scored)
            col = np.full(len(ok), "", dtype=object)
            col[ok] = [json.dumps(t) for t in self.model.tag_lists(tags)]
            out = out.append_column(TAGS, pa.array(col.tolist(), pa.string()))
        out = out.append_column("error", pa.array(prep.error, pa.string()))
        return out.append_column("detail", pa.array(prep.detail, pa.string()))


def check_budget(need: float, what: str, wait_s: float = 10.0) -> None:
    """Refuse a pipeline that reserves more CPUs than a local Ray has free (Ray Data would wait
    forever, silently): more than the cluster has at all, or more than other work (a Serve app, a
    job) leaves free after ``wait_s`` s. On a joined cluster (``RAY_ADDRESS``) the autoscaler may
    add nodes: only warn."""
    import ray

    fix = "lower max_actors, actor_cpus (or decoders, decode_cpus)"

    def refuse(msg: str) -> None:
        if os.environ.get("RAY_ADDRESS"):
            print(f"warning: {msg} (waiting for the autoscaler)", flush=True)
        else:
            raise ConfigError(msg)

    have = float(ray.cluster_resources().get("CPU", 0.0))
    if need > have + 1e-9:
        return refuse(f"{what} reserves up to {need:g} CPUs but the cluster has {have:g}; {fix}")
    deadline = time.monotonic() + wait_s
    while (free := float(ray.available_resources().get("CPU", 0.0))) < need - 1e-9:
        if os.environ.get("RAY_ADDRESS") or time.monotonic() >= deadline:
            return refuse(f"{what} reserves up to {need:g} CPUs but only {free:g} of the cluster's {have:g} "
                          f"are free (other work holds the rest); {fix}, or stop that work")
        time.sleep(0.5)  # a pipeline that just finished may still be releasing its workers


def score(ds, model_dir: str, *, source: str, batch_size: int, min_actors: int, max_actors: int,
          actor_cpus: float, threads: int = 1, limits: Limits | None = None, tiles: int = 1,
          operating_point: dict | None = None, runtime: dict | None = None):
    """``ds`` (pyarrow batches with the columns :func:`prepare_batch` reads) -> scored Dataset,
    on an actor pool autoscaling between ``min_actors`` and ``max_actors``; ``operating_point``:
    ``SiftModel.operating_point`` keywords; ``runtime``: its engine keywords (``RuntimeKnobs``)."""
    import ray

    return ds.map_batches(
        Scorer, fn_constructor_kwargs={"model_dir": str(model_dir), "source": source, "limits": limits,
                                       "threads": threads, "tiles": tiles, "operating_point": operating_point,
                                       "runtime": runtime},
        batch_size=batch_size, batch_format="pyarrow", num_cpus=actor_cpus,
        compute=ray.data.ActorPoolStrategy(min_size=min_actors, max_size=max_actors))


def stream(ds, what: str, total: int | None = None, every_s: float = 5.0) -> Iterator[pa.Table]:
    """Scored batches as they finish (small: no pixels), with a progress line every ``every_s``."""
    t0 = last = time.monotonic()
    rows = 0
    for batch in ds.iter_batches(batch_format="pyarrow", batch_size=None):
        rows += batch.num_rows
        now = time.monotonic()
        if every_s and now - last >= every_s:
            of = f"/{total}" if total else ""
            print(f"[{what}] {rows}{of} rows, {rows / (now - t0):.1f} rows/s", flush=True)
            last = now
        yield batch
