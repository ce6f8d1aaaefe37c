"""The RNA head: a negative binomial (or ZINB) decoder with the observed library size, as scVI's."""

from __future__ import annotations

from typing import Literal

import torch
from scvi.nn import DecoderSCVI
from torch import nn
from torch.distributions import Distribution

from pengster.distributions import SparseNegativeBinomial, SparseZeroInflatedNegativeBinomial

from ._head import HEADS, RNA_TARGET_SUM, Head, HeadInput, masked_normalize
from ._moments import count_moments, log1p_moments


def log_normalized(
    counts: torch.Tensor, feature_mask: torch.Tensor, target_sum: float = RNA_TARGET_SUM
) -> torch.Tensor:
    """log1p of counts per ``target_sum`` (10k) over the measured genes; unmeasured genes are 0."""
    counts = counts * feature_mask
    library = counts.sum(-1, keepdim=True).clamp_min(1.0)
    return torch.log1p(counts / library * target_sum)


class RNAHead(Head):
    """Negative binomial (or ZINB) counts with the observed library size, as in scVI :cite:p:`lopez2018scvi`.

    The expression proportions are renormalised over the genes the cell's dataset measured, so a gene panel that
    differs between datasets neither inflates nor deflates the rates of the measured genes. Reported scale: log1p of
    counts per 10k; linear scale: the proportions times ``library_size``.
    """

    name = "rna"
    OPTIONS = {"rna_likelihood": "likelihood"}
    reported_at_depth = True
    SCALE_OPTIONS = ("target_sum",)

    def __init__(
        self,
        n_features,
        n_input,
        n_cat_list,
        *,
        n_hidden,
        n_layers,
        likelihood: Literal["nb", "zinb"] = "nb",
        **_,
    ):
        super().__init__(n_features, n_input, n_cat_list, n_hidden=n_hidden, n_layers=n_layers, **_)
        if likelihood not in ("nb", "zinb"):
            raise ValueError(f"rna_likelihood={likelihood!r}; pass 'nb' or 'zinb'.")
        self.likelihood = likelihood
        self.decoder = DecoderSCVI(
            n_input, n_features, n_cat_list=list(n_cat_list), n_layers=n_layers, n_hidden=n_hidden
        )
        self.log_theta = nn.Parameter(torch.randn(n_features) * 0.1)

    def encoder_input(self, counts, feature_mask):
        """log1p of counts per 10k (see ``log_normalized``)."""
        return log_normalized(counts, feature_mask)

    def observed(self, counts, feature_mask, *, target_sum=RNA_TARGET_SUM):
        """log1p of counts per ``target_sum`` (10k)."""
        return log_normalized(counts, feature_mask, target_sum)

    def forward(self, z: torch.Tensor, inputs: HeadInput) -> Distribution:
        """NB (or ZINB) with rate ``scale * library``; ``px.scale`` holds the proportions (rows sum to 1).

        The distributions are scvi-tools' with a ``log_prob`` that evaluates ``lgamma`` only at non-zero counts
        (:class:`~pengster.distributions.SparseNegativeBinomial`): most counts of single-cell RNA are zero.
        """
        # DecoderSCVI's layers, without its forward: that also decodes the dropout logits (a genes-wide product) for
        # the negative binomial, which has none
        hidden = self.decoder.px_decoder(z, *inputs.categoricals)
        # the likelihood in float32 (under bf16 autocast the layers' outputs are bf16)
        scale = masked_normalize(self.decoder.px_scale_decoder(hidden).float(), inputs.feature_mask)
        rate = scale * inputs.library
        theta = self.log_theta.exp()
        if self.likelihood == "zinb":
            dropout_logits = self.decoder.px_dropout_decoder(hidden).float()
            return SparseZeroInflatedNegativeBinomial(
                mu=rate, theta=theta, zi_logits=dropout_logits, scale=scale, validate_args=False
            )
        return SparseNegativeBinomial(mu=rate, theta=theta, scale=scale, validate_args=False)

    def reported(self, px, inputs, *, variance=False, denoised=False, target_sum=RNA_TARGET_SUM, depth=None):
        """log1p of counts per ``target_sum``, as one measurement at ``depth`` counts would read; and its variance.

        With ``depth``: the expectation of ``log1p(x / depth * target_sum)`` over the decoded count distribution
        at that depth, and its variance (``pengster.module._moments.log1p_moments``), which is what a cell
        measured at that depth reads on average; below a few counts per gene it is well under the log of the
        expected count. Without: ``log1p`` of the decoded proportions times ``target_sum`` (the denoised value),
        and the variance at depth ``target_sum`` by the delta method.
        """
        zi_logits = px.zi_logits if isinstance(px, SparseZeroInflatedNegativeBinomial) else None
        if depth is not None:
            mean, spread = log1p_moments(px.scale * depth, px.theta, target_sum / depth, zi_logits)
            return mean, spread if variance else None
        value = torch.log1p(px.scale * target_sum)
        if not variance:
            return value, None
        arguments = {"mu": px.scale * target_sum, "theta": px.theta, "zi_logits": zi_logits}
        arguments = {key: value for key, value in arguments.items() if value is not None}
        _, count_variance = count_moments(px.__class__(**arguments, validate_args=False))
        slope = 1 / (1 + px.scale * target_sum)
        return value, count_variance * slope**2

    def normalized(self, px, inputs, *, library_size=None):
        """The proportions times ``library_size`` (scVI's ``scale``); None: the rate at the decoded library (``mu``)."""
        return px.mu if library_size is None else px.scale * library_size


HEADS[RNAHead.name] = RNAHead
