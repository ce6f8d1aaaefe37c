"""scvi-tools' count likelihoods with ``lgamma`` evaluated only at the non-zero counts.

At a zero count the negative binomial's gamma terms cancel, ``lgamma(0 + theta) - lgamma(theta) - lgamma(1) = 0``,
and ``log NB(0 | mu, theta) = theta * (log theta - log(theta + mu))`` needs two logs. Single-cell RNA counts are
mostly zeros, so scoring the gamma terms only at the non-zero counts removes most of the ``lgamma`` calls in the
forward pass and most of the ``digamma`` calls in the backward pass (``benchmarks/likelihood_speed.py``).

Finding the non-zero entries of a tensor on an accelerator (``nonzero``, boolean-mask indexing) waits for the device,
because the number of entries decides the size of the result. ``log_prob`` therefore takes them as an argument,
``nonzero=value.nonzero(as_tuple=True)``, which the caller computes where that costs no synchronisation (on the host,
while it builds the minibatch). On the CPU there is no device to wait for, and ``log_prob`` finds them itself. Without
them (an accelerator, no ``nonzero``) the gamma terms are evaluated at every entry, but ``lgamma(theta)`` and
``log(theta)`` once per gene, where scvi-tools evaluates them at every entry.
"""

from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F
from scvi.distributions import NegativeBinomial, NegativeBinomialMixture, ZeroInflatedNegativeBinomial
from torch.distributions import Distribution

EPS = 1e-8
"""scvi-tools' constant in ``log(mu + eps)`` and ``log(theta + mu + eps)``: kept, so that ``mu = 0`` (the unmeasured
genes of a panel, which pengster masks out) gives finite values and gradients, as in scvi-tools."""

Nonzero = tuple[torch.Tensor, torch.Tensor]
"""``(cell index, feature index)`` of the non-zero counts, as returned by ``counts.nonzero(as_tuple=True)``."""


class SparseNegativeBinomial(NegativeBinomial):
    """``scvi.distributions.NegativeBinomial`` with ``lgamma`` only at non-zero counts.

    Constructor, parameters, moments and sampling are scvi-tools'; see the module docstring for ``nonzero``.
    """

    def log_prob(self, value: torch.Tensor, *, nonzero: Nonzero | None = None) -> torch.Tensor:
        """Elementwise log-likelihood of ``value``, of shape ``(n_cells, n_features)``; ``mu`` may add leading axes.

        Parameters
        ----------
        value
            Counts.
        nonzero
            ``value.nonzero(as_tuple=True)``: the non-zero counts, the only entries where ``lgamma`` is evaluated.
            Found here if ``value`` is on the CPU; on another device, without it, ``lgamma`` is evaluated everywhere.
        """
        _check_support(self, value)
        mu, theta = _compact(self.mu), _compact(self.theta)
        entries = _NonzeroEntries.of(self, value, nonzero)
        log_nb_zero, log_odds = _log_nb_zero_and_odds(mu, theta, odds=entries is None)
        if entries is None:
            return log_nb_zero + value * log_odds + _log_gamma_terms(value, theta)
        return entries.add_to(log_nb_zero, _log_nb_rest(entries, value, mu, theta))


class SparseZeroInflatedNegativeBinomial(ZeroInflatedNegativeBinomial):
    """``scvi.distributions.ZeroInflatedNegativeBinomial`` with ``lgamma`` only at non-zero counts.

    Constructor, parameters, moments and sampling are scvi-tools'; see the module docstring for ``nonzero``.
    """

    def log_prob(self, value: torch.Tensor, *, nonzero: Nonzero | None = None) -> torch.Tensor:
        """Elementwise log-likelihood of ``value``; arguments as in :meth:`SparseNegativeBinomial.log_prob`.

        The support is checked only with ``validate_args=True``; scvi-tools checks it on every call, which costs
        several passes over the counts and, on an accelerator, a synchronisation.
        """
        _check_support(self, value)
        mu, theta, zi_logits = _compact(self.mu), _compact(self.theta), _compact(self.zi_logits)
        entries = _NonzeroEntries.of(self, value, nonzero)
        log_nb_zero, log_odds = _log_nb_zero_and_odds(mu, theta, odds=entries is None)
        # with pi = sigmoid(zi_logits) the dropout probability and y = log NB(0) - zi_logits: log pi =
        # logsigmoid(zi_logits), log(1 - pi) NB(0) = log pi + y, and log(pi + (1 - pi) NB(0)) = log pi + softplus(y)
        log_dropout = F.logsigmoid(zi_logits)
        log_nb_zero_not_dropout = log_nb_zero - zi_logits
        if entries is None:
            log_nb_zero_part = torch.where(value > 0, log_nb_zero_not_dropout, F.softplus(log_nb_zero_not_dropout))
            return log_dropout + log_nb_zero_part + value * log_odds + _log_gamma_terms(value, theta)
        # softplus(y) everywhere, and at the non-zero counts y - softplus(y) = logsigmoid(y): no dense where
        log_prob = log_dropout + F.softplus(log_nb_zero_not_dropout)
        at_nonzero = F.logsigmoid(entries.gather(log_nb_zero_not_dropout)) + _log_nb_rest(entries, value, mu, theta)
        return entries.add_to(log_prob, at_nonzero)


class SparseNegativeBinomialMixture(NegativeBinomialMixture):
    """``scvi.distributions.NegativeBinomialMixture`` with ``lgamma`` only at non-zero counts.

    totalVI's protein background/foreground mixture. Its two components share ``theta1``, so they share the gamma
    terms, which factor out of the mixture: ``log(w NB1 + (1 - w) NB2) = G + log(w NB1' + (1 - w) NB2')`` with
    ``G = lgamma(x + theta) - lgamma(theta) - lgamma(x + 1)``, zero at a zero count. Constructor, parameters,
    moments and sampling are scvi-tools'; with a ``theta2``, ``log_prob`` is scvi-tools' own.
    """

    def log_prob(self, value: torch.Tensor, *, nonzero: Nonzero | None = None) -> torch.Tensor:
        """Elementwise log-likelihood of ``value``; arguments as in :meth:`SparseNegativeBinomial.log_prob`."""
        if self.theta2 is not None:
            return super().log_prob(value)
        _check_support(self, value)
        mu1, mu2, theta = _compact(self.mu1), _compact(self.mu2), _compact(self.theta1)
        logits = _compact(self.mixture_logits)
        # each component without the gamma terms (x * log_odds is zero at a zero count); the background weight is
        # sigmoid(logits), and log sigmoid(-logits) = log sigmoid(logits) - logits
        log_nb_zero, log_odds = _log_nb_zero_and_odds(mu1, theta)
        log_background = log_nb_zero + value * log_odds
        log_nb_zero, log_odds = _log_nb_zero_and_odds(mu2, theta)
        log_foreground = log_nb_zero + value * log_odds
        log_prob = torch.logaddexp(log_background, log_foreground - logits) + F.logsigmoid(logits)
        entries = _NonzeroEntries.of(self, value, nonzero)
        if entries is None:
            return log_prob + _log_gamma_terms(value, theta)
        counts, theta_at = entries.gather(value), entries.gather(theta)
        return entries.add_to(log_prob, _log_gamma_terms_at(entries, counts, theta_at, theta))


def _log_nb_zero_and_odds(mu: torch.Tensor, theta: torch.Tensor, *, odds: bool = True):
    """``log NB(0 | mu, theta)`` and the log success probability ``log(mu + eps) - log(theta + mu + eps)``.

    ``log NB(0 | mu, theta) = theta * (log(theta + eps) - log(theta + mu + eps))``, with no ``lgamma``; the log
    success probability is None if not ``odds``.
    """
    theta_eps = theta + EPS
    log_theta_mu = torch.log(mu + theta_eps)
    log_nb_zero = theta * (torch.log(theta_eps) - log_theta_mu)
    return log_nb_zero, (torch.log(mu + EPS) - log_theta_mu) if odds else None


def _log_gamma_terms(value: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    """``lgamma(x + theta) - lgamma(theta) - lgamma(x + 1)`` at every entry: zero at ``x = 0``.

    The zero counts get no gradient: summed over the cells, ``digamma(0 + theta)`` and ``-digamma(theta)`` (each near
    ``-1 / theta`` for a small ``theta``) would cancel only to float32 rounding of their sums.
    """
    return torch.where(value > 0, torch.lgamma(value + theta) - torch.lgamma(theta), 0.0) - torch.lgamma(value + 1)


def _log_nb_rest(entries: _NonzeroEntries, value: torch.Tensor, mu: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    """``log NB(x | mu, theta) - log NB(0 | mu, theta)`` at the non-zero counts, of shape ``(..., nnz)``."""
    counts, mu_at, theta_at = entries.gather(value), entries.gather(mu), entries.gather(theta)
    log_odds = torch.log(mu_at + EPS) - torch.log(mu_at + (theta_at + EPS))
    return counts * log_odds + _log_gamma_terms_at(entries, counts, theta_at, theta)


def _log_gamma_terms_at(
    entries: _NonzeroEntries, counts: torch.Tensor, theta_at: torch.Tensor, theta: torch.Tensor
) -> torch.Tensor:
    """``lgamma(x + theta) - lgamma(theta) - lgamma(x + 1)`` at the non-zero ``counts``; ``lgamma(theta)`` per gene."""
    return torch.lgamma(counts + theta_at) - entries.gather(torch.lgamma(theta)) - torch.lgamma(counts + 1)


def _compact(tensor: torch.Tensor) -> torch.Tensor:
    """``tensor`` without the axes that broadcasting expanded (stride 0), as a view of length 1 along them.

    scvi-tools' constructors broadcast every parameter to one shape; a per-gene ``theta`` becomes a
    ``(n_cells, n_genes)`` view of ``n_genes`` numbers. Its per-gene terms are computed once per gene here.
    """
    index = tuple(
        slice(0, 1) if stride == 0 and size > 1 else slice(None)
        for size, stride in zip(tensor.shape, tensor.stride(), strict=True)
    )
    return tensor[index]


def _check_support(distribution: Distribution, value: torch.Tensor) -> None:
    """scvi-tools' warning for values outside the support, only with ``validate_args=True``."""
    if distribution._validate_args:
        try:
            distribution._validate_sample(value)
        except ValueError:
            warnings.warn(
                "The value argument must be within the support of the distribution", UserWarning, stacklevel=3
            )


class _NonzeroEntries:
    """The non-zero entries of counts of shape ``(n_cells, n_features)``.

    Where the parameters are read and the gamma terms are added.
    """

    def __init__(self, value: torch.Tensor, nonzero: Nonzero):
        self.shape = value.shape
        self.cells, self.features = nonzero
        self.flat = self.cells * value.shape[-1] + self.features

    @classmethod
    def of(cls, distribution: Distribution, value: torch.Tensor, nonzero: Nonzero | None) -> _NonzeroEntries | None:
        """The entries given as ``nonzero`` (checked), or found on the CPU; None on another device without them."""
        if nonzero is None:
            on_cpu = value.device.type == "cpu" and value.dim() == 2
            return cls(value, value.nonzero(as_tuple=True)) if on_cpu else None
        if value.dim() != 2 or len(nonzero) != 2:
            raise ValueError(
                f"log_prob(value, nonzero=...) takes counts of shape (n_cells, n_features) and nonzero="
                f"value.nonzero(as_tuple=True); got counts of shape {tuple(value.shape)} and {len(nonzero)} index "
                "tensors"
            )
        if distribution._validate_args:
            found = value.nonzero(as_tuple=True)
            if not all(torch.equal(given, f) for given, f in zip(nonzero, found, strict=True)):
                raise ValueError("log_prob(value, nonzero=...): nonzero is not value.nonzero(as_tuple=True)")
        return cls(value, nonzero)

    def gather(self, tensor: torch.Tensor) -> torch.Tensor:
        """``tensor``, broadcastable to ``(..., n_cells, n_features)``, at the entries: shape ``(..., nnz)``.

        A length-1 cell or feature axis is read at 0, so a per-gene ``theta`` is read from its ``n_genes`` numbers.
        """
        if tensor.dim() < 2:
            tensor = tensor[(None,) * (2 - tensor.dim())]
        per_cell, per_feature = tensor.shape[-2] > 1, tensor.shape[-1] > 1
        if per_cell and per_feature:
            return tensor.flatten(-2).index_select(-1, self.flat)
        if per_feature:
            return tensor[..., 0, :].index_select(-1, self.features)
        if per_cell:
            return tensor[..., :, 0].index_select(-1, self.cells)
        return tensor[..., 0, :]

    def add_to(self, dense: torch.Tensor, entries: torch.Tensor) -> torch.Tensor:
        """``dense`` broadcast to the counts' shape, plus ``entries`` of shape ``(..., nnz)`` at the entries."""
        shape = torch.broadcast_shapes(dense.shape, self.shape)
        flat = dense.expand(shape).flatten(-2)
        entries = entries.expand(*flat.shape[:-1], self.flat.shape[0])
        return flat.index_add(-1, self.flat, entries).reshape(shape)
