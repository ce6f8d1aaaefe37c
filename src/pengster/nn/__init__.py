"""Reusable layers: decoders, fusion of experts, contrastive heads."""

from ._cell_factor import CellFactorPredictor
from ._contrastive import LogitScale, ProjectionHead, symmetric_info_nce
from ._decoders import ATACDecoder, CellFactorEncoder, ProteinDecoder, RNADecoder, masked_normalize
from ._fused import FactorBernoulli, factor_bernoulli_nll, reconstruction_nll
from ._fusion import product_of_experts
from ._mmd import gaussian_mmd, group_mmd

__all__ = [
    "ATACDecoder",
    "CellFactorEncoder",
    "CellFactorPredictor",
    "FactorBernoulli",
    "LogitScale",
    "ProjectionHead",
    "ProteinDecoder",
    "RNADecoder",
    "factor_bernoulli_nll",
    "gaussian_mmd",
    "group_mmd",
    "masked_normalize",
    "product_of_experts",
    "reconstruction_nll",
    "symmetric_info_nce",
]
