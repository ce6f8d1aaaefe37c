"""Sparse minibatch rows and a first encoder layer whose cost scales with the nonzeros, not with the features.

At 20k peaks and 4% nonzero a dense first layer multiplies 96% zeros: ``x @ W.T`` reads every weight for every cell,
and so does the weight gradient ``grad.T @ x``. Here the rows are kept as their nonzero entries; the forward pass
sums the weight rows of each cell's nonzero features (``embedding_bag``) and the weight gradient is ``x.T @ grad``
with ``x.T`` in CSR form. Both read ``nnz x n_hidden`` weights. For that the weight is stored column-major (see
:func:`column_major_`): then ``W.T`` is contiguous and each feature's weights are one contiguous row.
"""

from __future__ import annotations

import functools
import warnings
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from scvi.nn import FCLayers
from torch import nn
from torch.distributions import Normal

from ._carried import carried, carry


@dataclass(frozen=True)
class SparseRows:
    """The nonzero entries of a dense array of shape ``(n_rows, n_cols)``, in row-major order.

    Attributes
    ----------
    row, col
        Row and column of each entry, int64 arrays of shape ``(nnz,)``.
    value
        Value of each entry, shape ``(nnz,)``.
    offsets
        Position in ``row``/``col``/``value`` of each row's first entry, shape ``(n_rows,)``.
    lengths
        Entries per row, shape ``(n_rows,)``.
    """

    row: torch.Tensor
    col: torch.Tensor
    value: torch.Tensor
    offsets: torch.Tensor
    lengths: torch.Tensor
    n_rows: int
    n_cols: int

    @classmethod
    def from_dense(cls, dense: torch.Tensor) -> SparseRows:
        """The nonzero entries of ``dense`` (shape ``(n_rows, n_cols)``)."""
        n_rows, n_cols = dense.shape
        row, col = dense.nonzero(as_tuple=True)
        value = dense.reshape(-1).index_select(0, row * n_cols + col)
        lengths = torch.bincount(row, minlength=n_rows)
        offsets = torch.cumsum(lengths, 0) - lengths
        return cls(row, col, value, offsets, lengths, n_rows, n_cols)

    @classmethod
    def of(cls, dense: torch.Tensor) -> SparseRows:
        """The nonzero entries of ``dense``: those a loader attached to it (:func:`attach`), else :meth:`from_dense`."""
        attached = carried(dense, _ATTACHED)
        if attached is not None and (attached.n_rows, attached.n_cols) == dense.shape:
            return attached
        return cls.from_dense(dense)

    @functools.cached_property
    def by_column(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(order, crow)``: the entries sorted by column (stable) and each column's first position (CSR of x.T).

        Computed once per object: the ATAC encoder and the cell-factor encoder share their input rows (when no
        one-hot covariate columns are appended to them, see :meth:`append_columns`).
        """
        order = torch.argsort(self.col, stable=True)
        crow = torch.zeros(self.n_cols + 1, dtype=self.index_dtype, device=self.col.device)
        crow[1:] = torch.cumsum(torch.bincount(self.col, minlength=self.n_cols), 0)
        return order, crow

    @property
    def index_dtype(self) -> torch.dtype:
        """int32 where the entries and columns fit (what MKL's sparse products take), else int64."""
        return torch.int32 if max(len(self.col), self.n_cols, self.n_rows) < 2**31 - 1 else torch.int64

    def with_value(self, value: torch.Tensor) -> SparseRows:
        """The same positions holding ``value``."""
        return replace(self, value=value)

    def to_dense(self) -> torch.Tensor:
        """Dense array of shape ``(n_rows, n_cols)``."""
        out = self.value.new_zeros(self.n_rows * self.n_cols)
        return out.index_put_((self.row * self.n_cols + self.col,), self.value).view(self.n_rows, self.n_cols)

    def select(self, rows: torch.Tensor) -> SparseRows:
        """The rows ``rows`` (in that order) as :class:`SparseRows`."""
        if len(rows) == self.n_rows and bool((rows == torch.arange(self.n_rows, device=rows.device)).all()):
            return self
        position, entry = self.expand(rows)
        lengths = self.lengths.index_select(0, rows)
        return SparseRows(
            position,
            self.col.index_select(0, entry),
            self.value.index_select(0, entry),
            torch.cumsum(lengths, 0) - lengths,
            lengths,
            len(rows),
            self.n_cols,
        )

    def append_columns(self, columns: torch.Tensor, n_extra: int) -> SparseRows:
        """Add ``n_extra`` columns with a 1 in row ``i`` at each ``columns[i, j]`` (ints ``(n_rows, k)``, from 0)."""
        n_per_row = columns.shape[1]
        if n_per_row == 0:
            # the same object when nothing is added: its cached column order (by_column) is reused
            return self if n_extra == 0 else replace(self, n_cols=self.n_cols + n_extra)
        device = self.col.device
        rows = torch.arange(self.n_rows, device=device)
        lengths = self.lengths + n_per_row
        offsets = torch.cumsum(lengths, 0) - lengths
        total = len(self.col) + self.n_rows * n_per_row
        old_position = torch.arange(len(self.col), device=device) + self.row * n_per_row
        new_position = (offsets + self.lengths).unsqueeze(-1) + torch.arange(n_per_row, device=device)
        row = torch.empty(total, dtype=self.row.dtype, device=device)
        col = torch.empty(total, dtype=self.col.dtype, device=device)
        value = torch.ones(total, dtype=self.value.dtype, device=device)
        row[old_position], col[old_position], value[old_position] = self.row, self.col, self.value
        row[new_position.view(-1)] = rows.repeat_interleave(n_per_row)
        col[new_position.view(-1)] = (columns.long() + self.n_cols).view(-1)
        return SparseRows(row, col, value, offsets, lengths, self.n_rows, self.n_cols + n_extra)

    def expand(self, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Entries of the rows ``rows`` (repeats allowed): ``(position in rows, entry index)`` of every entry."""
        lengths = self.lengths.index_select(0, rows)
        total = int(lengths.sum())
        position = torch.repeat_interleave(torch.arange(len(rows), device=rows.device), lengths, output_size=total)
        shift = self.offsets.index_select(0, rows) - (torch.cumsum(lengths, 0) - lengths)
        entry = torch.arange(total, device=rows.device) + shift.index_select(0, position)
        return position, entry


_ATTACHED = "_pengster_sparse_rows"


def attach(dense: torch.Tensor, rows: SparseRows) -> torch.Tensor:
    """Let ``dense`` carry its nonzero entries ``rows`` (exactly those of :meth:`SparseRows.from_dense`).

    The device loader builds a minibatch from CSR entries it already holds; attached to the dense minibatch, the
    module's sparse path reads them instead of searching the dense array for its nonzeros again. A tensor derived
    from ``dense`` (a copy, a slice) does not carry them, and ``dense`` changed in place no longer does.
    """
    return carry(dense, _ATTACHED, rows)


def sparse_rows_matmul(sparse_x: SparseRows, weight_t: torch.Tensor) -> torch.Tensor:
    """``x @ weight_t`` (shape ``(n_rows, n_out)``) for ``x`` ``(n_rows, n_cols)`` and ``weight_t`` ``(n_cols, n_out)``.

    Only ``weight_t`` receives a gradient. ``weight_t`` should be contiguous (else it is copied every call).
    """
    if sparse_x.n_cols != weight_t.shape[0]:
        raise ValueError(f"sparse_rows_matmul: x has {sparse_x.n_cols} columns, the weight {weight_t.shape[0]} rows.")
    return _SparseMatmul.apply(weight_t, sparse_x)


class _SparseMatmul(torch.autograd.Function):
    @staticmethod
    def forward(ctx, weight_t, sparse_x):
        ctx.sparse_x = sparse_x
        ctx.weight_rows = weight_t.shape[0]
        return F.embedding_bag(
            sparse_x.col, weight_t, sparse_x.offsets, mode="sum", per_sample_weights=sparse_x.value.to(weight_t.dtype)
        )

    @staticmethod
    def backward(ctx, grad_out):
        x = ctx.sparse_x
        if not ctx.needs_input_grad[0]:
            return None, None
        # x.T in CSR form: entries sorted by column (stable, so rows stay in order within a column)
        order, crow = x.by_column
        values = x.value.index_select(0, order).to(grad_out.dtype)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
            x_t = torch.sparse_csr_tensor(
                crow,
                x.row.index_select(0, order).to(crow.dtype),
                values,
                (ctx.weight_rows, x.n_rows),
                check_invariants=False,
            )
        # addmm with beta=0 into an empty array (torch.sparse.mm first fills a zero array and is 4x slower on CPU),
        # written in place (out=): without it addmm computes into a second array and copies it over, a third of the
        # time at 20k peaks x 256 (and MKL takes int32 indices; int64 ones are converted on every call)
        grad_out = grad_out.contiguous()
        out = grad_out.new_empty(ctx.weight_rows, grad_out.shape[1])
        return torch.addmm(out, x_t, grad_out, beta=0, out=out), None


def is_column_major(tensor: torch.Tensor) -> bool:
    """Whether ``tensor`` is a 2-d array stored column-major (its transpose contiguous, itself not)."""
    return tensor.dim() == 2 and not tensor.is_contiguous() and tensor.t().is_contiguous()


def column_major_(linear: nn.Linear) -> nn.Linear:
    """Store ``linear.weight`` column-major (``weight.T`` contiguous); same values, same shape, same module."""
    weight = linear.weight
    if weight.stride() != (1, weight.shape[0]):
        linear.weight = nn.Parameter(weight.detach().t().contiguous().t(), requires_grad=weight.requires_grad)
    return linear


def first_linear(layers: FCLayers) -> nn.Linear:
    """The first ``nn.Linear`` of scvi-tools' :class:`~scvi.nn.FCLayers`."""
    return next(layer for layer in layers.fc_layers[0] if isinstance(layer, nn.Linear))


def fc_layers_sparse(layers: FCLayers, sparse_x: SparseRows, *cat_list: torch.Tensor) -> torch.Tensor:
    """:meth:`scvi.nn.FCLayers.forward` for a sparse input: the same layers, parameters and dropout draws.

    The first layer's ``[x, one_hot(covariates)] @ W.T + b`` is one sparse product: the one-hot columns are appended
    to the sparse rows.
    """
    columns, offset, one_hot = [], 0, []
    for n_cat, cat in zip(layers.n_cat_list, cat_list, strict=False):
        if n_cat > 1:
            code = cat.argmax(-1, keepdim=True) if cat.size(1) == n_cat else cat.view(-1, 1)
            one_hot.append(cat if cat.size(1) == n_cat else F.one_hot(cat.squeeze(-1), n_cat))
            columns.append(code.long() + offset)
            offset += n_cat
    hidden = None
    for index, block in enumerate(layers.fc_layers):
        for layer in block:
            if layer is None:
                continue
            if isinstance(layer, nn.Linear) and index == 0:
                # the one-hot covariates are more sparse columns: one product with the whole (column-major) weight
                with_covariates = sparse_x.append_columns(
                    torch.cat(columns, dim=-1) if columns else sparse_x.col.new_zeros(sparse_x.n_rows, 0), offset
                )
                hidden = sparse_rows_matmul(with_covariates, layer.weight.t())
                if layer.bias is not None:
                    hidden = hidden + layer.bias
            elif isinstance(layer, nn.Linear) and layers.inject_into_layer(index):
                hidden = layer(torch.cat((hidden, *one_hot), dim=-1))
            else:
                hidden = layer(hidden)
    return hidden


def encoder_sparse(encoder: nn.Module, sparse_x: SparseRows, *cat_list: torch.Tensor) -> tuple[Normal, torch.Tensor]:
    """:meth:`scvi.nn.Encoder.forward` (``return_dist=True``) for a sparse input."""
    hidden = fc_layers_sparse(encoder.encoder, sparse_x, *cat_list)
    mean = encoder.mean_encoder(hidden)
    variance = encoder.var_activation(encoder.var_encoder(hidden)) + encoder.var_eps
    dist = Normal(mean, variance.sqrt())
    return dist, encoder.z_transformation(dist.rsample())
