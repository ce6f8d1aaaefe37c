"""Closed-form mean and variance of the decoded count distributions (no sampling)."""

from __future__ import annotations

import torch
from scvi.distributions import NegativeBinomial, NegativeBinomialMixture, ZeroInflatedNegativeBinomial
from torch.distributions import Bernoulli, Distribution, Poisson


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
