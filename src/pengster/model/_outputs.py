"""The getters of :class:`~pengster.model.JointVAE`: latents, predictions and denoised values of a trained model.

They are plain functions bound as methods in the class body, so the model file keeps setup, training and saving.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import pandas as pd
import torch
from mudata import MuData

from pengster._constants import REGISTRY_KEYS

from ._neighbors import Reference, fit_lines

REFERENCE_NEIGHBORS = 50
"""Neighbours of ``reference_neighbors="auto"`` in :meth:`~pengster.model.JointVAE.predict` when ATAC is neither
the target nor the only source (chosen on a validation split of the benchmark's training cells,
``benchmarks/results/tune.md``)."""


def _minibatches(self, mdata, indices, batch_size) -> Iterator[dict[str, torch.Tensor]]:
    aligned = self._aligned(mdata)
    loader = self._make_data_loader(adata=aligned, indices=indices, batch_size=batch_size or 1024)
    yield from loader


def _check_modality(self, modality: str, *, argument: str) -> None:
    if modality not in self.modalities:
        raise ValueError(
            f"{argument}={modality!r}, but this JointVAE was trained on {list(self.modalities)}; "
            f"pass one of those (set up the data with modalities={{'{modality}_layer': ...}} to model it)."
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
    cont_covs = tensors.get(REGISTRY_KEYS.CONT_COVS)
    cont_covs = None if cont_covs is None else cont_covs.to(self.device)
    scaled = module.denoised_values if denoised else module.predicted_values

    def decode(*args):
        return scaled(*args, cont_covs=cont_covs)

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


@torch.inference_mode()
def predict(
    self,
    mdata: MuData | None = None,
    *,
    target: str,
    source: str | Sequence[str] | None = None,
    n_samples: int = 1,
    return_std: bool | None = None,
    reference_neighbors: int | str | None = "auto",
    reference_layer: str | None = None,
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
        Also return the predictive standard deviation (default: when ``n_samples > 1``): the decoded value's spread
        over the posterior samples, combined (square root of the summed variances) with the spread of the
        reference neighbours' measured values where they are used, so that it also covers the cell-to-cell noise
        of a measurement.
    reference_neighbors
        ``"auto"``: 50, but None when ``target`` is ``atac`` or ``atac`` is the only source (single nuclei's binary
        peaks, and latents from them alone, are too noisy to average: on the validation split neighbours lowered
        those predictions and raised the others).
        ``k``: the prediction is the average of the decoded value and the mean measured ``target`` of the ``k``
        training cells nearest in the joint latent to the cell's posterior mean, among those that measured
        ``target`` (the cell itself excluded; at most 50,000 of them, a random subset beyond). None or 0: the
        decoder alone, which is also used when no training cell measured ``target`` (a query model whose data
        lacks it). The default was chosen on a validation split of the benchmark's training cells.
    reference_layer
        None: predictions on pengster's scale (below). A layer of ``target``'s modality in the MuData the model was
        set up with (``"X"`` for its ``.X``; for a model loaded without data, the saved copy, which holds counts),
        e.g. your own normalized values: predictions on that layer's scale. The neighbours then
        average their values in that layer, and the decoded value is mapped onto it by a least-squares line per
        feature (slope >= 0), fitted over the training cells that measured ``target`` (the same at most 50,000),
        decoded from the same sources as the query; a feature with fewer than two such cells gets their mean. The
        decoded value's spread is scaled by the slope.
    indices
        Cells to predict (default: all).
    batch_size
        Cells per minibatch.

    Returns
    -------
    DataFrame (cells x target features) in the target's scale: ``rna`` log1p of counts per 10k, ``atac``
    accessibility probability, ``protein`` CLR of counts (or ``reference_layer``'s scale). Rows of cells with none
    of the source modalities are NaN. With ``return_std``, a tuple ``(mean, std)``.
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
    if reference_neighbors == "auto":
        atac_only = target == "atac" or set(sources) == {"atac"}
        reference_neighbors = None if atac_only else REFERENCE_NEIGHBORS
    elif isinstance(reference_neighbors, str) or (reference_neighbors is not None and reference_neighbors < 0):
        raise ValueError(
            f"reference_neighbors={reference_neighbors!r}; pass 'auto', a number of neighbours >= 0, or None."
        )
    reference = None
    if reference_neighbors or reference_layer is not None:
        reference = Reference(self, target, reference_neighbors, batch_size=batch_size, layer=reference_layer)
        if reference.size == 0:
            if reference_layer is not None:
                raise ValueError(
                    f"reference_layer={reference_layer!r}, but no training cell measured {target!r}, so there is "
                    "nothing to fit the scale on; pass reference_layer=None."
                )
            reference = None
    slope = intercept = None
    if reference_layer is not None:
        decode_alone = {"target": target, "source": sources, "reference_neighbors": None, "batch_size": batch_size}
        lines = fit_lines(self, reference, decode_alone)
        slope, intercept = (torch.as_tensor(v, dtype=torch.float32, device=self.device) for v in lines)
    aligned = self._aligned(mdata)
    cells = aligned.obs_names if indices is None else aligned.obs_names[np.asarray(indices)]
    names = np.asarray(cells)
    means, stds, start = [], [], 0
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
        mean, std = values.mean(0), values.std(0, unbiased=False)
        if slope is not None:
            mean, std = intercept + slope * mean, slope * std
        if reference is not None and reference.n_neighbors:
            nearby, spread, covered = reference.average(qz.loc, names[start : start + qz.loc.shape[0]])
            mean = torch.where(covered > 0, 0.5 * (mean + nearby), mean)
            std = torch.where(covered > 0, (std**2 + spread).sqrt(), std)
        start += qz.loc.shape[0]
        mean = torch.where(available.unsqueeze(-1), mean, torch.nan)
        std = torch.where(available.unsqueeze(-1), std, torch.nan)
        means.append(mean.cpu().numpy())
        stds.append(std.cpu().numpy())
    features = aligned.mod[self.modalities[target]].var_names
    mean = pd.DataFrame(np.concatenate(means), index=cells, columns=features)
    if not return_std:
        return mean
    return mean, pd.DataFrame(np.concatenate(stds), index=cells, columns=features)


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
