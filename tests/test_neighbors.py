"""The reference read-out of JointVAE.predict: decoder averaged with the nearest training cells' measured values."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import sparse
from sklearn.neighbors import NearestNeighbors

import pengster
from pengster.model import JointVAE

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
    decoder = model.predict(target="protein", source="rna", reference_neighbors=None).to_numpy()
    blended = model.predict(target="protein", source="rna", reference_neighbors=k).to_numpy()
    counts = mdata["prot"].X
    counts = counts.toarray() if sparse.issparse(counts) else np.asarray(counts)
    reference = mdata.obs_names.get_indexer(mdata["prot"].obs_names)
    values = _clr(counts.astype(np.float64))
    latent = model.get_latent_representation()[reference]
    query = model.get_latent_representation(modality="rna")
    has_rna = ~np.isnan(query).any(1)
    _, found = NearestNeighbors(n_neighbors=k + 1).fit(latent).kneighbors(query[has_rna])
    expected = decoder.copy()
    for row, neighbours in zip(np.flatnonzero(has_rna), found, strict=True):
        others = [n for n in neighbours if reference[n] != row][:k]
        expected[row] = 0.5 * (decoder[row] + values[others].mean(0))
    np.testing.assert_allclose(blended, expected, rtol=1e-4, atol=1e-4)
    # the cells that measured protein are not their own neighbours: their measured values never leak in
    assert not np.allclose(blended[reference], 0.5 * (decoder[reference] + values), atol=1e-3)


def test_no_reference_neighbors_is_the_decoder_alone(model):
    blended = model.predict(target="rna", source="protein", reference_neighbors=5).to_numpy()
    for off in (None, 0):
        decoder = model.predict(target="rna", source="protein", reference_neighbors=off).to_numpy()
        assert not np.allclose(decoder, blended, equal_nan=True)
        reference = model.predict(target="rna", source="protein", reference_neighbors=None).to_numpy()
        np.testing.assert_array_equal(decoder, reference)


def test_std_adds_the_neighbours_spread_to_the_decoders(model):
    k = 20
    torch.manual_seed(0)
    mean, std = model.predict(target="atac", n_samples=4, reference_neighbors=k)
    torch.manual_seed(0)
    decoder_mean, decoder_std = model.predict(target="atac", n_samples=4, reference_neighbors=None)
    assert (decoder_std.to_numpy() > 0).any() and not np.allclose(mean.to_numpy(), decoder_mean.to_numpy())
    # binary neighbours averaged with probabilities stay probabilities
    assert mean.to_numpy().min() >= 0 and mean.to_numpy().max() <= 1
    # the neighbours' mean p of open peaks is 2 * blend - decoder; their (population) variance is p (1 - p)
    p = (2 * mean.to_numpy() - decoder_mean.to_numpy()).clip(0, 1)
    has_source = ~np.isnan(decoder_std.to_numpy()).any(1)
    expected = np.sqrt(decoder_std.to_numpy() ** 2 + p * (1 - p))[has_source]
    np.testing.assert_allclose(std.to_numpy()[has_source], expected, rtol=1e-3, atol=1e-4)
    assert (std.to_numpy()[has_source] > decoder_std.to_numpy()[has_source] + 1e-3).any()


def test_auto_uses_neighbours_except_for_atac_targets_and_atac_only_sources(model):
    def same(target, source, k):
        auto = model.predict(target=target, source=source).to_numpy()
        other = model.predict(target=target, source=source, reference_neighbors=k).to_numpy()
        return np.allclose(auto, other, equal_nan=True)

    assert same("rna", "protein", 50) and not same("rna", "protein", None)
    assert same("protein", ["rna", "atac"], 50)
    assert same("atac", "rna", None) and not same("atac", "rna", 50)
    assert same("rna", "atac", None)
    with pytest.raises(ValueError, match="reference_neighbors='near'"):
        model.predict(target="rna", reference_neighbors="near")


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


def test_reference_layer_reports_on_the_layers_scale(model):
    mdata, k = model.mdata, 3
    layer = _protein_layer(model, "scaled", lambda clr: 3.0 * clr + 2.0)
    reference = mdata.obs_names.get_indexer(mdata["prot"].obs_names)
    decoder = model.predict(target="protein", source="rna", reference_neighbors=None).to_numpy()
    slope, intercept = _lines(decoder[reference], layer)
    mapped = model.predict(target="protein", source="rna", reference_neighbors=None, reference_layer="scaled")
    np.testing.assert_allclose(mapped.to_numpy(), intercept + slope * decoder, rtol=1e-4, atol=1e-4)

    pengster_scale = model.predict(target="protein", source="rna", reference_neighbors=k).to_numpy()
    blended = model.predict(target="protein", source="rna", reference_neighbors=k, reference_layer="scaled")
    # neighbours average the layer (3 * CLR + 2) instead of the CLR; the decoder half is the mapped decoder
    neighbours = 2.0 * pengster_scale - decoder
    expected = 0.5 * (intercept + slope * decoder + 3.0 * neighbours + 2.0)
    np.testing.assert_allclose(blended.to_numpy(), expected, rtol=1e-4, atol=1e-4)
    np.testing.assert_array_equal(mdata["prot"].layers["scaled"], layer)  # the user's layer is untouched


def test_reference_layer_never_reverses_a_feature(model):
    layer = _protein_layer(model, "reversed", lambda clr: -clr)
    model.mdata["prot"].layers["reversed"] = sparse.csr_matrix(layer, dtype=np.float32)
    mapped = model.predict(target="protein", source="rna", reference_neighbors=None, reference_layer="reversed")
    # decoded and measured CLR rise together, so every line to -CLR falls: clipped to slope 0, the layer's mean
    decoder = model.predict(target="protein", source="rna", reference_neighbors=None).to_numpy()
    reference = model.mdata.obs_names.get_indexer(model.mdata["prot"].obs_names)
    rising = _lines(decoder[reference], -layer)[0] > 0
    assert rising.any()
    has_rna = ~np.isnan(decoder).any(1)
    values = mapped.to_numpy()[has_rna][:, rising]
    np.testing.assert_allclose(values, np.broadcast_to(layer.mean(0)[rising], values.shape), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(model.mdata["prot"].layers["reversed"].toarray(), layer, rtol=1e-6)


def test_reference_layer_errors_name_the_layer_and_the_fix(model):
    with pytest.raises(ValueError, match=r"reference_layer='nope' is not a layer of mdata.mod\['prot'\].*'X' for .X"):
        model.predict(target="protein", reference_layer="nope")
    _protein_layer(model, "clr", lambda clr: clr)
    # the cells that measured protein (CITE-seq) have no ATAC: no line can be fitted from ATAC
    with pytest.raises(ValueError, match=r"none of the 70 training cells that measured 'protein' has any of the"):
        model.predict(target="protein", source="atac", reference_layer="clr")
