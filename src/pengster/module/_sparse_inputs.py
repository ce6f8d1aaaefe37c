"""The encoders' inputs of RNA and ATAC as sparse rows: the same values as ``_inputs``, computed at the nonzeros.

Both transforms map 0 to 0, so the nonzero entries of the counts carry all of the encoder input.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch.distributions import Normal

from pengster.nn._fused import _all_ones
from pengster.nn._sparse import SparseRows, column_major_, encoder_sparse, fc_layers_sparse, first_linear

from ._inputs import RNA_TARGET_SUM

SPARSE_INPUT_MODALITIES = ("rna", "atac")
"""Modalities whose encoder input keeps the zeros of the counts (protein's CLR does not)."""


def library_size(counts: SparseRows, mask_table: torch.Tensor, panel: torch.Tensor) -> torch.Tensor:
    """Sum of the measured counts of each row, at least 1, shape ``(n_rows, 1)`` (as ``JointVAEModule.inference``)."""
    values = counts.value if _all_ones(mask_table) else counts.value * entry_mask(counts, mask_table, panel)
    return values.new_zeros(counts.n_rows).index_add(0, counts.row, values).clamp_min(1.0).unsqueeze(-1)


def entry_mask(counts: SparseRows, mask_table: torch.Tensor, panel: torch.Tensor) -> torch.Tensor:
    """The feature mask at each entry of ``counts``; ``panel`` holds the panel of each row."""
    return mask_table[panel.view(-1).long().index_select(0, counts.row), counts.col]


def sparse_encoder_input(
    modality: str, counts: SparseRows, mask_table: torch.Tensor, panel: torch.Tensor
) -> SparseRows:
    """:func:`~pengster.module._inputs.rna_encoder_input` / ``atac_encoder_input`` at the nonzeros of ``counts``.

    Parameters
    ----------
    modality
        ``rna`` or ``atac``.
    counts
        The cells' counts.
    mask_table
        Float array ``(n_panels, n_features)``, 1 where the panel measured the feature.
    panel
        Panel of each row of ``counts``.
    """
    all_measured = _all_ones(mask_table)
    if modality == "rna":
        values = counts.value if all_measured else counts.value * entry_mask(counts, mask_table, panel)
        library = values.new_zeros(counts.n_rows).index_add(0, counts.row, values).clamp_min(1.0)
        return counts.with_value(torch.log1p(values / library.index_select(0, counts.row) * RNA_TARGET_SUM))
    if modality == "atac":
        binary = (counts.value > 0).to(counts.value.dtype)
        binary = binary if all_measured else binary * entry_mask(counts, mask_table, panel)
        n_open = binary.new_zeros(counts.n_rows).index_add(0, counts.row, binary).clamp_min(1.0)
        return counts.with_value(torch.log1p(binary / n_open.index_select(0, counts.row) * 1e4))
    raise ValueError(
        f"sparse_encoder_input: modality {modality!r} has no sparse input; use one of {SPARSE_INPUT_MODALITIES}."
    )


def enabled(module, device: torch.device) -> bool:
    """Whether ``module`` takes the sparse path on ``device`` (``module.use_sparse``; None: on CPU)."""
    return device.type == "cpu" if module.use_sparse is None else bool(module.use_sparse)


def sparse_counts(module, x: Mapping[str, torch.Tensor]) -> dict[str, SparseRows]:
    """Modality -> the minibatch's counts as :class:`SparseRows`, for the modalities with a sparse path.

    The encoders add ``"<modality> input"`` -> ``(rows, encoder input)`` to it, to build each input once.
    """
    if not enabled(module, next(iter(x.values())).device):
        return {}
    return {m: SparseRows.of(x[m].float()) for m in SPARSE_INPUT_MODALITIES if m in module.modalities}


def _rows_input(module, modality, x, sparse, panel, rows) -> SparseRows:
    # built once per minibatch: the ATAC encoder and the cell-factor encoder read the same input, and get the same
    # rows (one memoised index array, module._rows.MeasuredRows): no comparison of their values, a device read
    cached = (sparse or {}).get(f"{modality} input")
    if cached is not None and cached[0] is rows:
        return cached[1]
    counts = (sparse or {}).get(modality)
    counts = SparseRows.of(x[modality].float()) if counts is None else counts
    table = getattr(module, f"feature_mask_{modality}")
    encoder_input = sparse_encoder_input(modality, counts.select(rows), table, panel.view(-1).index_select(0, rows))
    if sparse is not None:
        sparse[f"{modality} input"] = (rows, encoder_input)
    return encoder_input


def encode(module, modality: str, x, sparse, panel, rows, categoricals) -> tuple[Normal, torch.Tensor]:
    """``module.encoders[modality]`` on the cells ``rows``, from their nonzero counts."""
    encoder_input = _rows_input(module, modality, x, sparse, panel, rows)
    return encoder_sparse(module.encoders[modality], encoder_input, *[c[rows] for c in categoricals])


def cell_factor(module, x, sparse, panel, rows, categoricals) -> torch.Tensor:
    """``module.cell_factor_encoder`` on the cells ``rows``, from their nonzero peaks."""
    encoder = module.cell_factor_encoder
    encoder_input = _rows_input(module, "atac", x, sparse, panel, rows)
    layers = encoder.layers
    # as nn._decoders._hidden: a single row in training uses the running batch-norm statistics
    single = layers.training and encoder_input.n_rows == 1
    if single:
        layers.eval()
    try:
        hidden = fc_layers_sparse(layers, encoder_input, *[c[rows] for c in categoricals])
    finally:
        if single:
            layers.train()
    return torch.sigmoid(encoder.output(hidden).float())


def column_major_first_layers(module) -> None:
    """Store the first weights of the RNA/ATAC encoders and of the cell-factor encoder column-major (same values)."""
    for modality in SPARSE_INPUT_MODALITIES:
        if modality in module.encoders:
            column_major_(first_linear(module.encoders[modality].encoder))
    if hasattr(module, "cell_factor_encoder"):
        column_major_(first_linear(module.cell_factor_encoder.layers))
