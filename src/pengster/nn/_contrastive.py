"""Projection heads and the symmetric InfoNCE (CLIP) loss that align modalities of the same cell."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class ProjectionHead(nn.Module):
    """Map an expert's latent mean to a unit-norm embedding for contrastive alignment.

    Parameters
    ----------
    n_input
        Latent dimension.
    n_output
        Embedding dimension.
    n_hidden
        Hidden units.
    """

    def __init__(self, n_input: int, n_output: int = 32, n_hidden: int = 64):
        super().__init__()
        self.layers = nn.Sequential(nn.Linear(n_input, n_hidden), nn.ReLU(), nn.Linear(n_hidden, n_output))

    def forward(self, latent: torch.Tensor) -> torch.Tensor:
        """Return embeddings of shape ``(n_cells, n_output)`` with unit L2 norm."""
        return F.normalize(self.layers(latent), dim=-1)


class LogitScale(nn.Module):
    """Learnable inverse temperature of InfoNCE, initialised at ``1 / temperature`` and capped at 100 as in CLIP."""

    def __init__(self, temperature: float = 0.1, learnable: bool = True):
        super().__init__()
        value = torch.tensor(math.log(1.0 / temperature))
        self.log_scale = nn.Parameter(value) if learnable else nn.Buffer(value)

    def forward(self) -> torch.Tensor:
        """Return the scale ``exp(log_scale)``, clamped to ``[1, 100]``."""
        return self.log_scale.clamp(0.0, math.log(100.0)).exp()


def symmetric_info_nce(left: torch.Tensor, right: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """CLIP loss between two views of the same cells :cite:p:`radford2021clip`.

    Parameters
    ----------
    left, right
        Unit-norm embeddings of shape ``(n_cells, n_dims)``; row ``i`` of both is the same cell.
    scale
        Inverse temperature.

    Returns
    -------
    Mean of the two cross-entropies (left->right and right->left); 0 when fewer than two cells.
    """
    if left.shape[0] < 2:
        return left.new_zeros(())
    logits = scale * left @ right.T
    target = torch.arange(left.shape[0], device=left.device)
    return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target))
