"""Every stage as a Ray job on a real local cluster: ``ray start --head`` with token auth, then
``ray job submit --working-dir . -- sift ...`` exactly as the README shows it."""
import json
import uuid

import pytest

from tests.cluster_util import Cluster

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def cluster():
    with Cluster(num_cpus=4) as c:
        yield c


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    from flows.corpus import make_corpus

    root = tmp_path_factory.mktemp("jobs")
    make_corpus(root / "corpus", images=160, videos=1, seed=3, workers=1, progress=False)
    return root


def test_the_cluster_refuses_clients_without_its_token(cluster):
    assert cluster.status(None) == 401
    assert cluster.status("not-the-token") in (401, 403)
    assert cluster.status(cluster.token) == 200


def test_preprocess_job_grows_the_actor_pool_and_loses_nothing(cluster, corpus):
    out = corpus / "data"
    rc, log = cluster.submit(["sift", "preprocess", "--input", str(corpus / "corpus"), "--output", str(out),
                              "min_actors=1", "max_actors=2", "batch_size=4", "video_keyframes=3"])
    assert rc == 0, log[-3000:]
    assert "succeeded" in log.lower()
    m = json.loads((out / "manifest.json").read_text())
    pool = m["actor_pool"]
    # the autoscaling pool started at min_actors and grew to max_actors under load (40 small blocks keep
    # one actor's queue long enough for Ray Data's utilisation rule to add the second)
    assert pool["timeline"][0][1] == 1 and pool["max_size"] == 2, pool
    assert m["inputs"] >= 161 and m["rows"] > m["inputs"] // 2 and m["frames"] >= 1
    assert m["rejects"]["total"] >= 1  # the corpus carries broken files: recorded, not fatal


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    """The jobs' state dir (SIFT_HOME): MLflow store and runs, shared by the train and scoring jobs."""
    return tmp_path_factory.mktemp("jobs_home")


def test_train_job_tracks_and_registers_in_mlflow(cluster, corpus, home):
    data, tmp_path = corpus / "data", home
    if not (data / "manifest.json").exists():
        pytest.skip("needs the preprocess job's output")
    name = f"job-{uuid.uuid4().hex[:8]}"
    rc, log = cluster.submit(["sift", "train", "--data", str(data), "--config", "train/configs/tiny.yaml",
                              "epochs=1", "steps_per_epoch=2", "frozen_steps=1", "early_stop=0", f"run_name={name}"],
                             env_vars={"SIFT_HOME": str(tmp_path)})
    assert rc == 0, log[-3000:]
    assert "@candidate" in log
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    runs = client.search_runs(client.search_experiments()[0].experiment_id, f"tags.mlflow.runName = '{name}'")
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    assert "test_macro_f1" in runs[0].data.metrics
    versions = client.search_model_versions(f"run_id='{runs[0].info.run_id}'")
    assert versions and versions[0].name == "sift-classifier"


def test_predict_and_scan_jobs_score_with_the_trained_model(cluster, corpus, home):
    import pyarrow.parquet as pq

    models = sorted(home.glob("runs/*/model"))
    if not models:
        pytest.skip("needs the train job's model")
    model, env = str(models[-1]), {"SIFT_HOME": str(home)}
    rc, log = cluster.submit(["sift", "predict", "--input", str(corpus / "data"), "--output",
                              str(home / "preds.parquet"), "--model", model], env_vars=env)
    assert rc == 0, log[-3000:]
    preds = pq.read_table(home / "preds.parquet").to_pandas()
    manifest = json.loads((corpus / "data" / "manifest.json").read_text())
    assert len(preds) == manifest["rows"] and (preds["error"] == "").all()
    assert set(preds["label"]) <= {"BAD", "NEUTRAL", "GOOD"}
    video = next(p for p in sorted((corpus / "corpus").rglob("*")) if p.suffix in (".mp4", ".webm", ".mkv", ".mov")
                 and "broken" not in p.name)
    rc, log = cluster.submit(["sift", "scan", str(video), "--output", str(home / "scans"), "--model", model],
                             env_vars=env)
    assert rc == 0, log[-3000:]
    summary = json.loads((home / "scans" / "scan.json").read_text())
    assert summary["errors"] == [] and len(summary["videos"]) == 1
    timeline = json.loads((home / "scans" / f"{video.stem}.timeline.json").read_text())
    assert timeline["frames"] and timeline["segments"]
