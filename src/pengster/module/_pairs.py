"""The terms of the interdependent ELBO: which posterior reconstructs which modality of which cell, and its weight.

Posterior 0 is the joint one, posterior ``1 + k`` the ``k``-th modality's own, and with an RNA bridge the last one
is the bridge's. Each posterior's ELBO enters the loss with a weight per cell (:func:`posterior_weights`).

``cross_terms="all"`` decodes every (posterior, modality) term of every cell: a multiome cell's peaks are decoded
three times. ``"sampled"`` decodes each measured modality of a cell once, from one posterior drawn with probability
proportional to its weight, and scores it with the sum of the weights (importance sampling): the reconstruction sum
keeps its expectation, the decoders do a third of the work on a multiome cell. The KL terms stay exact.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

CROSS_TERMS = ("all", "sampled")


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


def _needed(has: Mapping[str, torch.Tensor], modalities: Sequence[str], bridge: bool) -> torch.Tensor:
    """Posteriors decoded for each cell ``(n_posteriors, n_cells)``, whatever their weight (see :func:`pairs`)."""
    measured = torch.stack([has[m] > 0 for m in modalities])
    several = measured.sum(0) > 1
    rows = [torch.ones_like(measured[:1]), measured & several]
    if bridge:
        rows.append(measured[list(modalities).index("rna")].unsqueeze(0))
    return torch.cat(rows)


def pairs(
    has: Mapping[str, torch.Tensor],
    modalities: Sequence[str],
    weights: torch.Tensor,
    *,
    bridge: bool,
    sampled: bool,
) -> dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Modality -> ``(posterior, cell, weight)`` of every reconstruction term to decode and score.

    With all terms, modality ``m`` of cell ``i`` is reconstructed from the joint posterior when the cell measured
    ``m``, from the posterior of each modality the cell measured when it measured at least two, and from the bridge
    posterior when it measured RNA; each term has its posterior's weight. Sampled: one of those posteriors, drawn
    with probability proportional to its weight, and the term has the sum of their weights.
    """
    needed = _needed(has, modalities, bridge)
    out = {}
    for modality in modalities:
        measured = has[modality] > 0
        candidates = needed & measured.unsqueeze(0)
        if not sampled:
            posterior, cell = torch.nonzero(candidates, as_tuple=True)
            out[modality] = (posterior, cell, weights[posterior, cell])
            continue
        candidate_weights = weights * candidates
        cumulative = candidate_weights.cumsum(0)
        total = cumulative[-1]
        cell = (total > 0).nonzero().view(-1)
        draw = torch.rand(cell.shape, device=total.device, dtype=total.dtype) * total[cell]
        # the first posterior whose cumulative weight exceeds the draw (zero-weight posteriors are never drawn)
        posterior = (cumulative[:, cell] <= draw).sum(0).clamp_max(len(weights) - 1)
        out[modality] = (posterior, cell, total[cell])
    return out


__all__ = ["CROSS_TERMS", "pairs", "posterior_weights"]
