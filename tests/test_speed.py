from __future__ import annotations

from pathlib import Path

import anndata as ad
import numpy as np
import pytest
import torch
from scipy import sparse

from pengster.dataloaders import DeviceMinibatchLoader
from pengster.dataloaders._device_loader import _rank_share
from pengster.train import auto_batch_size, scaled_lr
from pengster.train._options import BASE_LR


def _counts(n_cells=300, n_features=50, density=0.1, seed=0):
    rng = np.random.default_rng(seed)
    matrix = sparse.random(n_cells, n_features, density=density, format="csr", random_state=seed, dtype=np.float32)
    matrix.data = rng.integers(1, 6, size=matrix.nnz).astype(np.float32)
    return matrix


def _epoch_rows(loader) -> np.ndarray:
    return np.concatenate([batch["row"].numpy().ravel() for batch in loader]).astype(int)


def test_device_loader_rows_equal_the_matrix_in_memory_and_backed(tmp_path):
    matrix = _counts()
    dense = matrix.toarray()
    ad.AnnData(X=matrix).write_h5ad(tmp_path / "x.h5ad")
    backed = ad.read_h5ad(tmp_path / "x.h5ad", backed="r")
    obs = {"row": np.arange(matrix.shape[0])}
    train = np.sort(np.random.default_rng(1).choice(matrix.shape[0], 200, replace=False))
    for source, resident in ((matrix, True), (backed.X, False)):
        loader = DeviceMinibatchLoader(
            {"x": source}, obs, indices=train, strata=np.zeros(300), batch_size=32, device="cpu",
            resident=resident, chunk_cells=64, seed=3,
        )  # fmt: skip
        rows, seen = [], []
        for batch in loader:
            batch_rows = batch["row"].numpy().ravel().astype(int)
            np.testing.assert_array_equal(batch["x"].numpy(), dense[batch_rows])
            rows.append(batch_rows)
            seen.append(len(batch_rows))
        rows = np.concatenate(rows)
        # every training cell exactly once per epoch, no validation cell
        assert sorted(rows) == sorted(train)
        assert len(seen) == len(loader)
    backed.file.close()


def test_chunked_epochs_shuffle_chunk_order():
    matrix = _counts(n_cells=400)
    loader = DeviceMinibatchLoader(
        {"x": matrix}, {"row": np.arange(400)}, indices=np.arange(400), strata=np.zeros(400), batch_size=50,
        device="cpu", resident=False, chunk_cells=100, seed=0,
    )  # fmt: skip
    first, second = _epoch_rows(loader), _epoch_rows(loader)
    assert sorted(first) == sorted(second) == list(range(400))
    assert not np.array_equal(first, second)
    # minibatches stay inside one contiguous chunk
    for batch in loader:
        chunk = batch["row"].numpy().ravel() // 100
        assert len(np.unique(chunk)) == 1


def test_binary_source_drops_explicit_zeros():
    matrix = _counts()
    matrix.data[::3] = 0  # explicit zeros stay stored in the CSR arrays
    loader = DeviceMinibatchLoader(
        {"x": matrix}, {"row": np.arange(300)}, indices=np.arange(300), strata=np.zeros(300), batch_size=300,
        device="cpu", shuffle=False, binary_keys=("x",),
    )  # fmt: skip
    batch = next(iter(loader))
    np.testing.assert_array_equal(batch["x"].numpy(), (matrix.toarray() > 0).astype(np.float32))


@pytest.mark.parametrize("binary", [False, True])
def test_device_rows_equal_an_unsorted_csr_with_repeats_and_zeros(binary):
    matrix = _counts(n_cells=60)
    # a CSR that is not canonical: reversed columns within rows, a repeated entry, stored zeros
    rows = np.repeat(np.arange(60), np.diff(matrix.indptr))
    indices, data = matrix.indices.copy(), matrix.data.copy()
    for row in range(60):
        start, stop = matrix.indptr[row], matrix.indptr[row + 1]
        indices[start:stop], data[start:stop] = indices[start:stop][::-1], data[start:stop][::-1]
    data[::4] = 0
    odd = sparse.csr_matrix((data, indices, matrix.indptr.copy()), shape=matrix.shape)
    odd = sparse.csr_matrix(
        (np.r_[odd.data, 2.0], (np.r_[rows, 7], np.r_[odd.indices, odd.indices[odd.indptr[7]]])), shape=odd.shape
    )
    odd.has_canonical_format = False
    odd.indices, odd.data = odd.indices.copy(), odd.data.copy()
    before = (odd.indptr.copy(), odd.indices.copy(), odd.data.copy())
    loader = DeviceMinibatchLoader(
        {"x": odd}, {"row": np.arange(60)}, indices=np.arange(60), strata=np.zeros(60), batch_size=25, device="cpu",
        seed=0, binary_keys=("x",) if binary else (),
    )  # fmt: skip
    for batch in loader:
        expected = odd.toarray()[batch["row"].numpy().ravel().astype(int)]
        np.testing.assert_array_equal(batch["x"].numpy(), (expected != 0) if binary else expected)
    for array, kept in zip((odd.indptr, odd.indices, odd.data), before, strict=True):
        np.testing.assert_array_equal(array, kept)  # the user's matrix is untouched


def test_ranks_take_equal_disjoint_shares():
    batches = [np.array([i]) for i in range(7)]
    shares = [_rank_share(batches, 2, rank, 4) for rank in (0, 1)]
    assert [len(s) for s in shares] == [4, 4]  # equal steps, or DDP hangs
    taken = {int(b[0]) for share in shares for b in share}
    assert taken == set(range(7))
    assert {int(b[0]) for b in shares[0][:4]} == {0, 2, 4, 6}


def test_mosaic_strata_in_every_device_minibatch():
    matrix = _counts(n_cells=300)
    strata = np.array([0] * 280 + [1] * 20)
    loader = DeviceMinibatchLoader(
        {"x": matrix}, {"row": np.arange(300)}, indices=np.arange(300), strata=strata, batch_size=64, device="cpu",
    )  # fmt: skip
    for batch in loader:
        assert set(strata[batch["row"].numpy().ravel().astype(int)]) == {0, 1}


@pytest.mark.parametrize("likelihood", ["nb", "zinb"])
def test_rna_decoder_decodes_dropout_logits_only_for_zinb(likelihood):
    from scvi.distributions import NegativeBinomial, ZeroInflatedNegativeBinomial

    from pengster.module import HeadInput
    from pengster.module._head import masked_normalize
    from pengster.module._rna import RNAHead

    torch.manual_seed(0)
    decoder = RNAHead(30, 4, [3], n_batch=3, n_hidden=8, n_layers=1, encoder_cats=[1], likelihood=likelihood)
    z, batch = torch.randn(5, 4), torch.tensor([[0], [1], [2], [0], [1]])
    library, mask = torch.full((5, 1), 100.0), (torch.rand(5, 30) < 0.8).float()
    calls = []
    decoder.decoder.px_dropout_decoder.register_forward_hook(lambda *args: calls.append(True))
    px = decoder(z, HeadInput([batch], mask, library))
    scale = px.scale
    # the same values as scvi-tools' DecoderSCVI forward, which always decodes the dropout logits
    expected_scale, _, _, expected_dropout = decoder.decoder("gene", z, torch.zeros(5, 1), batch)
    torch.testing.assert_close(scale, masked_normalize(expected_scale, mask))
    torch.testing.assert_close(px.mu, scale * library)
    if likelihood == "zinb":
        assert isinstance(px, ZeroInflatedNegativeBinomial) and len(calls) == 2
        torch.testing.assert_close(px.zi_logits, expected_dropout)
    else:  # the one call is DecoderSCVI's forward above
        assert not isinstance(px, ZeroInflatedNegativeBinomial) and isinstance(px, NegativeBinomial) and len(calls) == 1


def test_auto_batch_size_and_lr_rule():
    assert auto_batch_size(1_000) == 256 and auto_batch_size(25_000) == 256
    assert auto_batch_size(100_000) == 1024 and auto_batch_size(1_000_000) == 2048
    assert scaled_lr(256) == pytest.approx(BASE_LR) and scaled_lr(1024) == pytest.approx(2 * BASE_LR)
    assert scaled_lr(64) == pytest.approx(BASE_LR)


def test_speed_markdown_rewrites_the_table_and_keeps_the_notes(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1]))
    from benchmarks import speed

    record = dict.fromkeys(speed.FIELDS, None) | {
        "hardware": "cpu-2core", "dataset": "multiome", "n_cells": 10, "n_peaks": 5, "method": "multivi",
        "batch_size": 128, "cells_per_s": 100.0, "peak_rss_mb": 1,
    }  # fmt: skip
    path = tmp_path / "speed.md"
    speed.write_markdown(path, [record])
    assert path.read_text() == speed.markdown([record])
    path.write_text(path.read_text() + "\nNotes: measured on an idle machine.\n")
    faster = record | {"cells_per_s": 250.0}
    speed.write_markdown(path, [faster])
    text = path.read_text()
    assert text == speed.markdown([faster]) + "\nNotes: measured on an idle machine.\n"
    assert "| 250 |" in text and "| 100 |" not in text


def test_speed_trace_writes_the_profile_of_the_chosen_steps(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1] / "benchmarks"))
    from _trace import StepTrace

    import pengster

    mdata = pengster.data.synthetic_mosaic(n_cells={"multiome": 80}, n_genes=20, n_peaks=30, seed=0)
    pengster.model.JointVAE.setup_mudata(
        mdata, modalities={"rna_layer": "rna", "atac_layer": "atac"}, batch_key="batch"
    )
    model = pengster.model.JointVAE(mdata, n_hidden=8, n_latent=2)
    trace = StepTrace(tmp_path, "run", first=1, last=2)
    model.train(max_epochs=2, batch_size=16, accelerator="cpu", enable_progress_bar=False, callbacks=[trace])
    summary = (tmp_path / "run.txt").read_text()
    assert summary.startswith("2 training steps (batches 1-2 of epoch 1)")
    assert "Self CPU time total" in summary
    # the operator rows: torch's profiler has returned an empty table (with its total) in some runs on a loaded
    # machine; the benchmark reads the rows, this test checks the tool's files and header
    assert (tmp_path / "run.trace.json").stat().st_size > 0
