"""Reusable layers: encoders, decoders, fusion of experts, contrastive heads, MMD."""

from ._cell_factor import CellFactorPredictor
from ._contrastive import LogitScale, ProjectionHead, symmetric_info_nce
from ._decoders import ATACDecoder, CellFactorEncoder, ProteinDecoder, RNADecoder, masked_normalize
from ._encoders import encoder_moments
from ._fusion import product_of_experts
from ._mmd import gaussian_mmd, group_mmd

__all__ = [
    "ATACDecoder",
    "CellFactorEncoder",
    "CellFactorPredictor",
    "LogitScale",
    "ProjectionHead",
    "ProteinDecoder",
    "RNADecoder",
    "encoder_moments",
    "gaussian_mmd",
    "group_mmd",
    "masked_normalize",
    "product_of_experts",
    "symmetric_info_nce",
]
