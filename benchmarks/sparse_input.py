"""The ATAC encoder's first layer on a CPU: dense matrix product against an embedding bag over the open peaks.

An encoder's first layer multiplies a (cells x peaks) input by a (peaks x hidden) weight; with a few percent of the
peaks open, summing the weight rows of the open peaks (``torch.nn.functional.embedding_bag``) does a few percent of
the multiply-adds. This measures whether that pays, forward and backward, for the layer pengster uses (scvi-tools'
``FCLayers``: linear, layer norm, ReLU, dropout; its weight is ``(hidden, peaks + covariates)``, so the bag reads a
transposed copy), at several densities, in the same process, one torch thread. The two paths must give the same
values and gradients (checked).

Run (writes benchmarks/results/sparse_input.json and .md)::

    OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 .venv/bin/python benchmarks/sparse_input.py
"""

from __future__ import annotations

import json
import platform
import time
from datetime import UTC, datetime
from pathlib import Path

import torch
import torch.nn.functional as F
from scvi.nn import FCLayers

RESULTS = Path(__file__).resolve().parent / "results"
N_CELLS, N_PEAKS, N_HIDDEN, N_PANELS = 256, 20_000, 256, 2
DENSITIES = (0.004, 0.01, 0.02, 0.04)
REPEATS = 10


def sparse_forward(layers: FCLayers, columns, values, offsets, panel_one_hot) -> torch.Tensor:
    """``layers(x, panel)`` with the first linear layer as an embedding bag over the non-zero entries of ``x``."""
    linear, *rest = layers.fc_layers[0]
    weight = linear.weight
    table = weight[:, :N_PEAKS].t().contiguous()  # rows of the bag: one per peak
    out = F.embedding_bag(columns, table, offsets, mode="sum", per_sample_weights=values, include_last_offset=True)
    out = out + panel_one_hot @ weight[:, N_PEAKS:].t() + linear.bias
    for layer in rest:
        if layer is not None:
            out = layer(out)
    return out


def measure(density: float) -> dict:
    torch.manual_seed(0)
    layers = FCLayers(N_PEAKS, N_HIDDEN, n_cat_list=[N_PANELS], n_layers=1, n_hidden=N_HIDDEN, dropout_rate=0.0,
                      use_batch_norm=False, use_layer_norm=True)  # fmt: skip
    open_peaks = (torch.rand(N_CELLS, N_PEAKS) < density).float()
    x = torch.log1p(open_peaks / open_peaks.sum(1, keepdim=True).clamp_min(1.0) * 1e4)
    panel = torch.zeros(N_CELLS, 1, dtype=torch.long)
    one_hot = F.one_hot(panel.view(-1), N_PANELS).float()

    def dense():
        return layers(x, panel)

    def sparse():
        # the input's non-zero entries are found in the step, as a loader's dense minibatch would need
        rows, columns = x.nonzero(as_tuple=True)
        offsets = torch.cat([rows.new_zeros(1), torch.bincount(rows, minlength=N_CELLS).cumsum(0)])
        return sparse_forward(layers, columns, x[rows, columns], offsets, one_hot)

    record = {"density": density}
    outputs = {}
    for name, forward in (("dense", dense), ("sparse", sparse)):
        layers.zero_grad()
        out = forward()
        out.square().sum().backward()
        outputs[name] = (out.detach(), layers.fc_layers[0][0].weight.grad.clone())
        start = time.process_time()
        for _ in range(REPEATS):
            layers.zero_grad()
            forward().square().sum().backward()
        record[f"{name}_ms"] = round((time.process_time() - start) / REPEATS * 1000, 1)
    for dense_value, sparse_value in zip(outputs["dense"], outputs["sparse"], strict=True):
        torch.testing.assert_close(sparse_value, dense_value, rtol=1e-4, atol=1e-4)
    record["sparse_over_dense"] = round(record["sparse_ms"] / record["dense_ms"], 2)
    return record


def main() -> None:
    torch.set_num_threads(1)
    records = [measure(density) for density in DENSITIES]
    settings = {"date": datetime.now(UTC).strftime("%Y-%m-%d"), "torch": torch.__version__, "threads": 1,
                "machine": platform.processor() or platform.machine(), "n_cells": N_CELLS, "n_peaks": N_PEAKS,
                "n_hidden": N_HIDDEN, "repeats": REPEATS}  # fmt: skip
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "sparse_input.json").write_text(json.dumps({"settings": settings, "runs": records}, indent=1) + "\n")
    lines = [
        "# The ATAC encoder's first layer: dense product or embedding bag (CPU)",
        "",
        f"Measured {settings['date']} with torch {settings['torch']}, one torch thread, CPU seconds per forward and "
        f"backward pass of scvi-tools' `FCLayers` ({N_CELLS} cells x {N_PEAKS:,} peaks -> {N_HIDDEN} hidden units), "
        f"mean of {REPEATS}; produced by `benchmarks/sparse_input.py`. Both paths give the same values and gradients. "
        "The dense product does the same work in every row: its spread between rows is the noise of a machine that "
        "ran other jobs at the same time, so compare within a row.",
        "",
        "| open peaks | dense ms | embedding bag ms | bag / dense |",
        "|---:|---:|---:|---:|",
        *[f"| {r['density']:.1%} | {r['dense_ms']} | {r['sparse_ms']} | {r['sparse_over_dense']} |" for r in records],
        "",
    ]
    (RESULTS / "sparse_input.md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
