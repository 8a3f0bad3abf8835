"""sift classify / sift score-folder, locally and against the running API, and sift scrape --to-server."""
import json
import subprocess

import numpy as np
import pytest
from PIL import Image

from serve.client import classify_main, media_files, score_folder_main

pytestmark = pytest.mark.slow


def _write(path, seed):
    path.parent.mkdir(parents=True, exist_ok=True)
    a = np.random.default_rng(seed).integers(0, 256, (12, 16, 3), dtype=np.uint8)
    Image.fromarray(a).resize((160, 120)).save(path, "JPEG")


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("photos")
    for i in range(4):
        _write(root / ("sub" if i % 2 else "") / f"p{i}.jpg", i)
    (root / "notes.txt").write_text("not media")  # ignored by folder scanning (extension)
    (root / "broken.jpg").write_bytes(b"not really a jpeg")
    return root


def test_media_files_recurses_and_keeps_given_files(folder):
    files = media_files([str(folder)])
    assert len(files) == 5 and all(f.suffix == ".jpg" for f in files)
    from flows.core.errors import SiftError

    with pytest.raises(SiftError, match="no such file") as exc:
        media_files([str(folder / "nope")])
    assert exc.value.reason == "not_found"


def test_classify_locally_prints_json_lines(folder, trained, capsys):
    assert classify_main([str(folder), "--json", "--model", trained["model"]]) == 0
    lines = [json.loads(l) for l in capsys.readouterr().out.splitlines()]
    assert len(lines) == 5
    broken = next(l for l in lines if l["path"].endswith("broken.jpg"))
    assert broken["status"] == 415 and broken["error"]["code"] == "not_media"
    ok = [l for l in lines if "label" in l]
    assert len(ok) == 4 and all(abs(sum(l["probs"].values()) - 1) < 1e-5 for l in ok)


@pytest.mark.parametrize("runtime", ["torch", "onnx", "onnx-int8"])
def test_classify_locally_on_each_runtime(folder, trained, capsys, runtime):
    from train.artifact import SiftModel

    assert classify_main([str(folder), "--json", "--model", trained["model"], "--set", f"runtime={runtime}"]) == 0
    got = {l["path"]: l for l in map(json.loads, capsys.readouterr().out.splitlines()) if "label" in l}
    assert len(got) == 4
    ref = SiftModel(trained["model"], runtime="torch")  # one image per call, as the local client sends them
    diffs = []
    for path, line in got.items():
        want = ref.predict([open(path, "rb").read()])[0]
        diffs.append(max(abs(line["probs"][c] - want["probs"][c]) for c in want["probs"]))
        assert abs(sum(line["probs"].values()) - 1) < 1e-5
        if runtime != "onnx-int8":  # fp32 ONNX is the torch graph: same labels, same probabilities
            assert line["label"] == want["label"] and diffs[-1] < 1e-4
    if runtime == "onnx-int8":  # another graph (its agreement with fp32 is in the artifact)
        assert max(diffs) > 1e-4


def test_local_mode_classifies_in_batches_with_the_answers_of_one_at_a_time(folder, trained, tmp_path):
    from serve.client import Local

    files = media_files([str(folder)]) + [tmp_path / "gone.jpg"]  # a file deleted after listing
    local = Local(trained["model"], overrides=("runtime=torch",))
    one = list(local.classify_many(files, batch=1))
    seen = []
    many = list(local.classify_many(files, batch=3, done=seen.append))
    assert seen == [3, 3] and len(many) == len(one) == 6
    for a, b in zip(one, many):
        assert a.get("label") == b.get("label") and a.get("status") == b.get("status")
        if "probs" in a:
            assert max(abs(a["probs"][c] - b["probs"][c]) for c in a["probs"]) < 1e-4
    assert [r.get("status") for r in many].count(415) == 1 and many[-1]["error"]["code"] == "unreadable"


def test_classify_a_video_locally_gives_its_timeline(trained, tmp_path, capsys):
    path = tmp_path / "clip.mp4"
    subprocess.run(["ffmpeg", "-v", "error", "-f", "lavfi", "-i", "testsrc2=s=320x240:d=4", "-pix_fmt", "yuv420p",
                    str(path)], check=True)
    assert classify_main([str(path), "--json", "--model", trained["model"]]) == 0
    (line,) = [json.loads(l) for l in capsys.readouterr().out.splitlines()]
    assert abs(line["duration"] - 4.0) < 0.2
    # the label is the artifact's video rule on the returned frame probabilities (smoothed like the timeline)
    from serve.config import load_serve
    from serve.timeline import smooth, video_label
    from train.artifact import SiftModel

    model, cfg = SiftModel(trained["model"]), load_serve(None, [])
    p = np.array([[f["probs"][c] for c in model.classes] for f in line["frames"]])
    rule = video_label(p, smooth(p, cfg.video_smooth), model.decision, cfg.video_aggregate, positive=model.positive)
    assert line["label"] == model.classes[rule]
    times = [f["t"] for f in line["frames"]]
    assert times == sorted(times) and len(times) >= 4  # keyframes + 1 fps samples
    assert line["segments"][-1]["end"] == pytest.approx(4.0, abs=0.2)
    # the server's limits and statuses locally too: a clip over video_max_seconds is a 413
    assert classify_main([str(path), "--json", "--model", trained["model"], "--set", "video_max_seconds=2"]) == 1
    (line,) = [json.loads(l) for l in capsys.readouterr().out.splitlines()]
    assert line["status"] == 413 and line["error"]["code"] == "video_too_long", line


def test_score_folder_sorts_and_copies_the_range(folder, trained, tmp_path, capsys):
    out = tmp_path / "picked"
    assert score_folder_main([str(folder), "--label", "BAD", "--min", "0.0", "--max", "1.0",
                              "--copy-to", str(out), "--model", trained["model"]]) == 0
    text = capsys.readouterr().out
    scores = [float(l.split()[0]) for l in text.splitlines() if l[:1].isdigit() and "files with" not in l]
    assert scores == sorted(scores, reverse=True) and len(scores) == 4
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*.jpg")) == ["p0.jpg", "p2.jpg", "sub/p1.jpg", "sub/p3.jpg"]
    none = tmp_path / "none"
    score_folder_main([str(folder), "--label", "BAD", "--min", "1.01", "--copy-to", str(none), "--model", trained["model"]])
    assert not none.exists() or not any(none.rglob("*.jpg"))
    from flows.core.config import ConfigError

    with pytest.raises(ConfigError, match="not one of"):
        score_folder_main([str(folder), "--label", "NSFW", "--model", trained["model"]])


def test_classify_against_the_server(api, folder, capsys):
    url = str(api.base_url)
    assert classify_main([str(folder / "p0.jpg"), str(folder / "broken.jpg"), "--server", url]) == 0
    out = capsys.readouterr().out.splitlines()
    assert "ERROR 415 not_media" in out[1] and out[0].split()[1] in ("BAD", "NEUTRAL", "GOOD")


def test_classify_a_folder_against_the_server_in_concurrent_batches(api, folder, trained, tmp_path, capsys):
    import pyarrow.parquet as pq

    url, out = str(api.base_url), tmp_path / "results.parquet"
    assert classify_main([str(folder), "--server", url, "--batch", "2", "--concurrency", "3", "--json",
                          "--out", str(out)]) == 0
    lines = [json.loads(l) for l in capsys.readouterr().out.splitlines()]
    files = [str(f) for f in media_files([str(folder)])]
    assert [l["path"] for l in lines] == files  # the input order, whatever order the batches finished in
    broken = lines[files.index(str(folder / "broken.jpg"))]
    assert broken["status"] == 415 and broken["error"]["code"] == "not_media"
    ok = [l for l in lines if "label" in l]
    assert len(ok) == 4 and all(abs(sum(l["probs"].values()) - 1) < 1e-5 for l in ok)
    rows = pq.read_table(out).to_pylist()
    assert [r["path"] for r in rows] == files
    assert [r["status"] for r in rows] == [415 if "broken" in f else 200 for f in files]
    assert all(r["prob_BAD"] == pytest.approx(l["probs"]["BAD"]) for r, l in zip(rows, lines) if "label" in l)
    # the same model on the same runtime in this process gives the same answers. Dynamic INT8 scales
    # its activations by each batch's range, and the server batches items of concurrent requests, so
    # there its probabilities move a little with the batch mates (the labels stay)
    runtime = api.get("/readyz").json()["runtime"]
    assert classify_main([str(folder), "--json", "--model", trained["model"], "--set", f"runtime={runtime}"]) == 0
    local = [json.loads(l) for l in capsys.readouterr().out.splitlines()]
    tol = 0.03 if runtime == "onnx-int8" else 1e-4
    for remote_line, local_line in zip(lines, local):
        assert remote_line.get("label") == local_line.get("label")
        for c, p in remote_line.get("probs", {}).items():
            assert abs(p - local_line["probs"][c]) < tol, (runtime, c)


def test_a_request_whose_every_item_failed_is_still_read_per_item(api, folder, capsys):
    url = str(api.base_url)
    assert classify_main([str(folder / "broken.jpg"), str(folder / "notes.txt"), "--server", url, "--json"]) == 1
    lines = [json.loads(l) for l in capsys.readouterr().out.splitlines()]
    assert [l["path"].rsplit("/", 1)[1] for l in lines] == ["broken.jpg", "notes.txt"]
    assert all(l["status"] == 415 and l["error"]["code"] == "not_media" for l in lines), lines


def test_scrape_to_server_writes_a_filtered_feed(api, trained, tmp_path):
    """``sift scrape --to-server``: the fixture site of tests/flows/test_scrape.py scraped in real
    Chromium, every item classified by the running API through its jobs endpoint, a filtered feed page."""
    from flows import scrape
    from tests.flows.test_scrape import COMMON, GOOD_IMAGES, check_feed_dom, open_in_browser, png_ok, served_site
    from train.artifact import SiftModel

    out = tmp_path / "feed"
    with served_site(tmp_path / "site") as site:
        rc = scrape.main([f"{site}/index.html", "--to-server", str(api.base_url), "--to", str(out),
                          "scroll_steps=15", "scroll_pause_ms=150", "browsers=1", "submit_batch=8", *COMMON])
    assert rc == 0
    entries = json.loads((out / "feed.json").read_text())
    images = [e for e in entries if e["kind"] in ("image", "thumbnail", "frame")]
    model = SiftModel(trained["model"])  # the backend's artifact: its own rule decides each label
    ruled = lambda probs: model.classes[int(model.decision.predict(np.array([[probs[c] for c in model.classes]]))[0])]
    assert len(images) >= len(GOOD_IMAGES) + 2
    for e in images:  # every item got a verdict from the backend, with a score
        assert e["label"] == ruled(e["probs"]) and 0 <= e["score"] <= 1, e
        assert abs(sum(e["probs"].values()) - 1) < 1e-4
        assert e["verdict"] == {"BAD": "hide", "GOOD": "highlight"}.get(e["label"], "show")
    page, close = open_in_browser(out / "feed.html", tmp_path / "feed.png")
    try:
        check_feed_dom(page, entries)
    finally:
        close()
    png_ok(tmp_path / "feed.png")
