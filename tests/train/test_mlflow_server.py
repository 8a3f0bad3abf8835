"""Training against a real ``mlflow server`` process (started by ``sift mlflow-server``), not a file store."""
import os
import subprocess
import sys
import time
import urllib.request

import pytest

from tests.cluster_util import free_ports
from train.mlflow_server import command


def test_the_server_command_binds_loopback_and_proxies_artifacts():
    cmd = command("127.0.0.1", 5000, "sqlite:////x/mlflow.db", "/x/mlartifacts")
    assert cmd[cmd.index("--host") + 1] == "127.0.0.1" and "--serve-artifacts" in cmd
    assert cmd[cmd.index("--workers") + 1] == "1" and "--allowed-hosts" not in cmd
    assert command("0.0.0.0", 5000, "b", "a", allowed_hosts="10.0.0.5")[-1] == "10.0.0.5"


@pytest.fixture
def server(tmp_path):
    (port,) = free_ports(1)
    env = {**os.environ, "SIFT_HOME": str(tmp_path)}
    log = open(tmp_path / "server.log", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "train.mlflow_server", "--port", str(port)], env=env,
                            stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 90
    while True:
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as r:
                if r.status == 200:
                    break
        except OSError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"mlflow server did not start: {(tmp_path / 'server.log').read_text()[-2000:]}")
        time.sleep(0.5)
    yield url, tmp_path
    proc.terminate()
    proc.wait(30)
    log.close()


@pytest.mark.slow
def test_training_logs_runs_artifacts_and_the_registry_through_the_server(server, preprocessed, sift_home):
    from serve.predictor import resolve_model
    from train.artifact import SiftModel
    from train.config import CONFIG_DIR, load_train
    from train.main import run

    url, server_home = server
    _, data, _ = preprocessed
    cfg = load_train(CONFIG_DIR / "tiny.yaml", ["epochs=1", "steps_per_epoch=2", "frozen_steps=1",
                                                "early_stop=0", "run_name=via-server"])
    s = run(cfg, data, tracking_uri=url)
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=url)
    r = client.get_run(s["run_id"])
    assert r.info.status == "FINISHED" and r.data.params["backbone"] == "tiny"
    assert r.info.artifact_uri.startswith("mlflow-artifacts:")  # proxied: the client never touches disk
    assert "plots/curves.png" in {a.path for a in client.list_artifacts(s["run_id"], "plots")}
    # the server wrote the store and the artifacts under its own state dir, not the client's
    assert (server_home / "mlflow.db").exists() and any((server_home / "mlartifacts").rglob("curves.png"))
    assert not any((sift_home / "mlartifacts").rglob(f"*{s['run_id']}*"))
    assert client.get_model_version_by_alias("sift-classifier", "candidate").run_id == s["run_id"]
    path, name, version = resolve_model("models:/sift-classifier@candidate", tracking_uri=url,
                                        cache=server_home / "model-cache")
    assert version == str(s["version"]) and SiftModel(path).classes == ["BAD", "GOOD", "NEUTRAL"]
