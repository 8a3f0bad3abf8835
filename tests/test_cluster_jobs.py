"""Every stage as a Ray job on a real local multi-node cluster: ``ray start --head`` with token auth
and Ray's autoscaler (the fake multinode provider: real raylets on this machine, each its own node,
added and removed by the autoscaler with the load), then ``ray job submit --working-dir . -- sift ...``
exactly as the README shows it.

The shape is cluster.yaml's, small: a head and 1-CPU CPU workers (0..3), plus a GPU worker type
(0..1) that nothing here asks for, so it is never launched: ``use_gpu=auto`` must see it all the same.
Every node has one CPU, so two 1-CPU actors (preprocessing, Serve model replicas) are on two nodes by
construction; the tests check that with Ray's state API."""
import json
import urllib.request
import uuid

import pytest

from tests.cluster_util import Cluster, free_ports

pytestmark = pytest.mark.slow

NODE_TYPES = {"cpu": {"resources": {"CPU": 1}, "max_workers": 3},
              "gpu": {"resources": {"CPU": 1, "GPU": 1}, "max_workers": 1}}


@pytest.fixture(scope="module")
def cluster():
    # idle workers go after 30 s; a stage that finds too few brings them back (its actors wait for them)
    with Cluster(num_cpus=1, node_types=NODE_TYPES, max_workers=4, idle_minutes=0.5) as c:
        yield c


def alive_workers(cluster) -> list[dict]:
    return [n for n in cluster.nodes() if n["state"] == "ALIVE" and not n.get("is_head_node")]


def run_python(cluster, code: str) -> dict:
    """``code`` as a job (a driver on the cluster); the JSON it prints on a line starting 'RESULT '."""
    rc, log = cluster.submit(["python", "-c", code])
    assert rc == 0, log[-3000:]
    return json.loads(next(ln for ln in log.splitlines() if ln.startswith("RESULT "))[len("RESULT "):])


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


def test_the_autoscaler_adds_nodes_for_the_load_and_use_gpu_auto_sees_the_gpu_type(cluster):
    assert alive_workers(cluster) == []  # the head alone
    got = run_python(cluster, """
import json, time, ray
from ray.autoscaler.sdk import request_resources
from flows.core.gpus import cluster_view, resolve_use_gpu
ray.init()
resources, types, _ = cluster_view()
print("RESULT " + json.dumps({"gpus_now": resources.get("GPU", 0), "types": {t.name: dict(t.resources) for t in types},
                             "auto": resolve_use_gpu("auto"), "false": resolve_use_gpu("false")}))
request_resources(bundles=[{"CPU": 1}] * 4)  # the cluster grows to 4 CPUs: the head and 3 workers
deadline = time.monotonic() + 120
while len([n for n in ray.nodes() if n["Alive"]]) < 4 and time.monotonic() < deadline:
    time.sleep(0.5)
# withdrawn (Ray Data's own requests replace it anyway): the nodes stay while they are busy or idle
# for less than idle_minutes, and the preprocessing job that comes next finds them
request_resources(num_cpus=0)
""")
    # no GPU anywhere now, but the autoscaler may add one: auto trains on it
    assert got["gpus_now"] == 0 and got["types"] == {"cpu": {"CPU": 1.0}, "gpu": {"CPU": 1.0, "GPU": 1.0}}
    assert got["auto"] is True and got["false"] is False
    workers = cluster.wait_for(lambda: (w := alive_workers(cluster)) and len(w) >= 3 and w, timeout=120)
    assert len(workers) == 3 and all(w["resources_total"].get("CPU") == 1 for w in workers)
    assert not any(w["resources_total"].get("GPU") for w in workers)  # CPU demand never launches the GPU type


def test_preprocess_job_spreads_the_actor_pool_over_nodes_and_loses_nothing(cluster, corpus):
    out = corpus / "data"
    # min_actors=2 of 1 CPU each on 1-CPU nodes: two nodes at least. Ray Data starts the pool's actors
    # asynchronously by default and would run on the first alone if the autoscaler is slow to add the
    # node; RAY_DATA_DEFAULT_WAIT_FOR_MIN_ACTORS_S makes it wait for both (the pool's growth under load
    # is tested on one node, tests/flows/test_preprocess_ray.py)
    rc, log = cluster.submit(["sift", "preprocess", "--input", str(corpus / "corpus"), "--output", str(out),
                              "min_actors=2", "max_actors=3", "batch_size=4", "video_keyframes=3"],
                             env_vars={"RAY_DATA_DEFAULT_WAIT_FOR_MIN_ACTORS_S": "240"})
    assert rc == 0, log[-3000:]
    assert "succeeded" in log.lower()
    m = json.loads((out / "manifest.json").read_text())
    pool = m["actor_pool"]
    assert 2 <= pool["max_size"] <= 3 and pool["actors"] >= 2, pool
    assert m["inputs"] >= 161 and m["rows"] > m["inputs"] // 2 and m["frames"] >= 1
    assert m["rejects"]["total"] >= 1  # the corpus carries broken files: recorded, not fatal
    # the pool's actors ran on more than one node (Ray's state API keeps the finished ones)
    actors = cluster.actors("MapBatches(Preprocessor)")
    assert len(actors) >= 2 and len({a["node_id"] for a in actors}) >= 2, actors


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
                              "epochs=1", "steps_per_epoch=2", "frozen_steps=1", "early_stop=0", f"run_name={name}",
                              "use_gpu=false"],  # auto would ask for the GPU type, whose fake GPU torch can't use
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
    rc, log = cluster.submit(["sift", "scan", str(video), "--output", str(home / "scans"), "--model", model,
                              "actor_cpus=1", "threads=1"], env_vars=env)  # the nodes have 1 CPU each
    assert rc == 0, log[-3000:]
    summary = json.loads((home / "scans" / "scan.json").read_text())
    assert summary["errors"] == [] and len(summary["videos"]) == 1
    timeline = json.loads((home / "scans" / f"{video.stem}.timeline.json").read_text())
    assert timeline["frames"] and timeline["segments"]


def test_serve_model_replicas_spread_over_nodes(cluster, home):
    models = sorted(home.glob("runs/*/model"))
    if not models:
        pytest.skip("needs the train job's model")
    port, sid = free_ports(1)[0], f"serve-{uuid.uuid4().hex[:8]}"
    # ray job stop sends SIGTERM, then SIGKILL after RAY_JOB_STOP_WAIT_TIME_S (3 s by default): too
    # short for sift serve's serve.shutdown(), and a killed driver leaves Serve's detached replicas up
    rc, log = cluster.submit(["sift", "serve", f"model={models[-1]}", f"port={port}", "min_replicas=2",
                              "max_replicas=2"], env_vars={"SIFT_HOME": str(home), "RAY_JOB_STOP_WAIT_TIME_S": "90"},
                             wait=False, submission_id=sid)
    assert rc == 0, log[-3000:]
    try:
        def replicas():
            """two model replicas alive"""
            if cluster.job(sid)["status"] in ("FAILED", "STOPPED", "SUCCEEDED"):
                raise AssertionError(cluster.job(sid))
            up = [a for a in cluster.actors("ServeReplica:sift:Model") if a["state"] == "ALIVE"]
            return up if len(up) >= 2 else None

        up = cluster.wait_for(replicas, timeout=240, every=2)
        assert len(up) == 2 and len({a["node_id"] for a in up}) == 2, up

        def ready():
            """the API answers /readyz"""
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=5) as r:
                    return r.status == 200
            except OSError:
                return False

        assert cluster.wait_for(ready, timeout=120, every=1)
    finally:
        cluster.stop(sid)
    # the job's end took the application down with it: no replica is left to keep a node busy
    assert cluster.job(sid)["status"] == "STOPPED"
    cluster.wait_for(lambda: not [a for a in cluster.actors("ServeReplica:sift") if a["state"] == "ALIVE"],
                     timeout=60, every=2)


def test_idle_worker_nodes_are_removed_once_the_load_is_gone(cluster):
    workers = {n["node_id"] for n in cluster.nodes() if not n.get("is_head_node")}
    assert len(workers) >= 3  # every worker node this module saw, the autoscaler added
    cluster.wait_for(lambda: not alive_workers(cluster), timeout=240, every=2)
    dead = {n["node_id"] for n in cluster.nodes() if n["state"] == "DEAD"}
    assert workers <= dead and not any(n["state"] == "ALIVE" for n in cluster.nodes() if n["node_id"] in workers)
