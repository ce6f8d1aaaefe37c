"""Reusable layers: decoders, fusion of experts, contrastive heads."""

from ._contrastive import LogitScale, ProjectionHead, symmetric_info_nce
from ._decoders import ATACDecoder, CellFactorEncoder, ProteinDecoder, RNADecoder, masked_normalize
from ._fused import FactorBernoulli, factor_bernoulli_nll, reconstruction_nll
from ._fusion import product_of_experts
from ._pair_nll import pair_nll
from ._sparse import SparseRows, column_major_, encoder_sparse, fc_layers_sparse, first_linear

__all__ = [
    "ATACDecoder",
    "CellFactorEncoder",
    "FactorBernoulli",
    "LogitScale",
    "ProjectionHead",
    "ProteinDecoder",
    "SparseRows",
    "RNADecoder",
    "factor_bernoulli_nll",
    "column_major_",
    "encoder_sparse",
    "fc_layers_sparse",
    "first_linear",
    "masked_normalize",
    "pair_nll",
    "product_of_experts",
    "reconstruction_nll",
    "symmetric_info_nce",
]
