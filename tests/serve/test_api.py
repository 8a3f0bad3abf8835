"""The HTTP API on a real in-process Ray Serve with the tiny trained model."""
import asyncio
import base64
import contextlib
import io
import struct
import subprocess
import threading
import time
import zlib

import httpx
import numpy as np
import pytest
from PIL import Image

pytestmark = pytest.mark.slow


def _ruled(trained, res: dict) -> str:
    """The label the artifact's own decision rule gives the probabilities an answer returned: a
    served label must be that one, not merely one of the class names."""
    from train.artifact import SiftModel

    model = SiftModel(trained["model"])
    p = np.array([[res["probs"][c] for c in model.classes]])
    return model.classes[int(model.decision.predict(p)[0])]


def _jpeg(seed=0, size=(200, 150)):
    a = np.random.default_rng(seed).integers(0, 256, (size[1] // 10, size[0] // 10, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(a).resize(size).save(buf, "JPEG")
    return buf.getvalue()


def _bomb():
    buf = io.BytesIO()
    Image.new("L", (8, 8)).save(buf, "PNG")
    d = bytearray(buf.getvalue())
    d[16:24] = struct.pack(">II", 30000, 30000)
    d[29:33] = struct.pack(">I", zlib.crc32(bytes(d[12:29])) & 0xFFFFFFFF)
    return bytes(d)


def test_classify_multipart_and_json_with_tiles(api, trained):
    r = api.post("/v1/classify", files=[("files", ("a.jpg", _jpeg(1))), ("files", ("b.jpg", _jpeg(2)))])
    assert r.status_code == 200, r.text
    res = r.json()["results"]
    assert [x["name"] for x in res] == ["a.jpg", "b.jpg"]
    for x in res:
        assert x["label"] == _ruled(trained, x) and abs(sum(x["probs"].values()) - 1) < 1e-5
        assert set(x["thresholds"]) == {"BAD", "NEUTRAL", "GOOD"}
        assert x["version"] == "local" and x["latency_ms"] >= 0 and x["batch_size"] >= 1
    j = api.post("/v1/classify", json={"images": [base64.b64encode(_jpeg(1)).decode()], "tiles": 5,
                                        "tile_agg": "max"})
    assert j.status_code == 200 and j.json()["results"][0]["label"] == _ruled(trained, j.json()["results"][0])


def test_same_answer_as_the_local_model(api, trained):
    from train.artifact import SiftModel

    model = SiftModel(trained["model"])
    local = model.predict([_jpeg(3)])[0]
    remote = api.post("/v1/classify", files=[("files", ("c.jpg", _jpeg(3)))]).json()["results"][0]
    ready = api.get("/readyz").json()  # runtime=auto: the same engine as the local model's choice
    assert ready["runtime"] == model.runtime != "torch" and ready["runtime_reason"].startswith("auto")
    assert remote["label"] == local["label"]
    for c, p in local["probs"].items():
        assert abs(remote["probs"][c] - p) < 1e-5


@pytest.mark.parametrize("kind, request_kw, status", [
    ("not json", dict(content=b"{", headers={"content-type": "application/json"}), 400),
    ("bad base64", dict(json={"images": ["!!not base64!!"]}), 400),
    ("no items", dict(json={"images": []}), 422),
    ("bad option", dict(json={"images": [base64.b64encode(_jpeg()).decode()], "tiles": 3}), 422),
    ("wrong content type", dict(content=b"abc", headers={"content-type": "text/plain"}), 415),
])
def test_bad_requests_get_4xx_json(api, kind, request_kw, status):
    r = api.post("/v1/classify", **request_kw)
    assert r.status_code == status, (kind, r.text)
    assert "code" in r.json()["error"]
    assert api.get("/healthz").status_code == 200


@pytest.mark.parametrize("data, status, code", [
    (b"", 400, "empty"),
    (b"just some text, not an image at all", 415, "not_media"),
    (b"<!doctype html><html></html>", 415, "not_media"),
    (_jpeg()[:300], 422, "decode_error"),
    (_bomb(), 413, "too_many_pixels"),
])
def test_bad_images_get_per_item_errors_and_the_rest_answers(api, trained, data, status, code):
    r = api.post("/v1/classify", files=[("files", ("bad", data)), ("files", ("ok.jpg", _jpeg(4)))])
    assert r.status_code == 200
    bad, ok = r.json()["results"]
    assert (bad["status"], bad["error"]["code"]) == (status, code)
    assert ok["label"] == _ruled(trained, ok)


def test_video_gives_frames_timeline_and_a_label(api, trained, tmp_path):
    path = tmp_path / "v.mp4"
    subprocess.run(["ffmpeg", "-v", "error", "-f", "lavfi", "-i", "color=c=red:s=320x240:d=3", "-f", "lavfi",
                    "-i", "color=c=blue:s=320x240:d=3", "-filter_complex", "[0][1]concat=n=2:v=1[v]",
                    "-map", "[v]", "-pix_fmt", "yuv420p", str(path)], check=True)
    r = api.post("/v1/classify/video", files={"file": ("v.mp4", path.read_bytes())}, params={"aggregate": "mean"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["aggregate"] == "mean"
    # the label is the serving rule on the mean of the returned frame probabilities
    from train.artifact import SiftModel
    from serve.timeline import video_label

    model = SiftModel(trained["model"])
    p = np.array([[f["probs"][c] for c in model.classes] for f in body["frames"]])
    assert body["label"] == model.classes[video_label(p, p, model.thresholds, "mean")]
    assert body["probs"] == pytest.approx(dict(zip(model.classes, p.mean(0) / p.mean(0).sum())), abs=1e-6)
    times = [f["t"] for f in body["frames"]]
    assert times == sorted(times) and len(times) >= 3 and abs(body["duration"] - 6.0) < 0.2
    segs = body["segments"]
    assert segs[0]["start"] == pytest.approx(times[0]) and segs[-1]["end"] == pytest.approx(6.0, abs=0.2)
    bad = api.post("/v1/classify/video", files={"file": ("v.mp4", b"\x00\x00\x00\x18ftypisom" + b"\x01" * 500)})
    assert bad.status_code == 422 and api.get("/healthz").status_code == 200


@pytest.fixture(scope="module")
def long_clip(tmp_path_factory):
    """Five minutes at one frame per second: cheap to make, long enough to ask for too many frames."""
    path = tmp_path_factory.mktemp("long") / "long.mp4"
    subprocess.run(["ffmpeg", "-v", "error", "-f", "lavfi", "-i", "testsrc=size=320x240:rate=1:duration=300",
                    "-pix_fmt", "yuv420p", "-c:v", "libx264", "-preset", "ultrafast", str(path)], check=True)
    return path


def _ffmpegs_on_uploads() -> list:
    import psutil

    out = []
    for proc in _ours():
        with contextlib.suppress(psutil.Error):
            if "ffmpeg" in proc.name() and "sift-video-" in " ".join(proc.cmdline()):
                out.append(proc)
    return out


def _ours() -> list:
    """This session's processes: its Ray (raylet, workers, Serve replicas) descends from this process,
    so another session's Ray on the same machine (a parallel test worker, a cluster) is not seen."""
    import psutil

    return psutil.Process().children(recursive=True)


def _api_replicas() -> list:
    import psutil

    out = []
    for proc in _ours():
        with contextlib.suppress(psutil.Error):
            if "ServeReplica:sift:Api" in " ".join(proc.cmdline()):
                out.append(proc)
    return out


def test_a_video_request_that_would_make_too_many_frames_is_refused_before_decoding(api, long_clip):
    t0 = time.perf_counter()
    r = api.post("/v1/classify/video", files={"file": ("long.mp4", long_clip.read_bytes())}, params={"fps": 60})
    assert r.status_code == 413 and r.json()["error"]["code"] == "too_many_frames", r.text
    assert "fps <=" in r.json()["error"]["message"] and time.perf_counter() - t0 < 20
    assert api.get("/healthz").status_code == 200


def test_metrics_count_requests_errors_and_batches(api):
    assert api.post("/v1/classify", files=[("files", ("a.jpg", _jpeg(8)))]).status_code == 200
    api.post("/v1/classify", json={"images": []})
    text = api.get("/metrics").text
    assert 'sift_requests_total{code="200",endpoint="classify"}' in text
    assert 'sift_errors_total{code="422",endpoint="classify"}' in text
    assert "sift_batch_size_bucket" in text and "sift_request_latency_seconds_bucket" in text
    # the same series through Ray's metrics agent (ray.serve.metrics), labelled by replica, for one
    # Prometheus scrape over every replica and node; the agent exports them every few seconds
    import ray

    port = ray.nodes()[0]["MetricsExportPort"]

    def classified_ok(text):
        return next((x for x in text.splitlines() if x.startswith("ray_sift_requests") and 'endpoint="classify"' in x
                     and 'code="200"' in x), "")

    # wait for this series itself: the app is shared with earlier tests, so other sift_requests series
    # (their 4xx codes) may already be exported while this one is still on its way
    deadline, found = time.time() + 60, ""
    while time.time() < deadline and not classified_ok(found):
        with contextlib.suppress(httpx.HTTPError):
            found = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
        time.sleep(2)
    line = classified_ok(found)
    assert 'deployment="Api"' in line and float(line.rsplit(" ", 1)[1]) >= 1, found[-2000:]


def test_a_request_whose_every_item_failed_gets_their_status_not_200(api):
    text = [("files", ("a.txt", b"just some text, not an image at all")), ("files", ("b.txt", b"more text, still not"))]
    r = api.post("/v1/classify", files=text)
    assert r.status_code == 415, r.text
    body = r.json()
    assert body["error"]["code"] == "all_failed" and [x["status"] for x in body["results"]] == [415, 415]
    mixed = api.post("/v1/classify", files=[text[0], ("files", ("c.jpg", _jpeg()[:300]))])
    assert mixed.status_code == 422 and [x["status"] for x in mixed.json()["results"]] == [415, 422]
    with pytest.raises(httpx.HTTPStatusError):
        r.raise_for_status()


def test_typed_parameters_are_validated_as_json_errors(api):
    r = api.post("/v1/classify", files=[("files", ("a.jpg", _jpeg()))], params={"tiles": 3})
    assert r.status_code == 422 and r.json()["error"]["code"] == "bad_option" and "tiles" in r.json()["error"]["message"]
    v = api.post("/v1/classify/video", files={"file": ("v.mp4", b"x")}, params={"fps": 1000})
    assert v.status_code == 422 and "fps" in v.json()["error"]["message"]
    bad = api.post("/v1/classify", content=b"--x\r\nnot a part", headers={"content-type": "multipart/form-data; boundary=x"})
    assert bad.status_code in (400, 422) and "code" in bad.json()["error"]
    assert api.get("/nope").json()["error"]["code"] == "not_found"


def test_openapi_documents_typed_endpoints_and_a_generated_client_classifies(api, trained, tmp_path):
    import importlib
    import json
    import sys
    from pathlib import Path

    spec = api.get("/openapi.json").json()
    paths = spec["paths"]
    assert {"/v1/classify", "/v1/classify/video", "/v1/jobs", "/v1/jobs/{job_id}", "/healthz", "/readyz",
            "/metrics"} <= set(paths)
    op = paths["/v1/classify"]["post"]
    assert {"multipart/form-data", "application/json"} <= set(op["requestBody"]["content"])
    assert {p["name"] for p in op["parameters"]} == {"tiles", "tile_agg"} and op["security"] == [{"token": []}]
    assert spec["components"]["securitySchemes"]["token"]["scheme"] == "bearer"
    assert op["responses"]["200"]["content"]["application/json"]["schema"]["$ref"].endswith("/ClassifyResponse")
    # a client generated from the document, exactly as a user would, classifies through it
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    (tmp_path / "gen.yaml").write_text("post_hooks: []\n")
    gen = Path(sys.executable).parent / "openapi-python-client"
    out = subprocess.run([str(gen), "generate", "--path", str(tmp_path / "spec.json"), "--meta", "none",
                          "--output-path", str(tmp_path / "sift_api_client"), "--config", str(tmp_path / "gen.yaml")],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    sys.path.insert(0, str(tmp_path))
    try:
        pkg = importlib.import_module("sift_api_client")
        classify = importlib.import_module("sift_api_client.api.default.classify")
        models = importlib.import_module("sift_api_client.models")
        types = importlib.import_module("sift_api_client.types")
        client = pkg.Client(base_url=str(api.base_url), timeout=httpx.Timeout(120))
        body = models.BodyClassify(files=[types.File(payload=io.BytesIO(_jpeg(11)), file_name="a.jpg"),
                                          types.File(payload=io.BytesIO(b"not an image"), file_name="b.txt")])
        r = classify.sync_detailed(client=client, body=body, tiles=models.Tiles(5))
        assert r.status_code == 200, r.content
        good, bad = r.parsed.results
        assert good.name == "a.jpg" and good.label == _ruled(trained, good.to_dict())
        assert bad.status == 415 and bad.error.code == "not_media"
        j = classify.sync_detailed(client=client, body=models.ClassifyJsonImagesJson(
            images=[base64.b64encode(_jpeg(11)).decode()], names=["again"]))
        assert j.parsed.results[0].label == good.label and j.parsed.results[0].name == "again"
        failed = classify.sync_detailed(client=client, body=models.BodyClassify(
            files=[types.File(payload=io.BytesIO(b"text"), file_name="c.txt")]))
        assert failed.status_code == 415 and failed.parsed.error.code == "all_failed"
    finally:
        sys.path.remove(str(tmp_path))
        for name in [m for m in sys.modules if m.startswith("sift_api_client")]:
            del sys.modules[name]


# short job leases, one job at a time: a killed runner's jobs are taken over within seconds
LEASED = ("job_lease_s=2", "job_concurrency=1")


def test_jobs_run_and_survive_a_restart(server, api, trained):
    from serve.api.jobs import JobStore

    deploy, db = server
    items = [{"name": f"i{k}", "image": base64.b64encode(_jpeg(k)).decode()} for k in range(3)]
    r = api.post("/v1/jobs", json={"items": items})
    assert r.status_code == 202 and r.json()["status"] == "queued"
    job = r.json()["id"]
    # a job accepted before a crash: in the DB, claimed by a worker that died (lease long expired)
    store = JobStore(db, clock=lambda: time.time() - 3600)
    stale = store.submit([{"name": "s", "image_b64": items[0]["image"]}], {"tiles": 1})
    assert store.claim("dead-worker:1", lease_s=1.0)["id"] in (job, stale)
    store.close()
    # a restart (new replicas, same DB) into the next test's settings, which then needs no deployment
    # of its own (a deployment costs ~20 s here)
    _, client = deploy(*LEASED)
    for jid in (job, stale):
        for _ in range(240):
            body = client.get(f"/v1/jobs/{jid}").json()
            if body["status"] in ("done", "failed"):
                break
            time.sleep(0.25)
        assert body["status"] == "done", body
        assert all(res and res["label"] == _ruled(trained, res) for res in body["results"])
    assert client.get("/v1/jobs/nope").status_code == 404


def test_jobs_survive_the_api_process_being_killed(server, trained):
    """SIGKILL the ingress replica (where the job runner lives) with jobs queued and running: Serve
    starts a new one, which takes the dead one's jobs once their lease is over; none lost or stuck."""
    import os
    import signal

    deploy, _ = server
    _, client = deploy(*LEASED)  # up already: the restart of the test before
    ids = []
    for k in range(3):
        items = [{"name": f"k{k}-{i}", "image": base64.b64encode(_jpeg(20 + i)).decode()} for i in range(6)]
        r = client.post("/v1/jobs", json={"items": items})
        assert r.status_code == 202
        ids.append(r.json()["id"])
    api = _api_replicas()
    assert len(api) == 1
    os.kill(api[0].pid, signal.SIGKILL)
    deadline = time.time() + 180
    pending = set(ids)
    while pending and time.time() < deadline:
        try:
            for jid in list(pending):
                body = client.get(f"/v1/jobs/{jid}").json()
                if body.get("status") in ("done", "failed"):
                    assert body["status"] == "done", body
                    assert all(res and res["label"] == _ruled(trained, res) for res in body["results"])
                    pending.discard(jid)
        except (httpx.HTTPError, ValueError):  # the replica is being replaced: 5xx/refused meanwhile
            pass
        time.sleep(0.5)
    assert not pending, f"jobs lost or stuck after the kill: {pending}"
    assert api[0].pid not in {p.pid for p in _api_replicas()}


# one deployment for both (a deployment costs ~20 s here): a token, a body cap and the INT8 runtime
GUARDED = ("token=s3cret", "max_body_bytes=20000", "runtime=onnx-int8")
AUTH = {"Authorization": "Bearer s3cret"}


def test_auth_required_when_a_token_is_set(server):
    deploy, _ = server
    _, client = deploy(*GUARDED)
    assert client.post("/v1/classify", json={"images": []}).status_code == 401
    assert client.post("/v1/classify", files=[("files", ("a.jpg", _jpeg()))],
                       headers={"Authorization": "Bearer wrong"}).status_code == 401
    ok = client.post("/v1/classify", files=[("files", ("a.jpg", _jpeg()))], headers=AUTH)
    assert ok.status_code == 200
    assert client.get("/healthz").status_code == 200  # liveness stays open for orchestrators


def test_body_too_large_is_413(server):
    deploy, _ = server
    _, client = deploy(*GUARDED)
    assert client.get("/readyz").json()["runtime"] == "onnx-int8"
    ok = client.post("/v1/classify", files=[("files", ("a.jpg", _jpeg(1)))], headers=AUTH)
    assert ok.status_code == 200 and abs(sum(ok.json()["results"][0]["probs"].values()) - 1) < 1e-5
    r = client.post("/v1/classify", files=[("files", ("big.jpg", _jpeg(5, size=(900, 700)) + b"\0" * 30000))],
                    headers=AUTH)
    assert r.status_code == 413 and r.json()["error"]["code"] == "too_large"


# one deployment for both: a model replica that takes one request at a time and queues one more
# (a burst gets 503s), and a request timeout a long video cannot make (each deployment costs ~20 s)
STRAINED = ("max_ongoing_requests=1", "max_queued_requests=1", "max_batch_size=1", "batch_wait_timeout_s=0.5",
            "request_timeout_s=4", "max_video_frames=100000", "video_batch=4")


def test_a_video_request_that_times_out_stops_its_ffmpeg(server, long_clip):
    deploy, _ = server
    _, client = deploy(*STRAINED)
    r = client.post("/v1/classify/video", files={"file": ("long.mp4", long_clip.read_bytes())},
                    params={"fps": 30})
    assert r.status_code == 504, r.text
    for _ in range(40):  # the decoding thread sees the stop at its next frame and kills ffmpeg
        if not _ffmpegs_on_uploads():
            break
        time.sleep(0.25)
    assert not _ffmpegs_on_uploads(), "ffmpeg kept decoding after the request ended"
    assert client.get("/healthz").status_code == 200


def test_overload_answers_503_and_the_server_stays_healthy(server):
    deploy, _ = server
    cfg, client = deploy(*STRAINED)

    async def burst():
        async with httpx.AsyncClient(base_url=str(client.base_url), timeout=120) as c:
            img = _jpeg(6)
            return await asyncio.gather(*[c.post("/v1/classify", files=[("files", ("a.jpg", img))]) for _ in range(16)])

    codes = [r.status_code for r in asyncio.run(burst())]
    assert 503 in codes and 200 in codes, codes
    assert client.get("/healthz").status_code == 200
    assert client.post("/v1/classify", files=[("files", ("a.jpg", _jpeg(7)))]).status_code == 200


def test_redeploy_with_a_new_model_drops_no_request(server, trained):
    deploy, _ = server
    _, client = deploy(f"model=models:/sift-classifier/{trained['version']}", "runtime=torch")
    assert client.get("/readyz").json()["runtime"] == "torch"
    img = [("files", ("a.jpg", _jpeg(9)))]
    assert client.post("/v1/classify", files=img).json()["results"][0]["version"] == trained["version"]
    codes, stop = [], threading.Event()

    def fire():
        with httpx.Client(base_url=str(client.base_url), timeout=120) as c:
            while not stop.is_set():
                r = c.post("/v1/classify", files=img)
                codes.append(r.status_code if r.status_code == 200 else (r.status_code, r.text[:300]))

    t = threading.Thread(target=fire)
    t.start()
    deploy()  # the local artifact: replicas roll over while requests keep coming
    time.sleep(1.0)
    stop.set()
    t.join()
    assert codes and set(codes) == {200}, codes
    assert client.post("/v1/classify", files=img).json()["results"][0]["version"] == "local"
