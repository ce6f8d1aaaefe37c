"""Maximum mean discrepancy between the datasets of a mosaic, to mix them in the latent space."""

from __future__ import annotations

import torch

BANDWIDTH_FACTORS = (0.25, 0.5, 1.0, 2.0, 4.0)


def gaussian_mmd(left: torch.Tensor, right: torch.Tensor) -> torch.Tensor:
    """Squared MMD between two samples under a sum of Gaussian kernels :cite:p:`gretton2012mmd`.

    The biased (V-statistic) estimate, so it is never negative. The kernel widths are the median squared distance of
    the pooled sample, scaled by 0.25, 0.5, 1, 2 and 4; the median is not differentiated.

    Parameters
    ----------
    left, right
        Samples of shape ``(n_left, n_dims)`` and ``(n_right, n_dims)``.

    Returns
    -------
    A scalar tensor, 0 when either sample is empty.
    """
    if left.shape[0] == 0 or right.shape[0] == 0:
        return left.new_zeros(())
    pooled = torch.cat([left, right])
    distances = torch.cdist(pooled, pooled).pow(2)
    median = distances.detach().median().clamp_min(1e-6)
    kernel = sum(torch.exp(-distances / (median * factor)) for factor in BANDWIDTH_FACTORS)
    n_left = left.shape[0]
    within_left = kernel[:n_left, :n_left].mean()
    within_right = kernel[n_left:, n_left:].mean()
    between = kernel[:n_left, n_left:].mean()
    return (within_left + within_right - 2.0 * between).clamp_min(0.0)


def group_mmd(latent: torch.Tensor, groups: torch.Tensor, *, min_cells: int = 2) -> torch.Tensor:
    """Sum over groups of the squared MMD between a group's cells and all other cells.

    Parameters
    ----------
    latent
        Shape ``(n_cells, n_dims)``.
    groups
        Integer group (dataset) of each cell, shape ``(n_cells,)`` or ``(n_cells, 1)``.
    min_cells
        Groups with fewer cells in the minibatch are skipped (their MMD is noise).

    Returns
    -------
    A scalar tensor; 0 when fewer than two groups have ``min_cells`` cells. With two groups it is their MMD.
    """
    groups = groups.view(-1)
    present, counts = torch.unique(groups, return_counts=True)
    present = present[counts >= min_cells]
    total = latent.new_zeros(())
    if present.numel() < 2:
        return total
    if present.numel() == 2:  # one-vs-rest of either group is the same pair
        present = present[:1]
    for group in present:
        inside = groups == group
        total = total + gaussian_mmd(latent[inside], latent[~inside])
    return total
