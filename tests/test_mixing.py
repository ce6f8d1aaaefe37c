"""The MMD that mixes the datasets of a mosaic: its estimate, its gradient, and its effect on a trained model."""

from __future__ import annotations

import numpy as np
import torch

import pengster
from pengster.model import JointVAE
from pengster.nn import gaussian_mmd, group_mmd


def test_mmd_is_zero_for_one_sample_and_grows_with_the_shift():
    generator = torch.Generator().manual_seed(0)
    sample = torch.randn(80, 5, generator=generator)
    assert gaussian_mmd(sample, sample).item() < 1e-6
    other = torch.randn(80, 5, generator=generator)
    values = [gaussian_mmd(sample, other + shift).item() for shift in (0.0, 0.5, 2.0)]
    assert values[0] < values[1] < values[2]
    assert gaussian_mmd(sample, sample[:0]).item() == 0.0


def test_group_mmd_pairs_and_skips_lone_groups():
    generator = torch.Generator().manual_seed(1)
    latent = torch.randn(60, 4, generator=generator)
    latent[30:] += 3.0
    groups = torch.tensor([0] * 30 + [1] * 30)
    torch.testing.assert_close(group_mmd(latent, groups), gaussian_mmd(latent[:30], latent[30:]))
    assert group_mmd(latent, torch.zeros(60, dtype=torch.long)).item() == 0.0
    lone = groups.clone()
    lone[0] = 2  # a group with one cell is skipped; the other two still count
    assert group_mmd(latent, lone).item() > 0.5
    three = torch.tensor([0] * 20 + [1] * 20 + [2] * 20)
    expected = sum(gaussian_mmd(latent[three == g], latent[three != g]) for g in range(3))
    torch.testing.assert_close(group_mmd(latent, three), expected)


def test_mmd_gradient_pulls_the_groups_together():
    generator = torch.Generator().manual_seed(2)
    latent = torch.randn(64, 3, generator=generator)
    latent[32:] += 2.0
    latent.requires_grad_(True)
    groups = torch.tensor([0] * 32 + [1] * 32)
    optimizer = torch.optim.SGD([latent], lr=5.0)
    before = group_mmd(latent, groups).item()
    gap_before = (latent[32:].mean(0) - latent[:32].mean(0)).norm().item()
    for _ in range(20):
        optimizer.zero_grad()
        group_mmd(latent, groups).backward()
        optimizer.step()
    assert group_mmd(latent, groups).item() < 0.5 * before
    assert (latent[32:].mean(0) - latent[:32].mean(0)).norm().item() < 0.7 * gap_before


def _other_dataset_share(latent: np.ndarray, dataset: np.ndarray, k: int = 10) -> float:
    from sklearn.neighbors import NearestNeighbors

    _, neighbours = NearestNeighbors(n_neighbors=k + 1).fit(latent).kneighbors(latent)
    return float((dataset[neighbours[:, 1:]] != dataset[:, None]).mean())


def test_mixing_weight_mixes_datasets_with_disjoint_gene_panels():
    mdata = pengster.data.synthetic_mosaic(
        n_cells={"multiome": 150, "cite": 150}, n_genes=60, n_peaks=60, n_proteins=10, gene_overlap=0.1, seed=3
    )
    dataset = mdata.obs["dataset"].astype(str).to_numpy()
    shares = {}
    for weight in (0.0, 50.0):
        torch.manual_seed(0)
        JointVAE.setup_mudata(
            mdata, modalities={"rna_layer": "rna", "atac_layer": "atac", "protein_layer": "prot"}, batch_key="batch"
        )
        model = JointVAE(mdata, n_latent=4, n_hidden=32, mixing_weight=weight)
        model.train(max_epochs=30, batch_size=100, enable_progress_bar=False, early_stopping=False)
        latent = model.get_latent_representation()
        shares[weight] = _other_dataset_share(latent, dataset)
        history = model.history["mixing_mmd_train"]["mixing_mmd_train"].to_numpy(dtype=float)
        assert np.all(np.isfinite(history))
    assert shares[50.0] > shares[0.0] + 0.1, shares


def test_bridge_is_built_only_for_panels_that_differ_and_share_enough_genes():
    from pengster.module._bridge import needs_bridge

    same = torch.ones(2, 30)
    assert not needs_bridge(same)
    differ = torch.ones(2, 30)
    differ[0, :5] = 0
    differ[1, 5:10] = 0
    assert needs_bridge(differ)  # 20 shared genes
    few = torch.ones(2, 30)
    few[0, :12] = 0
    few[1, 12:24] = 0
    assert not needs_bridge(few)  # 6 shared genes
    assert not needs_bridge(differ[:1])


def _bridge_mosaic():
    return pengster.data.synthetic_mosaic(
        n_cells={"multiome": 60, "cite": 60}, n_genes=80, n_peaks=40, n_proteins=8, gene_overlap=0.3, seed=4
    )


def test_bridge_posterior_sees_only_shared_genes_and_not_the_dataset():
    from pengster.module._bridge import bridge_posterior

    mdata = _bridge_mosaic()
    JointVAE.setup_mudata(
        mdata, modalities={"rna_layer": "rna", "atac_layer": "atac", "protein_layer": "prot"}, batch_key="batch"
    )
    model = JointVAE(mdata, n_latent=4, n_hidden=16)
    assert model.init_params_["non_kwargs"]["bridge_weight"] == 1.0
    module = model.module.eval()
    shared = module.bridge_mask.bool()
    assert 0 < int(shared.sum()) < shared.numel()
    generator = torch.Generator().manual_seed(0)
    counts = torch.poisson(torch.full((3, shared.numel()), 3.0), generator=generator)
    has = torch.ones(3)
    panel = torch.zeros(3, 1, dtype=torch.long)
    base = bridge_posterior(module, counts, has, panel).loc
    changed = counts.clone()
    changed[:, ~shared] += 50.0  # genes that not every dataset measured
    torch.testing.assert_close(bridge_posterior(module, changed, has, panel).loc, base)
    other_panel = bridge_posterior(module, counts, has, torch.ones(3, 1, dtype=torch.long)).loc
    torch.testing.assert_close(other_panel, base)  # same shared genes measured in both panels: same posterior
    moved = counts.clone()
    moved[:, shared.nonzero()[0]] += 50.0
    assert not torch.allclose(bridge_posterior(module, moved, has, panel).loc, base)


def test_bridge_alignment_moves_the_joint_posterior_only():
    from torch.distributions import Normal

    from pengster.module._bridge import alignment_kl

    joint_mean = torch.zeros(4, 3, requires_grad=True)
    bridge_mean = torch.ones(4, 3, requires_grad=True)
    kl = alignment_kl(
        Normal(joint_mean, torch.ones(4, 3)), Normal(bridge_mean, torch.ones(4, 3)), torch.tensor([1, 1, 1, 0])
    )
    assert kl[3].item() == 0.0
    torch.testing.assert_close(kl[:3], torch.full((3,), 1.5))
    kl.sum().backward()
    assert bridge_mean.grad is None or not bridge_mean.grad.any()
    assert joint_mean.grad[:3].abs().sum() > 0


def test_single_dataset_builds_no_bridge():
    mdata = pengster.data.synthetic_mosaic(n_cells={"multiome": 40}, n_genes=30, n_peaks=30, seed=5)
    JointVAE.setup_mudata(mdata, modalities={"rna_layer": "rna", "atac_layer": "atac"}, batch_key="batch")
    model = JointVAE(mdata, n_latent=4, n_hidden=16)
    assert model.module.bridge_weight == 0.0
    assert not hasattr(model.module, "bridge_encoder")
