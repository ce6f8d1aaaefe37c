from __future__ import annotations

import logging
import os
import time
import tracemalloc
from pathlib import Path

import anndata as ad
import mudata as md
import numpy as np
import pandas as pd
import pytest
from scipy import sparse

from pengster._constants import DATASET_KEY, MEASURED_VARM_KEY
from pengster.data import mosaic, read_openproblems, synthetic_mosaic

DATA_DIR = os.environ.get("PENGSTER_DATA_DIR")
needs_data = pytest.mark.skipif(not DATA_DIR, reason="PENGSTER_DATA_DIR is unset; point it at the shared data folder")


def _pair(name: str) -> tuple[Path, Path]:
    prefix = Path(DATA_DIR) / f"openproblems_bmmc_{name}_starter"
    return Path(f"{prefix}.output_rna.h5ad"), Path(f"{prefix}.output_mod2.h5ad")


@pytest.fixture(scope="module")
def bmmc():
    return {"multiome": read_openproblems(*_pair("multiome")), "cite": read_openproblems(*_pair("cite"))}


def _snapshot(mdata: md.MuData) -> dict:
    return {
        "obs": mdata.obs.copy(),
        "obs_names": mdata.obs_names.copy(),
        **{f"{k}.X": mdata.mod[k].X.copy() for k in mdata.mod},
        **{f"{k}.{layer}": mdata.mod[k].layers[layer].copy() for k in mdata.mod for layer in mdata.mod[k].layers},
        **{f"{k}.obs": mdata.mod[k].obs.copy() for k in mdata.mod},
        **{f"{k}.var": mdata.mod[k].var.copy() for k in mdata.mod},
    }


def _assert_same(before: dict, mdata: md.MuData) -> None:
    after = _snapshot(mdata)
    assert before.keys() == after.keys()
    for key, value in before.items():
        if isinstance(value, pd.DataFrame | pd.Index):
            assert value.equals(after[key]), key
        else:
            dense = value.toarray() if sparse.issparse(value) else np.asarray(value)
            other = after[key].toarray() if sparse.issparse(after[key]) else np.asarray(after[key])
            np.testing.assert_array_equal(dense, other, err_msg=key)


def _toy(names, genes, *, with_prot=False, extra_layer=False) -> md.MuData:
    rng = np.random.default_rng(len(names) + len(genes))
    x = sparse.random(len(names), len(genes), density=0.5, format="csr", random_state=rng, dtype=np.float32)
    layers = {"counts": x.copy()} | ({"extra": x.copy()} if extra_layer else {})
    obs = pd.DataFrame({"cell_type": pd.Categorical(["a"] * len(names))}, index=names)
    mods = {"rna": ad.AnnData(x, obs=obs.copy(), var=pd.DataFrame(index=genes), layers=layers)}
    if with_prot:
        mods["prot"] = ad.AnnData(
            np.ones((len(names), 2), dtype=np.float32), obs=obs.copy(), var=pd.DataFrame(index=["p1", "p2"])
        )
    with md.set_options(pull_on_update=False):
        mdata = md.MuData(mods)
        mdata.obs = obs.copy()
    return mdata


@needs_data
def test_read_openproblems_detects_modalities(bmmc):
    assert list(bmmc["multiome"].mod) == ["rna", "atac"]
    assert list(bmmc["cite"].mod) == ["rna", "prot"]
    cite = bmmc["cite"]
    for column in ("cell_type", "batch", "is_train"):
        assert column in cite.obs.columns
    assert "pseudotime_order_ADT" in cite.obs.columns and "n_counts" not in cite.obs.columns
    raw = ad.read_h5ad(_pair("cite")[1])
    np.testing.assert_array_equal(cite.mod["prot"].layers["counts"].toarray(), raw.layers["counts"].toarray())
    assert cite.mod["prot"].shape == (600, 134)


@needs_data
def test_read_openproblems_errors(tmp_path):
    rna, mod2 = _pair("multiome")
    with pytest.raises(ValueError, match="same obs_names"):
        read_openproblems(rna, _pair("cite")[1])
    with pytest.raises(ValueError, match="both hold 'rna'"):
        read_openproblems(rna, rna)
    odd = ad.read_h5ad(mod2)
    odd.var["feature_types"] = "Peaks"
    odd.write_h5ad(tmp_path / "odd.h5ad")
    with pytest.raises(ValueError, match="feature_types"):
        read_openproblems(rna, tmp_path / "odd.h5ad")


@needs_data
def test_mosaic_bmmc(bmmc):
    before = {name: _snapshot(mdata) for name, mdata in bmmc.items()}
    mdata = mosaic(bmmc)
    for name in bmmc:
        _assert_same(before[name], bmmc[name])
    assert mdata.n_obs == 1100
    assert mdata.mod["rna"].shape == (1100, 1524)
    assert mdata.mod["atac"].n_obs == 500 and mdata.mod["prot"].n_obs == 600
    measured = mdata.mod["rna"].varm[MEASURED_VARM_KEY]
    assert list(measured.columns) == ["multiome", "cite"]
    assert measured.sum().to_dict() == {"multiome": 600, "cite": 1000}
    assert (measured.all(axis=1)).sum() == 76
    assert list(mdata.mod["atac"].varm[MEASURED_VARM_KEY].columns) == ["multiome"]
    assert mdata.obs[DATASET_KEY].value_counts().to_dict() == {"multiome": 500, "cite": 600}
    assert list(mdata.obs[DATASET_KEY].cat.categories) == ["multiome", "cite"]
    assert {"cell_type", "batch", "is_train"} <= set(mdata.obs.columns)
    rna = mdata.mod["rna"]
    for name, source in bmmc.items():
        cells = mdata.obs_names[mdata.obs[DATASET_KEY] == name]
        block = rna[cells]
        for layer in (None, "counts"):
            got = block.X if layer is None else block.layers[layer]
            want = source.mod["rna"].X if layer is None else source.mod["rna"].layers[layer]
            assert sparse.isspmatrix_csr(got)
            np.testing.assert_array_equal(
                got[:, rna.var_names.get_indexer(source.mod["rna"].var_names)].toarray(), want.toarray()
            )
            assert got[:, ~measured[name].to_numpy()].nnz == 0
        np.testing.assert_array_equal(mdata.obs.loc[cells, "cell_type"], source.obs["cell_type"])


@needs_data
def test_mosaic_h5mu_round_trip(bmmc, tmp_path):
    mdata = mosaic(bmmc)
    with md.set_options(pull_on_update=False):
        mdata.write(tmp_path / "mosaic.h5mu")
        back = md.read_h5mu(tmp_path / "mosaic.h5mu")
    assert back.obs.equals(mdata.obs)
    for key in mdata.mod:
        measured = back.mod[key].varm[MEASURED_VARM_KEY]
        assert isinstance(measured, pd.DataFrame) and all(
            pd.api.types.is_bool_dtype(dtype) for dtype in measured.dtypes
        )
        assert measured.equals(mdata.mod[key].varm[MEASURED_VARM_KEY])
        assert (back.mod[key].layers["counts"] != mdata.mod[key].layers["counts"]).nnz == 0
    assert back.obsmap["atac"].tolist() == mdata.obsmap["atac"].tolist()


def test_mosaic_collisions_and_padding(caplog):
    first = _toy(["c1", "c2", "c3"], ["g1", "g2", "g3"], extra_layer=True)
    second = _toy(["c1", "c9"], ["g4", "g2"], with_prot=True)
    before = [_snapshot(first), _snapshot(second)]
    with caplog.at_level(logging.INFO, logger="pengster"), pytest.warns(UserWarning, match="extra"):
        mdata = mosaic({"a": first, "b": second}, dataset_key="origin")
    _assert_same(before[0], first)
    _assert_same(before[1], second)
    assert "collide" in caplog.text
    assert mdata.obs_names.tolist() == ["c1-a", "c2-a", "c3-a", "c1-b", "c9-b"]
    assert mdata.obs["origin"].tolist() == ["a", "a", "a", "b", "b"]
    rna = mdata.mod["rna"]
    assert rna.var_names.tolist() == ["g1", "g2", "g3", "g4"]
    assert "extra" not in rna.layers
    dense = rna.X.toarray()
    np.testing.assert_array_equal(dense[3:, [3, 1]], second.mod["rna"].X.toarray())
    np.testing.assert_array_equal(dense[3:, [0, 2]], 0)
    assert mdata.mod["prot"].obs_names.tolist() == ["c1-b", "c9-b"]
    assert rna.varm[MEASURED_VARM_KEY].to_numpy().tolist() == [
        [True, False],
        [True, True],
        [True, False],
        [False, True],
    ]


def test_mosaic_errors():
    toy = _toy(["c1", "c2"], ["g1"])
    with pytest.raises(ValueError, match="empty"):
        mosaic({})
    with pytest.raises(TypeError, match=r"mudata.MuData\(\{'rna': adata\}\)"):
        mosaic({"x": toy.mod["rna"]})
    dup = _toy(["c1", "c1"], ["g1"])
    with pytest.raises(ValueError, match="duplicates"):
        mosaic({"x": dup})


def test_synthetic_shapes_sparsity_determinism():
    mdata = synthetic_mosaic(n_cells={"multiome": 120, "cite": 80, "rna_only": 50}, gene_overlap=0.5, seed=3)
    assert mdata.n_obs == 250
    assert mdata.mod["atac"].shape == (120, 300) and mdata.mod["prot"].shape == (80, 20)
    assert mdata.mod["rna"].shape == (250, 200)
    measured = mdata.mod["rna"].varm[MEASURED_VARM_KEY]
    assert measured.all(axis=1).sum() == 100 and measured.any(axis=1).all()
    assert set(mdata.obs.columns) >= {"cell_type", "batch", DATASET_KEY}
    for key, adata in mdata.mod.items():
        assert sparse.isspmatrix_csr(adata.X) and adata.X.dtype == np.float32, key
        np.testing.assert_array_equal(adata.X.data, np.round(adata.X.data))
        assert (adata.X != adata.layers["counts"]).nnz == 0
    atac = mdata.mod["atac"].X
    assert 0.03 < atac.nnz / np.prod(atac.shape) < 0.09
    again = synthetic_mosaic(n_cells={"multiome": 120, "cite": 80, "rna_only": 50}, gene_overlap=0.5, seed=3)
    other = synthetic_mosaic(n_cells={"multiome": 120, "cite": 80, "rna_only": 50}, gene_overlap=0.5, seed=4)
    for key in mdata.mod:
        assert (mdata.mod[key].X != again.mod[key].X).nnz == 0
    assert (mdata.mod["atac"].X != other.mod["atac"].X).nnz > 0


def _pcs(matrix: sparse.csr_matrix, n_pcs: int) -> np.ndarray:
    """Principal component scores of log1p counts, from the eigenvectors of the cells' Gram matrix."""
    log = np.log1p(matrix.toarray())
    log -= log.mean(axis=0)
    eigenvalues, eigenvectors = np.linalg.eigh(log @ log.T)
    top = np.argsort(eigenvalues)[::-1][:n_pcs]
    return eigenvectors[:, top] * np.sqrt(np.clip(eigenvalues[top], 0, None))


def _r2_from_pcs(matrix: sparse.csr_matrix, target: np.ndarray, n_pcs: int = 10) -> float:
    pcs = np.c_[_pcs(matrix, n_pcs), np.ones(matrix.shape[0])]
    coef, *_ = np.linalg.lstsq(pcs, target, rcond=None)
    residual = target - pcs @ coef
    return 1 - residual.var(axis=0).sum() / target.var(axis=0).sum()


def test_synthetic_cross_modal_dependence():
    mdata = synthetic_mosaic(n_cells={"multiome": 400, "cite": 400}, n_peaks=2000, seed=1)
    latent = pd.DataFrame(mdata.obsm["synthetic_latent"], index=mdata.obs_names)
    for key, threshold in {"rna": 0.8, "atac": 0.4, "prot": 0.8}.items():
        adata = mdata.mod[key]
        assert _r2_from_pcs(adata.X, latent.loc[adata.obs_names].to_numpy()) > threshold, key
    prot = mdata.mod["prot"]
    means = pd.DataFrame(np.log1p(prot.X.toarray())).groupby(prot.obs["cell_type"].to_numpy(), observed=True).mean()
    assert (means.max() - means.min()).max() > 1.0
    # the ATAC of a multiome cell is predicted by its RNA alone: both depend on the same latent
    multiome = mdata.obs_names[mdata.obs[DATASET_KEY] == "multiome"]
    atac_pcs = _pcs(mdata.mod["atac"][multiome].X, 3)
    assert _r2_from_pcs(mdata.mod["rna"][multiome].X, atac_pcs) > 0.25
    shuffled = np.random.default_rng(0).permutation(len(multiome))
    assert _r2_from_pcs(mdata.mod["rna"][multiome].X[shuffled], atac_pcs) < 0.1


def test_synthetic_scale_is_sparse():
    tracemalloc.start()
    start = time.perf_counter()
    mdata = synthetic_mosaic(n_cells={"multiome": 20_000}, n_genes=50, n_peaks=20_000, n_proteins=5)
    elapsed = time.perf_counter() - start
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    atac = mdata.mod["atac"].X
    assert 0.03 < atac.nnz / np.prod(atac.shape) < 0.09
    assert elapsed < 30
    dense_bytes = 20_000 * 20_000 * 4
    assert peak < 8 * atac.nnz * 8 < dense_bytes
    assert atac.max() <= 50


def test_synthetic_rejects_unknown_name():
    with pytest.raises(ValueError, match="'multiome'"):
        synthetic_mosaic(n_cells={"mystery": 10})
