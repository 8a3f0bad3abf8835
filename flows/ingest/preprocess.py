"""``sift preprocess``: raw media -> deduplicated, size-budgeted, split parquet shards on Ray Data.

Two streaming passes, each bounded in memory:

1. work items -> an autoscaling CPU actor pool (read, validate, decode, resize, budget-encode,
   hash; videos -> thumbnail + scene keyframes) -> staging parquet (rows and rejects together);
2. the driver reads only the small columns of the staging shards, decides duplicates, clusters and
   splits, then streams the staging shards once more, writing the kept rows with their split to
   ``OUT/data``.

``OUT/manifest.json`` records counts, rejects by reason, duplicates, throughput and the pool sizes
the autoscaler chose over time. Everything is built in ``OUT/_work`` and published at the end
(:func:`publish`), manifest last: a killed run never leaves an old manifest beside new shards.
Usage: ``sift preprocess --input IN --output OUT [key=value ...]``.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import socket
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq

from flows.core import labelset
from flows.ingest import download
from flows.core.config import flat
from flows.core.knobs import add_knobs_flag
from flows.ingest.config import load_preprocess
from flows.ingest.inputs import discover
from flows.ingest.manifest import build_manifest, decide
from flows.ingest.process import process_batch
from flows.core.schema import COLUMNS
from flows.ingest.spans import count_entries

# Rows per staging file. Ray Data's writer holds a whole file's rows (one row group) before writing,
# and finalising reads one row group at a time, so this bounds memory on both sides. Measured at
# 2000 rows (~95 MB of images): the driver's peak grew 433 -> 885 MiB from 1000 to 4000 images.
STAGING_ROWS = 256

META_COLUMNS = ["id", "group_id", "kind", "label", "label_name", "pool", "score", "tags", "source", "path",
                "sha256", "phash", "reject_reason", "reject_detail", "worker", "t_start", "t_end"]


class Preprocessor:
    """Callable class for ``map_batches``: one per actor, holding the config."""

    def __init__(self, cfg):
        self.cfg = cfg
        self.worker = f"{socket.gethostname()}:{os.getpid()}"

    def __call__(self, batch: pa.Table) -> pa.Table:
        return process_batch(batch.to_pylist(), self.cfg, self.worker)


def write_final(staging: Path, data: Path, keep: dict, rows_per_file: int) -> None:
    """Stream the staging shards through ``_finalize`` into ``data/part-NNNNN.parquet``.

    A filter and a column stamp, I/O bound: done here one file at a time in record batches (memory
    ~ one staging row group; a dataset scanner reads several files ahead), which costs less than
    scheduling another Ray Data job for it.
    """
    data.mkdir(parents=True, exist_ok=True)
    writer, rows, part = None, 0, 0
    batches = (b for f in sorted(staging.glob("*.parquet"))
               for b in pq.ParquetFile(f).iter_batches(batch_size=256))
    for batch in batches:
        table = _finalize(pa.Table.from_batches([batch]), keep)
        if table.num_rows == 0:
            continue
        if writer is None or rows >= rows_per_file:
            if writer:
                writer.close()
            writer, rows, part = pq.ParquetWriter(data / f"part-{part:05d}.parquet", table.schema), 0, part + 1
        writer.write_table(table)
        rows += table.num_rows
    if writer:
        writer.close()


def _finalize(batch: pa.Table, keep: dict) -> pa.Table:
    """Keep decided rows, stamp their merged group and split, drop bookkeeping columns."""
    keys = [f"{p}|{i}" for p, i in zip(batch.column("path").to_pylist(), batch.column("id").to_pylist())]
    hits = [keep.get(k) for k in keys]
    mask = pa.array([h is not None for h in hits])
    chosen = [h for h in hits if h is not None]
    t = batch.filter(mask)
    t = t.set_column(t.schema.get_field_index("group_id"), "group_id", pa.array([h[0] for h in chosen], pa.string()))
    t = t.append_column("split", pa.array([h[1] for h in chosen], pa.string()))
    return t.select(list(COLUMNS))


def run(inp: str | Path, out: str | Path, cfg, num_cpus: int | None = None) -> dict:
    """Preprocess ``inp`` into ``out``; returns the manifest (also written as manifest.json)."""
    import ray

    from flows.core.runtime import init_ray

    given = cfg
    cfg = labelset.for_input(cfg, inp)  # the label set, checked before Ray starts
    items = discover(inp, cfg.classes, cfg.noisy_pools)
    if dropped := labelset.dropped_defaults(given, cfg):
        print(f"[preprocess] default noisy pool(s) {dropped} left out: not among the classes {list(cfg.classes)}",
              flush=True)
    out = Path(out).resolve()
    downloads = download.fetch_items(items, out / "downloads", cfg)  # manifest URLs, resumable
    init_ray(num_cpus)
    # everything is built in _work/ and published at the end (see publish): a killed run leaves the
    # previous output whole, and the next run starts from a clean slate
    work = out / "_work"
    for d in (work, out / "_old", out / "_staging"):
        shutil.rmtree(d, ignore_errors=True)
    staging, data = work / "_staging", work / "data"
    work.mkdir(parents=True)
    print(f"[preprocess] {len(items)} inputs from {inp}; classes {list(cfg.classes)}"
          f"{' (from the data)' if not given.classes else ''}; actor pool {cfg.min_actors}..{cfg.max_actors}",
          flush=True)

    t0 = time.time()
    ds = ray.data.from_items(items, override_num_blocks=max(1, math.ceil(len(items) / cfg.batch_size)))
    ds = ds.map_batches(
        Preprocessor, fn_constructor_args=(cfg,), batch_size=cfg.batch_size, batch_format="pyarrow",
        compute=ray.data.ActorPoolStrategy(min_size=cfg.min_actors, max_size=cfg.max_actors),
        num_cpus=cfg.actor_cpus)
    ds.write_parquet(str(staging), ray_remote_args={"num_cpus": cfg.io_cpus},
                     min_rows_per_file=STAGING_ROWS)
    t1 = time.time()

    # only the small columns come to the driver: memory ~100 bytes per row, not the images
    meta = pads.dataset(str(staging), format="parquet").to_table(columns=META_COLUMNS).to_pandas()
    keep, rejects, dups = decide(meta, cfg)
    write_final(staging, data, keep, cfg.rows_per_file)
    t2 = time.time()

    shutil.rmtree(staging, ignore_errors=True)
    pq.write_table(pa.Table.from_pandas(rejects, preserve_index=False), work / "rejects.parquet")
    pq.write_table(pa.Table.from_pandas(dups, preserve_index=False), work / "duplicates.parquet")
    manifest = build_manifest(meta, keep, rejects, dups, cfg, n_inputs=len(items), n_entries=count_entries(items),
                              timings={"process_s": t1 - t0, "finalize_s": t2 - t1, "total_s": t2 - t0})
    manifest["input"], manifest["output"], manifest["config"] = str(inp), str(out), flat(cfg)
    manifest["label_set"] = {"from": "classes=" if given.classes else "data", "dropped_defaults": dropped}
    manifest["downloads"] = downloads
    (work / "manifest.json").write_text(json.dumps(manifest, indent=2, default=float))
    publish(work, out)
    return manifest


PUBLISHED = ("data", "rejects.parquet", "duplicates.parquet")  # + manifest.json, always last


def publish(work: Path, out: Path) -> None:
    """Move a finished output from ``work`` into ``out``. The old ``manifest.json`` goes first: an
    output folder without one is incomplete, and ``sift train`` refuses it. Then each piece is
    swapped by rename (the old one parked in ``_old/``), and the new manifest comes last, in one
    rename. A crash before this leaves the old output whole; during it, no manifest (never an old
    manifest beside new or partial shards); the next run starts over from a clean ``_work/``."""
    (out / "manifest.json").unlink(missing_ok=True)
    old = out / "_old"
    shutil.rmtree(old, ignore_errors=True)
    old.mkdir()
    for name in PUBLISHED:
        if (out / name).exists():
            (out / name).rename(old / name)
        (work / name).rename(out / name)
    (work / "manifest.json").rename(out / "manifest.json")
    shutil.rmtree(old, ignore_errors=True)
    shutil.rmtree(work, ignore_errors=True)


def summary(m: dict) -> str:
    """A short human summary of a manifest."""
    lines = [f"inputs {m['inputs']}  rows {m['rows']}  rejects {m['rejects']['total']}  "
             f"duplicates {m['duplicates']['total']}  ({m['throughput']['items_per_s']:.1f} items/s, "
             f"{m['timings']['total_s']:.1f} s)"]
    lines.append("by class: " + ", ".join(f"{k}={v}" for k, v in m["by_class"].items()))
    lines.append("by split: " + ", ".join(f"{k}={v}" for k, v in m["by_split"].items()))
    lines.append("by kind:  " + ", ".join(f"{k}={v}" for k, v in m["by_kind"].items()))
    if m["rejects"]["by_reason"]:
        lines.append("rejects:  " + ", ".join(f"{k}={v}" for k, v in m["rejects"]["by_reason"].items()))
    pool = m["actor_pool"]
    lines.append(f"actor pool: max {pool['max_size']} actors, sizes seen {pool['sizes_seen']}")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="sift preprocess", description=__doc__.split("\n\n")[0])
    add_knobs_flag(ap, load_preprocess)
    ap.add_argument("--input", required=True, help="folder tree (label folders) or JSONL manifest")
    ap.add_argument("--output", required=True, help="output folder (data/, rejects, manifest.json)")
    ap.add_argument("--config", help="YAML file of settings (sift preprocess --knobs lists them)")
    ap.add_argument("--num-cpus", type=int, help="logical CPUs for a local Ray (default: 2 x cores)")
    ap.add_argument("overrides", nargs="*", help="key=value config overrides")
    args = ap.parse_args(argv)
    from flows.core.preflight import existing, output

    existing(args.input, "--input")
    output(args.output, "--output")
    cfg = load_preprocess(args.config, args.overrides)
    manifest = run(args.input, args.output, cfg, num_cpus=args.num_cpus)
    print(summary(manifest))
    print(f"wrote {Path(args.output) / 'manifest.json'}")
    return 0


if __name__ == "__main__":
    from flows.core.cli import run_entry

    raise SystemExit(run_entry(main, "preprocess"))
