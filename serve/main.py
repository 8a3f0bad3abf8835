"""``sift serve``: start the API on Ray Serve and keep it running (Ctrl-C stops it cleanly).

    sift serve                                      # models:/sift-classifier@champion on 127.0.0.1:8000
    sift serve model=.sift/runs/RUN/model port=8080 max_batch_size=64
    sift serve host=0.0.0.0 token=$SIFT_API_TOKEN   # beyond loopback a token is required
"""
from __future__ import annotations

import argparse
import os
import signal
import time

from flows.core.knobs import add_knobs_flag

from serve.config import load_serve


def serving_env() -> None:
    """Environment for a Ray that will run Serve, set before this process starts it.

    Serve's controller wakes every 0.1 s by default. Every 0.5 s it still reacts to a deploy or a
    dead replica within a second, and on 2 cores the controller and GCS then took 1.6 instead of
    3.7 ms of CPU per request at ~15 requests/s (bench/serve.py): CPU the model gets instead. A
    cluster's Ray is started elsewhere; cluster.yaml sets the same there.
    """
    os.environ.setdefault("RAY_SERVE_CONTROL_LOOP_INTERVAL_S", "0.5")


def start(cfg, blocking: bool = False):
    """Start Serve's HTTP proxy on cfg.host:cfg.port and deploy the app; returns the handle."""
    from ray import serve

    from flows.core.runtime import init_ray

    from serve.api.app import build_app

    serving_env()
    init_ray()
    serve.start(http_options={"host": cfg.host, "port": cfg.port})
    return serve.run(build_app(cfg), name="sift", route_prefix="/", blocking=blocking)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="sift serve", description=__doc__.split("\n\n")[0])
    add_knobs_flag(ap, load_serve)
    ap.add_argument("--config", help="YAML of settings (--knobs lists every knob)")
    ap.add_argument("overrides", nargs="*", help="key=value config overrides")
    args = ap.parse_args(argv)
    overrides = list(args.overrides)
    if os.environ.get("SIFT_API_TOKEN") and not any(o.startswith("token=") for o in overrides):
        overrides.append(f"token={os.environ['SIFT_API_TOKEN']}")
    cfg = load_serve(args.config, overrides)
    from train.preflight import check_model

    check_model(cfg.model, cfg.tracking_uri or None)  # before Ray: a replica would fail on it, minutes later
    start(cfg)
    print(f"sift serving {cfg.model} at http://{cfg.host}:{cfg.port}  (docs: /docs, Ctrl-C to stop)", flush=True)
    stop = {"now": False}
    signal.signal(signal.SIGTERM, lambda *_: stop.update(now=True))
    try:
        while not stop["now"]:
            time.sleep(0.5)
    except KeyboardInterrupt:
        pass
    from ray import serve

    serve.shutdown()
    print("stopped", flush=True)
    return 0


if __name__ == "__main__":
    from flows.core.cli import run_entry

    raise SystemExit(run_entry(main, "serve"))
