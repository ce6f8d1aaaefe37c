"""scvi-tools' ``FCLayers`` on a sparse input: the first linear layer as an embedding bag over the non-zero entries."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from scvi.nn import FCLayers
from torch import nn


@dataclass
class SparseRows:
    """A ``(n_rows, n_columns)`` matrix by its non-zero entries, row after row (CSR, without torch's beta layout).

    ``columns`` and ``values``: the non-zero entries' columns and values; ``offsets``: ``(n_rows + 1,)``, where each
    row's entries start (the last one: their number).
    """

    columns: torch.Tensor
    values: torch.Tensor
    offsets: torch.Tensor
    shape: tuple[int, int]

    @classmethod
    def from_dense(cls, dense: torch.Tensor) -> SparseRows:
        """The non-zero entries of a 2-D ``dense`` tensor."""
        rows, columns = dense.nonzero(as_tuple=True)
        counts = torch.bincount(rows, minlength=dense.shape[0])
        offsets = torch.cat([counts.new_zeros(1), counts.cumsum(0)])
        return cls(columns, dense[rows, columns], offsets, tuple(dense.shape))

    def to_dense(self) -> torch.Tensor:
        """The matrix as a dense tensor."""
        rows = torch.repeat_interleave(torch.arange(self.shape[0], device=self.values.device), self.offsets.diff())
        dense = self.values.new_zeros(self.shape)
        dense[rows, self.columns] = self.values
        return dense


def fc_layers(layers: FCLayers, x: torch.Tensor | SparseRows, *categoricals: torch.Tensor) -> torch.Tensor:
    """``layers(x, *categoricals)``, also for ``x`` given by its non-zero entries (:class:`SparseRows`).

    For a sparse ``x`` the first linear layer sums the weight columns of each row's non-zero entries, scaled by their
    values (``torch.nn.functional.embedding_bag``): work in proportion to the non-zero entries rather than to every
    input (ATAC: a few percent of the peaks are open). The layers and their weights are scvi-tools', unchanged; the
    categorical covariates are one-hot encoded and injected as ``FCLayers`` does, into the layers it injects them into.
    """
    if not isinstance(x, SparseRows):
        return layers(x, *categoricals)
    n_input = x.shape[1]
    one_hots = [
        F.one_hot(cat.view(-1).long(), n_cat).to(torch.float32)
        for n_cat, cat in zip(layers.n_cat_list, categoricals, strict=False)
        if n_cat > 1
    ]
    values = x
    for index, block in enumerate(layers.fc_layers):
        inject = bool(one_hots) and layers.inject_into_layer(index)
        for layer in block:
            if layer is None:
                continue
            if isinstance(layer, nn.Linear) and index == 0:
                values = _sparse_linear(layer, x, n_input, one_hots if inject else [])
            elif isinstance(layer, nn.Linear) and inject:
                values = layer(torch.cat([values, *one_hots], dim=-1))
            else:
                values = layer(values)
    return values


def _sparse_linear(layer: nn.Linear, x: SparseRows, n_input: int, one_hots: list[torch.Tensor]) -> torch.Tensor:
    """``layer(cat([x, *one_hots]))`` for a sparse ``x``: an embedding bag over its non-zero entries."""
    out = F.embedding_bag(
        x.columns,
        layer.weight[:, :n_input].t(),
        x.offsets,
        mode="sum",
        per_sample_weights=x.values.to(layer.weight.dtype),
        include_last_offset=True,
    )
    if one_hots:
        out = out + torch.cat(one_hots, dim=-1) @ layer.weight[:, n_input:].t()
    return out if layer.bias is None else out + layer.bias
