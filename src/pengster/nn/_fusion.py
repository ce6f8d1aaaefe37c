"""Masked product of Gaussian experts."""

from __future__ import annotations

import torch
from torch.distributions import Normal


def product_of_experts(means: list[torch.Tensor], variances: list[torch.Tensor], masks: list[torch.Tensor]) -> Normal:
    """Fuse Gaussian experts and a standard normal prior expert, ignoring masked-out experts.

    Parameters
    ----------
    means
        Expert means, each of shape ``(n_cells, n_latent)``.
    variances
        Expert variances, same shapes.
    masks
        One per expert, of shape ``(n_cells,)``: 1 where the cell has that modality, 0 where it does not.
        A masked expert contributes nothing, whatever its mean and variance hold.

    Returns
    -------
    The fused posterior ``N(mu, var)`` with ``1/var = 1 + sum_m mask_m / var_m`` and
    ``mu = var * sum_m mask_m mu_m / var_m`` (the prior expert has mean 0 and precision 1).
    """
    precision = torch.ones_like(means[0])
    weighted_mean = torch.zeros_like(means[0])
    for mean, variance, mask in zip(means, variances, masks, strict=True):
        expert_precision = mask.unsqueeze(-1) / variance
        precision = precision + expert_precision
        # where a mask is 0 the mean may be anything (even NaN padding); never let it leak in
        weighted_mean = weighted_mean + torch.where(mask.unsqueeze(-1) > 0, mean * expert_precision, 0.0)
    variance = 1.0 / precision
    return Normal(weighted_mean * variance, variance.sqrt(), validate_args=False)
