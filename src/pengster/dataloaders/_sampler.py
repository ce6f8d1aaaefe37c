"""A batch sampler whose minibatches hold cells of every dataset of a mosaic."""

from __future__ import annotations

import numpy as np
from torch.utils.data import Sampler


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
