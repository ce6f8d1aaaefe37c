"""User-facing models."""

from ._jointvae import JointVAE
from ._legacy import convert_legacy

__all__ = ["JointVAE", "convert_legacy"]
