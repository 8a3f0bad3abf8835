import io

import numpy as np
import pytest
import torch
from PIL import Image

from train.artifact import SiftModel, save
from train.model import Classifier, load_backbone, resolve_backbone, set_trainable
from train.transforms import Preproc, center_crop, decode, eval_input, normalize, to_uint8_batch


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    d = resolve_backbone("tiny", tmp_path_factory.mktemp("bb"))
    backbone, preproc = load_backbone(d)
    torch.manual_seed(0)
    return Classifier(backbone, 3, 4, hidden=32), preproc, d


def _jpeg(seed, size=(120, 90)):
    a = np.random.default_rng(seed).integers(0, 256, (size[1] // 10, size[0] // 10, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(a).resize(size).save(buf, "JPEG")
    return buf.getvalue()


def test_tiny_backbone_is_built_once_and_loaded_through_from_pretrained(tiny, tmp_path):
    _, preproc, d = tiny
    assert (d and (__import__("pathlib").Path(d) / "config.json").exists())
    assert preproc.crop == 64 and preproc.size == 72
    # a second resolve reuses the directory: same weights
    again, _ = load_backbone(d)
    a = next(again.parameters()).detach()
    assert torch.equal(a, next(load_backbone(d)[0].parameters()).detach())


def test_forward_shapes_and_embedding_path_agree(tiny):
    model, p, _ = tiny
    model.eval()
    x = eval_input([_jpeg(1), _jpeg(2)], p)
    face = torch.rand(2, 4)
    logits, score, tags = model(pixels=x, face=face)
    assert logits.shape == (2, 3) and score is None and tags is None
    z = model.embed(x)
    assert torch.allclose(z.norm(dim=-1), torch.ones(2), atol=1e-5)
    assert torch.allclose(model(z=z, face=face)[0], logits, atol=1e-6)


def test_set_trainable_unfreezes_only_the_last_blocks(tiny):
    model, _, _ = tiny
    params = set_trainable(model, 1)
    trainable = {n for n, p in model.backbone.named_parameters() if p.requires_grad}
    assert params and all(p.requires_grad for p in params)
    assert all("layers.1." in n or "post_layernorm" in n or "visual_projection" in n for n in trainable)
    assert not any("layers.0." in n for n in trainable)
    assert set_trainable(model, 0) == [] and not any(p.requires_grad for p in model.backbone.parameters())


def test_artifact_round_trip_gives_identical_predictions(tiny, tmp_path):
    model, p, _ = tiny
    model.eval()
    save(tmp_path / "m", model, backbone_id="tiny", preproc=p, short_edge=448, classes=["BAD", "NEUTRAL", "GOOD"],
         thresholds=[0.6, 0.4, 0.4], temperature=1.5, faces=None, hidden=32, dropout=0.1)
    loaded = SiftModel(tmp_path / "m")
    assert loaded.classes == ["BAD", "NEUTRAL", "GOOD"] and loaded.temperature == 1.5
    imgs = [_jpeg(s) for s in range(4)]
    # the loaded model: its own preparation path; the original: the training eval path
    x = normalize(center_crop(to_uint8_batch([decode(b, p.size) for b in imgs]), p.crop), p)
    with torch.no_grad():
        ref = model(pixels=x, face=torch.zeros(4, 4)).logits
    got = loaded.logits([loaded.prepare(b) for b in imgs])
    np.testing.assert_allclose(got, ref.numpy(), atol=1e-5)
    preds = loaded.predict(imgs)
    assert len(preds) == 4 and all(abs(sum(r["probs"].values()) - 1) < 1e-6 for r in preds)
    assert loaded.predict(imgs, tiles=5)[0]["label"] in loaded.classes


def test_chunked_cpu_forward_matches_one_forward_and_leaves_torch_threads_alone(tiny, tmp_path):
    model, p, _ = tiny
    model.eval()
    save(tmp_path / "m", model, backbone_id="tiny", preproc=p, short_edge=448, classes=["BAD", "NEUTRAL", "GOOD"],
         thresholds=[0.4, 0.3, 0.3], temperature=1.0, faces=None, hidden=32, dropout=0.1)
    threads = torch.get_num_threads()
    one, chunked = SiftModel(tmp_path / "m", workers=1), SiftModel(tmp_path / "m", workers=3)
    assert one.pool is None and chunked.workers == 3
    imgs = [one.prepare(_jpeg(s)) for s in range(7)]  # 7 images -> 6 uneven chunks
    np.testing.assert_allclose(chunked.logits(imgs), one.logits(imgs), atol=1e-5)
    np.testing.assert_allclose(chunked.logits(imgs[:1]), one.logits(imgs[:1]), atol=1e-5)
    assert torch.get_num_threads() == threads  # the caller's intra-op threads are untouched
    assert set(chunked.pool.map(lambda _: torch.get_num_threads(), range(6))) == {1}  # single-threaded workers
    # grad mode is per thread: the workers must turn it off themselves
    x, face = torch.randn(4, 3, p.crop, p.crop, requires_grad=True), torch.zeros(4, 4)
    assert not chunked.forward(x, face)[0].requires_grad


def test_preproc_round_trips_as_dict():
    p = Preproc(72, 64)
    assert Preproc.from_dict(p.to_dict()) == p


def test_five_crop_boxes_cover_corners_and_centre_at_two_thirds():
    from train.transforms import five_crop_boxes

    boxes = five_crop_boxes(300, 216, 72)
    assert boxes == [(0, 0, 144, 144), (156, 0, 300, 144), (0, 72, 144, 216), (156, 72, 300, 216),
                     (78, 36, 222, 180)]
    assert five_crop_boxes(60, 50, 72) == [(0, 0, 50, 50), (10, 0, 60, 50), (0, 0, 50, 50), (10, 0, 60, 50),
                                           (5, 0, 55, 50)]  # not larger than the square: whole short edge


def test_tiles_crop_the_full_resolution_decode_and_aggregate_by_mean_or_max(tiny, tmp_path):
    from train.transforms import five_crops

    model, p, _ = tiny
    model.eval()
    save(tmp_path / "m", model, backbone_id="tiny", preproc=p, short_edge=100, classes=["a", "b", "c"],
         thresholds=[1 / 3] * 3, temperature=1.0, faces=None, hidden=32, dropout=0.1)
    m = SiftModel(tmp_path / "m", workers=1)
    assert m.tile_edge == 3 * p.size == 216 and m.input_edge(1) == 100 and m.input_edge(5) == 216
    big = Image.open(io.BytesIO(_jpeg(9, size=(900, 600))))
    tiled = m.prepare(big, tiles=5)
    assert tiled.size == (324, 216)  # 600 px short edge decoded at 216, not at the stored 100
    assert m.prepare(big).size == (150, 100)
    crops = five_crops(tiled, p.size)
    x = normalize(center_crop(to_uint8_batch(crops), p.crop), p)
    with torch.no_grad():
        each = model(pixels=x, face=torch.zeros(5, 4))[0].numpy()
    np.testing.assert_allclose(m.logits([tiled], tiles=5), each.mean(0, keepdims=True), atol=1e-5)
    np.testing.assert_allclose(m.logits([tiled], tiles=5, tile_agg="max"), each.max(0, keepdims=True), atol=1e-5)
    data = _jpeg(9, size=(900, 600))  # bytes: decoded straight at the tiling edge (JPEG draft mode)
    r = m.predict([data], tiles=5)[0]
    assert m.prepare(data, tiles=5).size == (324, 216)
    ref = m.probs(m.logits([m.prepare(data, tiles=5)], tiles=5))[0]
    assert r["probs"] == pytest.approx(dict(zip("abc", ref)), abs=1e-6)
