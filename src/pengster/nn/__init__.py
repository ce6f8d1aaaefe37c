"""Reusable layers: decoders, fusion of experts, contrastive heads."""

from ._contrastive import LogitScale, ProjectionHead, symmetric_info_nce
from ._decoders import ATACDecoder, CellFactorEncoder, ProteinDecoder, RNADecoder, masked_normalize
from ._fusion import product_of_experts

__all__ = [
    "ATACDecoder",
    "CellFactorEncoder",
    "LogitScale",
    "ProjectionHead",
    "ProteinDecoder",
    "RNADecoder",
    "masked_normalize",
    "product_of_experts",
    "symmetric_info_nce",
]
