"""The getters of :class:`~pengster.model.JointVAE`: latents, predictions and denoised values of a trained model.

Every read-out streams: it decodes one minibatch of cells at a time and writes its rows into the output (a new
array, or ``out=``: any array that supports ``out[rows] = block``, e.g. a numpy memmap or an h5py/zarr dataset),
so that its memory beyond the output does not grow with the number of cells.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Literal

import numpy as np
import pandas as pd
import scvi
import torch
from mudata import MuData

from pengster._constants import MODALITIES, REGISTRY_KEYS
from pengster.module._head import RNA_TARGET_SUM

from ._blend import Reference, fit_lines, readout_batch_size

REFERENCE_NEIGHBORS = 50
"""Neighbours of the ``blend`` read-out of :meth:`~pengster.model.JointVAE.predict` (chosen on a validation split of
the benchmark's training cells, ``benchmarks/results/tune.md``)."""
STD_SAMPLES = 10
"""Default posterior draws of ``z`` for the latent part of :meth:`~pengster.model.JointVAE.predict`'s std."""
READOUTS = ("auto", "decoder", "blend", "population")


def _rows_out(out, n_rows: int, n_features: int):
    return np.empty((n_rows, n_features), dtype=np.float32) if out is None else out


def _masked(values: torch.Tensor, available: torch.Tensor) -> torch.Tensor:
    """NaN rows where not ``available`` (a pass over the values only when some row is not)."""
    return values if bool(available.all()) else torch.where(available, values, torch.nan)


def _check_out(out, n_rows: int, n_features: int, name: str) -> None:
    if out is not None and tuple(out.shape) != (n_rows, n_features):
        raise ValueError(f"{name} has shape {tuple(out.shape)}; pass an array of shape ({n_rows}, {n_features}).")


def _median_total(totals: torch.Tensor) -> float:
    """The median of library sizes, at least 1 count as the module's are (a panel of empty cells has median 0)."""
    return max(1.0, float(totals.median())) if totals.numel() else RNA_TARGET_SUM


class JointVAEOutputsMixin:
    """Getters of a trained :class:`~pengster.model.JointVAE`; they return arrays or DataFrames and write nothing."""

    def _minibatches(self, adata, indices, batch_size) -> Iterator[dict[str, torch.Tensor]]:
        aligned = self._aligned(adata)
        loader = self._make_data_loader(adata=aligned, indices=indices, batch_size=batch_size or 1024)
        yield from loader

    def resolve_modality(self, name: str, *, argument: str = "modality") -> str:
        """The model's name of a modality named ``name``: its name (``protein``) or its ``mdata.mod`` key (``prot``).

        Raises a ``ValueError`` naming ``argument`` and the accepted names when the model has no such modality.
        """
        if name in self.modalities:
            return name
        by_key = {key: modality for modality, key in self.modalities.items()}
        if name in by_key:
            return by_key[name]
        accepted = [*self.modalities, *[k for k in by_key if k not in self.modalities]]
        raise ValueError(
            f"{argument}={name!r}, but this JointVAE was trained on {self.modalities} (modality: mdata.mod key); "
            f"pass one of {accepted}. To model another modality, set up data that has it and train a new model."
        )

    def _rows(self, aligned: MuData, indices) -> np.ndarray:
        return np.arange(aligned.n_obs) if indices is None else np.asarray(indices, dtype=np.int64).reshape(-1)

    @torch.inference_mode()
    def get_latent_representation(
        self,
        adata: MuData | None = None,
        indices: Sequence[int] | None = None,
        give_mean: bool = True,
        batch_size: int | None = None,
        return_dist: bool = False,
        dataloader=None,
        *,
        modality: str | None = None,
    ) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
        """Latent of each cell, array of shape ``(n_cells, n_latent)``.

        Parameters
        ----------
        adata
            MuData to embed (default: the training data).
        indices
            Cells to embed (rows of ``adata``; default: all).
        give_mean
            The posterior mean; False: one draw from the posterior.
        batch_size
            Cells per minibatch.
        modality
            None for the joint posterior over all of a cell's modalities; a modality for the posterior from
            that modality alone (NaN rows for cells that did not measure it).
        return_dist
            Return the posterior's ``(mean, variance)``, each ``(n_cells, n_latent)``, as scvi-tools does.
        dataloader
            Minibatches of the model's registered (aligned) data to embed instead of ``adata``/``indices``, as
            scvi-tools' ``get_aggregated_posterior`` and ``differential_abundance`` pass them.
        """
        self._check_if_trained(warn=False)
        sources = None if modality is None else [self.resolve_modality(modality)]
        latents, variances = [], []
        minibatches = self._minibatches(adata, indices, batch_size) if dataloader is None else dataloader
        for tensors in minibatches:
            posterior = self.module.posterior(tensors, sources, states=False)
            latent = posterior.qz.loc if give_mean or return_dist else posterior.qz.sample()
            variance = posterior.qz.variance
            if modality is not None:
                latent = torch.where(posterior.available.unsqueeze(-1), latent, torch.nan)
                variance = torch.where(posterior.available.unsqueeze(-1), variance, torch.nan)
            latents.append(latent.cpu().numpy())
            variances.append(variance.cpu().numpy())
        if return_dist:
            return np.concatenate(latents), np.concatenate(variances)
        return np.concatenate(latents)

    def _sources(self, target: str, source) -> list[str]:
        sources = [m for m in self.modalities if m != target] if source is None else source
        sources = [sources] if isinstance(sources, str) else list(sources)
        sources = [self.resolve_modality(m, argument="source") for m in sources]
        if target in sources:
            raise ValueError(
                f"source {sources} contains the target {target!r}; pass source=<other modalities of "
                f"{list(self.modalities)}>, or None for all modalities but the target."
            )
        return sources

    def _scale_options(self, target: str, target_sum: float | None) -> dict:
        """The options of ``target``'s reported scale that ``predict`` was given (``target_sum``), checked."""
        if target_sum is None:
            return {}
        if "target_sum" not in self.module.heads[target].SCALE_OPTIONS:
            raise ValueError(
                f"target_sum={target_sum} sets the scale of RNA predictions; target={target!r} has no counts per "
                "total on its scale. Drop target_sum."
            )
        if not np.isfinite(target_sum) or target_sum <= 0:
            raise ValueError(f"target_sum={target_sum}; pass a positive number of counts (e.g. 1e4).")
        return {"target_sum": float(target_sum)}

    def _typical_library(self, modality: str, batch_size: int | None) -> float:
        """Median total counts of the training cells that measured ``modality`` (the depth a prediction reads at).

        Computed once per model and modality (a pass over the training data; ``fit_lines`` calls ``predict`` once per
        chunk of reference cells): the training counts never change.
        """
        known = self.__dict__.setdefault("_typical_libraries", {})
        if modality not in known:
            known[modality] = _median_total(self._training_libraries(modality, batch_size)[0])
        return known[modality]

    def _training_libraries(self, modality: str, batch_size: int | None) -> tuple[torch.Tensor, torch.Tensor]:
        """Total counts of the training cells that measured ``modality``, and their panels (datasets)."""
        totals, panels = [], []
        for tensors in self._minibatches(None, None, batch_size):
            has = tensors[REGISTRY_KEYS.has(modality)].view(-1) > 0
            totals.append(self.module.library(modality, tensors).cpu().view(-1)[has])
            panels.append(tensors[REGISTRY_KEYS.PANEL].long().view(-1).cpu()[has])
        return torch.cat(totals), torch.cat(panels)

    def _panel_libraries(self, modality: str, batch_size: int | None) -> torch.Tensor:
        """Median total counts of ``modality`` per panel (dataset) of training cells, ``(n_panels,)``, on the device.

        The depth a prediction reads at: a cell is predicted as one measured at its own dataset's median depth
        (datasets with different feature panels count different totals). A panel without such cells gets the median
        over all of them.
        """
        known = self.__dict__.setdefault("_panel_libraries_cache", {})
        if modality not in known:
            # one pass over the training data serves both the overall median and each panel's
            totals, panels = self._training_libraries(modality, batch_size)
            overall = self.__dict__.setdefault("_typical_libraries", {}).setdefault(modality, _median_total(totals))
            medians = torch.full((self.module.n_panels,), overall)
            for panel in panels.unique().tolist():
                medians[panel] = _median_total(totals[panels == panel])
            known[modality] = medians.to(self.device)
        return known[modality]

    @torch.inference_mode()
    def predict(
        self,
        adata: MuData | None = None,
        indices: Sequence[int] | None = None,
        *,
        target: str,
        source: str | Sequence[str] | None = None,
        n_samples: int | None = None,
        return_std: bool = False,
        readout: Literal["auto", "decoder", "blend"] = "auto",
        layer: str | None = None,
        target_sum: float | None = None,
        n_neighbors: int = REFERENCE_NEIGHBORS,
        batch_size: int | None = None,
        out=None,
        out_std=None,
        **removed,
    ) -> pd.DataFrame | tuple[pd.DataFrame, pd.DataFrame]:
        """Predict ``target`` from the ``source`` modalities only, for every requested cell.

        The cell's own ``target`` is never used. Cells stream through in minibatches; memory beyond the output does
        not grow with the number of cells.

        Parameters
        ----------
        adata
            MuData (default: the training data).
        indices
            Cells to predict (rows of ``adata``; default: all).
        target
            Modality to predict: its name (``rna``, ``atac``, ``protein``) or its key in the MuData (e.g. ``prot``).
        source
            Modalities to predict from (default: all others), named either way.
        n_samples
            Posterior draws of ``z`` for the latent part of the std (default 10; only with ``return_std``; 0 leaves it
            out). The mean never depends on it: it is decoded at the posterior mean.
        return_std
            Also return the predictive standard deviation of one measurement of the target on the reported scale,
            the square root of the sum of two parts. The latent part is the mean squared difference between the
            values decoded at ``n_samples`` posterior draws and at the posterior mean. The measurement part comes
            from the likelihood in closed form (``decoder`` read-out): ``rna``, the variance of log1p per 10k of the
            negative binomial's counts at the median depth of the training cells of the cell's dataset; ``protein``,
            the background/foreground mixture's variance carried to the CLR the same way; ``atac``, ``p (1 - p)`` of
            the predicted probability ``p`` (which holds the latent part already: no draws are made). With the
            ``blend`` read-out the measurement part is the variance of the neighbours' measured values instead.
            With ``layer``, the decoded parts are scaled by the line's slope.
        readout
            How the prediction is read out. ``"decoder"``: the decoded value at the posterior mean.
            ``"blend"``: the average of the decoded value and the mean measured ``target`` of the ``n_neighbors``
            training cells nearest in the joint latent to the cell's posterior mean, among those that measured
            ``target`` (the cell itself excluded; at most 50,000 of them, a random subset beyond); the decoder
            alone where no training cell measured ``target`` (a query model whose data lacks it).
            ``"population"``: the average of the decoded value and the mean measured ``target`` of all those training
            cells (for ATAC, each peak's open rate: it calibrates the decoded probabilities across peaks).
            ``"auto"``: ``"population"`` when ``target`` is ``atac`` (single nuclei's binary peaks are too noisy to
            average over a few neighbours), else ``"blend"``; chosen on a validation split.
        layer
            None: pengster's scale (below). A layer of ``target``'s modality in the MuData the model was set up with
            (``"X"`` for its ``.X``; for a model loaded without data, the saved copy, which holds counts), e.g. your
            own normalised values: the prediction is reported on that layer's scale. The decoded value is mapped
            onto it by a least-squares line per feature (slope >= 0) fitted over the training cells that measured
            ``target`` (the same at most 50,000), decoded from the same sources; a feature with fewer than two such
            cells gets their mean. The ``blend`` read-out then averages the neighbours' values in that layer.
        n_neighbors
            Neighbours of the ``blend`` read-out.
        batch_size
            Cells per minibatch (default: at most 1024, fewer for wide targets so a minibatch's values stay near
            16M entries).
        out, out_std
            Arrays of shape ``(n_cells, n_features)`` supporting ``out[rows] = block`` (numpy array or memmap,
            h5py or zarr dataset) to write the prediction and its std into, instead of new arrays.

        Returns
        -------
        DataFrame (cells x target features) in the target's scale: ``rna`` log1p of counts per 10k (its expected
        value for a cell sequenced at the median depth of its dataset's training cells, from the decoded negative
        binomial: what such a cell measures on average, below the log of the expected count where counts are few),
        ``atac`` accessibility probability, ``protein`` CLR of counts (or ``layer``'s scale). Rows of cells with none
        of the source modalities are NaN. With ``return_std``, a tuple ``(mean, std)``. With ``out``, ``out`` (and
        ``out_std``) instead of DataFrames.
        """
        self._check_if_trained(warn=False)
        _refuse_removed(removed, "predict")
        target = self.resolve_modality(target, argument="target")
        sources = self._sources(target, source)
        if n_samples is not None and not return_std:
            raise ValueError(
                f"n_samples={n_samples} sets the posterior draws of the std only; pass return_std=True, or drop "
                "n_samples (the prediction itself is decoded at the posterior mean)."
            )
        n_samples = STD_SAMPLES if n_samples is None else n_samples
        if n_samples < 0:
            raise ValueError(f"n_samples={n_samples}; pass n_samples >= 0.")
        if readout not in READOUTS:
            raise ValueError(f"readout={readout!r}; pass one of {list(READOUTS)}.")
        if n_neighbors < 1:
            raise ValueError(f"n_neighbors={n_neighbors}; pass n_neighbors >= 1 (or readout='decoder').")
        if readout == "auto":
            readout = MODALITIES[target].readout
        scale_options = self._scale_options(target, target_sum)
        aligned = self._aligned(adata)
        rows = self._rows(aligned, indices)
        n_features = aligned.mod[self.modalities[target]].n_vars
        _check_out(out, len(rows), n_features, "out")
        _check_out(out_std, len(rows), n_features, "out_std")
        batch_size = batch_size or readout_batch_size(n_features)
        reference = None
        if readout in ("blend", "population") or layer is not None:
            neighbours = n_neighbors if readout == "blend" else None
            reference = Reference(
                self, target, neighbours, batch_size=batch_size, layer=layer, scale_options=scale_options
            )
            if reference.size == 0:
                if layer is not None:
                    raise ValueError(
                        f"layer={layer!r}, but no training cell measured {target!r}, so there is nothing to fit the "
                        "scale on; pass layer=None."
                    )
                reference = None
        slope = intercept = None
        if layer is not None:
            decode_alone = {
                "target": target, "source": sources, "readout": "decoder", "batch_size": batch_size, **scale_options
            }  # fmt: skip
            lines = fit_lines(self, reference, decode_alone)
            slope, intercept = (torch.as_tensor(v, dtype=torch.float32, device=self.device) for v in lines)
        measurement_part = return_std and not (reference is not None and readout == "blend")
        at_depth = self.module.heads[target].reported_at_depth
        library = self._panel_libraries(target, batch_size) if at_depth else None
        mean_out = _rows_out(out, len(rows), n_features)
        std_out = _rows_out(out_std, len(rows), n_features) if return_std else None
        names, start = np.asarray(aligned.obs_names), 0
        holds_latent = self.module.heads[target].variance_holds_latent
        for tensors in self._minibatches(adata, rows, batch_size):
            posterior = self.module.posterior(tensors, sources)
            qz, state = posterior.qz, posterior.states[target]
            options = dict(scale_options)
            if library is not None:  # each cell at its own dataset's median depth
                options["depth"] = library[tensors[REGISTRY_KEYS.PANEL].long().view(-1).to(library.device)].view(-1, 1)
            mean, variance = self.module.readout(
                target, qz.loc, tensors, state=state, variance=measurement_part, **options
            )
            latent = None  # the latent part of the variance (unless the measurement part holds it already)
            if return_std and not holds_latent and n_samples > 0:
                draws = (
                    self.module.readout(target, qz.sample(), tensors, state=state, **options)[0]
                    for _ in range(n_samples)
                )
                latent = sum((draw - mean) ** 2 for draw in draws) / n_samples
            if slope is not None:
                mean = intercept + slope * mean
                latent = None if latent is None else slope**2 * latent
                variance = None if variance is None else slope**2 * variance
            stop = start + qz.loc.shape[0]
            if readout == "population" and reference is not None:
                everyone, covered = reference.population(mean)
                mean = torch.where(covered, 0.5 * (mean + everyone), mean)
            elif reference is not None and reference.n_neighbors:
                nearby, spread, covered = reference.average(qz.loc, names[rows[start:stop]])
                mean = torch.where(covered > 0, 0.5 * (mean + nearby), mean)
                variance = torch.where(covered > 0, spread, variance if variance is not None else 0.0)
            available = posterior.available.unsqueeze(-1)
            mean_out[start:stop] = _masked(mean, available).cpu().numpy()
            if return_std:
                parts = [v for v in (latent, variance) if v is not None]
                std = sum(parts).sqrt() if parts else torch.zeros_like(mean)
                std_out[start:stop] = _masked(std, available).cpu().numpy()
            start = stop
        if out is not None:
            return (out, out_std) if return_std else out
        frame = self._frame(mean_out, aligned.obs_names[rows], aligned.mod[self.modalities[target]].var_names)
        if not return_std:
            return frame
        return frame, self._frame(std_out, frame.index, frame.columns)

    @staticmethod
    def _frame(values: np.ndarray, index, columns) -> pd.DataFrame:
        return pd.DataFrame(values, index=pd.Index(index), columns=pd.Index(columns), copy=False)

    def _batch_codes(self, transform_batch) -> list[int] | None:
        if transform_batch is None:
            return None
        mapping = list(self.adata_manager.get_state_registry(REGISTRY_KEYS.BATCH).categorical_mapping)
        wanted = [transform_batch] if isinstance(transform_batch, str) else list(transform_batch)
        unknown = [b for b in wanted if b not in mapping]
        if unknown:
            raise ValueError(f"transform_batch {unknown} are not batches of the training data; batches are {mapping}.")
        return [mapping.index(b) for b in wanted]

    @torch.inference_mode()
    def get_normalized_expression(
        self,
        adata: MuData | None = None,
        indices: Sequence[int] | None = None,
        transform_batch: str | Sequence[str] | None = None,
        gene_list: Sequence[str] | None = None,
        library_size: float | Literal["latent"] = 1.0,
        n_samples: int = 1,
        n_samples_overall: int | None = None,
        batch_size: int | None = None,
        return_mean: bool = True,
        return_numpy: bool = False,
        *,
        modality: str = "rna",
        source: str | Sequence[str] | None = None,
        out=None,
    ) -> pd.DataFrame | np.ndarray:
        """Denoised values of ``modality`` on a linear scale, as scvi-tools' method of this name returns them.

        ``rna``: expression frequencies times ``library_size`` (scVI's ``scale``; ``"latent"``: the expected counts at
        the cell's own RNA depth, or the median depth of the training cells where it has none); ``protein``: the
        foreground rate times the probability of foreground (TOTALVI without background); ``atac``: the probability
        of an open peak (MULTIVI's ``get_normalized_accessibility``). Fold changes of differential analysis are
        computed on these values. For pengster's reported scales (log1p per 10k, probability, CLR), use
        :meth:`get_denoised_values` or :meth:`predict`.

        Decoded from the posterior of the cell's ``source`` modalities (default: all it measured), so a cell that did
        not measure ``modality`` gets it imputed from the others; a cell with none of the sources gets NaN.

        Parameters
        ----------
        adata
            MuData (default: the training data).
        indices
            Cells (rows of ``adata``; default: all).
        transform_batch
            Batch (or batches, averaged) to decode every cell under; default: each cell's own batch (a batch that
            never measured ``modality``: averaged over the batches that did).
        gene_list
            Features to return (default: all).
        library_size
            ``rna``: counts per this many, or ``"latent"``; ignored for the other modalities.
        n_samples
            1: decode the posterior mean; more: decode that many posterior draws.
        n_samples_overall
            Decode this many cells drawn at random (with replacement) from ``indices``, one draw each (as scvi-tools'
            differential expression asks); ``n_samples`` is then 1.
        batch_size
            Cells per minibatch.
        return_mean
            With ``n_samples > 1``: their average; False: every draw, array ``(n_samples, n_cells, n_features)``.
        return_numpy
            An array instead of a DataFrame.
        modality
            Modality to decode: its name or its key in the MuData.
        source
            Modalities whose posterior is decoded (default: all the cell measured), named either way.
        out
            Array of the output's shape supporting ``out[rows] = block`` to write into instead of a new array.

        Returns
        -------
        DataFrame (cells x features) or array; ``out`` when given.
        """
        one_draw = n_samples_overall is not None
        if one_draw:
            rows = self._rows(self._aligned(adata), indices)
            indices = np.random.default_rng(scvi.settings.seed).choice(rows, n_samples_overall)
            n_samples, return_mean = 1, True
        return self._decoded_values(
            adata, indices, modality=modality, source=source, transform_batch=transform_batch, gene_list=gene_list,
            n_samples=n_samples, batch_size=batch_size, return_mean=return_mean, return_numpy=return_numpy, out=out,
            scale="normalized", library_size=None if library_size == "latent" else library_size, one_draw=one_draw,
        )  # fmt: skip

    @torch.inference_mode()
    def get_denoised_values(
        self,
        adata: MuData | None = None,
        indices: Sequence[int] | None = None,
        *,
        modality: str = "rna",
        transform_batch: str | Sequence[str] | None = None,
        gene_list: Sequence[str] | None = None,
        target_sum: float = RNA_TARGET_SUM,
        n_samples: int = 1,
        batch_size: int | None = None,
        return_mean: bool = True,
        return_numpy: bool = False,
        out=None,
    ) -> pd.DataFrame | np.ndarray:
        """Denoised values of ``modality`` on pengster's reported scales, decoded from the cell's joint posterior.

        The scales of :meth:`predict` and :func:`~pengster.tl.write_results`: ``rna`` log1p of counts per
        ``target_sum``, ``atac`` accessibility probability, ``protein`` CLR of the foreground (background removed).
        Arguments as in :meth:`get_normalized_expression`; a cell that measured nothing gets NaN.
        """
        return self._decoded_values(
            adata, indices, modality=modality, source=None, transform_batch=transform_batch, gene_list=gene_list,
            n_samples=n_samples, batch_size=batch_size, return_mean=return_mean, return_numpy=return_numpy, out=out,
            scale="reported", denoised=True, target_sum=target_sum,
        )  # fmt: skip

    def _decoded_values(
        self, adata, indices, *, modality, source, transform_batch, gene_list, n_samples, batch_size, return_mean,
        return_numpy, out, scale, one_draw=False, **options,
    ):  # fmt: skip
        """Stream a head's read-out (``scale``) of ``modality`` at the posterior of ``source``, by minibatch.

        ``n_samples`` 1 decodes the posterior mean, or with ``one_draw`` one posterior draw.
        """
        self._check_if_trained(warn=False)
        modality = self.resolve_modality(modality)
        if source is not None:
            source = [source] if isinstance(source, str) else list(source)
            source = [self.resolve_modality(m, argument="source") for m in source]
        if n_samples < 1:
            raise ValueError(f"n_samples={n_samples}; pass n_samples >= 1.")
        aligned = self._aligned(adata)
        rows = self._rows(aligned, indices)
        features = aligned.mod[self.modalities[modality]].var_names
        columns = slice(None) if gene_list is None else features.get_indexer(pd.Index(gene_list))
        if gene_list is not None and (columns < 0).any():
            missing = list(pd.Index(gene_list)[columns < 0][:5])
            raise ValueError(f"gene_list has features that {modality!r} does not have, e.g. {missing}.")
        features = features[columns]
        every_draw = n_samples > 1 and not return_mean
        shape = (n_samples, len(rows), len(features)) if every_draw else (len(rows), len(features))
        if out is not None and tuple(out.shape) != shape:
            raise ValueError(f"out has shape {tuple(out.shape)}; pass an array of shape {shape}.")
        values_out = np.empty(shape, dtype=np.float32) if out is None else out
        batches = self._batch_codes(transform_batch)
        latent_library = scale == "normalized" and options.get("library_size", 1.0) is None
        fallback = self._typical_library(modality, batch_size) if latent_library else None
        start = 0
        for tensors in self._minibatches(adata, rows, batch_size or readout_batch_size(len(features))):
            posterior = self.module.posterior(tensors, source)
            qz = posterior.qz
            if latent_library:
                measured = posterior.has[modality].view(-1, 1) > 0
                options["library"] = torch.where(measured, posterior.libraries[modality], fallback)
            draws = [qz.sample() if one_draw else qz.loc] if n_samples == 1 else (qz.sample() for _ in range(n_samples))
            available = posterior.available.view(-1, 1)
            stop = start + qz.loc.shape[0]
            total = 0.0
            for draw, z in enumerate(draws):
                value, _ = self.module.readout(
                    modality, z, tensors, scale=scale, state=posterior.states[modality], batches=batches, **options
                )
                value = _masked(value[:, columns], available)
                if every_draw:
                    values_out[draw, start:stop] = value.cpu().numpy()
                else:
                    total = total + value / n_samples
            if not every_draw:
                values_out[start:stop] = total.cpu().numpy()
            start = stop
        if out is not None or return_numpy or every_draw:
            return values_out
        return self._frame(values_out, aligned.obs_names[rows], features)


def _refuse_removed(removed: dict, method: str) -> None:
    """A clear error for keyword arguments that pengster 0.1 took and 0.2 renamed (naming the new one)."""
    renamed = {
        "reference_neighbors": "n_neighbors (with readout='blend')",
        "reference_layer": "layer",
        "use_reference": "readout='blend'",
    }
    for name in removed:
        if name in renamed:
            raise TypeError(f"{method}() got {name}=, which pengster 0.2 renamed; pass {renamed[name]} instead.")
    if removed:
        raise TypeError(f"{method}() got unexpected keyword arguments {sorted(removed)}.")
