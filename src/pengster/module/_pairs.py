"""The terms of the interdependent ELBO: which posterior reconstructs which modality of which cell, and its weight.

Posterior 0 is the joint one, posterior ``1 + k`` the ``k``-th modality's own, and with an RNA bridge the last one
is the bridge's. Each posterior's ELBO enters the loss with a weight per cell (:func:`posterior_weights`).

``cross_terms="all"`` decodes every (posterior, modality) term of every cell: a multiome cell's peaks are decoded
three times. The two sampled variants keep the expectation of the reconstruction sum by importance sampling (a
drawn term is scored with the sum of the weights it stands for); the KL terms stay exact:

- ``"sampled"``: the joint term exactly, plus one cross term per measured modality of a cell, drawn in proportion
  to its weight (2 decodes instead of 3 on a multiome cell);
- ``"single"``: one term per measured modality of a cell, the joint one included in the draw (1 decode instead of 3).

With ``all`` and ``sampled`` the joint terms come first, one per cell that measured the modality. A head may also
score its cross terms (the pairs after those) on a random subset of its features in training
(``Head.cross_features``; ATAC's ``cross_peak_fraction``): the subset's sum times ``n_features / n_subset`` is an
unbiased estimate of the sum over all features ("reconstruction sampling", Dauphin, Glorot & Bengio, ICML 2011).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch.distributions import Distribution

CROSS_TERMS = ("all", "sampled", "single")


@dataclass
class Decoded:
    """Reconstruction terms of one modality decoded together: its pairs ``span``, scored on ``features``.

    ``features``: sorted indices of the features decoded (None: all); ``scale``: ``n_features / len(features)``,
    the factor that makes the subset's sum an unbiased estimate of the sum over every feature.
    """

    px: Distribution
    span: slice
    features: torch.Tensor | None = None
    scale: float = 1.0

    def select(self, values: torch.Tensor) -> torch.Tensor:
        """``values`` ``(..., n_features)`` at the decoded features."""
        return values if self.features is None else values[..., self.features]


def measured_rows(has: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Modality -> the indices (int64) of the cells that measured it, from ``has``' 0/1 flags ``(n_cells,)``."""
    return {modality: (flags > 0).nonzero().view(-1) for modality, flags in has.items()}


def posterior_weights(
    has: Mapping[str, torch.Tensor], modalities: Sequence[str], cross_weight: float, bridge: bool
) -> torch.Tensor:
    """Weight of each posterior's ELBO for each cell, shape ``(n_posteriors, n_cells)``.

    The joint ELBO has weight 1. A modality's own posterior has ``cross_weight`` where the cell measured it and at
    least one other modality (with one, its own posterior is the joint one: counted once). The bridge posterior has
    ``cross_weight`` where the cell measured RNA.
    """
    n_measured = sum(has[m].float() for m in modalities)
    several = (n_measured > 1).float()
    rows = [torch.ones_like(n_measured), *[cross_weight * has[m].float() * several for m in modalities]]
    if bridge:
        rows.append(cross_weight * has["rna"].float())
    return torch.stack(rows)


def pairs(
    has: Mapping[str, torch.Tensor],
    modalities: Sequence[str],
    weights: torch.Tensor,
    *,
    bridge: bool,
    sampled: bool,
    keep_joint: bool = False,
) -> dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Modality -> ``(posterior, cell, weight)`` of every reconstruction term to decode and score.

    With all terms, modality ``m`` of cell ``i`` is reconstructed from the joint posterior when the cell measured
    ``m``, from the posterior of each modality the cell measured when it measured at least two, and from the bridge
    posterior when it measured RNA; each term has its posterior's weight. ``sampled``: one of those posteriors
    (one of the non-joint ones, and the joint term as well, with ``keep_joint``), drawn with probability
    proportional to its weight; the drawn term has the sum of the weights of the posteriors it was drawn from.
    """
    # decoded whatever their weight (cross_weight=0 still decodes the cross terms, with weight 0)
    needed = posterior_weights(has, modalities, 1.0, bridge) > 0
    out = {}
    for modality in modalities:
        measured = has[modality] > 0
        candidates = needed & measured.unsqueeze(0)
        if not sampled:
            posterior, cell = torch.nonzero(candidates, as_tuple=True)
            out[modality] = (posterior, cell, weights[posterior, cell])
            continue
        if keep_joint:
            candidates = torch.cat([torch.zeros_like(candidates[:1]), candidates[1:]])
        posterior, cell, weight = _draw(weights * candidates)
        if keep_joint:
            joint_cell = measured.nonzero().view(-1)
            posterior = torch.cat([torch.zeros_like(joint_cell), posterior])
            cell, weight = torch.cat([joint_cell, cell]), torch.cat([weights[0, joint_cell], weight])
        out[modality] = (posterior, cell, weight)
    return out


def _draw(candidate_weights: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """For each cell with a positive total weight: one posterior drawn in proportion to its weight, and the total."""
    cumulative = candidate_weights.cumsum(0)
    total = cumulative[-1]
    cell = (total > 0).nonzero().view(-1)
    draw = torch.rand(cell.shape, device=total.device, dtype=total.dtype) * total[cell]
    # the first posterior whose cumulative weight exceeds the draw (zero-weight posteriors are never drawn)
    posterior = (cumulative[:, cell] <= draw).sum(0).clamp_max(len(candidate_weights) - 1)
    return posterior, cell, total[cell]


__all__ = ["CROSS_TERMS", "Decoded", "measured_rows", "pairs", "posterior_weights"]
