"""Torch modules (scvi-tools ``BaseModuleClass``) and the modality heads they are built from."""

from pengster._constants import Modality

from ._atac import ATACHead
from ._head import Head, HeadInput, register_modality, unregister_modality
from ._jointvae import JointVAEModule
from ._protein import ProteinHead
from ._readout import Posterior
from ._rna import RNAHead

__all__ = [
    "ATACHead",
    "Head",
    "HeadInput",
    "JointVAEModule",
    "Modality",
    "Posterior",
    "ProteinHead",
    "RNAHead",
    "register_modality",
    "unregister_modality",
]
