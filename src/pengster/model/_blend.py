"""The ``blend`` and ``population`` read-outs of :meth:`~pengster.model.JointVAE.predict`: what training cells measured.

A cell's prediction from the decoder alone is limited by the latent's few dimensions; the training cells around it
carry the rest (gene-gene structure the decoder smooths away). ``predict(readout="blend")`` averages the two;
``readout="population"`` averages the decoded value with the mean of all training cells that measured the feature.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy import sparse

from pengster._constants import REGISTRY_KEYS
from pengster.data._align import has_column

MAX_REFERENCE_CELLS = 50_000
"""More training cells than this measured the target: a random subset of this many (seed 0) is the reference."""
SEARCH_CHUNK = 4096
MINIBATCH_VALUES = 2**24
"""Default read-out minibatch: at most 1024 cells and about this many values (cells x features), 64 MB of float32."""


def readout_batch_size(n_features: int) -> int:
    """Cells per minibatch of a read-out of ``n_features`` features (see :data:`MINIBATCH_VALUES`)."""
    return int(max(16, min(1024, MINIBATCH_VALUES // max(n_features, 1))))


def _caller_random_state(model):
    """Fork torch's random state around reference work, so the caller's posterior samples stay the same.

    The encoders draw a sample they are not asked for; without the fork, the reference read-out would shift them.
    """
    return torch.random.fork_rng(devices=[model.device] if model.device.type == "cuda" else [])


class Reference:
    """The training cells that measured ``target``: their joint latent means and observed ``target`` values.

    Values are on the reporting scale of :meth:`~pengster.model.JointVAE.predict` (log1p per 10k or per
    ``scale_options['target_sum']``, binary accessibility, CLR), or the cells' values in ``layer`` of the user's
    target modality (``"X"`` for ``.X``); zero at features the cell's panel did not measure.
    """

    def __init__(
        self,
        model,
        target: str,
        n_neighbors: int | None,
        *,
        batch_size: int | None = None,
        layer: str | None = None,
        scale_options: dict | None = None,
    ):
        module = model.module
        # the cells are chosen first, so only they are read: memory stays bounded by MAX_REFERENCE_CELLS
        measured = np.flatnonzero(model.adata.obs[has_column(target)].to_numpy() > 0)
        if len(measured) > MAX_REFERENCE_CELLS:
            keep = np.random.default_rng(0).choice(len(measured), MAX_REFERENCE_CELLS, replace=False)
            measured = measured[np.sort(keep)]
        self.n_neighbors = n_neighbors
        self.size = len(measured)
        if self.size == 0:
            return
        # the population read-out needs each feature's total only: without neighbours or a layer, no cell's values
        # are kept (at atlas size they would be GBs)
        keep = bool(n_neighbors) or layer is not None
        latents, values, panels, total = [], [], [], 0.0
        with _caller_random_state(model), torch.inference_mode():
            for tensors in model._minibatches(None, measured, batch_size):
                if n_neighbors:  # the latent is only searched for neighbours
                    latents.append(module.posterior(tensors, states=False).qz.loc.cpu().numpy())
                observed = module.observed(target, tensors, **(scale_options or {}))
                if keep:
                    values.append(sparse.csr_matrix(observed.cpu().numpy()))
                else:
                    total = total + observed.double().sum(0).cpu().numpy()
                panels.append(tensors[REGISTRY_KEYS.PANEL].long().view(-1).numpy())
        if n_neighbors:
            self.latent = torch.as_tensor(np.concatenate(latents), device=model.device)
        self.rows = measured
        self.names = np.asarray(model.adata.obs_names[self.rows])
        table = module.panel_features(target).cpu().numpy()
        # panel one-hot @ mask table = each reference cell's measured features, without a cells x features matrix
        panel = np.concatenate(panels)
        self.measured = np.bincount(panel, minlength=table.shape[0]) @ table
        if not keep:
            self.total = total
            return
        values = (
            sparse.vstack(values).tocsr()
            if layer is None
            else layer_values(model, target, layer, self.names, panel.astype(np.int64), table > 0)
        )
        # float64 once: the neighbours' mean and variance E[x^2] - E[x]^2 are taken per minibatch
        self.values = values.astype(np.float64)
        self.squares = self.values.multiply(self.values).tocsr()
        self.panel_onehot = sparse.csr_matrix(
            (np.ones(len(panel)), (np.arange(len(panel)), panel)), shape=(len(panel), table.shape[0])
        )
        self.table = table
        self.total = None  # summed from the values when the population read-out asks for it

    def population(self, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The mean measured value of each feature over all reference cells that measured it, and where any did.

        Both of shape ``(n_features,)``, on ``like``'s device and dtype.
        """
        if self.total is None:
            self.total = np.asarray(self.values.sum(0)).ravel()
        mean = np.divide(self.total, self.measured, out=np.zeros_like(self.total), where=self.measured > 0)
        covered = torch.as_tensor(self.measured > 0, device=like.device)
        return torch.as_tensor(mean, dtype=like.dtype, device=like.device), covered

    def _nearest(self, z: torch.Tensor, k: int) -> np.ndarray:
        """Indices of the ``k`` reference cells nearest each row of ``z`` (exact search, in chunks of rows)."""
        found = []
        for chunk in torch.split(z.to(self.latent.dtype), SEARCH_CHUNK):
            distances = torch.cdist(chunk, self.latent)
            found.append(distances.topk(k, dim=1, largest=False).indices.cpu().numpy())
        return np.concatenate(found)

    def average(self, z: torch.Tensor, query_names: np.ndarray) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Mean and variance of the neighbours' measured values for each row of ``z``, and where any measured them.

        ``z`` has shape ``(n_cells, n_latent)``; a query cell that is itself a reference cell is never its own
        neighbour. Returns three tensors of shape ``(n_cells, n_features)``: mean, variance (over the neighbours
        that measured the feature), and 1.0 where covered.
        """
        k = min(self.n_neighbors, self.size - 1) if self.size > 1 else 1
        found = self._nearest(z, min(k + 1, self.size))
        own = self.names[found] == np.asarray(query_names)[:, None]
        # drop the cell itself where found, else the farthest: k neighbours per row
        keep = np.argsort(own, axis=1, kind="stable")[:, :k]
        chosen = np.take_along_axis(found, keep, axis=1)
        rows = np.repeat(np.arange(chosen.shape[0]), k)
        weights = sparse.csr_matrix(
            (np.full(rows.size, 1.0 / k), (rows, chosen.ravel())), shape=(len(chosen), self.size)
        )
        total = np.asarray((weights @ self.values).todense())
        squares = np.asarray((weights @ self.squares).todense())
        measured = np.asarray((weights @ self.panel_onehot).todense()) @ self.table
        mean = np.divide(total, measured, out=np.zeros_like(total), where=measured > 0)
        variance = np.divide(squares, measured, out=np.zeros_like(total), where=measured > 0) - mean**2
        return tuple(
            torch.as_tensor(value, dtype=torch.float32, device=z.device)
            for value in (mean, variance.clip(min=0.0), measured > 0)
        )


def layer_values(
    model, target: str, layer: str, names: np.ndarray, panel: np.ndarray, table: np.ndarray
) -> sparse.csr_matrix:
    """The cells ``names``' values in ``layer`` (``"X"``: ``.X``) of the user's ``target`` modality, as CSR.

    Entries the cell's panel (``table[panel]``, True where measured) did not measure, and NaNs, are zero.
    """
    key = model.modalities[target]
    adata = model.mdata.mod[key]
    if layer != "X" and layer not in adata.layers:
        raise ValueError(
            f"layer={layer!r} is not a layer of mdata.mod[{key!r}] (the training data); its layers are "
            f"{list(adata.layers)}. Pass one of them, 'X' for .X, or None for pengster's own scale."
        )
    rows = adata.obs_names.get_indexer(names)
    if (rows < 0).any():
        raise ValueError(
            f"layer={layer!r}: {int((rows < 0).sum())} training cells are missing from mdata.mod[{key!r}] "
            f"(e.g. {names[rows < 0][0]!r}); pass the MuData the model was set up with."
        )
    matrix = adata.X if layer == "X" else adata.layers[layer]
    values = matrix[np.sort(rows)]
    if hasattr(values, "to_memory"):  # backed
        values = values.to_memory()
    values = sparse.csr_matrix(values, dtype=np.float32)[np.argsort(np.argsort(rows))]
    values.data = np.nan_to_num(values.data, nan=0.0, posinf=0.0, neginf=0.0)
    cells = np.repeat(np.arange(values.shape[0]), np.diff(values.indptr))
    values.data *= table[panel[cells], values.indices]
    values.eliminate_zeros()
    return values


def fit_lines(model, reference: Reference, predict_kwargs: dict) -> tuple[np.ndarray, np.ndarray]:
    """Per-feature least-squares line from the decoded value to the reference cells' own value.

    The reference cells are decoded exactly as the query (``predict_kwargs``: target, source, decoder read-out); only
    the cells and features that both have enter a feature's fit. The slope is clipped at 0, so the map never
    reverses a feature's ranking of cells; a feature with fewer than two fit cells gets slope 0 and the mean of its
    fit cells (0 without any). Returns ``(slope, intercept)``, each of shape ``(n_features,)``.
    """
    n_features = reference.values.shape[1]
    sums = {name: np.zeros(n_features) for name in ("w", "x", "y", "xx", "xy")}
    # a few dense (cells x features) float64 arrays per chunk: keep each near 2**24 entries (128 MB)
    chunk_cells = max(1, min(SEARCH_CHUNK, 2**24 // max(n_features, 1)))
    for start in range(0, reference.size, chunk_cells):
        chunk = slice(start, start + chunk_cells)
        with _caller_random_state(model):
            decoded = model.predict(indices=reference.rows[chunk], **predict_kwargs).to_numpy(np.float64)
        observed = reference.values[chunk].toarray()
        weight = (reference.panel_onehot[chunk] @ reference.table > 0) & ~np.isnan(decoded)
        decoded = np.where(weight, decoded, 0.0)
        observed = np.where(weight, observed, 0.0)
        sums["w"] += weight.sum(0)
        sums["x"] += decoded.sum(0)
        sums["y"] += observed.sum(0)
        sums["xx"] += (decoded * decoded).sum(0)
        sums["xy"] += (decoded * observed).sum(0)
    n = sums["w"]
    if n.sum() == 0:
        sources = predict_kwargs.get("source")
        raise ValueError(
            f"layer: none of the {reference.size} training cells that measured {predict_kwargs['target']!r} "
            f"has any of the sources {sources}, so there is nothing to fit the layer's scale on; pass sources those "
            "cells have, or layer=None."
        )
    covariance = n * sums["xy"] - sums["x"] * sums["y"]
    variance = n * sums["xx"] - sums["x"] ** 2
    slope = np.divide(covariance, variance, out=np.zeros(n_features), where=variance > 1e-12 * np.maximum(n, 1) ** 2)
    slope = slope.clip(min=0.0)
    intercept = np.divide(sums["y"] - slope * sums["x"], n, out=np.zeros(n_features), where=n > 0)
    return slope, intercept
