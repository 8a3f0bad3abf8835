"""The embedding cache's views: an item's embeddings depend on the item and the seed only."""
import io

import numpy as np
from PIL import Image

from train.augment import augment_kwargs
from train.cache import Embedder
from train.model import load_backbone, resolve_backbone


def _jpeg(seed, size=(120, 90)):
    a = np.random.default_rng(seed).integers(0, 256, (size[1] // 10, size[0] // 10, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(a).resize(size).save(buf, "JPEG")
    return buf.getvalue()


def test_views_do_not_depend_on_the_batch_an_item_lands_in(tmp_path):
    d = resolve_backbone("tiny", tmp_path)
    _, preproc = load_backbone(d)
    aug = augment_kwargs(0.5, 0.3, 0.2, hue=0.5, invert=0.5)
    emb = Embedder(d, preproc.to_dict(), views=3, faces=None, seed=7, aug=aug)
    ids = [f"item{i}" for i in range(5)]
    batch = {"id": np.array(ids), "image": np.array([_jpeg(i) for i in range(5)], dtype=object)}
    whole = emb(batch)["emb"]
    # the same items, reversed and cut into two batches
    parts = [emb({k: v[sl] for k, v in batch.items()}) for sl in (slice(4, 1, -1), slice(1, None, -1))]
    got = dict(zip([*ids[4:1:-1], *ids[1::-1]], np.concatenate([p["emb"] for p in parts])))
    assert whole.shape[:2] == (5, 3)
    for i, item in enumerate(ids):
        np.testing.assert_allclose(got[item], whole[i], rtol=1e-5, atol=1e-5)
    # the augmented views really differ from the centre view and from each other, and the seed matters
    assert not np.allclose(whole[:, 0], whole[:, 1]) and not np.allclose(whole[:, 1], whole[:, 2])
    other = Embedder(d, preproc.to_dict(), views=3, faces=None, seed=8, aug=aug)(batch)["emb"]
    np.testing.assert_allclose(other[:, 0], whole[:, 0], rtol=1e-5, atol=1e-5)
    assert not np.allclose(other[:, 1], whole[:, 1])


def test_onnx_embedder_gives_the_torch_embeddings_and_auto_measures_int8(tmp_path):
    import pytest

    from train.colour import ColourStats
    from train.runtime import RuntimeChoiceError
    from train.runtime.export import export_embedder
    from train.transforms import center_crop, decode, normalize, to_uint8_batch

    d = resolve_backbone("tiny", tmp_path)
    backbone, preproc = load_backbone(d)
    images = [_jpeg(i) for i in range(6)]
    sample = normalize(center_crop(to_uint8_batch([decode(b, preproc.size) for b in images]), preproc.crop), preproc)
    stats = ColourStats(preproc.mean, preproc.std)
    logs = []
    runtime, path, record = export_embedder(backbone.eval(), stats, sample, tmp_path / "g", "onnx", log=logs.append)
    assert runtime == "onnx" and path.name == "embed.onnx" and record["onnx"]["min_cosine"] > 0.99999
    aug = augment_kwargs(0.5, 0.3, 0.2, hue=0.5, invert=0.5)
    batch = {"id": np.array([f"i{i}" for i in range(6)]), "image": np.array(images, dtype=object)}
    ref = Embedder(d, preproc.to_dict(), views=2, faces=None, seed=1, aug=aug, stats=True)(batch)["emb"]
    got = Embedder(d, preproc.to_dict(), views=2, faces=None, seed=1, aug=aug, stats=True, graph=str(path))(batch)["emb"]
    np.testing.assert_allclose(got, ref, atol=1e-4)  # every view, colour statistics included
    # auto: INT8 only when its smallest cosine to torch reaches the bar
    chosen, p8, rec = export_embedder(backbone, stats, sample, tmp_path / "a", "auto", min_cosine=0.0, log=logs.append)
    assert chosen == "onnx-int8" and p8.name == "embed.int8.onnx" and rec["onnx-int8"]["n"] == 6
    chosen, p32, _ = export_embedder(backbone, stats, sample, tmp_path / "b", "auto", min_cosine=1.5, log=logs.append)
    assert chosen == "onnx" and p32.name == "embed.onnx"
    assert export_embedder(backbone, stats, sample, tmp_path / "c", "torch")[:2] == ("torch", None)
    with pytest.raises(RuntimeChoiceError):
        export_embedder(backbone, stats, sample, tmp_path / "d", "tensorrt")
    assert any("min cosine" in line for line in logs)


def test_embedding_here_writes_what_the_pool_would_in_id_order(tmp_path):
    """The in-process pass (small data): rows sorted by id, every column kept, ``emb`` read back as
    Ray Data reads it (B, V, D), the same numbers as the Embedder on the whole batch; threads put back."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    import torch
    from ray.data.block import BlockAccessor

    from train.cache import embed_here

    d = resolve_backbone("tiny", tmp_path)
    _, preproc = load_backbone(d)
    ids = [f"item{i}" for i in (3, 0, 4, 1, 2)]
    table = pa.table({"id": ids, "label": [0, 1, -1, 2, 0], "image": [_jpeg(i) for i in range(5)]})
    kw = dict(backbone_dir=d, preproc=preproc.to_dict(), views=2, faces=None, seed=3, aug=None)
    threads = torch.get_num_threads()
    embed_here(table, tmp_path / "cache", kw, batch_size=2)
    assert torch.get_num_threads() == threads
    assert [p.name for p in (tmp_path / "cache").iterdir()] == ["00000.parquet"]
    got = BlockAccessor.for_block(pq.read_table(tmp_path / "cache" / "00000.parquet")).to_batch_format("numpy")
    assert list(got["id"]) == sorted(ids) and list(got["label"]) == [1, 2, 0, 0, -1]
    assert got["emb"].shape[:2] == (5, 2) and got["face"].shape == (5, 0)
    order = np.argsort(ids)
    want = Embedder(**kw)({"id": np.array(ids)[order], "image": np.array(table["image"].to_pylist(), dtype=object)[order]})
    np.testing.assert_allclose(got["emb"], want["emb"], rtol=1e-5, atol=1e-5)
