"""The sparse path (encoders over nonzero counts, likelihood terms once per cell) computes what the dense one does."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch
from scvi.distributions import NegativeBinomial
from scvi.nn import Encoder

import pengster
from pengster.model._device_loader import loader_from_manager
from pengster.nn import FactorBernoulli, _bernoulli_nll
from pengster.nn._fused import reconstruction_nll
from pengster.nn._pair_nll import pair_nll
from pengster.nn._sparse import SparseRows, column_major_, encoder_sparse, first_linear


def _sparse_counts(n_rows=12, n_cols=40, density=0.2, seed=0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    values = torch.randint(1, 6, (n_rows, n_cols), generator=generator).float()
    counts = values * (torch.rand(n_rows, n_cols, generator=generator) < density)
    counts[3] = 0.0  # a cell without any count
    return counts


def test_sparse_rows_round_trip_select_and_expand():
    dense = _sparse_counts()
    rows = SparseRows.from_dense(dense)
    torch.testing.assert_close(rows.to_dense(), dense)
    picked = torch.tensor([5, 3, 5, 0])
    torch.testing.assert_close(rows.select(picked).to_dense(), dense[picked])
    position, entry = rows.expand(picked)
    rebuilt = torch.zeros(len(picked), dense.shape[1])
    rebuilt[position, rows.col[entry]] = rows.value[entry]
    torch.testing.assert_close(rebuilt, dense[picked])


@pytest.mark.parametrize("n_batch", [1, 3])
def test_sparse_encoder_equals_dense_encoder_with_gradients(n_batch):
    torch.manual_seed(0)
    x = torch.log1p(_sparse_counts(n_rows=16, n_cols=60))
    batch = torch.randint(0, n_batch, (16, 1))
    encoder = Encoder(60, 5, n_cat_list=[n_batch], n_hidden=32, dropout_rate=0.2, return_dist=True)
    column_major_(first_linear(encoder.encoder))
    assert first_linear(encoder.encoder).weight.t().is_contiguous()
    results = []
    for sparse in (False, True):
        encoder.zero_grad()
        torch.manual_seed(1)  # the same dropout draws and latent sample
        if sparse:
            qz, z = encoder_sparse(encoder, SparseRows.from_dense(x), batch)
        else:
            qz, z = encoder(x, batch)
        (qz.loc.square().sum() + qz.scale.sum() + z.sum()).backward()
        results.append((qz.loc.detach(), qz.scale.detach(), z.detach(), [p.grad.clone() for p in encoder.parameters()]))
    (loc, scale, z, grads), (loc_s, scale_s, z_s, grads_s) = results
    torch.testing.assert_close(loc_s, loc)
    torch.testing.assert_close(scale_s, scale)
    torch.testing.assert_close(z_s, z)
    for grad, grad_s in zip(grads, grads_s, strict=True):
        torch.testing.assert_close(grad_s, grad, rtol=1e-4, atol=1e-5)


def _mask_table(n_cols: int, partial: bool) -> torch.Tensor:
    table = torch.ones(2, n_cols)
    if partial:
        table[1, ::3] = 0.0  # panel 1 did not measure every third feature
    return table


@pytest.mark.parametrize("block_entries", [1 << 18, 64])  # one row block, or blocks of 2 rows (and a last of 1)
@pytest.mark.parametrize("partial", [False, True])
@pytest.mark.parametrize("likelihood", ["nb", "bernoulli"])
def test_pair_nll_equals_log_prob_of_repeated_rows(likelihood, partial, block_entries, monkeypatch):
    monkeypatch.setattr(_bernoulli_nll, "BLOCK_ENTRIES", block_entries)
    torch.manual_seed(0)
    counts = _sparse_counts(n_rows=10, n_cols=30)
    panel = torch.tensor([0, 1] * 5)
    cell = torch.tensor([0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 0, 1, 2, 5, 5, 9])  # cells decoded from several posteriors
    table = _mask_table(30, partial)
    first = torch.randn(len(cell), 30, requires_grad=True)
    second = torch.randn(30, requires_grad=True)
    third = torch.rand(len(cell), 1, requires_grad=True)
    if likelihood == "bernoulli":  # probabilities below 1e-6 and at 1: the clamp's zero gradient
        first.data[:, :4] = -40.0
        first.data[0, 5], second.data[5], third.data[0] = 40.0, 40.0, 1.0

    def distribution():
        if likelihood == "nb":
            return NegativeBinomial(mu=first.exp() * 5.0, theta=second.exp())
        return FactorBernoulli(first, second, third)

    reference = reconstruction_nll(distribution(), counts[cell], table, panel[cell], binarize=likelihood != "nb")
    fast = pair_nll(distribution(), counts, cell, table, panel, binarize=likelihood != "nb")
    torch.testing.assert_close(fast, reference, rtol=1e-5, atol=1e-4)
    weights = torch.rand(len(cell))
    inputs = (first, second) if likelihood == "nb" else (first, second, third)
    grads = [torch.autograd.grad((nll * weights).sum(), inputs) for nll in (reference, fast)]
    for grad, grad_fast in zip(*grads, strict=True):
        torch.testing.assert_close(grad_fast, grad, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("block_entries", [1 << 18, 40])
def test_open_nll_takes_its_open_entries_in_any_order(block_entries, monkeypatch):
    monkeypatch.setattr(_bernoulli_nll, "BLOCK_ENTRIES", block_entries)
    generator = torch.Generator().manual_seed(3)
    logits = torch.randn(9, 20, generator=generator, requires_grad=True)
    region = torch.randn(20, generator=generator, requires_grad=True)
    cell = torch.rand(9, 1, generator=generator, requires_grad=True)
    pair, col = (torch.rand(9, 20, generator=generator) < 0.3).nonzero(as_tuple=True)
    shuffled = torch.randperm(len(pair), generator=generator)
    results = []
    for order in (torch.arange(len(pair)), shuffled):
        nll = _bernoulli_nll.factor_bernoulli_open_nll(logits, region, cell, pair[order], col[order])
        results.append((nll, *torch.autograd.grad(nll.square().sum(), (logits, region, cell))))
    for sorted_value, shuffled_value in zip(*results, strict=True):
        torch.testing.assert_close(shuffled_value, sorted_value)
    # a mask of one row stands for every row
    row = (torch.rand(1, 20, generator=generator) < 0.7).float()
    broadcast, expanded = (
        _bernoulli_nll.factor_bernoulli_open_nll(logits, region, cell, pair, col, mask, row[0, col])
        for mask in (row, row.expand(9, 20).clone())
    )
    torch.testing.assert_close(broadcast, expanded)
    assert (broadcast != results[0][0]).any()  # the mask counts


def test_open_nll_blocks_rows_on_the_cpu_only_and_takes_no_rows():
    # on a GPU the whole array is one block: no per-block launches, no host read for the blocks' bounds
    assert _bernoulli_nll._block_rows(3072, 100_000, torch.device("cuda")) == 3072
    assert _bernoulli_nll._block_rows(3072, 100_000, torch.device("cpu")) == 2
    logits, region = torch.zeros(0, 20, requires_grad=True), torch.zeros(20, requires_grad=True)
    empty = torch.zeros(0, dtype=torch.long)
    nll = _bernoulli_nll.factor_bernoulli_open_nll(logits, region, torch.ones(0, 1), empty, empty)
    nll.sum().backward()
    assert nll.shape == (0,) and torch.equal(region.grad, torch.zeros(20))


def test_module_sparse_path_equals_dense_path():
    mdata = pengster.data.synthetic_mosaic(n_cells={"multiome": 60, "cite": 40}, gene_overlap=0.8, seed=2)
    mdata.mod["atac"] = mdata.mod["atac"][:, np.asarray(mdata.mod["atac"].X.sum(0)).ravel() > 0].copy()
    pengster.model.JointVAE.setup_mudata(
        mdata, modalities={"rna_layer": "rna", "atac_layer": "atac", "protein_layer": "prot"}, batch_key="batch"
    )
    model = pengster.model.JointVAE(mdata, n_hidden=32, n_latent=6)
    assert not bool((model.module.feature_mask_rna == 1).all())  # the masks are exercised
    module = model.module.train()
    loader = loader_from_manager(
        model.adata_manager, indices=np.arange(100), strata=np.zeros(100), batch_size=100, device="cpu",
        binary_keys=("x_atac",),
    )  # fmt: skip
    tensors = next(iter(loader))
    results = {}
    state = {key: value.clone() for key, value in module.state_dict().items()}
    for sparse in (False, True):
        module.load_state_dict(state)  # training moves the running mean of the cell factor
        module.use_sparse = sparse
        module.zero_grad()
        torch.manual_seed(0)
        inference, _, loss = module(tensors, loss_kwargs={"kl_weight": 0.5})
        loss.loss.backward()
        grads = {name: p.grad.clone() for name, p in module.named_parameters() if p.grad is not None}
        results[sparse] = (loss.loss.detach(), inference["z"].detach(), inference["cell_factor"].detach(), grads)
    (loss, z, factor, grads), (loss_s, z_s, factor_s, grads_s) = results[False], results[True]
    torch.testing.assert_close(loss_s, loss, rtol=1e-5, atol=1e-3)
    torch.testing.assert_close(z_s, z)
    torch.testing.assert_close(factor_s, factor)
    assert grads_s.keys() == grads.keys()
    for name, grad in grads.items():
        # the bias before a batch norm has a gradient of exactly 0 in theory: compare on the scale of the weights
        tolerance = 1e-4 * max(float(grad.abs().max()), float(grads[name.replace("bias", "weight")].abs().max()))
        torch.testing.assert_close(grads_s[name], grad, rtol=1e-3, atol=tolerance, msg=name)


def test_train_fast_uses_fused_adam_and_sparse_path_fast_false_the_dense_reference(monkeypatch):
    mdata = pengster.data.synthetic_mosaic(n_cells={"multiome": 40}, n_genes=50, n_peaks=60, seed=1)
    pengster.model.JointVAE.setup_mudata(
        mdata, modalities={"rna_layer": "rna", "atac_layer": "atac"}, batch_key="batch"
    )
    model = pengster.model.JointVAE(mdata, n_hidden=16, n_latent=4)
    calls = []
    original = pengster.nn._sparse.encoder_sparse
    monkeypatch.setattr("pengster.module._sparse_inputs.encoder_sparse", lambda *a: calls.append(1) or original(*a))
    for fast in (True, False):
        calls.clear()
        model.train(max_epochs=1, fast=fast, accelerator="cpu", enable_progress_bar=False, early_stopping=False)
        optimizer = model.trainer.optimizers[0]
        assert optimizer.defaults["fused"] is (True if fast else None)
        assert bool(calls) is fast  # the sparse encoders ran only on the fast path
        assert model.module.use_sparse is None  # the switch is restored after training


@pytest.mark.parametrize("optimizer_cls", [torch.optim.Adam, torch.optim.AdamW])
def test_fused_adam_updates_column_major_weights_through_their_transposes(optimizer_cls, monkeypatch):
    from pengster.model._plan import _transposing

    contiguous = []
    kernels = {name: getattr(torch, name) for name in ("_fused_adam_", "_fused_adamw_")}
    for name in kernels:

        def spy(params, *args, name=name, **kwargs):
            contiguous.append([p.is_contiguous() for p in params])
            return kernels[name](params, *args, **kwargs)

        monkeypatch.setattr(torch, name, spy)
    torch.manual_seed(0)
    weights = [torch.randn(6, 40), torch.randn(40, 6).t(), torch.randn(5)]  # row-major, column-major, a vector
    runs = []
    for cls in (optimizer_cls, _transposing(optimizer_cls)):
        params = [
            torch.nn.Parameter(w.clone().t().contiguous().t() if not w.is_contiguous() else w.clone()) for w in weights
        ]
        optimizer = cls(params, lr=0.1, weight_decay=0.01, fused=True)
        for step in range(3):
            for p in params:
                p.grad = torch.sin(p.detach() * (step + 1)).clone(memory_format=torch.preserve_format)
            optimizer.step()
        runs.append([p.detach().clone() for p in params])
        assert not params[1].is_contiguous()  # still column-major, updated in place through its transpose
    for plain, transposed in zip(*runs, strict=True):
        torch.testing.assert_close(transposed, plain, rtol=0, atol=0)
    # the plain optimizer hands the kernel the column-major weight (which it copies), the other its transpose
    assert contiguous[0] == [True, False, True] and contiguous[-1] == [True, True, True]
    # a module-level class: the optimizer pickles (Lightning and users may copy or pickle a trainer)
    restored = pickle.loads(pickle.dumps(optimizer))
    assert type(restored) is type(optimizer) and issubclass(type(restored), optimizer_cls)
    torch.testing.assert_close(
        restored.state_dict()["state"][1]["exp_avg"], optimizer.state_dict()["state"][1]["exp_avg"]
    )


def test_transposing_optimizer_accepts_an_init_group_with_flags():
    from pengster.model._plan import _transposing

    class OldAdamW(torch.optim.Adam):  # torch < 2.7: AdamW._init_group(group, params, grads, amsgrad, ...)
        def _init_group(self, group, params, grads, amsgrad, *state):
            return super()._init_group(group, params, grads, *state)

        def step(self):
            for group in self.param_groups:
                lists = [], [], [], [], [], []
                self._init_group(group, lists[0], lists[1], group["amsgrad"], *lists[2:])
                self.seen = lists

    weight = torch.nn.Parameter(torch.randn(4, 3).t())
    weight.grad = torch.randn(4, 3).t()
    optimizer = _transposing(OldAdamW)([weight], fused=True)
    optimizer.step()
    assert optimizer.seen[0][0].is_contiguous()  # the column-major weight went to the kernel transposed
