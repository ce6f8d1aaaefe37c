"""Minibatches that hold cells of every dataset of a mosaic."""

from __future__ import annotations

import numpy as np
import torch
from scvi import settings
from scvi.data import AnnDataManager
from scvi.dataloaders import DataSplitter
from torch.utils.data import DataLoader, Sampler

from pengster._constants import REGISTRY_KEYS


class MosaicBatchSampler(Sampler):
    """Yield minibatches of positions in which every stratum (dataset) has its share of cells.

    Each epoch, every stratum is shuffled and split into the same number of chunks; minibatch ``k`` is chunk ``k``
    of every stratum. A stratum with fewer cells than there are minibatches is resampled so that each minibatch
    still holds at least one of its cells.

    Parameters
    ----------
    strata
        Array of shape ``(n_cells,)``: the stratum code of each position of the dataset.
    batch_size
        Target minibatch size.
    seed
        Seed of the shuffling (each epoch draws from one generator).
    num_replicas, rank
        For distributed training: each rank gets every ``num_replicas``-th minibatch, from the same shuffle.
    """

    def __init__(self, strata: np.ndarray, batch_size: int, *, seed: int = 0, num_replicas: int = 1, rank: int = 0):
        self.groups = [np.flatnonzero(strata == code) for code in np.unique(strata)]
        # at most n // 2 minibatches: a one-cell minibatch breaks batch normalisation in training mode
        self.n_batches = max(1, min(int(np.ceil(len(strata) / batch_size)), len(strata) // 2))
        # without a seed (scvi.settings.seed = None), draw one, so that set_epoch still has a base to derive from
        self.seed = seed if seed is not None else int(np.random.SeedSequence().entropy % 2**63)
        self.rng = np.random.default_rng(self.seed)
        self.num_replicas = num_replicas
        self.rank = rank

    def set_epoch(self, epoch: int) -> None:
        """Draw this epoch's shuffle from ``(seed, epoch)`` alone (Lightning calls it): a resumed run repeats it."""
        self.rng = np.random.default_rng([self.seed, epoch])

    def __len__(self) -> int:
        return len(range(self.rank, self.n_batches, self.num_replicas))

    def __iter__(self):
        chunks = []
        for group in self.groups:
            order = self.rng.permutation(group)
            if len(order) < self.n_batches:
                order = np.concatenate([order, self.rng.choice(group, self.n_batches - len(order))])
            chunks.append(np.array_split(order, self.n_batches))
        for index in range(self.rank, self.n_batches, self.num_replicas):
            batch = np.sort(np.concatenate([chunk[index] for chunk in chunks])).tolist()
            yield batch * 2 if len(batch) == 1 else batch  # a single training cell: see it twice


class MosaicDataSplitter(DataSplitter):
    """scvi-tools' :class:`~scvi.dataloaders.DataSplitter` whose training loader uses :class:`MosaicBatchSampler`.

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
        from ._device_loader import loader_from_manager

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
