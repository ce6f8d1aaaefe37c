"""``cross_terms`` ``sampled``/``single``: fewer decodes per cell, an unbiased estimate of the exact ELBO."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import pengster
from pengster.dataloaders._device_loader import loader_from_manager
from pengster.module._pairs import pairs, posterior_weights


def _has(*columns) -> dict[str, torch.Tensor]:
    return {m: torch.tensor(c, dtype=torch.float32) for m, c in zip(("rna", "atac", "protein"), columns, strict=True)}


def test_sampled_pairs_one_term_per_measured_modality_drawn_in_proportion_to_weight():
    # cells: multiome, CITE, RNA only, all three
    has = _has([1, 1, 1, 1], [1, 0, 0, 1], [0, 1, 0, 1])
    modalities = ("rna", "atac", "protein")
    weights = posterior_weights(has, modalities, cross_weight=2.0, bridge=True)
    exact = pairs(has, modalities, weights, bridge=True, sampled=False)
    torch.manual_seed(0)
    counts = torch.zeros(len(weights), 4)
    n_draws = 4000
    for _ in range(n_draws):
        sampled = pairs(has, modalities, weights, bridge=True, sampled=True)
        posterior, cell, weight = sampled["rna"]
        assert cell.tolist() == [0, 1, 2, 3]  # every cell measured RNA: one term each
        counts[posterior, cell] += 1
    posterior, cell, weight = exact["rna"]
    total = torch.zeros(4).index_add(0, cell, weight)
    torch.testing.assert_close(sampled["rna"][2], total)  # the sampled term has the sum of the weights
    # each posterior is drawn with probability weight / total (the RNA-only cell: joint 1, bridge 2)
    expected = torch.zeros(len(weights), 4)
    expected[posterior, cell] = weight / total[cell]
    torch.testing.assert_close(counts / n_draws, expected, atol=0.03, rtol=0)
    assert sampled["atac"][1].tolist() == [0, 3] and sampled["protein"][1].tolist() == [1, 3]
    # keeping the joint term: every measured cell has it with weight 1, and one drawn cross term where it has any
    kept = pairs(has, modalities, weights, bridge=True, sampled=True, keep_joint=True)
    posterior, cell, weight = kept["rna"]
    joint = posterior == 0
    assert cell[joint].tolist() == [0, 1, 2, 3] and weight[joint].tolist() == [1.0] * 4
    assert sorted(cell[~joint].tolist()) == [0, 1, 2, 3]  # every cell has the bridge at least
    torch.testing.assert_close(weight[~joint][torch.argsort(cell[~joint])], total - 1.0)


def _module_and_minibatch():
    mdata = pengster.data.synthetic_mosaic(n_cells={"multiome": 40, "cite": 30}, gene_overlap=0.8, seed=3)
    pengster.model.JointVAE.setup_mudata(
        mdata, modalities={"rna_layer": "rna", "atac_layer": "atac", "protein_layer": "prot"}, batch_key="batch"
    )
    model = pengster.model.JointVAE(mdata, n_hidden=16, n_latent=4, dropout_rate=0.0, cross_terms="sampled")
    loader = loader_from_manager(
        model.adata_manager, indices=np.arange(70), strata=np.zeros(70), batch_size=70, device="cpu",
        binary_keys=("x_atac",),
    )  # fmt: skip
    return model.module, next(iter(loader))


@pytest.mark.parametrize(
    ("cross_terms", "peak_fraction"), [("sampled", 1.0), ("single", 1.0), ("all", 0.3), ("sampled", 0.3)]
)
def test_sampled_loss_is_an_unbiased_estimate_of_the_exact_loss(cross_terms, peak_fraction):
    module, tensors = _module_and_minibatch()
    assert module.bridge_weight > 0  # the bridge posterior is among the drawn ones
    module.train()
    # decoders without dropout and with fixed batch-norm statistics: the drawn terms are the only randomness
    module.heads.eval()
    torch.manual_seed(0)
    inference = module.inference(**module._get_inference_input(tensors))
    n_peaks = module.heads["atac"].region_logit.numel()
    decoded_peaks = []

    def loss(sampled: bool) -> float:
        module.cross_terms = cross_terms if sampled else "all"
        module.heads["atac"].cross_fraction = peak_fraction if sampled else 1.0
        with torch.no_grad():
            generative = module.generative(**module._get_generative_input(tensors, inference))
            decoded_peaks.extend(part.px.logits.shape[-1] for part in generative["px"]["atac"])
            return float(module.loss(tensors, inference, generative).loss)

    exact = loss(False)
    assert decoded_peaks == [n_peaks]  # one decode of every pair on every peak
    draws = np.array([loss(True) for _ in range(300)])
    standard_error = draws.std(ddof=1) / np.sqrt(len(draws))
    assert draws.std() > 0  # the terms are drawn
    assert abs(draws.mean() - exact) < 4 * standard_error, (draws.mean(), exact, standard_error)
    # a biased weighting (each drawn term with its own weight, or a peak subset without 1 / fraction) is far off
    assert abs(draws.mean() - exact) < 0.02 * abs(exact)
    if peak_fraction < 1:  # the joint terms on every peak, the cross terms on a subset
        assert set(decoded_peaks[1:]) == {n_peaks, round(peak_fraction * n_peaks)}


def test_peak_subset_gradients_are_unbiased():
    """The gradient of the loss with cross terms on a peak subset averages to the exact loss's gradient.

    Monte Carlo over 200 subsets, on the output layer's weights (the parameters the subset touches): per weight, the
    mean difference from the exact gradient at the same ``z`` is within 5 standard errors (all but a few of the
    weights; a biased estimate, e.g. without the factor 1 / fraction, is off by many).
    """
    module, tensors = _module_and_minibatch()
    module.cross_terms = "all"
    module.train()
    module.heads.eval()
    weight = module.heads["atac"].output.weight

    def gradient(fraction: float) -> torch.Tensor:
        module.heads["atac"].cross_fraction = fraction
        module.zero_grad()
        inference = module.inference(**module._get_inference_input(tensors))
        generative = module.generative(**module._get_generative_input(tensors, inference))
        module.loss(tensors, inference, generative).loss.backward()
        return weight.grad.detach().clone()

    def at_seed(fraction: float, seed: int) -> torch.Tensor:
        # the same z for both fractions: it is drawn before the peak subset
        torch.manual_seed(seed)
        return gradient(fraction)

    exact = torch.stack([at_seed(1.0, seed) for seed in range(200)])
    sampled = torch.stack([at_seed(0.25, seed) for seed in range(200)])
    difference = sampled - exact  # only the peak subset differs
    error = difference.mean(0).abs() / (difference.std(0) / 200**0.5).clamp_min(1e-12)
    assert difference.abs().max() > 0  # the subsets do change the gradient
    assert (error < 5).float().mean() > 0.995


def test_sampled_terms_only_in_training_and_bad_value_named():
    module, tensors = _module_and_minibatch()
    has = module._get_inference_input(tensors)["has"]
    module.eval()
    all_terms = module.reconstruction_pairs(has)
    module.cross_terms = "all"
    torch.testing.assert_close(all_terms["rna"][1], module.reconstruction_pairs(has)["rna"][1])
    module.cross_terms = "sampled"
    module.train()
    assert len(module.reconstruction_pairs(has)["rna"][1]) < len(all_terms["rna"][1])
    with pytest.raises(ValueError, match=r"cross_terms='some'.*'all', 'sampled', 'single'"):
        type(module)({"rna": 5}, {"rna": torch.ones(1, 5)}, cross_terms="some")


def test_train_with_sampled_terms_decodes_fewer_rows(monkeypatch):
    mdata = pengster.data.synthetic_mosaic(n_cells={"multiome": 60}, n_genes=40, n_peaks=50, seed=4)
    pengster.model.JointVAE.setup_mudata(
        mdata, modalities={"rna_layer": "rna", "atac_layer": "atac"}, batch_key="batch"
    )
    rows = {}
    decoded = []
    module_class = pengster.module.JointVAEModule
    original = module_class.decode
    monkeypatch.setattr(
        module_class, "decode", lambda self, m, z, *a, **k: decoded.append(len(z)) or original(self, m, z, *a, **k)
    )
    for cross_terms in ("all", "sampled", "single"):
        model = pengster.model.JointVAE(mdata, n_hidden=16, n_latent=4, cross_terms=cross_terms)
        decoded.clear()
        model.train(max_epochs=2, accelerator="cpu", enable_progress_bar=False, train_size=1.0)
        rows[cross_terms] = sum(decoded)
        assert np.isfinite(model.history["elbo_train"].to_numpy(dtype=float)).all()
    # multiome cells: 3 posteriors decode each modality with all terms, 2 sampled, 1 single
    assert rows["sampled"] * 3 == rows["all"] * 2 and rows["single"] * 3 == rows["all"]
