"""Torch modules (scvi-tools ``BaseModuleClass``)."""

from ._jointvae import JointVAEModule

__all__ = ["JointVAEModule"]
