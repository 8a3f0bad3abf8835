"""Training against a real ``mlflow server`` process (started by ``sift mlflow-server``), not a file store."""
import contextlib
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest

from tests.cluster_util import free_ports
from train.mlflow_server import command


def test_the_server_command_binds_loopback_and_proxies_artifacts():
    cmd = command("127.0.0.1", 5000, "sqlite:////x/mlflow.db", "/x/mlartifacts")
    assert cmd[cmd.index("--host") + 1] == "127.0.0.1" and "--serve-artifacts" in cmd
    assert cmd[cmd.index("--workers") + 1] == "1" and "--allowed-hosts" not in cmd
    assert command("0.0.0.0", 5000, "b", "a", allowed_hosts="10.0.0.5")[-1] == "10.0.0.5"


def _start(tmp_path, *extra, headers=None):
    (port,) = free_ports(1)
    env = {**os.environ, "SIFT_HOME": str(tmp_path)}
    log = open(tmp_path / "server.log", "wb")
    # its own process group: MLflow's server starts uvicorn and job-runner workers of its own, and
    # stopping must take them all down (a leftover set would load the machine for the tests after)
    proc = subprocess.Popen([sys.executable, "-m", "train.mlflow_server", "--port", str(port), *extra], env=env,
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 90
    while True:
        try:
            with urllib.request.urlopen(urllib.request.Request(f"{url}/health", headers=headers or {}),
                                        timeout=2) as r:
                if r.status == 200:
                    break
        except OSError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            _stop(proc, log)
            pytest.fail(f"mlflow server did not start: {(tmp_path / 'server.log').read_text()[-2000:]}")
        time.sleep(0.5)
    return url, proc, log


def _stop(proc, log):
    import signal

    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)
    time.sleep(1)
    with contextlib.suppress(ProcessLookupError):  # workers that outlived their parent
        os.killpg(proc.pid, signal.SIGKILL)
    log.close()


@pytest.fixture
def server(tmp_path):
    url, proc, log = _start(tmp_path)
    yield url, tmp_path
    _stop(proc, log)


@pytest.mark.slow
def test_with_a_token_file_the_store_answers_only_bearers_of_it(tmp_path, monkeypatch):
    import mlflow

    (tmp_path / "token").write_text("s3cret-token\n")
    token = "s3cret-token"
    url, proc, log = _start(tmp_path, "--token-file", str(tmp_path / "token"), headers={"Authorization": f"Bearer {token}"})
    try:
        for sent in ({}, {"Authorization": "Bearer wrong"}):
            with pytest.raises(urllib.error.HTTPError) as exc:
                urllib.request.urlopen(urllib.request.Request(f"{url}/api/2.0/mlflow/experiments/search",
                                                              headers=sent), timeout=10)
            assert exc.value.code == 401
        monkeypatch.setenv("MLFLOW_TRACKING_TOKEN", token)
        client = mlflow.MlflowClient(tracking_uri=url)
        exp = client.create_experiment("through-the-proxy")
        run = client.create_run(exp)
        client.log_metric(run.info.run_id, "m", 0.5)
        client.log_text(run.info.run_id, "x" * 100_000, "big.txt")  # an artifact upload, streamed through
        assert client.get_run(run.info.run_id).data.metrics["m"] == 0.5
        assert client.download_artifacts(run.info.run_id, "big.txt", str(tmp_path))
        monkeypatch.delenv("MLFLOW_TRACKING_TOKEN")
        with pytest.raises(Exception, match="401|UNAUTHENTICATED|token"):
            mlflow.MlflowClient(tracking_uri=url).get_run(run.info.run_id)
    finally:
        _stop(proc, log)


@pytest.mark.slow
def test_training_through_the_server_resumes_a_lost_worker_in_the_same_run(server, preprocessed, sift_home,
                                                                           monkeypatch):
    """One training (each costs ~90 s here) for two things: runs, artifacts and the registry go
    through the server, and a worker lost after epoch 1 resumes from its checkpoint into the same
    MLflow run (its embedding cache on ONNX Runtime INT8, another cache than the session's torch one)."""
    from serve.predictor import resolve_model
    from train.artifact import SiftModel
    from train.config import CONFIG_DIR, load_train
    from train.main import run

    url, server_home = server
    _, data, _ = preprocessed
    monkeypatch.setenv("SIFT_FAIL_AFTER_EPOCH", "1")
    cfg = load_train(CONFIG_DIR / "tiny.yaml", ["epochs=2", "steps_per_epoch=2", "frozen_steps=-1", "early_stop=0",
                                                "run_name=via-server", "max_failures=1", "cache_runtime=onnx-int8"])
    s = run(cfg, data, tracking_uri=url)
    assert list((sift_home / "cache").glob("*.onnx/embed.int8.onnx"))
    assert (sift_home / "runs" / "via-server" / "injected_failure").read_text() == "1"
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=url)
    r = client.get_run(s["run_id"])
    assert r.info.status == "FINISHED" and r.data.params["backbone"] == "tiny"
    # epoch 1 logged before the failure, epoch 2 after the resume: the same MLflow run, no restart
    assert sorted(m.value for m in client.get_metric_history(s["run_id"], "epoch")) == [1.0, 2.0]
    assert r.info.artifact_uri.startswith("mlflow-artifacts:")  # proxied: the client never touches disk
    assert "plots/curves.png" in {a.path for a in client.list_artifacts(s["run_id"], "plots")}
    # the server wrote the store and the artifacts under its own state dir, not the client's
    assert (server_home / "mlflow.db").exists() and any((server_home / "mlartifacts").rglob("curves.png"))
    assert not any((sift_home / "mlartifacts").rglob(f"*{s['run_id']}*"))
    assert client.get_model_version_by_alias("sift-classifier", "candidate").run_id == s["run_id"]
    path, name, version = resolve_model("models:/sift-classifier@candidate", tracking_uri=url,
                                        cache=server_home / "model-cache")
    assert version == str(s["version"]) and SiftModel(path).classes == ["BAD", "GOOD", "NEUTRAL"]
