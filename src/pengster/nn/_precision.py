"""Mixed precision: under bf16 autocast (``train(precision="bf16-mixed")``) only the networks' layers run in bf16.

The networks' outputs are cast to float32 where they are read (encoder means and variances, decoder logits), and the
loss (likelihood sums, KL terms, contrastive similarities, MMD kernels) runs with autocast off.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

AUTOCAST_DEVICES = ("cpu", "cuda", "mps", "xpu")
"""Device types whose autocast :func:`autocast_off` turns off (Lightning's autocast is the training device's)."""


@contextlib.contextmanager
def autocast_off() -> Iterator[None]:
    """Turn off autocast where it is on (float32 matrix products inside); usable as a decorator."""
    with contextlib.ExitStack() as stack:
        for device in AUTOCAST_DEVICES:
            if torch.is_autocast_enabled(device):
                stack.enter_context(torch.autocast(device, enabled=False))
        yield
