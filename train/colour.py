"""Global colour and edge statistics of an image: a parameter-free feature branch beside the backbone.

    pixels (B,3,S,S), normalised --undo the backbone's normalisation--> rgb in [0, 1]
        --> [joint RGB histogram (64) ; saturation (8), value (8) and saturation-weighted hue (12)
             histograms ; saturation / value / chroma moments (5) ; edge density and mean gradient (2) ;
             edge density (9) and mean saturation (9) on a 3x3 grid]  (B, 117)

Why: a backbone trained from scratch on a few hundred labels (the offline presets) is slow to find
the global cues that separate many label sets (how saturated, how busy, how dark, where the colour
sits), while a linear model on these very statistics finds them at once. With them beside the
embedding, the head starts at least where such a model would, and a pretrained backbone loses
nothing: the head's input BatchNorm puts every feature on one scale, and weights it learns to ignore
cost 117 inputs. The statistics are computed on the view the backbone sees, augmented views
included, so the embedding cache, fine-tuning and serving compute the same numbers in one place.
"""
from __future__ import annotations

import torch
import torch.nn as nn

DIM = 117
EDGE = 24 / 255  # a grey-level step this large between neighbours is an edge


class ColourStats(nn.Module):
    """pixels (B, 3, S, S) normalised with (mean, std) -> (B, DIM) float32 statistics, each in [0, 1].

    No parameters and no gradient: the statistics are features, not something to learn through.
    """

    dim = DIM

    def __init__(self, mean, std):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)

    @torch.no_grad()
    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        rgb = (pixels.float() * self.std + self.mean).clamp(0, 1)
        n = rgb.shape[2] * rgb.shape[3]
        mx, mn = rgb.max(dim=1).values, rgb.min(dim=1).values  # (B, S, S)
        chroma = mx - mn
        sat = torch.where(mx > 0, chroma / mx.clamp_min(1e-6), torch.zeros_like(mx))
        q = (rgb * 4).long().clamp(max=3)  # 4 levels per channel
        joint = _counts(q[:, 0] * 16 + q[:, 1] * 4 + q[:, 2], 64) / n
        hist = [_counts((x * k).long().clamp(max=k - 1), k) / n for x, k in ((sat, 8), (mx, 8))]
        hue = _counts((hue_of(rgb, mx, chroma) * 12).long().clamp(max=11), 12, weights=sat) / n
        grey = rgb.mean(dim=1)
        dx, dy = grey[:, 1:, :-1] - grey[:, :-1, :-1], grey[:, :-1, 1:] - grey[:, :-1, :-1]
        grad = torch.sqrt(dx * dx + dy * dy)  # not torch.hypot: ONNX has no such op (the export needs this)
        edges = (grad > EDGE).float()
        moments = torch.stack([sat.mean((1, 2)), sat.std((1, 2)), mx.mean((1, 2)), mx.std((1, 2)),
                               chroma.mean((1, 2)), edges.mean((1, 2)), grad.mean((1, 2))], dim=1)
        grids = [grid_means(x, 3) for x in (edges, sat)]
        return torch.cat([joint, *hist, hue, moments, *grids], dim=1)


def grid_means(x: torch.Tensor, k: int) -> torch.Tensor:
    """x (B, H, W) -> (B, k*k) means over a k x k grid of cells, row-major: exactly
    ``F.adaptive_avg_pool2d(x[:, None], k)`` (cell i spans floor(i H / k) .. ceil((i+1) H / k)), written
    with static slices because ONNX's export has no adaptive pooling when k does not divide H."""
    H, W = x.shape[-2:]
    # ceil as (a + k - 1) // k, not -(-a // k): traced for ONNX, integer division truncates towards zero
    rows = [(i * H // k, ((i + 1) * H + k - 1) // k) for i in range(k)]
    cols = [(j * W // k, ((j + 1) * W + k - 1) // k) for j in range(k)]
    return torch.stack([x[:, r0:r1, c0:c1].mean((1, 2)) for r0, r1 in rows for c0, c1 in cols], dim=1)


def hue_of(rgb: torch.Tensor, mx: torch.Tensor, chroma: torch.Tensor) -> torch.Tensor:
    """rgb (B,3,S,S) in [0,1] (+ its channel max and max-min) -> HSV hue (B,S,S) in [0, 1); 0 where grey."""
    r, g, bl = rgb[:, 0], rgb[:, 1], rgb[:, 2]
    c = chroma.clamp_min(1e-6)
    h = torch.where(mx == r, ((g - bl) / c) % 6, torch.where(mx == g, (bl - r) / c + 2, (r - g) / c + 4))
    return torch.where(chroma > 0, h / 6, torch.zeros_like(h)).clamp(0, 1 - 1e-6)


def _counts(idx: torch.Tensor, k: int, weights: torch.Tensor | None = None) -> torch.Tensor:
    """idx (B, ...) ints in [0, k) -> (B, k) per-row counts (sums of ``weights`` when given)."""
    flat = idx.reshape(idx.shape[0], -1)
    w = torch.ones_like(flat, dtype=torch.float32) if weights is None else weights.reshape(flat.shape).float()
    return torch.zeros(flat.shape[0], k, dtype=torch.float32, device=idx.device).scatter_add_(1, flat, w)
