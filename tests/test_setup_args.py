"""setup_mudata's scvi-tools arguments that reach the model: size factors, continuous covariates, obs columns read
from a modality; and VAEMixin's get_elbo / get_reconstruction_error against a hand computation of the same terms.
"""

from __future__ import annotations

import numpy as np
import pytest
import scvi
import torch
from torch.distributions import Normal, kl_divergence

from pengster._constants import REGISTRY_KEYS
from pengster.data import synthetic_mosaic
from pengster.model import JointVAE
from pengster.model._legacy import setup_args_for
from pengster.module import HeadInput

torch.set_num_threads(1)

PAIRED = {"rna_layer": "rna", "protein_layer": "prot"}


def _cite(seed: int = 0):
    """One CITE-seq dataset: every cell has rna and protein, all features measured (no panel masks)."""
    return synthetic_mosaic(n_cells={"cite": 80}, n_genes=30, n_proteins=8, seed=seed)


def _model(mdata, **setup_kwargs) -> JointVAE:
    JointVAE.setup_mudata(mdata, rna_layer="counts", protein_layer="counts", modalities=PAIRED, **setup_kwargs)
    scvi.settings.seed = 0
    model = JointVAE(mdata, n_latent=4, n_hidden=16, dropout_rate=0.0)
    model.train(max_epochs=2, batch_size=40, enable_progress_bar=False)
    return model


@pytest.fixture(scope="module")
def cite_model():
    return _model(_cite(), batch_key="batch")


def _hand_terms(model: JointVAE, seed: int):
    """Per cell: the KL of the joint posterior and each modality's negative log-likelihood under it, by hand."""
    module = model.module.eval()
    # seeded before the loader, as get_elbo's: a DataLoader iterator draws its base seed from torch's generator
    torch.manual_seed(seed)
    tensors = next(iter(model._make_data_loader(adata=model.adata, batch_size=model.adata.n_obs)))
    with torch.no_grad():
        outputs = module.inference(**module._get_inference_input(tensors))
        z, qz = outputs["z"][0], outputs["qz"]  # posterior 0 is the joint one
        kl = kl_divergence(Normal(qz.loc[0], qz.scale[0]), Normal(0.0, 1.0)).sum(-1)
        batch = tensors[REGISTRY_KEYS.BATCH].long()
        panel = tensors[REGISTRY_KEYS.PANEL].long()
        nll = {}
        for modality in model.modalities:
            counts = tensors[REGISTRY_KEYS.counts(modality)]
            mask = module.feature_mask(modality, panel)
            library = counts.sum(-1, keepdim=True).clamp_min(1.0)
            px = module.decode(modality, z, HeadInput([batch], mask, library))
            nll[modality] = -px.log_prob(counts).sum(-1)
    return kl, nll


def test_get_elbo_is_the_elbo_of_the_joint_posterior(cite_model):
    kl, nll = _hand_terms(cite_model, seed=3)
    by_hand = -(kl + nll["rna"] + nll["protein"]).mean()
    torch.manual_seed(3)
    elbo = cite_model.get_elbo(batch_size=cite_model.adata.n_obs)
    np.testing.assert_allclose(float(elbo), float(by_hand), rtol=1e-5)
    # return_mean=False: one value per cell
    torch.manual_seed(3)
    per_cell = cite_model.get_elbo(batch_size=cite_model.adata.n_obs, return_mean=False)
    np.testing.assert_allclose(per_cell.numpy(), -(kl + nll["rna"] + nll["protein"]).numpy(), rtol=1e-5)


def test_get_reconstruction_error_is_each_modality_nll(cite_model):
    _, nll = _hand_terms(cite_model, seed=4)
    torch.manual_seed(4)
    errors = cite_model.get_reconstruction_error(batch_size=cite_model.adata.n_obs)
    assert set(errors) == {"reconstruction_rna", "reconstruction_protein"}
    for modality in ("rna", "protein"):
        np.testing.assert_allclose(float(errors[f"reconstruction_{modality}"]), float(nll[modality].mean()), rtol=1e-5)


def test_get_elbo_takes_indices_and_new_data(cite_model):
    mdata = _cite()
    torch.manual_seed(5)
    all_cells = cite_model.get_elbo(mdata, return_mean=False, batch_size=mdata.n_obs)
    torch.manual_seed(5)
    first = cite_model.get_elbo(mdata, indices=np.arange(10), return_mean=False, batch_size=mdata.n_obs)
    assert all_cells.shape == (mdata.n_obs,) and first.shape == (10,)
    assert torch.isfinite(all_cells).all() and float(all_cells.mean()) < 0


def test_size_factor_replaces_the_observed_rna_library():
    """With size factors equal to the observed RNA totals the model is the one without them; other values differ."""
    mdata = _cite(seed=1)
    totals = np.asarray(mdata.mod["rna"].layers["counts"].sum(1)).ravel()
    mdata.obs["size_factor"] = totals
    with_factor = _model(mdata, size_factor_key="size_factor")
    plain_data = _cite(seed=1)
    JointVAE.setup_mudata(plain_data, rna_layer="counts", protein_layer="counts", modalities=PAIRED)
    plain = JointVAE(plain_data, n_latent=4, n_hidden=16, dropout_rate=0.0)
    plain.module.load_state_dict(with_factor.module.state_dict())
    plain.is_trained_ = True

    def rna_error(model, data):
        torch.manual_seed(0)
        return float(model.get_reconstruction_error(data, batch_size=data.n_obs)["reconstruction_rna"])

    np.testing.assert_allclose(rna_error(with_factor, mdata), rna_error(plain, plain_data), rtol=1e-6)
    doubled = _cite(seed=1)
    doubled.obs["size_factor"] = totals * 4
    assert abs(rna_error(with_factor, doubled) - rna_error(with_factor, mdata)) > 1.0


def test_continuous_covariates_are_registered_and_reach_the_decoders():
    mdata = _cite(seed=2)
    mdata.obs["pct_mito"] = np.linspace(0.0, 10.0, mdata.n_obs)
    mdata.obs["log_depth"] = np.log1p(np.asarray(mdata.mod["rna"].layers["counts"].sum(1)).ravel())
    model = _model(mdata, batch_key="batch", continuous_covariate_keys=["pct_mito", "log_depth"])
    registry = model.adata_manager.get_state_registry(REGISTRY_KEYS.CONT_COVS)
    assert len(registry["columns"]) == 2
    assert model.summary_stats[f"n_{REGISTRY_KEYS.CONT_COVS}"] == 2
    assert model.module.n_continuous_cov == 2
    before = model.get_normalized_expression(mdata, modality="rna").to_numpy()
    changed = _cite(seed=2)
    changed.obs["pct_mito"] = mdata.obs["pct_mito"].to_numpy()
    changed.obs["log_depth"] = mdata.obs["log_depth"].to_numpy()
    changed.obs.loc[changed.obs_names[:10], "pct_mito"] = 50.0
    after = model.get_normalized_expression(changed, modality="rna").to_numpy()
    # the decoder reads the covariate: the changed cells move, the others keep their values
    assert np.abs(after[:10] - before[:10]).max() > 1e-4
    np.testing.assert_allclose(after[10:], before[10:], rtol=1e-5, atol=1e-6)


def test_batch_key_is_read_from_the_modality_modalities_names():
    """modalities={'batch_key': 'rna'} reads the batch from mdata.mod['rna'].obs, as scvi-tools does."""
    mdata = _cite(seed=0)
    mdata.mod["rna"].obs["run"] = np.where(np.arange(mdata.n_obs) % 2 == 0, "run_a", "run_b")
    assert "run" not in mdata.obs.columns and "rna:run" not in mdata.obs.columns
    JointVAE.setup_mudata(
        mdata,
        rna_layer="counts",
        protein_layer="counts",
        batch_key="run",
        modalities={**PAIRED, "batch_key": "rna"},
    )
    model = JointVAE(mdata, n_latent=4, n_hidden=16)
    assert model.summary_stats["n_batch"] == 2
    codes = model.adata_manager.get_from_registry(REGISTRY_KEYS.BATCH).ravel()
    np.testing.assert_array_equal(codes, np.arange(mdata.n_obs) % 2)
    assert "run" not in mdata.obs.columns  # the user's object is not written to


def test_modalities_none_finds_the_usual_keys_and_honours_layers():
    mdata = _cite(seed=0)
    JointVAE.setup_mudata(mdata, rna_layer="counts", protein_layer="counts")
    model = JointVAE(mdata, n_latent=4, n_hidden=16)
    assert model.modalities == {"rna": "rna", "protein": "prot"}
    assert model.adata_manager.registry["setup_args"]["rna_layer"] == "counts"


def test_a_0_1_registry_reaches_setup_only_as_convert_legacy_translates_it(cite_model):
    """pengster 0.1 saved its setup arguments in the old form; convert_legacy translates them (the one translator),
    and setup_mudata takes the result. The old form itself is a user's call, refused with or without a registry."""
    import copy

    registry = copy.deepcopy(cite_model.adata_manager.registry)
    for key in (REGISTRY_KEYS.CONT_COVS, REGISTRY_KEYS.SIZE_FACTOR):  # fields 0.1 did not have
        registry["field_registries"].pop(key)
    old_args = {
        "modalities": {"rna": "rna", "protein": "prot"},
        "layers": {"rna": "counts", "protein": "counts"},
        "batch_key": "batch",
        "categorical_covariate_keys": None,
        "dataset_key": None,
    }
    registry["setup_args"] = old_args
    translated = setup_args_for(JointVAE.setup_mudata, registry)
    assert translated == {
        "rna_layer": "counts",
        "protein_layer": "counts",
        "batch_key": "batch",
        "categorical_covariate_keys": None,
        "dataset_key": None,
        "modalities": PAIRED,
    }
    mdata = _cite()
    JointVAE.setup_mudata(mdata, source_registry=registry, **translated)
    model = JointVAE(mdata, n_latent=4, n_hidden=16, dropout_rate=0.0)
    args = model.adata_manager.registry["setup_args"]
    assert (args["rna_layer"], args["protein_layer"]) == ("counts", "counts")
    assert args["modalities"] == PAIRED and "layers" not in args
    for registry_kwargs in ({}, {"source_registry": registry}):
        with pytest.raises(TypeError, match=r"form is gone.*rna_layer='counts', protein_layer='counts'"):
            JointVAE.setup_mudata(_cite(), **old_args, **registry_kwargs)


def _with_covariates(seed: int):
    mdata = _cite(seed=seed)
    mdata.obs["pct_mito"] = np.linspace(0.0, 10.0, mdata.n_obs)
    mdata.obs["size_factor"] = np.asarray(mdata.mod["rna"].layers["counts"].sum(1)).ravel() + 1.0
    mdata.obs["donor"] = np.where(np.arange(mdata.n_obs) % 3 == 0, "donor_1", "donor_2")
    mdata.obs["run"] = np.where(np.arange(mdata.n_obs) % 2 == 0, "run_a", "run_b")
    return mdata


@pytest.mark.parametrize(
    ("old_form", "current_form", "error"),
    [
        (
            {"modalities": {"rna": "rna", "protein": "prot"}, "layers": {"rna": "counts", "protein": "counts"}},
            {"rna_layer": "counts", "protein_layer": "counts", "modalities": PAIRED},
            TypeError,
        ),
        ({"modalities": {"rna": "rna", "protein": "prot"}}, {"modalities": PAIRED}, ValueError),
    ],
)
def test_the_call_suggested_for_the_0_1_form_keeps_every_argument(old_form, current_form, error):
    """Pasting the call that the error suggests sets up the model that the user asked for, covariates and all."""
    import re

    passed = {
        "batch_key": "batch",
        "dataset_key": "run",
        "size_factor_key": "size_factor",
        "categorical_covariate_keys": ["donor"],
        "continuous_covariate_keys": ["pct_mito"],
    }
    mdata = _with_covariates(seed=3)
    with pytest.raises(error, match="form is gone") as raised:
        JointVAE.setup_mudata(mdata, **old_form, **passed)
    call = re.search(r"; call (JointVAE\.setup_mudata\(mdata, .*\))\.$", str(raised.value)).group(1)
    for name, value in passed.items():
        assert f"{name}={value!r}" in call
    eval(call, {"JointVAE": JointVAE, "mdata": mdata})  # what the user pastes
    pasted = JointVAE(mdata, n_latent=4, n_hidden=16)
    intended_data = _with_covariates(seed=3)
    JointVAE.setup_mudata(intended_data, **current_form, **passed)
    intended = JointVAE(intended_data, n_latent=4, n_hidden=16)
    assert pasted.adata_manager.registry["setup_args"] == intended.adata_manager.registry["setup_args"]
    assert pasted.summary_stats == intended.summary_stats
    assert pasted.summary_stats[f"n_{REGISTRY_KEYS.CONT_COVS}"] == 1 and pasted.summary_stats["n_batch"] == 2
    for key in (REGISTRY_KEYS.BATCH, REGISTRY_KEYS.PANEL, REGISTRY_KEYS.CAT_COVS, REGISTRY_KEYS.CONT_COVS):
        np.testing.assert_array_equal(
            np.asarray(pasted.adata_manager.get_from_registry(key)),
            np.asarray(intended.adata_manager.get_from_registry(key)),
        )
    np.testing.assert_array_equal(
        pasted.adata_manager.get_from_registry(REGISTRY_KEYS.SIZE_FACTOR).ravel(), mdata.obs["size_factor"]
    )
