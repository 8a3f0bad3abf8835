"""Zero-shot from prompts with a tiny random CLIP that has a text tower (the code path only: random
weights know nothing, so the tests check shapes, invariants and the seeded head, not accuracy)."""
import json

import numpy as np
import pytest
import torch
from PIL import Image

from flows.core.config import ConfigError
from train.model import Classifier, load_backbone, resolve_backbone
from train.zeroshot import ZeroShot, class_prompts, has_text_tower, parse_prompts, prompt_embeddings


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory):
    return resolve_backbone("tiny-clip", tmp_path_factory.mktemp("zs"))


def _img(seed):
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (48, 64, 3), dtype=np.uint8))


def test_prompts_parse_and_default_per_class():
    assert parse_prompts(["BAD=a clickbait thumbnail", "GOOD = a calm photo"]) == {
        "BAD": "a clickbait thumbnail", "GOOD": "a calm photo"}
    for bad in (["BAD"], ["BAD=x", "BAD=y"], ["=x", "B=y"], ["A=x"]):
        with pytest.raises(ConfigError):
            parse_prompts(bad)
    assert class_prompts(["a", "b"], {"b": "a dog"}) == ["a photo of a", "a dog"]


def test_zero_shot_classifies_by_cosine_to_the_prompts(clip_dir, tmp_path):
    assert has_text_tower(clip_dir) and not has_text_tower(resolve_backbone("tiny", tmp_path))
    zs = ZeroShot(clip_dir, {"indoor": "an indoor room", "outdoor": "an outdoor scene", "nature": "a calm photo"})
    res = zs.predict([_img(1), _img(2)])
    assert [set(r["probs"]) for r in res] == [{"indoor", "outdoor", "nature"}] * 2
    for r in res:
        assert abs(sum(r["probs"].values()) - 1) < 1e-6 and r["label"] == max(r["probs"], key=r["probs"].get)
    emb, scale = prompt_embeddings(clip_dir, ["an indoor room", "an outdoor scene"])
    assert emb.shape == (2, 64) and torch.allclose(emb.norm(dim=-1), torch.ones(2), atol=1e-5) and scale > 0
    with pytest.raises(ConfigError, match="text tower"):
        ZeroShot(resolve_backbone("tiny", tmp_path), {"a": "x", "b": "y"})


def test_a_seeded_head_starts_as_the_zero_shot_classifier(clip_dir):
    emb, scale = prompt_embeddings(clip_dir, ["an indoor room", "an outdoor scene"])
    backbone, preproc = load_backbone(clip_dir)
    model = Classifier(backbone, 2, 0, hidden=16, prompts=emb, prompt_scale=scale).eval()
    z = torch.nn.functional.normalize(torch.randn(5, 64), dim=-1)
    logits = model(z=z, face=torch.zeros(5, 0)).logits
    assert torch.allclose(logits, scale * z @ emb.T, atol=1e-5)  # the MLP's last layer starts at zero
    assert "prompts" in model.head.state_dict()  # the artifact carries the embeddings


def test_sift_classify_prompts_locally(clip_dir, tmp_path, capsys):
    from serve.client import classify_main

    for i in range(2):
        _img(i).save(tmp_path / f"{i}.jpg")
    assert classify_main(["--prompts", "BAD=a clickbait thumbnail", "GOOD=a calm photo", str(tmp_path),
                          "--model", clip_dir, "--json"]) == 0
    rows = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert len(rows) == 2 and all(set(r["probs"]) == {"BAD", "GOOD"} and r["zero_shot"] for r in rows)
    with pytest.raises(ConfigError, match="--model CLIP"):
        classify_main(["--prompts", "A=x", "B=y", str(tmp_path)])
