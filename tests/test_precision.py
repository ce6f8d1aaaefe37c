"""bf16 autocast (``train(precision="bf16-mixed")``): the layers run in bf16, everything after them in float32."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn

import pengster
from pengster.dataloaders._device_loader import loader_from_manager


@pytest.fixture(scope="module")
def mosaic():
    # multiome, CITE-seq and partly shared genes: every modality, the bridge and the cell factor
    mdata = pengster.data.synthetic_mosaic(n_cells={"multiome": 40, "cite": 30}, gene_overlap=0.8, seed=5)
    pengster.model.JointVAE.setup_mudata(
        mdata, modalities={"rna_layer": "rna", "atac_layer": "atac", "protein_layer": "prot"}, batch_key="batch"
    )
    return mdata


def _loss(module, tensors, *, autocast: bool):
    """One training-mode forward pass of a copy of ``module``: the loss output, output dtypes per network, gradients."""
    module = copy.deepcopy(module)
    dtypes = {}
    for name, layer in module.named_modules():
        if isinstance(layer, nn.Linear):
            network = name.split(".")[0]
            layer.register_forward_hook(lambda _l, _i, output, n=network: dtypes.setdefault(n, set()).add(output.dtype))
    torch.manual_seed(0)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        _, _, loss = module(tensors)
    loss.loss.backward()
    gradients = [p.grad for p in module.parameters() if p.grad is not None]
    return loss, dtypes, gradients


def test_bf16_autocast_layers_in_bf16_loss_in_float32_and_close_to_float32(mosaic):
    model = pengster.model.JointVAE(mosaic, n_hidden=32, n_latent=6, dropout_rate=0.0)
    # trained a little: at initialisation the decoded means are far from the counts, where the NLL is steepest
    model.train(max_epochs=20, accelerator="cpu", enable_progress_bar=False, train_size=1.0)
    module = model.module
    assert module.bridge_weight > 0 and module.heads["atac"].depth_sources
    module.train()
    loader = loader_from_manager(
        model.adata_manager, indices=np.arange(70), strata=np.zeros(70), batch_size=70, device="cpu",
        binary_keys=("x_atac",),
    )  # fmt: skip
    tensors = next(iter(loader))

    exact, exact_dtypes, _ = _loss(module, tensors, autocast=False)
    mixed, mixed_dtypes, gradients = _loss(module, tensors, autocast=True)
    assert set(exact_dtypes) == set(mixed_dtypes) >= {"encoders", "heads", "bridge_encoder", "projection_heads"}
    assert all(dtypes == {torch.float32} for dtypes in exact_dtypes.values())
    # autocast reached every layer of the encoders and decoders; the loss (contrastive heads included) is float32
    assert mixed_dtypes == {
        name: {torch.float32} if name == "projection_heads" else {torch.bfloat16} for name in mixed_dtypes
    }
    # the likelihoods, KL terms and the loss are float32, and within bf16 rounding of the float32 loss
    terms = {"loss": mixed.loss, **mixed.reconstruction_loss, **mixed.kl_local, **mixed.extra_metrics}
    assert {name: value.dtype for name, value in terms.items()} == dict.fromkeys(terms, torch.float32)
    # within bf16 rounding: the encoders' means move by < 3% of a posterior sd, which moves the loss by ~0.1-0.3%
    # and each modality's NLL sum by up to ~2% (protein: large counts, steep NLL) over 8 seeds of this data
    assert abs(float(mixed.loss.detach()) - float(exact.loss.detach())) < 0.01 * abs(float(exact.loss.detach()))
    for name, value in mixed.reconstruction_loss.items():
        total = float(exact.reconstruction_loss[name].detach().sum())
        assert abs(float(value.detach().sum()) - total) < 0.03 * total, name
    assert gradients and all(g.dtype == torch.float32 and torch.isfinite(g).all() for g in gradients)


@pytest.mark.parametrize("fast", [True, False])
def test_train_bf16_mixed_on_cpu(mosaic, fast):
    model = pengster.model.JointVAE(mosaic, n_hidden=32, n_latent=6)
    model.train(max_epochs=4, accelerator="cpu", precision="bf16-mixed", fast=fast, enable_progress_bar=False)
    elbo = model.history["elbo_train"].to_numpy(dtype=float).ravel()
    assert np.isfinite(elbo).all() and elbo[-1] < elbo[0]
    latent = model.get_latent_representation()
    assert latent.dtype == np.float32 and np.isfinite(latent).all()
    assert all(p.dtype == torch.float32 for p in model.module.parameters())  # mixed, not bf16 weights


@pytest.mark.parametrize("precision", ["16-mixed", "bf16-true", "64-true", 16, 32.0])
def test_unsupported_precision_named_with_the_fix(mosaic, precision):
    model = pengster.model.JointVAE(mosaic, n_hidden=8, n_latent=4)
    with pytest.raises(ValueError, match=rf"precision={precision!r}.*pass precision='bf16-mixed' or leave it unset"):
        model.train(max_epochs=1, accelerator="cpu", precision=precision)
    assert not model.is_trained_


def test_precision_plugins_checked_like_the_precision_argument():
    from lightning.pytorch.plugins import DoublePrecision, HalfPrecision, MixedPrecision, Precision

    from pengster.train._options import check_precision

    check_precision(None, [Precision()])
    check_precision("bf16-mixed", [MixedPrecision("bf16-mixed", "cpu")])
    for plugin in (HalfPrecision("bf16-true"), DoublePrecision(), MixedPrecision("16-mixed", "cpu")):
        with pytest.raises(ValueError, match=r"precision=.*no precision plugin in plugins="):
            check_precision(None, [plugin])
