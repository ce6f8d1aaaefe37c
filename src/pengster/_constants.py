"""Names shared by the data, module and model layers, and the table of the modalities pengster models."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Final


@dataclass(frozen=True)
class Modality:
    """What the data layer, the writer and the command line know of one modality (its model part is its head).

    Parameters
    ----------
    name
        The modality's name in pengster (``rna``, ``atac``, ``protein``); ``setup_mudata`` takes its layer as
        ``<name>_layer``.
    default_keys
        Keys of ``mdata.mod`` that hold it when ``setup_mudata`` is given no ``modalities``.
    scale
        The scale that :meth:`~pengster.model.JointVAE.predict` and :func:`~pengster.tl.write_results` report it on.
    counts
        Its layer holds counts (non-negative integers, checked by ``setup_mudata``); False for continuous values.
    normalized_hint
        Said when the layer holds non-integer values, to point at the raw counts.
    zero_is_unmeasured
        A dataset whose values of a feature are all zero did not measure it (antibody panels).
    readout
        ``predict``'s default read-out of it (``readout="auto"``): ``blend``, the decoded value averaged with the
        nearest training cells' measured values, or ``population``, averaged with the mean measured value of all
        training cells (ATAC: single nuclei's binary peaks are too noisy to average over a few neighbours, but the
        open rate of each peak across the training cells calibrates the decoded probabilities across peaks).
    wide
        It may have so many features (peaks) that ``write_results`` writes it only when asked (above 10,000).
    """

    name: str
    default_keys: tuple[str, ...]
    scale: str
    counts: bool = True
    normalized_hint: str = "it looks normalized"
    zero_is_unmeasured: bool = False
    readout: str = "blend"
    wide: bool = False

    @property
    def layer_argument(self) -> str:
        """The ``setup_mudata`` argument naming its layer (and its key in ``modalities``)."""
        return f"{self.name}_layer"


MODALITIES: Final[dict[str, Modality]] = {
    spec.name: spec
    for spec in (
        Modality("rna", ("rna", "gex", "RNA"), "log1p counts per 10k", normalized_hint="it looks log-normalized"),
        Modality(
            "atac",
            ("atac", "ATAC", "peaks"),
            "probability",
            readout="population",
            wide=True,
            normalized_hint="it looks TF-IDF (or otherwise) normalized; pengster wants raw peak counts or binary "
            "accessibility",
        ),
        Modality(
            "protein",
            ("prot", "protein", "adt", "ADT"),
            "CLR of counts",
            normalized_hint="it looks CLR-normalized",
            zero_is_unmeasured=True,
        ),
    )
}
"""Modality name -> :class:`Modality`, in pengster's fixed order. ``pengster.module.register_modality`` adds one."""

MEASURED_VARM_KEY: Final = "measured"
"""``mdata.mod[key].varm[...]``: bool DataFrame (features x datasets) of the features each dataset measured."""

DATASET_KEY: Final = "dataset"
"""``mdata.obs[...]`` column that :func:`pengster.data.mosaic` writes: the dataset of each cell."""


class _LayerArguments(Mapping):
    """Modality -> the ``setup_mudata`` argument naming its counts layer; follows :data:`MODALITIES` as it grows."""

    def __getitem__(self, modality: str) -> str:
        return MODALITIES[modality].layer_argument

    def __iter__(self) -> Iterator[str]:
        return iter(MODALITIES)

    def __len__(self) -> int:
        return len(MODALITIES)


LAYER_ARGUMENTS: Final[Mapping[str, str]] = _LayerArguments()
"""Modality -> the ``setup_mudata`` argument naming its counts layer (and its key in ``modalities``)."""


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
