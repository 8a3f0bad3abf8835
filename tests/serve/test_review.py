"""The review loop: queue ranking (pure), then the real thing — the review app on a loopback port over
the session's preprocessed data and trained run, driven by keyboard in real Chromium, a feed page's
"wrong verdict" button posting into the same store. The training run that uses a store's corrections
is tests/train/test_mlflow_server.py (one training there for several checks: each costs ~60 s here)."""
from __future__ import annotations

import shutil
import socket
import threading
import time
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from serve.review.queues import QueueError, match_reports, rank

CLASSES = ["BAD", "NEUTRAL", "GOOD"]
TOKEN = "review-t0k"


# ------------------------------------------------------------------ queue ranking (no server)

def _items():
    items = pd.DataFrame({
        "id": ["a", "b", "c", "d", "e#t=1.0", "e#t=2.0"], "group_id": ["a", "b", "c", "d", "e", "e"],
        "path": ["x/a.jpg", "x/b.jpg", "scraped/media/0123abcd.jpg", "x/d.jpg", "v.mp4", "v.mp4"],
        "split": ["train", "train", "val", "train", "train", "train"],
        "label": [0, 1, 2, -1, 0, 0], "pool": ["clean", "noisy", "clean", "unlabeled", "clean", "clean"]})
    s = np.array([[.9, .05, .05], [.05, .05, .9], [.45, .1, .45], [.4, .35, .25], [.34, .33, .33], [.35, .33, .32]])
    t = np.array([[.9, .05, .05], [.05, .9, .05], [.45, .1, .45], [.25, .35, .4], [.34, .33, .33], [.35, .33, .32]])
    items["loss"] = np.where(items["label"] >= 0, -np.log(s[np.arange(6), items["label"].clip(0)]), np.nan)
    return items, {"student": s.astype(np.float32), "teacher": t.astype(np.float32)}


def test_uncertain_puts_the_smallest_margin_first_one_card_per_group():
    items, probs = _items()
    order = rank(items, probs, CLASSES, "uncertain")
    ids = items["id"].to_numpy()[order["row"]].tolist()
    # margin 0 first (c; b: its student and teacher cancel out), ties by entropy; group e shown once
    assert ids[:3] == ["c", "b", "e#t=1.0"] and "e#t=2.0" not in ids
    assert ids[-1] == "a" and order["score"].is_monotonic_decreasing
    assert "margin 0.00 between" in order["reason"].iat[0]
    # reviewed items leave the queue, and the next frame of the group steps up
    again = rank(items, probs, CLASSES, "uncertain", reviewed={"c", "b", "e#t=1.0"})
    assert items["id"].to_numpy()[again["row"]].tolist() == ["e#t=2.0", "d", "a"]


def test_disagree_ranks_different_argmax_before_divergence_and_needs_a_teacher():
    items, probs = _items()
    ids = items["id"].to_numpy()[rank(items, probs, CLASSES, "disagree")["row"]].tolist()
    assert set(ids[:2]) == {"b", "d"}  # student and teacher pick different classes
    with pytest.raises(QueueError, match="no teacher"):
        rank(items, probs, CLASSES, "disagree", has_teacher=False)
    with pytest.raises(QueueError, match="unknown strategy"):
        rank(items, probs, CLASSES, "random")


def test_loss_only_ranks_labeled_training_items_highest_loss_first():
    items, probs = _items()
    order = rank(items, probs, CLASSES, "loss")
    ids = items["id"].to_numpy()[order["row"]].tolist()
    assert ids[0] == "b" and not {"c", "d"} & set(ids)  # c is val, d unlabeled
    assert "vs label NEUTRAL (noisy pool); model says GOOD" in order["reason"].iat[0]


def test_reports_join_by_id_scraped_file_name_or_url():
    items, probs = _items()
    reports = pd.DataFrame({"seq": [1, 2, 3, 4, 5], "item_id": ["a", "0123abcd", "zz", "0123abcd", "nowhere"],
                            "url": ["", "", "x/d.jpg", "", "http://x"], "page": [""] * 5,
                            "verdict": ["BAD", "GOOD", "BAD", "GOOD", "BAD"], "suggested": ["", "BAD", "", "NEUTRAL", ""],
                            "at": [1.0, 2.0, 3.0, 4.0, 5.0]})
    hits = match_reports(items, reports)
    assert dict(zip(hits["seq"], items["id"].to_numpy()[hits["row"]])) == {1: "a", 2: "c", 3: "d", 4: "c"}
    order = rank(items, probs, CLASSES, "reported", reports=reports, reviewed={"d"})
    assert items["id"].to_numpy()[order["row"]].tolist() == ["c", "a"]  # two reports first; d reviewed
    assert order["reports"].iat[0] == [2, 4] and "suggested BAD, NEUTRAL" in order["reason"].iat[0]


# ------------------------------------------------------------------ the app, a browser, a training run

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def review(preprocessed, trained, tmp_path_factory):
    """The review app (uvicorn in a thread) over the session data and the `trained` run's predictions."""
    import uvicorn

    from serve.review import make
    from serve.review.data import load_review

    _, data, _ = preprocessed
    db = tmp_path_factory.mktemp("review") / "labels.db"
    port = _free_port()
    cfg = load_review(None, {"data": str(data), "run": trained["run_name"], "labels_db": str(db), "token": TOKEN,
                             "user": "tester", "port": port})
    app, _, rd = make(cfg)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    for _ in range(200):
        if server.started:
            break
        time.sleep(0.05)
    yield SimpleNamespace(url=f"http://127.0.0.1:{port}", db=db, data=rd, store=app.state.store, data_dir=data)
    server.should_exit = True
    thread.join(10)


@pytest.fixture(scope="module")
def chromium():
    from playwright.sync_api import sync_playwright

    from flows.scrape.browser import BASE_FLAGS

    pw = sync_playwright().start()
    browser = pw.chromium.launch(executable_path=shutil.which("chromium"), args=list(BASE_FLAGS))
    yield browser
    browser.close()
    pw.stop()


def _client(review, token: str | None = TOKEN):
    import httpx

    return httpx.Client(base_url=review.url, trust_env=False, timeout=30,
                        headers={"Authorization": f"Bearer {token}"} if token else {})


@pytest.mark.slow
def test_every_route_needs_the_token_and_bad_requests_are_clear_4xx(review):
    from flows.core.config import ConfigError
    from serve.review.data import load_review

    anon, bad = _client(review, None), _client(review, "wrong")
    for path in ("/", "/api/queue", "/api/stats", f"/api/media/{review.data.items['id'].iat[0]}"):
        for c in (anon, bad):
            r = c.get(path)
            assert r.status_code == 401 and r.json()["error"]["code"] == "unauthorized", path
    assert anon.post("/api/label", json={"id": "x", "label": "BAD"}).status_code == 401
    assert anon.get("/?token=nope", follow_redirects=False).status_code == 401
    r = anon.get(f"/?token={TOKEN}", follow_redirects=False)  # the one-time link: a cookie, a clean URL
    assert r.status_code == 303 and r.headers["location"] == "/"
    assert "httponly" in r.headers["set-cookie"].lower() and "samesite=strict" in r.headers["set-cookie"].lower()
    c = _client(review)
    item = review.data.items["id"].iat[0]
    cases = [(c.get("/api/queue", params={"strategy": "nope"}), 400, "bad_strategy"),
             (c.get("/api/queue", params={"limit": "many"}), 422, "bad_option"),
             (c.get("/api/media/nope"), 404, "unknown_item"),
             (c.post("/api/label", json={"id": "nope", "label": "BAD"}), 404, "unknown_item"),
             (c.post("/api/label", json={"id": item, "label": "UGLY"}), 422, "unknown_label"),
             (c.post("/api/label", content=b"{not json", headers={"content-type": "application/json"}), 400, "bad_json"),
             (c.post("/api/label", content=b'{"id": "x", "label": "BAD"}', headers={"content-type": "text/plain"}),
              415, "json_required"),  # a form or text/plain POST from another page needs no preflight
             # a page on another loopback port shares the cookie: its writes carry its Origin
             (c.post("/api/label", json={"id": item, "label": "BAD"}, headers={"origin": "http://127.0.0.1:1"}),
              403, "cross_origin"),
             (c.post("/api/undo", json={}, headers={"sec-fetch-site": "same-site"}), 403, "cross_origin"),
             (c.post("/api/label", json={"id": item, "label": "BAD"}, headers={"origin": "null"}), 403, "cross_origin"),
             (c.post("/api/report", json={"id": "x"}, headers={"origin": "http://evil.test"}), 403, "cross_origin"),
             (c.post("/api/label", json=[1]), 422, "bad_json"),
             (c.post("/api/report", json={"url": "x"}), 422, "missing_id"),
             (c.post("/api/report", json={"id": "x", "suggested": "UGLY"}), 422, "bad_report"),
             (c.post("/api/undo", json={"seq": 999}), 404, "unknown_review")]
    for r, status, code in cases:
        assert (r.status_code, r.json()["error"]["code"]) == (status, code), r.text
    assert review.store.history() == [] and review.store.reports() == []  # nothing bad was written
    with pytest.raises(ConfigError, match="beyond loopback"):
        load_review(None, {"data": str(review.data_dir), "host": "0.0.0.0"})


@pytest.mark.slow
def test_label_with_the_keyboard_undo_and_the_store_records_who_when_previous(review, chromium):
    page = chromium.new_page(viewport={"width": 1200, "height": 800})
    page.goto(f"{review.url}/?token={TOKEN}")
    assert "token" not in page.url  # the token went into a cookie, not the history
    done = {"n": 1}
    page.wait_for_function("document.body.dataset.done === '1'")

    def settle():
        page.wait_for_function(f"document.body.dataset.done === '{done['n']}'", timeout=30_000)

    def press(key):
        shown = {"id": page.get_attribute("#card", "data-id"), "label": page.inner_text("#label")}
        page.keyboard.press(key)
        done["n"] += 1
        settle()
        return shown

    def tab(strategy):
        page.click(f"button.tab[data-s={strategy}]")
        done["n"] += 1
        settle()
        assert page.inner_text("#reason").startswith(strategy)

    # the card: image decoded, one probability row per class, student and teacher bars
    page.wait_for_function("document.getElementById('img').naturalWidth > 0")
    assert len(page.query_selector_all("#bars .row")) == 3 and len(page.query_selector_all("#bars .bar")) == 6
    first = page.get_attribute("#card", "data-id")
    page.keyboard.press("ArrowRight")
    assert page.get_attribute("#card", "data-id") != first
    page.keyboard.press("ArrowLeft")
    assert page.get_attribute("#card", "data-id") == first and review.store.history() == []  # moving writes nothing
    t0 = time.time()
    a = press("1")  # uncertain -> BAD (keys follow the class order: BAD, GOOD, NEUTRAL)
    tab("disagree")
    b = press("2")  # disagree -> GOOD
    tab("loss")
    c = press("3")  # loss -> NEUTRAL ...
    press("u")  # ... undone: the item is back on screen
    assert page.get_attribute("#card", "data-id") == c["id"] and "undone" in page.inner_text("#status")
    press("s")  # and skipped
    page.close()
    s = review.store
    assert s.latest() == {a["id"]: "BAD", b["id"]: "GOOD"} and s.reviewed() == {a["id"], b["id"], c["id"]}
    hist = s.history()
    assert [(h["item_id"], h["action"], h["label"], h["strategy"]) for h in hist] == [
        (a["id"], "label", "BAD", "uncertain"), (b["id"], "label", "GOOD", "disagree"),
        (c["id"], "label", "NEUTRAL", "loss"), (c["id"], "skip", None, "loss")]
    for h, shown in zip(hist, (a, b, c, c)):
        assert h["who"] == "tester" and t0 - 1 <= h["at"] <= time.time() and h["source"] == "review"
        assert h["previous"] == shown["label"] == review.data.current_label(h["item_id"])
        assert h["path"] == review.data.item(h["item_id"])["path"]
    assert hist[2]["undone_at"] is not None and hist[2]["undone_by"] == "tester"
    assert [h["undone_at"] for h in (hist[0], hist[1], hist[3])] == [None] * 3
    # reviewed items have left every queue
    c_ = _client(review)
    for strategy in ("uncertain", "disagree", "loss"):
        ids = {it["id"] for it in c_.get("/api/queue", params={"strategy": strategy, "limit": 1000}).json()["items"]}
        assert not ids & {a["id"], b["id"], c["id"]}


@pytest.mark.slow
def test_wrong_verdict_button_in_the_feed_reports_into_the_reported_queue(review, chromium, tmp_path):
    from flows import scrape

    reviewed = review.store.reviewed()
    data = review.data
    pick = [i for i, k in zip(data.items["id"], data.items["kind"]) if k == "image" and i not in reviewed][:2]
    items = [{"id": i, "page": "http://feed.test/", "url": f"http://feed.test/{k}.jpg", "kind": "image",
              "timestamp": None, "image": data.jpeg(i)} for k, i in enumerate(pick)]
    verdicts = {i: {"label": "BAD", "probs": {"BAD": 0.7, "NEUTRAL": 0.2, "GOOD": 0.1}} for i in pick}

    def feed(token, where):
        cfg, _ = scrape.load_settings(None, None, [f"review_url={review.url}", f"review_token={token}"])
        return scrape.write_feed(tmp_path / where, items, verdicts, cfg)

    page = chromium.new_page()
    page.goto(feed("wrong", "bad").as_uri())  # a wrong token: the failure is shown inline, nothing stored
    page.click("article.item >> nth=0 >> button.wrong")
    page.wait_for_function("document.querySelector('.sent').textContent.startsWith('failed')")
    assert "token" in page.inner_text("article.item >> nth=0 >> .sent") and review.store.reports() == []
    page.goto(feed(TOKEN, "good").as_uri())
    art = page.locator("article.item").nth(0)
    assert art.locator("select.suggest option").all_inner_texts() == ["should be?", "NEUTRAL", "GOOD"]
    art.locator("select.suggest").select_option("GOOD")
    art.locator("button.wrong").click()
    page.wait_for_function("document.querySelector('.sent').textContent.startsWith('reported')")
    assert art.locator("button.wrong").is_disabled()
    page.close()
    (rep,) = review.store.reports()
    assert (rep["item_id"], rep["url"], rep["page"], rep["verdict"], rep["suggested"], rep["status"], rep["who"]) == \
        (pick[0], "http://feed.test/0.jpg", "http://feed.test/", "BAD", "GOOD", "open", "tester")
    c = _client(review)
    q = c.get("/api/queue", params={"strategy": "reported"}).json()
    assert [it["id"] for it in q["items"]] == [pick[0]] and q["items"][0]["reports"] == [rep["seq"]]
    assert "suggested GOOD" in q["items"][0]["reason"] and review.store.latest().get(pick[0]) is None
    # the review that answers it resolves the report and is recorded as coming from the feed
    r = c.post("/api/label", json={"id": pick[0], "label": "GOOD", "strategy": "reported"}).json()
    assert r["correction"]["source"] == "feed" and r["resolved_reports"] == [rep["seq"]]
    assert review.store.reports("open") == [] and c.get("/api/queue", params={"strategy": "reported"}).json()["items"] == []
