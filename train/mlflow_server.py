"""``sift mlflow-server``: the tracking server for several users, jobs or nodes.

    sift mlflow-server [--host 127.0.0.1] [--port 5000] [--backend-store-uri URI] [--artifacts-destination DIR|s3://...]
    MLFLOW_TRACKING_URI=http://127.0.0.1:5000 sift train ...

A thin wrapper over ``mlflow server`` with the defaults this project wants: the embedded SQLite
store under the state dir (so a server started later shows the runs made before it), artifacts
proxied by the server (``--serve-artifacts``: clients need no access to the artifact store), one
worker (2-core machines), and loopback only unless ``--host`` says otherwise. A PostgreSQL
backend is ``--backend-store-uri postgresql://user:pass@host/db`` (install ``psycopg2-binary``).

MLflow's own server has no authentication. ``--token-file F`` puts one in front: MLflow then binds
a loopback port only, and ``--host:--port`` is a small proxy that forwards a request only when it
carries ``Authorization: Bearer <the token in F>`` (what the MLflow client sends when
``MLFLOW_TRACKING_TOKEN`` is set). On a cluster F is Ray's own token file, already on every node
(cluster.yaml exports it as ``MLFLOW_TRACKING_TOKEN``).
"""
from __future__ import annotations

import argparse
import contextlib
import hmac
import os
import socket
import subprocess
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


# hop-by-hop headers, and the token (MLflow never sees it). A request keeps its Content-Length: a
# streamed body without one goes out chunked, which MLflow's WSGI side reads as empty.
_HOP = {"host", "connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade", "authorization",
        "proxy-authorization"}


def proxy_app(upstream: str, token: str):
    """An ASGI app that forwards every request to ``upstream`` (streamed both ways) when it carries
    the bearer ``token``; 401 JSON otherwise. The token never reaches MLflow."""
    import httpx
    from starlette.applications import Starlette
    from starlette.background import BackgroundTask
    from starlette.requests import Request
    from starlette.responses import JSONResponse, StreamingResponse
    from starlette.routing import Route

    client = httpx.AsyncClient(base_url=upstream, timeout=None, trust_env=False)
    want = token.encode()

    async def forward(request: Request):
        got = request.headers.get("authorization", "")
        if not (got.startswith("Bearer ") and hmac.compare_digest(got[7:].strip().encode(), want)):
            return JSONResponse({"error_code": "UNAUTHENTICATED", "message": "missing or wrong bearer token "
                                 "(set MLFLOW_TRACKING_TOKEN)"}, status_code=401)
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP}
        req = client.build_request(request.method, request.url.path, params=request.url.query, headers=headers,
                                   content=request.stream())
        resp = await client.send(req, stream=True)
        # the body is re-streamed decoded: its length and encoding headers no longer describe it
        out = {k: v for k, v in resp.headers.items() if k.lower() not in _HOP | {"content-encoding", "content-length"}}
        return StreamingResponse(resp.aiter_bytes(), status_code=resp.status_code, headers=out,
                                 background=BackgroundTask(resp.aclose))

    methods = ["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"]
    return Starlette(routes=[Route("/{path:path}", forward, methods=methods)])


def read_token(path: str) -> str:
    """The token in ``path`` (whitespace stripped); ConfigError when missing or empty."""
    from flows.core.config import ConfigError

    try:
        token = open(os.path.expanduser(path)).read().strip()
    except OSError as exc:
        raise ConfigError(f"--token-file {path}: {exc.strerror}") from None
    if not token:
        raise ConfigError(f"--token-file {path} is empty")
    return token


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
    ap.add_argument("--token-file", help="require this bearer token (MLFLOW_TRACKING_TOKEN): MLflow binds loopback, "
                    "a proxy on --host:--port checks the token")
    args = ap.parse_args(argv)
    token = read_token(args.token_file) if args.token_file else None
    if args.backend_store_uri.startswith("sqlite:///"):
        os.makedirs(os.path.dirname(args.backend_store_uri[len("sqlite:///"):]), exist_ok=True)
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    print(f"MLflow at http://{args.host}:{args.port}  (store {args.backend_store_uri}, artifacts "
          f"{args.artifacts_destination}){'; bearer token required' if token else ''}", flush=True)
    if token is None:
        cmd = command(args.host, args.port, args.backend_store_uri, args.artifacts_destination, args.workers,
                      args.allowed_hosts)
        os.execv(cmd[0], cmd)  # the server replaces this process: signals and exit code are its own
    with socket.socket() as s:  # MLflow itself on a free loopback port, reachable only through the proxy
        s.bind(("127.0.0.1", 0))
        inner = s.getsockname()[1]
    cmd = command("127.0.0.1", inner, args.backend_store_uri, args.artifacts_destination, args.workers)
    mlflow = subprocess.Popen(cmd)
    try:
        import uvicorn

        uvicorn.run(proxy_app(f"http://127.0.0.1:{inner}", token), host=args.host, port=args.port,
                    log_level="warning")
    finally:
        stop_tree(mlflow)
    return 0


def stop_tree(proc: subprocess.Popen, timeout: float = 30) -> None:
    """Stop ``proc`` and every process under it: MLflow's server runs uvicorn and job-runner workers
    beside itself, which outlive their parent when only it is stopped."""
    import psutil

    try:
        tree = [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        return
    for p in tree:
        with contextlib.suppress(psutil.NoSuchProcess):
            p.terminate()
    _, alive = psutil.wait_procs(tree, timeout=timeout)
    for p in alive:
        with contextlib.suppress(psutil.NoSuchProcess):
            p.kill()


if __name__ == "__main__":
    from flows.core.cli import run_entry

    raise SystemExit(run_entry(main, "mlflow-server"))
