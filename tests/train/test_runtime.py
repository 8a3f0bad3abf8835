"""ONNX export of an artifact, the INT8 twin, the recorded agreement and the runtime choice."""
import io
import json

import numpy as np
import pytest
import torch
from PIL import Image

from train.artifact import META, SiftModel, save
from train.colour import ColourStats
from train.model import Classifier, load_backbone, resolve_backbone
from train.runtime import RuntimeChoiceError, RuntimeKnobs, choose
from train.runtime.export import export_artifact, flat_metrics

CLASSES = ["BAD", "NEUTRAL", "GOOD"]


def _jpeg(seed, size=(120, 90)):
    a = np.random.default_rng(seed).integers(0, 256, (size[1] // 10, size[0] // 10, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(a).resize(size).save(buf, "JPEG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A tiny artifact with colour statistics, face features, a score head and tags, exported."""
    root = tmp_path_factory.mktemp("rt")
    d = resolve_backbone("tiny", root)
    backbone, p = load_backbone(d)
    torch.manual_seed(0)
    model = Classifier(backbone, 3, 4, hidden=32, score_head=True, n_tags=2, stats=ColourStats(p.mean, p.std))
    model.eval()
    save(root / "m", model, backbone_id="tiny", preproc=p, short_edge=96, classes=CLASSES,
         thresholds=[0.4, 0.3, 0.4], temperature=1.3, faces=None, hidden=32, dropout=0.1,
         score_range=(0.0, 10.0), tags=["text", "face"], tag_thresholds=[0.5, 0.5])
    images = [_jpeg(s) for s in range(24)]
    labels = np.arange(24) % 3
    labels[0] = -1  # unlabeled items count for agreement, not for macro-F1
    logs = []
    record = export_artifact(root / "m", images, labels, clean=np.arange(24) % 4 != 0, batch=5, log=logs.append)
    return root / "m", images, record, logs


def test_export_writes_both_graphs_and_records_their_agreement(exported):
    path, images, record, logs = exported
    meta = json.loads((path / META).read_text())
    assert meta["runtimes"] == record
    for name in ("onnx", "onnx-int8"):
        r = record[name]
        assert (path / r["file"]).stat().st_size == r["bytes"] > 0 and r["n"] == len(images)
        assert 0.0 <= r["agreement"] <= 1.0 and r["max_prob_diff"] >= 0
        assert r["val_items"] == int(((np.arange(24) % 4 != 0) & (np.arange(24) > 0)).sum())
    assert record["onnx"]["agreement"] == 1.0 and record["onnx"]["max_prob_diff"] < 1e-4
    # the INT8 graph is a different graph: smaller, and not bit-identical
    assert record["onnx-int8"]["bytes"] < record["onnx"]["bytes"]
    assert record["onnx-int8"]["max_prob_diff"] > record["onnx"]["max_prob_diff"]
    assert any("onnx-int8" in line and "agreement" in line for line in logs)
    m = flat_metrics(record)
    assert m["export_onnx_agreement"] == 1.0 and "export_onnx_int8_max_prob_diff" in m
    assert all(isinstance(v, float) for v in m.values())


def test_every_runtime_gives_the_same_heads_and_fp32_the_same_labels(exported):
    path, images, record, _ = exported
    torch_m, fp32, int8 = (SiftModel(path, runtime=r) for r in ("torch", "onnx", "onnx-int8"))
    assert (torch_m.runtime, fp32.runtime, int8.runtime) == ("torch", "onnx", "onnx-int8")
    assert fp32.graph is not None and "model" not in vars(fp32)  # ONNX never loads the torch weights
    ref, got, q = (m.predict(images) for m in (torch_m, fp32, int8))
    assert [r["label"] for r in got] == [r["label"] for r in ref]
    for a, b in zip(ref, got):
        assert abs(a["score"] - b["score"]) < 1e-4 and set(a["tags"]) == set(b["tags"])
        assert max(abs(a["probs"][c] - b["probs"][c]) for c in CLASSES) < 1e-4
    # INT8 agrees on as many labels as its record says (same items, same rule, the same batches:
    # dynamic quantisation scales the activations per batch, so batch-mates matter a little)
    q5 = [r for i in range(0, len(images), 5) for r in int8.predict(images[i:i + 5])]
    agree = np.mean([a["label"] == b["label"] for a, b in zip(ref, q5)])
    assert agree == pytest.approx(record["onnx-int8"]["agreement"])
    assert all(0 <= r["score"] <= 10 for r in q)  # the score head's range survives quantisation
    # five tiles go through the graph too (5N rows, a dynamic batch axis)
    assert [r["label"] for r in fp32.predict(images[:3], tiles=5)] == \
        [r["label"] for r in torch_m.predict(images[:3], tiles=5)]


def test_auto_takes_int8_only_when_its_agreement_passes(exported):
    path, _, record, _ = exported
    good = {"onnx": {"file": "a"}, "onnx-int8": {"file": "b", "agreement": 0.995, "n": 200}}
    assert choose(good, "auto", "cpu")[0] == "onnx-int8"
    assert choose(good, "auto", "cpu", min_agreement=0.999)[0] == "onnx"  # below the bar: fp32
    assert "99.5%" in choose(good, "auto", "cpu", min_agreement=0.999)[1]
    assert choose(good, "auto", "cuda")[0] == "torch"  # a GPU keeps torch
    assert choose({"onnx": {"file": "a"}, "onnx-int8": {"error": "x"}}, "auto", "cpu")[0] == "onnx"
    assert choose(None, "auto", "cpu") == ("torch", "auto: the artifact has no ONNX export")
    assert choose(None, "torch", "cpu")[0] == "torch"
    with pytest.raises(RuntimeChoiceError, match="sift export"):
        choose(None, "onnx-int8", "cpu")
    with pytest.raises(RuntimeChoiceError, match="CPU"):
        choose(good, "onnx", "cuda")
    with pytest.raises(RuntimeChoiceError, match="choose one of"):
        choose(good, "tensorrt", "cpu")
    # the artifact's own record through SiftModel: auto follows the measured agreement
    a = record["onnx-int8"]["agreement"]
    assert SiftModel(path, min_agreement=a).runtime == "onnx-int8"
    if a < 1.0:
        assert SiftModel(path, min_agreement=min(1.0, a + 1e-9)).runtime == "onnx"
    assert RuntimeKnobs().runtime_kwargs() == {"runtime": "auto", "min_agreement": None}


def test_an_artifact_without_export_runs_on_torch_under_auto(tmp_path):
    d = resolve_backbone("tiny", tmp_path)
    backbone, p = load_backbone(d)
    save(tmp_path / "m", Classifier(backbone, 3, 0, hidden=16).eval(), backbone_id="tiny", preproc=p,
         short_edge=96, classes=CLASSES, thresholds=[0.3] * 3, temperature=1.0, faces=None, hidden=16, dropout=0.1)
    m = SiftModel(tmp_path / "m")
    assert m.runtime == "torch" and "no ONNX export" in m.runtime_reason
    with pytest.raises(RuntimeChoiceError):
        SiftModel(tmp_path / "m", runtime="onnx")
    # no face features: the graph has one input
    export_artifact(tmp_path / "m", [_jpeg(1), _jpeg(2)], np.array([0, 2]), log=lambda s: None)
    g = SiftModel(tmp_path / "m", runtime="onnx").graph
    assert g.inputs == ["pixels"] and g.outputs == ["logits"]
