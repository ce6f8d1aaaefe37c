"""The ATAC cell factor of cells decoded without ATAC is predicted from the depth of their other modalities."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import sparse, stats

import pengster
from pengster.model import JointVAE
from pengster.module._atac_factor import CellFactorPredictor

SETUP_MODALITIES = {"rna_layer": "rna", "atac_layer": "atac", "protein_layer": "prot"}


def test_predictor_recovers_a_linear_relation_in_log_depth():
    generator = torch.Generator().manual_seed(0)
    log_library = torch.stack([8.0 + 0.5 * torch.randn(512, generator=generator), torch.zeros(512)], -1)
    # the second source (say protein) is measured by half of the cells and carries no signal
    present = torch.stack([torch.ones(512), (torch.arange(512) % 2).float()], -1)
    log_library[:, 1] = 5.0 + torch.randn(512, generator=generator)
    true_logit = 1.5 * (log_library[:, :1] - 8.0) - 0.3
    predictor = CellFactorPredictor(2)
    assert not list(predictor.parameters())
    for chunk in torch.split(torch.arange(512), 64):
        predictor.update(log_library[chunk], present[chunk], torch.sigmoid(true_logit[chunk]))
    predicted = predictor(log_library, present)
    np.testing.assert_allclose(predicted.numpy(), true_logit.numpy(), atol=0.05)
    slopes_and_intercept = predictor.coefficients().numpy()
    assert slopes_and_intercept[0] == pytest.approx(1.5, abs=0.05)
    assert slopes_and_intercept[1] == pytest.approx(0.0, abs=0.05)
    # a cell without any source gets the intercept: the mean logit of the cells the predictor saw
    absent = predictor(log_library[:2], torch.zeros_like(present[:2]))
    # the prediction is the float64 intercept cast to float32 (2**-24 relative) after a float64 centring product
    np.testing.assert_allclose(absent.numpy(), np.full((2, 1), slopes_and_intercept[-1]), rtol=1e-5, atol=1e-7)
    assert slopes_and_intercept[-1] == pytest.approx(true_logit.mean().item(), abs=0.1)


@pytest.fixture(scope="module")
def depth_mosaic():
    """Multiome cells whose number of open peaks follows their RNA depth (as in real nuclei)."""
    mdata = pengster.data.synthetic_mosaic(
        n_cells={"multiome": 200, "cite": 60}, n_genes=60, n_peaks=120, n_proteins=8, gene_overlap=0.8, seed=3
    )
    rna = mdata.mod["rna"]
    atac = mdata.mod["atac"]
    depth = np.asarray(rna[atac.obs_names].X.sum(1)).ravel()
    keep_fraction = 0.15 + 0.85 * stats.rankdata(depth) / len(depth)
    rng = np.random.default_rng(0)
    counts = sparse.csr_matrix(atac.X, dtype=np.float32).tocoo()
    kept = rng.random(counts.nnz) < keep_fraction[counts.row]
    atac.X = sparse.csr_matrix(
        (counts.data[kept], (counts.row[kept], counts.col[kept])), shape=counts.shape, dtype=np.float32
    )
    return mdata


def _trained(mdata, **model_kwargs):
    torch.set_num_threads(1)
    JointVAE.setup_mudata(mdata, modalities=SETUP_MODALITIES, batch_key="batch")
    model = JointVAE(mdata, n_latent=6, n_hidden=32, **model_kwargs)
    model.train(max_epochs=40, batch_size=64, early_stopping=False, enable_progress_bar=False)
    return model


@pytest.fixture(scope="module")
def model_on(depth_mosaic):
    import scvi

    scvi.settings.seed = 0
    return _trained(depth_mosaic)


@pytest.fixture(scope="module")
def model_off(depth_mosaic):
    import scvi

    scvi.settings.seed = 0
    return _trained(depth_mosaic, predict_cell_factor=False)


def _depth_correlation(model, mdata) -> float:
    atac_cells = mdata.mod["atac"].obs_names
    rna_depth = np.asarray(mdata.mod["rna"][atac_cells].X.sum(1)).ravel()
    predicted = model.predict(mdata, target="atac", source="rna").loc[atac_cells].to_numpy()
    return float(stats.spearmanr(predicted.sum(1), rna_depth)[0])


def test_atac_predicted_from_rna_carries_rna_depth(depth_mosaic, model_on):
    atac_cells = depth_mosaic.mod["atac"].obs_names
    assert _depth_correlation(model_on, depth_mosaic) > 0.6
    predicted = model_on.predict(target="atac", source="rna").loc[atac_cells].to_numpy()
    # the prediction reads the source's depth only: the cell's own ATAC does not move it
    changed = depth_mosaic.copy()
    changed.mod["atac"].X = changed.mod["atac"].X[::-1]
    JointVAE.setup_mudata(changed, modalities=SETUP_MODALITIES, batch_key="batch")
    again = model_on.predict(changed, target="atac", source="rna").loc[atac_cells].to_numpy()
    np.testing.assert_allclose(predicted, again, rtol=1e-5)


def test_predictor_changes_only_the_atac_prediction(depth_mosaic, model_on, model_off):
    assert not hasattr(model_off.module.heads["atac"], "cell_factor_predictor")
    # no parameter, no loss term: training is the same, so latents and other predictions are identical
    np.testing.assert_array_equal(model_on.get_latent_representation(), model_off.get_latent_representation())
    np.testing.assert_array_equal(
        model_on.predict(target="protein").to_numpy(), model_off.predict(target="protein").to_numpy()
    )
    # without the predictor, depth reaches the ATAC prediction only through the latent, far more weakly
    assert _depth_correlation(model_off, depth_mosaic) < _depth_correlation(model_on, depth_mosaic) - 0.3


def test_weights_without_the_predictor_are_refused_by_a_model_with_it(depth_mosaic, model_off):
    """The predictor's buffers are weights like any other: a state without them does not load silently."""
    state = model_off.module.state_dict()
    model_on_copy = JointVAE(depth_mosaic, n_latent=6, n_hidden=32)
    with pytest.raises(RuntimeError, match=r"Missing key\(s\).*heads\.atac\.cell_factor_predictor\.moment_xx"):
        model_on_copy.module.load_state_dict(state)
