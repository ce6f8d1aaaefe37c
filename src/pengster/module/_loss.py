"""The loss of :class:`~pengster.module.JointVAEModule`: the interdependent ELBO plus the alignment terms.

Every likelihood is read in one place, ``-(px.log_prob(x) * mask).sum(-1)``, over the reconstruction pairs of
``module/_pairs.py`` (on a subset of features, scaled, where a head scores its cross terms on one).
"""

from __future__ import annotations

import torch
from scvi.module.base import LossOutput
from torch.distributions import Normal, kl_divergence

from pengster._constants import REGISTRY_KEYS

from . import _pairs
from ._alignment import contrastive_loss, mixing_loss
from ._bridge import alignment_kl
from ._constants import MODULE_KEYS


def interdependent_elbo(module, tensors, inference_outputs, generative_outputs, kl_weight: float = 1.0) -> LossOutput:
    """The negative ELBO of the joint posterior and of each measured modality's own, plus contrastive and MMD terms.

    ``module`` is a :class:`~pengster.module.JointVAEModule`; the other arguments are those of its ``loss``. Each
    posterior's ELBO is weighted per cell (``module/_pairs.py``); the reported
    reconstruction losses are the joint posterior's.
    """
    has = inference_outputs[MODULE_KEYS.HAS]
    panel = tensors[REGISTRY_KEYS.PANEL].long()
    qz = inference_outputs[MODULE_KEYS.QZ]
    n_cells = qz.loc.shape[1]
    weights = _pairs.posterior_weights(has, module.modalities, module.cross_weight, module.bridge_weight > 0)
    prior = Normal(torch.zeros_like(qz.loc), torch.ones_like(qz.scale), validate_args=False)
    kl = kl_divergence(qz, prior).sum(-1)
    per_cell = kl_weight * (weights * kl).sum(0)
    reconstruction = {}
    for modality in module.modalities:
        posterior, cell, weight = generative_outputs[MODULE_KEYS.PAIRS][modality]
        joint_nll = qz.loc.new_zeros(n_cells)
        for part in generative_outputs[MODULE_KEYS.PX][modality] or ():
            rows = cell[part.span]
            x = module.heads[modality].scored(part.select(tensors[REGISTRY_KEYS.counts(modality)][rows]))
            mask = part.select(module.feature_mask(modality, panel[rows]))
            weighted = part.scale * weight[part.span] * -(part.px.log_prob(x) * mask).sum(-1)
            per_cell = per_cell.index_add(0, rows, weighted)
            # the joint term (weight 1): exact, or its importance-weighted estimate when the terms are sampled
            joint_nll = joint_nll.index_add(0, rows, torch.where(posterior[part.span] == 0, weighted, 0.0))
        reconstruction[modality] = joint_nll

    bridge_kl = qz.loc.new_zeros(n_cells)
    if module.bridge_weight > 0:
        joint, bridge = (Normal(qz.loc[i], qz.scale[i], validate_args=False) for i in (0, -1))
        bridge_kl = alignment_kl(joint, bridge, has["rna"])
        per_cell = per_cell + module.bridge_weight * kl_weight * bridge_kl

    rows = inference_outputs[MODULE_KEYS.ROWS]
    contrastive = contrastive_loss(module, inference_outputs[MODULE_KEYS.EXPERTS], has, rows)
    mixing = mixing_loss(module, qz.loc[0], panel)
    loss = per_cell.mean() + module.contrastive_weight * contrastive + module.mixing_weight * mixing
    return LossOutput(
        loss=loss,
        reconstruction_loss={f"reconstruction_{m}": value for m, value in reconstruction.items()},
        kl_local={"kl_joint": kl[0]},
        extra_metrics={
            "contrastive": contrastive.detach(),
            "mixing_mmd": mixing.detach(),
            "bridge_kl": bridge_kl.detach().mean(),
            "inverse_temperature": module.logit_scale().detach(),
        },
    )
