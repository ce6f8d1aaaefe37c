"""Keep Lightning's start-up banners and a deprecation inside its own code out of pengster's training output."""

from __future__ import annotations

import contextlib
import logging
import re
import warnings
from collections.abc import Iterator

_BANNER = re.compile(r"(GPU|TPU|HPU) available: |LOCAL_RANK: \d+ - |💡 Tip: ")
"""Lines Lightning logs on every fit: the device report and its advertisements."""

_BANNER_LOGGERS = (
    "lightning.pytorch.utilities.rank_zero",  # rank_zero_info: devices and tips
    "lightning.fabric.utilities.rank_zero",
    "lightning.pytorch.accelerators.cuda",  # LOCAL_RANK: 0 - CUDA_VISIBLE_DEVICES
)

LEAFSPEC_DEPRECATION = r"`isinstance\(treespec, LeafSpec\)` is deprecated"
"""A FutureWarning torch raises from Lightning's own code (lightning/pytorch/utilities/_pytree.py), not the user's."""


class _DropBanners(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return _BANNER.match(record.getMessage()) is None


@contextlib.contextmanager
def quiet_lightning() -> Iterator[None]:
    """Drop Lightning's banners and its ``LeafSpec`` deprecation for the duration of the block only.

    A filter is added to the loggers that emit the banners and removed on exit, and the warning filter lives in a
    ``warnings.catch_warnings()`` block: loggers and ``warnings.filters`` are as they were once the block ends. Every
    other message of Lightning (early stopping, warnings about the user's settings) passes.
    """
    banners = _DropBanners()
    loggers = [logging.getLogger(name) for name in _BANNER_LOGGERS]
    for logger in loggers:
        logger.addFilter(banners)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=LEAFSPEC_DEPRECATION, category=FutureWarning)
            yield
    finally:
        for logger in loggers:
            logger.removeFilter(banners)
