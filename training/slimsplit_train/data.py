"""Synthetic inputs."""

from __future__ import annotations

import torch
import torch.nn.functional as F

BEV_CHANNEL_SCALES = (2.0, 1.5, 1.0, 1.0, 0.5, 0.5, 3.0, 1.0)


def bev_input(seed: int, h: int, w: int, channels: int = 8, occupancy: float = 0.15) -> torch.Tensor:
    """BEV-like input [1, channels, h, w]: a fraction ``occupancy`` of the cells (in clusters, from a
    thresholded smooth random field) holds positive features in every channel; the rest is exactly 0."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.randn(1, 1, max(2, h // 8), max(2, w // 8), generator=g)
    field = F.interpolate(coarse, size=(h, w), mode="bilinear", align_corners=False)
    field = field + 0.6 * torch.randn(1, 1, h, w, generator=g)
    thresh = torch.quantile(field.flatten(), 1.0 - occupancy)
    mask = (field > thresh).float()
    if channels == len(BEV_CHANNEL_SCALES):
        scales = torch.tensor(BEV_CHANNEL_SCALES).view(1, -1, 1, 1)
    else:
        scales = torch.ones(1, channels, 1, 1)
    feats = (0.05 + torch.rand(1, channels, h, w, generator=g)) * scales
    return (feats * mask).float()
