"""Closed-form moments of the decoded distributions, and their variance on the scales predictions are reported in.

Reporting scales (see :func:`pengster.module._inputs.observed_values`): RNA as log1p of counts per 10k, ATAC as the
probability of an accessible peak, protein as CLR of counts. A count distribution's variance is carried to the
log scales by the delta method (first order around the decoded mean).
"""

from __future__ import annotations

import torch
from scvi.distributions import NegativeBinomial, NegativeBinomialMixture, ZeroInflatedNegativeBinomial
from torch.distributions import Bernoulli, Distribution, Poisson

from ._inputs import RNA_TARGET_SUM, clr


def count_moments(px: Distribution) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and variance of a decoded count distribution, from its parameters (no sampling).

    Negative binomial ``mu + mu^2 / theta``; zero-inflated with dropout ``pi``: mean ``(1 - pi) mu``, variance
    ``(1 - pi) mu (1 + mu (pi + 1 / theta))``; the totalVI mixture with background probability ``pi``:
    ``pi v1 + (1 - pi) v2 + pi (1 - pi) (mu1 - mu2)^2``; Bernoulli ``p (1 - p)``; Poisson ``rate``.
    """
    if isinstance(px, ZeroInflatedNegativeBinomial):
        dropout = px.zi_probs
        return (1 - dropout) * px.mu, (1 - dropout) * px.mu * (1 + px.mu * (dropout + 1 / px.theta))
    if isinstance(px, NegativeBinomial):
        return px.mu, px.mu + px.mu**2 / px.theta
    if isinstance(px, NegativeBinomialMixture):
        background = px.mixture_probs
        theta2 = px.theta1 if px.theta2 is None else px.theta2
        variance1 = px.mu1 + px.mu1**2 / px.theta1
        variance2 = px.mu2 + px.mu2**2 / theta2
        between = background * (1 - background) * (px.mu1 - px.mu2) ** 2
        return px.mean, background * variance1 + (1 - background) * variance2 + between
    if isinstance(px, Poisson):
        return px.rate, px.rate
    if isinstance(px, Bernoulli) or hasattr(px, "probs"):  # pengster's FactorBernoulli has probs, no Bernoulli base
        return px.probs, px.probs * (1 - px.probs)
    raise TypeError(f"count_moments: no closed form for {type(px).__name__}")


def reporting_moments(
    module,
    modality: str,
    z: torch.Tensor,
    categoricals: list[torch.Tensor],
    feature_mask: torch.Tensor,
    *,
    cell_factor: torch.Tensor | None = None,
    library: torch.Tensor | float = RNA_TARGET_SUM,
    target_sum: float = RNA_TARGET_SUM,
    denoised: bool = False,
    variance: bool = True,
    cont_covs: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Decoded value of ``modality`` at ``z`` on its reporting scale, and the variance of one measurement there.

    Parameters
    ----------
    module
        A :class:`~pengster.module.JointVAEModule`.
    modality, z, categoricals, feature_mask, cell_factor
        As in :meth:`~pengster.module.JointVAEModule.decode`; ``z`` of shape ``(..., n_cells, n_latent)``.
    library
        RNA: the total counts of the measurement whose noise the variance describes, shape ``(n_cells, 1)`` or a
        number (the variance of log1p per 10k shrinks as the depth grows).
    target_sum
        RNA: counts per ``target_sum`` (log1p of them is reported).
    denoised
        Protein: the foreground only (background removed). No variance is computed for it.
    variance
        Also compute the variance (else None).
    cont_covs
        Continuous covariates ``(n_cells, n_continuous_cov)`` of a model set up with ``continuous_covariate_keys``.

    Returns
    -------
    ``(value, variance)``, each of shape ``(..., n_cells, n_features)``. Variance: RNA, the negative binomial's
    count variance at depth ``library`` by the delta method on ``log1p(x / library * target_sum)``; ATAC,
    ``p (1 - p)``, the variance of the binary accessibility; protein, the totalVI mixture's count variance by
    the delta method on the CLR (the cell's geometric mean held fixed).
    """
    px, parts = module.decode(modality, z, categoricals, feature_mask, None, cell_factor, cont_covs=cont_covs)
    if modality == "rna":
        value = torch.log1p(parts * target_sum)
        if not variance:
            return value, None
        # px was decoded at library 1: its mean is the proportion; rescale to the measurement's depth
        _, count_variance = count_moments(px.__class__(**_at_library(px, library)))
        slope = (target_sum / library) / (1 + parts * target_sum)
        return value, count_variance * slope**2
    if modality == "atac":
        probs = parts.probs
        return probs, probs * (1 - probs) if variance else None
    if denoised:
        return clr((1.0 - parts["mixing"]) * parts["foreground"], feature_mask), None
    mean, count_variance = count_moments(px)
    value = clr(mean, feature_mask)
    if not variance:
        return value, None
    n_measured = feature_mask.sum(-1, keepdim=True).clamp_min(1.0)
    geometric_mean = ((torch.log1p(mean) * feature_mask).sum(-1, keepdim=True) / n_measured).exp()
    return value, count_variance / (geometric_mean + mean) ** 2


def _at_library(px: Distribution, library: torch.Tensor | float) -> dict:
    arguments = {"mu": px.mu * library, "theta": px.theta}
    if isinstance(px, ZeroInflatedNegativeBinomial):
        arguments["zi_logits"] = px.zi_logits
    return arguments
