"""JointVAE: one latent space over RNA, ATAC and protein, trained on mosaics of multiome and CITE-seq data."""

from __future__ import annotations

import logging
import numbers
import sys
from collections.abc import Mapping, Sequence
from typing import Literal

import numpy as np
import scvi
import torch
from mudata import MuData
from scvi.model.base import BaseModelClass, UnsupervisedTrainingMixin, VAEMixin
from scvi.train import TrainRunner

from pengster._constants import LAYER_ARGUMENTS, REGISTRY_KEYS
from pengster.data import _checks
from pengster.data._align import has_column
from pengster.data._prepare import Prepared, prepare_from_args, resolve_dataset_key
from pengster.dataloaders import MosaicDataSplitter
from pengster.module import JointVAEModule
from pengster.module._bridge import needs_bridge
from pengster.train import JointTrainingPlan
from pengster.train._callbacks import training_callbacks, training_guard
from pengster.train._options import default_max_epochs, training_length, training_options
from pengster.train._quiet import quiet_lightning

from . import _legacy, _setup
from ._analyses import JointVAEAnalysesMixin
from ._outputs import JointVAEOutputsMixin
from ._sharing import SharingMixin

logger = logging.getLogger(__name__)


class JointVAE(
    JointVAEAnalysesMixin, JointVAEOutputsMixin, SharingMixin, VAEMixin, UnsupervisedTrainingMixin, BaseModelClass
):
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
    cross_terms
        ``all`` (default): every reconstruction term of the interdependent ELBO is decoded in every training step
        (3 decodes of each modality of a multiome cell). ``sampled``: the joint term, plus one cross term per
        measured modality of a cell, drawn in proportion to its weight and scored with the sum of the weights
        (2 decodes). ``single``: one term per measured modality, the joint one included in the draw (1 decode).
        Both are unbiased estimates of the same loss that train faster and slightly less well (on a validation
        split: equal on paired data with ``sampled``, lower marker AUROC on a mosaic with both; see
        :doc:`/benchmarks`). Validation losses and predictions use every term.
    cross_peak_fraction
        In training, score the cross terms of ATAC (a multiome cell's peaks decoded from its RNA alone and from its
        ATAC alone) on this fraction of the peaks, drawn anew each step, times ``1 / cross_peak_fraction``: an
        unbiased estimate of the same loss at a fraction of the cost of those terms. The joint term, validation
        losses and predictions use every peak. ``1`` scores every peak; needs ``atac_likelihood="bernoulli"``.

    Examples
    --------
    >>> pengster.model.JointVAE.setup_mudata(
    ...     mdata, rna_layer="counts", protein_layer="counts", modalities={"rna_layer": "rna", "protein_layer": "prot"}
    ... )
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
        cross_terms: Literal["all", "sampled", "single"] = "all",
        cross_peak_fraction: float = 1.0,
    ):
        prepared = self._prepared(mdata)
        if prepared is None:
            raise ValueError("mdata is not set up; call pengster.model.JointVAE.setup_mudata(mdata, ...) first.")
        super().__init__(prepared.aligned)
        self.mdata = mdata
        self.modalities: dict[str, str] = dict(prepared.modalities)
        cat_covs = self.adata_manager.get_state_registry(REGISTRY_KEYS.CAT_COVS)
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
            n_continuous_cov=self.summary_stats.get(f"n_{REGISTRY_KEYS.CONT_COVS}", 0),
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
            cross_terms=cross_terms,
            cross_peak_fraction=cross_peak_fraction,
        )
        self._initialize_heads(prepared)
        self._model_summary_string = (
            f"JointVAE: modalities {self.modalities}, n_latent {n_latent}, cross_weight {cross_weight}, "
            f"contrastive_weight {contrastive_weight}, mixing_weight {mixing_weight}, bridge_weight {bridge_weight}, "
            f"{self.summary_stats.n_batch} batches"
        )
        self.init_params_ = self._get_init_params(locals())

    def _initialize_heads(self, prepared) -> None:
        """Set the heads' data-driven initial values (e.g. the protein background) from the measured cells."""
        with torch.no_grad():
            for modality, head in self.module.heads.items():
                rows = np.flatnonzero(prepared.aligned.obs[has_column(modality)].to_numpy() > 0)
                if len(rows) == 0:
                    continue
                for name, value in head.initial_values(prepared.aligned.mod[self.modalities[modality]].X, rows).items():
                    getattr(head, name).copy_(value)

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
        rna_layer: str | None = None,
        atac_layer: str | None = None,
        protein_layer: str | None = None,
        batch_key: str | None = None,
        size_factor_key: str | None = None,
        categorical_covariate_keys: Sequence[str] | None = None,
        continuous_covariate_keys: Sequence[str] | None = None,
        modalities: Mapping[str, str] | None = None,
        dataset_key: str | None = None,
        **kwargs,
    ) -> None:
        """Register a MuData with up to three modalities, as ``scvi.model.MULTIVI.setup_mudata`` does.

        The MuData itself is not modified (the model registers an internal view of it).

        Parameters
        ----------
        mdata
            Cells x modalities; a modality may hold a subset of the cells (a mosaic), see
            :func:`pengster.data.mosaic`. Backed (``mudata.read_h5mu(path, backed=True)``) only when every modality
            holds every cell.
        rna_layer, atac_layer, protein_layer
            Layer of the modality holding raw counts; None uses its ``.X``.
        batch_key
            Column of ``mdata.obs`` with the batch of each cell.
        size_factor_key
            Column of ``mdata.obs`` with each cell's RNA library size (linear scale), used instead of its total
            counts in the RNA likelihood.
        categorical_covariate_keys
            Columns of ``mdata.obs`` with further categorical covariates (given to the decoders).
        continuous_covariate_keys
            Columns of ``mdata.obs`` with continuous covariates (e.g. percent mitochondrial counts), concatenated to
            the decoders' input.
        modalities
            ``setup_mudata`` argument name -> key of ``mdata.mod``, as in scvi-tools: the modalities of the model are
            the ``*_layer`` arguments it maps (e.g. ``{"rna_layer": "rna", "protein_layer": "prot"}``), and an obs
            argument it maps (e.g. ``"batch_key": "rna"``) is read from that modality's ``obs`` instead of
            ``mdata.obs``. None: the modalities found among the usual keys (``rna``/``gex``, ``atac``/``peaks``,
            ``prot``/``protein``/``adt``).
        dataset_key
            Column of ``mdata.obs`` naming each cell's dataset: minibatches hold cells of every dataset, and
            feature panels (``mdata.mod[key].varm['measured']``) are read per dataset. Default: ``'dataset'``
            when that column exists.
        **kwargs
            ``<name>_layer`` of a modality added with :func:`pengster.module.register_modality`; the rest is passed to
            :meth:`scvi.data.AnnDataManager.register_fields` (e.g. ``source_registry``).

        Examples
        --------
        >>> pengster.model.JointVAE.setup_mudata(
        ...     mdata,
        ...     rna_layer="counts",
        ...     protein_layer="counts",
        ...     batch_key="batch",
        ...     modalities={"rna_layer": "rna", "protein_layer": "prot"},
        ... )
        """
        setup_method_args = cls._get_setup_method_args(**locals())
        # the layer arguments of modalities added with pengster.module.register_modality
        added = [argument for argument in LAYER_ARGUMENTS.values() if argument in kwargs]
        setup_method_args["setup_args"].update({argument: kwargs.pop(argument) for argument in added})
        if "layers" in kwargs or _legacy.is_0_1_form(modalities):
            # a 0.1 registry reaches setup only through convert_legacy, which translates it: this is a user's call
            error = TypeError if "layers" in kwargs else ValueError
            raise error(_legacy.old_form_message({**setup_method_args["setup_args"], "layers": kwargs.get("layers")}))
        prepared = prepare_from_args(mdata, setup_method_args["setup_args"])
        manager = _setup.register(prepared, setup_method_args, **kwargs)
        cls.register_manager(manager)
        cls._remember(mdata, prepared)

    @classmethod
    def _prepared(cls, mdata: MuData) -> Prepared | None:
        """The aligned view of ``mdata`` that setup, loading or reference mapping built; None if never set up."""
        return cls._store.get(mdata)

    @classmethod
    def _remember(cls, mdata: MuData, prepared: Prepared) -> None:
        """Keep ``prepared`` as the aligned view of ``mdata`` (held weakly by ``mdata``'s identity)."""
        cls._store.put(mdata, prepared)

    def _validate_anndata(self, adata: MuData | None = None, copy_if_view: bool = True) -> MuData:
        """Map a user's MuData to its registered aligned view (set up with the saved arguments on first use)."""
        if adata is None or adata is self.mdata or adata is self.adata:
            return super()._validate_anndata(self.adata, copy_if_view=copy_if_view)
        args = self.adata_manager.registry["setup_args"]
        prepared = self._prepared(adata)
        if prepared is None:
            reference = {key: self.adata.mod[key].var_names for key in self.modalities.values()}
            prepared = prepare_from_args(adata, args, modalities=self.modalities, reference_var_names=reference)
            self._remember(adata, prepared)
        resolved = {**args, "dataset_key": resolve_dataset_key(adata, args["dataset_key"])}
        _checks.check_registered_categories(prepared.aligned.obs, self.adata_manager, resolved)
        if self.get_anndata_manager(prepared.aligned) is None:
            # the aligned view is ours and is always registered this way; scvi-tools would log that it does it
            self._register_manager_for_instance(self.adata_manager.transfer_fields(prepared.aligned))
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

        Defaults that differ from scvi-tools: early stopping on ``validation_loss`` decides the length of training
        (below), the weights of the epoch with the lowest validation loss are kept, KL warm-up over 125 optimizer
        steps, minibatches holding every dataset, and for a query model (:meth:`load_query_data`) no weight
        decay. ``accelerator``, ``devices`` and ``strategy`` go to Lightning.

        Each training step is seeded from ``(scvi.settings.seed, epoch, minibatch)``; a NaN or infinite loss or gradient
        stops training with a :class:`FloatingPointError` naming the minibatch and where the non-finite values start,
        and its update is never applied. With ``checkpoint_dir``, every epoch writes ``<checkpoint_dir>/last.ckpt``
        and ``<checkpoint_dir>/last_model/`` (loadable with :meth:`load`); an interrupted run resumes, to the same
        result on CPU, with ``model.train(..., checkpoint_dir=d, ckpt_path=f"{d}/last.ckpt")`` on a model built with
        the same arguments. Training leaves torch's settings and the process's signal handlers as it found them.

        Parameters
        ----------
        max_epochs
            Most passes over the data. Default: scvi-tools' heuristic (400 epochs up to 20k cells, fewer above;
            :func:`pengster.train.default_max_epochs`), a cap that early stopping usually ends well before.
        batch_size
            Cells per minibatch. Default: 256 up to 25k cells, doubling with the data above that (at most 2048),
            see ``pengster.train.auto_batch_size``. The learning rate is 3e-3 (chosen on a validation
            split, ``benchmarks/results/tune.md``); with ``fast`` and the automatic size it grows with the square
            root of the minibatch. ``plan_kwargs={"lr": ...}`` overrides both.
        early_stopping
            Stop when the validation loss (at the full KL weight, also during the warm-up) has not improved for 20
            epochs or 250 optimizer steps, whichever is longer, and keep the weights of its lowest epoch (see
            :func:`pengster.train.training_length`). Off, with a logged warning, when ``train_size=1.0`` leaves no
            validation cells; off, training runs ``max_epochs`` and keeps the last weights.
        plan_kwargs
            Passed to scvi-tools' ``TrainingPlan`` (e.g. ``lr``, ``weight_decay``).
        fast
            Minibatches gathered on the training device from the CSR matrices (the whole matrix on the GPU when it
            fits, else read in contiguous chunks in shuffled order, also from a backed h5mu), and the automatic
            minibatch size and learning rate above. False: scvi-tools' loader and minibatches of 256. Either way
            training is in float32 unless ``precision="bf16-mixed"`` is passed (bf16 autocast: the layers run in
            bf16, the likelihoods and the loss in float32; for GPUs with bf16 support).
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
        whole = isinstance(max_epochs, numbers.Integral) and not isinstance(max_epochs, bool)
        if max_epochs is not None and not (whole and max_epochs >= 1):
            raise ValueError(
                f"max_epochs={max_epochs!r}; pass a whole number of passes over the data of at least 1, or None for "
                "the default (pengster.train.default_max_epochs)."
            )
        plan_kwargs = dict(plan_kwargs or {})
        if getattr(self, "is_query_", False):
            # weight decay would move the frozen reference weights (their gradients are zeroed, not their decay)
            plan_kwargs.setdefault("weight_decay", 0.0)
        on_validation = str(kwargs.get("early_stopping_monitor", "validation_loss")).startswith("validation")
        no_validation = kwargs.get("train_size") == 1.0 and not kwargs.get("validation_size")
        if no_validation:
            # scvi-tools validates every epoch when a checkpoint callback is given, and Lightning then fails on the
            # missing validation loader ("invalid dataloader ... None")
            kwargs.setdefault("check_val_every_n_epoch", sys.maxsize)
        if early_stopping and on_validation and no_validation:
            # no validation cells, so no validation loss to stop on (Lightning's error would name neither)
            logger.warning("JointVAE.train: train_size=1.0 leaves no validation cells; early stopping is off.")
            early_stopping = False
        if early_stopping:
            kwargs.setdefault("early_stopping_monitor", "validation_loss")
        binary = "atac" in self.modalities and self.module.heads["atac"].likelihood == "bernoulli"
        batch_size, plan_kwargs, kwargs = training_options(
            n_cells=self.adata.n_obs,
            batch_size=batch_size,
            fast=fast,
            data_on_device=data_on_device,
            chunk_cells=chunk_cells,
            binary_keys=(REGISTRY_KEYS.counts("atac"),) if binary else (),
            plan_kwargs=plan_kwargs,
            trainer_kwargs=kwargs,
        )
        n_train = int(self.adata.n_obs * (kwargs.get("train_size") or 0.9))
        steps_batch = batch_size or scvi.settings.batch_size
        max_epochs = max_epochs or default_max_epochs(self.adata.n_obs)
        warmup_steps, patience = training_length(max_epochs, n_train, steps_batch)
        if "n_epochs_kl_warmup" not in plan_kwargs and "n_steps_kl_warmup" not in plan_kwargs:
            plan_kwargs.update(n_epochs_kl_warmup=None, n_steps_kl_warmup=warmup_steps)
        if early_stopping:
            kwargs.setdefault("early_stopping_patience", patience)
        # scvi-tools' Trainer sets torch.backends.cudnn.benchmark (a process-wide switch) to True: keep the user's
        kwargs.setdefault("benchmark", torch.backends.cudnn.benchmark)
        keep_best = kwargs["early_stopping_monitor"] if early_stopping else None
        kwargs["callbacks"] = training_callbacks(self, checkpoint_dir, kwargs.get("callbacks"), keep_best=keep_best)
        # Lightning warns when an epoch has fewer minibatches than its logging interval (10); small data has fewer
        kwargs.setdefault("log_every_n_steps", max(1, min(10, n_train // steps_batch)))
        with training_guard(checkpoint_dir), quiet_lightning():
            return super().train(
                max_epochs=max_epochs,
                batch_size=batch_size,
                early_stopping=early_stopping,
                plan_kwargs=plan_kwargs,
                **kwargs,
            )
