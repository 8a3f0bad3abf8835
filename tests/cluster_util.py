"""A real local Ray cluster for tests: ``ray start --head --block`` with token auth on its own ports.

The test session may already run a local Ray (``ray.init``) on the default ports; this cluster
gets free ports and its own temp dir so the two never meet, and it is stopped by signalling the
blocking ``ray start`` process (which takes its children down) -- never ``ray stop``, which would
kill every Ray on the machine.
"""
from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def free_ports(n: int, avoid: range = range(0)) -> list[int]:
    """n distinct ports free right now, none inside ``avoid``."""
    socks, ports = [], []
    try:
        while len(ports) < n:
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)  # held until all are chosen, so none is handed out twice
            if s.getsockname()[1] not in avoid:
                ports.append(s.getsockname()[1])
    finally:
        for s in socks:
            s.close()
    return ports


WORKER_PORTS = 200


def cluster_ports() -> tuple[list[int], range]:
    """Nine component ports and a worker port range that does not contain any of them (Ray refuses
    to start when a component port falls inside the worker range)."""
    w0 = free_ports(1, avoid=range(65536 - WORKER_PORTS, 65536))[0]
    workers = range(w0, w0 + WORKER_PORTS + 1)
    return free_ports(9, avoid=workers), workers


class Cluster:
    """``with Cluster(num_cpus=4) as c: c.submit([...])``; ``c.env`` talks to it (token included)."""

    def __init__(self, num_cpus: int = 4, env: dict | None = None):
        self.num_cpus = num_cpus
        self.token = secrets.token_hex(16)
        self.temp = Path(tempfile.mkdtemp(prefix="rayc-", dir="/tmp"))  # short: unix socket paths <= 107 chars
        (gcs, dash, agent, agent_grpc, metrics, rt_env, nm, om, client), workers = cluster_ports()
        self.gcs, self.dashboard = gcs, dash
        self.address = f"http://127.0.0.1:{dash}"
        self.env = {**os.environ, **(env or {}), "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": self.token,
                    "RAY_USAGE_STATS_ENABLED": "0", "PATH": f"{BIN}:{os.environ.get('PATH', '')}"}
        self.env.pop("RAY_ADDRESS", None)
        self.cmd = [str(BIN / "ray"), "start", "--head", "--block", "--disable-usage-stats",
                    f"--num-cpus={num_cpus}", "--node-ip-address=127.0.0.1", f"--port={gcs}",
                    "--include-dashboard=true", "--dashboard-host=127.0.0.1", f"--dashboard-port={dash}",
                    f"--dashboard-agent-listen-port={agent}", f"--dashboard-agent-grpc-port={agent_grpc}",
                    f"--metrics-export-port={metrics}", f"--runtime-env-agent-port={rt_env}",
                    f"--node-manager-port={nm}", f"--object-manager-port={om}",
                    f"--ray-client-server-port={client}", f"--min-worker-port={workers.start}",
                    f"--max-worker-port={workers.stop - 1}", f"--temp-dir={self.temp}"]
        self.proc = None

    def __enter__(self) -> "Cluster":
        self.log = open(self.temp / "ray-start.log", "wb")
        self.proc = subprocess.Popen(self.cmd, env=self.env, stdout=self.log, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"ray start exited: {(self.temp / 'ray-start.log').read_text()[-2000:]}")
            if self.status(self.token) == 200:
                return self
            time.sleep(1)
        self.__exit__()
        raise TimeoutError("the local Ray cluster did not come up in 120 s")

    def status(self, token: str | None) -> int:
        """HTTP status of the jobs API with this bearer token (None: no header)."""
        req = urllib.request.Request(f"{self.address}/api/jobs/")
        if token is not None:
            req.add_header("Authorization", f"Bearer {token}")
        try:
            with urllib.request.urlopen(req, timeout=5) as r:
                return r.status
        except urllib.error.HTTPError as e:
            return e.code
        except OSError:
            return 0

    def submit(self, entrypoint: list[str], env_vars: dict | None = None, timeout: float = 600) -> tuple[int, str]:
        """``ray job submit --working-dir <repo> -- entrypoint`` (waits); returns (exit code, output)."""
        runtime_env = {"env_vars": {"PYTHONUNBUFFERED": "1", **(env_vars or {})}}
        cmd = [str(BIN / "ray"), "job", "submit", "--address", self.address, "--working-dir", str(ROOT),
               "--runtime-env-json", json.dumps(runtime_env), "--", *entrypoint]
        p = subprocess.run(cmd, env=self.env, capture_output=True, text=True, timeout=timeout)
        return p.returncode, p.stdout + p.stderr

    def __exit__(self, *exc) -> None:
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                # a graceful stop takes ~30 s here; the cluster is throwaway, so do not wait for it
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
        self._kill_leftovers()
        self.log.close()
        shutil.rmtree(self.temp, ignore_errors=True)

    def _kill_leftovers(self) -> None:
        """Processes of this cluster that outlived ``ray start`` (they carry its temp dir or GCS port)."""
        import psutil

        marks = (str(self.temp), f":{self.gcs}")
        for p in psutil.process_iter(["cmdline"]):
            line = " ".join(p.info["cmdline"] or [])
            if p.pid != os.getpid() and any(m in line for m in marks):
                try:
                    p.kill()
                except psutil.Error:
                    pass
