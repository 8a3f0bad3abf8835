"""The classifier: a vision backbone -> [embedding ; face features] -> residual MLP head.

    pixels (B,3,S,S) --backbone (CLIP/SigLIP/DINOv2 ViT or a CNN, train/backbones.py)--> (B,D) --L2 norm--> z
                     \\-colour statistics (optional, train/colour.py)--> (B,K), appended to z
    [z ; face (B,F)] --BatchNorm--Linear(D+F, H), GELU--> h --+ residual MLP(H)--> LayerNorm --> logits (B,C)
                                                                                  \\-> score (B,1), tanh (optional)

CLIP embeddings are L2-normalised because that is the space CLIP was trained in (Radford et al.
2021): their norm carries no class information and varies with the image.
"""
from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from . import backbones
from .transforms import Preproc

def resolve_backbone(spec: str, cache_dir: Path, image_size: int = 0) -> str:
    """A backbone spec -> what :func:`load_backbone` reads (``train.backbones.resolve``)."""
    return backbones.resolve(spec, cache_dir, image_size=image_size)


def load_backbone(path_or_id: str) -> tuple[backbones.Backbone, Preproc]:
    """A resolved backbone -> (Backbone: pixels (B,3,S,S) -> features (B,D), its Preproc)."""
    return backbones.load(path_or_id)


def embed(backbone: nn.Module, pixels: torch.Tensor, stats: nn.Module | None = None) -> torch.Tensor:
    """pixels (B,3,S,S) normalised -> [L2-normalised backbone features (B, D) ; stats(pixels) (B, K)].

    The one embedding function: the embedding cache, training and serving all call it. Only the
    backbone part is normalised: the statistics keep their own scale (the head standardises both).
    """
    z = F.normalize(backbone(pixels), dim=-1)
    return z if stats is None else torch.cat([z, stats(pixels).to(z.dtype)], dim=-1)


def embed_dim(backbone: nn.Module, stats: nn.Module | None = None) -> int:
    """D (+ K with the statistics branch): the width of :func:`embed`'s output."""
    return int(backbone.dim) + (int(stats.dim) if stats is not None else 0)


class HeadOutput(NamedTuple):
    """What the head returns: logits (B, C) over the classes (one softmax), score (B,) in (0, 1) or
    None, tags (B, T) independent sigmoid logits of the multi-label tags or None."""
    logits: torch.Tensor
    score: torch.Tensor | None
    tags: torch.Tensor | None


class Head(nn.Module):
    def __init__(self, in_dim: int, hidden: int, n_classes: int, dropout: float = 0.1, score_head: bool = False,
                 n_tags: int = 0, prompts: torch.Tensor | None = None, prompt_scale: float = 1.0):
        """``prompts`` (C, D): L2-normalised prompt embeddings of the classes (zero-shot seeding):
        the logits get ``prompt_scale * x[:, :D] @ prompts.T`` (x's first D features are the
        normalised image embedding), a fixed buffer, and the last layer starts at zero."""
        super().__init__()
        # Standardise each input feature with batch statistics (running ones at eval): CLIP
        # embeddings share a large common direction (mean cosine ~0.8 between unrelated images
        # for a random tower) and face features live on other scales; without this the class
        # signal sits in a tiny, badly conditioned subspace. Its running stats are buffers, which
        # the EMA teacher averages too.
        self.norm_in = nn.BatchNorm1d(in_dim)
        self.proj = nn.Sequential(nn.Linear(in_dim, hidden), nn.GELU())
        self.block = nn.Sequential(nn.LayerNorm(hidden), nn.Linear(hidden, hidden), nn.GELU(),
                                   nn.Dropout(dropout), nn.Linear(hidden, hidden))
        self.norm = nn.LayerNorm(hidden)
        self.drop = nn.Dropout(dropout)
        self.out = nn.Linear(hidden, n_classes)
        self.score = nn.Linear(hidden, 1) if score_head else None
        self.tags = nn.Linear(hidden, n_tags) if n_tags else None
        self.prompt_scale = float(prompt_scale)
        if prompts is not None:
            self.register_buffer("prompts", prompts.detach().float().clone())
            nn.init.zeros_(self.out.weight)  # start from the zero-shot classifier, learn a correction
            nn.init.zeros_(self.out.bias)
        else:
            self.prompts = None

    def forward(self, x: torch.Tensor) -> HeadOutput:
        """x (B, D+F) -> HeadOutput(logits (B, C), score (B,) in (0, 1) or None, tag logits (B, T) or None).

        The score is the regression target rescaled to [0, 1] by the training data's range (the
        artifact's ``score_range`` maps it back to the user's units).
        """
        h = self.proj(self.norm_in(x))
        h = self.norm(h + self.block(h))
        h = self.drop(h)
        score = torch.sigmoid(self.score(h)).squeeze(-1) if self.score is not None else None
        logits = self.out(h)
        if self.prompts is not None:
            logits = logits + self.prompt_scale * x[:, :self.prompts.shape[1]] @ self.prompts.T
        return HeadOutput(logits, score, self.tags(h) if self.tags is not None else None)


class Classifier(nn.Module):
    def __init__(self, backbone: nn.Module, n_classes: int, n_face: int, hidden: int = 1024,
                 dropout: float = 0.1, score_head: bool = False, n_tags: int = 0,
                 prompts: torch.Tensor | None = None, prompt_scale: float = 1.0,
                 stats: nn.Module | None = None):
        """``stats``: an optional parameter-free branch (``train.colour.ColourStats``) whose
        features (B, K) follow the L2-normalised backbone embedding in ``embed``."""
        super().__init__()
        self.backbone = backbone
        self.stats = stats
        self.embed_dim = embed_dim(backbone, stats)
        self.n_face = n_face
        self.head = Head(self.embed_dim + n_face, hidden, n_classes, dropout, score_head, n_tags, prompts,
                         prompt_scale)

    def embed(self, pixels: torch.Tensor) -> torch.Tensor:
        """pixels (B,3,S,S) float -> embedding (B, D[+K]) (:func:`embed`)."""
        return embed(self.backbone, pixels, self.stats)

    def head_input(self, z: torch.Tensor, face: torch.Tensor | None) -> torch.Tensor:
        """Embedding (B,D) + face features (B,F) -> the head's input (B, D+F)."""
        return z if self.n_face == 0 else torch.cat([z, face.to(z.dtype)], dim=-1)

    def from_embedding(self, z: torch.Tensor, face: torch.Tensor | None):
        """Cached embedding (B,D) + face features (B,F) -> HeadOutput. Head only."""
        return self.head(self.head_input(z, face))

    def forward(self, pixels: torch.Tensor | None = None, face: torch.Tensor | None = None,
                z: torch.Tensor | None = None):
        """Either ``pixels`` (B,3,S,S) or a cached embedding ``z`` (B,D); one entry point so that
        DistributedDataParallel sees every call (it syncs gradients only through forward)."""
        return self.from_embedding(self.embed(pixels) if z is None else z, face)


def set_trainable(model: Classifier, unfreeze_last: int) -> list[nn.Parameter]:
    """Freeze the backbone except its last ``unfreeze_last`` blocks (+ what follows them: final norm,
    projection); ``unfreeze_last`` >= the number of blocks trains the whole backbone.

    Returns the backbone parameters left trainable (for a separate, lower learning rate): the
    later blocks hold the most task-specific features, so they adapt first (Howard & Ruder 2018).
    """
    bb = model.backbone
    for p in bb.parameters():
        p.requires_grad_(False)
    if unfreeze_last <= 0:
        return []
    blocks = bb.blocks()
    parts = blocks[-unfreeze_last:] + bb.tail()
    if unfreeze_last >= len(blocks):
        parts = [bb]  # everything, stem and embeddings included
    params = list({id(p): p for part in parts for p in part.parameters()}.values())
    for p in params:
        p.requires_grad_(True)
    return params
