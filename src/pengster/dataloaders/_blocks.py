"""Row blocks of a count matrix (in memory or backed CSR) on the training device, gathered into dense minibatches."""

from __future__ import annotations

import logging

import numpy as np
import torch
from scipy import sparse

logger = logging.getLogger(__name__)


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
