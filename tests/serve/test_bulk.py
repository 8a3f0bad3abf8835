"""The bulk remote client (serve.bulk) and the client CLI's batching, order, retries, --out and errors,
against a small scripted HTTP server on 127.0.0.1 (no model: the server side is tests/serve/test_client.py)."""
import csv
import json
import re
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from flows.core.cli import main as sift
from flows.core.errors import SiftError
from serve.bulk import Remote, Retry, plan_batches
from serve.client import classify_main

FAST = Retry(tries=3, base_s=0.005, cap_s=0.02)


class Scripted:
    """A loopback HTTP server: ``answer(n, path, names) -> (status, body) | None`` for the n-th POST
    (from 0; None drops the connection without answering). Records every POST's path and file names,
    and the most requests it had in flight at once."""

    def __init__(self, answer):
        self.answer, self.posts, self.lock = answer, [], threading.Lock()
        self.inflight = self.peak = 0
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def do_GET(self):
                self._send(200, {"status": "ready"})

            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                names = re.findall(rb'filename="([^"]*)"', body)
                with outer.lock:
                    n = len(outer.posts)
                    outer.posts.append((self.path.split("?")[0], [x.decode() for x in names]))
                    outer.inflight += 1
                    outer.peak = max(outer.peak, outer.inflight)
                try:
                    got = outer.answer(n, self.path.split("?")[0], [x.decode() for x in names])
                finally:
                    with outer.lock:
                        outer.inflight -= 1
                if got is None:  # drop: close the socket with no answer (a connection lost mid-run)
                    self.close_connection = True
                    self.connection.shutdown(socket.SHUT_RDWR)
                    return
                self._send(*got)

            def _send(self, status, body):
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def scripted():
    servers = []

    def start(answer):
        servers.append(Scripted(answer))
        return servers[-1]

    yield start
    for s in servers:
        s.close()


def ok(names):
    """A 200 of /v1/classify: each file's label and probs are read from its name (p07.jpg: index 7)."""
    return 200, {"results": [{"name": n, "label": "A" if int(n[1:3]) % 2 else "B",
                              "probs": {"A": int(n[1:3]) / 100, "B": 1 - int(n[1:3]) / 100}} for n in names]}


@pytest.fixture
def images(tmp_path):
    files = []
    for i in range(11):
        f = tmp_path / "in" / f"p{i:02d}.jpg"
        f.parent.mkdir(exist_ok=True)
        f.write_bytes(b"\xff\xd8 not decoded by the scripted server " + bytes([i]))
        files.append(f)
    return files


def test_plan_batches_groups_images_keeps_videos_alone_and_covers_every_index_once():
    files = [Path(n) for n in ("a.jpg", "b.png", "c.mp4", "d.jpg", "e.jpg", "f.webm", "g.jpg")]
    assert plan_batches(files, batch=2, sizes=[1] * 7) == [[0, 1], [2], [3, 4], [5], [6]]
    assert plan_batches(files, batch=32, sizes=[1] * 7) == [[0, 1, 3, 4, 6], [2], [5]]
    # the byte budget splits too, and a file over it goes alone
    assert plan_batches(files, batch=32, max_bytes=10, sizes=[4, 4, 1, 4, 50, 1, 4]) == [[0, 1], [2], [3], [4], [5], [6]]
    for batch in (1, 3, 64):
        groups = plan_batches(files, batch=batch, sizes=[1] * 7)
        assert sorted(i for g in groups for i in g) == list(range(7))
        assert [g[0] for g in groups] == sorted(g[0] for g in groups)
        assert all(len(g) <= batch for g in groups)


def test_retry_delay_grows_exponentially_with_bounded_jitter():
    r = Retry(tries=6, base_s=0.5, cap_s=4.0)
    lows = [r.delay(n, rand=lambda: 0.0) for n in range(5)]
    highs = [r.delay(n, rand=lambda: 1.0) for n in range(5)]
    assert lows == [0.25, 0.5, 1.0, 2.0, 2.0] and highs == [0.5, 1.0, 2.0, 4.0, 4.0]  # capped at 4 s
    assert all(lo <= r.delay(n) <= hi for n, (lo, hi) in enumerate(zip(lows, highs)))


def test_results_keep_the_input_order_while_batches_finish_out_of_order(scripted, images):
    def answer(n, path, names):
        time.sleep(0.02 * (12 - int(names[0][1:3])))  # the first batch answers last
        return ok(names)

    srv = scripted(answer)
    got = list(Remote(srv.url, batch=3, concurrency=4, retry=FAST).classify_many(images))
    assert [r["name"] for r in got] == [f.name for f in images]
    assert [r["probs"]["A"] for r in got] == [i / 100 for i in range(11)]
    assert sorted(len(names) for _, names in srv.posts) == [2, 3, 3, 3]  # 11 images in batches of 3
    assert srv.peak >= 2  # requests really were in flight together


def test_503_twice_then_200_is_retried_with_back_off(scripted, images):
    srv = scripted(lambda n, path, names: (503, {"error": {"code": "overloaded", "message": "retry"}}) if n < 2
                   else ok(names))
    t0 = time.perf_counter()
    got = list(Remote(srv.url, batch=32, retry=Retry(tries=5, base_s=0.05, cap_s=1)).classify_many(images))
    assert len(srv.posts) == 3 and all(names == [f.name for f in images] for _, names in srv.posts)
    assert [r["label"] for r in got] == ["B", "A"] * 5 + ["B"] and not any("error" in r for r in got)
    assert time.perf_counter() - t0 >= 0.025 + 0.05  # the two waits: at least d/2 each, d = 0.05, 0.1


def test_a_request_that_stays_503_reports_each_of_its_files_failed(scripted, images):
    srv = scripted(lambda n, path, names: ok(names) if "p00.jpg" in names else
                   (503, {"error": {"code": "overloaded", "message": "too many requests queued"}}))
    got = list(Remote(srv.url, batch=4, retry=FAST).classify_many(images))
    assert len(got) == len(images)  # none lost
    assert [("error" in r) for r in got] == [False] * 4 + [True] * 7
    assert all(r["status"] == 503 and r["error"]["code"] == "overloaded" and "after 3 tries" in r["error"]["message"]
               for r in got[4:])
    assert len(srv.posts) == 1 + 2 * 3  # the good batch once, each of the other two 3 times


def test_a_connection_lost_mid_run_is_retried_then_reported(scripted, images):
    srv = scripted(lambda n, path, names: None if n == 0 else ok(names))
    got = list(Remote(srv.url, retry=FAST).classify_many(images[:3]))
    assert len(srv.posts) == 2 and [r["name"] for r in got] == [f.name for f in images[:3]]
    srv = scripted(lambda n, path, names: None)
    got = list(Remote(srv.url, retry=FAST).classify_many(images[:3]))
    assert len(srv.posts) == 3
    assert all(r["status"] is None and r["error"]["code"] == "unreachable" and "closed the connection"
               in r["error"]["message"] for r in got)


def test_an_all_failed_answer_is_mapped_per_item_and_not_retried(scripted, images):
    def answer(n, path, names):
        return 415, {"error": {"code": "all_failed", "message": "every item failed"},
                     "results": [{"name": x, "status": 415, "error": {"code": "not_media", "message": x}} for x in names]}

    srv = scripted(answer)
    got = list(Remote(srv.url, retry=FAST).classify_many(images[:4]))
    assert len(srv.posts) == 1
    assert [(r["status"], r["error"]["code"], r["error"]["message"]) for r in got] == \
        [(415, "not_media", f.name) for f in images[:4]]


def test_413_halves_the_request_until_the_server_takes_it(scripted, images):
    srv = scripted(lambda n, path, names: ok(names) if len(names) <= 2 else
                   (413, {"error": {"code": "too_many_items", "message": "> max_items=2"}}))
    got = list(Remote(srv.url, batch=8, retry=FAST).classify_many(images))
    assert [r["name"] for r in got] == [f.name for f in images]
    assert not any("error" in r for r in got)


def test_videos_go_one_per_request_to_the_video_endpoint(scripted, images, tmp_path):
    clips = [tmp_path / "in" / f"v{i}.mp4" for i in range(2)]
    for c in clips:
        c.write_bytes(b"not a real mp4")
    srv = scripted(lambda n, path, names: (200, {"label": "B", "probs": {"A": 0.1, "B": 0.9}, "frames": []})
                   if path == "/v1/classify/video" else ok(names))
    files = [images[0], clips[0], images[1], clips[1]]
    got = list(Remote(srv.url, retry=FAST).classify_many(files))
    assert sorted(srv.posts) == [("/v1/classify", ["p00.jpg", "p01.jpg"]), ("/v1/classify/video", ["v0.mp4"]),
                                 ("/v1/classify/video", ["v1.mp4"])]
    assert [r.get("name") for r in got] == ["p00.jpg", None, "p01.jpg", None] and got[1]["label"] == "B"


def test_401_is_one_line_about_the_token(scripted, images):
    srv = scripted(lambda n, path, names: (401, {"error": {"code": "unauthorized", "message": "wrong token"}}))
    with pytest.raises(SiftError, match=r"refused the bearer token.*--token or \$SIFT_API_TOKEN"):
        list(Remote(srv.url, token="nope", retry=FAST).classify_many(images))
    with pytest.raises(SiftError, match=r"needs a bearer token.*--token"):
        list(Remote(srv.url, retry=FAST).classify_many(images))


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # closed when the socket is: nothing listens there


def test_a_server_down_at_start_is_one_line_and_exit_2(images, capsys):
    url = f"http://127.0.0.1:{closed_port()}"
    for cmd in (["classify", str(images[0])], ["score-folder", str(images[0].parent), "--label", "A"]):
        t0 = time.perf_counter()
        assert sift([*cmd, "--server", url]) == 2
        err = capsys.readouterr().err
        assert err == f"sift {cmd[0]}: error: cannot reach the sift server at {url} (connection refused)\n"
        assert time.perf_counter() - t0 < 10


def test_classify_cli_batches_keeps_order_and_writes_every_format(scripted, images, tmp_path, capsys):
    bad = images[3].name

    def answer(n, path, names):
        status, body = ok(names)
        body["results"] = [{"name": x, "status": 415, "error": {"code": "not_media", "message": "no"}} if x == bad
                           else r for x, r in zip(names, body["results"])]
        return status, body

    srv = scripted(answer)
    for suffix in (".csv", ".jsonl", ".parquet"):
        out = tmp_path / f"results{suffix}"
        assert classify_main([str(images[0].parent), "--server", srv.url, "--batch", "4", "--concurrency", "2",
                              "--json", "--out", str(out)]) == 0
        captured = capsys.readouterr()
        lines = [json.loads(line) for line in captured.out.splitlines()]
        assert [Path(r["path"]).name for r in lines] == [f.name for f in images]  # stdout is only the JSON lines
        assert f"11 rows -> {out}" in captured.err
        if suffix == ".csv":
            rows = list(csv.DictReader(out.open()))
        elif suffix == ".jsonl":
            rows = [json.loads(line) for line in out.read_text().splitlines()]
        else:
            import pyarrow.parquet as pq

            rows = pq.read_table(out).to_pylist()
        assert list(rows[0]) == ["path", "kind", "label", "uncertain", "prob_A", "prob_B", "score", "tags",
                                 "status", "error_code", "error"]
        assert [Path(r["path"]).name for r in rows] == [f.name for f in images]
        assert {str(r["status"]) for i, r in enumerate(rows) if i != 3} == {"200"}
        assert str(rows[3]["status"]) == "415" and rows[3]["error_code"] == "not_media" and rows[3]["label"] in ("", None)
        assert float(rows[7]["prob_A"]) == pytest.approx(0.07) and rows[7]["label"] == "A"
    assert len(srv.posts) == 3 * 3  # 11 files in batches of 4, per run


def test_an_unknown_out_suffix_is_refused_before_any_request(scripted, images, capsys):
    srv = scripted(lambda n, path, names: ok(names))
    assert sift(["classify", str(images[0]), "--server", srv.url, "--out", "results.xlsx"]) == 2
    assert capsys.readouterr().err == ("sift classify: error: --out results.xlsx: unknown format '.xlsx'; "
                                       "use .csv, .parquet or .jsonl\n")
    assert srv.posts == []
