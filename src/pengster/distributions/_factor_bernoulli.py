"""Bernoulli accessibility with cell and region factors, as in PeakVI :cite:p:`ashuach2022peakvi`."""

from __future__ import annotations

import torch
from torch.distributions import Distribution, constraints
from torch.distributions.utils import lazy_property

PROB_EPS = 1e-6
"""Probabilities are kept in ``[PROB_EPS, 1 - PROB_EPS]``, so that no log-likelihood is infinite."""


class FactorBernoulli(Distribution):
    """Bernoulli with ``p = sigmoid(logits) * sigmoid(region_logit) * cell_factor`` (PeakVI's factorisation).

    Parameters
    ----------
    logits
        Decoder output of shape ``(n_cells, n_peaks)``.
    region_logit
        Region factor logits of shape ``(n_peaks,)``.
    cell_factor
        Cell factor in ``(0, 1)`` of shape ``(n_cells, 1)``.
    validate_args
        As in ``torch.distributions.Distribution``; the module passes False, so that a non-finite parameter
        reaches the loss (where training stops and names it) instead of failing here.
    """

    arg_constraints = {}
    support = constraints.boolean

    def __init__(
        self,
        logits: torch.Tensor,
        region_logit: torch.Tensor,
        cell_factor: torch.Tensor,
        *,
        validate_args: bool | None = None,
    ):
        self.logits, self.region_logit, self.cell_factor = logits, region_logit, cell_factor
        super().__init__(batch_shape=logits.shape, validate_args=validate_args)

    @lazy_property
    def probs(self) -> torch.Tensor:
        """Accessibility probabilities, shape ``(n_cells, n_peaks)``."""
        probs = torch.sigmoid(self.logits.float()) * torch.sigmoid(self.region_logit) * self.cell_factor
        return probs.clamp(PROB_EPS, 1 - PROB_EPS)

    @property
    def mean(self) -> torch.Tensor:
        """The probabilities."""
        return self.probs

    @property
    def variance(self) -> torch.Tensor:
        """``p (1 - p)``."""
        return self.probs * (1 - self.probs)

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        """Elementwise log-likelihood of ``value``: any value above 0 is an open peak (binarised counts)."""
        return torch.where(value > 0, torch.log(self.probs), torch.log1p(-self.probs))

    def sample(self, sample_shape: torch.Size = torch.Size()) -> torch.Tensor:  # noqa: B008 - torch's signature
        """Draw binary samples of shape ``sample_shape + (n_cells, n_peaks)``."""
        with torch.no_grad():
            return torch.bernoulli(self.probs.expand(torch.Size(sample_shape) + self.probs.shape))
