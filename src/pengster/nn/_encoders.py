"""The moments of a Gaussian encoder, without building a distribution."""

from __future__ import annotations

import torch
from scvi.nn import Encoder


def encoder_moments(
    encoder: Encoder, x: torch.Tensor, *categoricals: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and variance, each ``(n_cells, n_latent)`` in float32, of scvi-tools' ``Encoder``.

    The same layers as scvi-tools' ``Encoder.forward``, without the ``Normal`` it builds (whose argument checks would
    reject a non-finite mean before the loss can say where it started) and without its latent draw (the module
    draws from the fused posterior). Under bf16 autocast the layers run in bf16; the moments are cast to float32.
    """
    hidden = encoder.encoder(x, *categoricals)
    mean = encoder.mean_encoder(hidden)
    variance = encoder.var_activation(encoder.var_encoder(hidden)) + encoder.var_eps
    return mean.float(), variance.float()
