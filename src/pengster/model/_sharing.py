"""Sharing a trained model: save it as data, load it, and map a query onto it (scvi-tools' ``ArchesMixin``)."""

from __future__ import annotations

import rich.pretty  # noqa: F401 - scvi-tools' setup printers use rich.pretty without importing it
from mudata import MuData
from scvi.data import AnnDataManager
from scvi.model.base import BaseModelClass

from pengster.io import _load, _save

from . import _query


class SharingMixin:
    """:meth:`save`, :meth:`load` and :meth:`load_query_data` of :class:`~pengster.model.JointVAE`."""

    @classmethod
    def load_query_data(
        cls,
        adata: MuData,
        reference_model: BaseModelClass | str,
        inplace_subset_query_vars: bool = False,
        accelerator: str = "auto",
        device: int | str = "auto",
        unfrozen: bool = False,
        freeze_dropout: bool = False,
        freeze_expression: bool = True,
        freeze_decoder_first_layer: bool = True,
        freeze_batchnorm_encoder: bool = True,
        freeze_batchnorm_decoder: bool = False,
    ) -> BaseModelClass:
        """Map new data onto a trained reference (scArches :cite:p:`lotfollahi2022scarches`); train the result.

        Follows :meth:`scvi.model.base.ArchesMixin.load_query_data`: the query model has the reference's weights,
        new embedding rows for the query's new batches and datasets, and by default only those rows (and the
        per-batch protein background) train, so the reference cells keep their latent coordinates. The query may
        hold a subset of the reference's modalities (e.g. RNA only, or RNA and protein) and a different feature
        panel: it is aligned with :func:`pengster.data.prepare_query` (reorder, zero-pad and mask missing
        features, drop unknown ones) unless it already is. The query's datasets are new datasets of the model.

        Parameters
        ----------
        adata
            The query's cells (a MuData): raw counts in the reference's layers, and the reference's ``batch_key``
            column in ``obs``. It is not modified; the query model holds the prepared MuData as
            ``query_model.mdata``.
        reference_model
            The trained reference model, or the folder it was saved to (read as data, see :meth:`load`). It is not
            modified.
        inplace_subset_query_vars
            Must be False: the query's features are aligned into ``query_model.mdata``, and ``adata`` is never
            changed.
        accelerator, device
            Where the query model lives, as in scvi-tools.
        unfrozen
            Train every weight (overrides the other options).
        freeze_dropout
            Switch dropout off during query training.
        freeze_expression
            Keep the encoders' first layer fixed except for its covariate columns.
        freeze_decoder_first_layer
            Keep the decoders' first layer fixed except for its covariate columns.
        freeze_batchnorm_encoder
            Keep the batch-norm statistics and parameters of encoder layers (the ATAC cell factor) fixed.
        freeze_batchnorm_decoder
            Keep the batch-norm statistics and parameters of decoder layers (ATAC, protein) fixed.

        Returns
        -------
        An untrained query model; call its :meth:`train` (no weight decay by default).

        Examples
        --------
        >>> query_model = pengster.model.JointVAE.load_query_data(query, reference_model)
        >>> query_model.train(max_epochs=100)
        >>> pengster.tl.transfer_labels(query_model, query_model.mdata, labels_key="cell_type", reference=mdata)
        """
        if inplace_subset_query_vars:
            raise ValueError(
                "inplace_subset_query_vars=True is not supported: load_query_data aligns the query's features "
                "(reorders, zero-pads and masks the missing ones) into query_model.mdata and never changes adata; "
                "leave it False."
            )
        freeze_options = {
            "unfrozen": unfrozen,
            "freeze_dropout": freeze_dropout,
            "freeze_expression": freeze_expression,
            "freeze_decoder_first_layer": freeze_decoder_first_layer,
            "freeze_batchnorm_encoder": freeze_batchnorm_encoder,
            "freeze_batchnorm_decoder": freeze_batchnorm_decoder,
        }
        return _query.load_query_data(
            cls, adata, reference_model, freeze_options=freeze_options, accelerator=accelerator, device=device
        )

    def save(
        self,
        dir_path: str,
        *,
        overwrite: bool = False,
        save_anndata: bool = False,
        save_kwargs: dict | None = None,
        **anndata_write_kwargs,
    ) -> None:
        """Save the model as data: weights as safetensors, everything else as JSON; atomically.

        The folder holds ``model.safetensors``, ``pengster.json`` (versions, setup arguments, registry, model
        arguments, feature names, training history and the checksum of each file) and, with ``save_anndata``,
        ``adata.h5mu``. The files are written to a temporary folder next to ``dir_path`` and renamed into place when
        complete, so an interrupted save leaves the previous model, never a partial one.

        Parameters
        ----------
        dir_path
            Folder to save to.
        overwrite
            Replace an existing ``dir_path``.
        save_anndata
            Also save the MuData the model was built on (``model.mdata``), so that ``load(dir_path)`` needs no data.
        save_kwargs
            Passed to ``safetensors.torch.save_file`` (e.g. ``{"metadata": {...}}``).
        **anndata_write_kwargs
            Passed to ``MuData.write`` (e.g. ``compression="gzip"``).
        """
        _save.save_model(
            self,
            dir_path,
            overwrite=overwrite,
            save_anndata=save_anndata,
            save_kwargs=save_kwargs,
            **anndata_write_kwargs,
        )

    @classmethod
    def load(
        cls,
        dir_path: str,
        adata: MuData | None = None,
        accelerator: str = "auto",
        device: int | str = "auto",
        **removed,
    ) -> BaseModelClass:
        """Load a model saved with :meth:`save`; reading the folder never runs code from it.

        Raises when the folder is incomplete or damaged, is not a pengster save, was saved by an incompatible
        pengster, or when ``adata``'s features differ from the model's. A model saved by pengster 0.1 (a pickle) is
        refused: convert it once with :func:`pengster.model.convert_legacy` if you trust it.

        Parameters
        ----------
        dir_path
            Folder given to :meth:`save`.
        adata
            MuData with the model's features, set up here with the saved arguments (no :meth:`setup_mudata` call is
            needed). Default: the MuData saved with ``save_anndata=True``.
        accelerator, device
            Where the model lives, as in scvi-tools.

        Examples
        --------
        >>> model.save("model_dir", save_anndata=True)
        >>> model = pengster.model.JointVAE.load("model_dir")
        """
        if "mdata" in removed:
            raise TypeError(
                "load() got mdata=, pengster 0.1's name; pass adata= (scvi-tools' name), e.g. load(d, adata=mdata)."
            )
        if removed:
            raise TypeError(f"load() got unexpected keyword arguments {sorted(removed)}.")
        return _load.load_model(cls, dir_path, adata, accelerator=accelerator, device=device)

    @classmethod
    def load_registry(cls, dir_path: str, prefix: str | None = None) -> dict:
        """The scvi-tools registry saved with a model by :meth:`save` (read as data, as :meth:`load` does)."""
        if prefix is not None:
            raise ValueError(f"prefix={prefix!r}: pengster saves no file-name prefix; pass the folder alone.")
        return _load.read_saved(dir_path, model_class=cls.__name__).registry

    @classmethod
    def view_setup_args(cls, dir_path: str, prefix: str | None = None) -> None:
        """Print the :meth:`setup_mudata` arguments of a model saved by :meth:`save`."""
        AnnDataManager.view_setup_method_args(cls.load_registry(dir_path, prefix))

    def view_anndata_setup(self, adata: MuData | None = None, hide_state_registries: bool = False) -> None:
        """Print the setup summary (registry, summary statistics) of the training MuData or of ``adata``."""
        manager = self.get_anndata_manager(self._validate_anndata(adata), required=True)
        manager.view_registry(hide_state_registries=hide_state_registries)
