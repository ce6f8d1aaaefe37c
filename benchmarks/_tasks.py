"""The benchmark's datasets and splits: every method sees the same cells, features and hidden modalities.

A :class:`Study` holds one dataset as per-modality count matrices over all cells, the normalized matrices the
predictions are scored against, the split, and, for each scored prediction, which cells hide which modality.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import anndata as ad
import mudata as md
import numpy as np
import pandas as pd
from scipy import sparse

import pengster

MOD_KEYS = {"rna": "rna", "atac": "atac", "protein": "prot"}
# the layer of Study.mudata(layout="mosaic") that holds the scored (normalized) values of the visible cells
SCORED_LAYER = "normalized"
SNARE_TOP_PEAKS = 5000
SNARE_TEST_LIBRARIES = ("09G", "09H")


@dataclass
class Study:
    """One dataset of the benchmark.

    Attributes
    ----------
    name
        Dataset name in the results.
    counts
        Modality (``rna``, ``atac``, ``protein``) -> AnnData of raw counts of the cells that measured it.
    scored
        Modality -> array (cells of ``counts[modality]`` x features): the scale predictions are scored on
        (the data's normalized ``X``: RNA log-normalized, ATAC binary, protein CLR).
    obs
        All cells: ``batch`` (str), ``cell_type`` (str), ``dataset`` (str), ``train`` (bool).
    hidden
        Modality -> cells (obs names) whose measurement of it is hidden from every method.
    measured
        Modality -> bool DataFrame (features x datasets) of the features each dataset measured (mosaics only).
    """

    name: str
    counts: dict[str, ad.AnnData]
    scored: dict[str, np.ndarray]
    obs: pd.DataFrame
    hidden: dict[str, pd.Index] = field(default_factory=dict)
    measured: dict[str, pd.DataFrame] = field(default_factory=dict)

    def visible(self, modality: str) -> ad.AnnData:
        """Counts of ``modality`` for the cells that measured it and do not hide it."""
        adata = self.counts[modality]
        keep = ~adata.obs_names.isin(self.hidden.get(modality, pd.Index([])))
        return adata[keep]

    def truth(self, modality: str, cells: pd.Index) -> np.ndarray:
        """Scored-scale values of ``modality`` for ``cells``."""
        rows = self.counts[modality].obs_names.get_indexer(cells)
        if (rows < 0).any():
            raise KeyError(f"{self.name}: some cells did not measure {modality!r}")
        return self.scored[modality][rows]

    def cells_with(self, *modalities: str, visible: bool = True) -> pd.Index:
        """Cells (in ``obs`` order) that have all ``modalities`` (visible ones only, by default)."""
        keep = np.ones(len(self.obs), dtype=bool)
        for modality in modalities:
            names = self.visible(modality).obs_names if visible else self.counts[modality].obs_names
            keep &= self.obs.index.isin(names)
        return self.obs.index[keep]

    def hide(self, **hidden: pd.Index) -> Study:
        """The same study with these modalities hidden for these cells."""
        hidden = {k: pd.Index(v) for k, v in hidden.items()}
        return Study(self.name, self.counts, self.scored, self.obs, hidden, self.measured)

    def target_sum(self, modality: str = "rna", dataset: str | None = None) -> float:
        """Median total of ``expm1(scored rna)`` over visible training cells: the per-cell total of the scale.

        ``dataset``: over that dataset's cells only (the datasets of a mosaic were normalised separately).
        """
        adata = self.visible(modality)
        if dataset is not None:
            adata = adata[self.obs.loc[adata.obs_names, "dataset"].to_numpy() == dataset]
        rows = self.counts[modality].obs_names.get_indexer(adata.obs_names)
        train = self.obs.loc[adata.obs_names, "train"].to_numpy()
        # nansum: in a mosaic, genes a dataset did not measure are NaN on the scored scale
        return float(np.median(np.nansum(np.expm1(self.scored[modality][rows[train]]), axis=1)))

    def target_sum_of(self, cells: pd.Index, modality: str = "rna") -> float:
        """:meth:`target_sum` of the dataset of ``cells`` where they share one, else over every dataset."""
        datasets = self.obs.loc[cells, "dataset"].unique()
        return self.target_sum(modality, dataset=datasets[0] if len(datasets) == 1 else None)

    def mudata(self, *, layout: str = "mosaic") -> md.MuData:
        """Visible counts as a MuData (counts in X).

        ``mosaic``: each modality holds only the cells that show it (pengster), with their scored values in layer
        :data:`SCORED_LAYER` (0 where unmeasured). ``full``: every modality holds
        every cell, zeros where hidden or unmeasured (MULTIVI and TOTALVI read all-zero rows as missing).
        """
        mods = {}
        for modality, key in MOD_KEYS.items():
            if modality not in self.counts:
                continue
            adata = self.visible(modality)
            part = ad.AnnData(X=sparse.csr_matrix(adata.X, dtype=np.float32), obs=adata.obs[[]].copy())
            part.var_names = adata.var_names
            if layout == "full":
                part = _pad_rows(part, self.obs.index)
            else:
                rows = self.counts[modality].obs_names.get_indexer(adata.obs_names)
                scored = np.nan_to_num(self.scored[modality][rows])
                part.layers[SCORED_LAYER] = sparse.csr_matrix(scored, dtype=np.float32)
                if modality in self.measured:
                    part.varm["measured"] = self.measured[modality].loc[part.var_names]
            mods[key] = part
        with md.set_options(pull_on_update=False):
            mdata = md.MuData(mods)
            mdata.obs = self.obs.loc[mdata.obs_names].copy()
            if not mdata.obs_names.equals(self.obs.index):
                mdata = mdata[self.obs.index].copy()
        return mdata


def _pad_rows(adata: ad.AnnData, cells: pd.Index) -> ad.AnnData:
    rows = cells.get_indexer(adata.obs_names)
    coo = sparse.csr_matrix(adata.X).tocoo()
    # rows of adata outside `cells` (e.g. protein-only cells for TOTALVI, which embeds RNA cells) are dropped
    inside = rows[coo.row] >= 0
    entries = (coo.data[inside], (rows[coo.row][inside], coo.col[inside]))
    padded = sparse.csr_matrix(entries, shape=(len(cells), adata.n_vars))
    out = ad.AnnData(X=padded.astype(np.float32), obs=pd.DataFrame(index=cells.copy()))
    out.var_names = adata.var_names
    return out


def _dense(matrix) -> np.ndarray:
    return np.asarray(matrix.toarray() if sparse.issparse(matrix) else matrix, dtype=np.float64)


def _obs(
    frame: pd.DataFrame, *, batch: str, cell_type: str, train: np.ndarray, dataset: str | pd.Series
) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "batch": frame[batch].astype(str).to_numpy(),
            "cell_type": frame[cell_type].astype(str).to_numpy(),
            "dataset": dataset if isinstance(dataset, str) else dataset.astype(str).to_numpy(),
            "train": np.asarray(train, dtype=bool),
        },
        index=frame.index.copy(),
    )


def _openproblems_counts(mdata: md.MuData, key: str, modality: str) -> ad.AnnData:
    adata = mdata.mod[key]
    counts = ad.AnnData(X=sparse.csr_matrix(adata.layers["counts"], dtype=np.float32), obs=adata.obs[[]].copy())
    counts.var_names = adata.var_names
    return counts


def _openproblems_study(name: str, mdata: md.MuData, second: str) -> Study:
    modality = {"atac": "atac", "prot": "protein"}[second]
    obs = _obs(mdata.obs, batch="batch", cell_type="cell_type", train=mdata.obs["is_train"].astype(bool), dataset=name)
    counts = {"rna": _openproblems_counts(mdata, "rna", "rna"), modality: _openproblems_counts(mdata, second, modality)}
    scored = {"rna": _dense(mdata.mod["rna"].X), modality: _dense(mdata.mod[second].X)}
    if modality == "atac":
        scored["atac"] = (scored["atac"] > 0).astype(np.float64)
    return Study(name, counts, scored, obs)


def bmmc_cite() -> Study:
    """NeurIPS 2021 BMMC CITE-seq starter set, its ``is_train`` split (train s1d1, test s1d2)."""
    return _openproblems_study("bmmc_cite", pengster.datasets.bmmc_cite(), "prot")


def bmmc_multiome() -> Study:
    """NeurIPS 2021 BMMC multiome starter set, its ``is_train`` split (train s1d1, test s1d2)."""
    return _openproblems_study("bmmc_multiome", pengster.datasets.bmmc_multiome(), "atac")


def _log_normalize(counts: ad.AnnData) -> np.ndarray:
    values = _dense(counts.X)
    return np.log1p(values / values.sum(1, keepdims=True).clip(1) * 1e4)


def snareseq2(*, n_peaks: int = SNARE_TOP_PEAKS) -> Study:
    """SNARE-seq2 mouse motor cortex: train on 6 libraries, test on 09G and 09H.

    ATAC keeps the ``n_peaks`` peaks most often open in the training nuclei (feature selection on training cells
    only); RNA is scored as log1p counts per 10k, ATAC as binary.
    """
    snare = pengster.datasets.mop_snareseq2()
    train = ~snare.obs["batch"].astype(str).isin(SNARE_TEST_LIBRARIES).to_numpy()
    atac = snare.mod["atac"]
    frequency = np.asarray((atac.X[train] > 0).mean(axis=0)).ravel()
    peaks = atac.var_names[np.sort(np.argsort(-frequency, kind="stable")[:n_peaks])]
    rna = ad.AnnData(X=sparse.csr_matrix(snare.mod["rna"].X, dtype=np.float32), obs=snare.obs[[]].copy())
    rna.var_names = snare.mod["rna"].var_names
    peaks_adata = ad.AnnData(X=sparse.csr_matrix(atac[:, peaks].X, dtype=np.float32), obs=snare.obs[[]].copy())
    peaks_adata.var_names = peaks
    obs = _obs(snare.obs, batch="batch", cell_type="cell_type", train=train, dataset="snareseq2")
    scored = {"rna": _log_normalize(rna), "atac": (_dense(peaks_adata.X) > 0).astype(np.float64)}
    return Study("snareseq2", {"rna": rna, "atac": peaks_adata}, scored, obs)


def bmmc_mosaic() -> Study:
    """BMMC multiome + CITE-seq as one mosaic; RNA on the union of the two gene panels (zero where unmeasured).

    Scored RNA keeps each dataset's own normalized values; genes a dataset did not measure are never scored.
    """
    multiome, cite = bmmc_multiome(), bmmc_cite()
    for study, suffix in ((multiome, "-multiome"), (cite, "-cite")):
        for adata in study.counts.values():
            adata.obs_names = adata.obs_names + suffix
        study.obs.index = study.obs.index + suffix
    genes = multiome.counts["rna"].var_names.append(
        cite.counts["rna"].var_names.difference(multiome.counts["rna"].var_names)
    )
    rna_parts, scored_parts = [], []
    for study in (multiome, cite):
        columns = genes.get_indexer(study.counts["rna"].var_names)
        coo = sparse.csr_matrix(study.counts["rna"].X).tocoo()
        rna_parts.append(sparse.csr_matrix((coo.data, (coo.row, columns[coo.col])), shape=(coo.shape[0], len(genes))))
        scored = np.full((coo.shape[0], len(genes)), np.nan)
        scored[:, columns] = study.scored["rna"]
        scored_parts.append(scored)
    obs = pd.concat([multiome.obs, cite.obs])
    obs["batch"] = obs["dataset"].str.replace("bmmc_", "") + ":" + obs["batch"]
    rna = ad.AnnData(X=sparse.vstack(rna_parts, format="csr"), obs=pd.DataFrame(index=obs.index.copy()))
    rna.var_names = genes
    counts = {"rna": rna, "atac": multiome.counts["atac"], "protein": cite.counts["protein"]}
    scored = {"rna": np.vstack(scored_parts), "atac": multiome.scored["atac"], "protein": cite.scored["protein"]}
    measured = {
        "rna": pd.DataFrame(
            {study.name: genes.isin(study.counts["rna"].var_names) for study in (multiome, cite)}, index=genes
        )
    }
    return Study("bmmc_mosaic", counts, scored, obs, measured=measured)


def pbmc_mosaic() -> Study:
    """PBMC CITE-seq mosaic (MIDAS): p1_0 RNA only, p2_0 protein only, p3_0 paired (train), p4_0 paired (test).

    ``train`` marks p3_0 (the only paired training donor); p4_0 is the held-out donor whose protein is hidden.
    """
    pbmc = pengster.datasets.pbmc_cite_mosaic()
    obs = _obs(
        pbmc.obs, batch="batch", cell_type="celltype", train=pbmc.obs["batch"].astype(str) != "p4_0", dataset="pbmc"
    )
    counts, scored = {}, {}
    for key, modality in (("rna", "rna"), ("adt", "protein")):
        adata = pbmc.mod[key]
        part = ad.AnnData(
            X=sparse.csr_matrix(adata.X, dtype=np.float32), obs=pd.DataFrame(index=adata.obs_names.copy())
        )
        part.var_names = adata.var_names
        counts[modality] = part
        values = _dense(part.X)
        if modality == "rna":
            scored[modality] = _log_normalize(part)
        else:
            log_values = np.log1p(values)
            scored[modality] = np.log1p(values / np.exp(log_values.mean(1, keepdims=True)))
    return Study("pbmc_mosaic", counts, scored, obs)


def subsample(study: Study, n_cells: int, *, seed: int = 0) -> Study:
    """At most ``n_cells`` cells, stratified by batch (for the quick CI run)."""
    rng = np.random.default_rng(seed)
    keep = []
    for _, names in study.obs.groupby("batch", observed=True).groups.items():
        share = max(2, int(round(n_cells * len(names) / len(study.obs))))
        keep.extend(rng.choice(np.asarray(names), size=min(share, len(names)), replace=False).tolist())
    cells = study.obs.index[study.obs.index.isin(keep)]
    counts, scored = {}, {}
    for modality, adata in study.counts.items():
        mask = adata.obs_names.isin(cells)
        counts[modality] = adata[mask].copy()
        scored[modality] = study.scored[modality][mask]
    return Study(study.name, counts, scored, study.obs.loc[cells].copy(), {}, study.measured)


# Cell groups with a canonical surface marker on each panel: group -> (cell types, marker proteins).
BMMC_MARKERS = {
    "B": (["Naive CD20+ B", "B1 B", "Transitional B"], ["CD19", "CD20"]),
    "T": (["CD8+ T", "CD4+ T naive", "CD4+ T activated"], ["CD3"]),
    "CD4 T": (["CD4+ T naive", "CD4+ T activated"], ["CD4"]),
    "CD8 T": (["CD8+ T"], ["CD8"]),
    "CD14 monocyte": (["CD14+ Mono"], ["CD14"]),
    "CD16 monocyte": (["CD16+ Mono"], ["CD16"]),
    "NK": (["NK"], ["CD56"]),
    "erythroid": (["Erythroblast", "Normoblast", "Proerythroblast"], ["CD71"]),
    "pDC": (["pDC"], ["CD123", "CD303"]),
}
PBMC_MARKERS = {
    "B": (["B"], ["cd19", "cd20"]),
    "T": (["CD4 T", "CD8 T", "other T"], ["cd3.1", "cd3.2"]),
    "CD4 T": (["CD4 T"], ["cd4.1", "cd4.2"]),
    "CD8 T": (["CD8 T"], ["cd8", "cd8a"]),
    "monocyte": (["Mono"], ["cd14"]),
    "NK": (["NK"], ["cd56.1", "cd56.2"]),
}
