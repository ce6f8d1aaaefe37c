"""The PeakVI cell factor of the ATAC head: encoded where ATAC was measured, else predicted from the other depths.

Training updates two running statistics besides the weights, both only from the training plan
(:meth:`~pengster.module.JointVAEModule.update_running_statistics`): the mean encoded factor, which decodes ATAC for
cells without it, and the regression (:class:`CellFactorPredictor`) that predicts their factor from the depth of
their other modalities.
"""

from __future__ import annotations

import torch
from scvi.nn import FCLayers
from torch import nn

from ._head import hidden

MEAN_RATE = 0.01
"""Weight of a training minibatch in the running mean of the encoded cell factors."""


class CellFactorEncoder(nn.Module):
    """The PeakVI per-cell accessibility factor in ``(0, 1)``, encoded from the cell's own peaks."""

    def __init__(self, n_peaks: int, n_cat_list, *, n_hidden: int = 64):
        super().__init__()
        self.layers = FCLayers(n_peaks, n_hidden, n_cat_list=list(n_cat_list), n_layers=1, n_hidden=n_hidden)
        self.output = nn.Linear(n_hidden, 1)

    def forward(self, x: torch.Tensor, *categoricals: torch.Tensor) -> torch.Tensor:
        """Return the factor of shape ``(n_cells, 1)``."""
        return torch.sigmoid(self.output(hidden(self.layers, x, *categoricals)).float())


class CellFactorPredictor(nn.Module):
    """Logit of the PeakVI cell factor from the log library sizes of the other modalities: a ridge regression.

    A nucleus's ATAC depth (how many peaks are open) tracks its RNA depth; decoding missing ATAC with one mean
    factor for every cell throws that away, and per-peak correlations across cells are driven by it. The regression
    is fit to the cell factors the ATAC encoder infers for cells that measured ATAC, in closed form from running
    moments (decayed, as the encoder changes during training), so it needs no learning rate and moves no weight of
    the model: it has buffers, no parameters.

    Parameters
    ----------
    n_sources
        Number of other modalities whose depth is read.
    ridge
        Ridge penalty on the slopes (the features are centred log library sizes).
    decay
        Weight of a new minibatch in the running moments (the first minibatch sets them).
    """

    def __init__(self, n_sources: int, *, ridge: float = 1e-3, decay: float = 0.05):
        super().__init__()
        self.n_sources = n_sources
        self.ridge = ridge
        self.decay = decay
        n_features = 2 * n_sources + 1
        self.register_buffer("moment_xx", torch.zeros(n_features, n_features, dtype=torch.float64))
        self.register_buffer("moment_xy", torch.zeros(n_features, dtype=torch.float64))
        self.register_buffer("n_updates", torch.zeros((), dtype=torch.float64))

    @property
    def fitted(self) -> bool:
        """Whether any minibatch has been folded in."""
        return bool(self.n_updates.item() > 0)

    def _raw(self, log_library: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
        ones = torch.ones_like(present[:, :1])
        return torch.cat([log_library * present, present, ones], -1).double()

    def _centring(self) -> torch.Tensor:
        """Matrix from raw features ``[l * p, p, 1]`` to centred ones ``[(l - centre) * p, 1]``."""
        k = self.n_sources
        mean = self.moment_xx[-1]
        centre = mean[:k] / mean[k : 2 * k].clamp_min(1e-12)
        transform = self.moment_xx.new_zeros(k + 1, 2 * k + 1)
        transform[:k, :k] = torch.eye(k, dtype=transform.dtype, device=transform.device)
        transform[:k, k : 2 * k] = -torch.diag(centre)
        transform[k, -1] = 1.0
        return transform

    def coefficients(self) -> torch.Tensor:
        """Slopes of the centred log libraries and the intercept, shape ``(n_sources + 1,)``."""
        transform = self._centring()
        gram = transform @ self.moment_xx @ transform.T
        penalty = torch.diag(torch.cat([torch.full((self.n_sources,), self.ridge), torch.zeros(1)])).to(gram)
        penalty[-1, -1] = 1e-12
        return torch.linalg.solve(gram + penalty, transform @ self.moment_xy)

    def forward(self, log_library: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
        """Logits of shape ``(n_cells, 1)`` from ``log_library`` and ``present`` (0/1), both ``(n_cells, n_sources)``.

        A modality a cell lacks contributes nothing; a cell with none gets the intercept (the mean logit).
        """
        if not self.fitted:
            return log_library.new_zeros(log_library.shape[0], 1)
        centred = self._raw(log_library, present) @ self._centring().T
        return (centred @ self.coefficients()).unsqueeze(-1).to(log_library.dtype)

    @torch.no_grad()
    def update(self, log_library: torch.Tensor, present: torch.Tensor, cell_factor: torch.Tensor) -> None:
        """Fold a minibatch of cells with encoded ``cell_factor`` ``(n_cells, 1)`` into the running moments."""
        features = self._raw(log_library, present)
        target = torch.logit(cell_factor.double().clamp(1e-4, 1 - 1e-4)).view(-1)
        # the first minibatch replaces the zero moments; a tensor rate, not a Python branch (no GPU sync)
        rate = torch.where(
            self.n_updates == 0, torch.ones_like(self.n_updates), self.n_updates.new_full((), self.decay)
        )
        self.moment_xx.lerp_(features.T @ features / features.shape[0], rate)
        self.moment_xy.lerp_(features.T @ target / features.shape[0], rate)
        self.n_updates += 1
