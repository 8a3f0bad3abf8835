"""Preprocessing throughput and memory: the Ray flow vs a single-process Pillow loop, same run.

Both sides do the same work on the same files with the same code (flows.ingest.process.process_batch for
read/validate/decode/resize/budget-encode/hash, flows.ingest.manifest.decide for duplicates and splits,
parquet out). The Ray side runs the real `flows.ingest.preprocess.run` on a local Ray with 2 CPUs.
Peak memory is the proportional set size (PSS) summed over this process and all its children
(Ray's raylet and workers), sampled every 0.2 s in a separate untimed run (sampling is not free;
each Ray one on a fresh Ray), so shared object-store pages are not counted twice.

    python bench/preprocess.py [--images 2000 --small 1000 --size 1280x720]

Each Ray size starts on a fresh Ray: its first run is cold (Ray starts its worker processes), the
repeats at ``--images`` are warm; both ratios are printed. At ``--images`` each side runs
``--repeat`` times and the medians are compared (run-to-run spread here is ~15%).

Targets (issue #2): images/s ratio Ray / single-process >= 1.5 on 2 CPUs; peak memory that does
not grow with corpus size.
"""
from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil
import pyarrow as pa
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from flows.ingest.config import load_preprocess
from flows.corpus import make_corpus
from flows.core import labelset
from flows.ingest.inputs import discover
from flows.ingest.manifest import decide
from flows.ingest.process import process_batch
from flows.core.schema import COLUMNS


def _pss(pid: int) -> int:
    """PSS of one process in bytes from ``/proc/PID/smaps_rollup`` (0 if it is gone).

    The kernel sums it: psutil's ``memory_full_info`` parses every mapping in ``smaps`` instead,
    tens of ms per Ray worker, which made the sampler itself eat CPU during the Ray run.
    """
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


class PeakMemory:
    """Samples the summed PSS of this process (and its children: Ray's processes, with ``tree``) in a
    thread; ``peak`` in bytes."""

    def __init__(self, interval: float = 0.2, tree: bool = True):
        self.interval, self.peak, self.tree, self._stop = interval, 0, tree, threading.Event()

    def _sample(self) -> int:
        me = psutil.Process()
        return sum(_pss(p.pid) for p in [me, *(me.children(recursive=True) if self.tree else [])])

    def __enter__(self):
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, self._sample())
            time.sleep(self.interval)

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def single_process(corpus: Path, out: Path, cfg) -> float:
    """The baseline: one Python process, a plain loop, the same functions; returns seconds."""
    t0 = time.time()
    cfg = labelset.for_input(cfg, corpus)
    items = discover(corpus, cfg.classes, cfg.noisy_pools)
    staging = out / "staging.parquet"
    writer = None
    for i in range(0, len(items), cfg.batch_size):
        table = process_batch(items[i:i + cfg.batch_size], cfg)
        writer = writer or pq.ParquetWriter(staging, table.schema)
        writer.write_table(table)
    writer.close()
    meta = pq.read_table(staging, columns=[c for c in pq.read_schema(staging).names if c != "image"]).to_pandas()
    keep, _, _ = decide(meta, cfg)
    with _FinalWriter(out) as w:
        for batch in pq.ParquetFile(staging).iter_batches(batch_size=256):
            t = pa.Table.from_batches([batch])
            keys = [f"{p}|{i}" for p, i in zip(t.column("path").to_pylist(), t.column("id").to_pylist())]
            mask = pa.array([k in keep for k in keys])
            t = t.filter(mask)
            hits = [keep[k] for k, m in zip(keys, mask.to_pylist()) if m]
            t = t.append_column("split", pa.array([h[1] for h in hits], pa.string()))
            w.write(t.select(list(COLUMNS)))
    return time.time() - t0


def one_run(name: str, corpus: Path, out: Path, cfg) -> float:
    """One fresh run of one side into an emptied ``out``; returns seconds."""
    from flows.ingest.preprocess import run

    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    t = time.time()
    if name == "single":
        single_process(corpus, out, cfg)
    else:
        run(corpus, out, cfg)
    return time.time() - t


class _FinalWriter:
    """Writes the kept rows to one parquet file, opened on the first batch."""

    def __init__(self, out: Path):
        self.path, self.writer = out / "data.parquet", None

    def __enter__(self):
        return self

    def write(self, table: pa.Table):
        self.writer = self.writer or pq.ParquetWriter(self.path, table.schema)
        self.writer.write_table(table)

    def __exit__(self, *exc):
        if self.writer:
            self.writer.close()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", type=int, default=2000)
    ap.add_argument("--small", type=int, default=1000, help="second corpus size for the memory check")
    ap.add_argument("--size", default="1280x720")
    ap.add_argument("--workdir", default=None)
    ap.add_argument("--repeat", type=int, default=3, help="runs of each side at --images (median)")
    args = ap.parse_args(argv)
    w, h = map(int, args.size.split("x"))
    work = Path(args.workdir or tempfile.mkdtemp(prefix="sift-bench-"))
    cfg = load_preprocess(None, ["min_actors=2", "max_actors=2", "video_keyframes=4"])

    from flows.core.runtime import init_ray

    t = time.time()
    init_ray()  # the default local Ray: 2 logical CPUs per core (see flows/core/runtime.py)
    print(f"ray.init: {time.time() - t:.1f} s (not counted below)")
    results = {}
    sizes = sorted({args.small, args.images})
    for n in sizes:
        corpus = work / f"corpus{n}"
        if not (corpus / "_meta" / "corpus.json").exists():
            t = time.time()
            make_corpus(corpus, images=n, videos=0, seed=1, size=(w, h), broken=False, workers=2,
                        progress=False)
            print(f"corpus {n} images {w}x{h}: generated in {time.time() - t:.1f} s")
    # The first Ray run of each size is on a freshly started Ray ("cold": the job also starts its
    # worker processes, ~3 s of CPU here); the repeats at --images find them running ("warm", as a
    # long job or a cluster that stays up would). Timed runs go without the memory sampler.
    import ray

    cold = {}
    for name in ("single", "ray"):
        for n in sizes:
            corpus, out = work / f"corpus{n}", work / f"out-{name}-{n}"
            if name == "ray":
                ray.shutdown()
                init_ray()
            times = [one_run(name, corpus, out, cfg) for _ in range(args.repeat if n == args.images else 1)]
            cold[(name, n)] = n / times[0]
            secs = statistics.median(times[1:] if name == "ray" and len(times) > 1 else times)
            results[(name, n)] = [n / secs, 0.0, secs]
            print(f"  {name:6s} n={n}: {secs:6.1f} s  {n / secs:6.1f} images/s  (runs: "
                  f"{', '.join(f'{x:.1f}' for x in times)} s)", flush=True)
    # Peak memory: one sampled run per side and size, each Ray run on a freshly started Ray, so the
    # object store's touched pages and the worker pool do not carry over from earlier runs. The
    # single-process side counts only itself (Ray sits idle beside it).
    for name in ("single", "ray"):
        for n in sizes:
            if name == "ray":
                ray.shutdown()
                init_ray()
            with PeakMemory(tree=name == "ray") as mem:
                one_run(name, work / f"corpus{n}", work / f"out-{name}-{n}", cfg)
            results[(name, n)][1] = mem.peak / 2**20
            print(f"  {name:6s} n={n}: peak PSS {mem.peak / 2**20:7.0f} MiB", flush=True)
    n = args.images
    ratio = results[("ray", n)][0] / results[("single", n)][0]
    print("\n== bench/preprocess.py ==")
    print(f"images {n} at {w}x{h}, 2 CPUs")
    print(f"single-process Pillow loop: {results[('single', n)][0]:.1f} images/s")
    print(f"Ray Data flow (2 actors):   {results[('ray', n)][0]:.1f} images/s"
          + ("   [warm: median of the repeats]" if args.repeat > 1 else "   [cold]"))
    print(f"ratio Ray / single:         {ratio:.2f}x   (target >= 1.5)")
    for m in sizes:
        print(f"ratio at n={m}, Ray cold:  {cold[('ray', m)] / results[('single', m)][0]:.2f}x   "
              "(first run on a fresh Ray: includes starting its workers)")
    if args.small != n:
        for name in ("single", "ray"):
            a, b = results[(name, args.small)][1], results[(name, n)][1]
            print(f"peak memory {name:6s}: {a:.0f} MiB at {args.small}, {b:.0f} MiB at {n}  "
                  f"(growth x{b / a:.2f} for x{n / args.small:.1f} data)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
