"""Differential analysis and MULTIVI's and TOTALVI's other getters (model/_differential.py, model/_analyses.py)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import scvi
import sparse as pydata_sparse
import torch
from scipy import sparse
from torch.distributions import MixtureSameFamily

import pengster
from pengster.model import JointVAE

MODALITIES = {"rna_layer": "rna", "atac_layer": "atac", "protein_layer": "prot"}
DE_COLUMNS = [
    "proba_de", "proba_not_de", "bayes_factor", "scale1", "scale2", "lfc_mean", "lfc_median", "lfc_std", "lfc_min",
    "lfc_max", "raw_mean1", "raw_mean2", "non_zeros_proportion1", "non_zeros_proportion2", "raw_normalized_mean1",
    "raw_normalized_mean2", "is_de_fdr_0.05", "comparison", "group1", "group2", "measured_fraction1",
    "measured_fraction2",
]  # fmt: skip
FAST = {"n_samples_overall": 200, "silent": True}


@pytest.fixture(scope="module")
def model():
    torch.set_num_threads(1)
    mdata = pengster.data.synthetic_mosaic(
        n_cells={"multiome": 90, "cite": 80}, n_genes=40, n_peaks=60, n_proteins=10, gene_overlap=0.8, seed=2
    )
    # a category with no cells, for the error of an empty group
    mdata.obs["group"] = pd.Categorical(
        mdata.obs["cell_type"], categories=[*sorted(set(mdata.obs["cell_type"])), "none"]
    )
    JointVAE.setup_mudata(mdata, modalities=MODALITIES, batch_key="batch")
    model = JointVAE(mdata, n_latent=5, n_hidden=32)
    model.train(max_epochs=3, batch_size=64, enable_progress_bar=False)
    return model


def _snapshot(mdata) -> dict:
    state = {"obs": mdata.obs.copy(), "obsm": sorted(mdata.obsm), "uns": sorted(mdata.uns)}
    for key, mod in mdata.mod.items():
        state[key] = (mod.obs.copy(), sorted(mod.obsm), sorted(mod.layers), float(mod.X.sum()))
    return state


def _assert_unchanged(before: dict, after: dict) -> None:
    assert before.keys() == after.keys()
    for key, value in before.items():
        if key == "obs":
            pd.testing.assert_frame_equal(value, after[key])
        elif isinstance(value, tuple):
            pd.testing.assert_frame_equal(value[0], after[key][0])
            assert value[1:] == after[key][1:]
        else:
            assert value == after[key]


def _cells(model, dataset: str, cell_type: str | None = None) -> np.ndarray:
    obs = model.mdata.obs
    mask = (obs["dataset"] == dataset).to_numpy()
    return mask if cell_type is None else mask & (obs["cell_type"] == cell_type).to_numpy()


# ------------------------------------------------------------------------------------------------ differential
def test_de_one_vs_rest_three_or_more_groups(model):
    before = _snapshot(model.mdata)
    groups = sorted(model.mdata.obs["cell_type"].unique())
    assert len(groups) >= 3  # MULTIVI.differential_expression fails here in scvi-tools 1.4.2
    table = model.differential_expression(groupby="cell_type", **FAST)
    assert set(DE_COLUMNS) <= set(table.columns)
    assert len(table) == len(groups) * model.adata.mod["rna"].n_vars
    assert sorted(table["group1"].unique()) == groups
    assert set(table["group2"]) == {"Rest"}
    assert table["proba_de"].between(0, 1).all() and np.isfinite(table["lfc_mean"]).all()
    _assert_unchanged(before, _snapshot(model.mdata))


def test_de_group1_vs_group2_and_idx(model):
    table = model.differential_expression(groupby="cell_type", group1="type0", group2="type1", **FAST)
    assert set(table["comparison"]) == {"type0 vs type1"}
    obs = model.mdata.obs
    by_idx = model.differential_expression(idx1=(obs["cell_type"] == "type0").to_numpy(),
                                           idx2=np.flatnonzero(obs["cell_type"] == "type1"), **FAST)  # fmt: skip
    assert set(by_idx["comparison"]) == {"idx1 vs idx2"}
    # the same cells and the same seed: the same test
    pd.testing.assert_series_equal(table["proba_de"].sort_index(), by_idx["proba_de"].sort_index())


def test_de_raw_statistics_over_measured_features(model):
    """The raw statistics of one dataset's cells are the plain means over the genes its panel measured."""
    rows1, rows2 = _cells(model, "multiome", "type0"), _cells(model, "multiome", "type1")
    table = model.differential_expression(idx1=rows1, idx2=rows2, **FAST)
    counts = model.adata_manager.get_from_registry("x_rna")
    counts = counts.toarray() if sparse.issparse(counts) else np.asarray(counts)
    panel = int(np.asarray(model.adata_manager.get_from_registry("panel")).reshape(-1)[np.flatnonzero(rows1)[0]])
    measured = model.module.panel_features("rna")[panel].cpu().numpy() > 0
    genes = model.adata.mod["rna"].var_names
    expected = pd.Series(np.where(measured, counts[rows1].mean(0), np.nan), index=genes)
    # scvi-tools and numpy sum the cells' float32 counts in other orders: ~n_cells * 2**-24 relative at most (1e-5)
    np.testing.assert_allclose(table["raw_mean1"].reindex(genes), expected, rtol=1e-5)
    nonzero = pd.Series(np.where(measured, (counts[rows2] > 0).mean(0), np.nan), index=genes)
    # a count of non-zero cells over the group's size: exact integers, one division (2**-24 relative even in float32),
    # whatever the summation order; 1e-6 is well above that
    np.testing.assert_allclose(table["non_zeros_proportion2"].reindex(genes), nonzero, rtol=1e-6)


def test_de_across_gene_panels_compares_decoded_values_not_zeros(model):
    """Multiome cells against CITE-seq cells (different gene panels): every gene has a decoded value in both groups."""
    rows1, rows2 = _cells(model, "multiome", "type0"), _cells(model, "cite", "type0")
    table = model.differential_expression(idx1=rows1, idx2=rows2, **FAST)
    panels = np.asarray(model.adata_manager.get_from_registry("panel")).reshape(-1)
    measured = model.module.panel_features("rna").cpu().numpy() > 0
    only_cite = model.adata.mod["rna"].var_names[measured[panels[rows2][0]] & ~measured[panels[rows1][0]]]
    assert len(only_cite) > 0
    # the multiome panel lacks these genes: decoded on its own panel they would be 0, an infinite fold change
    assert (table.loc[only_cite, "scale1"] > 0).all()
    assert np.isfinite(table.loc[only_cite, "lfc_mean"]).all()
    # and its raw statistics say that no multiome cell measured them
    assert table.loc[only_cite, "raw_mean1"].isna().all()


def test_de_samples_do_not_depend_on_the_minibatch_size(model):
    """The posterior noise is drawn once for all sampled cells, so the minibatch size changes no sample."""
    tables = []
    for batch_size in (16, 50):
        scvi.settings.seed = 0
        tables.append(model.differential_expression(groupby="cell_type", group1="type0", group2="type1",
                                                    batch_size=batch_size, **FAST))  # fmt: skip
    first, second = tables[0], tables[1].loc[tables[0].index]
    # the same float32 operations on minibatches of other sizes: a matrix product may sum in another order, a few
    # 2**-24 relative per value, and scale1 is a mean of such values; 1e-5 is far above that and far below the
    # Monte Carlo error of another draw (about 1/sqrt(200) relative)
    np.testing.assert_allclose(first["scale1"], second["scale1"], rtol=1e-5)
    np.testing.assert_allclose(first["scale2"], second["scale2"], rtol=1e-5)


def test_de_genes_and_proteins_in_one_table(model):
    table = model.differential_expression(groupby="cell_type", group1="type0", modality=["rna", "prot"], **FAST)
    n_genes, n_proteins = model.adata.mod["rna"].n_vars, model.adata.mod["prot"].n_vars
    assert len(table) == n_genes + n_proteins
    assert (table["modality"] == "protein").sum() == n_proteins
    assert table["proba_de"].is_monotonic_decreasing


def test_de_of_protein_between_multiome_cells_from_rna(model):
    """Multiome cells measured no protein: it is decoded from their RNA; raw statistics are NaN, fractions 0."""
    before = _snapshot(model.mdata)
    rows1, rows2 = _cells(model, "multiome", "type0"), _cells(model, "multiome", "type1")
    table = model.differential_expression(idx1=rows1, idx2=rows2, modality="protein", source="rna", **FAST)
    assert len(table) == model.adata.mod["prot"].n_vars
    assert (table["measured_fraction1"] == 0).all() and (table["measured_fraction2"] == 0).all()
    assert table["raw_mean1"].isna().all() and table["non_zeros_proportion2"].isna().all()
    assert np.isfinite(table["lfc_mean"]).all()
    _assert_unchanged(before, _snapshot(model.mdata))


def test_differential_accessibility_of_cite_cells(model):
    rows1, rows2 = _cells(model, "cite", "type0"), _cells(model, "cite", "type1")
    table = model.differential_accessibility(idx1=rows1, idx2=rows2, source=["rna", "protein"], **FAST)
    assert len(table) == model.adata.mod["atac"].n_vars
    assert table["delta"].eq(0.05).all() and table["pseudocounts"].eq(1e-6).all()
    np.testing.assert_allclose(table["effect_size"], table["scale2"] - table["scale1"])
    assert (table["measured_fraction1"] == 0).all() and table["emp_prob1"].isna().all()
    assert {"prob_da", "is_da_fdr", "est_prob1", "emp_effect"} <= set(table.columns)


def test_differential_accessibility_mixed_groups(model):
    """One-vs-rest over every group: fractions measured are those of the multiome cells in each group."""
    table = model.differential_accessibility(groupby="cell_type", **FAST)
    obs = model.mdata.obs
    for group, part in table.groupby("group1"):
        expected = (obs.loc[obs["cell_type"] == group, "dataset"] == "multiome").mean()
        np.testing.assert_allclose(part["measured_fraction1"], expected)


@pytest.mark.parametrize(
    ("arguments", "error", "words"),
    [
        ({"groupby": "celltype"}, KeyError, ["groupby='celltype'", "cell_type"]),
        ({"groupby": "cell_type", "group1": "type9"}, ValueError, ["group1", "type9", "type0"]),
        ({"groupby": "group", "group1": "none"}, ValueError, ["group1", "'none'", "no cells"]),
        ({"groupby": "cell_type", "group1": "type0", "group2": "type9"}, ValueError, ["group2", "type9"]),
        ({"idx1": "cite", "idx2": "multiome", "modality": "protein", "source": "atac"}, ValueError,
         ["group 'idx1'", "source", "protein"]),
        ({"idx1": [0, 1, 2], "idx2": [2, 3]}, ValueError, ["idx1 and idx2", "disjoint"]),
        ({}, ValueError, ["groupby"]),
    ],
)  # fmt: skip
def test_de_bad_input(model, arguments, error, words):
    before = _snapshot(model.mdata)
    for key in ("idx1", "idx2"):
        if isinstance(arguments.get(key), str):
            arguments = {**arguments, key: _cells(model, arguments[key])}
    with pytest.raises(error) as info:
        model.differential_expression(**arguments, **FAST)
    for word in words:
        assert word in str(info.value)
    _assert_unchanged(before, _snapshot(model.mdata))


# ------------------------------------------------------------------------------------------------ getters
def test_normalized_accessibility_factors(model):
    full = model.get_normalized_expression(modality="atac", return_numpy=True)
    bare = model.get_normalized_accessibility(return_numpy=True)
    cells = model.get_library_size_factors()["accessibility"]
    regions = model.get_region_factors()
    np.testing.assert_allclose(regions, torch.sigmoid(model.module.heads["atac"].region_logit).detach().numpy())
    assert cells.shape == (model.adata.n_obs,) and ((cells > 0) & (cells < 1)).all()
    np.testing.assert_allclose(bare * regions * cells[:, None], full, rtol=1e-4, atol=1e-6)
    both = model.get_normalized_accessibility(normalize_cells=True, normalize_regions=True, return_numpy=True)
    np.testing.assert_allclose(both, full, rtol=1e-4, atol=1e-6)
    regions_only = model.get_normalized_accessibility(normalize_regions=True)
    np.testing.assert_allclose(regions_only.to_numpy(), bare * regions, rtol=1e-5)
    thresholded = model.get_normalized_accessibility(threshold=0.5, return_numpy=True)
    assert sparse.issparse(thresholded)
    np.testing.assert_array_equal(thresholded.toarray(), np.where(bare < 0.5, 0, bare))
    with pytest.raises(ValueError, match="threshold"):
        model.get_normalized_accessibility(threshold=2)


def test_library_size_factors_expression_is_rna_depth(model):
    factors = model.get_library_size_factors()
    has_rna = model.adata.obs["_pengster_has_rna"].to_numpy() > 0
    counts = model.adata_manager.get_from_registry("x_rna")
    totals = np.asarray(counts.sum(1)).reshape(-1)
    np.testing.assert_allclose(factors["expression"][has_rna], np.maximum(totals[has_rna], 1.0), rtol=1e-5)


def test_protein_foreground_probability(model):
    values = model.get_protein_foreground_probability(indices=np.arange(20), return_numpy=True)
    tensors = next(model._minibatches(None, np.arange(20), 20))
    posterior = model.module.posterior(tensors)
    with torch.inference_mode():
        px = model.module.distribution("protein", posterior.qz.loc, tensors, state=posterior.states["protein"])
    np.testing.assert_allclose(values, 1 - px.mixture_probs.numpy(), rtol=1e-5)
    frame = model.get_protein_foreground_probability(protein_list=model.adata.mod["prot"].var_names[:3])
    assert frame.shape == (model.adata.n_obs, 3)


def test_likelihood_parameters(model):
    parameters = model.get_likelihood_parameters()
    n, g = model.adata.n_obs, model.adata.mod["rna"].n_vars
    assert parameters["mean"].shape == parameters["dispersions"].shape == (n, g)
    np.testing.assert_allclose(
        parameters["dispersions"][0], model.module.heads["rna"].log_theta.exp().detach(), rtol=1e-5
    )
    # the NB means at the cell's own depth sum to its total counts
    has_rna = model.adata.obs["_pengster_has_rna"].to_numpy() > 0
    totals = np.asarray(model.adata_manager.get_from_registry("x_rna").sum(1)).reshape(-1)
    np.testing.assert_allclose(parameters["mean"][has_rna].sum(1), np.maximum(totals[has_rna], 1), rtol=1e-4)
    draws = model.get_likelihood_parameters(n_samples=3, modality="protein")
    assert draws["background_probability"].shape == (3, n, model.adata.mod["prot"].n_vars)
    mean = model.get_likelihood_parameters(n_samples=3, give_mean=True, modality="atac")["mean"]
    assert mean.shape == (n, model.adata.mod["atac"].n_vars)


def test_posterior_predictive_sample(model):
    one = model.posterior_predictive_sample(indices=np.arange(10))
    assert isinstance(one, pydata_sparse.GCXS) and one.shape == (10, model.adata.mod["rna"].n_vars)
    several = model.posterior_predictive_sample(indices=np.arange(10), n_samples=3, modality="atac")
    assert several.shape == (10, model.adata.mod["atac"].n_vars, 3)
    values = several.todense()
    assert set(np.unique(values)) <= {0.0, 1.0}
    genes = model.posterior_predictive_sample(gene_list=model.adata.mod["rna"].var_names[:4], modality="rna")
    assert genes.shape == (model.adata.n_obs, 4) and (genes.todense() >= 0).all()


def test_feature_correlation_across_modalities(model):
    matrix = model.get_feature_correlation_matrix(n_samples=2, modalities=("rna", "protein", "atac"))
    n = sum(model.adata.mod[k].n_vars for k in ("rna", "prot", "atac"))
    assert matrix.shape == (n, n)
    assert matrix.index[0].startswith("rna:") and any(name.startswith("protein:") for name in matrix.columns)
    values = matrix.to_numpy()
    finite = np.isfinite(values)
    np.testing.assert_allclose(values[finite], values.T[finite], atol=1e-8)
    np.testing.assert_allclose(np.diag(values)[np.isfinite(np.diag(values))], 1.0)
    pearson = model.get_feature_correlation_matrix(n_samples=2, correlation_type="pearson")
    assert pearson.shape == (model.adata.mod["rna"].n_vars,) * 2


def test_marginal_ll_is_at_least_the_elbo(model):
    """One draw estimates get_elbo's ELBO (scvi-tools' sign: higher is better); more draws only raise it."""
    indices = np.arange(model.adata.n_obs)
    elbo = float(model.get_elbo(indices=indices))
    one = model.get_marginal_ll(indices=indices, n_mc_samples=1)
    marginal = model.get_marginal_ll(indices=indices, n_mc_samples=50)
    assert abs(one - elbo) < 0.02 * abs(elbo)
    assert marginal >= elbo - 0.01 * abs(elbo)
    assert marginal > one
    per_cell = model.get_marginal_ll(indices=indices[:20], n_mc_samples=5, return_mean=False)
    assert per_cell.shape == (20,) and np.isfinite(per_cell).all()


def test_latent_distribution_and_scvi_abundance(model):
    mean, variance = model.get_latent_representation(return_dist=True)
    np.testing.assert_allclose(mean, model.get_latent_representation())
    assert (variance > 0).all() and variance.shape == mean.shape
    posterior = model.get_aggregated_posterior(indices=np.arange(30))
    assert isinstance(posterior, MixtureSameFamily)
    assert np.isfinite(posterior.log_prob(torch.as_tensor(mean[:5])).numpy()).all()
    before = _snapshot(model.mdata)
    model.differential_abundance(sample_key="_pengster_batch", batch_size=64)
    _assert_unchanged(before, _snapshot(model.mdata))
