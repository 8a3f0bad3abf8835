"""``sift predict``: the model over a dataset of images -> one parquet of labels and probabilities.

    sift predict --input DIR|PARQUET --output OUT.parquet [--model URI] [key=value ...]

Input, decided by what ``--input`` is:
  * a parquet file, a folder of parquet files, or a ``sift preprocess`` output folder (its ``data/``
    is read): rows with an ``image`` column of encoded bytes; ``id, path, kind, timestamp, split,
    label_name`` are carried over when present;
  * any other folder: every file under it (recursively; names starting with ``.`` or ``_``
    skipped). The format is decided by content, as everywhere; a video becomes a row with error
    ``unsupported_format`` (videos are for ``sift scan``), and so does anything else the API would
    refuse (with the API's error code: ``not_media``, ``decode_error``, ``too_large`` ...).

Every row is prepared exactly as ``/v1/classify`` prepares an upload (``serve.predictor
.prepare_image``) and scored on an autoscaling Ray Data actor pool (``serve.offline.batch``). Output columns:
``id`` (sha256 of the file for folders), ``path``, the carried-over columns, ``label``,
``prob_<class>`` per class, ``model``, ``version``, ``error`` and ``detail`` ('' when fine). Bad
inputs never fail the job: exit status 0 unless the options or the config are wrong (2).
"""
from __future__ import annotations

import argparse
import collections
import json
import math
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq

from flows.core.config import ConfigError

from flows.core.knobs import add_knobs_flag

from serve.offline.batch import (ENCODED, SCORE, TAGS, check_budget, check_operating_point, check_runtime,
                                 prob_column, score, stream)
from serve.offline.batch.config import PredictConfig, load_predict

CARRY = ("id", "path", "kind", "timestamp", "split", "label_name")


def resolve_input(path: str | Path) -> tuple[str, Path]:
    """``("parquet", file or folder)`` or ``("images", folder)``; ConfigError when neither."""
    p = Path(path)
    if p.is_file() and p.suffix == ".parquet":
        return "parquet", p
    if p.is_dir():
        if (p / "manifest.json").is_file() and (p / "data").is_dir():
            return "parquet", p / "data"
        if any(f.suffix == ".parquet" for f in p.iterdir() if f.is_file()):
            return "parquet", p
        return "images", p
    raise ConfigError(f"--input {path}: not a folder or a .parquet file")


def list_files(root: Path) -> list[str]:
    """Every regular file under ``root``, sorted; parts starting with '.' or '_' are skipped."""
    out = []
    for f in sorted(root.rglob("*")):
        rel = f.relative_to(root).parts
        if f.is_file() and not any(part.startswith((".", "_")) for part in rel):
            out.append(str(f))
    return out


def output_columns(names: list[str], classes: list[str]) -> list[str]:
    """The output's column order: carried-over columns, label, probs, model, version, error."""
    tail = ["label", "uncertain", *(prob_column(c) for c in classes), SCORE, TAGS, "model", "version", "error", "detail"]
    return [c for c in CARRY if c in names] + [c for c in tail if c in names]


def run(inp: str | Path, out: str | Path, cfg: PredictConfig, num_cpus: int | None = None) -> dict:
    """Predict ``inp`` into the parquet file ``out``; returns a summary."""
    import ray

    from flows.core.runtime import init_ray
    from train.artifact import META

    from serve.config import load_serve
    from serve.predictor import Limits, resolve_model

    t0 = time.time()
    kind, src = resolve_input(inp)
    model_dir, name, version = resolve_model(cfg.model, cfg.tracking_uri or None)
    meta = json.loads((Path(model_dir) / META).read_text())
    classes = meta["classes"]
    check_operating_point(meta, cfg)
    runtime, why = check_runtime(meta, cfg)
    init_ray(num_cpus)
    check_budget(cfg.cpus_needed(), "sift predict")
    if kind == "images":
        files = list_files(src)
        total = len(files)
        ds = ray.data.from_items([{"path": f} for f in files],
                                 override_num_blocks=max(1, math.ceil(total / cfg.batch_size)))
    else:
        names = pads.dataset(str(src), format="parquet").schema.names
        if "image" not in names:
            raise ConfigError(f"--input {inp}: parquet without an 'image' column (columns: {names})")
        total = pads.dataset(str(src), format="parquet").count_rows()
        ds = ray.data.read_parquet(str(src), columns=[c for c in (*CARRY, "image") if c in names],
                                   num_cpus=cfg.io_cpus)
    print(f"[predict] {total} {kind} rows from {src}; model {name} ({version}), runtime {runtime} ({why}); "
          f"actor pool {cfg.min_actors}..{cfg.max_actors}", flush=True)
    ds = score(ds, str(model_dir), source=ENCODED, batch_size=cfg.batch_size, min_actors=cfg.min_actors,
               max_actors=cfg.max_actors, actor_cpus=cfg.actor_cpus, threads=cfg.threads,
               limits=Limits.of(load_serve()), tiles=cfg.tiles, operating_point=cfg.operating_point(),
               runtime=cfg.runtime_kwargs())

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    writer, schema, rows = None, None, 0
    labels, errors = collections.Counter(), collections.Counter()
    try:
        for batch in stream(ds, "predict", total=total, every_s=cfg.progress_s) if total else ():
            batch = batch.append_column("model", pa.array([name] * batch.num_rows, pa.string()))
            batch = batch.append_column("version", pa.array([version] * batch.num_rows, pa.string()))
            if writer is None:
                schema = batch.select(output_columns(batch.column_names, classes)).schema
                writer = pq.ParquetWriter(tmp, schema)
            batch = batch.select(schema.names).cast(schema)
            writer.write_table(batch)
            rows += batch.num_rows
            labels.update(x for x in batch.column("label").to_pylist() if x)
            errors.update(x for x in batch.column("error").to_pylist() if x)
    finally:
        if writer is not None:
            writer.close()
    if writer is None:  # no rows at all: still an output, with the columns a reader expects
        names = ["id", "path", "label", "uncertain", *map(prob_column, classes), "model", "version", "error", "detail"]
        empty = {c: pa.array([], pa.float64() if c.startswith("prob_") else pa.string()) for c in names}
        pq.write_table(pa.table(empty), tmp)
    tmp.replace(out)
    wall = time.time() - t0
    return {"input": str(inp), "output": str(out), "rows": rows, "labels": dict(labels),
            "errors": dict(errors), "model": name, "version": version, "wall_s": round(wall, 3),
            "rows_per_s": round(rows / wall, 2) if wall > 0 else 0.0}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="sift predict", description=__doc__.split("\n\n")[0])
    add_knobs_flag(ap, load_predict)
    ap.add_argument("--input", required=True, help="image folder, parquet file/folder, or preprocess output")
    ap.add_argument("--output", required=True, help="output parquet file")
    ap.add_argument("--model", help="artifact dir or models:/ URI (default: the config's, @champion)")
    ap.add_argument("--config", help="YAML of settings (--knobs lists every knob)")
    ap.add_argument("--num-cpus", type=int, help="logical CPUs for a local Ray (default: 2 x cores)")
    ap.add_argument("overrides", nargs="*", help="key=value config overrides")
    args = ap.parse_intermixed_args(argv)
    from flows.core.preflight import existing, output

    from train.preflight import check_model

    resolve_input(existing(args.input, "--input"))
    output(args.output, "--output", "file")
    over = [*args.overrides, *[f"model={args.model}"] * bool(args.model)]
    cfg = load_predict(args.config, over)
    check_model(cfg.model, cfg.tracking_uri or None, "--model" if args.model else "model")
    s = run(args.input, args.output, cfg, num_cpus=args.num_cpus)
    print(f"[predict] {s['rows']} rows in {s['wall_s']:.1f} s ({s['rows_per_s']:.1f} rows/s); labels "
          f"{s['labels']}; errors {s['errors'] or 'none'} -> {s['output']}")
    return 0


if __name__ == "__main__":
    from flows.core.cli import run_entry

    raise SystemExit(run_entry(main, "predict"))
