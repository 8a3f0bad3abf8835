"""Zero-shot classes from text prompts, with a CLIP checkpoint that has a text tower.

CLIP embeds images and texts in one space (Radford et al. 2021): the class whose prompt embedding is
closest (cosine, times CLIP's learned ``logit_scale``) to the image embedding is the zero-shot guess.
sift uses it twice:

* ``sift classify --prompts "BAD=a clickbait thumbnail" "GOOD=a calm photo" --model CLIP`` gives a
  user with no labels a first filter (:class:`ZeroShot`);
* ``zero_shot_prompts={…}`` at training seeds the head: the prompt embeddings (C, D) become a fixed
  buffer of the head, whose logits are ``MLP(x) + scale * z @ prompts.T``; the MLP's last layer
  starts at zero, so training starts from the zero-shot classifier and learns a correction. The
  artifact carries the embeddings: serving needs no text tower.

The guesses are only as good as the weights: a random CLIP (``backbone=tiny-clip``, for tests) has
the code path and none of the knowledge; use real weights (``openai/clip-vit-base-patch32`` or a
local copy) for a filter worth having.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from flows.core.config import ConfigError


def has_text_tower(model: str) -> bool:
    """Whether ``model`` (a local dir or an HF id, as ``from_pretrained`` takes it) is a full CLIP
    (text + vision), not a vision tower alone. False when its config cannot be read."""
    cfg = Path(model) / "config.json"
    if cfg.exists():
        meta = json.loads(cfg.read_text())
        return meta.get("model_type") == "clip" and "text_config" in meta
    try:
        from transformers import AutoConfig

        return AutoConfig.from_pretrained(model).model_type == "clip"
    except Exception:  # no such id, no network, no cache: not usable here either way
        return False


def parse_prompts(pairs: list[str]) -> dict[str, str]:
    """``["BAD=a clickbait thumbnail", …]`` -> {class: prompt}; ConfigError for a malformed pair."""
    out = {}
    for pair in pairs:
        name, sep, text = pair.partition("=")
        if not sep or not name.strip() or not text.strip():
            raise ConfigError(f"--prompts: {pair!r} is not CLASS=prompt text")
        if name.strip() in out:
            raise ConfigError(f"--prompts: class {name.strip()!r} given twice")
        out[name.strip()] = text.strip()
    if len(out) < 2:
        raise ConfigError("--prompts: name at least two classes, e.g. \"BAD=a clickbait thumbnail\" \"GOOD=a calm photo\"")
    return out


def class_prompts(classes: list[str], prompts: dict[str, str]) -> list[str]:
    """One prompt per class, in class order: the user's, or "a photo of <class>" where none is given."""
    return [prompts.get(c, f"a photo of {c}") for c in classes]


def _features(out) -> torch.Tensor:
    """get_text_features / get_image_features: a tensor (transformers 4) or an output whose
    ``pooler_output`` holds the projected embedding (transformers 5)."""
    return out if isinstance(out, torch.Tensor) else out.pooler_output


@torch.no_grad()
def prompt_embeddings(model_dir: str, texts: list[str]) -> tuple[torch.Tensor, float]:
    """(L2-normalised text embeddings (C, D), CLIP's logit scale exp(t)) of ``texts``."""
    from transformers import AutoTokenizer, CLIPModel

    model = CLIPModel.from_pretrained(model_dir).eval()
    tok = AutoTokenizer.from_pretrained(model_dir)
    enc = tok(texts, padding=True, truncation=True, max_length=model.config.text_config.max_position_embeddings,
              return_tensors="pt")
    z = F.normalize(_features(model.get_text_features(**enc)), dim=-1)
    return z.float(), float(model.logit_scale.exp())


class ZeroShot:
    """Images -> {label, probs} from prompts alone (``sift classify --prompts``)."""

    def __init__(self, model_dir: str, prompts: dict[str, str]):
        from transformers import CLIPImageProcessor, CLIPModel

        if not has_text_tower(model_dir):
            raise ConfigError(f"--prompts needs a CLIP checkpoint with a text tower; {model_dir} has none "
                              "(an HF id such as openai/clip-vit-base-patch32 downloaded to a local dir, or "
                              "tiny-clip for a test)")
        self.classes = list(prompts)
        self.model = CLIPModel.from_pretrained(model_dir).eval()
        self.processor = CLIPImageProcessor.from_pretrained(model_dir)
        self.text, self.scale = prompt_embeddings(model_dir, class_prompts(self.classes, prompts))

    @torch.no_grad()
    def probs(self, images: list) -> np.ndarray:
        """RGB PIL images -> (N, C) softmax(scale * cos(image, prompt))."""
        x = self.processor(images=images, return_tensors="pt")["pixel_values"]
        z = F.normalize(_features(self.model.get_image_features(pixel_values=x)), dim=-1)
        return torch.softmax(self.scale * z @ self.text.T, dim=-1).numpy().astype(np.float64)

    def predict(self, images: list) -> list[dict]:
        p = self.probs(images)
        return [{"label": self.classes[int(k)], "probs": dict(zip(self.classes, map(float, row))),
                 "zero_shot": True} for k, row in zip(p.argmax(axis=1), p)]


def build_tiny_clip(out: Path, vision_config: dict, seed: int = 0) -> None:
    """A random tiny CLIP with a text tower and a small BPE tokenizer trained here, saved with
    ``save_pretrained`` (the test stand-in for a real checkpoint: same loading path, no knowledge)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors, trainers
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, PreTrainedTokenizerFast

    from .transforms import CLIP_MEAN, CLIP_STD

    bos, eos = "<|startoftext|>", "<|endoftext|>"
    tok = Tokenizer(models.BPE(unk_token=eos))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    corpus = ["a photo of a", "a clickbait thumbnail", "a calm photo of nature", "an indoor room", "an outdoor scene",
              "abcdefghijklmnopqrstuvwxyz ABCDEFGHIJKLMNOPQRSTUVWXYZ 0123456789 _-"]
    tok.train_from_iterator(corpus, trainers.BpeTrainer(vocab_size=256, special_tokens=[bos, eos]))
    ids = {t: tok.token_to_id(t) for t in (bos, eos)}
    tok.post_processor = processors.TemplateProcessing(single=f"{bos} $A {eos}", special_tokens=list(ids.items()))
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=bos, eos_token=eos, pad_token=eos, unk_token=eos)
    text = {"vocab_size": tok.get_vocab_size(), "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1,
            "num_attention_heads": 2, "max_position_embeddings": 32, "bos_token_id": ids[bos],
            "eos_token_id": ids[eos], "pad_token_id": ids[eos]}
    torch.manual_seed(seed)
    model = CLIPModel(CLIPConfig(text_config=text, vision_config=vision_config,
                                 projection_dim=vision_config["projection_dim"]))
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    fast.save_pretrained(out)
    side = vision_config["image_size"]
    CLIPImageProcessor(size={"shortest_edge": side}, crop_size={"height": side, "width": side},
                       image_mean=list(CLIP_MEAN), image_std=list(CLIP_STD)).save_pretrained(out)
