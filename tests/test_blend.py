"""The reference read-out of JointVAE.predict: decoder averaged with the nearest training cells' measured values."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import sparse
from sklearn.neighbors import NearestNeighbors

import pengster
from pengster.model import JointVAE
from pengster.model._blend import Reference

SETUP_MODALITIES = {"rna_layer": "rna", "atac_layer": "atac", "protein_layer": "prot"}


@pytest.fixture(scope="module")
def model():
    torch.set_num_threads(1)
    mdata = pengster.data.synthetic_mosaic(
        n_cells={"multiome": 80, "cite": 70}, n_genes=40, n_peaks=50, n_proteins=10, gene_overlap=1.0, seed=4
    )
    JointVAE.setup_mudata(mdata, modalities=SETUP_MODALITIES, batch_key="batch")
    model = JointVAE(mdata, n_latent=5, n_hidden=32)
    model.train(max_epochs=3, batch_size=64, enable_progress_bar=False)
    return model


def _clr(counts: np.ndarray) -> np.ndarray:
    return np.log1p(counts / np.exp(np.log1p(counts).mean(1, keepdims=True)))


def test_prediction_is_decoder_averaged_with_nearest_other_training_cells(model):
    mdata, k = model.mdata, 3
    decoder = model.predict(target="protein", source="rna", readout="decoder").to_numpy()
    blended, std = model.predict(
        target="protein", source="rna", readout="blend", n_neighbors=k, return_std=True, n_samples=0
    )
    blended, std = blended.to_numpy(), std.to_numpy()
    counts = mdata["prot"].X
    counts = counts.toarray() if sparse.issparse(counts) else np.asarray(counts)
    reference = mdata.obs_names.get_indexer(mdata["prot"].obs_names)
    values = _clr(counts.astype(np.float64))
    latent = model.get_latent_representation()[reference]
    query = model.get_latent_representation(modality="rna")
    has_rna = ~np.isnan(query).any(1)
    _, found = NearestNeighbors(n_neighbors=k + 1).fit(latent).kneighbors(query[has_rna])
    expected, spread = decoder.copy(), np.full_like(decoder, np.nan)
    for row, neighbours in zip(np.flatnonzero(has_rna), found, strict=True):
        others = [n for n in neighbours if reference[n] != row][:k]
        expected[row] = 0.5 * (decoder[row] + values[others].mean(0))
        spread[row] = values[others].std(0)
    np.testing.assert_allclose(blended, expected, rtol=1e-4, atol=1e-4)
    # without posterior draws the std is the neighbours' spread: the measurement noise, seen in the reference
    np.testing.assert_allclose(std[has_rna], spread[has_rna], rtol=1e-3, atol=1e-3)
    # the cells that measured protein are not their own neighbours: their measured values never leak in
    assert not np.allclose(blended[reference], 0.5 * (decoder[reference] + values), atol=1e-3)


def test_decoder_readout_differs_from_the_blend_and_is_deterministic(model):
    blended = model.predict(target="rna", source="protein", readout="blend", n_neighbors=5).to_numpy()
    decoder = model.predict(target="rna", source="protein", readout="decoder").to_numpy()
    assert not np.allclose(decoder, blended, equal_nan=True)
    # the mean never depends on the posterior draws of the std
    again, _ = model.predict(target="rna", source="protein", readout="decoder", return_std=True, n_samples=3)
    np.testing.assert_array_equal(decoder, again.to_numpy())


def test_atac_std_is_the_bernoulli_std_of_the_reported_probability(model):
    k = 20
    decoder_mean, decoder_std = model.predict(target="atac", readout="decoder", return_std=True)
    mean, std = model.predict(target="atac", readout="blend", n_neighbors=k, return_std=True)
    p_decoder = decoder_mean.to_numpy()
    has_source = ~np.isnan(p_decoder).any(1)
    expected = np.sqrt(p_decoder * (1 - p_decoder))[has_source]
    # torch and numpy each round p (1 - p) and its square root in float32 (a few 2**-24); 1e-5 relative bounds them
    np.testing.assert_allclose(decoder_std.to_numpy()[has_source], expected, rtol=1e-5)
    assert not np.allclose(mean.to_numpy(), p_decoder, equal_nan=True)
    # binary neighbours averaged with probabilities stay probabilities
    assert np.nanmin(mean.to_numpy()) >= 0 and np.nanmax(mean.to_numpy()) <= 1
    # the neighbours' fraction q of open peaks is 2 * blend - decoder; their (population) variance is q (1 - q)
    q = (2 * mean.to_numpy() - p_decoder).clip(0, 1)
    np.testing.assert_allclose(std.to_numpy()[has_source], np.sqrt(q * (1 - q))[has_source], rtol=1e-3, atol=2e-3)


def test_population_averages_the_decoder_with_each_peaks_open_rate(model):
    """``population``: half the decoded probability, half the fraction of training cells with ATAC where it is open."""
    decoder, decoder_std = model.predict(target="atac", source="rna", readout="decoder", return_std=True)
    mean, std = model.predict(target="atac", source="rna", readout="population", return_std=True)
    counts = model.mdata["atac"].X
    counts = counts.toarray() if sparse.issparse(counts) else np.asarray(counts)
    open_rate = (counts > 0).mean(0)
    expected = 0.5 * (decoder.to_numpy() + open_rate)
    # float32 read-out against a float64 mean of 0/1 values: a few float32 roundings of numbers below 1
    np.testing.assert_allclose(mean.to_numpy(), expected, rtol=1e-5, atol=1e-6)
    # the measurement part stays the decoder's (no neighbours' spread): the std does not change
    np.testing.assert_allclose(std.to_numpy(), decoder_std.to_numpy(), rtol=1e-5, atol=1e-6)
    # the population needs each peak's total only: no training cell's values are kept (GBs at atlas size)
    reference = Reference(model, "atac", None)
    assert not hasattr(reference, "values")
    np.testing.assert_allclose(reference.total / reference.measured, open_rate, rtol=1e-12)


def test_auto_blends_except_for_atac_targets(model):
    def same(target, source, readout):
        auto = model.predict(target=target, source=source).to_numpy()
        other = model.predict(target=target, source=source, readout=readout).to_numpy()
        return np.allclose(auto, other, equal_nan=True)

    assert same("rna", "protein", "blend") and not same("rna", "protein", "decoder")
    assert same("protein", ["rna", "atac"], "blend")
    assert same("atac", "rna", "population") and not same("atac", "rna", "decoder")
    assert same("rna", "atac", "blend") and not same("rna", "atac", "decoder")
    with pytest.raises(ValueError, match=r"readout='near'; pass one of \['auto', 'decoder', 'blend', 'population'\]"):
        model.predict(target="rna", readout="near")
    with pytest.raises(ValueError, match=r"n_neighbors=0"):
        model.predict(target="rna", readout="blend", n_neighbors=0)


def _protein_layer(model, name: str, transform) -> np.ndarray:
    """Put ``transform(CLR)`` of the measured protein into ``layer`` ``name``; return the layer."""
    counts = model.mdata["prot"].X
    counts = counts.toarray() if sparse.issparse(counts) else np.asarray(counts)
    values = transform(_clr(counts.astype(np.float64)))
    model.mdata["prot"].layers[name] = values
    return values


def _lines(decoded: np.ndarray, observed: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    slopes, intercepts = [], []
    for column in range(decoded.shape[1]):
        slope, intercept = np.polyfit(decoded[:, column], observed[:, column], 1)
        slopes.append(max(slope, 0.0))
        intercepts.append(intercept if slope > 0 else observed[:, column].mean())
    return np.array(slopes), np.array(intercepts)


def test_layer_reports_on_the_layers_scale(model):
    mdata, k = model.mdata, 3
    layer = _protein_layer(model, "scaled", lambda clr: 3.0 * clr + 2.0)
    reference = mdata.obs_names.get_indexer(mdata["prot"].obs_names)
    decoder = model.predict(target="protein", source="rna", readout="decoder").to_numpy()
    slope, intercept = _lines(decoder[reference], layer)
    mapped = model.predict(target="protein", source="rna", readout="decoder", layer="scaled")
    np.testing.assert_allclose(mapped.to_numpy(), intercept + slope * decoder, rtol=1e-4, atol=1e-4)

    pengster_scale = model.predict(target="protein", source="rna", readout="blend", n_neighbors=k).to_numpy()
    blended = model.predict(target="protein", source="rna", readout="blend", n_neighbors=k, layer="scaled")
    # neighbours average the layer (3 * CLR + 2) instead of the CLR; the decoder half is the mapped decoder
    neighbours = 2.0 * pengster_scale - decoder
    expected = 0.5 * (intercept + slope * decoder + 3.0 * neighbours + 2.0)
    np.testing.assert_allclose(blended.to_numpy(), expected, rtol=1e-4, atol=1e-4)
    np.testing.assert_array_equal(mdata["prot"].layers["scaled"], layer)  # the user's layer is untouched


def test_layer_never_reverses_a_feature(model):
    layer = _protein_layer(model, "reversed", lambda clr: -clr)
    model.mdata["prot"].layers["reversed"] = sparse.csr_matrix(layer, dtype=np.float32)
    mapped = model.predict(target="protein", source="rna", readout="decoder", layer="reversed")
    # decoded and measured CLR rise together, so every line to -CLR falls: clipped to slope 0, the layer's mean
    decoder = model.predict(target="protein", source="rna", readout="decoder").to_numpy()
    reference = model.mdata.obs_names.get_indexer(model.mdata["prot"].obs_names)
    rising = _lines(decoder[reference], -layer)[0] > 0
    assert rising.any()
    has_rna = ~np.isnan(decoder).any(1)
    values = mapped.to_numpy()[has_rna][:, rising]
    np.testing.assert_allclose(values, np.broadcast_to(layer.mean(0)[rising], values.shape), rtol=1e-4, atol=1e-4)
    # the user's layer is read, never written: the same values it was stored with (float32) exactly
    stored = model.mdata["prot"].layers["reversed"].toarray()
    np.testing.assert_array_equal(stored, layer.astype(stored.dtype))


def test_layer_errors_name_the_layer_and_the_fix(model):
    with pytest.raises(ValueError, match=r"layer='nope' is not a layer of mdata.mod\['prot'\].*'X' for .X"):
        model.predict(target="protein", layer="nope")
    _protein_layer(model, "clr", lambda clr: clr)
    # the cells that measured protein (CITE-seq) have no ATAC: no line can be fitted from ATAC
    with pytest.raises(ValueError, match=r"none of the 70 training cells that measured 'protein' has any of the"):
        model.predict(target="protein", source="atac", layer="clr")


def test_reference_reads_only_its_chosen_cells(model, monkeypatch):
    from pengster.model import _blend

    monkeypatch.setattr(_blend, "MAX_REFERENCE_CELLS", 20)
    reference = _blend.Reference(model, "protein", 5)
    measured = model.mdata.obs_names.isin(model.mdata["prot"].obs_names)
    assert reference.size == 20 and reference.values.shape[0] == 20 and reference.latent.shape[0] == 20
    assert measured[reference.rows].all() and (np.diff(reference.rows) > 0).all()
    np.testing.assert_allclose(
        reference.latent.cpu().numpy(), model.get_latent_representation(indices=reference.rows), rtol=1e-5, atol=1e-6
    )
    counts = model.mdata["prot"][reference.names].X
    counts = counts.toarray() if sparse.issparse(counts) else np.asarray(counts)
    np.testing.assert_allclose(reference.values.toarray(), _clr(counts.astype(np.float64)), rtol=1e-4, atol=1e-5)
