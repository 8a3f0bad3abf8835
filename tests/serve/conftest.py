"""Serve test fixtures: one deployed app per session, re-deployable with other settings."""
import socket
import time

import httpx
import pytest


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def server(trained, sift_home, tmp_path_factory):
    """Deploys the app (re-deployable with other settings) and yields (deploy, client)."""
    from ray import serve

    from serve.api.app import build_app
    from serve.config import load_serve

    port = _free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    db = tmp_path_factory.mktemp("jobs") / "jobs.db"

    def deploy(*overrides):
        cfg = load_serve(None, [f"model={trained['model']}", f"port={port}", f"jobs_db={db}",
                                "batch_wait_timeout_s=0.02", *overrides])
        serve.run(build_app(cfg), name="sift", route_prefix="/")
        client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=120)
        for _ in range(120):
            if client.get("/readyz").status_code == 200:
                break
            time.sleep(0.5)
        return cfg, client

    yield deploy, db
    serve.delete("sift")


@pytest.fixture(scope="session")
def api(server):
    deploy, _ = server
    return deploy()[1]


