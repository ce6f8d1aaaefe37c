"""The protein head: totalVI's background/foreground negative binomial mixture."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from scipy import sparse
from scvi.nn import FCLayers
from torch import nn
from torch.distributions import Distribution

from pengster.distributions import SparseNegativeBinomialMixture

from ._head import HEADS, Head, HeadInput, hidden
from ._moments import count_moments


def clr(counts: torch.Tensor, feature_mask: torch.Tensor) -> torch.Tensor:
    """Per-cell centred log-ratio as Seurat and the NeurIPS 2021 data compute it.

    ``log1p(x / g)`` with ``g = exp(mean_j log1p(x_j))`` over the measured features of the cell.
    """
    log_counts = torch.log1p(counts)
    n_measured = feature_mask.sum(-1, keepdim=True).clamp_min(1.0)
    log_geometric_mean = (log_counts * feature_mask).sum(-1, keepdim=True) / n_measured
    return torch.log1p(counts / log_geometric_mean.exp())


def background_init(matrix, rows: np.ndarray, *, max_cells: int = 20_000, seed: int = 0) -> np.ndarray:
    """Initial log background rate per protein: log mean of the counts at or below each protein's median.

    Read from the cells ``rows`` of ``matrix`` (cells x proteins), at most ``max_cells`` of them (a random subset).
    """
    rng = np.random.default_rng(seed)
    rows = rows if len(rows) <= max_cells else rng.choice(rows, max_cells, replace=False)
    values = matrix[np.sort(rows)]
    values = values.toarray() if sparse.issparse(values) else np.asarray(values, dtype=np.float64)
    median = np.median(values, axis=0, keepdims=True)
    low = np.where(values <= median, values, np.nan)
    return np.log(np.nanmean(low, axis=0) + 1.0).astype(np.float32)


class ProteinHead(Head):
    """totalVI-style background/foreground negative binomial mixture :cite:p:`gayoso2021totalvi`.

    The background rate is learned per protein and batch; the foreground is the background times a factor ``>= 1``
    decoded from ``z``; the mixing weight (probability of background) is decoded from ``z``. Reported scale: CLR of
    the decoded mean (``denoised``: of the foreground alone); linear scale: the foreground rate times the probability
    of foreground, as TOTALVI's ``get_normalized_expression`` without background.
    """

    name = "protein"
    QUERY_FREE = ("log_background",)

    def __init__(self, n_features, n_input, n_cat_list, *, n_batch, n_hidden, n_layers, **_):
        super().__init__(n_features, n_input, n_cat_list, n_batch=n_batch, n_hidden=n_hidden, n_layers=n_layers, **_)
        self.layers = FCLayers(n_input, n_hidden, n_cat_list=list(n_cat_list), n_layers=n_layers, n_hidden=n_hidden)
        self.foreground = nn.Linear(n_hidden, n_features)
        self.mixing = nn.Linear(n_hidden, n_features)
        self.log_background = nn.Parameter(torch.zeros(n_features, max(n_batch, 1)))
        self.log_theta = nn.Parameter(torch.full((n_features,), 2.0))

    def encoder_input(self, counts, feature_mask):
        """CLR of the measured proteins (see ``clr``); unmeasured proteins are 0."""
        return clr(counts, feature_mask) * feature_mask

    def observed(self, counts, feature_mask):
        """CLR of the measured proteins."""
        return clr(counts, feature_mask) * feature_mask

    def initial_values(self, matrix, rows) -> dict[str, torch.Tensor]:
        """The background of every batch starts at ``background_init`` of the measured cells' counts."""
        init = torch.as_tensor(background_init(matrix, rows))
        return {"log_background": init.unsqueeze(-1).expand_as(self.log_background).clone()}

    def forward(self, z: torch.Tensor, inputs: HeadInput) -> Distribution:
        """The mixture; ``px.mu1`` is the background rate, ``px.mu2`` the foreground rate."""
        hidden_values = hidden(self.layers, z, *inputs.categoricals)
        background = self.log_background[:, inputs.batch_index.view(-1).long()].T.exp()
        background = background.expand(z.shape[:-1] + background.shape[-1:])
        foreground = background * (1.0 + F.softplus(self.foreground(hidden_values).float()) + 1e-4)
        return SparseNegativeBinomialMixture(
            mu1=background,
            mu2=foreground,
            theta1=self.log_theta.exp(),
            mixture_logits=self.mixing(hidden_values).float(),
            validate_args=False,
        )

    @staticmethod
    def foreground_rate(px: SparseNegativeBinomialMixture) -> torch.Tensor:
        """The foreground rate times the probability of foreground."""
        return (1.0 - px.mixture_probs) * px.mu2

    def reported(self, px, inputs, *, variance=False, denoised=False, **_):
        """CLR of the decoded mean; its variance by the delta method on the CLR (the geometric mean held fixed).

        ``denoised``: CLR of :meth:`foreground_rate` (background removed), with no variance.
        """
        mask = inputs.feature_mask
        if denoised:
            return clr(self.foreground_rate(px), mask), None
        mean, count_variance = count_moments(px)
        value = clr(mean, mask)
        if not variance:
            return value, None
        n_measured = mask.sum(-1, keepdim=True).clamp_min(1.0)
        geometric_mean = ((torch.log1p(mean) * mask).sum(-1, keepdim=True) / n_measured).exp()
        return value, count_variance / (geometric_mean + mean) ** 2

    def normalized(self, px, inputs, *, library_size=None):
        """The foreground rate times the probability of foreground (see :meth:`foreground_rate`)."""
        return self.foreground_rate(px)

    def foreground_probability(self, px: SparseNegativeBinomialMixture) -> torch.Tensor:
        """Probability that the counts come from the foreground (TOTALVI's ``get_protein_foreground_probability``)."""
        return 1.0 - px.mixture_probs


HEADS[ProteinHead.name] = ProteinHead
