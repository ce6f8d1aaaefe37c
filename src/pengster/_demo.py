"""`pengster demo`: the BMMC multiome + CITE-seq mosaic, trained, written, plotted and scored on held-out cells."""

from __future__ import annotations

import logging
import re
import time
import warnings
from pathlib import Path

import anndata as ad
import mudata as md
import numpy as np
import pandas as pd

logger = logging.getLogger(__name__)


def hide_test_cells(mdata: md.MuData, mod_key: str, *, split_key: str = "is_train") -> md.MuData:
    """Copy of a paired MuData in which the test cells (``obs[split_key]`` False) keep only their RNA."""
    train = mdata.obs[split_key].astype(bool).to_numpy()
    mods = {key: adata.copy() for key, adata in mdata.mod.items() if key != mod_key}
    mods[mod_key] = mdata.mod[mod_key][train].copy()
    with md.set_options(pull_on_update=False):  # obs is set below, nothing to pull from the modalities
        hidden = md.MuData(mods)
        hidden.obs = mdata.obs.loc[hidden.obs_names].copy()
    return hidden


def _drop_empty_features(mdata: md.MuData) -> md.MuData:
    """Keep the features with at least one count among the training cells: the others cannot be learned."""
    mods = {}
    for key, adata in mdata.mod.items():
        totals = np.asarray(adata.layers["counts"].sum(axis=0)).ravel()
        mods[key] = adata[:, totals > 0].copy()
    with md.set_options(pull_on_update=False):
        kept = md.MuData(mods)
        if not kept.obs_names.equals(mdata.obs_names):
            kept = kept[mdata.obs_names].copy()
        kept.obs = mdata.obs.copy()
    return kept


def _scores(observed: np.ndarray, predicted: np.ndarray, *, binary: bool = False) -> dict[str, float]:
    from pengster import metrics

    scores = {
        "pearson_per_feature": metrics.pearson_per_feature(observed, predicted),
        "pearson_per_cell": metrics.pearson_per_cell(observed, predicted),
        "rmse": metrics.rmse(observed, predicted),
    }
    if binary:
        scores["auroc"] = metrics.auroc(observed > 0, predicted)
    return scores


_NOT_SCORED = {"auroc": "AUROC scores open/closed (binary) targets, so only RNA->ATAC has one"}
"""Why a metric has no value in a row of the table."""


def format_metrics(table: pd.DataFrame, *, digits: int = 3) -> str:
    """The metrics table as the demo prints it: no NaN cells.

    A metric with no value in any row is left out; a missing value is shown as ``-``, explained on a line under the
    table.

    Parameters
    ----------
    table
        One row per task, one column per metric (:func:`run_demo`'s return value).
    digits
        Decimal places of the values.

    Returns
    -------
    The table and, when a cell shows ``-``, one line per such metric saying why.
    """
    shown = table.loc[:, table.notna().any()]
    text = shown.map(lambda value: "-" if pd.isna(value) else f"{value:.{digits}f}").to_string()
    for metric in shown.columns[shown.isna().any()]:
        reason = _NOT_SCORED.get(metric, "not defined for those cells (e.g. constant observed or predicted values)")
        text += f"\n- in {metric}: {reason}"
    return text


def _dense(matrix) -> np.ndarray:
    return np.asarray(matrix.toarray() if hasattr(matrix, "toarray") else matrix, dtype=np.float64)


# BMMC's fine labels (about 45 over both runs) as broad types, so that the UMAP's legend stays legible
_BROAD_CELL_TYPES = {
    "CD4+ T": r"^CD4\+ T|^T reg",
    "CD8+ T": r"^CD8\+ T|^MAIT|^gdT",
    "NK and ILC": r"^NK|^ILC",
    "B and plasma": r"\bB\b|^Plasma",
    "monocyte": r"Mono",
    "dendritic": r"DC\d?$",
    "erythroid": r"^Erythro|^Normo|^Proery|^Reticulo",
    "progenitor": r"prog$|^HSC",
}


def _broad_cell_type(fine: str) -> str:
    return next((broad for broad, pattern in _BROAD_CELL_TYPES.items() if re.search(pattern, fine)), "other")


def _umap_figure(embedding: ad.AnnData, path: Path) -> None:
    import matplotlib.pyplot as plt
    import scanpy as sc

    embedding.obs["broad cell type"] = pd.Categorical(
        [_broad_cell_type(fine) for fine in embedding.obs["cell_type"]], categories=[*_BROAD_CELL_TYPES, "other"]
    ).remove_unused_categories()
    figure, axes = plt.subplots(1, 2, figsize=(11, 4.5), gridspec_kw={"wspace": 0.45})
    for ax, key in zip(axes, ["broad cell type", "dataset"], strict=True):
        sc.pl.umap(embedding, color=key, ax=ax, show=False, frameon=False, legend_fontsize=10, title=key)
    figure.savefig(path, dpi=150, bbox_inches="tight")
    plt.close(figure)


def run_demo(out_dir: str | Path = "demo_output", *, max_epochs: int = 300, seed: int = 0) -> pd.DataFrame:
    """Train JointVAE on the BMMC multiome + CITE-seq mosaic and score its held-out predictions.

    Test cells (``is_train`` False) of each set keep only their RNA. Writes ``pengster_demo.h5mu`` (all result
    keys), ``umap.png`` (joint latent by cell type and by dataset) and ``metrics.csv`` into ``out_dir``.

    Returns
    -------
    The metrics table: one row per task (RNA->protein, RNA->ATAC, ATAC->RNA on held-out cells).
    """
    import matplotlib

    matplotlib.use("Agg")
    import scanpy as sc
    import scvi
    import torch

    import pengster

    start = time.perf_counter()
    threads = torch.get_num_threads()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    scvi.settings.seed = seed
    with warnings.catch_warnings():
        # antibodies named like their genes (CD4 in RNA and protein): pengster keeps the modalities apart
        warnings.filterwarnings("ignore", message="var_names are not unique", category=UserWarning)
        multiome, cite = pengster.datasets.bmmc_multiome(), pengster.datasets.bmmc_cite()
        mdata = pengster.data.mosaic(
            {"multiome": hide_test_cells(multiome, "atac"), "cite": hide_test_cells(cite, "prot")}
        )
        mdata = _drop_empty_features(mdata)
    # s1d1 of the multiome run and s1d1 of the CITE-seq run are different experiments
    mdata.obs["batch_dataset"] = mdata.obs["dataset"].astype(str) + ":" + mdata.obs["batch"].astype(str)
    pengster.model.JointVAE.setup_mudata(
        mdata,
        rna_layer="counts",
        atac_layer="counts",
        protein_layer="counts",
        batch_key="batch_dataset",
        modalities={"rna_layer": "rna", "atac_layer": "atac", "protein_layer": "prot"},
    )
    model = pengster.model.JointVAE(mdata)
    model.train(max_epochs=max_epochs, accelerator="cpu" if not torch.cuda.is_available() else "auto")
    pengster.tl.write_results(model, mdata)

    rows = []
    test_cite = cite.obs_names[~cite.obs["is_train"].astype(bool).to_numpy()]
    predicted = mdata.obsm["pengster_pred_protein"].loc[test_cite]
    observed = _dense(cite.mod["prot"][test_cite, predicted.columns].X)
    rows.append({"task": "RNA->protein (CITE test)", **_scores(observed, predicted.to_numpy())})

    test_multiome = multiome.obs_names[~multiome.obs["is_train"].astype(bool).to_numpy()]
    predicted = mdata.obsm["pengster_pred_atac"].loc[test_multiome]
    observed = _dense(multiome.mod["atac"][test_multiome, predicted.columns].X)
    rows.append({"task": "RNA->ATAC (multiome test)", **_scores(observed, predicted.to_numpy(), binary=True)})

    # ATAC->RNA: the test cells' ATAC was never seen in training; give the model their ATAC alone
    peaks = mdata.mod["atac"].var_names
    with md.set_options(pull_on_update=False):
        atac_only = md.MuData({"atac": multiome.mod["atac"][test_multiome, peaks].copy()})
        atac_only.obs = mdata.obs.loc[test_multiome, ["dataset", "batch_dataset"]].copy()
    predicted = model.predict(atac_only, target="rna", source="atac")
    genes = multiome.mod["rna"].var_names.intersection(mdata.mod["rna"].var_names, sort=False)
    observed = _dense(multiome.mod["rna"][test_multiome, genes].X)
    rows.append({"task": "ATAC->RNA (multiome test)", **_scores(observed, predicted[genes].to_numpy())})
    table = pd.DataFrame(rows).set_index("task")

    embedding = ad.AnnData(obs=mdata.obs[["dataset"]].copy(), obsm={"X_pengster": mdata.obsm["X_pengster"]})
    embedding.obs["cell_type"] = mdata.obs["cell_type"].astype(str).to_numpy()
    sc.pp.neighbors(embedding, use_rep="X_pengster", random_state=seed)
    sc.tl.umap(embedding, random_state=seed)
    mdata.obsm["X_umap"] = embedding.obsm["X_umap"]
    _umap_figure(embedding, out_dir / "umap.png")
    with md.set_options(pull_on_update=False):  # obs holds what it should; nothing to pull from the modalities
        mdata.write(out_dir / "pengster_demo.h5mu")
    table.to_csv(out_dir / "metrics.csv")
    elapsed = time.perf_counter() - start
    print(
        f"\nJointVAE on the BMMC multiome + CITE-seq mosaic: {mdata.n_obs} cells, "
        f"{len(model.history['train_loss'])} epochs"
    )
    print(format_metrics(table))
    print(
        f"\nwrote {out_dir / 'pengster_demo.h5mu'}, {out_dir / 'umap.png'}; wall time {elapsed:.0f} s "
        f"(torch threads: {threads})"
    )
    return table
