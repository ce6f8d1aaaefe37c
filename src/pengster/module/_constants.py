"""Keys of the dictionaries that :class:`~pengster.module.JointVAEModule`'s ``inference`` and ``generative`` return."""

from __future__ import annotations

from typing import Final


class MODULE_KEYS:
    """Output keys of ``inference`` (``QZ`` to ``ROWS``) and ``generative`` (``PX``, ``PAIRS``)."""

    QZ: Final = "qz"
    """Normal of shape ``(n_posteriors, n_cells, n_latent)``: the joint posterior, then each modality's own, then
    the RNA bridge's (when the module has one)."""
    Z: Final = "z"
    """One draw of :attr:`QZ`."""
    EXPERTS: Final = "experts"
    """Modality -> ``(mean, variance)`` of its encoder, each ``(n_cells, n_latent)``; 0 and 1 where not measured."""
    HAS: Final = "has"
    """Modality -> ``(n_cells,)`` 0/1 flags: the cell measured it."""
    ROWS: Final = "rows"
    """Modality -> the indices of the cells that measured it."""
    LIBRARY: Final = "library"
    """Modality -> ``(n_cells, 1)`` total counts over the measured features (at least 1)."""
    STATE: Final = "state"
    """Modality -> its head's per-cell state inferred from its own counts (ATAC: the cell factor ``(n_cells, 1)``,
    encoded where ATAC was measured, else the running mean), or None for heads without one."""
    PX: Final = "px"
    """Modality -> list of ``pengster.module._pairs.Decoded``: the distributions over spans of the reconstruction
    pairs (and the features each is scored on), or None where there are none."""
    PAIRS: Final = "pairs"
    """Modality -> ``(posterior, cell, weight)`` of the reconstruction terms (see ``module/_pairs.py``)."""
