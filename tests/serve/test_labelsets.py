"""Any label set, end to end on real Ray, MLflow and Serve: preprocess -> train -> promote -> serve ->
classify -> runs, for a binary NSFW/SFW filter with a worst mistake and a 4-class task with no order
whose manifest also carries scores and tags.

The corpora are drawn here, not by `sift make-corpus`: each class is a hue band under random shapes of
any colour, plus an unlabeled folder, so the classes are learnable but not trivially separable.
"""
import colorsys
import json

import numpy as np
import pytest
from PIL import Image, ImageDraw

pytestmark = pytest.mark.slow

TINY = "train/configs/tiny.yaml"


def _picture(hue: float, rng) -> Image.Image:
    w, h = 120, 90
    r, g, b = (int(255 * v) for v in colorsys.hsv_to_rgb(hue % 1.0, 0.55 + 0.4 * rng.random(), 0.5 + 0.5 * rng.random()))
    img = Image.new("RGB", (w, h), (r, g, b))
    d = ImageDraw.Draw(img)
    for _ in range(int(rng.integers(2, 6))):  # distractors of any colour, a third of the picture at most
        x, y = int(rng.integers(0, w - 20)), int(rng.integers(0, h - 20))
        s = int(rng.integers(8, 30))
        d.ellipse([x, y, x + s, y + s], fill=tuple(int(v) for v in rng.integers(0, 256, 3)))
    return img


def _marks(img: Image.Image, tags: list[str]) -> Image.Image:
    d = ImageDraw.Draw(img)
    if "frame" in tags:  # a thick white border
        d.rectangle([0, 0, img.width - 1, img.height - 1], outline=(255, 255, 255), width=9)
    if "bar" in tags:  # a black band across the middle
        d.rectangle([0, img.height // 2 - 8, img.width, img.height // 2 + 8], fill=(0, 0, 0))
    return img


def _corpus(root, classes: dict[str, float], per_class: int, unlabeled: int, seed: int, scored: bool = False):
    """Class folders of hue bands plus unlabeled pictures; the folder tree is the input, or with
    ``scored`` a JSONL manifest of the same files whose ``score`` (0-10, the user's units) is how
    bright the picture was made and whose ``tags`` mark a white frame and a black bar."""
    rng = np.random.default_rng(seed)
    lines = []
    for name, hue in classes.items():
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            img = _picture(hue + rng.normal(0, 0.03), rng)
            line = {"path": f"{name}/{i}.jpg", "label": name}
            if scored:
                k = float(rng.uniform(0.3, 1.0))
                tags = [t for t, on in (("frame", i % 3 == 0), ("bar", i % 4 < 2)) if on]
                img = _marks(Image.eval(img, lambda v, k=k: int(v * k)), tags)
                line |= {"score": 10 * k, "tags": tags}
            img.save(root / line["path"], quality=85)
            lines.append(line)
    (root / "unlabeled").mkdir()
    names = list(classes.values())
    for i in range(unlabeled):
        _picture(names[i % len(names)] + rng.normal(0, 0.03), rng).save(root / "unlabeled" / f"u{i}.jpg")
        lines.append({"path": f"unlabeled/u{i}.jpg"})
    if not scored:
        return root
    (root / "m.jsonl").write_text("\n".join(map(json.dumps, lines)))
    return root / "m.jsonl"


def _end_to_end(tmp_path, server, capsys, classes, model_name, train_overrides, via_server=True, scored=False,
                epochs=3):
    """make a corpus of ``classes`` (``scored``: a manifest with scores and tags), preprocess, train,
    promote, then classify probes through the API (``via_server``) or the local client, both given
    the champion alias."""
    from flows.ingest.preprocess import main as preprocess
    from serve.client import classify_main
    from train.main import main as train
    from train.promote import main as promote
    from train.runs import main as runs
    from train.tracking import use

    corpus = _corpus(tmp_path / "corpus", classes, per_class=45, unlabeled=30, seed=len(classes), scored=scored)
    assert preprocess(["--input", str(corpus), "--output", str(tmp_path / "data"), "batch_size=16"]) == 0
    manifest = json.loads((tmp_path / "data" / "manifest.json").read_text())
    assert manifest["classes"] == sorted(classes, key=str.lower) and manifest["priors"] == {}
    assert manifest["label_set"] == {"from": "data", "dropped_defaults": ["NEUTRAL"]}
    capsys.readouterr()

    assert train(["--data", str(tmp_path / "data"), "--config", TINY, f"epochs={epochs}", "frozen_steps=-1",
                  f"model_name={model_name}", f"run_name={model_name}-run", *train_overrides]) == 0
    out = capsys.readouterr().out
    for c in classes:
        assert f"\n{c} " in out  # a row per class in the evaluation table
    client = use().MlflowClient()
    mv = client.get_model_version_by_alias(model_name, "candidate")
    run = client.get_run(mv.run_id)
    assert run.data.params["classes_list"] == ",".join(manifest["classes"])
    m = run.data.metrics
    for c in classes:
        assert f"test_f1_{c}" in m and f"test_ap_{c}" in m
    assert not any("BAD" in k or "GOOD" in k for k in m)  # nothing of the default label set leaks in
    # the classes are hue bands: even the tiny random backbone's features separate them
    assert m["test_macro_f1"] >= 0.6, m["test_macro_f1"]

    assert promote(["--latest", "--model-name", model_name]) == 0
    assert client.get_model_version_by_alias(model_name, "champion").version == mv.version
    champion = f"models:/{model_name}@champion"
    if via_server:
        cfg, api = server[0](f"model={champion}")
        assert api.get("/readyz").json()["classes"] == manifest["classes"]
        where = ["--server", f"http://127.0.0.1:{cfg.port}"]
    else:
        where = ["--model", champion]
    probe = {c: tmp_path / f"probe-{c}.jpg" for c in classes}
    for i, (c, hue) in enumerate(classes.items()):
        _picture(hue, np.random.default_rng(100 + i)).save(probe[c])
    capsys.readouterr()
    assert classify_main([*where, "--json", *map(str, probe.values())]) == 0
    got = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [set(r["probs"]) for r in got] == [set(classes)] * len(classes)
    assert all(r["label"] in classes and abs(sum(r["probs"].values()) - 1) < 1e-5 for r in got)
    # the label is the artifact's decision rule applied to the returned probabilities
    from train.metrics import predict_with_thresholds

    names = manifest["classes"]
    for r in got:
        p = np.array([[r["probs"][c] for c in names]])
        t = [r["thresholds"][c] for c in names]
        assert r["label"] == names[int(predict_with_thresholds(p, t)[0])]
    correct = sum(r["label"] == c for r, c in zip(got, classes))
    assert correct >= len(classes) - 1, got  # pure hue probes: at most one miss
    capsys.readouterr()
    assert runs(["--last", "3", "--plot", str(tmp_path / "runs.png")]) == 0
    table = capsys.readouterr().out
    assert f"{model_name}-run" in table and f"test_f1_{sorted(classes, key=str.lower)[0]}" in table
    return run, mv


def test_binary_nsfw_sfw_with_a_worst_mistake(tmp_path, server, capsys, sift_home):
    from train.artifact import META

    run, mv = _end_to_end(tmp_path, server, capsys, {"NSFW": 0.95, "SFW": 0.55}, "sift-nsfw",
                          ["positive=NSFW", "threshold_rate=0.1", "selection=auto"])
    assert run.data.params["selection"] == "NSFW_recall@SFW2NSFW<=0.1"
    assert "test_NSFW_recall_at_SFW2NSFW_le_10" in run.data.metrics
    meta = json.loads((sift_home / "runs" / "sift-nsfw-run" / "model" / META).read_text())
    d = meta["decision"]
    assert {k: d[k] for k in ("rule", "positive", "negative", "max_rate", "fallback")} == {
        "rule": "worst_mistake", "positive": "NSFW", "negative": "SFW", "max_rate": 0.1, "fallback": None}
    n = d["calibration_items"]  # the clean validation items it rests on, and its curve for serve time
    assert n["total"] == n["NSFW"] + n["SFW"] > 0 and len(d["curve"]["tau"]) == len(d["curve"]["rate"]) > 1
    t = meta["thresholds"]
    assert len(t) == 2 and t[0] + t[1] == pytest.approx(1.0)  # one threshold: NSFW when P(NSFW) >= t[0]
    assert (sift_home / "runs" / "sift-nsfw-run" / "pr_curves_test.png").stat().st_size > 1000


def test_four_unordered_classes_use_macro_f1_and_learn_score_and_tag_heads(tmp_path, server, capsys, sift_home):
    """Four classes with no order, from a JSONL manifest whose ``score`` is the brightness and whose
    ``tags`` mark a white frame and a black bar (one training for all of it: each costs ~90 s here).
    MLflow gets macro F1 per class, MAE, Spearman and per-tag F1; the local client returns the
    score and the tags, and score-folder --score ranks by the score."""
    from serve.client import classify_main, score_folder_main
    from train.artifact import META

    classes = {"attic": 0.0, "beach": 0.16, "forest": 0.33, "kitchen": 0.66}
    # a CLIP with a text tower: the head is seeded from prompts (random weights: the code path only)
    run, _ = _end_to_end(tmp_path, server, capsys, classes, "sift-rooms",
                         ["backbone=tiny-clip", "zero_shot_prompts={attic: an indoor room}", "score_head=true"],
                         via_server=False, scored=True, epochs=6)
    assert run.data.params["selection"] == "macro_f1" and run.data.params["positive"] == ""
    m = run.data.metrics
    assert not any("_recall_at_" in k for k in m)
    meta = json.loads((sift_home / "runs" / "sift-rooms-run" / "model" / META).read_text())
    assert meta["decision"]["rule"] == "macro_f1" and meta["decision"]["fallback"] is None
    assert sum(meta["thresholds"]) == pytest.approx(1.0)
    assert meta["zero_shot"]["prompts"] == ["an indoor room", "a photo of beach", "a photo of forest",
                                            "a photo of kitchen"] and meta["zero_shot"]["scale"] > 0
    manifest = json.loads((tmp_path / "data" / "manifest.json").read_text())
    # 180 labeled lines, each with a score and a tag list (23 bars and 15 frames a class); a near
    # duplicate of the hue pictures may be dropped
    assert manifest["tags"] == ["bar", "frame"] and 175 <= manifest["scored"] == manifest["tagged"] <= 180
    lost = 180 - manifest["scored"]
    assert 4 * 23 - lost <= manifest["by_tag"]["bar"] <= 4 * 23 and 4 * 15 - lost <= manifest["by_tag"]["frame"] <= 4 * 15
    # the score: 10 x a brightness factor from U(0.3, 1), std ~2; predicting the mean has MAE ~1.75
    assert m["test_score_n"] >= 10 and m["test_score_spearman"] >= 0.5, m
    assert m["test_score_mae"] < 1.75, m
    assert m["test_tag_n"] >= 10 and m["test_tag_macro_f1"] >= 0.6 and m["test_tag_f1_bar"] >= 0.6, m
    model = str(sift_home / "runs" / "sift-rooms-run" / "model")
    probe = tmp_path / "probe"
    probe.mkdir()
    for name, k, tags in (("dim", 0.3, []), ("mid", 0.6, []), ("bright", 1.0, []), ("bright-bar", 1.0, ["bar"])):
        img = Image.eval(_picture(0.33, np.random.default_rng(1)), lambda v, k=k: int(v * k))
        _marks(img, tags).save(probe / f"{name}.jpg")
    capsys.readouterr()
    assert classify_main(["--model", model, "--json", str(probe)]) == 0
    rows = {json.loads(x)["path"]: json.loads(x) for x in capsys.readouterr().out.splitlines()}
    dim, mid, bright, bar = (rows[str(probe / f"{n}.jpg")] for n in ("dim", "mid", "bright", "bright-bar"))
    assert dim["score"] < bright["score"] and 0 <= dim["score"] and bright["score"] <= 12, rows
    # the same picture with and without the bar mark: the mark is what raises P(bar)
    assert set(bar["tag_probs"]) == {"bar", "frame"} and bar["tag_probs"]["bar"] > bright["tag_probs"]["bar"], rows
    assert all(set(r["tags"]) <= {"bar", "frame"} for r in rows.values())
    assert score_folder_main([str(probe), "--score", "--model", model, "--min", "0", "--max", "100"]) == 0
    assert "4 of 4 files with score in" in capsys.readouterr().out
