"""Sizing: each stage's throughput with 1 CPU vs 2 CPUs, side by side in one run, and a scaling model.

One local Ray (started once, 2 logical CPUs per core as everywhere in sift), four stages, each
measured twice with the same code on the same data:

  preprocessing  ``flows.ingest.preprocess.run`` with the actor pool pinned to 1 actor, then 2 actors
                 (1 CPU each), on generated 1280x720 images; items/s = inputs / total seconds from
                 manifest.json (end to end: actor start-up, the pool, dedupe/split and the final write).
  embedding      the embedding cache's ``Embedder`` in a Ray Data pool (``bench/embed.py ray_data``):
                 1 actor vs 2 actors, 1 torch thread each, ViT-B/32-size random-init backbone, on the
                 preprocessing output; images/s in steady state (each actor's first batch left out).
  training       the real Ray Train loop (``train.main.run``, ``TorchTrainer``) on cached embeddings
                 (frozen backbone, the production-size head), ``num_workers=1`` vs ``2`` with
                 ``cpus_per_worker=1``, a fixed number of steps; steps/s from the timestamps of the
                 per-10-step loss metrics rank 0 logs to MLflow, within epochs 2.. (Ray Train start-up,
                 the cache build, evaluation and finalisation are outside those intervals).
                 samples/s = steps/s x workers x (labeled_batch + unlabeled_batch) per worker.
  serving        in-process batched inference (``bench/serve.py in_process``: decode + prepare +
                 model, batch 32) on a ViT-B/32-size random-init model, torch threads 1 vs 2.

Then, per stage, a model of throughput on N worker nodes: N x (per-worker throughput) x efficiency,
the efficiency measured here from 1 -> 2 CPUs (speed-up / 2), and what bounds it.

On a shared machine other processes take CPU from whichever side runs at that moment: the 1-minute
load average is recorded around every measurement and printed with the table.

    python bench/sizing.py [--quick] [--out .sift/bench/sizing.json] [--workdir DIR]
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from flows.core.runtime import quiet_env

quiet_env()  # before Ray is imported
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")

VIT = "random-vit-b32"


def load_bench(name: str):
    """``bench/NAME.py`` as module ``sift_bench_NAME`` (bench/serve.py would shadow the serve package)."""
    mod_name = f"sift_bench_{name}"
    if mod_name in sys.modules:
        return sys.modules[mod_name]
    spec = importlib.util.spec_from_file_location(mod_name, ROOT / "bench" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[mod_name] = mod  # bench/embed.py ships its classes to Ray by value from here
    spec.loader.exec_module(mod)
    return mod


def log(msg: str) -> None:
    print(f"[sizing {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def load1() -> float:
    return round(os.getloadavg()[0], 2)


# -- preprocessing ----------------------------------------------------------------------------------

def preprocessing(work: Path, n: int, size: tuple[int, int]) -> tuple[dict, Path]:
    from flows.ingest.config import load_preprocess
    from flows.corpus import make_corpus
    from flows.ingest.preprocess import run

    corpus = work / f"corpus-{n}-{size[0]}x{size[1]}"
    if not (corpus / "_meta" / "corpus.json").exists():
        t = time.time()
        make_corpus(corpus, images=n, videos=0, seed=1, size=size, broken=False, workers=2, progress=False)
        log(f"corpus: {n} images {size[0]}x{size[1]} generated in {time.time() - t:.1f} s")
    res = {}
    for actors in (1, 2):
        out = work / f"pre-{actors}"
        shutil.rmtree(out, ignore_errors=True)
        cfg = load_preprocess(None, [f"min_actors={actors}", f"max_actors={actors}"])
        before = load1()
        m = run(corpus, out, cfg)
        pool = m["actor_pool"]
        res[actors] = {"value": m["throughput"]["items_per_s"], "total_s": m["timings"]["total_s"],
                       "process_s": m["timings"]["process_s"],
                       "process_items_per_s": m["inputs"] / m["timings"]["process_s"],
                       "rows": m["rows"], "inputs": m["inputs"], "pool_sizes_seen": pool["sizes_seen"],
                       "load": [before, load1()]}
        log(f"preprocessing, {actors} actor(s): {res[actors]['value']:.2f} items/s end to end "
            f"({m['timings']['total_s']:.1f} s; pool phase {res[actors]['process_items_per_s']:.2f} items/s), "
            f"pool sizes seen {pool['sizes_seen']}, load {res[actors]['load']}")
    return res, work / "pre-2" / "data"


# -- embedding cache --------------------------------------------------------------------------------

def embedding(data: Path, backbone_dir: str, batch: int) -> dict:
    from train.model import load_backbone

    emb = load_bench("embed")
    preproc = load_backbone(backbone_dir)[1]
    res = {}
    for actors in (1, 2):
        before = load1()
        r = emb.ray_data(data, backbone_dir, preproc.to_dict(), batch, actors, threads=1)
        res[actors] = {"value": r["ips"], "e2e_s": r["e2e_s"], "rows": r["rows"], "cpu_ms_per_image": r["cpu_ms"],
                       "batches_per_actor": r["batches"], "starved": r["starved"], "load": [before, load1()]}
        log(f"embedding, {actors} actor(s) x 1 thread: {r['ips']:.2f} images/s steady "
            f"({r['e2e_s']:.1f} s end to end, batches per actor {r['batches']}), load {res[actors]['load']}")
    return res


# -- training ---------------------------------------------------------------------------------------

def training_data(work: Path, n: int) -> Path:
    """A corpus of small images with a large unlabeled pool, preprocessed once (reused)."""
    from flows.ingest.config import load_preprocess
    from flows.corpus import make_corpus
    from flows.ingest.preprocess import run

    corpus, out = work / f"train-corpus-{n}", work / f"train-data-{n}"
    if (out / "manifest.json").exists():
        return out
    t = time.time()
    if not (corpus / "_meta" / "corpus.json").exists():
        make_corpus(corpus, images=n, videos=0, seed=5, size=(240, 180), labeled=0.3, noisy=0.1, broken=False,
                    workers=2, progress=False)
    run(corpus, out, load_preprocess(None, ["min_actors=2", "max_actors=2"]))
    log(f"training data: {n} images 240x180 generated and preprocessed in {time.time() - t:.1f} s (not measured)")
    return out


def step_rate(tracking_uri: str, run_id: str, steps_per_epoch: int, skip_epochs: int) -> tuple[float, int, float]:
    """Steps/s from the timestamps of ``train_loss`` (logged every 10 steps by rank 0), only between
    logs of the same epoch and from epoch ``skip_epochs + 1`` on: (steps/s, steps measured, seconds)."""
    from mlflow.tracking import MlflowClient

    hist = MlflowClient(tracking_uri).get_metric_history(run_id, "train_loss")
    by_epoch: dict[int, list[tuple[int, int]]] = {}
    for m in hist:
        epoch = (m.step - 1) // steps_per_epoch
        by_epoch.setdefault(epoch, []).append((m.step, m.timestamp))
    steps, secs = 0, 0.0
    for epoch, pts in by_epoch.items():
        if epoch < skip_epochs or len(pts) < 2:
            continue
        pts.sort()
        steps += pts[-1][0] - pts[0][0]
        secs += (pts[-1][1] - pts[0][1]) / 1000
    return (steps / secs if secs else float("nan")), steps, secs


def find_run(tracking_uri: str, run_name: str) -> str:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri)
    exp = client.get_experiment_by_name("sift-bench-sizing")
    runs = client.search_runs([exp.experiment_id], filter_string=f"tags.mlflow.runName = '{run_name}'") if exp else []
    if not runs:
        raise SystemExit(f"sizing: training run {run_name} left no MLflow run to measure")
    return runs[0].info.run_id


def epoch_seconds(tracking_uri: str, run_id: str) -> list[float]:
    from mlflow.tracking import MlflowClient

    return [round(m.value, 2) for m in sorted(MlflowClient(tracking_uri).get_metric_history(run_id, "epoch_s"),
                                               key=lambda m: m.step)]


def training(work: Path, data: Path, epochs: int, steps: int, lab: int, unl: int) -> dict:
    from train.config import CONFIG_DIR, load_train
    from train.main import run
    from train.tracking import tracking_uri

    uri = tracking_uri()
    res = {}
    for workers in (1, 2):
        run_name = f"sizing-w{workers}-{int(time.time())}"
        overrides = [f"num_workers={workers}", "cpus_per_worker=1", "faces=false", "hidden=1024",
                     f"epochs={epochs}", f"steps_per_epoch={steps}", "frozen_steps=-1", "early_stop=0",
                     f"labeled_batch={lab}", f"unlabeled_batch={unl}", "max_failures=0",
                     "experiment=sift-bench-sizing", f"run_name={run_name}"]
        cfg = load_train(CONFIG_DIR / "tiny.yaml", overrides)
        before, t, error = load1(), time.time(), None
        try:
            run_id = run(cfg, data, uri)["run_id"]
        except Exception as e:  # any failure: the steps are in MLflow even if finalisation failed
            error = f"{type(e).__name__}: {str(e).strip().splitlines()[-1][:300]}"
            log(f"training run {run_name} failed after start ({error}); looking up its step metrics in MLflow")
            run_id = find_run(uri, run_name)
        wall = time.time() - t
        sps, n, secs = step_rate(uri, run_id, steps, skip_epochs=1 if epochs > 1 else 0)
        per_step = workers * (lab + unl)
        res[workers] = {"value": sps * per_step, "steps_per_s": sps, "samples_per_step": per_step,
                        "steps_measured": n, "seconds_measured": secs, "run_wall_s": wall,
                        "epoch_s": epoch_seconds(uri, run_id), "run_id": run_id, "error": error,
                        "load": [before, load1()]}
        log(f"training, {workers} worker(s) x 1 CPU: {sps:.2f} steps/s = {sps * per_step:.0f} samples/s "
            f"({n} steps over {secs:.1f} s in epochs 2..{epochs}; whole run {wall:.0f} s incl. start-up, eval, "
            f"finalize; epoch_s {res[workers]['epoch_s']}), load {res[workers]['load']}")
    return res


# -- serving ----------------------------------------------------------------------------------------

def serving(work: Path, n: int, batch: int) -> dict:
    srv = load_bench("serve")
    model_dir = srv.make_model(work / "serve")
    data = srv.images(64)
    data = (data * (n // 64 + 1))[:n]
    res = {}
    for threads in (1, 2):
        before = load1()
        ips = srv.in_process(model_dir, data, batch, threads)
        res[threads] = {"value": ips, "images": n, "load": [before, load1()]}
        log(f"serving in-process, {threads} thread(s), batch {batch}: {ips:.2f} images/s, load {res[threads]['load']}")
    return res


# -- report -----------------------------------------------------------------------------------------

STAGES = {  # name: (unit, what is 1 vs 2, per-worker noun, what bounds it at N nodes)
    "preprocessing": ("items/s", "Ray Data pool 1 vs 2 actors x 1 CPU", "actor",
                      "embarrassingly parallel per item; bounded by shared-storage read/write bandwidth and "
                      "the driver's single-process dedupe/split + final write (serial, ~O(rows))"),
    "embedding": ("images/s", "Ray Data pool 1 vs 2 actors x 1 thread", "actor",
                  "independent per image: per-replica compute (CPU here, a GPU per actor on the cluster) "
                  "plus parquet read; linear until storage or the read tasks saturate"),
    "training": ("samples/s", "Ray Train num_workers 1 vs 2 x 1 CPU", "worker",
                 "data-parallel DDP: every step waits for a gradient all-reduce across workers (latency-bound "
                 "for the small head), and the global batch grows with N (tune lr / steps)"),
    "serving": ("images/s", "in-process batched, torch threads 1 vs 2", "replica-CPU",
                "per replica: batched model compute (GPU or CPU); replicas are independent, so N replicas "
                "scale ~linearly until the ingress/preprocess deployment or the network saturates"),
}


def report(results: dict, meta: dict) -> dict:
    rows, models = [], []
    for stage, r in results.items():
        unit, how, noun, bound = STAGES[stage]
        one, two = r[1]["value"], r[2]["value"]
        speedup = two / one if one else float("nan")
        eff = speedup / 2
        rows.append({"stage": stage, "unit": unit, "cpu1": one, "cpu2": two, "speedup": speedup,
                     "efficiency": eff, "method": how, "load_during": sorted({x for k in (1, 2) for x in r[k]["load"]}),
                     "detail": {"1": r[1], "2": r[2]}})
        models.append({"stage": stage, "per_worker": one, "efficiency": eff,
                       "formula": f"throughput(N) ~= N x {one:.2f} {unit} per 1-CPU {noun} x {eff:.2f}",
                       "n4": 4 * one * eff, "n16": 16 * one * eff, "bound": bound})
    print("\n== bench/sizing.py ==")
    print(f"{meta['cores']} cores, local Ray with {meta['ray_cpus']} logical CPUs; 1-min load average "
          f"{meta['load_start']} at the start, {meta['load_end']} at the end (max seen {meta['load_max']})")
    print(f"{'stage':14s} {'unit':10s} {'1 CPU':>9s} {'2 CPUs':>9s} {'speed-up':>9s}   how (load during)")
    for r in rows:
        print(f"{r['stage']:14s} {r['unit']:10s} {r['cpu1']:9.2f} {r['cpu2']:9.2f} {r['speedup']:8.2f}x   "
              f"{r['method']} (load {min(r['load_during']):.1f}-{max(r['load_during']):.1f})")
    tr = results.get("training")
    if tr:
        print(f"training steps/s: {tr[1]['steps_per_s']:.2f} (1 worker, {tr[1]['samples_per_step']} samples/step) vs "
              f"{tr[2]['steps_per_s']:.2f} (2 workers, {tr[2]['samples_per_step']} samples/step); measured on the "
              "real Ray Train path from MLflow step timestamps, start-up excluded")
    em = results.get("embedding")
    if em:
        print(f"embedding CPU ms/image (actors' own CPU, barely load-dependent): {em[1]['cpu_ms_per_image']:.0f} "
              f"(1 actor) vs {em[2]['cpu_ms_per_image']:.0f} (2 actors): ideal 2-core rate "
              f"{2000 / em[2]['cpu_ms_per_image']:.1f} images/s")
    print("\nscaling model (efficiency = speed-up / 2, measured 1 -> 2 CPUs on this machine):")
    for m in models:
        print(f"  {m['stage']:13s} {m['formula']}  (N=4: {m['n4']:.1f}, N=16: {m['n16']:.1f})")
        print(f"  {'':13s} bound: {m['bound']}")
    if meta["load_max"] > 2 * meta["cores"]:
        print(f"caveat: the load average reached {meta['load_max']:.1f} on {meta['cores']} cores (other processes): "
              "each side gets whatever CPU is free while it runs, so speed-ups are noisy in either direction")
    return {"rows": rows, "models": models}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="a smoke run: small inputs, noisy figures (~3 min idle; mostly Ray Train start-up)")
    ap.add_argument("--out", default=str(ROOT / ".sift" / "bench" / "sizing.json"))
    ap.add_argument("--workdir", default=None,
                    help="corpora, backbones, MLflow store (default: $TMPDIR/sift-bench-sizing; corpora are reused)")
    ap.add_argument("--stages", nargs="+", default=list(STAGES), choices=list(STAGES))
    args = ap.parse_args(argv)
    q = args.quick
    p = {"pre_images": 48 if q else 300, "size": (1280, 720), "embed_batch": 8 if q else 16,
         "train_images": 400 if q else 1500, "epochs": 2 if q else 3, "steps": 20 if q else 50,
         "labeled_batch": 16, "unlabeled_batch": 32, "serve_images": 32 if q else 192, "serve_batch": 32}
    work = Path(args.workdir or Path(tempfile.gettempdir()) / ("sift-bench-sizing" + ("-quick" if q else "")))
    work.mkdir(parents=True, exist_ok=True)
    os.environ["SIFT_HOME"] = str(work / "home")  # MLflow store, caches, runs: kept out of ./.sift

    from flows.core.runtime import init_ray, local_cpus
    from train.model import resolve_backbone

    start = time.time()
    loads = [load1()]
    log(f"workdir {work}; load {loads[0]} on {os.cpu_count()} cores; params {p}")
    ray = init_ray()  # 2 logical CPUs per core (flows/core/runtime.py); reused by every stage
    ray.data.DataContext.get_current().enable_progress_bars = False
    log(f"ray.init done ({time.time() - start:.1f} s, {ray.cluster_resources().get('CPU')} CPUs)")
    results, timing = {}, {}

    data = None
    if "preprocessing" in args.stages or "embedding" in args.stages:
        t = time.time()
        results["preprocessing"], data = preprocessing(work, p["pre_images"], p["size"])
        timing["preprocessing"] = time.time() - t
        loads.append(load1())
        if "preprocessing" not in args.stages:
            results.pop("preprocessing")
    vit_dir = resolve_backbone(VIT, work / "serve" / "cache")  # shared by embedding and serving
    if "embedding" in args.stages:
        t = time.time()
        results["embedding"] = embedding(data, vit_dir, p["embed_batch"])
        timing["embedding"] = time.time() - t
        loads.append(load1())
    if "training" in args.stages:
        t = time.time()
        tdata = training_data(work, p["train_images"])
        results["training"] = training(work, tdata, p["epochs"], p["steps"], p["labeled_batch"],
                                       p["unlabeled_batch"])
        timing["training"] = time.time() - t
        loads.append(load1())
    if "serving" in args.stages:
        t = time.time()
        results["serving"] = serving(work, p["serve_images"], p["serve_batch"])
        timing["serving"] = time.time() - t
        loads.append(load1())

    meta = {"cores": os.cpu_count(), "ray_cpus": local_cpus(), "load_start": loads[0], "load_end": loads[-1],
            "load_max": max([*loads, *(x for r in results.values() for k in (1, 2) for x in r[k]["load"])]),
            "quick": q, "params": p, "stage_seconds": timing}
    out = report(results, meta)
    meta["runtime_s"] = time.time() - start
    print(f"total runtime {meta['runtime_s']:.0f} s ({', '.join(f'{k} {v:.0f} s' for k, v in timing.items())})")
    path = Path(args.out)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"meta": meta, **out}, indent=2, default=float))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
