"""The ATAC likelihood without needless (pairs x peaks) intermediates, optionally fused by ``torch.compile``.

With the cross-modal terms of the interdependent ELBO a multiome cell's peaks are decoded three times, so at 100k
peaks a minibatch of 1,024 cells makes (3,072 x 100,000) tensors. Written as ``Bernoulli(probs).log_prob`` that is a
dozen full passes over such tensors (probabilities, clamping, logits, the dense binarised target, the gathered feature
mask, ...). Here the negative log-likelihood is one expression of the decoder's raw logits, the region and cell
factors, the target rows and the mask table, which ``torch.compile`` turns into one kernel forward and one backward.
"""

from __future__ import annotations

import torch
from scvi.distributions import NegativeBinomialMixture
from scvi.distributions._negative_binomial import log_mixture_nb
from torch.distributions import Distribution, constraints
from torch.distributions.utils import lazy_property

PROB_EPS = 1e-6


def _probs(logits: torch.Tensor, region_logit: torch.Tensor, cell_factor: torch.Tensor) -> torch.Tensor:
    probs = torch.sigmoid(logits.float()) * torch.sigmoid(region_logit) * cell_factor
    return probs.clamp(PROB_EPS, 1 - PROB_EPS)


def factor_bernoulli_nll(
    logits: torch.Tensor,
    region_logit: torch.Tensor,
    cell_factor: torch.Tensor,
    counts: torch.Tensor,
    mask: torch.Tensor | None,
) -> torch.Tensor:
    """Negative log-likelihood per row of binarised ``counts`` under ``p = sigmoid(logits) sigmoid(region) cell``.

    Parameters
    ----------
    logits
        Decoder output of shape ``(n, n_peaks)``.
    region_logit
        Region factor logits of shape ``(n_peaks,)``.
    cell_factor
        Cell factor of shape ``(n, 1)``.
    counts
        Observed counts of shape ``(n, n_peaks)`` (any value > 0 is open).
    mask
        Feature mask of shape ``(n, n_peaks)``, or None when every peak was measured.

    Returns
    -------
    Array of shape ``(n,)``, summed in float32.
    """
    probs = _probs(logits, region_logit, cell_factor)
    log_likelihood = torch.where(counts > 0, torch.log(probs), torch.log1p(-probs))
    if mask is not None:
        log_likelihood = log_likelihood * mask
    return -log_likelihood.sum(-1)


_compiled = None


def compiled_factor_bernoulli_nll():
    """:func:`factor_bernoulli_nll` compiled once (dynamic shapes: the number of rows changes every minibatch)."""
    global _compiled
    if _compiled is None:
        _compiled = torch.compile(factor_bernoulli_nll, dynamic=True)
    return _compiled


class FactorBernoulli(Distribution):
    """Bernoulli with ``p = sigmoid(logits) * sigmoid(region_logit) * cell_factor`` (PeakVI's factorisation).

    Probabilities are computed only when asked for; :meth:`nll` scores without materialising them.
    """

    arg_constraints = {}
    support = constraints.boolean
    compile = False
    """Use the ``torch.compile``-fused :meth:`nll` (set by the fast training path on GPUs)."""

    def __init__(self, logits: torch.Tensor, region_logit: torch.Tensor, cell_factor: torch.Tensor):
        self.logits, self.region_logit, self.cell_factor = logits, region_logit, cell_factor
        super().__init__(batch_shape=logits.shape, validate_args=False)

    @lazy_property
    def probs(self) -> torch.Tensor:
        """Accessibility probabilities, clamped to ``[1e-6, 1 - 1e-6]``."""
        return _probs(self.logits, self.region_logit, self.cell_factor)

    @property
    def mean(self) -> torch.Tensor:
        """The probabilities."""
        return self.probs

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        """Elementwise log-likelihood of binary ``value``."""
        return torch.where(value > 0, torch.log(self.probs), torch.log1p(-self.probs))

    def sample(self, sample_shape=torch.Size()) -> torch.Tensor:  # noqa: B008 - torch's signature
        """Draw binary samples."""
        with torch.no_grad():
            return torch.bernoulli(self.probs.expand(torch.Size(sample_shape) + self.probs.shape))

    def nll(self, counts: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """Negative log-likelihood per row (see :func:`factor_bernoulli_nll`)."""
        function = compiled_factor_bernoulli_nll() if self.compile else factor_bernoulli_nll
        return function(self.logits, self.region_logit, self.cell_factor, counts, mask)


def reconstruction_nll(
    px: Distribution, counts: torch.Tensor, mask_table: torch.Tensor, panel: torch.Tensor, *, binarize: bool
) -> torch.Tensor:
    """Negative log-likelihood per row of ``counts`` under ``px``, over the features measured by each row's panel.

    Parameters
    ----------
    px
        Distribution of shape ``(n, n_features)``.
    counts
        Observed counts, same shape.
    mask_table
        Float array ``(n_panels, n_features)``: 1 where the panel measured the feature.
    panel
        Panel of each row, shape ``(n,)``.
    binarize
        Score ``counts > 0`` (binarised ATAC).
    """
    all_measured = _all_ones(mask_table)
    mask = None if all_measured else mask_table[panel.view(-1).long()]
    if isinstance(px, FactorBernoulli):
        return px.nll(counts, mask)
    target = (counts > 0).float() if binarize else counts.float()
    if isinstance(px, NegativeBinomialMixture) and not px.on_mps:
        # its log_prob checks the counts' support (nonnegative integers) on every call, a read of the device; the
        # counts were checked at setup_mudata
        log_likelihood = log_mixture_nb(target, px.mu1, px.mu2, px.theta1, px.theta2, px.mixture_logits, eps=1e-8)
    else:
        log_likelihood = px.log_prob(target)
    if mask is not None:
        log_likelihood = log_likelihood * mask
    return -log_likelihood.sum(-1)


def _all_ones(table: torch.Tensor) -> bool:
    # the masks are buffers fixed at set-up: check each once, not every minibatch (a device sync on GPUs)
    cached = getattr(table, "_pengster_all_ones", None)
    if cached is None or cached[0] != table._version:
        cached = (table._version, bool((table == 1).all()))
        table._pengster_all_ones = cached
    return cached[1]
