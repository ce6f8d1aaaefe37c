"""Per-modality decoders ``p(x_m | z, s)``.

Each decoder returns a :class:`torch.distributions.Distribution` (scvi-tools' where it has one), so that the
likelihood lives in one place: the module's loss reads ``-(px.log_prob(x) * mask).sum(-1)``. They are built with
``validate_args=False``: a non-finite parameter reaches the loss, where training stops and says where it started.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from scvi.distributions import NegativeBinomial, NegativeBinomialMixture, ZeroInflatedNegativeBinomial
from scvi.nn import DecoderSCVI, FCLayers
from torch import nn
from torch.distributions import Distribution, Poisson

from pengster.distributions import FactorBernoulli


def masked_normalize(values: torch.Tensor, feature_mask: torch.Tensor) -> torch.Tensor:
    """Zero the unmeasured features and rescale the rest to sum to 1 along the last axis."""
    masked = values * feature_mask
    return masked / masked.sum(-1, keepdim=True).clamp_min(1e-12)


def _hidden(layers: nn.Module, x: torch.Tensor, *categoricals: torch.Tensor) -> torch.Tensor:
    """``layers(x, *categoricals)``; a single row in training uses the running batch-norm statistics.

    A mosaic minibatch may hold one cell of a modality (a few multiome cells spread over the minibatches of a large
    CITE-seq run), and batch norm cannot normalise one row with its own statistics.
    """
    if not (layers.training and x.shape[0] == 1):
        return layers(x, *categoricals)
    layers.eval()
    try:
        return layers(x, *categoricals)
    finally:
        layers.train()


class RNADecoder(nn.Module):
    """Negative binomial (or ZINB) decoder with the observed library size, as in scVI :cite:p:`lopez2018scvi`.

    The expression proportions are renormalised over the genes the cell's dataset measured, so a gene panel
    that differs between datasets neither inflates nor deflates the rates of the measured genes.
    """

    def __init__(
        self,
        n_latent: int,
        n_genes: int,
        n_cat_list: list[int],
        *,
        n_layers: int = 1,
        n_hidden: int = 256,
        likelihood: Literal["nb", "zinb"] = "nb",
    ):
        super().__init__()
        self.likelihood = likelihood
        self.decoder = DecoderSCVI(n_latent, n_genes, n_cat_list=n_cat_list, n_layers=n_layers, n_hidden=n_hidden)
        self.log_theta = nn.Parameter(torch.randn(n_genes) * 0.1)

    def forward(
        self, z: torch.Tensor, library: torch.Tensor, feature_mask: torch.Tensor, *categoricals: torch.Tensor
    ) -> tuple[Distribution, torch.Tensor]:
        """Return ``(px, scale)``: the count distribution and the expression proportions (rows sum to 1)."""
        # DecoderSCVI's layers, without its forward: that also decodes the dropout logits (a genes-wide product) for
        # the negative binomial, which has none
        hidden = self.decoder.px_decoder(z, *categoricals)
        # the likelihood in float32 (under bf16 autocast the layers' outputs are bf16)
        scale = masked_normalize(self.decoder.px_scale_decoder(hidden).float(), feature_mask)
        rate = scale * library
        theta = self.log_theta.exp()
        if self.likelihood == "zinb":
            dropout_logits = self.decoder.px_dropout_decoder(hidden).float()
            px = ZeroInflatedNegativeBinomial(
                mu=rate, theta=theta, zi_logits=dropout_logits, scale=scale, validate_args=False
            )
            return px, scale
        return NegativeBinomial(mu=rate, theta=theta, scale=scale, validate_args=False), scale


class ATACDecoder(nn.Module):
    """Accessibility decoder with cell and region factors, as in PeakVI :cite:p:`ashuach2022peakvi`.

    ``p_cr = sigmoid(f(z, s))_r * sigmoid(region_r) * cell_c``; ``bernoulli`` on binarised peaks (default) or
    ``poisson`` on fragment counts with rate ``p_cr / sum_r p_cr * library_c``.
    """

    def __init__(
        self,
        n_latent: int,
        n_peaks: int,
        n_cat_list: list[int],
        *,
        n_layers: int = 1,
        n_hidden: int = 256,
        likelihood: Literal["bernoulli", "poisson"] = "bernoulli",
    ):
        super().__init__()
        self.likelihood = likelihood
        self.layers = FCLayers(n_latent, n_hidden, n_cat_list=n_cat_list, n_layers=n_layers, n_hidden=n_hidden)
        self.output = nn.Linear(n_hidden, n_peaks)
        self.region_logit = nn.Parameter(torch.zeros(n_peaks))

    def forward(
        self,
        z: torch.Tensor,
        cell_factor: torch.Tensor,
        library: torch.Tensor,
        feature_mask: torch.Tensor,
        *categoricals: torch.Tensor,
    ) -> tuple[Distribution, FactorBernoulli]:
        """Return ``(px, accessibility)``: the distribution, and the Bernoulli whose ``probs`` are the probabilities.

        The probabilities are computed when first read: training scores ``px.log_prob`` only, which does not need
        them for every peak.
        """
        logits = self.output(_hidden(self.layers, z, *categoricals)).float()
        accessibility = FactorBernoulli(logits, self.region_logit, cell_factor, validate_args=False)
        if self.likelihood == "bernoulli":
            return accessibility, accessibility
        rate = masked_normalize(accessibility.probs, feature_mask) * library + 1e-8
        return Poisson(rate, validate_args=False), accessibility


class CellFactorEncoder(nn.Module):
    """The PeakVI per-cell accessibility factor in ``(0, 1)``, encoded from the cell's own peaks."""

    def __init__(self, n_peaks: int, n_cat_list: list[int], *, n_hidden: int = 64):
        super().__init__()
        self.layers = FCLayers(n_peaks, n_hidden, n_cat_list=n_cat_list, n_layers=1, n_hidden=n_hidden)
        self.output = nn.Linear(n_hidden, 1)

    def forward(self, x: torch.Tensor, *categoricals: torch.Tensor) -> torch.Tensor:
        """Return the factor of shape ``(n_cells, 1)``."""
        return torch.sigmoid(self.output(_hidden(self.layers, x, *categoricals)).float())


class ProteinDecoder(nn.Module):
    """totalVI-style background/foreground negative binomial mixture :cite:p:`gayoso2021totalvi`.

    The background rate is learned per protein and batch; the foreground is the background times a factor
    ``>= 1`` decoded from ``z``; the mixing weight (probability of background) is decoded from ``z``.
    """

    def __init__(
        self,
        n_latent: int,
        n_proteins: int,
        n_batch: int,
        n_cat_list: list[int],
        *,
        n_layers: int = 1,
        n_hidden: int = 256,
        background_init: torch.Tensor | None = None,
    ):
        super().__init__()
        self.layers = FCLayers(n_latent, n_hidden, n_cat_list=n_cat_list, n_layers=n_layers, n_hidden=n_hidden)
        self.foreground = nn.Linear(n_hidden, n_proteins)
        self.mixing = nn.Linear(n_hidden, n_proteins)
        init = torch.zeros(n_proteins) if background_init is None else background_init.float()
        self.log_background = nn.Parameter(init.unsqueeze(-1).repeat(1, max(n_batch, 1)).clone())
        self.log_theta = nn.Parameter(torch.full((n_proteins,), 2.0))

    def forward(
        self, z: torch.Tensor, batch_index: torch.Tensor, *categoricals: torch.Tensor
    ) -> tuple[Distribution, dict[str, torch.Tensor]]:
        """Return ``(px, parts)`` with parts ``background``, ``foreground`` and ``mixing`` (background probability)."""
        hidden = _hidden(self.layers, z, *categoricals)
        background = self.log_background[:, batch_index.view(-1).long()].T.exp()
        background = background.expand(z.shape[:-1] + background.shape[-1:])
        foreground = background * (1.0 + F.softplus(self.foreground(hidden).float()) + 1e-4)
        mixing_logits = self.mixing(hidden).float()
        theta = self.log_theta.exp()
        px = NegativeBinomialMixture(
            mu1=background, mu2=foreground, theta1=theta, mixture_logits=mixing_logits, validate_args=False
        )
        parts = {"background": background, "foreground": foreground, "mixing": torch.sigmoid(mixing_logits)}
        return px, parts
