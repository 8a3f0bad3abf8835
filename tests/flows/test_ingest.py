import json
import math

import pytest

from flows.ingest.inputs import IngestError, discover, label_of

CLASSES = ("BAD", "NEUTRAL", "GOOD")
NOISY = {"NEUTRAL": {}}


def _touch(p, data=b"x"):
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_bytes(data)


def test_folder_tree_labels_pools_and_metadata_skipped(tmp_path):
    for rel in ["GOOD/a.jpg", "bad/sub/b.png", "NEUTRAL/c.jpg", "unlabeled/d.jpg", "root.jpg",
                "_meta/truth.jsonl", "GOOD/.hidden.jpg"]:
        _touch(tmp_path / rel)
    items = {i["path"].split("/")[-1]: i for i in discover(tmp_path, CLASSES, NOISY)}
    assert set(items) == {"a.jpg", "b.png", "c.jpg", "d.jpg", "root.jpg"}
    assert (items["a.jpg"]["label"], items["a.jpg"]["pool"]) == (2, "clean")
    assert items["b.png"]["label_name"] == "BAD"  # folder names are case-insensitive
    assert items["c.jpg"]["pool"] == "noisy"
    assert (items["d.jpg"]["label"], items["d.jpg"]["pool"]) == (-1, "unlabeled")
    assert items["root.jpg"]["pool"] == "unlabeled"


def test_unknown_label_folder_is_a_clear_error(tmp_path):
    _touch(tmp_path / "MAYBE" / "a.jpg")
    with pytest.raises(IngestError, match="'MAYBE'.*one of"):
        discover(tmp_path, CLASSES, NOISY)


def test_manifest_lines_good_and_bad(tmp_path):
    _touch(tmp_path / "img" / "a.jpg")
    lines = [
        {"path": "img/a.jpg", "label": "GOOD", "group": "g1", "source": "https://x/page", "score": 0.7},
        {"path": "img/a.jpg", "source": "https://x/page"},
        {"url": "https://x/b.jpg", "label": "BAD"},
        {"path": "img/a.jpg", "label": "MAYBE"},
        {"label": "BAD"},
        "not json at all",
    ]
    text = "\n".join(l if isinstance(l, str) else json.dumps(l) for l in lines)
    (tmp_path / "m.jsonl").write_text(text + "\n\n")
    items = discover(tmp_path / "m.jsonl", CLASSES, NOISY)
    assert len(items) == 6  # every line ends as an item (a reject is an item too)
    a, b, url, badlabel, nopath, notjson = items
    assert a["path"] == str(tmp_path / "img" / "a.jpg") and a["group"] == "g1" and a["score"] == 0.7
    assert b["group"] == "https://x/page" and b["label"] == -1 and math.isnan(b["score"])
    assert (url["url"], url["path"], url["local"], url["reject"]) == ("https://x/b.jpg", "https://x/b.jpg", "", "")
    assert badlabel["reject"] == "bad_manifest_line" and "MAYBE" in badlabel["detail"]
    assert nopath["reject"] == notjson["reject"] == "bad_manifest_line"


def test_missing_input_and_empty_folder(tmp_path):
    with pytest.raises(IngestError, match="does not exist"):
        discover(tmp_path / "nope", CLASSES, NOISY)
    (tmp_path / "empty").mkdir()
    with pytest.raises(IngestError, match="no files"):
        discover(tmp_path / "empty", CLASSES, NOISY)


def test_label_of_custom_label_set():
    assert label_of("sfw", ("NSFW", "SFW"), set()) == (1, "SFW", "clean")
    with pytest.raises(KeyError):
        label_of("GOOD", ("NSFW", "SFW"), set())


def test_manifest_tags_are_canonical_json_and_bad_tags_are_rejected(tmp_path):
    lines = [{"path": "a.jpg", "label": "GOOD", "tags": ["Face", "text_overlay", "face"]},
             {"path": "b.jpg", "label": "GOOD", "tags": []},
             {"path": "c.jpg", "label": "GOOD"},
             {"path": "d.jpg", "label": "GOOD", "tags": "face"},
             {"path": "e.jpg", "label": "GOOD", "tags": ["", "x"]}]
    (tmp_path / "m.jsonl").write_text("\n".join(map(json.dumps, lines)))
    a, b, c, d, e = discover(tmp_path / "m.jsonl", CLASSES, NOISY)
    assert (a["tags"], b["tags"], c["tags"]) == ('["face", "text_overlay"]', "[]", "")
    assert d["reject"] == e["reject"] == "bad_manifest_line" and "tags must be a list" in d["detail"]
