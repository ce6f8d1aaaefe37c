"""Bernoulli accessibility with cell and region factors, as in PeakVI :cite:p:`ashuach2022peakvi`."""

from __future__ import annotations

import torch
import torch.nn.functional as F
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
        """Elementwise log-likelihood of ``value``: any value above 0 is an open peak (binarised counts).

        ``log(1 - p)`` is computed for every entry and ``log p`` only at the open peaks (a few percent of the entries
        in ATAC data), in log space: ``log sigmoid(logits) + log sigmoid(region_logit) + log cell_factor``. Region
        and cell factors are kept at most ``1 - PROB_EPS``, so no term is infinite.
        """
        region = torch.sigmoid(self.region_logit).clamp_max(1 - PROB_EPS)
        cell = self.cell_factor.clamp(PROB_EPS, 1 - PROB_EPS)
        logits = self.logits.float()
        log_prob = torch.log1p(-(torch.sigmoid(logits) * region * cell))
        where_open = (value > 0).expand(log_prob.shape).nonzero(as_tuple=True)
        *rows, peak = where_open
        # the cell factor has one column, broadcast over the peaks
        cell_at_open = cell.expand(*log_prob.shape[:-1], 1)[..., 0][tuple(rows)]
        log_open = F.logsigmoid(logits[where_open]) + torch.log(region[peak]) + torch.log(cell_at_open)
        return log_prob.index_put(where_open, log_open)

    def sample(self, sample_shape: torch.Size = torch.Size()) -> torch.Tensor:  # noqa: B008 - torch's signature
        """Draw binary samples of shape ``sample_shape + (n_cells, n_peaks)``."""
        with torch.no_grad():
            return torch.bernoulli(self.probs.expand(torch.Size(sample_shape) + self.probs.shape))
