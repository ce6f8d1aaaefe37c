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
from collections.abc import Iterator, Mapping

import numpy as np
import torch
from scipy import sparse

from ._sampler import MosaicBatchSampler

logger = logging.getLogger(__name__)

_GPU_FRACTION = 0.5
"""Resident mode on a GPU takes at most this fraction of its free memory for the data."""


class RowSource:
    """Row blocks of one registered matrix: in-memory scipy sparse or dense, or a backed (h5) CSR/dense matrix.

    Parameters
    ----------
    matrix
        scipy sparse matrix, numpy array, anndata backed sparse dataset (CSR), h5py group with CSR arrays, or h5py
        dataset (dense).
    name
        The registry key, for messages.
    binary
        Keep only which entries are nonzero (values read as 1): enough for binarised ATAC, and half the memory.
    """

    def __init__(self, matrix, *, name: str, binary: bool = False):
        self.name = name
        self.binary = binary
        group = _h5_csr_group(matrix)
        self.group = group
        self.sparse = group is not None or sparse.issparse(matrix)
        if sparse.issparse(matrix) and matrix.format != "csr":
            logger.info("%s is %s; converting to CSR once for row access", name, matrix.format)
            matrix = sparse.csr_matrix(matrix)
        elif group is None and not sparse.issparse(matrix) and hasattr(matrix, "format"):
            raise TypeError(
                f"{name}: backed matrix of format {getattr(matrix, 'format', '?')!r}; the device loader reads CSR "
                "rows; write the matrix as CSR (adata.X = scipy.sparse.csr_matrix(adata.X)) or pass load='scvi'."
            )
        self.matrix = matrix
        self.shape = tuple(matrix.shape) if hasattr(matrix, "shape") else tuple(group.attrs["shape"])
        if group is not None:
            self.indptr = np.asarray(group["indptr"][:], dtype=np.int64)
        elif self.sparse:
            self.indptr = np.asarray(matrix.indptr, dtype=np.int64)
        else:
            self.indptr = None

    @property
    def n_rows(self) -> int:
        """Number of rows."""
        return self.shape[0]

    @property
    def n_cols(self) -> int:
        """Number of columns."""
        return self.shape[1]

    def nbytes(self, start: int = 0, stop: int | None = None) -> int:
        """Bytes the rows ``[start, stop)`` take on the device (int32 indices, float32 values unless binary)."""
        stop = self.n_rows if stop is None else stop
        if not self.sparse:
            return (stop - start) * self.n_cols * 4
        nnz = int(self.indptr[stop] - self.indptr[start])
        return nnz * (4 if self.binary else 8)

    def read(self, start: int, stop: int) -> tuple[np.ndarray, np.ndarray, np.ndarray | None] | np.ndarray:
        """Rows ``[start, stop)``: ``(indptr from 0, indices, values or None)`` if sparse, else a dense array."""
        if not self.sparse:
            return np.asarray(self.matrix[start:stop], dtype=np.float32)
        first, last = int(self.indptr[start]), int(self.indptr[stop])
        if self.group is not None:
            indices = self.group["indices"][first:last]
            values = self.group["data"][first:last]
        else:
            indices = self.matrix.indices[first:last]
            values = self.matrix.data[first:last]
        indptr = self.indptr[start : stop + 1] - first
        if self.binary:
            keep = np.asarray(values) != 0
            if not keep.all():
                indices = indices[keep]
                indptr = np.concatenate([[0], np.cumsum(keep)])[indptr]
            return indptr, indices, None
        return indptr, indices, values


def _h5_csr_group(matrix):
    """The h5py group of a backed CSR matrix (anndata sparse dataset or h5py group), else None."""
    group = getattr(matrix, "group", None)
    if group is None and hasattr(matrix, "keys") and hasattr(matrix, "attrs"):
        group = matrix
    if group is None:
        return None
    encoding = group.attrs.get("encoding-type", "")
    encoding = encoding.decode() if isinstance(encoding, bytes) else encoding
    if encoding != "csr_matrix":
        raise TypeError(
            f"backed matrix with encoding {encoding!r}; the device loader reads CSR rows: write the matrix as CSR."
        )
    return group


class DeviceBlock:
    """Rows ``[start, stop)`` of one matrix on the device, gathered into dense minibatches by vectorised indexing.

    The rows are read ``chunk_cells`` at a time and copied to the device chunk by chunk, so host memory holds one
    chunk, not the block.
    """

    def __init__(self, source: RowSource, start: int, stop: int, device: torch.device, *, pin: bool, chunk_cells: int):
        self.n_cols = source.n_cols
        spans = [(a, min(a + chunk_cells, stop)) for a in range(start, stop, chunk_cells)]
        if not source.sparse:
            self.dense = torch.cat([_put(source.read(a, b), np.float32, device, pin) for a, b in spans])
            return
        self.dense = None
        indptr, indices, values = [np.zeros(1, dtype=np.int64)], [], []
        for a, b in spans:
            part_indptr, part_indices, part_values = source.read(a, b)
            indptr.append(part_indptr[1:] + indptr[-1][-1])
            indices.append(_put(part_indices, np.int32, device, pin))
            values.append(None if part_values is None else _put(part_values, np.float32, device, pin))
        self.indptr_host = np.concatenate(indptr)
        self.indptr = torch.from_numpy(self.indptr_host).to(device)
        self.indices = torch.cat(indices)
        self.values = None if values[0] is None else torch.cat(values)

    def rows(self, rows_host: np.ndarray, rows: torch.Tensor) -> torch.Tensor:
        """Dense float32 array of shape ``(len(rows), n_cols)`` of the given block rows (``rows`` on the device)."""
        if self.dense is not None:
            return self.dense.index_select(0, rows)
        # the number of stored entries is known on the host, so nothing below waits for the device
        total = int((self.indptr_host[rows_host + 1] - self.indptr_host[rows_host]).sum())
        starts = self.indptr.index_select(0, rows)
        lengths = self.indptr.index_select(0, rows + 1) - starts
        row_of_entry = torch.repeat_interleave(
            torch.arange(len(rows_host), device=rows.device), lengths, output_size=total
        )
        shift = starts - (torch.cumsum(lengths, 0) - lengths)
        positions = torch.arange(total, device=rows.device) + shift.index_select(0, row_of_entry)
        col = self.indices.index_select(0, positions).long()
        flat = row_of_entry * self.n_cols + col
        values = (
            torch.ones(total, device=rows.device) if self.values is None else self.values.index_select(0, positions)
        )
        out = torch.zeros(len(rows_host) * self.n_cols, device=rows.device)
        # binary: a repeated entry is still 1
        out = out.index_fill_(0, flat, 1.0) if self.values is None else out.scatter_add_(0, flat, values)
        return out.view(len(rows_host), self.n_cols)


def _put(array: np.ndarray, dtype, device: torch.device, pin: bool) -> torch.Tensor:
    """``array`` as ``dtype`` on ``device`` (through pinned memory for an asynchronous copy to a GPU)."""
    tensor = torch.from_numpy(np.ascontiguousarray(array, dtype=dtype))
    if device.type == "cpu":
        return tensor
    return (tensor.pin_memory() if pin else tensor).to(device, non_blocking=pin)


class DeviceMinibatchLoader:
    """Iterable of minibatches (registry key -> tensor on ``device``) for Lightning, replacing a DataLoader.

    Parameters
    ----------
    matrices
        Registry key -> count matrix (see :class:`RowSource`), all with the same rows.
    obs
        Registry key -> array of shape ``(n_cells, k)`` (batch, panel, covariates, modality flags).
    indices
        Rows (cells) this loader serves, e.g. the training split.
    strata
        Array of shape ``(n_cells,)``: dataset of every row; each minibatch holds every stratum (see
        :class:`~pengster.model._sampler.MosaicBatchSampler`).
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
        binary_keys: tuple[str, ...] = (),
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
