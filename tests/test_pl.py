"""Plots, drawn headless: each returns Axes whose artists hold the data that was passed in."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest

from pengster import pl


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def frames(n_cells: int = 60, n_features: int = 5, seed: int = 0):
    rng = np.random.default_rng(seed)
    cells = [f"cell{i}" for i in range(n_cells)]
    features = [f"CD{i}" for i in range(n_features)]
    observed = pd.DataFrame(rng.normal(size=(n_cells, n_features)), index=cells, columns=features)
    predicted = observed + rng.normal(scale=0.5, size=observed.shape)
    std = pd.DataFrame(rng.uniform(0.1, 1.0, size=observed.shape), index=cells, columns=features)
    return predicted, observed, std


def test_training_history_draws_each_found_key_from_epoch():
    history = {
        "train_loss": pd.DataFrame({"train_loss": [9.0, 5.0, 4.0, 3.5]}),
        "validation_loss": pd.DataFrame({"validation_loss": [10.0, 6.0, 5.0, 4.8]}),
    }
    ax = pl.training_history(history, keys=("train_loss", "validation_loss", "absent"), from_epoch=1)
    lines = {line.get_label(): line for line in ax.get_lines()}
    assert set(lines) == {"train_loss", "validation_loss"}
    np.testing.assert_array_equal(lines["train_loss"].get_xdata(), [1, 2, 3])
    np.testing.assert_array_equal(lines["validation_loss"].get_ydata(), [6.0, 5.0, 4.8])


def test_training_history_reads_model_history_and_names_missing_keys():
    class Trained:
        history = {"elbo_train": pd.DataFrame({"elbo_train": [1.0, 0.5]})}

    ax = pl.training_history(Trained(), keys=("elbo_train",))
    assert ax.get_lines()[0].get_label() == "elbo_train"
    with pytest.raises(KeyError, match="elbo_train"):
        pl.training_history(Trained(), keys=("train_loss",))


def test_predicted_vs_observed_matches_cells_by_name():
    predicted, observed, _ = frames()
    shuffled = predicted.sample(frac=1.0, random_state=1).iloc[5:]  # other order, 5 cells fewer
    ax = pl.predicted_vs_observed(shuffled, observed, "CD2")
    xy = ax.collections[0].get_offsets()
    cells = shuffled.index
    np.testing.assert_allclose(xy[:, 0], observed.loc[cells, "CD2"])
    np.testing.assert_allclose(xy[:, 1], shuffled["CD2"])
    r = np.corrcoef(observed.loc[cells, "CD2"], shuffled["CD2"])[0, 1]
    assert f"r = {r:.2f}" in ax.get_title()


def test_predicted_vs_observed_draws_std_bars():
    predicted, observed, std = frames()
    ax = pl.predicted_vs_observed(predicted, observed, "CD1", std=std)
    bars = ax.collections[0].get_segments()
    lengths = np.array([segment[1, 1] - segment[0, 1] for segment in bars])
    np.testing.assert_allclose(lengths, 2 * std["CD1"].to_numpy())


def test_predicted_vs_observed_errors_name_the_frame_and_feature():
    predicted, observed, _ = frames()
    with pytest.raises(KeyError, match=r"observed has no column.*CD19"):
        pl.predicted_vs_observed(predicted.assign(CD19=1.0), observed, "CD19")
    renamed = observed.set_axis([f"other{i}" for i in range(len(observed))])
    with pytest.raises(ValueError, match="share no row names"):
        pl.predicted_vs_observed(predicted, renamed, "CD1")


def test_marker_panel_one_axes_per_feature_in_order():
    predicted, observed, std = frames(n_features=5)
    features = ["CD4", "CD0", "CD3"]
    axes = pl.marker_panel(predicted, observed, features, std=std, ncols=2)
    assert len(axes) == 3
    assert [ax.get_title().split()[0] for ax in axes] == features
    figure_axes = axes[0].figure.axes
    assert sum(ax.get_visible() for ax in figure_axes) == 3  # the fourth grid cell is hidden
    with pytest.raises(KeyError, match=r"\['CD99'\]"):
        pl.marker_panel(predicted, observed, ["CD1", "CD99"])


def test_embedding_panel_colours_cells_by_value_and_greys_nan():
    predicted, _, _ = frames(n_cells=40)
    predicted.iloc[:10, 0] = np.nan
    coordinates = np.random.default_rng(2).normal(size=(40, 2))
    axes = pl.embedding_panel(coordinates, predicted, ["CD0", "CD1"])
    grey, coloured = axes[0].collections[:2]
    np.testing.assert_allclose(grey.get_offsets(), coordinates[:10])
    np.testing.assert_allclose(coloured.get_offsets(), coordinates[10:])
    np.testing.assert_allclose(coloured.get_array(), predicted["CD0"].to_numpy()[10:])
    with pytest.raises(ValueError, match="coordinates has 39 rows but values has 40"):
        pl.embedding_panel(coordinates[:39], predicted, ["CD0"])


def test_uncertainty_calibration_on_the_identity_when_std_is_the_error_scale():
    rng = np.random.default_rng(3)
    sigma = rng.uniform(0.1, 2.0, size=(4000, 3))
    predicted = pd.DataFrame(np.zeros_like(sigma), columns=["a", "b", "c"])
    observed = pd.DataFrame(rng.normal(scale=sigma), columns=predicted.columns)
    std = pd.DataFrame(sigma, columns=predicted.columns)
    ax = pl.uncertainty_calibration(predicted, std, observed, n_bins=8)
    mean_std, rmse = ax.get_lines()[0].get_data()
    assert np.all(np.diff(mean_std) > 0)
    np.testing.assert_allclose(rmse, mean_std, rtol=0.12)
    # a std that says nothing about the error gives a flat curve, far from the identity at the ends
    shuffled = pd.DataFrame(rng.permutation(sigma.ravel()).reshape(sigma.shape), columns=predicted.columns)
    ax = pl.uncertainty_calibration(predicted, shuffled, observed, n_bins=8)
    _, flat = ax.get_lines()[0].get_data()
    assert flat.max() - flat.min() < 0.3 * (rmse.max() - rmse.min())
