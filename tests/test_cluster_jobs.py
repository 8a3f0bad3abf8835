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
    """The generated corpus the stages' jobs read (``sift make-corpus`` uses no Ray: it is written
    here, not as a job, which would only add a job's ~12 s start and stop)."""
    from flows.corpus import make_corpus

    root = tmp_path_factory.mktemp("jobs")
    make_corpus(root / "corpus", images=160, videos=1, seed=3, workers=1, progress=False)
    truth = (root / "corpus" / "_meta" / "truth.jsonl").read_text().splitlines()
    assert len(truth) >= 161 and all((root / "corpus" / json.loads(t)["path"]).is_file() for t in truth)
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


def trained_model(home):
    """The model dir of the tune job's best trial (the @candidate), or a skip when that job did not run."""
    trials = home / "runs" / "tune-test" / "trials.json"
    if not trials.exists():
        pytest.skip("needs the tune job's model")
    return home / "runs" / json.loads(trials.read_text())["best"]["run"] / "model"


def test_tune_job_nests_real_trials_and_registers_the_best(cluster, corpus, home, capsys):
    """``sift tune`` as a job, the training stage of this module: two Ray Train trials (each a
    ``sift train`` run: 2 epochs of 3 steps, both at once) nested in MLflow under the search's run,
    ASHA as configured, the best trial's version @candidate. The stages after it score, review and
    serve with that trial's model (a separate ``sift train`` job would cost ~2 min more here and run
    the same ``train.main.run``; the ``sift train`` command is tested locally)."""
    import math

    import mlflow

    from train.runs import main as runs

    data = corpus / "data"
    if not (data / "manifest.json").exists():
        pytest.skip("needs the preprocess job's output")
    space = home / "space.yaml"
    space.write_text("lr: {grid: [0.003, 1.0e-7]}\n")
    caches = set((home / "cache").glob("*"))
    rc, log = cluster.submit(["sift", "tune", "--data", str(data), "--config", "train/configs/tiny.yaml",
                              "--space", str(space), "--samples", "1", "--max-concurrent", "2", "epochs=2",
                              "steps_per_epoch=3", "frozen_steps=-1", "experiment=tune-test",
                              "model_name=tune-test-model", "run_name=tune-test", "use_gpu=false"],
                             env_vars={"SIFT_HOME": str(home)})
    assert rc == 0, log[-3000:]
    assert "@candidate" in log
    uri = f"sqlite:///{home / 'mlflow.db'}"
    client = mlflow.MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name("tune-test")
    parent = client.search_runs([exp.experiment_id], "tags.`sift.stage` = 'tune'")[0]
    assert parent.info.run_name == "tune-test" and parent.info.status == "FINISHED"
    pid = parent.info.run_id
    children = client.search_runs([exp.experiment_id], f"tags.`mlflow.parentRunId` = '{pid}'")
    assert len(children) == 2
    assert {c.info.run_name for c in children} == {f"tune-test-{c.data.tags['sift.trial']}" for c in children}
    assert sorted(float(c.data.params["lr"]) for c in children) == [1e-7, 0.003]
    for c in children:  # params and metrics as `sift train` logs them
        assert c.data.params["backbone"] == "tiny" and c.data.params["epochs"] == "2"
        assert c.data.params["classes_list"] == "BAD,GOOD,NEUTRAL" and c.data.tags["sift.tune"] == "tune-test"
        assert client.get_metric_history(c.info.run_id, "val_selection")
    # ASHA: the scheduler as configured; a trial it stopped has no model and is marked KILLED
    p = parent.data.params
    assert (p["asha.max_t"], p["asha.grace_period"], p["asha.rungs"], p["asha.metric"], p["asha.time_attr"]) == \
        ("1", "1", "[1]", "val_selection", "epoch")
    trials = json.loads((home / "runs" / "tune-test" / "trials.json").read_text())["trials"]
    versions = {v.run_id: v for v in client.search_model_versions("name='tune-test-model'")}
    for t in trials:
        assert (t["status"] == "FINISHED") == bool(t["version"]) == (t["run_id"] in versions)
        assert t["epochs"] == 2 if t["status"] == "FINISHED" else t["epochs"] < 2
    finished = [c for c in children if c.info.status == "FINISHED"]
    assert finished and len(finished) + parent.data.metrics["trials_stopped"] == 2
    # the best trial's version is the candidate, and its score is the best of the trials
    best = max(finished, key=lambda c: c.data.metrics["best_val_selection"])
    candidate = client.get_model_version_by_alias("tune-test-model", "candidate")
    assert candidate.run_id == best.info.run_id == p["best_run_id"]
    assert "test_macro_f1" in best.data.metrics and trained_model(home).is_dir()
    assert parent.data.metrics["best_val_selection"] == best.data.metrics["best_val_selection"]
    assert p["best.lr"] == best.data.params["lr"] and math.isfinite(parent.data.metrics["best_val_selection"])
    # the plot of every trial's val_selection, written and logged
    assert (home / "runs" / "tune-test" / "trials.png").stat().st_size > 5000
    assert {"trials.png", "trials.json"} <= {a.path for a in client.list_artifacts(pid)}
    # one embedding cache, built before the trials (or already there), reused by both
    new = set((home / "cache").glob("*")) - caches
    assert len(new) <= 1 and not any(".tmp" in c.name for c in new)
    # sift runs compares the trials of the search
    capsys.readouterr()
    assert runs(["--experiment", "tune-test", "--parent", "latest", "--tracking-uri", uri,
                 "--plot", str(home / "trials_cmp.png")]) == 0
    out = capsys.readouterr().out
    header, *rows = out.splitlines()[:3]
    assert {"status", "best_val_selection", "epoch", "lr"} <= set(header.split())
    assert len(rows) == 2 and all(r.startswith("tune-test-") for r in rows)
    assert "1e-07" in out and "0.003" in out and "FINISHED" in out


def test_predict_and_scan_jobs_score_with_the_trained_model(cluster, corpus, home):
    import pyarrow.parquet as pq

    model, env = str(trained_model(home)), {"SIFT_HOME": str(home)}
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


def test_review_job_serves_the_page_behind_its_token(cluster, corpus, home):
    run = trained_model(home).parent.name  # the best trial's run, whose predictions the queue ranks
    port, sid = free_ports(1)[0], f"review-{uuid.uuid4().hex[:8]}"
    rc, log = cluster.submit(["sift", "review", "--data", str(corpus / "data"), "--run", run, "--port", str(port),
                              "--token", "t0k", "labels_db=" + str(home / "labels.db")],
                             env_vars={"SIFT_HOME": str(home)}, wait=False, submission_id=sid)
    assert rc == 0, log[-3000:]
    try:
        def status(path, token=None):
            req = urllib.request.Request(f"http://127.0.0.1:{port}{path}")
            if token:
                req.add_header("Authorization", f"Bearer {token}")
            try:
                with urllib.request.urlopen(req, timeout=5) as r:
                    return r.status, json.loads(r.read()) if path.startswith("/api/") else None
            except urllib.error.HTTPError as e:
                return e.code, None
            except OSError:
                if cluster.job(sid)["status"] in ("FAILED", "STOPPED", "SUCCEEDED"):
                    raise AssertionError(cluster.job(sid)) from None
                return 0, None

        assert cluster.wait_for(lambda: status("/api/stats")[0] == 401, timeout=120, every=1)
        code, queue = status("/api/queue", "t0k")
        assert code == 200 and queue["items"], queue  # the latest run's predictions, ranked for review
    finally:
        cluster.stop(sid)


def test_scrape_job_runs_its_browsers_on_the_nodes(cluster, tmp_path):
    from tests.flows.test_scrape import COMMON, GOOD_IMAGES, served_site

    out = tmp_path / "ds"
    with served_site(tmp_path / "site") as site:
        # two start URLs on two 1-CPU browsers: one each, on two nodes
        rc, log = cluster.submit(["sift", "scrape", f"{site}/index.html", f"{site}/paged/1.html", "--to", str(out),
                                  "--label", "GOOD", "browsers=2", "browser_cpus=1", *COMMON])
    assert rc == 0, log[-3000:]
    items = [json.loads(line) for line in (out / "items.jsonl").read_text().splitlines() if line.strip()]
    names = {it["url"].rsplit("/", 1)[1] for it in items}
    assert {f"{n}.jpg" for n in GOOD_IMAGES} <= names and {"p1.jpg", "p2.jpg"} & names
    failures = {json.loads(line)["reason"] for line in (out / "failures.jsonl").read_text().splitlines() if line}
    assert {"decode_error", "http_404"} <= failures  # the site's broken and missing images: recorded, not fatal
    browsers = [a for a in cluster.actors("PageWorker") if a["job_id"] == browsers_job(cluster, log)]
    assert len(browsers) == 2 and len({a["node_id"] for a in browsers}) == 2, browsers


def browsers_job(cluster, log: str) -> str:
    """The Ray job id of the submission whose output is ``log`` (the jobs API maps the two)."""
    sid = next(ln.split("'")[1] for ln in log.splitlines() if "submitted successfully" in ln)
    return cluster.job(sid)["job_id"]


def test_serve_model_replicas_spread_over_nodes(cluster, home):
    model = trained_model(home)
    port, sid = free_ports(1)[0], f"serve-{uuid.uuid4().hex[:8]}"
    # ray job stop sends SIGTERM, then SIGKILL after RAY_JOB_STOP_WAIT_TIME_S (3 s by default): too
    # short for sift serve's serve.shutdown(), and a killed driver leaves Serve's detached replicas up
    rc, log = cluster.submit(["sift", "serve", f"model={model}", f"port={port}", "min_replicas=2",
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
    try:  # serve.shutdown() takes a while on a loaded machine (each replica's graceful shutdown)
        cluster.wait_for(lambda: not [a for a in cluster.actors("ServeReplica:sift") if a["state"] == "ALIVE"],
                         timeout=150, every=2)
    except TimeoutError as exc:
        raise AssertionError(f"replicas left after the job stopped; its output:\n{cluster.logs(sid)[-3000:]}") from exc


def test_idle_worker_nodes_are_removed_once_the_load_is_gone(cluster):
    workers = {n["node_id"] for n in cluster.nodes() if not n.get("is_head_node")}
    assert len(workers) >= 3  # every worker node this module saw, the autoscaler added
    # as an edited cluster.yaml would: the running autoscaler rereads it (30 s more of waiting otherwise)
    cluster.set_idle_minutes(0.05)
    cluster.wait_for(lambda: not alive_workers(cluster), timeout=240, every=2)
    dead = {n["node_id"] for n in cluster.nodes() if n["state"] == "DEAD"}
    assert workers <= dead and not any(n["state"] == "ALIVE" for n in cluster.nodes() if n["node_id"] in workers)
