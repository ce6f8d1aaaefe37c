"""What each modality's encoder sees, and the normalized scales predictions are reported in."""

from __future__ import annotations

import torch

RNA_TARGET_SUM = 1e4


def rna_encoder_input(counts: torch.Tensor, feature_mask: torch.Tensor) -> torch.Tensor:
    """log1p of counts per 10k over the measured genes; unmeasured genes are 0."""
    counts = counts * feature_mask
    library = counts.sum(-1, keepdim=True).clamp_min(1.0)
    return torch.log1p(counts / library * RNA_TARGET_SUM)


def atac_encoder_input(counts: torch.Tensor, feature_mask: torch.Tensor) -> torch.Tensor:
    """Binarised accessibility of the measured peaks, as log1p term frequency (per 10k open peaks).

    Dividing by the number of open peaks removes sequencing depth, which varies a lot between nuclei in very sparse
    ATAC (SNARE-seq2: 0.4% nonzero), so the encoder sees which peaks are open rather than how many.
    """
    binary = (counts > 0).to(counts.dtype) * feature_mask
    n_open = binary.sum(-1, keepdim=True).clamp_min(1.0)
    return torch.log1p(binary / n_open * 1e4)


def protein_encoder_input(counts: torch.Tensor, feature_mask: torch.Tensor) -> torch.Tensor:
    """CLR of the measured proteins (see :func:`clr`); unmeasured proteins are 0."""
    return clr(counts, feature_mask) * feature_mask


def clr(counts: torch.Tensor, feature_mask: torch.Tensor) -> torch.Tensor:
    """Per-cell centred log-ratio as Seurat and the NeurIPS 2021 data compute it.

    ``log1p(x / g)`` with ``g = exp(mean_j log1p(x_j))`` over the measured features of the cell.
    """
    log_counts = torch.log1p(counts)
    n_measured = feature_mask.sum(-1, keepdim=True).clamp_min(1.0)
    log_geometric_mean = (log_counts * feature_mask).sum(-1, keepdim=True) / n_measured
    return torch.log1p(counts / log_geometric_mean.exp())


def observed_values(modality: str, counts: torch.Tensor, feature_mask: torch.Tensor) -> torch.Tensor:
    """Measured values on the scale predictions are reported in: log1p per 10k, binary accessibility, CLR.

    Features outside ``feature_mask`` are 0.
    """
    if modality == "rna":
        return rna_encoder_input(counts, feature_mask)
    if modality == "atac":
        return (counts > 0).to(counts.dtype) * feature_mask
    return protein_encoder_input(counts, feature_mask)


ENCODER_INPUTS = {"rna": rna_encoder_input, "atac": atac_encoder_input, "protein": protein_encoder_input}
