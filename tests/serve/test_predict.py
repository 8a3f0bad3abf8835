"""sift predict: the pure cores of serve.offline.batch and serve.offline.predict, then one Ray-backed run over a
folder (with broken files and a video) and one over a preprocessed parquet dataset."""
from __future__ import annotations

import io
import math

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from flows.core.config import ConfigError
from serve.offline import batch as B
from serve.config import load_serve
from serve.offline.predict import list_files, main, output_columns, resolve_input
from serve.predictor import Limits

LIMITS = Limits.of(load_serve())


def _jpeg(colour=(200, 30, 30), size=(64, 48)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, colour).save(buf, "JPEG")
    return buf.getvalue()


def test_resolve_input_and_listing(tmp_path):
    (tmp_path / "prep" / "data").mkdir(parents=True)
    (tmp_path / "prep" / "manifest.json").write_text("{}")
    (tmp_path / "shards").mkdir()
    pq.write_table(pa.table({"image": [b""]}), tmp_path / "shards" / "part-0.parquet")
    imgs = tmp_path / "imgs"
    for rel in ("a.jpg", "sub/b.png", ".hidden.jpg", "_skip/c.jpg", "sub/.x/d.jpg"):
        (imgs / rel).parent.mkdir(parents=True, exist_ok=True)
        (imgs / rel).write_bytes(b"x")
    assert resolve_input(tmp_path / "prep") == ("parquet", tmp_path / "prep" / "data")
    assert resolve_input(tmp_path / "shards") == ("parquet", tmp_path / "shards")
    assert resolve_input(tmp_path / "shards" / "part-0.parquet")[0] == "parquet"
    assert resolve_input(imgs) == ("images", imgs)
    with pytest.raises(ConfigError):
        resolve_input(tmp_path / "nope")
    assert list_files(imgs) == [str(imgs / "a.jpg"), str(imgs / "sub" / "b.png")]


def test_prepare_batch_gives_every_row_an_array_or_a_reason(tmp_path):
    good = tmp_path / "good.jpg"
    good.write_bytes(_jpeg())
    table = pa.table({"image": [_jpeg(), None, None, b"", b"<html>hi</html>" * 10, _jpeg()[:200], None,
                                b"\x00\x00\x00\x18ftypmp42" + bytes(100)],
                      "path": ["", str(good), str(tmp_path / "missing.jpg"), "", "", "", "", ""],
                      "error": ["", "", "", "", "", "", "earlier", ""]})
    p = B.prepare_batch(table, B.ENCODED, LIMITS, short_edge=448)
    assert p.error == ["", "", "missing", "empty", "not_media", "decode_error", "earlier", "unsupported_format"]
    assert p.ok.tolist() == [True, True] + [False] * 6
    assert p.arrays[0].shape == (48, 64, 3) and p.arrays[0].dtype == np.uint8
    assert p.sha256[0] == p.sha256[1] != "" and all(p.detail[i] for i in (2, 3, 4, 5, 7))
    assert "sift scan" in p.detail[-1] and not p.detail[3].startswith("empty:")


def test_prepare_raw_frames():
    frame = np.arange(4 * 6 * 3, dtype=np.uint8).reshape(4, 6, 3)
    table = pa.table({"frame": [frame.tobytes(), b"short"], "height": [4, 4], "width": [6, 6]})
    p = B.prepare_batch(table, B.RAW, None, 448)
    assert np.array_equal(p.arrays[0], frame) and p.error == ["", "internal_error"]
    with pytest.raises(ValueError):
        B.prepare_batch(table, "jpeg", None, 448)


def test_prob_columns():
    probs = np.array([[0.7, 0.2, 0.1], [0.1, 0.1, 0.8]])
    cols = B.prob_columns(probs, np.array([True, False, True]), ["BAD", "NEUTRAL", "GOOD"], np.ones(3))
    assert cols["label"].to_pylist() == ["BAD", "", "GOOD"]
    assert cols["prob_GOOD"].to_pylist()[2] == 0.8 and math.isnan(cols["prob_BAD"].to_pylist()[1])
    none = B.prob_columns(np.zeros((0, 2)), np.array([False]), ["A", "B"], np.ones(2))
    assert none["label"].to_pylist() == [""]
    names = ["error", "prob_B", "path", "label", "model", "id", "prob_A", "version", "detail", "split"]
    assert output_columns(names, ["A", "B"]) == ["id", "path", "split", "label", "prob_A", "prob_B", "model",
                                                "version", "error", "detail"]


# ---------------------------------------------------------------- Ray


def test_a_scorer_writes_the_score_and_tag_heads(tmp_path):
    """A model with a score head and a tag head: ``predicted_score`` in the targets' units and
    ``predicted_tags`` (the tags at or above their thresholds) per row, '' / NaN where not scored."""
    import json

    import torch

    from train.artifact import save
    from train.model import Classifier, load_backbone, resolve_backbone

    backbone, p = load_backbone(resolve_backbone("tiny", tmp_path))
    torch.manual_seed(0)
    model = Classifier(backbone, 2, 0, hidden=16, score_head=True, n_tags=2).eval()
    save(tmp_path / "m", model, backbone_id="tiny", preproc=p, short_edge=64, classes=["a", "b"],
         thresholds=[0.5, 0.5], temperature=1.0, faces=None, hidden=16, dropout=0.1, score_range=(0.0, 10.0),
         tags=["always", "never"], tag_thresholds=[1e-9, 1.0])
    table = pa.table({"image": pa.array([_jpeg(), b"not an image", _jpeg((10, 200, 10))], pa.binary()),
                      "path": ["x.jpg", "y.jpg", "z.jpg"]})
    out = B.Scorer(str(tmp_path / "m"), B.ENCODED, LIMITS)(table).to_pydict()
    assert out[B.TAGS] == [json.dumps(["always"]), "", json.dumps(["always"])]
    s = out[B.SCORE]
    assert 0.0 <= s[0] <= 10.0 and math.isnan(s[1]) and 0.0 <= s[2] <= 10.0
    assert out["error"] == ["", "not_media", ""], out["error"]
    assert out["uncertain"] == [False, None, False]  # two classes at (0.5, 0.5): one always passes
    assert output_columns([*out, "model", "version"], ["a", "b"])[-10:] == [
        "label", "uncertain", "prob_a", "prob_b", B.SCORE, B.TAGS, "model", "version", "error", "detail"]


def test_predict_folder_and_parquet(ray_session, trained, preprocessed, tmp_path):
    from serve.predictor import Predictor, prepare_image

    corpus, data, manifest = preprocessed
    folder = tmp_path / "in"
    (folder / "sub").mkdir(parents=True)
    originals = sorted(p for p in (corpus / "GOOD").glob("img_*") if p.suffix in (".jpg", ".png"))[:5]
    for p in originals:
        (folder / p.name).write_bytes(p.read_bytes())
    (folder / "sub" / "corrupt.jpg").write_bytes(_jpeg()[:300])
    (folder / "sub" / "notes.png").write_text("not an image")
    videos = sorted(corpus.rglob("vid_*.mp4"))
    (folder / "clip.mp4").write_bytes(videos[0].read_bytes())
    out = tmp_path / "pred.parquet"
    model = str(trained["model"])
    assert main(["--input", str(folder), "--output", str(out), "--model", model, "batch_size=4", "runtime=onnx"]) == 0
    t = pq.read_table(out).to_pandas()
    assert sorted(t.path) == list_files(folder)  # every input is a row
    errors = dict(zip(t.path.map(lambda p: p.rsplit("/", 1)[-1]), t.error))
    assert errors["corrupt.jpg"] == "decode_error" and errors["notes.png"] == "not_media"
    assert errors["clip.mp4"] == "unsupported_format"
    ok = t[t.error == ""]
    assert len(ok) == len(originals) and set(ok.label) <= {"BAD", "NEUTRAL", "GOOD"}
    probs = ok[["prob_BAD", "prob_NEUTRAL", "prob_GOOD"]].to_numpy()
    assert np.allclose(probs.sum(axis=1), 1.0) and t[t.error != ""].prob_BAD.isna().all()
    assert (t.model != "").all() and (t.version == "local").all() and (ok.id.str.len() == 64).all()
    # same numbers as the API's in-process path for the same bytes
    pred = Predictor(trained["model"], runtime={"runtime": "onnx"})
    row = ok.iloc[0]
    ref = pred.classify([prepare_image(open(row.path, "rb").read(), LIMITS, pred.model.short_edge)])[0]
    assert ref["label"] == row.label and ref["probs"]["GOOD"] == pytest.approx(row.prob_GOOD, abs=1e-5)

    # torch equals fp32 ONNX, and INT8 is another graph (the tiny random model's near-ties make it move
    # probabilities by up to ~0.25): both on the in-process path, which the actors share (another batch
    # job would cost ~20 s here for the same code; the actors' own numbers are the ONNX ones above)
    images = [prepare_image(open(p, "rb").read(), LIMITS, pred.model.short_edge) for p in ok.path]
    runs = {rt: Predictor(trained["model"], runtime={"runtime": rt}).classify(images) for rt in ("torch", "onnx-int8")}
    prob = {rt: np.array([[r["probs"][c] for c in ("BAD", "NEUTRAL", "GOOD")] for r in got]) for rt, got in runs.items()}
    assert np.abs(prob["torch"] - probs).max() < 1e-4 and [r["label"] for r in runs["torch"]] == list(ok.label)
    q = prob["onnx-int8"]
    assert np.allclose(q.sum(axis=1), 1.0) and 1e-4 < np.abs(q - probs).max() < 1.0
    out2 = tmp_path / "data.parquet"
    assert main(["--input", str(data), "--output", str(out2), "--model", model, "max_actors=1"]) == 0
    t2 = pq.read_table(out2).to_pandas()
    assert len(t2) == manifest["rows"] and (t2.error == "").all()
    assert set(t2.columns) >= {"id", "path", "kind", "split", "label_name", "label", "prob_GOOD", "version"}
    src = pq.read_table(data / "data", columns=["id"]).column("id").to_pylist()
    assert sorted(t2.id) == sorted(src)
