"""Names shared by the data, module and model layers."""

from __future__ import annotations

from typing import Final

MODALITIES: Final = ("rna", "atac", "protein")
"""The modalities pengster models, in a fixed order."""

MEASURED_VARM_KEY: Final = "measured"
"""``mdata.mod[key].varm[...]``: bool DataFrame (features x datasets) of the features each dataset measured."""

DATASET_KEY: Final = "dataset"
"""``mdata.obs[...]`` column that :func:`pengster.data.mosaic` writes: the dataset of each cell."""


class REGISTRY_KEYS:
    """Keys of the tensors in a minibatch (the scvi-tools registry of :class:`~pengster.model.JointVAE`)."""

    BATCH: Final = "batch"
    CAT_COVS: Final = "extra_categorical_covs"
    CONT_COVS: Final = "extra_continuous_covs"
    SIZE_FACTOR: Final = "size_factor"
    PANEL: Final = "panel"

    @staticmethod
    def counts(modality: str) -> str:
        """Registry key of a modality's count matrix."""
        return f"x_{modality}"

    @staticmethod
    def has(modality: str) -> str:
        """Registry key of the per-cell 0/1 flag: was this modality measured."""
        return f"has_{modality}"
