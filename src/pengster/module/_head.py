"""The protocol of a modality head, and the table the module builds its heads from.

A head holds everything that is specific to one modality: what its encoder sees, its decoder and likelihood, the
observed values it is scored and reported on, and its read-outs (the reported scale with closed-form moments, and a
linear scale for differential analysis). :class:`~pengster.module.JointVAEModule` builds one head per modality of
the data from :data:`HEADS` and knows no modality by name; a new modality is a new head file and a
:func:`~pengster.module.register_modality` call.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn
from torch.distributions import Distribution

from pengster._constants import MODALITIES, Modality

RNA_TARGET_SUM = 1e4
"""Counts per this many: the reported RNA scale is log1p of them."""


@dataclass
class HeadInput:
    """What a head decodes with besides ``z``, for the cells being decoded.

    Parameters
    ----------
    categoricals
        The batch index ``(n_cells, 1)`` first, then the extra categorical covariates.
    feature_mask
        ``(n_cells, n_features)``: 1 where the cell's dataset measured the feature.
    library
        ``(n_cells, 1)`` total counts of the measurement (or a number): the depth the counts are decoded at.
    state
        The head's per-cell state from ``Head.cell_state`` (ATAC: the cell factor), or None.
    features
        Sorted indices of the features to decode (``Head.cross_features``), or None for all; ``feature_mask`` then
        holds those columns only.
    """

    categoricals: list[torch.Tensor]
    feature_mask: torch.Tensor
    library: torch.Tensor | float = 1.0
    state: torch.Tensor | None = None
    features: torch.Tensor | None = None

    @property
    def batch_index(self) -> torch.Tensor:
        """The batch index of each cell, ``(n_cells, 1)``."""
        return self.categoricals[0]


class Head(nn.Module):
    """One modality of :class:`~pengster.module.JointVAEModule`: subclass it to add a modality.

    Parameters
    ----------
    n_features
        Features of the modality.
    n_input
        Size of the decoder input (the latent, plus continuous covariates).
    n_cat_list
        Categories of each categorical the decoder is given (the batch first).
    n_batch
        Number of batches.
    n_hidden, n_layers
        Sizes of the decoder.
    encoder_cats
        Categories of each categorical an encoder of the module is given (heads with their own encoders use it).
    options
        The module's keyword arguments addressed to this head (e.g. ``likelihood``).
    """

    name: ClassVar[str]
    """The modality's name (a key of ``pengster._constants.MODALITIES``)."""
    OPTIONS: ClassVar[dict[str, str]] = {}
    """The module's (and the model's) keyword arguments that this head takes -> its own argument names."""
    ENCODER_PARTS: ClassVar[tuple[str, ...]] = ()
    """Submodules that encode (frozen as encoders in reference mapping); the rest of the head decodes."""
    QUERY_FREE: ClassVar[tuple[str, ...]] = ()
    """Parameters a query model mapped onto a reference keeps learning (per-batch parameters)."""
    reported_at_depth: ClassVar[bool] = False
    """The reported value of a measurement depends on its depth (``reported`` takes the ``depth`` of the cell whose
    measurement it predicts; RNA's log1p of counts per 10k is lower, on average, for a shallow cell)."""
    SCALE_OPTIONS: ClassVar[tuple[str, ...]] = ()
    """Options of the reported scale that both ``reported`` and ``observed`` take (RNA: ``target_sum``)."""
    variance_holds_latent: ClassVar[bool] = False
    """The reported variance of one measurement already holds the spread over the latent (ATAC's ``p (1 - p)``)."""

    def __init__(
        self,
        n_features: int,
        n_input: int,
        n_cat_list: Sequence[int],
        *,
        n_batch: int,
        n_hidden: int,
        n_layers: int,
        encoder_cats: Sequence[int],
        **options,
    ):
        super().__init__()

    # ------------------------------------------------------------------------------------------ data
    def encoder_input(self, counts: torch.Tensor, feature_mask: torch.Tensor) -> torch.Tensor:
        """What the modality's encoder sees, from counts ``(n_cells, n_features)``; unmeasured features 0."""
        raise NotImplementedError

    def scored(self, counts: torch.Tensor) -> torch.Tensor:
        """The values the likelihood scores (default: the counts as float32)."""
        return counts.float()

    def observed(self, counts: torch.Tensor, feature_mask: torch.Tensor, **scale_options) -> torch.Tensor:
        """Measured values on the reported scale; features outside ``feature_mask`` are 0.

        ``scale_options``: those of ``SCALE_OPTIONS``, as ``reported`` takes them.
        """
        raise NotImplementedError

    def initial_values(self, matrix, rows) -> dict[str, torch.Tensor]:
        """Initial values of the head's parameters (default: none).

        From the counts ``matrix`` (cells x features) of the cells ``rows`` that measured the modality.
        """
        return {}

    # ------------------------------------------------------------------------------------------ per-cell state
    def cell_state(self, counts, rows, feature_mask, categoricals, n_cells) -> torch.Tensor | None:
        """Per-cell state inferred from the modality's own counts for the cells ``rows`` (default: None)."""
        return None

    def source_state(self, libraries: Mapping[str, torch.Tensor], has, sources, n_cells) -> torch.Tensor | None:
        """Per-cell state for decoding this modality from ``sources`` (default: None)."""
        return None

    def update_statistics(self, inference_outputs: Mapping) -> None:
        """Fold a training minibatch into the head's running statistics (default: none)."""

    # ------------------------------------------------------------------------------------------ decoder
    def forward(self, z: torch.Tensor, inputs: HeadInput) -> Distribution:
        """The distribution of the modality's counts at ``z`` ``(..., n_cells, n_input)``.

        At ``inputs.features`` only, where the head's ``cross_features`` gives any.
        """
        raise NotImplementedError

    def cross_features(self) -> torch.Tensor | None:
        """Features to score this training step's cross terms on (sorted indices), or None for all (default)."""
        return None

    # ------------------------------------------------------------------------------------------ read-outs
    def reported(
        self, px: Distribution, inputs: HeadInput, *, variance: bool = False, denoised: bool = False, **options
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The decoded value on the reported scale and, with ``variance``, the variance of one measurement there.

        ``px`` was decoded at library 1 (proportions); ``denoised`` removes what is not signal (protein background).
        """
        raise NotImplementedError

    def normalized(self, px: Distribution, inputs: HeadInput, *, library_size: float | None = None) -> torch.Tensor:
        """The decoded value on a linear scale, as scvi-tools' ``get_normalized_expression`` returns it."""
        raise NotImplementedError


HEADS: dict[str, type[Head]] = {}
"""Modality name -> its ``Head`` class (filled by the head files and :func:`~pengster.module.register_modality`)."""


def register_modality(modality: Modality, head: type[Head]) -> None:
    """Add a modality to pengster: its data-side description and its head.

    After this call ``setup_mudata`` takes ``<name>_layer`` and a ``modalities`` entry for it, and the module
    builds ``head`` for data that has it. Registering a name again replaces it.
    """
    if head.name != modality.name:
        raise ValueError(f"head {head.__name__} is for {head.name!r}, the modality is {modality.name!r}.")
    MODALITIES[modality.name] = modality
    HEADS[modality.name] = head


def unregister_modality(name: str) -> None:
    """Remove a modality added by :func:`~pengster.module.register_modality`."""
    MODALITIES.pop(name, None)
    HEADS.pop(name, None)


def masked_normalize(values: torch.Tensor, feature_mask: torch.Tensor) -> torch.Tensor:
    """Zero the unmeasured features and rescale the rest to sum to 1 along the last axis."""
    masked = values * feature_mask
    return masked / masked.sum(-1, keepdim=True).clamp_min(1e-12)


def hidden(layers: nn.Module, x: torch.Tensor, *categoricals: torch.Tensor) -> torch.Tensor:
    """``layers(x, *categoricals)``; a single row in training uses the running batch-norm statistics.

    A mosaic minibatch may hold one cell of a modality (a few multiome cells spread over the minibatches of a large
    CITE-seq run), and batch norm cannot normalise one row with its own statistics.
    """
    if not (layers.training and x.shape[0] == 1):
        return layers(x, *categoricals)
    layers.eval()
    try:
        return layers(x, *categoricals)
    finally:
        layers.train()
