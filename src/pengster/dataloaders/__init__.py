"""Minibatches of a mosaic: every dataset in every minibatch, gathered on the training device from CSR matrices."""

from ._device_loader import DeviceMinibatchLoader
from ._sampler import MosaicBatchSampler
from ._splitter import MosaicDataSplitter

__all__ = ["DeviceMinibatchLoader", "MosaicBatchSampler", "MosaicDataSplitter"]
