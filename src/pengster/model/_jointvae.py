"""JointVAE: one latent space over RNA, ATAC and protein, trained on mosaics of multiome and CITE-seq data."""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping, Sequence
from typing import Literal

import numpy as np
import pandas as pd
import torch
from mudata import MuData
from scvi.model._utils import get_max_epochs_heuristic
from scvi.model.base import BaseModelClass, UnsupervisedTrainingMixin
from scvi.train import TrainRunner

from pengster._constants import REGISTRY_KEYS
from pengster.module import JointVAEModule
from pengster.module._bridge import needs_bridge

from . import _callbacks, _checks, _query, _save, _setup, _speed
from ._plan import JointTrainingPlan
from ._sampler import MosaicDataSplitter

logger = logging.getLogger(__name__)


class JointVAE(UnsupervisedTrainingMixin, BaseModelClass):
    """Joint variational autoencoder for RNA, ATAC and surface protein, with an interdependent ELBO.

    Each measured modality has its own encoder ``q(z | x_m)``; a masked product of experts fuses those a cell has.
    The loss is the ELBO of the fused posterior plus, for every measured modality, the ELBO of its own posterior
    reconstructing all of the cell's measured modalities, plus a contrastive (InfoNCE) term that aligns the
    modality embeddings of the same cell. See the user guide for the generative model.

    Parameters
    ----------
    mdata
        MuData registered with :meth:`setup_mudata`.
    n_latent
        Dimension of the latent space.
    n_hidden
        Hidden units of encoders and decoders.
    n_layers
        Hidden layers of encoders and decoders.
    dropout_rate
        Dropout in the encoders.
    encode_covariates
        Also give batch and covariates to the encoders.
    rna_likelihood
        ``nb`` or ``zinb``.
    atac_likelihood
        ``bernoulli`` (binarised peaks) or ``poisson`` (fragment counts).
    cross_weight
        Weight of each single-modality posterior's ELBO (the cross-modal terms).
    contrastive_weight
        Weight of the contrastive alignment; 0 switches it off.
    temperature
        Initial InfoNCE temperature.
    learn_temperature
        Learn the temperature.
    predict_cell_factor
        When ATAC is predicted for a cell, predict its ATAC cell factor (accessibility depth) from the depth of the
        source modalities instead of using the mean factor.
    mixing_weight
        Weight of the maximum mean discrepancy between the datasets of a mosaic in the joint latent, which pulls
        runs that share few features (e.g. a multiome and a CITE-seq run with different gene panels) into one space;
        0 switches it off. It has no effect on a single dataset. ``None`` (default): 10 when the model builds an
        RNA bridge (see ``bridge_weight``), else 0; on its own, without a bridge to anchor it, it can mix the
        wrong cell types.
    bridge_weight
        Weight of the RNA bridge of a mosaic: an extra encoder of only the genes every dataset measured, blind to
        the dataset, whose posterior each cell's joint posterior is pulled towards (a KL term), so that runs with
        different gene panels meet where their shared genes say they should. ``None`` (default): 1 when the
        datasets measured different genes and share at least 10, else 0 (no bridge is built).

    Examples
    --------
    >>> pengster.model.JointVAE.setup_mudata(mdata, modalities={"rna": "rna", "protein": "prot"})
    >>> model = pengster.model.JointVAE(mdata)
    >>> model.train()
    >>> pengster.tl.write_results(model, mdata)
    """

    _module_cls = JointVAEModule
    _data_splitter_cls = MosaicDataSplitter
    _training_plan_cls = JointTrainingPlan
    _train_runner_cls = TrainRunner
    _store = _setup.AlignedStore()

    def __init__(
        self,
        mdata: MuData,
        n_latent: int = 20,
        n_hidden: int = 256,
        n_layers: int = 1,
        dropout_rate: float = 0.1,
        encode_covariates: bool = False,
        rna_likelihood: Literal["nb", "zinb"] = "nb",
        atac_likelihood: Literal["bernoulli", "poisson"] = "bernoulli",
        cross_weight: float = 1.0,
        contrastive_weight: float = 1.0,
        temperature: float = 0.1,
        learn_temperature: bool = True,
        predict_cell_factor: bool = True,
        mixing_weight: float | None = None,
        bridge_weight: float | None = None,
    ):
        prepared = self._store.get(mdata)
        if prepared is None:
            raise ValueError("mdata is not set up; call pengster.model.JointVAE.setup_mudata(mdata, ...) first.")
        super().__init__(prepared.aligned)
        self.mdata = mdata
        self.modalities: dict[str, str] = dict(prepared.modalities)
        cat_covs = self.adata_manager.get_state_registry(REGISTRY_KEYS.CAT_COVS)
        background = prepared.protein_background
        if bridge_weight is None:
            rna_masks = prepared.feature_masks.get("rna")
            bridge_weight = 1.0 if rna_masks is not None and needs_bridge(torch.as_tensor(rna_masks)) else 0.0
        if mixing_weight is None:
            mixing_weight = 10.0 if bridge_weight > 0 else 0.0
        self.module = self._module_cls(
            n_features={m: prepared.aligned.mod[key].n_vars for m, key in self.modalities.items()},
            feature_masks={m: torch.as_tensor(mask) for m, mask in prepared.feature_masks.items()},
            n_batch=self.summary_stats.n_batch,
            n_cats_per_cov=list(cat_covs.get("n_cats_per_key", [])),
            batch_has_modality=torch.as_tensor(prepared.batch_has_modality),
            n_latent=n_latent,
            n_hidden=n_hidden,
            n_layers=n_layers,
            dropout_rate=dropout_rate,
            encode_covariates=encode_covariates,
            rna_likelihood=rna_likelihood,
            atac_likelihood=atac_likelihood,
            cross_weight=cross_weight,
            contrastive_weight=contrastive_weight,
            temperature=temperature,
            learn_temperature=learn_temperature,
            predict_cell_factor=predict_cell_factor,
            mixing_weight=mixing_weight,
            bridge_weight=bridge_weight,
            protein_background_init=None if background is None else torch.as_tensor(background),
        )
        self._model_summary_string = (
            f"JointVAE: modalities {self.modalities}, n_latent {n_latent}, cross_weight {cross_weight}, "
            f"contrastive_weight {contrastive_weight}, mixing_weight {mixing_weight}, bridge_weight {bridge_weight}, "
            f"{self.summary_stats.n_batch} batches"
        )
        self.init_params_ = self._get_init_params(locals())

    # ------------------------------------------------------------------------------------------------ setup
    @classmethod
    def setup_anndata(cls, adata, *args, **kwargs):
        """Not supported: JointVAE registers MuData; use :meth:`setup_mudata`."""
        raise TypeError(
            "JointVAE registers MuData: wrap your AnnData, mudata.MuData({'rna': adata}), and call setup_mudata."
        )

    @classmethod
    def setup_mudata(
        cls,
        mdata: MuData,
        modalities: Mapping[str, str] | None = None,
        layers: Mapping[str, str | None] | None = None,
        batch_key: str | None = None,
        categorical_covariate_keys: Sequence[str] | None = None,
        dataset_key: str | None = None,
        **kwargs,
    ) -> None:
        """Register a MuData with up to three modalities; the MuData itself is not modified.

        Parameters
        ----------
        mdata
            Cells x modalities; a modality may hold a subset of the cells (a mosaic), see
            :func:`pengster.data.mosaic`.
        modalities
            Modality (``rna``, ``atac``, ``protein``) -> key of ``mdata.mod``. Default: found among the usual
            keys (``rna``/``gex``, ``atac``/``peaks``, ``prot``/``protein``/``adt``).
        layers
            Modality -> layer holding raw counts; a missing entry or None means ``.X``.
        batch_key
            Column of ``mdata.obs`` with the batch of each cell.
        categorical_covariate_keys
            Columns of ``mdata.obs`` with further categorical covariates (given to the decoders).
        dataset_key
            Column of ``mdata.obs`` naming each cell's dataset: minibatches hold cells of every dataset, and
            feature panels (``mdata.mod[key].varm['measured']``) are read per dataset. Default: ``'dataset'``
            when that column exists.
        **kwargs
            Passed to :meth:`scvi.data.AnnDataManager.register_fields` (e.g. ``source_registry``).
        """
        setup_method_args = cls._get_setup_method_args(**locals())
        prepared = _setup.prepare(
            mdata,
            modalities=modalities,
            layers=layers,
            batch_key=batch_key,
            categorical_covariate_keys=categorical_covariate_keys,
            dataset_key=_setup.resolve_dataset_key(mdata, dataset_key),
        )
        manager = _setup.register(prepared, categorical_covariate_keys, setup_method_args, **kwargs)
        cls.register_manager(manager)
        cls._store.put(mdata, prepared)

    def _validate_anndata(self, adata: MuData | None = None, copy_if_view: bool = True) -> MuData:
        """Map a user's MuData to its registered aligned view (set up with the saved arguments on first use)."""
        if adata is None or adata is self.mdata or adata is self.adata:
            return super()._validate_anndata(self.adata, copy_if_view=copy_if_view)
        prepared = self._store.get(adata)
        if prepared is None:
            args = self.adata_manager._registry["setup_args"]
            reference = {key: self.adata.mod[key].var_names for key in self.modalities.values()}
            prepared = _setup.prepare(
                adata,
                modalities=args["modalities"] or self.modalities,
                layers=args["layers"],
                batch_key=args["batch_key"],
                categorical_covariate_keys=args["categorical_covariate_keys"],
                dataset_key=_setup.resolve_dataset_key(adata, args["dataset_key"]),
                reference_var_names=reference,
            )
            self._store.put(adata, prepared)
        args = self.adata_manager._registry["setup_args"]
        resolved = {**args, "dataset_key": _setup.resolve_dataset_key(adata, args["dataset_key"])}
        _checks.check_registered_categories(prepared.aligned.obs, self.adata_manager, resolved)
        return super()._validate_anndata(prepared.aligned, copy_if_view=False)

    def _aligned(self, mdata: MuData | None) -> MuData:
        return self._validate_anndata(mdata)

    # ------------------------------------------------------------------------------------------------ train
    def train(
        self,
        max_epochs: int | None = None,
        *,
        batch_size: int | None = None,
        early_stopping: bool = True,
        plan_kwargs: dict | None = None,
        fast: bool = True,
        data_on_device: bool | None = None,
        chunk_cells: int = 65_536,
        checkpoint_dir: str | None = None,
        **kwargs,
    ):
        """Train with scvi-tools' training plan; every argument of :meth:`scvi.model.SCVI.train` is accepted.

        Defaults that differ from scvi-tools: early stopping on ``validation_loss`` (patience 20), KL warm-up over
        a quarter of ``max_epochs`` (at most 50 epochs), minibatches holding every dataset, and for a query model
        (:meth:`load_query_data`) no weight decay. ``accelerator``, ``devices`` and ``strategy`` go to Lightning.

        Each training step is seeded from ``(scvi.settings.seed, epoch, minibatch)``; a NaN or infinite loss stops
        training with a :class:`FloatingPointError` naming the modality and the minibatch. With ``checkpoint_dir``,
        every epoch writes ``<checkpoint_dir>/last.ckpt`` and ``<checkpoint_dir>/last_model/`` (loadable with
        :meth:`load`); an interrupted run resumes, to the same result on CPU, with
        ``model.train(..., checkpoint_dir=d, ckpt_path=f"{d}/last.ckpt")`` on a model built with the same arguments.

        Parameters
        ----------
        max_epochs
            Passes over the data (default: scvi-tools' heuristic from the number of cells).
        batch_size
            Cells per minibatch. Default: 256 up to 25k cells, doubling with the data above that (at most 2048),
            see ``pengster.model._speed.auto_batch_size``. The learning rate is 3e-3 (chosen on a validation
            split, ``benchmarks/results/tune.md``); with ``fast`` and the automatic size it grows with the square
            root of the minibatch. ``plan_kwargs={"lr": ...}`` overrides both.
        early_stopping
            Stop when the validation loss stops improving.
        plan_kwargs
            Passed to scvi-tools' ``TrainingPlan`` (e.g. ``lr``, ``weight_decay``).
        fast
            Minibatches gathered on the training device from the CSR matrices (the whole matrix on the GPU when it
            fits, else read in contiguous chunks in shuffled order, also from a backed h5mu), TF32 matrix
            products and a compiled ATAC likelihood on GPUs (float32 throughout; bf16 is not used), fused Adam; on
            CPU the RNA/ATAC encoders read only the nonzero counts (same values, see ``JointVAEModule.use_sparse``).
            False: scvi-tools' loader, minibatches of 256 and the dense reference computation.
        data_on_device
            Keep the whole count matrices on the device (True), read them in chunks (False), or decide from the
            free GPU memory (None).
        chunk_cells
            Cells per chunk when the data is read in chunks.
        checkpoint_dir
            Write ``last.ckpt`` and ``last_model/`` there after every epoch (see below).
        **kwargs
            Passed to scvi-tools' ``UnsupervisedTrainingMixin.train`` and Lightning's ``Trainer``.
        """
        max_epochs = max_epochs or get_max_epochs_heuristic(self.adata.n_obs)
        plan_kwargs = {"n_epochs_kl_warmup": max(1, min(50, max_epochs // 4)), **(plan_kwargs or {})}
        if getattr(self, "is_query_", False):
            # weight decay would move the frozen reference weights (their gradients are zeroed, not their decay)
            plan_kwargs.setdefault("weight_decay", 0.0)
        if early_stopping:
            kwargs.setdefault("early_stopping_monitor", "validation_loss")
            kwargs.setdefault("early_stopping_patience", 20)
        binary = "atac" in self.modalities and self.module.decoders["atac"].likelihood == "bernoulli"
        batch_size, plan_kwargs, kwargs = _speed.speed_options(
            n_cells=self.adata.n_obs,
            batch_size=batch_size,
            fast=fast,
            data_on_device=data_on_device,
            chunk_cells=chunk_cells,
            binary_keys=(REGISTRY_KEYS.counts("atac"),) if binary else (),
            plan_kwargs=plan_kwargs,
            trainer_kwargs=kwargs,
        )
        kwargs["callbacks"] = _callbacks.training_callbacks(self, checkpoint_dir, kwargs.get("callbacks"))
        with (
            _speed.fast_context(fast, accelerator=kwargs.get("accelerator", "auto"), module=self.module),
            _callbacks.training_guard(checkpoint_dir, kwargs["callbacks"]),
        ):
            return super().train(
                max_epochs=max_epochs,
                batch_size=batch_size,
                early_stopping=early_stopping,
                plan_kwargs=plan_kwargs,
                **kwargs,
            )

    @classmethod
    def load_query_data(
        cls,
        query: MuData,
        reference: JointVAE | str,
        *,
        unfrozen: bool = False,
        freeze_dropout: bool = False,
        freeze_expression: bool = True,
        freeze_decoder_first_layer: bool = True,
        freeze_batchnorm_encoder: bool = True,
        freeze_batchnorm_decoder: bool = False,
        accelerator: str = "auto",
        device: int | str = "auto",
    ) -> JointVAE:
        """Map new data onto a trained reference (scArches :cite:p:`lotfollahi2022scarches`); train the result.

        Follows :meth:`scvi.model.base.ArchesMixin.load_query_data`: the query model has the reference's weights,
        new embedding rows for the query's new batches and datasets, and by default only those rows (and the
        per-batch protein background) train, so the reference cells keep their latent coordinates. The query may
        hold a subset of the reference's modalities (e.g. RNA only, or RNA and protein) and a different feature
        panel: it is aligned with :func:`pengster.data.prepare_query` (reorder, zero-pad and mask missing
        features, drop unknown ones) unless it already is. The query's datasets are new datasets of the model.

        Parameters
        ----------
        query
            New cells: raw counts in the reference's layers, and the reference's ``batch_key`` column in ``obs``.
            It is not modified; the query model holds the prepared MuData as ``query_model.mdata``.
        reference
            The trained reference model, or the folder it was saved to. It is not modified.
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
        accelerator, device
            Where the query model lives, as in scvi-tools.

        Returns
        -------
        An untrained query model; call its :meth:`train` (no weight decay by default).

        Examples
        --------
        >>> query_model = pengster.model.JointVAE.load_query_data(query, reference_model)
        >>> query_model.train(max_epochs=100)
        >>> pengster.tl.transfer_labels(query_model, query_model.mdata, labels_key="cell_type", reference=mdata)
        """
        freeze_options = {
            "unfrozen": unfrozen,
            "freeze_dropout": freeze_dropout,
            "freeze_expression": freeze_expression,
            "freeze_decoder_first_layer": freeze_decoder_first_layer,
            "freeze_batchnorm_encoder": freeze_batchnorm_encoder,
            "freeze_batchnorm_decoder": freeze_batchnorm_decoder,
        }
        return _query.load_query_data(
            cls, query, reference, freeze_options=freeze_options, accelerator=accelerator, device=device
        )

    def save(self, dir_path: str, *, overwrite: bool = False, save_anndata: bool = False, **kwargs) -> None:
        """Save atomically, with a manifest of versions, registry and checksum.

        See :meth:`scvi.model.base.BaseModelClass.save` for the arguments. The files are written to a temporary
        folder next to ``dir_path`` and renamed into place when complete.
        """
        _save.save_atomically(
            self,
            dir_path,
            overwrite=overwrite,
            write=lambda folder: super(JointVAE, self).save(
                folder, overwrite=True, save_anndata=save_anndata, **kwargs
            ),
        )

    @classmethod
    def load(cls, dir_path: str, mdata: MuData | None = None, **kwargs) -> JointVAE:
        """Load a saved model; ``mdata`` is set up with the saved arguments. See :meth:`scvi.model.SCVI.load`.

        Raises when the folder is incomplete or damaged, was saved by an incompatible pengster, or when ``mdata``'s
        features differ from the model's.
        """
        _save.check_saved(dir_path, model_class=cls.__name__, mdata=mdata)
        return super().load(dir_path, adata=mdata, **kwargs)

    # ------------------------------------------------------------------------------------------------ getters
    def _minibatches(self, mdata, indices, batch_size) -> Iterator[dict[str, torch.Tensor]]:
        aligned = self._aligned(mdata)
        loader = self._make_data_loader(adata=aligned, indices=indices, batch_size=batch_size or 1024)
        yield from loader

    def _check_modality(self, modality: str, *, argument: str) -> None:
        if modality not in self.modalities:
            raise ValueError(
                f"{argument}={modality!r}, but this JointVAE was trained on {list(self.modalities)}; "
                f"pass one of those (set up the data with modalities={{{modality!r}: ...}} to model it)."
            )

    @torch.inference_mode()
    def get_latent_representation(
        self,
        mdata: MuData | None = None,
        *,
        modality: str | None = None,
        indices: Sequence[int] | None = None,
        batch_size: int | None = None,
    ) -> np.ndarray:
        """Posterior mean of the latent, array of shape ``(n_cells, n_latent)``.

        Parameters
        ----------
        mdata
            Data to embed (default: the training data).
        modality
            None for the joint posterior over all of a cell's modalities; a modality for the posterior from
            that modality alone (NaN rows for cells that did not measure it).
        indices
            Cells to embed (default: all).
        batch_size
            Cells per minibatch.
        """
        self._check_if_trained(warn=False)
        if modality is not None:
            self._check_modality(modality, argument="modality")
        latents = []
        for tensors in self._minibatches(mdata, indices, batch_size):
            inputs = self.module._get_inference_input(tensors)
            experts = self.module.experts(**inputs)
            has = {m: h.to(self.device) for m, h in inputs["has"].items()}
            use = None if modality is None else [modality]
            mean = self.module.fuse(experts, has, use).loc
            if modality is not None:
                mean = torch.where(has[modality].unsqueeze(-1) > 0, mean, torch.nan)
            latents.append(mean.cpu().numpy())
        return np.concatenate(latents)

    def _decode_scaled(self, target, z, tensors, *, denoised: bool, cell_factor=None) -> torch.Tensor:
        """Decoded values of ``target`` for ``z`` of shape ``(n_samples, n_cells, n_latent)``.

        A cell whose batch never measured ``target`` is decoded under every batch that did, and averaged.
        """
        module = self.module
        batch_index = tensors[REGISTRY_KEYS.BATCH].to(self.device).long()
        cat_covs = tensors.get(REGISTRY_KEYS.CAT_COVS)
        cat_covs = None if cat_covs is None else cat_covs.to(self.device).long()
        panel = tensors[REGISTRY_KEYS.PANEL].to(self.device).long()
        mask = module.feature_mask(target, panel)
        if cell_factor is None and target == "atac":
            cell_factor = module.atac_cell_factor_mean.expand(z.shape[1], 1)
        decode = module.denoised_values if denoised else module.predicted_values
        column = list(self.modalities).index(target)
        seen = module.batch_has_modality[:, column]
        own_ok = seen[batch_index.view(-1)] > 0
        values = decode(target, z, module._categoricals(batch_index, cat_covs), mask, cell_factor)
        if not own_ok.all():
            stand_ins = torch.nonzero(seen).view(-1).tolist()
            averaged = sum(
                decode(target, z, module._categoricals(torch.full_like(batch_index, b), cat_covs), mask, cell_factor)
                for b in stand_ins
            ) / len(stand_ins)
            values = torch.where(own_ok.view(1, -1, 1), values, averaged)
        return values

    def _frame(self, values: np.ndarray, mdata, indices, target: str) -> pd.DataFrame:
        aligned = self._aligned(mdata)
        obs_names = aligned.obs_names if indices is None else aligned.obs_names[np.asarray(indices)]
        return pd.DataFrame(values, index=obs_names, columns=aligned.mod[self.modalities[target]].var_names)

    @torch.inference_mode()
    def predict(
        self,
        mdata: MuData | None = None,
        *,
        target: str,
        source: str | Sequence[str] | None = None,
        n_samples: int = 1,
        return_std: bool | None = None,
        indices: Sequence[int] | None = None,
        batch_size: int | None = None,
    ) -> pd.DataFrame | tuple[pd.DataFrame, pd.DataFrame]:
        """Predict ``target`` from the ``source`` modalities only, for every cell.

        Parameters
        ----------
        mdata
            Data (default: the training data).
        target
            Modality to predict.
        source
            Modalities to predict from (default: all others). The cell's own ``target`` is never used.
        n_samples
            1: decode the posterior mean. More: decode that many posterior samples and average.
        return_std
            Also return the standard deviation over samples (default: when ``n_samples > 1``).
        indices
            Cells to predict (default: all).
        batch_size
            Cells per minibatch.

        Returns
        -------
        DataFrame (cells x target features) in the target's scale: ``rna`` log1p of counts per 10k, ``atac``
        accessibility probability, ``protein`` CLR of counts. Rows of cells with none of the source modalities
        are NaN. With ``return_std``, a tuple ``(mean, std)``.
        """
        self._check_if_trained(warn=False)
        self._check_modality(target, argument="target")
        sources = (
            [m for m in self.modalities if m != target]
            if source is None
            else [source]
            if isinstance(source, str)
            else list(source)
        )
        for modality in sources:
            self._check_modality(modality, argument="source")
        if target in sources:
            raise ValueError(
                f"source {sources} contains the target {target!r}; pass source=<other modalities of "
                f"{list(self.modalities)}>, or None for all modalities but the target."
            )
        if n_samples < 1:
            raise ValueError(f"n_samples={n_samples}; pass n_samples >= 1.")
        return_std = n_samples > 1 if return_std is None else return_std
        means, stds = [], []
        for tensors in self._minibatches(mdata, indices, batch_size):
            inputs = self.module._get_inference_input(tensors)
            experts = self.module.experts(**inputs)
            has = {m: h.to(self.device) for m, h in inputs["has"].items()}
            qz = self.module.fuse(experts, has, sources)
            z = qz.loc.unsqueeze(0) if n_samples == 1 else qz.sample((n_samples,))
            cell_factor = (
                self.module.source_cell_factor(inputs["x"], has, inputs["panel"], sources) if target == "atac" else None
            )
            values = self._decode_scaled(target, z, tensors, denoised=False, cell_factor=cell_factor)
            available = sum(has[m] for m in sources) > 0
            mean = torch.where(available.unsqueeze(-1), values.mean(0), torch.nan)
            std = torch.where(available.unsqueeze(-1), values.std(0, unbiased=False), torch.nan)
            means.append(mean.cpu().numpy())
            stds.append(std.cpu().numpy())
        mean = self._frame(np.concatenate(means), mdata, indices, target)
        if not return_std:
            return mean
        return mean, self._frame(np.concatenate(stds), mdata, indices, target)

    @torch.inference_mode()
    def get_normalized_expression(
        self,
        mdata: MuData | None = None,
        *,
        modality: str,
        n_samples: int = 1,
        batch_size: int | None = None,
    ) -> pd.DataFrame:
        """Denoised values of a measured modality, for the cells that measured it, from their joint posterior.

        Scales as in :meth:`predict`; protein is the foreground only (background removed), as CLR.

        Returns
        -------
        DataFrame (cells that measured ``modality`` x its features), rows in the order of the modality's cells.
        """
        self._check_if_trained(warn=False)
        self._check_modality(modality, argument="modality")
        rows = []
        for tensors in self._minibatches(mdata, None, batch_size):
            inputs = self.module._get_inference_input(tensors)
            outputs = self.module.inference(**inputs)
            has = outputs["has"][modality] > 0
            qz = self.module.fuse(outputs["experts"], outputs["has"])
            z = qz.loc.unsqueeze(0) if n_samples == 1 else qz.sample((n_samples,))
            values = self._decode_scaled(modality, z, tensors, denoised=True, cell_factor=outputs["cell_factor"])
            rows.append(values.mean(0)[has].cpu().numpy())
        aligned = self._aligned(mdata)
        measured = aligned.obs[f"_pengster_has_{modality}"].to_numpy() > 0
        frame = pd.DataFrame(
            np.concatenate(rows),
            index=aligned.obs_names[measured],
            columns=aligned.mod[self.modalities[modality]].var_names,
        )
        user = self.mdata if mdata is None else mdata
        return frame.loc[user.mod[self.modalities[modality]].obs_names]
