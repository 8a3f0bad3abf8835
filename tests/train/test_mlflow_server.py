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


TOKEN = "s3cret-token"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """``(url, its state dir)``: one ``sift mlflow-server`` behind a token file for the module (a start
    costs ~15 s here)."""
    home = tmp_path_factory.mktemp("mlflow-server")
    (home / "token").write_text(TOKEN + "\n")
    url, proc, log = _start(home, "--token-file", str(home / "token"), headers={"Authorization": f"Bearer {TOKEN}"})
    yield url, home
    _stop(proc, log)


@pytest.mark.slow
def test_with_a_token_file_the_store_answers_only_bearers_of_it(server, tmp_path, monkeypatch):
    import mlflow

    url, _ = server
    for sent in ({}, {"Authorization": "Bearer wrong"}):
        with pytest.raises(urllib.error.HTTPError) as exc:
            urllib.request.urlopen(urllib.request.Request(f"{url}/api/2.0/mlflow/experiments/search",
                                                          headers=sent), timeout=10)
        assert exc.value.code == 401
    monkeypatch.setenv("MLFLOW_TRACKING_TOKEN", TOKEN)
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


@pytest.mark.slow
def test_training_through_the_server_resumes_a_lost_worker_and_uses_corrections(server, preprocessed, sift_home,
                                                                               tmp_path, monkeypatch):
    """One training (each costs ~60 s here) for three things: runs, artifacts and the registry go
    through the token-guarded server (the token reaches the Ray Train workers); a worker lost after
    epoch 1 resumes from its checkpoint into the same MLflow run (its embedding cache on ONNX
    Runtime INT8, another cache than the session's torch one); and the human corrections of a label
    store (what ``sift review`` writes) become clean labels, counted and logged."""
    import json

    import mlflow
    import pyarrow.parquet as pq

    from flows.core.labels import LabelStore
    from serve.predictor import resolve_model
    from train import predictions
    from train.artifact import SiftModel
    from train.config import CONFIG_DIR, load_train
    from train.main import run

    url, server_home = server
    _, data, manifest = preprocessed
    items = pq.read_table(data / "data", columns=["id", "split", "label", "pool"]).to_pandas()
    train_items = items[items.split == "train"]
    # an unlabeled training item becomes a clean GOOD, a noisy-pool one a clean BAD, an unlabeled
    # validation item a clean NEUTRAL; an id that is not in the data is not used
    unl = train_items[train_items.pool == "unlabeled"].id.iat[0]
    noisy = train_items[train_items.pool == "noisy"].id.iat[0]
    val = items[(items.split == "val") & (items.pool == "unlabeled")].id.iat[0]
    classes = manifest["classes"]
    store = LabelStore(tmp_path / "labels.db", classes)
    store.add_correction(unl, "GOOD", who="tester", previous="unlabeled")
    store.add_correction(noisy, "BAD", who="tester", previous="NEUTRAL")
    store.add_correction(val, "NEUTRAL", who="tester", previous="unlabeled")
    store.add_correction("not-in-this-data", "BAD", who="tester")
    expect = {unl: "GOOD", noisy: "BAD", val: "NEUTRAL"}

    monkeypatch.setenv("MLFLOW_TRACKING_TOKEN", TOKEN)  # the driver's; the workers get it from the run
    monkeypatch.setenv("SIFT_FAIL_AFTER_EPOCH", "1")
    cfg = load_train(CONFIG_DIR / "tiny.yaml", ["epochs=2", "steps_per_epoch=2", "frozen_steps=-1", "early_stop=0",
                                                "run_name=via-server", "max_failures=1", "cache_runtime=onnx-int8",
                                                f"labels_db={tmp_path / 'labels.db'}"])
    s = run(cfg, data, tracking_uri=url)
    assert list((sift_home / "cache").glob("*.onnx/embed.int8.onnx"))
    assert (sift_home / "runs" / "via-server" / "injected_failure").read_text() == "1"
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

    # the corrections: counted by class, the store named, the items listed (also as an artifact)
    m = r.data.metrics
    assert m["corrections_used"] == len(expect) and m["corrections_unmatched"] == 1
    for c in classes:
        assert m[f"corrections_{c}"] == sum(1 for lab in expect.values() if lab == c)
    assert r.data.params["labels_db"] == str(tmp_path / "labels.db")
    used = json.loads((sift_home / "runs" / "via-server" / "corrections.json").read_text())
    assert {it["id"]: it["label"] for it in used["items"]} == expect
    assert "corrections.json" in {a.path for a in client.list_artifacts(s["run_id"])}
    # the data the run trained on carries the new labels, as clean labeled items; one more labeled
    # training item (the noisy one was labeled already, the val one is not for training)
    df, _, meta = predictions.read(sift_home / "runs" / "via-server" / "predictions.parquet")
    got = df.set_index("id").loc[list(expect)]
    assert got["label"].tolist() == [classes.index(lab) for lab in expect.values()]
    assert set(got["pool"]) == {"clean"} and meta["run_id"] == s["run_id"]
    assert int(r.data.params["n_labeled"]) == int((train_items.label >= 0).sum()) + 1
