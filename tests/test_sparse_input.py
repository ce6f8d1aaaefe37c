"""The encoders' first layer on a sparse input: the same values and gradients as scvi-tools' dense layers."""

from __future__ import annotations

import pytest
import torch
from scvi.nn import Encoder, FCLayers

from pengster.nn import SparseRows, encoder_moments, fc_layers


def _sparse_values(n_cells: int, n_features: int, density: float) -> torch.Tensor:
    generator = torch.Generator().manual_seed(0)
    open_ = (torch.rand(n_cells, n_features, generator=generator) < density).float()
    open_[0] = 0.0  # a row without any non-zero entry
    return torch.log1p(open_ / open_.sum(-1, keepdim=True).clamp_min(1.0) * 1e4)


@pytest.mark.parametrize("n_cat_list", [[], [3], [3, 1, 4]], ids=["no_covariates", "panel", "panel_unused_batch"])
@pytest.mark.parametrize("n_layers", [1, 2])
def test_sparse_input_gives_the_dense_values_and_gradients(n_cat_list, n_layers):
    """Values and weight gradients of ``Encoder`` on the sparse input equal scvi-tools' dense forward.

    Float32 sums of a few hundred products in a different order: relative differences near 1e-6; 1e-4 (and an
    absolute 1e-5) is far above that and far below any real difference (a wrong column or a dropped covariate moves
    values by 1e-2 or more).
    """
    torch.manual_seed(0)
    encoder = Encoder(
        500, 8, n_cat_list=n_cat_list, n_layers=n_layers, n_hidden=32, dropout_rate=0.0, return_dist=True,
        use_batch_norm=False, use_layer_norm=True,
    )  # fmt: skip
    x = _sparse_values(40, 500, 0.04)
    categoricals = [torch.randint(0, max(n, 1), (40, 1)) for n in n_cat_list]
    results = {}
    for layout in ("dense", "sparse"):
        encoder.zero_grad()
        values = x if layout == "dense" else SparseRows.from_dense(x)
        mean, variance = encoder_moments(encoder, values, *categoricals)
        (mean.square().sum() + variance.sum()).backward()
        results[layout] = (mean, variance, *[p.grad.clone() for p in encoder.parameters()])
    assert len(results["dense"]) == len(results["sparse"]) > 2
    for dense, sparse in zip(results["dense"], results["sparse"], strict=True):
        torch.testing.assert_close(sparse, dense, rtol=1e-4, atol=1e-5)


def test_sparse_rows_round_trip():
    x = _sparse_values(7, 30, 0.2)
    rows = SparseRows.from_dense(x)
    assert rows.offsets.tolist()[0] == 0 and rows.offsets[-1] == (x != 0).sum() and rows.offsets[1] == 0
    assert torch.equal(rows.to_dense(), x)


def test_fc_layers_passes_a_dense_input_to_scvi_tools():
    layers = FCLayers(20, 4, n_cat_list=[2], n_layers=1, n_hidden=4).eval()
    x = torch.rand(5, 20)
    batch = torch.zeros(5, 1, dtype=torch.long)
    assert torch.equal(fc_layers(layers, x, batch), layers(x, batch))
