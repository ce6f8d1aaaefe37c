"""The learned methods behind one interface: pengster JointVAE, scvi-tools MULTIVI and TOTALVI.

Each runner is trained on a :class:`~benchmarks._tasks.Study` (every visible modality of every cell, test cells
included with their source modality only, as in the NeurIPS 2021 protocol) and answers

- ``predict(target, cells, n_samples)``: the target for ``cells`` from their visible modalities, on the scored
  scale, as ``(mean, std)`` arrays (std None when ``n_samples == 1``);
- ``latent(cells)``: the joint latent of those cells;
- ``latent_from(modality, cells)``: the latent of paired cells from ``modality`` alone (None if unsupported).

Scales: RNA is decoded as proportions and reported as ``log1p(p * T)`` with ``T`` the median per-cell total of
the scored training RNA (so every model lands on the data's own normalized scale); protein as CLR of the decoded
mean counts (background included); ATAC as probabilities.
"""

from __future__ import annotations

import os

import mudata as md
import numpy as np
import pandas as pd
import scvi
import torch
from scipy import sparse

import pengster

from ._tasks import MOD_KEYS, Study, _pad_rows

# "gpu" for runs on a GPU machine (the committed rows say where each was run); CI and the defaults: CPU
ACCELERATOR = os.environ.get("PENGSTER_BENCH_ACCELERATOR", "cpu")
TOTALVI_DRAWS = 25
MULTIVI_DRAWS = 25


def _clr(values: np.ndarray) -> np.ndarray:
    log_mean = np.log1p(values).mean(-1, keepdims=True)
    return np.log1p(values / np.exp(log_mean))


def _mean_std(samples: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    """``samples`` of shape (n_samples, n_cells, n_features)."""
    if samples.shape[0] == 1:
        return samples[0], None
    return samples.mean(0), samples.std(0)


def _batches_with(study: Study, modality: str) -> list[str]:
    cells = study.visible(modality).obs_names
    return sorted(study.obs.loc[study.obs.index.isin(cells), "batch"].unique().tolist())


def _query(study: Study, modality: str, cells: pd.Index) -> md.MuData:
    """``cells`` with only ``modality`` (hidden or not), for single-modality latents."""
    adata = study.counts[modality][cells].copy()
    adata.X = sparse.csr_matrix(adata.X, dtype=np.float32)
    with md.set_options(pull_on_update=False):
        query = md.MuData({MOD_KEYS[modality]: adata})
        query.obs = study.obs.loc[cells].copy()
    return query


class PengsterRunner:
    """pengster JointVAE with the given constructor and ``train`` arguments."""

    name = "pengster"

    def __init__(
        self, model_kwargs: dict | None = None, train_kwargs: dict | None = None, predict_kwargs: dict | None = None
    ):
        self.model_kwargs = dict(model_kwargs or {})
        self.train_kwargs = dict(train_kwargs or {})
        self.predict_kwargs = dict(predict_kwargs or {})

    def fit(self, study: Study, *, seed: int, max_epochs: int | None) -> None:
        scvi.settings.seed = seed
        self.study = study
        self.mdata = study.mudata(layout="mosaic")
        modalities = {f"{m}_layer": MOD_KEYS[m] for m in MOD_KEYS if m in study.counts}
        pengster.model.JointVAE.setup_mudata(self.mdata, modalities=modalities, batch_key="batch")
        self.model = pengster.model.JointVAE(self.mdata, **self.model_kwargs)
        self.model.train(max_epochs=max_epochs, accelerator=ACCELERATOR, enable_progress_bar=False, **self.train_kwargs)
        self.n_epochs = len(next(iter(self.model.history.values())))

    def predict(self, target: str, cells: pd.Index, *, n_samples: int = 1):
        rows = self.mdata.obs_names.get_indexer(cells)
        # the mean is decoded at the posterior mean; n_samples draws make the latent part of the std
        draws = {"n_samples": n_samples, "return_std": True} if n_samples > 1 else {}
        # RNA on the data's scale: log1p of counts per the data's typical total (the expectation is taken there;
        # a prediction made per 10k cannot be rescaled afterwards, the mean of a log does not rescale)
        on_data_scale = target == "rna" and self.predict_kwargs.get("layer") is None
        # the total of the predicted cells' own dataset (a mosaic's datasets were normalised separately)
        scale = {"target_sum": self.study.target_sum_of(cells)} if on_data_scale else {}
        result = self.model.predict(target=target, indices=rows, **draws, **scale, **self.predict_kwargs)
        mean, std = result if n_samples > 1 else (result, None)
        return mean.to_numpy(np.float64), None if std is None else std.to_numpy(np.float64)

    def latent(self, cells: pd.Index) -> np.ndarray:
        rows = self.mdata.obs_names.get_indexer(cells)
        return self.model.get_latent_representation(indices=rows)

    def latent_from(self, modality: str, cells: pd.Index) -> np.ndarray | None:
        return self.model.get_latent_representation(_query(self.study, modality, cells), modality=modality)


class _ScviRunner:
    """Shared parts of the scvi-tools peers."""

    def __init__(self, model_kwargs: dict | None = None):
        self.model_kwargs = dict(model_kwargs or {})

    def _rows(self, cells: pd.Index) -> np.ndarray:
        rows = self.mdata.obs_names.get_indexer(cells)
        if (rows < 0).any():
            raise KeyError(f"{self.name}: some cells are not in its training data")
        return rows

    def latent(self, cells: pd.Index) -> np.ndarray:
        """Joint latent; NaN rows for cells outside the model's data (TOTALVI: cells without RNA)."""
        rows = self.mdata.obs_names.get_indexer(cells)
        inside = rows >= 0
        embedded = self.model.get_latent_representation(self.mdata, indices=rows[inside])
        latent = np.full((len(cells), embedded.shape[1]), np.nan)
        latent[inside] = embedded
        return latent

    def _rna(self, cells: pd.Index, n_samples: int) -> np.ndarray:
        """Decoded RNA, shape (n_samples, n_cells, n_genes): the posterior mean once, or one z sample per draw."""
        samples = []
        for _ in range(n_samples):
            scale = self.model.get_normalized_expression(
                self.mdata,
                indices=self._rows(cells),
                transform_batch=_batches_with(self.study, "rna"),
                use_z_mean=n_samples == 1,
                return_numpy=True,
            )
            samples.append(np.asarray(scale, dtype=np.float64))
        return np.log1p(np.stack(samples) * self.study.target_sum_of(cells))


class MultiviRunner(_ScviRunner):
    """scvi-tools MULTIVI over the study's modalities; every modality holds every cell, zeros where missing."""

    name = "multivi"

    def fit(self, study: Study, *, seed: int, max_epochs: int) -> None:
        scvi.settings.seed = seed
        self.study = study
        self.mdata = study.mudata(layout="full")
        self.mdata.obs["_indices"] = np.arange(self.mdata.n_obs)
        self.layers = {
            layer: MOD_KEYS[m]
            for m, layer in (("rna", "rna_layer"), ("atac", "atac_layer"), ("protein", "protein_layer"))
            if m in study.counts
        }
        scvi.model.MULTIVI.setup_mudata(self.mdata, modalities=self.layers, batch_key="batch")
        self.model = scvi.model.MULTIVI(self.mdata, **self.model_kwargs)
        self.model.train(max_epochs=max_epochs, accelerator=ACCELERATOR, enable_progress_bar=False, early_stopping=True)
        self.n_epochs = len(next(iter(self.model.history.values())))

    def predict(self, target: str, cells: pd.Index, *, n_samples: int = 1):
        if target == "rna":
            return _mean_std(self._rna(cells, n_samples))
        if target == "atac":
            probabilities = [
                self.model.get_normalized_accessibility(
                    self.mdata,
                    indices=self._rows(cells),
                    transform_batch=batch,
                    normalize_regions=True,
                    return_numpy=True,
                )
                for batch in _batches_with(self.study, "atac")
            ]
            return np.mean(probabilities, axis=0).astype(np.float64), None
        samples = self._protein(cells, n_samples)
        if n_samples == 1:
            return samples.mean(0), None
        return samples.mean(0), samples.std(0)

    @torch.inference_mode()
    def _protein(self, cells: pd.Index, n_samples: int) -> np.ndarray:
        """CLR of the decoded mean protein counts, shape (n_draws, n_cells, n_proteins).

        MULTIVI 1.4.2 has no protein getter besides ``get_protein_foreground_probability``; this is what TOTALVI's
        ``get_normalized_expression(include_protein_background=True)`` returns, computed with MULTIVI's own forward
        pass the way its foreground getter calls it (``transform_batch`` in the generative kwargs, averaged over the
        batches that showed protein). Its protein decoder draws the log background rate even at the posterior mean
        of z, so one draw is noisy: the point prediction (z at its mean, MULTIVI's getters' default) averages
        ``MULTIVI_DRAWS`` draws, as TOTALVI's does; with ``n_samples > 1`` each draw also samples z.
        """
        from scvi.model._utils import _get_batch_code_from_category

        module = self.model.module
        module.eval()
        codes = _get_batch_code_from_category(self.model.adata_manager, _batches_with(self.study, "protein"))
        draws = max(n_samples, MULTIVI_DRAWS)
        loader = self.model._make_data_loader(adata=self.mdata, indices=self._rows(cells), batch_size=256)
        chunks = []
        for tensors in loader:
            samples = []
            for _ in range(draws):
                per_batch = []
                for code in codes:
                    _, generative = module.forward(
                        tensors,
                        generative_kwargs={"use_z_mean": n_samples == 1, "transform_batch": code},
                        compute_loss=False,
                    )
                    py = generative["py_"]
                    background = torch.sigmoid(py["mixing"])
                    values = py["rate_fore"] * (1 - background) + py["rate_back"] * background
                    per_batch.append(values.cpu().numpy())
                samples.append(np.mean(per_batch, axis=0))
            chunks.append(np.stack(samples))
        return _clr(np.concatenate(chunks, axis=1).astype(np.float64))

    def latent_from(self, modality: str, cells: pd.Index) -> np.ndarray | None:
        name = {"rna": "expression", "atac": "accessibility", "protein": "protein"}[modality]
        query = self.study.hide().mudata(layout="full")
        query = query[cells].copy()
        for key, adata in query.mod.items():
            if key != MOD_KEYS[modality]:
                adata.X = sparse.csr_matrix(adata.shape, dtype=np.float32)
        query.obs["_indices"] = np.arange(query.n_obs)
        return self.model.get_latent_representation(query, modality=name)


class TotalviRunner(_ScviRunner):
    """scvi-tools TOTALVI on the cells with visible RNA (it needs RNA for every cell); proteins zero where hidden."""

    name = "totalvi"

    def fit(self, study: Study, *, seed: int, max_epochs: int) -> None:
        scvi.settings.seed = seed
        self.study = study
        cells = study.cells_with("rna")
        rna = study.visible("rna")[cells].copy()
        protein = _pad_rows(study.visible("protein"), cells)
        # TOTALVI's protein prior code indexes the protein matrix densely
        protein.X = np.asarray(protein.X.toarray(), dtype=np.float32)
        with md.set_options(pull_on_update=False):
            self.mdata = md.MuData({"rna": rna, "prot": protein})
            self.mdata.obs = study.obs.loc[cells].copy()
        scvi.model.TOTALVI.setup_mudata(
            self.mdata, modalities={"rna_layer": "rna", "protein_layer": "prot"}, batch_key="batch"
        )
        self.model = scvi.model.TOTALVI(self.mdata, **self.model_kwargs)
        self.model.train(max_epochs=max_epochs, accelerator=ACCELERATOR, enable_progress_bar=False, early_stopping=True)
        self.n_epochs = len(next(iter(self.model.history.values())))

    def predict(self, target: str, cells: pd.Index, *, n_samples: int = 1):
        if target != "protein":
            raise NotImplementedError("TOTALVI needs RNA for every cell; it predicts protein only")
        # TOTALVI decodes sampled z (it has no posterior-mean switch): its point prediction averages 25 draws
        draws = max(n_samples, TOTALVI_DRAWS)
        _, protein = self.model.get_normalized_expression(
            self.mdata,
            indices=self._rows(cells),
            # batches measured with protein that TOTALVI saw (it trains on RNA cells: protein-only donors are absent)
            transform_batch=[b for b in _batches_with(self.study, "protein") if b in set(self.mdata.obs["batch"])],
            n_samples=draws,
            include_protein_background=True,
            return_mean=False,
            return_numpy=True,
        )
        samples = _clr(np.moveaxis(np.asarray(protein, dtype=np.float64), -1, 0))
        if n_samples == 1:
            return samples.mean(0), None
        return samples.mean(0), samples.std(0)

    def latent_from(self, modality: str, cells: pd.Index) -> np.ndarray | None:
        return None
