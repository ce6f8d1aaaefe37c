"""Torch modules (scvi-tools ``BaseModuleClass``) and the modality heads they are built from."""

from ._head import HEADS, Head, HeadInput, register_modality, unregister_modality
from ._jointvae import JointVAEModule

__all__ = ["HEADS", "Head", "HeadInput", "JointVAEModule", "register_modality", "unregister_modality"]
