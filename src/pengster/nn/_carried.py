"""A tensor that carries something derived from it (its nonzero entries, its host copy) until it is changed in place.

The device loader builds each minibatch from data it already holds on the host; what it knows travels with the
tensors it yields, so the module need not compute it again from the device. A tensor derived from the carrier (a
copy, a slice) carries nothing, and the carrier changed in place (its version counter moved) no longer does.
"""

from __future__ import annotations

from typing import Any

import torch


def carry(tensor: torch.Tensor, key: str, payload: Any) -> torch.Tensor:
    """Let ``tensor`` carry ``payload`` under ``key``; return ``tensor``."""
    setattr(tensor, key, (payload, tensor._version))
    return tensor


def carried(tensor: torch.Tensor, key: str) -> Any:
    """What ``tensor`` carries under ``key``, or None (nothing, or ``tensor`` was changed in place since)."""
    entry = getattr(tensor, key, None)
    if entry is None or entry[1] != tensor._version:
        return None
    return entry[0]
