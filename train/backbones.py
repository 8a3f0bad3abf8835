"""Image backbones behind one interface: pixels (B, 3, S, S) -> features (B, D).

    backbone=openai/clip-vit-base-patch32    an HF CLIP checkpoint (id or local dir): image_embeds
    backbone=google/siglip-base-patch16-224  an HF SigLIP checkpoint: the vision tower's pooled output
    backbone=facebook/dinov2-small           an HF DINOv2 checkpoint: the CLS token (pooled output)
    backbone=torchvision:resnet18            a torchvision CNN (resnet18/34/50, mobilenet_v3_small/large,
                                             efficientnet_b0): global-pooled features before the classifier
    backbone=tiny | tiny-clip | small-vit | random-vit-b32 | tiny-siglip | tiny-dinov2
                                             random-init HF towers built from configs in the repo
                                             (small-vit: 4 blocks at 128 px, trainable end to end on a CPU)

HF checkpoints load with ``from_pretrained`` (by id, or a local dir when offline); their input size
and normalisation come from the checkpoint's image-processor config. A torchvision CNN takes the
ImageNet weights when they are at hand (torch's hub cache, or ``torchvision:resnet18=/path/weights.pth``)
and starts from random weights otherwise, to be trained end to end; its input side is ``image_size``
(default 224). Either way :func:`resolve` turns the spec into a local directory that
:func:`load` reads, and the artifact stores the (fine-tuned) backbone in the same format, so
training, the embedding cache, serving and ``sift export`` load it through one path.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import torch
import torch.nn as nn

from flows.core.errors import SiftError

from .transforms import CLIP_MEAN, CLIP_STD, Preproc

CONFIG_DIR = Path(__file__).parent / "configs"
SIFT_JSON = "sift_backbone.json"  # marks a torchvision backbone directory
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
TORCHVISION = ("resnet18", "resnet34", "resnet50", "mobilenet_v3_small", "mobilenet_v3_large", "efficientnet_b0")
# random-init HF towers: (model_type, config file); tiny-clip has a (random) text tower for zero-shot
BUILTIN = {"tiny": ("clip", CONFIG_DIR / "tiny_clip.json"), "tiny-clip": ("clip-text", CONFIG_DIR / "tiny_clip.json"),
           "random-vit-b32": ("clip", None), "small-vit": ("clip", CONFIG_DIR / "small_vit.json"), "tiny-siglip": ("siglip", CONFIG_DIR / "tiny_siglip.json"),
           "tiny-dinov2": ("dinov2", CONFIG_DIR / "tiny_dinov2.json")}


class BackboneError(SiftError, ValueError):
    """A backbone spec that cannot be resolved or loaded; the message says which and why."""

    reason = "bad_backbone"


def parse_spec(spec: str) -> tuple[str, str, str]:
    """``torchvision:NAME[=WEIGHTS]`` -> ("torchvision", NAME, WEIGHTS); a builtin -> ("builtin", name, "");
    anything else is an HF id or local dir -> ("hf", spec, "")."""
    spec = spec.strip()
    if spec.startswith("torchvision:"):
        name, _, weights = spec[len("torchvision:"):].partition("=")
        if name not in TORCHVISION:
            raise BackboneError(f"backbone={spec!r}: torchvision backbones are {list(TORCHVISION)}")
        return "torchvision", name, weights
    if spec in BUILTIN:
        return "builtin", spec, ""
    return "hf", spec, ""


def resolve(spec: str, cache_dir: Path, image_size: int = 0, seed: int = 0) -> str:
    """A spec -> what :func:`load` reads: an HF id or local dir as given; a builtin or torchvision
    backbone -> a local dir under ``cache_dir/backbones`` (built once; concurrent builders race safely)."""
    kind, name, weights = parse_spec(spec)
    if kind == "hf":
        return spec
    if kind == "builtin":
        out = Path(cache_dir) / "backbones" / name
        if not (out / "config.json").exists():
            _atomic(out, lambda tmp: _build_random_hf(name, tmp, seed))
        return str(out)
    size = image_size or 224
    # a stable name per weights file (str hash() changes per process: it would rebuild every run)
    tag = f"{name}-{size}" + (f"-{hashlib.sha256(weights.encode()).hexdigest()[:8]}" if weights else "")
    out = Path(cache_dir) / "backbones" / f"torchvision-{tag}"
    if not (out / SIFT_JSON).exists():
        _atomic(out, lambda tmp: _build_torchvision(name, weights, size, tmp, seed))
    return str(out)


def _atomic(out: Path, build) -> None:
    tmp = out.with_name(f"{out.name}.tmp{os.getpid()}")  # each builder writes its own, then renames
    shutil.rmtree(tmp, ignore_errors=True)
    build(tmp)
    try:
        tmp.rename(out)
    except OSError:  # another process finished first: same seed, same weights
        shutil.rmtree(tmp, ignore_errors=True)


def _build_random_hf(name: str, out: Path, seed: int) -> None:
    """A random-init HF vision tower + its image-processor config, written like any checkpoint."""
    import transformers as tf

    kind, cfg_path = BUILTIN[name]
    cfg = json.loads(cfg_path.read_text()) if cfg_path else {}
    torch.manual_seed(seed)
    if kind == "clip-text":
        from .zeroshot import build_tiny_clip

        build_tiny_clip(out, cfg, seed)
        return
    if kind == "clip":
        config = tf.CLIPVisionConfig(**cfg)
        tf.CLIPVisionModelWithProjection(config).save_pretrained(out)
        mean, std = CLIP_MEAN, CLIP_STD
    elif kind == "siglip":
        config = tf.SiglipVisionConfig(**cfg)
        tf.SiglipVisionModel(config).save_pretrained(out)
        mean, std = (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)
    else:
        config = tf.Dinov2Config(**cfg)
        tf.Dinov2Model(config).save_pretrained(out)
        mean, std = IMAGENET_MEAN, IMAGENET_STD
    side = config.image_size
    tf.CLIPImageProcessor(size={"shortest_edge": side}, crop_size={"height": side, "width": side},
                          image_mean=list(mean), image_std=list(std)).save_pretrained(out)


def _torchvision_net(name: str) -> nn.Module:
    import torchvision

    return getattr(torchvision.models, name)(weights=None)


def _pretrained_file(name: str, weights: str) -> Path | None:
    """The ImageNet weights of ``name`` when they are on this machine (never downloaded here)."""
    if weights:
        p = Path(weights).expanduser()
        if not p.is_file():
            raise BackboneError(f"backbone=torchvision:{name}={weights}: no such weights file")
        return p
    import torchvision

    try:
        url = torchvision.models.get_model_weights(name).DEFAULT.url
    except (ValueError, AttributeError):
        return None
    p = Path(torch.hub.get_dir()) / "checkpoints" / url.rsplit("/", 1)[-1]
    return p if p.is_file() else None


def _build_torchvision(name: str, weights: str, size: int, out: Path, seed: int) -> None:
    torch.manual_seed(seed)
    net = _torchvision_net(name)
    src = _pretrained_file(name, weights)
    if src is not None:
        net.load_state_dict(torch.load(src, map_location="cpu", weights_only=True))
    else:
        print(f"[backbone] torchvision:{name}: no pretrained weights on this machine; starting from random "
              "weights (train it end to end: frozen_steps >= 0, unfreeze_last > 0)", flush=True)
        _settle_batchnorm(net, size)
    _strip_classifier(net)  # stored without the ImageNet classifier: load() builds the same shape
    out.mkdir(parents=True)
    torch.save(net.state_dict(), out / "weights.pt")
    (out / SIFT_JSON).write_text(json.dumps({"kind": "torchvision", "arch": name, "image_size": size,
                                             "pretrained": str(src) if src else None,
                                             "mean": IMAGENET_MEAN, "std": IMAGENET_STD}, indent=1))


def _settle_batchnorm(net: nn.Module, size: int, batches: int = 4, seed: int = 0) -> None:
    """Give a random-init CNN's BatchNorm layers running statistics of real activations.

    Why: their defaults (mean 0, var 1) do not match what a random network produces, and in eval
    mode a deep one (MobileNetV3: ~1e-9 at the output) then maps every image to almost the same
    vector: the embedding cache of the frozen warm-up would hold no signal. A few train-mode passes
    over smooth random images (cumulative averages) fix the scale; training refines them.
    """
    g = torch.Generator().manual_seed(seed)
    bns = [m for m in net.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over the passes
    net.train()
    with torch.no_grad():
        for _ in range(batches):
            low = torch.rand(16, 3, max(2, size // 16), max(2, size // 16), generator=g)
            x = nn.functional.interpolate(low, size=(size, size), mode="bilinear", align_corners=False)
            net((x - 0.45) / 0.225)  # roughly ImageNet-normalised pixels
    for m in bns:
        m.momentum = 0.1
    net.eval()


class Backbone(nn.Module):
    """pixels (B, 3, S, S) float, normalised -> features (B, D). ``net`` is the wrapped model.

    ``blocks()`` lists its stages from input to output and ``tail()`` what follows the last one
    (final norm, projection), so ``train.model.set_trainable`` unfreezes the last K of any backbone.
    """

    def __init__(self, kind: str, net: nn.Module, dim: int, info: dict):
        super().__init__()
        self.kind, self.net, self.dim, self.info = kind, net, int(dim), dict(info)

    def train(self, mode: bool = True) -> "Backbone":
        """Train mode, except that BatchNorm layers keep their running statistics (frozen BN, as
        detection fine-tuning does): batches of 32 on 2 CPUs estimate them badly, the head was warmed
        up on features computed with them, and serving uses them, so training sees what serving sees."""
        super().train(mode)
        for m in self.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.eval()
        return self

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        if self.kind == "clip":
            return self.net(pixel_values=pixels).image_embeds
        if self.kind in ("siglip", "dinov2", "hf"):
            out = self.net(pixel_values=pixels)
            pooled = getattr(out, "pooler_output", None)
            return pooled if pooled is not None else out.last_hidden_state.mean(dim=1)
        return self.net(pixels)  # torchvision: the classifier is an Identity, so these are pooled features

    def blocks(self) -> list[nn.Module]:
        n = self.net
        if self.kind == "clip":
            return list(n.vision_model.encoder.layers)
        if self.kind == "siglip":  # the tower may or may not sit under .vision_model (transformers versions)
            return list(getattr(n, "vision_model", n).encoder.layers)
        if self.kind == "dinov2":
            return list(n.encoder.layer)
        if self.kind == "torchvision" and hasattr(n, "layer4"):  # resnets: stem, then four stages
            return [nn.ModuleList([n.conv1, n.bn1]), n.layer1, n.layer2, n.layer3, n.layer4]
        if self.kind == "torchvision":  # mobilenet / efficientnet: the feature blocks
            return list(n.features)
        return []

    def tail(self) -> list[nn.Module]:
        n = self.net
        if self.kind == "clip":
            return [n.vision_model.post_layernorm, n.visual_projection]
        if self.kind == "siglip":
            vm = getattr(n, "vision_model", n)
            return [m for m in (vm.post_layernorm, getattr(vm, "head", None)) if m is not None]
        if self.kind == "dinov2":
            return [n.layernorm]
        if self.kind == "torchvision" and hasattr(n, "classifier"):
            return [n.classifier]  # mobilenet's pre-logit Linear + activation (its last Linear is gone)
        return []

    def save(self, out: Path) -> None:
        """Write this backbone so :func:`load` reads it back (HF: ``save_pretrained``)."""
        out = Path(out)
        if self.kind == "torchvision":
            out.mkdir(parents=True, exist_ok=True)
            torch.save(self.net.state_dict(), out / "weights.pt")
            (out / SIFT_JSON).write_text(json.dumps(self.info, indent=1))
        else:
            self.net.save_pretrained(out)
            proc = self.info.get("processor")
            if proc:
                (out / "preprocessor_config.json").write_text(json.dumps(proc, indent=1))

    def config_dict(self) -> dict:
        """What the artifact records about the backbone (kind, architecture, input side)."""
        if self.kind == "torchvision":
            return dict(self.info)
        return {"kind": self.kind, **self.net.config.to_dict()}


def _hf_preproc(path_or_id: str, native: int, mean, std) -> tuple[Preproc, dict | None]:
    """The checkpoint's image-processor config (crop side, mean, std), else the model's defaults."""
    from transformers import AutoImageProcessor

    crop, proc_dict = native, None
    try:
        proc = AutoImageProcessor.from_pretrained(path_or_id)
        size = getattr(proc, "crop_size", None) or getattr(proc, "size", None) or {}
        crop = int(size.get("height") or size.get("shortest_edge") or native)
        mean, std = tuple(proc.image_mean), tuple(proc.image_std)
        proc_dict = proc.to_dict()
    except (OSError, ValueError, KeyError, TypeError):
        pass  # no processor config: the model's native size and the family's normalisation
    # the uint8 stage keeps a 1/8 margin around the crop for augmentation
    return Preproc(size=crop + crop // 8, crop=crop, mean=tuple(mean), std=tuple(std)), proc_dict


def load(path_or_id: str) -> tuple[Backbone, Preproc]:
    """A resolved backbone (local dir or HF id) -> (Backbone, its Preproc). BackboneError when it is
    neither a sift torchvision dir nor an HF vision checkpoint."""
    p = Path(path_or_id)
    if (p / SIFT_JSON).is_file():
        info = json.loads((p / SIFT_JSON).read_text())
        net = _torchvision_net(info["arch"])
        dim = _strip_classifier(net)
        net.load_state_dict(torch.load(p / "weights.pt", map_location="cpu", weights_only=True))
        crop = int(info["image_size"])
        return (Backbone("torchvision", net, dim, info),
                Preproc(size=crop + crop // 8, crop=crop, mean=tuple(info["mean"]), std=tuple(info["std"])))
    import transformers as tf

    try:
        config = tf.AutoConfig.from_pretrained(path_or_id)
    except (OSError, ValueError) as exc:
        raise BackboneError(f"backbone {path_or_id!r}: not an HF checkpoint or a sift backbone dir ({exc})") from None
    mtype = config.model_type
    if mtype in ("clip", "clip_vision_model"):
        net = tf.CLIPVisionModelWithProjection.from_pretrained(path_or_id)
        kind, dim, mean, std = "clip", net.config.projection_dim, CLIP_MEAN, CLIP_STD
    elif mtype in ("siglip", "siglip_vision_model", "siglip2", "siglip2_vision_model"):
        cls = tf.Siglip2VisionModel if mtype.startswith("siglip2") else tf.SiglipVisionModel
        net = cls.from_pretrained(path_or_id)
        kind, dim, mean, std = "siglip", net.config.hidden_size, (0.5,) * 3, (0.5,) * 3
    elif mtype == "dinov2":
        net = tf.Dinov2Model.from_pretrained(path_or_id)
        kind, dim, mean, std = "dinov2", net.config.hidden_size, IMAGENET_MEAN, IMAGENET_STD
    else:
        try:
            net = tf.AutoModel.from_pretrained(path_or_id)
        except (OSError, ValueError) as exc:
            raise BackboneError(f"backbone {path_or_id!r} ({mtype}): cannot load it as a vision model ({exc})") from None
        kind, dim, mean, std = "hf", net.config.hidden_size, IMAGENET_MEAN, IMAGENET_STD
    vision_cfg = getattr(net.config, "vision_config", net.config)
    preproc, proc = _hf_preproc(path_or_id, int(vision_cfg.image_size), mean, std)
    return Backbone(kind, net, dim, {"processor": proc} if proc else {}), preproc


def _strip_classifier(net: nn.Module) -> int:
    """Replace a torchvision net's last Linear by an Identity; returns the feature width it took."""
    if hasattr(net, "fc"):
        dim = net.fc.in_features
        net.fc = nn.Identity()
        return dim
    head = net.classifier
    last = max(i for i, m in enumerate(head) if isinstance(m, nn.Linear))
    dim = head[last].in_features
    head[last] = nn.Identity()
    return dim


__all__ = ["Backbone", "BackboneError", "BUILTIN", "TORCHVISION", "load", "parse_spec", "resolve"]
