"""A real local Ray cluster for tests: ``ray start --head --block`` with token auth on its own ports,
optionally autoscaling: with ``node_types`` the head runs Ray's autoscaler with the fake multinode
provider (``RAY_FAKE_CLUSTER=1``), which adds and removes real raylets (each its own node id and
resources, same machine) as tasks, actors and placement groups wait for resources.

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
FAKE_HEAD_NODE_ID = "f" * 51 + "00000"  # ray.autoscaler._private.fake_multi_node.node_provider's head id


def cluster_ports() -> tuple[list[int], range]:
    """Nine component ports and a worker port range that does not contain any of them (Ray refuses
    to start when a component port falls inside the worker range)."""
    w0 = free_ports(1, avoid=range(65536 - WORKER_PORTS, 65536))[0]
    workers = range(w0, w0 + WORKER_PORTS + 1)
    return free_ports(9, avoid=workers), workers


def autoscaling_config(gcs: int, head: dict, node_types: dict, max_workers: int, idle_minutes: float) -> dict:
    """A cluster-launcher config for the fake multinode provider: the head's resources, the worker
    types (``{name: {"resources": {...}, "min_workers": n, "max_workers": m}}``), the limits."""
    head_type = "ray.head.default"
    types = {name: {"node_config": {}, "min_workers": 0, **t} for name, t in node_types.items()}
    return {"cluster_name": "fake", "max_workers": max_workers, "upscaling_speed": 1.0,
            "idle_timeout_minutes": idle_minutes,
            # Ray's fake multinode provider, each node with its own runtime-env dir (tests/fake_nodes.py);
            # disable_node_updaters: a fake node is a raylet the monitor starts, nothing to ssh into;
            # use_node_id_as_ip: all nodes share one IP, so the autoscaler tells them apart by node id
            "provider": {"type": "external", "module": "tests.fake_nodes.FakeNodes", "gcs_address": f"127.0.0.1:{gcs}",
                         "use_node_id_as_ip": True, "disable_launch_config_check": True,
                         "disable_node_updaters": True},
            "auth": {"ssh_user": "ubuntu"},
            "available_node_types": {head_type: {"resources": head, "node_config": {}, "max_workers": 0}, **types},
            "head_node_type": head_type, "file_mounts": {}, "cluster_synced_files": [],
            "file_mounts_sync_continuously": False, "rsync_exclude": [], "rsync_filter": [],
            "initialization_commands": [], "setup_commands": [], "head_setup_commands": [],
            "worker_setup_commands": [], "head_start_ray_commands": [], "worker_start_ray_commands": []}


class Cluster:
    """``with Cluster(num_cpus=4) as c: c.submit([...])``; ``c.env`` talks to it (token included).

    ``node_types`` makes it autoscale (see the module docstring): worker nodes come and go with the
    load, within ``max_workers``, and go after ``idle_minutes`` without work.
    """

    def __init__(self, num_cpus: int = 4, env: dict | None = None, node_types: dict | None = None,
                 max_workers: int = 4, idle_minutes: float = 1.0):
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
        if node_types:
            self.conf = self.temp / "autoscaling.json"
            self.conf.write_text(json.dumps(autoscaling_config(gcs, {"CPU": num_cpus}, node_types, max_workers,
                                                               idle_minutes)))
            self.cmd.append(f"--autoscaling-config={self.conf}")
            # the autoscaler looks at the load every second (Ray's own autoscaling tests do the same)
            # the head gets the node id the fake provider lists it under (worker nodes get theirs from it)
            self.env.update({"RAY_FAKE_CLUSTER": "1", "AUTOSCALER_UPDATE_INTERVAL_S": "1",
                             "RAY_OVERRIDE_NODE_ID_FOR_TESTING": FAKE_HEAD_NODE_ID,
                             # the autoscaler (on the head) imports the provider from this repository
                             "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))})
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

    def set_idle_minutes(self, minutes: float) -> None:
        """A new ``idle_timeout_minutes`` for the running autoscaler: it reads its config file again
        on every update (StandardAutoscaler.reset), as it does when a cluster's YAML is edited."""
        conf = json.loads(self.conf.read_text())
        tmp = self.conf.with_suffix(".tmp")
        tmp.write_text(json.dumps({**conf, "idle_timeout_minutes": minutes}))
        tmp.replace(self.conf)  # atomic: the autoscaler never reads half a file

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

    def get(self, path: str):
        """GET ``path`` of the dashboard with the cluster's token; the decoded JSON."""
        req = urllib.request.Request(f"{self.address}{path}")
        req.add_header("Authorization", f"Bearer {self.token}")
        with urllib.request.urlopen(req, timeout=30) as r:
            return json.loads(r.read())

    def nodes(self) -> list[dict]:
        """Every node the GCS knows (alive and dead): ``node_id``, ``state``, ``resources_total``, ..."""
        return self.get("/api/v0/nodes?limit=1000&detail=1")["data"]["result"]["result"]

    def actors(self, class_contains: str = "") -> list[dict]:
        """Every actor (alive and dead) whose class name contains ``class_contains``: ``node_id``,
        ``state``, ``class_name``, ``job_id``, ... (Ray's state API; dead actors stay listed)."""
        rows = self.get("/api/v0/actors?limit=10000&detail=1")["data"]["result"]["result"]
        return [a for a in rows if class_contains in (a.get("class_name") or "")]

    def wait_for(self, what, timeout: float = 120, every: float = 1.0):
        """Poll ``what()`` until it returns something truthy; that value (TimeoutError after ``timeout``)."""
        deadline = time.monotonic() + timeout
        while True:
            got = what()
            if got:
                return got
            if time.monotonic() > deadline:
                raise TimeoutError(f"not within {timeout:g} s: {getattr(what, '__doc__', None) or what}")
            time.sleep(every)

    def submit(self, entrypoint: list[str], env_vars: dict | None = None, timeout: float = 600,
               wait: bool = True, submission_id: str | None = None) -> tuple[int, str]:
        """``ray job submit --working-dir <repo> -- entrypoint``; returns (exit code, output). It waits
        for the job to end unless ``wait`` is False (then only the submission's own exit code)."""
        runtime_env = {"env_vars": {"PYTHONUNBUFFERED": "1", **(env_vars or {})}}
        cmd = [str(BIN / "ray"), "job", "submit", "--address", self.address, "--working-dir", str(ROOT),
               "--runtime-env-json", json.dumps(runtime_env)]
        cmd += ([] if wait else ["--no-wait"]) + (["--submission-id", submission_id] if submission_id else [])
        p = subprocess.run([*cmd, "--", *entrypoint], env=self.env, capture_output=True, text=True, timeout=timeout)
        return p.returncode, p.stdout + p.stderr

    def job(self, submission_id: str) -> dict:
        """The job's record in the jobs API (``status``, ``message``, ...)."""
        return self.get(f"/api/jobs/{submission_id}")

    def logs(self, submission_id: str) -> str:
        """The job's driver output so far."""
        return self.get(f"/api/jobs/{submission_id}/logs").get("logs", "")

    def stop(self, submission_id: str) -> None:
        """``ray job stop``: SIGTERM to the job's entrypoint (waits until it has ended)."""
        subprocess.run([str(BIN / "ray"), "job", "stop", "--address", self.address, submission_id], env=self.env,
                       capture_output=True, text=True, timeout=120)

    def __exit__(self, *exc) -> None:
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                # a graceful stop takes ~30 s here; the cluster is throwaway, so do not wait for it
                self.proc.wait(2)
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
