"""Registration of the aligned MuData with scvi-tools, and the map from a user's MuData to its aligned view."""

from __future__ import annotations

import weakref

from mudata import MuData
from scvi.data import AnnDataManager
from scvi.data.fields import (
    MuDataCategoricalJointObsField,
    MuDataCategoricalObsField,
    MuDataLayerField,
    MuDataNumericalJointObsField,
    MuDataNumericalObsField,
)

from pengster._constants import MODALITIES, REGISTRY_KEYS
from pengster.data import _align
from pengster.data._prepare import Prepared


def register(prepared: Prepared, setup_method_args: dict, **kwargs):
    """Register the aligned MuData with scvi-tools fields; returns the :class:`~scvi.data.AnnDataManager`."""
    obs = prepared.aligned.obs
    fields = [
        MuDataLayerField(
            REGISTRY_KEYS.counts(modality),
            None,
            mod_key=mod_key,
            is_count_data=MODALITIES[modality].counts,
            mod_required=True,
        )
        for modality, mod_key in prepared.modalities.items()
    ]
    fields += [
        MuDataCategoricalObsField(REGISTRY_KEYS.BATCH, _align.BATCH_COLUMN),
        MuDataCategoricalObsField(REGISTRY_KEYS.PANEL, _align.PANEL_COLUMN),
        MuDataCategoricalJointObsField(
            REGISTRY_KEYS.CAT_COVS, [c for c in obs.columns if c.startswith(_align.covariate_column(""))]
        ),
        MuDataNumericalJointObsField(
            REGISTRY_KEYS.CONT_COVS, [c for c in obs.columns if c.startswith(_align.continuous_column(""))]
        ),
        MuDataNumericalObsField(
            REGISTRY_KEYS.SIZE_FACTOR,
            _align.SIZE_FACTOR_COLUMN if _align.SIZE_FACTOR_COLUMN in obs.columns else None,
            required=False,
        ),
    ]
    fields += [
        MuDataNumericalObsField(REGISTRY_KEYS.has(modality), _align.has_column(modality))
        for modality in prepared.modalities
    ]
    source = kwargs.get("source_registry")
    if source is not None:  # a registry saved before a field existed (pengster 0.1: no covariates, size factors)
        fields = [field for field in fields if field.registry_key in source["field_registries"]]
    manager = AnnDataManager(fields=fields, setup_method_args=setup_method_args)
    manager.register_fields(prepared.aligned, **kwargs)
    return manager


class AlignedStore:
    """Maps a user's MuData (by identity, weakly) to its :class:`Prepared` view; never writes to the MuData."""

    def __init__(self):
        self._entries: dict[int, tuple[weakref.ref, Prepared]] = {}

    def put(self, mdata: MuData, prepared: Prepared) -> None:
        """Remember ``prepared`` for ``mdata``."""
        key = id(mdata)
        self._entries = {k: v for k, v in self._entries.items() if v[0]() is not None}
        self._entries[key] = (weakref.ref(mdata, lambda _, key=key: self._entries.pop(key, None)), prepared)

    def get(self, mdata: MuData) -> Prepared | None:
        """The view of ``mdata``, or None if it was never set up."""
        entry = self._entries.get(id(mdata))
        if entry is None or entry[0]() is not mdata:
            return None
        return entry[1]
