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
