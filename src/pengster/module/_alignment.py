"""The alignment terms of the loss: contrastive agreement of the experts, and MMD mixing of the datasets."""

from __future__ import annotations

import itertools

import torch

from pengster.nn import group_mmd, symmetric_info_nce

from ._pairs import measured_rows


def mixing_loss(module, joint_mean: torch.Tensor, panel: torch.Tensor) -> torch.Tensor:
    """MMD between the panels' joint means (0 with ``mixing_weight=0`` or a single panel)."""
    if module.mixing_weight == 0 or module.n_panels < 2:
        return joint_mean.new_zeros(())
    return group_mmd(joint_mean, panel)


def contrastive_loss(module, experts, has, rows=None) -> torch.Tensor:
    """Symmetric InfoNCE of the projected expert means, summed over the pairs of modalities, on the cells with both.

    ``module`` is a :class:`~pengster.module.JointVAEModule`; ``experts``, ``has`` and ``rows`` (modality -> indices of
    the cells that measured it; computed from ``has`` when not given) as in its ``inference``.
    """
    total = next(iter(experts.values()))[0].new_zeros(())
    if module.contrastive_weight == 0:
        return total
    scale = module.logit_scale()
    rows = rows or measured_rows(has)
    for left, right in itertools.combinations(module.modalities, 2):
        both = rows[left][has[right][rows[left]] > 0]
        if both.numel() < 2:
            continue
        embed_left = module.projection_heads[left](experts[left][0][both]).float()
        embed_right = module.projection_heads[right](experts[right][0][both]).float()
        total = total + symmetric_info_nce(embed_left, embed_right, scale)
    return total
