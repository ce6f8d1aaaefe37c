"""User-facing models."""

from ._jointvae import JointVAE

__all__ = ["JointVAE"]
