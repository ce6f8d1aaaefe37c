"""Minibatches gathered on the training device from CSR count matrices: no per-row Python, no full densification.

scvi-tools' loader densifies each minibatch row by row on the host and copies it to the device. Here each count
matrix is kept as its CSR arrays (``indptr``, ``indices``, ``data``) and a minibatch is gathered and densified by a
few vectorised tensor operations on the device itself. Two modes:

- *resident*: the whole matrix lives on the device (the GPU when it fits, else host memory for CPU training); every
  epoch draws minibatches from the whole training set.
- *chunked* (out of core): contiguous blocks of rows are read (from memory or from a backed h5ad/h5mu) into pinned
  host memory, copied to the device in one transfer, and minibatches are drawn inside the block; the block order is
  shuffled every epoch. Host memory holds one or two blocks, never the matrix.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator, Mapping, Sequence

import numpy as np
import torch

from ._blocks import DeviceBlock, RowSource
from ._sampler import MosaicBatchSampler

logger = logging.getLogger(__name__)

_GPU_FRACTION = 0.5
"""Resident mode on a GPU takes at most this fraction of its free memory for the data."""


class DeviceMinibatchLoader:
    """Iterable of minibatches (registry key -> tensor on ``device``) for Lightning, replacing a DataLoader.

    Parameters
    ----------
    matrices
        Registry key -> count matrix (see ``RowSource`` in ``dataloaders/_blocks.py``), all with the same rows.
    obs
        Registry key -> array of shape ``(n_cells, k)`` (batch, panel, covariates, modality flags).
    indices
        Rows (cells) this loader serves, e.g. the training split.
    strata
        Array of shape ``(n_cells,)``: dataset of every row; each minibatch holds every stratum (see
        :class:`~pengster.dataloaders.MosaicBatchSampler`).
    batch_size
        Cells per minibatch.
    device
        Where minibatches are built.
    shuffle
        Shuffle every epoch (training); without it, minibatches follow ``indices`` in order (validation, inference).
    resident
        Keep whole matrices on the device. None: when they fit (in half the free GPU memory, or always on CPU
        for in-memory data; backed data on CPU is read in chunks).
    chunk_cells
        Rows per block in chunked mode.
    binary_keys
        Registry keys read as binary (nonzero or not).
    seed, num_replicas, rank
        Shuffling seed; distributed training splits every epoch's minibatches between ranks.
    """

    def __init__(
        self,
        matrices: Mapping[str, object],
        obs: Mapping[str, np.ndarray],
        *,
        indices: np.ndarray,
        strata: np.ndarray,
        batch_size: int,
        device: torch.device | str,
        shuffle: bool = True,
        resident: bool | None = None,
        chunk_cells: int = 65_536,
        binary_keys: Sequence[str] = (),
        seed: int = 0,
        num_replicas: int = 1,
        rank: int = 0,
    ):
        self.sources = {key: RowSource(m, name=key, binary=key in binary_keys) for key, m in matrices.items()}
        n_rows = {source.n_rows for source in self.sources.values()} | {len(v) for v in obs.values()}
        if len(n_rows) != 1:
            raise ValueError(f"DeviceMinibatchLoader: matrices and obs arrays have different numbers of rows {n_rows}.")
        self.n_rows = n_rows.pop()
        self.device = torch.device(device)
        self.obs = {
            key: torch.as_tensor(np.asarray(v, dtype=np.float32).reshape(self.n_rows, -1)) for key, v in obs.items()
        }
        self.indices = np.sort(np.asarray(indices, dtype=np.int64))
        self.strata = np.asarray(strata).ravel()
        self.batch_size = int(batch_size)
        self.shuffle = shuffle
        self.chunk_cells = int(chunk_cells)
        # without a seed (scvi.settings.seed = None), draw one, so that set_epoch still has a base to derive from
        self.seed = seed if seed is not None else int(np.random.SeedSequence().entropy % 2**63)
        self.rng = np.random.default_rng(self.seed)
        self.num_replicas, self.rank = num_replicas, rank
        self.pin = self.device.type == "cuda"
        self.resident = self._decide_resident() if resident is None else resident
        self._blocks: dict[str, DeviceBlock] | None = None
        self._obs_device = {key: value.to(self.device) for key, value in self.obs.items()}

    def set_epoch(self, epoch: int) -> None:
        """Draw this epoch's shuffle from ``(seed, epoch)`` alone, so a resumed run repeats it (see ``StepSeed``)."""
        self.rng = np.random.default_rng([self.seed, epoch])

    # ------------------------------------------------------------------------------------------------ sizing
    def _decide_resident(self) -> bool:
        backed = any(source.group is not None for source in self.sources.values())
        if self.device.type != "cuda":
            return not backed
        free, _ = torch.cuda.mem_get_info(self.device)
        need = sum(source.nbytes() for source in self.sources.values())
        return need < _GPU_FRACTION * free

    def _n_batches(self, n_cells: int) -> int:
        return max(1, int(np.ceil(n_cells / self.batch_size)))

    def __len__(self) -> int:
        if self.resident:
            total = self._n_batches(len(self.indices))
        else:
            # minibatches never span two chunks: each chunk rounds up on its own
            total = sum(self._n_batches(len(rows)) for _, _, rows in self._chunks(shuffle=False))
        return int(np.ceil(total / self.num_replicas))

    # ------------------------------------------------------------------------------------------------ blocks
    def _load(self, start: int, stop: int) -> dict[str, DeviceBlock]:
        return {
            key: DeviceBlock(source, start, stop, self.device, pin=self.pin, chunk_cells=self.chunk_cells)
            for key, source in self.sources.items()
        }

    def _resident_blocks(self) -> dict[str, DeviceBlock]:
        if self._blocks is None:
            self._blocks = self._load(0, self.n_rows)
        return self._blocks

    # ------------------------------------------------------------------------------------------------ iteration
    def _batches_of(self, rows: np.ndarray) -> list[np.ndarray]:
        """Minibatches (arrays of rows) over ``rows``: shuffled and stratified, or in order."""
        if not self.shuffle:
            return [rows[a : a + self.batch_size] for a in range(0, len(rows), self.batch_size)]
        sampler = MosaicBatchSampler(self.strata[rows], self.batch_size, seed=int(self.rng.integers(2**31)))
        return [rows[np.asarray(batch, dtype=np.int64)] for batch in sampler]

    def _emit(self, blocks: dict[str, DeviceBlock], batch_rows: np.ndarray, offset: int) -> dict[str, torch.Tensor]:
        local = batch_rows - offset
        rows = torch.from_numpy(local)
        rows = rows.pin_memory().to(self.device, non_blocking=True) if self.pin else rows
        global_rows = torch.from_numpy(batch_rows)
        global_rows = global_rows.pin_memory().to(self.device, non_blocking=True) if self.pin else global_rows
        out = {key: block.rows(local, rows) for key, block in blocks.items()}
        for key, value in self._obs_device.items():
            out[key] = value.index_select(0, global_rows)
        return out

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        n_yield = len(self)
        if self.resident:
            yield from self._iter_resident(n_yield)
        else:
            yield from self._iter_chunked(n_yield)

    def _iter_resident(self, n_yield: int):
        blocks = self._resident_blocks()
        batches = self._batches_of(self.indices)
        mine = _rank_share(batches, self.num_replicas, self.rank, n_yield)
        for batch_rows in mine:
            yield self._emit(blocks, batch_rows, 0)

    def _chunks(self, *, shuffle: bool = True) -> list[tuple[int, int, np.ndarray]]:
        chunks = []
        for start in range(0, self.n_rows, self.chunk_cells):
            stop = min(start + self.chunk_cells, self.n_rows)
            lo, hi = np.searchsorted(self.indices, [start, stop])
            if hi > lo:
                chunks.append((start, stop, self.indices[lo:hi]))
        if shuffle and self.shuffle:
            order = self.rng.permutation(len(chunks))
            chunks = [chunks[i] for i in order]
        return chunks

    def _iter_chunked(self, n_yield: int):
        chunks = self._chunks()
        mine = chunks[self.rank :: self.num_replicas] or chunks[:1]
        emitted = 0
        while emitted < n_yield:
            prefetch = _Prefetch(self, mine[0][:2])
            for position, (start, _, rows) in enumerate(mine):
                blocks = prefetch.result()
                if position + 1 < len(mine):
                    prefetch = _Prefetch(self, mine[position + 1][:2])
                for batch_rows in self._batches_of(rows):
                    if emitted == n_yield:
                        return
                    yield self._emit(blocks, batch_rows, start)
                    emitted += 1
                del blocks


class _Prefetch:
    """Read (and copy to the device) the next block in a background thread while the current one trains."""

    def __init__(self, loader: DeviceMinibatchLoader, span: tuple[int, int]):
        self._value = None
        self._error = None
        self._thread = threading.Thread(target=self._run, args=(loader, span), daemon=True)
        self._thread.start()

    def _run(self, loader, span):
        try:
            self._value = loader._load(*span)
        except BaseException as error:  # noqa: BLE001 - re-raised in the training thread
            self._error = error

    def result(self) -> dict[str, DeviceBlock]:
        self._thread.join()
        if self._error is not None:
            raise self._error
        return self._value


def _rank_share(batches: list, num_replicas: int, rank: int, n_yield: int) -> list:
    """Minibatches of ``rank``: every ``num_replicas``-th, padded by wrapping so that all ranks take equal steps."""
    mine = batches[rank::num_replicas]
    while len(mine) < n_yield:
        mine = mine + batches[: n_yield - len(mine)]
    return mine[:n_yield]


def loader_from_manager(
    adata_manager, *, counts_keys: tuple[str, ...] | None = None, **kwargs
) -> DeviceMinibatchLoader:
    """A :class:`DeviceMinibatchLoader` over every field registered in ``adata_manager``.

    Parameters
    ----------
    adata_manager
        The model's :class:`~scvi.data.AnnDataManager`.
    counts_keys
        Registry keys of the count matrices (default: keys starting with ``x_``); every other field is an obs array.
    **kwargs
        Passed to :class:`DeviceMinibatchLoader`.
    """
    matrices, obs = {}, {}
    for key in adata_manager.data_registry:
        value = adata_manager.get_from_registry(key)
        is_counts = key in counts_keys if counts_keys is not None else key.startswith("x_")
        if is_counts:
            matrices[key] = value
            continue
        array = np.asarray(value.to_numpy() if hasattr(value, "to_numpy") else value)
        if array.ndim == 2 and array.shape[1] == 0:
            continue
        obs[key] = array
    num_replicas, rank = 1, 0
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        num_replicas, rank = torch.distributed.get_world_size(), torch.distributed.get_rank()
    kwargs.setdefault("num_replicas", num_replicas)
    kwargs.setdefault("rank", rank)
    return DeviceMinibatchLoader(matrices, obs, **kwargs)
