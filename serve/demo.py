"""The serving part of ``make demo``: start the API, classify held-out items over HTTP, stop.

    python -m serve.demo --data .sift/demo/data [--n 60] [--port 8000]

Sends the original files of the test split (never seen in training) as multipart uploads, and one
video, to the running API (model ``models:/sift-classifier@champion``), then prints the answers and
per-class accuracy, and shuts the server down cleanly. Accuracy is measured against the ground truth
when the corpus has one (``sift make-corpus`` writes ``_meta/truth.jsonl``: the noisy pool's items
are then judged by their true class), else against the given labels.
"""
from __future__ import annotations

import argparse
import collections
import socket
from pathlib import Path

import pyarrow.dataset as pads


def free_port(preferred: int) -> int:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", preferred))
            return preferred
        except OSError:
            s.bind(("127.0.0.1", 0))
            return s.getsockname()[1]


def ground_truth(data: Path) -> dict[str, str]:
    """{absolute path: true class} from the corpus's ``_meta/truth.jsonl`` (the manifest's input), or {}."""
    import json

    try:
        root = Path(json.loads((data / "manifest.json").read_text())["input"])
        lines = (root / "_meta" / "truth.jsonl").read_text().splitlines()
    except (OSError, ValueError, KeyError, TypeError):
        return {}
    out = {}
    for line in lines:
        rec = json.loads(line) if line.strip() else {}
        if rec.get("true"):
            out[str((root / rec["path"]).resolve())] = rec["true"]
    return out


def held_out(data: Path, n: int, truth: dict[str, str] | None = None) -> tuple[list[tuple[str, str]], str | None]:
    """(path, label) of labeled test-split images, and one video of the test split if any."""
    t = pads.dataset(str(data / "data"), format="parquet").to_table(
        columns=["path", "kind", "split", "label_name", "pool"]).to_pandas()
    t = t.sort_values("path", kind="stable")  # the same items every run, whatever order preprocess wrote
    test = t[t.split == "test"]
    videos = t[t.kind == "thumbnail"].sort_values("split", key=lambda s: s != "test", kind="stable")
    video = videos.path.iloc[0] if len(videos) else None
    if truth:  # every test image has a true class: clean, noisy pool and unlabeled alike
        imgs = test[test.kind == "image"].drop_duplicates("path")
        imgs = imgs[[str(Path(p).resolve()) in truth for p in imgs.path]]
        return [(p, truth[str(Path(p).resolve())]) for p in imgs.path[:n]], video
    imgs = test[(test.kind == "image") & (test.pool == "clean")].drop_duplicates("path")
    if len(imgs) < n:  # few clean labels: the noisy pool's label is the best we have
        imgs = test[(test.kind == "image") & (test.pool != "unlabeled")].drop_duplicates("path")
    return list(zip(imgs.path[:n], imgs.label_name[:n])), video


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m serve.demo", description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", required=True, help="output folder of `sift preprocess`")
    ap.add_argument("--n", type=int, default=60)
    ap.add_argument("--port", type=int, default=8000)
    ap.add_argument("--model", default="models:/sift-classifier@champion")
    args = ap.parse_args(argv)
    import httpx
    from ray import serve

    from serve.config import load_serve
    from serve.main import start

    truth = ground_truth(Path(args.data))
    items, video = held_out(Path(args.data), args.n, truth)
    cfg = load_serve(None, [f"model={args.model}", f"port={free_port(args.port)}"])
    start(cfg)
    url = f"http://{cfg.host}:{cfg.port}"
    hits, totals = collections.Counter(), collections.Counter()
    try:
        with httpx.Client(base_url=url, timeout=300) as http:
            ready = http.get("/readyz").json()
            print(f"API up at {url} (runtime {ready.get('runtime')}: {ready.get('runtime_reason')}); "
                  f"classifying {len(items)} held-out images over HTTP", flush=True)
            for i in range(0, len(items), 8):
                chunk = items[i:i + 8]
                files = [("files", (Path(p).name, Path(p).read_bytes())) for p, _ in chunk]
                results = http.post("/v1/classify", files=files).raise_for_status().json()["results"]
                for (path, truth), r in zip(chunk, results):
                    totals[truth] += 1
                    hits[truth] += r.get("label") == truth
                    if i == 0:
                        print(f"  {Path(path).name:28s} label={truth:8s} -> {r.get('label')}  "
                              + " ".join(f"{c}={p:.2f}" for c, p in r.get("probs", {}).items()))
            if video:
                r = http.post("/v1/classify/video", files={"file": (Path(video).name, Path(video).read_bytes())})
                body = r.raise_for_status().json()
                segs = ", ".join(f"{s['start']:.1f}-{s['end']:.1f}s {s['label']}" for s in body["segments"])
                print(f"video {Path(video).name}: {body['label']} ({len(body['frames'])} frames; {segs})")
    finally:
        serve.shutdown()
    print(f"{'class':10s} {'n':>4s} {'accuracy':>9s}   (against the {'ground truth' if truth else 'given labels'})")
    for c in sorted(totals):
        print(f"{c:10s} {totals[c]:4d} {hits[c] / totals[c]:9.2f}")
    n = sum(totals.values())
    print(f"{'all':10s} {n:4d} {sum(hits.values()) / max(1, n):9.2f}\nserver stopped cleanly")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
