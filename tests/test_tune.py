"""The hyperparameter search's validation split holds training cells only, and the selection rule ranks correctly."""

from __future__ import annotations

import numpy as np
import pandas as pd


def test_validation_split_uses_training_cells_only(data_dir, bench):
    tune, tasks = bench.tune, bench.tasks
    study = tasks.bmmc_cite()
    split = tune.validation_study(study)
    training = study.obs.index[study.obs["train"].to_numpy()]
    assert split.obs.index.equals(training)
    assert not split.obs.index.isin(study.obs.index[~study.obs["train"].to_numpy()]).any()
    validation = split.obs.index[~split.obs["train"].to_numpy()]
    assert len(validation) == round(tune.VALIDATION_FRACTION * len(training))
    # every modality and its scored values are cut to the same cells, in the same order
    for modality, adata in split.counts.items():
        assert adata.obs_names.isin(training).all()
        np.testing.assert_array_equal(split.truth(modality, validation), study.truth(modality, validation))
    # the mosaic holds out the same CITE-seq cells as the paired set
    mosaic = tune.validation_study(tasks.bmmc_mosaic())
    held_out = mosaic.obs.index[~mosaic.obs["train"].to_numpy()]
    cite_held_out = held_out[held_out.str.endswith("-cite")].str.replace("-cite", "", regex=False)
    assert set(cite_held_out) == set(validation)


def test_pbmc_split_holds_out_paired_cells_only(data_dir, bench):
    tune, tasks = bench.tune, bench.tasks
    split = tune.validation_study(tasks.pbmc_mosaic())
    validation = split.obs[~split.obs["train"].to_numpy()]
    assert set(validation["batch"]) == {"p3_0"}
    assert "p4_0" not in set(split.obs["batch"])


def test_ranks_respect_metric_direction(bench):
    tune = bench.tune
    summary = pd.DataFrame(
        {
            "candidate": ["a", "b", "a", "b"],
            "dataset": ["d"] * 4,
            "task": ["GEX->ADT", "GEX->ADT", "modality matching", "modality matching"],
            "metric": ["pearson_per_feature", "pearson_per_feature", "foscttm", "foscttm"],
            "mean": [0.5, 0.6, 0.2, 0.1],
            "main": [True] * 4,
        }
    )
    ranked = tune.ranks(summary, ["a", "b"])
    # b has the higher Pearson and the lower FOSCTTM: best on both
    assert ranked["b"].tolist() == [1.0, 1.0]
    assert ranked["a"].tolist() == [2.0, 2.0]
