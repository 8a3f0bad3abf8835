"""Serving throughput and latency: batching on vs off over HTTP, and HTTP vs in-process, same run.

A ViT-B/32-size CLIP (random init: real compute, no weights) behind the sift API on loopback.
32 concurrent clients each send single-image requests; the same images go through the in-process
Predictor in batches of 32 (decode + prepare + model, no HTTP) as the baseline, once before Ray
starts and once after it stops: the ratio uses their mean (this machine's speed drifts by ~5%
between runs minutes apart, as much as the margin being measured).

    python bench/serve.py [--clients 32 --requests 256 --batch 32]

Targets (issue #4): HTTP batched / in-process batched >= 0.8; batching >= 2x batch-size-1
throughput at 32 concurrent clients.
"""
from __future__ import annotations

import argparse
import asyncio
import io
import socket
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from flows.core.runtime import quiet_env

quiet_env()


def make_model(out: Path) -> Path:
    """A random-init ViT-B/32 CLIP vision tower + head saved as a sift artifact (no faces)."""
    import torch

    from train.artifact import save
    from train.model import Classifier, load_backbone, resolve_backbone

    bb_dir = resolve_backbone("random-vit-b32", out / "cache")
    backbone, preproc = load_backbone(bb_dir)
    torch.manual_seed(0)
    model = Classifier(backbone, 3, 0, hidden=1024).eval()
    return save(out / "model", model, backbone_id="random-vit-b32", preproc=preproc, short_edge=448,
                classes=["BAD", "NEUTRAL", "GOOD"], thresholds=[1 / 3] * 3, temperature=1.0, faces=None,
                hidden=1024, dropout=0.1)


def images(n: int) -> list[bytes]:
    rng = np.random.default_rng(0)
    out = []
    for _ in range(n):
        a = rng.integers(0, 256, (45, 80, 3), dtype=np.uint8)
        buf = io.BytesIO()
        Image.fromarray(a).resize((800, 450)).save(buf, "JPEG", quality=85)
        out.append(buf.getvalue())
    return out


def in_process(model_dir: Path, data: list[bytes], batch: int, threads: int) -> float:
    import torch

    from serve.config import load_serve
    from serve.predictor import Limits, Predictor, prepare_image

    torch.set_num_threads(threads)
    p, limits = Predictor(model_dir), Limits.of(load_serve())
    p.classify([prepare_image(d, limits, 448) for d in data[:batch]])  # warm-up: one full batch
    t = time.perf_counter()
    for i in range(0, len(data), batch):
        arrays = [prepare_image(d, limits, 448) for d in data[i:i + batch]]
        p.classify(arrays)
    return len(data) / (time.perf_counter() - t)


async def load(url: str, data: list[bytes], clients: int, total: int) -> tuple[float, list[float], int]:
    """``clients`` concurrent keep-alive connections posting ``total`` single-image multipart requests.
    aiohttp (Ray Serve's own dependency) rather than httpx: the load generator shares the 2 cores
    with the server, and httpx took ~2.2 ms of CPU per request."""
    import aiohttp

    latencies: list[float] = []
    errors = 0
    queue: asyncio.Queue = asyncio.Queue()
    for i in range(total):
        queue.put_nowait(data[i % len(data)])

    async def post(http, body) -> int:
        form = aiohttp.FormData()
        form.add_field("files", body, filename="x.jpg", content_type="image/jpeg")
        async with http.post(f"{url}/v1/classify", data=form) as r:
            await r.read()
            return r.status

    async def client(http):
        nonlocal errors
        while not queue.empty():
            body = queue.get_nowait()
            t = time.perf_counter()
            status = await post(http, body)
            latencies.append(time.perf_counter() - t)
            errors += status != 200

    conn = aiohttp.TCPConnector(limit=clients)
    async with aiohttp.ClientSession(connector=conn, timeout=aiohttp.ClientTimeout(total=300)) as http:
        await asyncio.gather(*[post(http, d) for d in data[:clients]])  # warm-up: one round of every client
        t = time.perf_counter()
        await asyncio.gather(*[client(http) for _ in range(clients)])
        wall = time.perf_counter() - t
    return total / wall, latencies, errors


def pct(xs: list[float], q: float) -> float:
    return float(np.percentile(xs, q) * 1000) if xs else float("nan")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--clients", type=int, default=32)
    ap.add_argument("--requests", type=int, default=256)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--model-cpus", type=float, default=2.0)
    args = ap.parse_args(argv)
    import ray
    from ray import serve

    from flows.core.runtime import init_ray
    from serve.api.app import build_app
    from serve.config import load_serve
    from serve.main import serving_env

    work = Path(tempfile.mkdtemp(prefix="sift-bench-serve-"))
    model_dir = make_model(work)
    data = images(64)
    same = data * max(1, args.requests // 64)
    before = in_process(model_dir, same, args.batch, threads=int(args.model_cpus))
    print(f"in-process batched (batch {args.batch}), before: {before:.1f} images/s", flush=True)
    serving_env()  # as `sift serve` starts its Ray
    init_ray(num_cpus=4)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    rows = {}
    for name, bs in (("batching on", args.batch), ("batching off", 1)):
        cfg = load_serve(None, [f"model={model_dir}", f"port={port}", f"max_batch_size={bs}",
                                f"max_ongoing_requests={max(2 * bs, 2)}", "max_queued_requests=-1",
                                "batch_wait_timeout_s=0.02", f"model_cpus={args.model_cpus}",
                                "preprocess_replicas=1", "preprocess_cpus=0.5", "request_timeout_s=600"])
        serve.run(build_app(cfg), name="sift", route_prefix="/")
        tput, lat, errors = asyncio.run(load(f"http://127.0.0.1:{port}", data, args.clients, args.requests))
        rows[name] = (tput, pct(lat, 50), pct(lat, 95), pct(lat, 99), errors)
        print(f"{name:13s}: {tput:6.1f} images/s  p50 {rows[name][1]:7.0f} ms  p95 {rows[name][2]:7.0f} ms  "
              f"p99 {rows[name][3]:7.0f} ms  errors {errors}", flush=True)
    serve.shutdown()
    ray.shutdown()
    after = in_process(model_dir, same, args.batch, threads=int(args.model_cpus))
    print(f"in-process batched (batch {args.batch}), after: {after:.1f} images/s", flush=True)
    ips = (before + after) / 2  # bracketing the HTTP runs: the machine's speed drifts run to run
    on, off = rows["batching on"][0], rows["batching off"][0]
    print("\n== bench/serve.py ==")
    print(f"ViT-B/32-size random-init CLIP, {args.clients} concurrent clients, {args.requests} single-image "
          f"requests per mode, model replica {args.model_cpus:g} CPUs, loopback HTTP")
    print(f"{'mode':14s} {'images/s':>9s} {'p50 ms':>8s} {'p95 ms':>8s} {'p99 ms':>8s}")
    for name, (t, p50, p95, p99, _) in rows.items():
        print(f"{name:14s} {t:9.1f} {p50:8.0f} {p95:8.0f} {p99:8.0f}")
    print(f"{'in-process':14s} {ips:9.1f}   (mean of {before:.1f} before and {after:.1f} after the HTTP runs)")
    print(f"batching on / off:             {on / off:.2f}x  (target >= 2)")
    print(f"HTTP batched / in-process:     {on / ips:.2f}   (target >= 0.8)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
