"""The label store: history is kept, the latest live label wins, undo and reports behave."""
import sqlite3
import threading
import time

import pytest

from flows.core.labels import LabelError, LabelStore, default_path

CLASSES = ("BAD", "NEUTRAL", "GOOD")


@pytest.fixture
def store(tmp_path):
    return LabelStore(tmp_path / "labels.db", CLASSES)


def test_latest_label_wins_and_history_keeps_who_when_previous(store):
    t0 = time.time()
    store.add_correction("a", "BAD", who="ann", previous="NEUTRAL", path="x/a.jpg", group_id="g")
    store.add_correction("a", "GOOD", who="bob", previous="NEUTRAL")  # previous is the live correction
    store.add_correction("b", "NEUTRAL", who="ann", previous="unlabeled")
    assert store.latest() == {"a": "GOOD", "b": "NEUTRAL"}
    assert store.counts() == {"GOOD": 1, "NEUTRAL": 1}
    hist = store.history("a")
    assert [(h["label"], h["previous"], h["who"]) for h in hist] == [("BAD", "NEUTRAL", "ann"), ("GOOD", "BAD", "bob")]
    assert all(t0 <= h["at"] <= time.time() and h["source"] == "review" for h in hist)
    assert hist[0]["path"] == "x/a.jpg" and hist[0]["group_id"] == "g"


def test_skip_is_a_review_not_a_label(store):
    store.add_correction("a", "skip", who="ann", previous="BAD")
    assert store.latest() == {} and store.reviewed() == {"a"}
    store.add_correction("b", "GOOD", who="ann")
    store.add_correction("b", "skip", who="ann")  # seen again, unsure: the label stays
    assert store.latest() == {"b": "GOOD"}
    assert [h["action"] for h in store.history()] == ["skip", "label", "skip"]


def test_undo_restores_the_previous_live_label_and_keeps_the_row(store):
    store.add_correction("a", "BAD", who="ann")
    store.add_correction("a", "GOOD", who="ann")
    store.add_correction("c", "NEUTRAL", who="bob")
    undone = store.undo(who="ann")  # ann's latest, not bob's
    assert undone["item_id"] == "a" and undone["label"] == "GOOD" and undone["undone_by"] == "ann"
    assert store.latest() == {"a": "BAD", "c": "NEUTRAL"}
    assert len(store.history()) == 3 and store.history("a")[1]["undone_at"] is not None
    store.undo(who="ann")
    assert store.latest() == {"c": "NEUTRAL"} and store.reviewed() == {"c"}
    assert store.undo(who="ann") is None


def test_bad_writes_are_refused_with_a_reason(store, tmp_path):
    with pytest.raises(LabelError, match="unknown label 'UGLY'"):
        store.add_correction("a", "UGLY", who="ann")
    with pytest.raises(LabelError, match="empty"):
        store.add_correction(" ", "BAD", who="ann")
    with pytest.raises(LabelError, match="source"):
        store.add_correction("a", "BAD", who="ann", source="email")
    with pytest.raises(LabelError, match="suggested"):
        store.add_report("a", suggested="UGLY")
    with pytest.raises(LabelError, match="class list"):
        LabelStore(tmp_path / "labels.db").add_correction("a", "BAD")
    assert store.history() == [] and store.reports() == []


def test_reports_queue_until_a_review_resolves_them_and_undo_reopens(store):
    r = store.add_report("a", url="http://p/x.jpg", page="http://p/", verdict="BAD", suggested="GOOD", who="feed")
    assert r["status"] == "open" and store.latest() == {}  # a report is not a label
    row = store.add_correction("a", "GOOD", who="ann", source="feed", resolves=[r["seq"]])
    (rep,) = store.reports()
    assert rep["status"] == "resolved" and rep["resolved_by"] == row["seq"] and store.reports("open") == []
    store.undo(row["seq"], who="ann")
    assert store.reports("open")[0]["seq"] == r["seq"]


def test_wal_and_concurrent_writers(tmp_path):
    path = tmp_path / "labels.db"
    stores = [LabelStore(path, CLASSES) for _ in range(4)]
    with sqlite3.connect(path) as con:
        assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"

    def write(k):
        for i in range(25):
            stores[k].add_correction(f"{k}-{i}", CLASSES[i % 3], who=f"w{k}")
    threads = [threading.Thread(target=write, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(stores[0].latest()) == 100 and sum(stores[0].counts().values()) == 100


def test_default_location_is_the_state_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("SIFT_HOME", str(tmp_path / "home"))
    assert default_path() == (tmp_path / "home" / "labels.db").resolve()
    assert not (tmp_path / "home").exists()  # nothing is created until a store is opened


def test_two_undos_at_once_undo_a_review_once(tmp_path):
    """The read of the row sits inside the write transaction: of two concurrent undos of one review,
    exactly one gets it; the other sees it undone already."""
    for round_ in range(8):
        path = tmp_path / f"l{round_}.db"
        LabelStore(path, classes=("BAD", "GOOD")).add_correction("a", "BAD", who="u")
        stores = [LabelStore(path, classes=("BAD", "GOOD")) for _ in range(2)]
        gate, got = threading.Barrier(2), []

        def undo(s):
            gate.wait()
            got.append(s.undo(1, who="u"))

        threads = [threading.Thread(target=undo, args=(s,)) for s in stores]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        assert sorted(x is None for x in got) == [False, True], got
        assert [r["undone_by"] for r in stores[0].history()] == ["u"]
