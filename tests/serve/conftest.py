"""Serve test fixtures: one deployed app per session, re-deployable with other settings."""
import socket
import time

import httpx
import pytest


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Deployer:
    """``deploy(*overrides)`` runs the app with those settings and returns (cfg, client), redeploying
    only when the app up has other settings (a deployment costs ~20 s here: tests that change settings
    do not put the default back, and test_api runs the tests of the default app first);
    ``deploy()`` is the default app."""

    def __init__(self, model: str, port: int, db):
        self.model, self.port, self.db, self.now = model, port, db, None

    def __call__(self, *overrides):
        """The app with ``overrides``: the one up already when it has exactly those settings."""
        from ray import serve

        if self.now is not None and self.now[0] == overrides:
            return self.now[1], self.now[2]

        from serve.api.app import build_app
        from serve.config import load_serve

        cfg = load_serve(None, [f"model={self.model}", f"port={self.port}", f"jobs_db={self.db}",
                                "batch_wait_timeout_s=0.02", *overrides])
        serve.run(build_app(cfg), name="sift", route_prefix="/")
        client = httpx.Client(base_url=f"http://127.0.0.1:{self.port}", timeout=120)
        for _ in range(120):
            if client.get("/readyz").status_code == 200:
                break
            time.sleep(0.5)
        self.now = (overrides, cfg, client)
        return cfg, client


@pytest.fixture(scope="package")
def server(trained, sift_home, tmp_path_factory):
    """(deploy, jobs_db): the app on one port for the serve tests, re-deployable with other settings.

    Package-scoped: Serve and its replicas' CPUs are given back when the serve tests are done, so
    the Ray flows that run after them in the same session have the whole Ray (the preprocessing pool
    grows only into free CPUs)."""
    from ray import serve

    port = _free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    deploy = Deployer(trained["model"], port, tmp_path_factory.mktemp("jobs") / "jobs.db")
    yield deploy, deploy.db
    serve.delete("sift")
    serve.shutdown()


@pytest.fixture
def api(server):
    """A client of the default app (deployed again if the test before left other settings up)."""
    return server[0]()[1]
