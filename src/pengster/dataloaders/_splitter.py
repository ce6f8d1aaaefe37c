"""Train/validation splits and loaders whose minibatches hold cells of every dataset of a mosaic."""

from __future__ import annotations

import numpy as np
import torch
from scvi import settings
from scvi.data import AnnDataManager
from scvi.dataloaders import DataSplitter
from torch.utils.data import DataLoader

from pengster._constants import REGISTRY_KEYS

from ._device_loader import loader_from_manager
from ._sampler import MosaicBatchSampler


class MosaicDataSplitter(DataSplitter):
    """scvi-tools' ``DataSplitter`` whose training loader uses :class:`~pengster.dataloaders.MosaicBatchSampler`.

    The validation split is stratified by dataset too, so that every dataset is scored in early stopping.
    """

    def __init__(self, adata_manager: AnnDataManager, *, device_loader: dict | None = None, **kwargs):
        kwargs.pop("distributed_sampler", None)
        super().__init__(adata_manager, **kwargs)
        self.device_loader = device_loader

    def _strata(self) -> np.ndarray:
        return np.asarray(self.adata_manager.get_from_registry(REGISTRY_KEYS.PANEL)).ravel()

    def setup(self, stage: str | None = None):
        """Split each dataset into train and validation cells in the same proportions."""
        super().setup(stage)
        if self.external_indexing is None and len(self.train_idx) == 0:
            # scvi-tools moves a last minibatch of 1-2 cells to validation; with so few cells, train on all of them
            self.train_idx, self.val_idx = np.arange(self.adata_manager.adata.n_obs), np.array([], dtype=int)
        if self.external_indexing is not None or len(self.val_idx) == 0:
            return
        strata = self._strata()
        rng = np.random.RandomState(seed=settings.seed)
        train, val = [], []
        fraction = self.n_val / (self.n_val + self.n_train)
        for code in np.unique(strata):
            cells = rng.permutation(np.flatnonzero(strata == code))
            n_val = int(round(fraction * len(cells))) if len(cells) > 1 else 0
            val.append(cells[:n_val])
            train.append(cells[n_val:])
        self.train_idx, self.val_idx = np.concatenate(train), np.concatenate(val)

    def train_dataloader(self):
        """Training loader with one share of every dataset in each minibatch."""
        if self.device_loader is not None:
            return self._device_minibatches(self.train_idx, shuffle=True)
        batch_size = self.data_loader_kwargs.get("batch_size") or settings.batch_size
        kwargs = {k: v for k, v in self.data_loader_kwargs.items() if k not in ("batch_size", "shuffle")}
        num_replicas, rank = 1, 0
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            num_replicas, rank = torch.distributed.get_world_size(), torch.distributed.get_rank()
        sampler = MosaicBatchSampler(
            self._strata()[self.train_idx],
            batch_size,
            seed=settings.seed,
            num_replicas=num_replicas,
            rank=rank,
        )
        dataset = self.adata_manager.create_torch_dataset(
            indices=self.train_idx, load_sparse_tensor=self.load_sparse_tensor
        )
        kwargs.pop("drop_last", None)
        kwargs.setdefault("num_workers", settings.dl_num_workers)
        # batch_size=None: the sampler yields whole minibatches, fetched by one __getitem__ (fast on sparse rows)
        return DataLoader(dataset, sampler=sampler, batch_size=None, pin_memory=self.pin_memory, **kwargs)

    def val_dataloader(self):
        """Validation loader (scvi-tools', or the device loader in order)."""
        if self.device_loader is not None and len(self.val_idx) > 0:
            return self._device_minibatches(self.val_idx, shuffle=False)
        return super().val_dataloader()

    def _device_minibatches(self, indices: np.ndarray, *, shuffle: bool):
        batch_size = self.data_loader_kwargs.get("batch_size") or settings.batch_size
        return loader_from_manager(
            self.adata_manager,
            indices=indices,
            strata=self._strata(),
            batch_size=batch_size,
            device=self.trainer.strategy.root_device if self.trainer is not None else "cpu",
            shuffle=shuffle,
            seed=settings.seed,
            **self.device_loader,
        )
