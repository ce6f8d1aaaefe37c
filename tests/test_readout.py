"""Read-outs of a trained JointVAE: closed-form moments, streaming into a target array, scvi-tools getter arguments."""

from __future__ import annotations

import copy

import h5py
import numpy as np
import pandas as pd
import pytest
import torch
from scvi.distributions import NegativeBinomial, NegativeBinomialMixture, ZeroInflatedNegativeBinomial
from torch.distributions import Poisson

import pengster
from pengster.distributions import FactorBernoulli
from pengster.model import JointVAE
from pengster.module import HeadInput
from pengster.module._moments import count_moments, log1p_moments

MODALITIES = {"rna_layer": "rna", "atac_layer": "atac", "protein_layer": "prot"}


@pytest.fixture(scope="module")
def model():
    torch.set_num_threads(1)
    mdata = pengster.data.synthetic_mosaic(
        n_cells={"multiome": 90, "cite": 80}, n_genes=40, n_peaks=60, n_proteins=10, gene_overlap=0.8, seed=2
    )
    JointVAE.setup_mudata(mdata, modalities=MODALITIES, batch_key="batch")
    model = JointVAE(mdata, n_latent=5, n_hidden=32)
    model.train(max_epochs=3, batch_size=64, enable_progress_bar=False)
    return model


def _monte_carlo(px, n: int = 40_000) -> tuple[torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    if isinstance(px, NegativeBinomialMixture):
        # scvi-tools' sample() draws the component once for all sample_shape draws: draw it per draw here
        background = torch.bernoulli(px.mixture_probs.expand(n, -1)) > 0
        first = NegativeBinomial(mu=px.mu1, theta=px.theta1).sample((n,))
        second = NegativeBinomial(mu=px.mu2, theta=px.theta1).sample((n,))
        draws = torch.where(background, first, second).double()
    else:
        draws = px.sample((n,)).double()
    return draws.mean(0), draws.var(0)


@pytest.mark.parametrize(
    "px",
    [
        NegativeBinomial(mu=torch.tensor([0.3, 4.0, 40.0]), theta=torch.tensor([2.0, 0.5, 10.0])),
        ZeroInflatedNegativeBinomial(
            mu=torch.tensor([0.3, 4.0, 40.0]),
            theta=torch.tensor([2.0, 0.5, 10.0]),
            zi_logits=torch.tensor([-1.0, 0.0, 1.0]),
        ),
        NegativeBinomialMixture(
            mu1=torch.tensor([2.0, 5.0, 1.0]),
            mu2=torch.tensor([30.0, 8.0, 60.0]),
            theta1=torch.tensor([5.0, 3.0, 20.0]),
            mixture_logits=torch.tensor([0.5, -1.0, 2.0]),
        ),
        Poisson(torch.tensor([0.2, 3.0, 25.0])),
        FactorBernoulli(torch.tensor([[-2.0, 0.0, 3.0]]), torch.tensor([0.0, 1.0, -1.0]), torch.tensor([[0.7]])),
    ],
    ids=["nb", "zinb", "nb_mixture", "poisson", "bernoulli"],
)
def test_closed_form_moments_match_monte_carlo(px):
    mean, variance = count_moments(px)
    sampled_mean, sampled_variance = _monte_carlo(px)
    np.testing.assert_allclose(mean.double(), sampled_mean, rtol=0.05, atol=0.01)
    np.testing.assert_allclose(variance.double(), sampled_variance, rtol=0.1, atol=0.01)


@pytest.mark.parametrize("depth", [300.0, 1e6])
def test_rna_reported_at_a_depth_is_the_expected_log1p_of_its_counts(model, depth):
    """With ``depth``, the RNA read-out is the mean (and variance) of log1p per 10k of counts drawn at that depth.

    At 300 counts most genes see 0 or 1 count, and the mean of the log is far below the log of the mean count; at
    1e6 counts the gap is the gamma mixing distribution's alone, ``log(theta) - digamma(theta)``. Monte Carlo with
    4,000 draws: the tolerance is 5 standard errors of the sample mean, plus the closed form's own error past its
    exactly summed counts: none at 300 counts (no gene's counts reach past them), at most 0.02 at 1e6 counts with a
    dispersion theta >= 2 (set to 5 there; the untrained fixture's is near 1).
    """
    module = copy.deepcopy(model.module)
    head = module.heads["rna"]
    if depth > 1e3:
        head.log_theta.data.fill_(np.log(5.0))
    z = torch.randn(6, module.n_latent, generator=torch.Generator().manual_seed(1))
    categoricals = [torch.zeros(6, 1, dtype=torch.long)]
    mask = module.feature_mask("rna", torch.zeros(6, dtype=torch.long))
    with torch.inference_mode():
        proportions = HeadInput(categoricals, mask)
        px1 = module.decode("rna", z, proportions)
        value, variance = head.reported(px1, proportions, variance=True, depth=depth)
        plug_in, _ = head.reported(px1, proportions)
        px = module.decode("rna", z, HeadInput(categoricals, mask, torch.full((6, 1), depth)))
        torch.manual_seed(0)
        draws = torch.log1p(px.sample((4000,)).double() / depth * 1e4)
    measured = mask[0] > 0
    error = 5 * (draws.var(0) / 4000).sqrt() + 0.02
    assert (value.double() - draws.mean(0)).abs()[:, measured].le(error[:, measured]).all()
    np.testing.assert_allclose(variance[:, measured].double(), draws.var(0)[:, measured], rtol=0.15, atol=0.01)
    # without depth the head computes exactly this expression on the same tensor: identical, 1e-6 is a margin only
    np.testing.assert_allclose(plug_in, torch.log1p(px1.scale * 1e4), rtol=1e-6)
    gap = (plug_in - value)[:, measured]
    if depth < 1e3:
        assert gap.mean() > 0.1  # the log of the mean count is well above the mean of the log at a shallow depth
    else:
        np.testing.assert_allclose(gap, np.log(5.0) - torch.digamma(torch.tensor(5.0)).item(), atol=0.01)


@pytest.mark.parametrize("theta", [0.5, 2.0, 10.0])
def test_log1p_moments_match_the_exact_sum(theta):
    """Against the negative binomial's probabilities summed far into the tail (float64, scipy).

    Where a count distribution has no mass past the exactly summed counts (small means) the two agree to float32
    rounding of a sum of 25 terms; past them the tail is expanded to second order: within 0.02 for theta >= 2, 0.1 at
    theta 0.5 (up to 1,000 counts). Zero inflation scales both moments of a non-zero part by the kept fraction.
    """
    stats = pytest.importorskip("scipy.stats")
    mu = torch.tensor([1e-3, 0.1, 0.5, 2.0, 10.0, 50.0, 300.0, 1000.0], dtype=torch.float64)
    for scale in (0.3, 3.0, 20.0):
        mean, variance = log1p_moments(mu.float(), torch.tensor(theta), scale)
        for i, m in enumerate(mu.tolist()):
            p = theta / (theta + m)
            counts = np.arange(int(stats.nbinom.ppf(1 - 1e-13, theta, p)) + 2)
            pmf = stats.nbinom.pmf(counts, theta, p)
            exact = (pmf * np.log1p(scale * counts)).sum()
            tolerance = 1e-4 if m <= 2 else (0.02 if theta >= 2 else 0.1)
            assert abs(mean[i].item() - exact) <= tolerance, (m, scale, mean[i].item(), exact)
            exact_variance = (pmf * np.log1p(scale * counts) ** 2).sum() - exact**2
            if m <= 2:
                assert abs(variance[i].item() - exact_variance) <= 1e-4 * max(1, exact_variance)
    zi_logits = torch.tensor([0.0, 1.0])
    inflated, _ = log1p_moments(torch.tensor([3.0, 3.0]), torch.tensor(theta), 2.0, zi_logits)
    plain, _ = log1p_moments(torch.tensor([3.0, 3.0]), torch.tensor(theta), 2.0)
    # the same sums on the same inputs, then one float32 product each way: identical, 1e-6 is a margin only
    np.testing.assert_allclose(inflated, plain * torch.sigmoid(-zi_logits), rtol=1e-6)


def test_predict_streams_into_a_memmap_and_an_h5py_dataset(model, tmp_path):
    n_cells, n_peaks = model.adata.n_obs, model.adata.mod["atac"].n_vars
    mean, std = model.predict(target="atac", source="rna", return_std=True)
    memmap = np.lib.format.open_memmap(tmp_path / "atac.npy", mode="w+", dtype=np.float32, shape=(n_cells, n_peaks))
    with h5py.File(tmp_path / "atac.h5", "w") as file:
        dataset = file.create_dataset("std", shape=(n_cells, n_peaks), dtype="float32")
        returned = model.predict(
            target="atac", source="rna", return_std=True, batch_size=32, out=memmap, out_std=dataset
        )
        assert returned[0] is memmap and returned[1] is dataset
        np.testing.assert_allclose(dataset[...], std.to_numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(memmap, mean.to_numpy(), rtol=1e-5, atol=1e-6)
    # draws for the latent part: the same draws in the same order, minibatch by minibatch
    torch.manual_seed(3)
    protein, protein_std = model.predict(target="protein", source="rna", return_std=True, batch_size=48)
    into = np.empty(protein.shape, np.float32), np.empty(protein.shape, np.float32)
    torch.manual_seed(3)
    model.predict(target="protein", source="rna", return_std=True, batch_size=48, out=into[0], out_std=into[1])
    np.testing.assert_array_equal(into[0], protein.to_numpy())
    np.testing.assert_array_equal(into[1], protein_std.to_numpy())
    with pytest.raises(ValueError, match=r"out has shape \(3, 3\); pass an array of shape"):
        model.predict(target="protein", out=np.empty((3, 3)))


def test_std_adds_the_latent_part_to_the_measurement_part(model):
    kwargs = {"target": "protein", "source": "rna", "readout": "decoder", "return_std": True}
    mean, measurement = model.predict(**kwargs, n_samples=0)
    _, total = model.predict(**kwargs, n_samples=30)
    measured = ~np.isnan(mean.to_numpy()).any(1)
    assert (total.to_numpy()[measured] >= measurement.to_numpy()[measured] - 1e-6).all()
    assert (total.to_numpy()[measured] > measurement.to_numpy()[measured] + 1e-4).mean() > 0.5
    # the latent part alone is the spread of the decoded value over posterior draws
    aligned = model.adata
    with torch.inference_mode():
        tensors = next(iter(model._make_data_loader(adata=aligned, batch_size=aligned.n_obs)))
        qz = model.module.posterior(tensors, ["rna"]).qz
        torch.manual_seed(0)
        decoded = torch.stack([model.module.readout("protein", qz.sample(), tensors)[0] for _ in range(400)])
        at_mean = model.module.readout("protein", qz.loc, tensors)[0]
    latent = ((decoded - at_mean) ** 2).mean(0).numpy()
    expected = np.sqrt(latent + measurement.to_numpy() ** 2)
    np.testing.assert_allclose(total.to_numpy()[measured], expected[measured], rtol=0.15, atol=1e-3)


def test_get_normalized_expression_answers_for_every_requested_cell(model):
    mdata = model.mdata
    cite = np.flatnonzero(~mdata.obs_names.isin(mdata.mod["atac"].obs_names))[:7]
    multiome = np.flatnonzero(mdata.obs_names.isin(mdata.mod["atac"].obs_names))[:5]
    indices = np.concatenate([multiome, cite])
    rna = model.get_normalized_expression(mdata, indices, modality="rna")
    assert list(rna.index) == list(mdata.obs_names[indices]) and np.isfinite(rna.to_numpy()).all()
    everyone = model.get_normalized_expression(modality="rna")
    np.testing.assert_allclose(everyone.loc[rna.index].to_numpy(), rna.to_numpy(), rtol=1e-5)
    # protein for multiome cells is imputed from their RNA and ATAC
    protein = model.get_normalized_expression(indices=multiome, modality="protein", return_numpy=True)
    assert protein.shape == (5, mdata.mod["prot"].n_vars) and np.isfinite(protein).all()
    genes = list(mdata.mod["rna"].var_names[[7, 2]])
    np.testing.assert_allclose(
        model.get_normalized_expression(indices=indices, gene_list=genes).to_numpy(), rna[genes].to_numpy()
    )
    # scvi-tools' linear scale: frequencies over the genes the cell's dataset measured (rows sum to 1), times
    # library_size; a float32 sum of 40 terms is exact to a few ulps
    masks = model.adata.mod["rna"].varm["measured"] if "measured" in model.adata.mod["rna"].varm else None
    assert masks is None or masks.shape[0] == mdata.mod["rna"].n_vars
    np.testing.assert_allclose(rna.to_numpy().sum(1), 1.0, rtol=1e-5)
    per_million = model.get_normalized_expression(indices=indices, library_size=1e6).to_numpy()
    np.testing.assert_allclose(per_million, rna.to_numpy() * 1e6, rtol=1e-5)
    # pengster's reported scale is log1p of counts per 10k of the same frequencies
    reported = model.get_denoised_values(mdata, indices, modality="rna").to_numpy()
    np.testing.assert_allclose(reported, np.log1p(rna.to_numpy() * 1e4), rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="gene_list has features that 'rna' does not have"):
        model.get_normalized_expression(gene_list=["nope"])


def test_transform_batch_and_samples(model):
    batches = list(model.adata_manager.get_state_registry("batch").categorical_mapping)
    each = [model.get_normalized_expression(modality="rna", transform_batch=b).to_numpy() for b in batches]
    assert not np.allclose(each[0], each[1])
    both = model.get_normalized_expression(modality="rna", transform_batch=batches).to_numpy()
    np.testing.assert_allclose(both, sum(each) / len(each), rtol=1e-5)
    with pytest.raises(ValueError, match=r"transform_batch \['b9'\] are not batches"):
        model.get_normalized_expression(transform_batch="b9")
    draws = model.get_normalized_expression(modality="protein", n_samples=4, return_mean=False)
    assert draws.shape == (4, model.adata.n_obs, model.adata.mod["prot"].n_vars)
    assert not np.allclose(draws[0], draws[1])
    torch.manual_seed(5)
    averaged = model.get_normalized_expression(modality="protein", n_samples=4)
    torch.manual_seed(5)
    again = model.get_normalized_expression(modality="protein", n_samples=4, return_mean=False)
    np.testing.assert_allclose(averaged.to_numpy(), again.mean(0), rtol=1e-5, atol=1e-6)


def test_latent_follows_scvi_tools_signature(model):
    mdata = model.mdata
    rows = np.array([5, 1, 100])
    mean = model.get_latent_representation(mdata, rows, True, 2)
    # minibatches of 2 and of all cells may take other float32 matmul kernels (another summation order): each latent
    # coordinate comes through three layers of dot products of at most ~100 terms, each exact to about 100 * 2**-24
    # relative (6e-6), plus the product of experts' division; 1e-4 relative (1e-5 absolute near zero) bounds that
    np.testing.assert_allclose(mean, model.get_latent_representation()[rows], rtol=1e-4, atol=1e-5)
    torch.manual_seed(0)
    drawn = np.stack([model.get_latent_representation(indices=rows, give_mean=False) for _ in range(300)])
    assert not np.allclose(drawn[0], mean)
    np.testing.assert_allclose(drawn.mean(0), mean, atol=0.15)


def test_predict_returns_a_frame_unless_the_std_is_asked_for(model):
    frame = model.predict(target="rna", source="protein")
    assert isinstance(frame, pd.DataFrame) and frame.shape == (model.adata.n_obs, model.adata.mod["rna"].n_vars)
    mean, std = model.predict(target="rna", source="protein", return_std=True)
    pd.testing.assert_frame_equal(mean, frame)
    assert (std.to_numpy()[np.isfinite(std.to_numpy())] > 0).all()


def test_target_sum_reports_rna_per_that_total_for_the_decoder_and_the_neighbours(model):
    """``target_sum`` moves both halves of a blended RNA prediction to log1p per that total.

    The ``population`` read-out is the average of the decoded value and each gene's mean measured value over the
    training cells with RNA; the second half is recomputed here from the counts, at genes every panel measured.
    Float32 sums of a few hundred log values: 1e-4 is far above their rounding and far below the 0.3 or more that
    separates the two scales.
    """
    target_sum = 300.0
    decoded = model.predict(target="rna", readout="decoder", target_sum=target_sum).to_numpy()
    blended = model.predict(target="rna", readout="population", target_sum=target_sum).to_numpy()
    counts = model.adata.mod["rna"].X
    counts = np.asarray(counts.todense() if hasattr(counts, "todense") else counts, dtype=np.float64)
    names = model.adata.mod["rna"].obs_names
    rows = model.adata.obs_names.get_indexer(names)
    everywhere = (model.module.feature_mask_rna > 0).all(0).numpy()
    library = counts.sum(1, keepdims=True).clip(min=1.0)
    measured_mean = np.log1p(counts / library * target_sum).mean(0)
    np.testing.assert_allclose(
        blended[:, everywhere], 0.5 * (decoded[:, everywhere] + measured_mean[everywhere]), atol=1e-4
    )
    per_10k = model.predict(target="rna", readout="decoder").to_numpy()
    # the expectation of a log does not rescale: the naive rescaling of the per-10k value is another number
    naive = np.log1p(np.expm1(per_10k) * target_sum / 1e4)
    assert np.abs(naive - decoded)[rows].mean() > 0.01
    with pytest.raises(ValueError, match="target_sum=300.0 sets the scale of RNA predictions; target='atac'"):
        model.predict(target="atac", target_sum=target_sum)
