"""``sift mlflow-server``: the tracking server for several users, jobs or nodes.

    sift mlflow-server [--host 127.0.0.1] [--port 5000] [--backend-store-uri URI] [--artifacts-destination DIR|s3://...]
    MLFLOW_TRACKING_URI=http://127.0.0.1:5000 sift train ...

A thin wrapper over ``mlflow server`` with the defaults this project wants: the embedded SQLite
store under the state dir (so a server started later shows the runs made before it), artifacts
proxied by the server (``--serve-artifacts``: clients need no access to the artifact store), one
worker (2-core machines), and loopback only unless ``--host`` says otherwise. A PostgreSQL
backend is ``--backend-store-uri postgresql://user:pass@host/db`` (install ``psycopg2-binary``).
"""
from __future__ import annotations

import argparse
import os
import sys

from .config import state_dir


def command(host: str, port: int, backend: str, artifacts: str, workers: int = 1,
            allowed_hosts: str | None = None) -> list[str]:
    """The ``mlflow server`` argv (pure; tested)."""
    cmd = [sys.executable, "-m", "mlflow", "server", "--host", host, "--port", str(port),
           "--backend-store-uri", backend, "--serve-artifacts", "--artifacts-destination", artifacts,
           "--workers", str(workers)]
    if allowed_hosts:  # MLflow 3 rejects unknown Host headers (DNS rebinding); a cluster adds its head IP
        cmd += ["--allowed-hosts", allowed_hosts]
    return cmd


def defaults() -> tuple[str, str]:
    """(backend store URI, artifact destination) under the state dir, made absolute."""
    home = state_dir().resolve()
    return f"sqlite:///{home / 'mlflow.db'}", str(home / "mlartifacts")


def main(argv=None) -> int:
    backend, artifacts = defaults()
    ap = argparse.ArgumentParser(prog="sift mlflow-server", description=__doc__.split("\n\n")[0])
    ap.add_argument("--host", default="127.0.0.1", help="bind address (default loopback; 0.0.0.0 on a cluster head)")
    ap.add_argument("--port", type=int, default=5000)
    ap.add_argument("--backend-store-uri", default=backend, help=f"default {backend}")
    ap.add_argument("--artifacts-destination", default=artifacts, help=f"default {artifacts}")
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--allowed-hosts", help="comma-separated Host headers to accept besides localhost")
    args = ap.parse_args(argv)
    if args.backend_store_uri.startswith("sqlite:///"):
        os.makedirs(os.path.dirname(args.backend_store_uri[len("sqlite:///"):]), exist_ok=True)
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    cmd = command(args.host, args.port, args.backend_store_uri, args.artifacts_destination, args.workers,
                  args.allowed_hosts)
    print(f"MLflow at http://{args.host}:{args.port}  (store {args.backend_store_uri}, artifacts "
          f"{args.artifacts_destination})", flush=True)
    os.execv(cmd[0], cmd)  # the server replaces this process: signals and exit code are its own


if __name__ == "__main__":
    from flows.core.cli import run_entry

    raise SystemExit(run_entry(main, "mlflow-server"))
