"""The ATAC head: accessibility with cell and region factors, as PeakVI's, and the cell factor of each cell."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal

import torch
import torch.nn.functional as F
from scvi.nn import FCLayers
from torch import nn
from torch.distributions import Distribution, Poisson

from pengster.distributions import FactorBernoulli

from ._atac_factor import MEAN_RATE, CellFactorEncoder, CellFactorPredictor
from ._constants import MODULE_KEYS
from ._head import HEADS, Head, HeadInput, hidden, masked_normalize


def binary(counts: torch.Tensor, feature_mask: torch.Tensor) -> torch.Tensor:
    """Binarised accessibility of the measured peaks (any count above 0 is an open peak)."""
    return (counts > 0).to(counts.dtype) * feature_mask


class FactorPoisson(Poisson):
    """Fragment counts with rate ``p / sum(p) * library``; ``accessibility``: the ``FactorBernoulli`` of ``p``."""

    def __init__(self, rate: torch.Tensor, accessibility: FactorBernoulli, *, validate_args: bool | None = None):
        super().__init__(rate, validate_args=validate_args)
        self.accessibility = accessibility


class ATACHead(Head):
    """Accessibility ``p_cr = sigmoid(f(z, s))_r * sigmoid(region_r) * cell_c`` (PeakVI :cite:p:`ashuach2022peakvi`).

    ``bernoulli`` on binarised peaks (default) or ``poisson`` on fragment counts with rate
    ``p_cr / sum_r p_cr * library_c``. The cell factor ``cell_c`` is the head's per-cell state: encoded from the
    cell's own peaks where it measured ATAC; for a cell decoded from other modalities, predicted from their depth
    (``predict_cell_factor``) or the running mean of the encoded factors. Reported and linear scale: ``p``.
    """

    name = "atac"
    OPTIONS = {
        "atac_likelihood": "likelihood",
        "predict_cell_factor": "predict_cell_factor",
        "cross_peak_fraction": "cross_fraction",
    }
    ENCODER_PARTS = ("cell_factor_encoder",)
    variance_holds_latent = True

    def __init__(
        self,
        n_features,
        n_input,
        n_cat_list,
        *,
        n_hidden,
        n_layers,
        encoder_cats,
        likelihood: Literal["bernoulli", "poisson"] = "bernoulli",
        predict_cell_factor: bool = True,
        cross_fraction: float = 1.0,
        modalities=(),
        **_,
    ):
        super().__init__(
            n_features, n_input, n_cat_list, n_hidden=n_hidden, n_layers=n_layers, encoder_cats=encoder_cats, **_
        )
        if likelihood not in ("bernoulli", "poisson"):
            raise ValueError(f"atac_likelihood={likelihood!r}; pass 'bernoulli' or 'poisson'.")
        if not 0 < cross_fraction <= 1:
            raise ValueError(f"cross_peak_fraction={cross_fraction}; pass a fraction of the peaks in (0, 1].")
        if likelihood == "poisson" and cross_fraction < 1:
            raise ValueError(
                "atac_likelihood='poisson' normalises the rates over every peak, so its terms cannot be scored on a "
                "subset of peaks; pass cross_peak_fraction=1."
            )
        self.likelihood = likelihood
        self.cross_fraction = cross_fraction
        self.layers = FCLayers(n_input, n_hidden, n_cat_list=list(n_cat_list), n_layers=n_layers, n_hidden=n_hidden)
        self.output = nn.Linear(n_hidden, n_features)
        self.region_logit = nn.Parameter(torch.zeros(n_features))
        self.cell_factor_encoder = CellFactorEncoder(n_features, encoder_cats)
        self.register_buffer("cell_factor_mean", torch.tensor(0.5))
        others = tuple(m for m in modalities if m != self.name)
        self.depth_sources = others if predict_cell_factor else ()
        if self.depth_sources:
            self.cell_factor_predictor = CellFactorPredictor(len(self.depth_sources))

    def encoder_input(self, counts, feature_mask):
        """Binarised accessibility as log1p term frequency (per 10k open peaks).

        Dividing by the number of open peaks removes sequencing depth, which varies a lot between nuclei in very
        sparse ATAC (SNARE-seq2: 0.4% nonzero), so the encoder sees which peaks are open rather than how many.
        """
        open_peaks = binary(counts, feature_mask)
        n_open = open_peaks.sum(-1, keepdim=True).clamp_min(1.0)
        return torch.log1p(open_peaks / n_open * 1e4)

    def observed(self, counts, feature_mask):
        """Binary accessibility (see ``binary``)."""
        return binary(counts, feature_mask)

    # ------------------------------------------------------------------------------------------ cell factor
    def cell_state(self, counts, rows, feature_mask, categoricals, n_cells):
        """Cell factor ``(n_cells, 1)``: encoded from the peaks of the cells ``rows``, the running mean elsewhere."""
        # a copy: the running mean changes after the forward pass (update_statistics), before the backward pass
        factor = self.cell_factor_mean.expand(n_cells, 1).clone()
        if rows.numel() == 0:
            return factor
        own = self.cell_factor_encoder(self.encoder_input(counts, feature_mask), *categoricals)
        return factor.index_copy(0, rows, own.float())

    def _depth_inputs(self, libraries, has, use) -> tuple[torch.Tensor, torch.Tensor]:
        """Log library sizes of the depth sources and whether each is used, both ``(n_cells, n_sources)``."""
        log_library = torch.cat([libraries[m].log() for m in self.depth_sources], -1)
        present = torch.stack([has[m].float() * float(m in use) for m in self.depth_sources], -1)
        return log_library, present

    def source_state(self, libraries, has, sources, n_cells):
        """Cell factor for decoding ATAC from ``sources``: predicted from their depth (the mean when not fitted)."""
        if not self.depth_sources or not self.cell_factor_predictor.fitted:
            return self.cell_factor_mean.expand(n_cells, 1)
        return torch.sigmoid(self.cell_factor_predictor(*self._depth_inputs(libraries, has, sources)))

    @torch.no_grad()
    def update_statistics(self, inference_outputs: Mapping) -> None:
        """Fold a training minibatch's encoded cell factors into the running mean and the regression's moments."""
        has, rows = inference_outputs[MODULE_KEYS.HAS], inference_outputs[MODULE_KEYS.ROWS]
        cell_factor = inference_outputs[MODULE_KEYS.STATE][self.name]
        if rows[self.name].numel() > 0:
            self.cell_factor_mean.lerp_(cell_factor[rows[self.name]].mean(), MEAN_RATE)
        if not self.depth_sources:
            return
        log_library, present = self._depth_inputs(inference_outputs[MODULE_KEYS.LIBRARY], has, self.depth_sources)
        # cells with ATAC and at least one depth source
        cells = ((has[self.name] > 0) & (present > 0).any(-1)).nonzero().view(-1)
        if cells.numel() > 0:
            self.cell_factor_predictor.update(log_library[cells], present[cells], cell_factor[cells])

    # ------------------------------------------------------------------------------------------ decoder
    def cross_features(self) -> torch.Tensor | None:
        """A uniform random ``cross_peak_fraction`` of the peaks, sorted (None when it is 1)."""
        if self.cross_fraction >= 1:
            return None
        n_peaks = self.region_logit.numel()
        n_drawn = max(1, round(n_peaks * self.cross_fraction))
        return torch.randperm(n_peaks, device=self.region_logit.device)[:n_drawn].sort().values

    def forward(self, z: torch.Tensor, inputs: HeadInput) -> Distribution:
        """The ``FactorBernoulli`` (or ``FactorPoisson``); probabilities are computed when first read.

        Training scores ``px.log_prob`` only, which does not need them for every peak. With ``inputs.features``,
        only those peaks' rows of the output layer are multiplied.
        """
        cell_factor = inputs.state if inputs.state is not None else self.cell_factor_mean.expand(z.shape[-2], 1)
        layer_output = hidden(self.layers, z, *inputs.categoricals)
        region_logit, features = self.region_logit, inputs.features
        if features is None:
            logits = self.output(layer_output)
        else:
            logits = F.linear(layer_output, self.output.weight[features], self.output.bias[features])
            region_logit = region_logit[features]
        accessibility = FactorBernoulli(logits.float(), region_logit, cell_factor, validate_args=False)
        if self.likelihood == "bernoulli":
            return accessibility
        rate = masked_normalize(accessibility.probs, inputs.feature_mask) * inputs.library + 1e-8
        return FactorPoisson(rate, accessibility, validate_args=False)

    @staticmethod
    def _probs(px: Distribution) -> torch.Tensor:
        return px.accessibility.probs if isinstance(px, FactorPoisson) else px.probs

    def reported(self, px, inputs, *, variance=False, denoised=False, **_):
        """The probability ``p`` of an open peak, and ``p (1 - p)``, the variance of the binary accessibility."""
        probs = self._probs(px)
        return probs, probs * (1 - probs) if variance else None

    def normalized(self, px, inputs, *, library_size=None):
        """The probability of an open peak (MULTIVI's ``get_normalized_accessibility``)."""
        return self._probs(px)


HEADS[ATACHead.name] = ATACHead
