"""Reusable layers: encoder moments, fusion of experts, contrastive heads, MMD."""

from ._contrastive import LogitScale, ProjectionHead, symmetric_info_nce
from ._encoders import encoder_moments
from ._fusion import product_of_experts
from ._mmd import gaussian_mmd, group_mmd

__all__ = [
    "LogitScale",
    "ProjectionHead",
    "encoder_moments",
    "gaussian_mmd",
    "group_mmd",
    "product_of_experts",
    "symmetric_info_nce",
]
