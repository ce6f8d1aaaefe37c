"""Registration of the aligned MuData with scvi-tools, and the map from a user's MuData to its aligned view."""

from __future__ import annotations

import weakref
from collections.abc import Sequence

from mudata import MuData
from scvi.data import AnnDataManager
from scvi.data.fields import (
    MuDataCategoricalJointObsField,
    MuDataCategoricalObsField,
    MuDataLayerField,
    MuDataNumericalObsField,
)

from pengster._constants import REGISTRY_KEYS
from pengster.data import _align
from pengster.data._prepare import Prepared, default_modalities, prepare, resolve_dataset_key

__all__ = ["AlignedStore", "Prepared", "default_modalities", "prepare", "register", "resolve_dataset_key"]


def register(prepared: Prepared, categorical_covariate_keys: Sequence[str] | None, setup_method_args: dict, **kwargs):
    """Register the aligned MuData with scvi-tools fields; returns the :class:`~scvi.data.AnnDataManager`."""
    fields = [
        MuDataLayerField(REGISTRY_KEYS.counts(modality), None, mod_key=mod_key, is_count_data=True, mod_required=True)
        for modality, mod_key in prepared.modalities.items()
    ]
    fields += [
        MuDataCategoricalObsField(REGISTRY_KEYS.BATCH, _align.BATCH_COLUMN),
        MuDataCategoricalObsField(REGISTRY_KEYS.PANEL, _align.PANEL_COLUMN),
        MuDataCategoricalJointObsField(
            REGISTRY_KEYS.CAT_COVS, [_align.covariate_column(k) for k in categorical_covariate_keys or []]
        ),
    ]
    fields += [
        MuDataNumericalObsField(REGISTRY_KEYS.has(modality), _align.has_column(modality))
        for modality in prepared.modalities
    ]
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
