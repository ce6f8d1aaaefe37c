"""Reconstruction terms of the interdependent ELBO, scored once per cell where they do not depend on the posterior.

A multiome cell is decoded from three posteriors, so the loss scores ``n_pairs = ~3 n_cells`` rows against the same
count rows. Both likelihoods split into a dense part that depends on the decoded rows and a part over the nonzero
counts only (4-8% of the entries):

- negative binomial: ``log NB(x; mu, theta) = [theta log theta + lgamma(x + theta) - lgamma(theta) - lgamma(x + 1)]
  - theta log(theta + mu) + x (log mu - log(theta + mu))``; the bracket depends on the data and the gene's
  ``theta`` only: it is computed once per cell and over the nonzero counts (where ``x = 0`` it is ``theta log theta``),
  so the ``lgamma``/``digamma`` passes over ``(n_pairs, n_genes)`` go away; the dense part is one ``log`` and a
  matrix-vector product with ``theta``.
- Bernoulli: ``sum_r log(1 - p_r) + sum_{x_r > 0} [log p_r - log(1 - p_r)]``: no dense binarised target, no
  ``where``, no dense ``log p``.

Same values as ``-px.log_prob(x)`` summed over the measured features, to float rounding (``tests/test_sparse.py``).
"""

from __future__ import annotations

import torch
from scvi.distributions import NegativeBinomial
from torch.distributions import Distribution

from ._bernoulli_nll import factor_bernoulli_open_nll
from ._fused import FactorBernoulli, _all_ones, reconstruction_nll
from ._sparse import SparseRows

NB_EPS = 1e-8
"""The ``eps`` of :func:`scvi.distributions._negative_binomial.log_nb_positive`."""


def _entry_mask(mask_table: torch.Tensor | None, panel: torch.Tensor, col: torch.Tensor) -> torch.Tensor | None:
    return None if mask_table is None else mask_table[panel, col]


def nb_pair_nll(
    mu: torch.Tensor,
    theta: torch.Tensor,
    counts: SparseRows,
    cell: torch.Tensor,
    mask_table: torch.Tensor | None,
    panel: torch.Tensor,
) -> torch.Tensor:
    """Negative binomial negative log-likelihood of each pair's cell's counts, over the measured genes.

    Parameters
    ----------
    mu
        Means of shape ``(n_pairs, n_genes)``.
    theta
        Inverse dispersion of shape ``(n_genes,)``.
    counts
        The cells' counts, ``n_cells`` rows.
    cell
        Cell (row of ``counts``) of each pair, shape ``(n_pairs,)``.
    mask_table
        Float array ``(n_panels, n_genes)``, 1 where the panel measured the gene; None when all were measured.
    panel
        Panel of each cell, shape ``(n_cells,)``.

    Returns
    -------
    Array of shape ``(n_pairs,)``.
    """
    # part of the data and theta only, per cell
    x, col = counts.value, counts.col
    theta_entry = theta.index_select(0, col)
    per_entry = torch.lgamma(x + theta_entry) - torch.lgamma(theta_entry) - torch.lgamma(x + 1)
    theta_log_theta = theta * torch.log(theta + NB_EPS)
    if mask_table is None:
        per_cell = theta_log_theta.sum().expand(counts.n_rows)
    else:
        per_entry = per_entry * _entry_mask(mask_table, panel.index_select(0, counts.row), col)
        per_cell = (mask_table @ theta_log_theta).index_select(0, panel)
    per_cell = per_cell.index_add(0, counts.row, per_entry)

    # part of the decoded means: dense, then over each pair's nonzero counts
    log_theta_mu = torch.log(theta + mu + NB_EPS)
    if mask_table is None:
        dense = log_theta_mu @ theta
    else:
        dense = (log_theta_mu * mask_table.index_select(0, panel.index_select(0, cell))) @ theta
    pair, entry = counts.expand(cell)
    entry_col = col.index_select(0, entry)
    flat = pair * mu.shape[-1] + entry_col
    mu_entry = mu.reshape(-1).index_select(0, flat)
    sparse = x.index_select(0, entry) * (torch.log(mu_entry + NB_EPS) - log_theta_mu.reshape(-1).index_select(0, flat))
    if mask_table is not None:
        sparse = sparse * _entry_mask(mask_table, panel.index_select(0, cell).index_select(0, pair), entry_col)
    log_likelihood = per_cell.index_select(0, cell) - dense + mu.new_zeros(len(cell)).index_add(0, pair, sparse)
    return -log_likelihood


def factor_bernoulli_pair_nll(
    px: FactorBernoulli, counts: SparseRows, cell: torch.Tensor, mask_table: torch.Tensor | None, panel: torch.Tensor
) -> torch.Tensor:
    """Negative log-likelihood of ``counts > 0`` under ``px`` (rows: pairs), over the measured peaks.

    See :func:`nb_pair_nll` for the arguments; returns an array of shape ``(n_pairs,)``.
    """
    pair, entry = counts.expand(cell)
    open_ = counts.value.index_select(0, entry) > 0
    pair, entry = pair[open_], entry[open_]
    entry_col = counts.col.index_select(0, entry)
    mask, open_mask = None, None
    if mask_table is not None:
        cell_panel = panel.index_select(0, cell)
        mask = mask_table.index_select(0, cell_panel)
        open_mask = _entry_mask(mask_table, cell_panel.index_select(0, pair), entry_col)
    return factor_bernoulli_open_nll(px.logits, px.region_logit, px.cell_factor, pair, entry_col, mask, open_mask)


def pair_nll(
    px: Distribution,
    counts: torch.Tensor,
    cell: torch.Tensor,
    mask_table: torch.Tensor,
    panel: torch.Tensor,
    *,
    binarize: bool,
    sparse_counts: SparseRows | None = None,
) -> torch.Tensor:
    """Negative log-likelihood of row ``cell[i]`` of ``counts`` under row ``i`` of ``px``, over measured features.

    Parameters
    ----------
    px
        Distribution of shape ``(n_pairs, n_features)``.
    counts
        Dense counts of the cells, shape ``(n_cells, n_features)``.
    cell
        Row of ``counts`` scored by each row of ``px``, shape ``(n_pairs,)``.
    mask_table
        Float array ``(n_panels, n_features)``: 1 where the panel measured the feature.
    panel
        Panel of each cell, shape ``(n_cells,)``.
    binarize
        Score ``counts > 0``.
    sparse_counts
        ``counts`` as :class:`~pengster.nn.SparseRows` when already at hand.

    Returns
    -------
    Array of shape ``(n_pairs,)``: the same as :func:`~pengster.nn.reconstruction_nll` on ``counts[cell]``.
    """
    panel = panel.view(-1).long()
    theta = _per_feature(px.theta) if type(px) is NegativeBinomial else None
    # on GPUs the fast path fuses the dense Bernoulli NLL with torch.compile instead (FactorBernoulli.compile)
    bernoulli = isinstance(px, FactorBernoulli) and not px.compile
    if not (bernoulli or theta is not None):
        return reconstruction_nll(px, counts[cell], mask_table, panel[cell], binarize=binarize)
    sparse_counts = SparseRows.of(counts.float()) if sparse_counts is None else sparse_counts
    mask = None if _all_ones(mask_table) else mask_table
    if bernoulli:
        return factor_bernoulli_pair_nll(px, sparse_counts, cell, mask, panel)
    return nb_pair_nll(px.mu, theta, sparse_counts, cell, mask, panel)


def _per_feature(theta: torch.Tensor) -> torch.Tensor | None:
    """``theta`` of shape ``(n_features,)`` when it is one per feature (also broadcast over rows), else None."""
    if theta.dim() == 1:
        return theta
    if theta.dim() == 2 and theta.stride(0) == 0:
        return theta[0]
    return None
