"""The RNA bridge of a mosaic: an encoder of the genes that every dataset measured, shared by all datasets.

Two runs with different gene panels (a multiome run and a CITE-seq run, say) are linked only by the genes both
measured. The RNA encoder sees each dataset's whole panel and is told the dataset, so nothing stops it from placing
the runs in separate parts of the latent space. The bridge encoder sees only the shared genes and is not told the
dataset: similar cells of different runs get similar bridge posteriors. Its own ELBO term (it must reconstruct all of
a cell's measured modalities) makes it a real posterior, and a KL term pulls each cell's joint posterior towards its
bridge posterior (which receives no gradient from that term), so the runs meet where their shared genes say they
should.
"""

from __future__ import annotations

import torch
from torch.distributions import Normal, kl_divergence

from pengster.nn import encoder_moments, product_of_experts

from ._rna import log_normalized

MIN_SHARED_GENES = 10
"""Fewer shared genes than this make no bridge (it could not tell cell types apart)."""


def shared_genes(rna_masks: torch.Tensor) -> torch.Tensor:
    """The genes measured by every panel, shape ``(n_genes,)``; panels without RNA have all-ones rows."""
    return rna_masks.float().prod(0)


def needs_bridge(rna_masks: torch.Tensor) -> bool:
    """Whether the panels measured different genes and share at least :data:`MIN_SHARED_GENES` of them."""
    shared = shared_genes(rna_masks)
    differ = bool((rna_masks.float() != shared).any())
    return rna_masks.shape[0] > 1 and differ and int(shared.sum()) >= MIN_SHARED_GENES


def alignment_kl(joint: Normal, bridge: Normal, has_rna: torch.Tensor) -> torch.Tensor:
    """Per-cell ``KL(q_joint || q_bridge)`` summed over latent dimensions, 0 for cells without RNA.

    The bridge posterior is detached: this term moves the joint posterior only.
    """
    target = Normal(bridge.loc.detach(), bridge.scale.detach(), validate_args=False)
    return kl_divergence(joint, target).sum(-1) * has_rna.float()


def bridge_posterior(
    module, x_rna: torch.Tensor, has_rna: torch.Tensor, panel: torch.Tensor, rows: torch.Tensor | None = None
) -> Normal:
    """The bridge encoder's posterior (with the prior expert) from the shared genes; the prior for cells without RNA.

    ``module`` is a :class:`~pengster.module.JointVAEModule` with a bridge (``bridge_weight > 0``).
    """
    n_cells = panel.shape[0]
    mean = x_rna.new_zeros(n_cells, module.n_latent, dtype=torch.float32)
    variance = torch.ones_like(mean)
    rows = has_rna.nonzero().view(-1) if rows is None else rows
    if rows.numel() > 0:
        mask = module.bridge_mask * module.feature_mask("rna", panel[rows])
        own_mean, own_variance = encoder_moments(module.bridge_encoder, log_normalized(x_rna[rows].float(), mask))
        mean = mean.index_copy(0, rows, own_mean)
        variance = variance.index_copy(0, rows, own_variance)
    return product_of_experts([mean], [variance], [has_rna.float()])
