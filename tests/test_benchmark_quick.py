"""The accuracy benchmark's quick run (one seed, 3 epochs, ~160-cell subsets), so that benchmarks/ cannot rot."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest


def test_mosaic_study_scores_only_measured_genes(data_dir, bench):
    tasks = bench.tasks
    study = tasks.bmmc_mosaic()
    multiome = study.obs.index[(study.obs["dataset"] == "bmmc_multiome").to_numpy()]
    cite = study.obs.index[(study.obs["dataset"] == "bmmc_cite").to_numpy()]
    measured = study.measured["rna"]
    genes = study.counts["rna"].var_names
    # a gene is scored (finite) for a cell exactly when the cell's dataset measured it
    for cells, dataset in ((multiome, "bmmc_multiome"), (cite, "bmmc_cite")):
        finite = np.isfinite(study.truth("rna", cells)).all(0)
        np.testing.assert_array_equal(finite, measured.loc[genes, dataset].to_numpy())
    hidden = study.hide(rna=multiome[:5])
    assert hidden.visible("rna").n_obs == study.counts["rna"].n_obs - 5
    full = hidden.mudata(layout="full")
    assert full.mod["rna"][multiome[:5]].X.sum() == 0
    assert full.mod["rna"][multiome[5:]].X.sum() > 0
    # pengster's layout holds the visible cells' scored values (0 where the dataset did not measure the gene), the
    # layer that predict(layer=...) reports on
    mosaic = hidden.mudata(layout="mosaic")
    layer = mosaic.mod["rna"].layers[tasks.SCORED_LAYER]
    assert mosaic.mod["rna"].n_obs == hidden.visible("rna").n_obs
    cells = mosaic.mod["rna"].obs_names
    # the layer stores the float64 truth as float32 (relative rounding up to 2**-24, 6e-8), possibly after another
    # summation order of the per-cell totals: 1e-5 relative bounds both
    np.testing.assert_allclose(layer.toarray(), np.nan_to_num(study.truth("rna", cells)), rtol=1e-5)


def test_snareseq2_split_and_scale(data_dir, bench):
    tasks = bench.tasks
    study = tasks.snareseq2(n_peaks=200)
    test_libraries = set(study.obs.loc[~study.obs["train"], "batch"])
    assert test_libraries == set(tasks.SNARE_TEST_LIBRARIES)
    assert study.counts["atac"].n_vars == 200
    # RNA is scored as log1p counts per 10k, so the training cells' typical total is 1e4
    assert study.target_sum() == pytest.approx(1e4, rel=1e-6)


def test_quick_benchmark_runs_every_method(data_dir, bench, tmp_path):
    accuracy = bench.accuracy
    accuracy.main(["--quick", "--out", str(tmp_path), "--datasets", "bmmc_cite", "bmmc_mosaic"])
    records = json.loads((tmp_path / "accuracy.json").read_text())
    assert (tmp_path / "accuracy.md").read_text().startswith("# Accuracy benchmark")
    keys = {"dataset", "task", "metric", "method", "mean", "sd", "n_seeds", "main", "higher_is_better"}
    assert all(set(record) == keys for record in records)
    methods = {record["method"] for record in records}
    assert methods == {"pengster", "multivi", "totalvi", "ridge", "knn", "mean"}
    tasks = {(r["dataset"], r["task"]) for r in records}
    assert {
        ("bmmc_cite", "GEX->ADT"),
        ("bmmc_cite", "ADT->GEX"),
        ("bmmc_cite", "joint embedding"),
        ("bmmc_cite", "modality matching"),
        ("bmmc_mosaic", "RNA->protein"),
        ("bmmc_mosaic", "ATAC->RNA"),
        ("bmmc_mosaic", "RNA+ATAC->protein markers"),
    } <= tasks
    # one headline metric per (dataset, task, method)
    mains = [(r["dataset"], r["task"], r["method"]) for r in records if r["main"]]
    assert len(mains) == len(set(mains))
    assert {(d, t) for d, t, _ in mains} == tasks

    def value(dataset, task, metric, method):
        (match,) = [
            r["mean"]
            for r in records
            if (r["dataset"], r["task"], r["metric"], r["method"]) == (dataset, task, metric, method)
        ]
        return match

    # the baselines are fit on real data even in the quick run: RNA carries the proteins' signal
    assert value("bmmc_cite", "GEX->ADT", "pearson_per_feature", "ridge") > 0.3
    assert value("bmmc_cite", "GEX->ADT", "rmse", "ridge") < value("bmmc_cite", "GEX->ADT", "rmse", "mean")
    marker = value("bmmc_mosaic", "RNA+ATAC->protein markers", "marker_auroc", "knn")
    assert 0.6 < marker <= 1.0
    assert 0.0 <= value("bmmc_cite", "modality matching", "foscttm", "pengster") <= 1.0
    assert 0.0 <= value("bmmc_cite", "GEX->ADT calibration", "coverage_90", "pengster") <= 1.0
    assert sys.modules["benchmarks.accuracy"] is accuracy
