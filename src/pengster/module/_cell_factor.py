"""The PeakVI cell factor of the ATAC likelihood: encoded where ATAC was measured, else a running mean or a prediction.

Training updates two running statistics besides the weights, both here and only from the training plan
(:meth:`~pengster.module.JointVAEModule.update_running_statistics`): the mean encoded factor, which decodes ATAC for
cells without it, and the regression (:class:`~pengster.nn.CellFactorPredictor`) that predicts their factor from the
depth of their other modalities.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

from ._constants import MODULE_KEYS
from ._inputs import ENCODER_INPUTS

MEAN_RATE = 0.01
"""Weight of a training minibatch in the running mean of the encoded cell factors."""


def encoded_cell_factor(
    module, x_atac: torch.Tensor, panel: torch.Tensor, categoricals: Sequence[torch.Tensor], rows: torch.Tensor
) -> torch.Tensor:
    """Cell factor ``(n_cells, 1)``: encoded from the peaks of the cells ``rows``, the running mean elsewhere."""
    # a copy: the running mean changes after the forward pass (update_statistics), before the backward pass
    factor = module.atac_cell_factor_mean.expand(panel.shape[0], 1).clone()
    if rows.numel() == 0:
        return factor
    mask = module.feature_mask("atac", panel[rows])
    encoder_input = ENCODER_INPUTS["atac"](x_atac[rows].float(), mask)
    own = module.cell_factor_encoder(encoder_input, *[c[rows] for c in categoricals])
    return factor.index_copy(0, rows, own.float())


def depth_inputs(module, library, has, use: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """Log library sizes of the depth sources and whether each is used for each cell, both ``(n_cells, n_sources)``."""
    log_library = torch.cat([library[m].log() for m in module.depth_sources], -1)
    present = torch.stack([has[m].float() * float(m in use) for m in module.depth_sources], -1)
    return log_library, present


@torch.no_grad()
def update_statistics(module, inference_outputs: Mapping) -> None:
    """Fold a training minibatch's encoded cell factors into the running mean and the regression's moments."""
    if "atac" not in module.modalities:
        return
    has, rows = inference_outputs[MODULE_KEYS.HAS], inference_outputs[MODULE_KEYS.ROWS]
    cell_factor = inference_outputs[MODULE_KEYS.CELL_FACTOR]
    if rows["atac"].numel() > 0:
        module.atac_cell_factor_mean.lerp_(cell_factor[rows["atac"]].mean(), MEAN_RATE)
    if not module.depth_sources:
        return
    log_library, present = depth_inputs(module, inference_outputs[MODULE_KEYS.LIBRARY], has, module.depth_sources)
    # cells with ATAC and at least one depth source
    cells = ((has["atac"] > 0) & (present > 0).any(-1)).nonzero().view(-1)
    if cells.numel() > 0:
        module.cell_factor_predictor.update(log_library[cells], present[cells], cell_factor[cells])
