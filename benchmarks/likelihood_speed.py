"""Forward + backward time of scvi-tools' count likelihoods against pengster's, which evaluate lgamma at non-zeros only.

One torch thread. Each step builds the distribution from leaf parameters, scores the counts as pengster's loss does,
``-(px.log_prob(x) * mask).sum(-1).mean()``, and back-propagates to ``mu``, ``log theta`` and the logits. The
contenders alternate within each repetition, so that load from other processes on the machine falls on all of them;
the times are the median process CPU seconds per step (CPU time, not wall time, for the same reason).

pengster's classes are timed three ways: ``found``, ``px.log_prob(x)`` (on the CPU, log_prob finds the non-zero
counts itself: what pengster's loss gets without a change); ``given``, ``px.log_prob(x, nonzero=...)`` with the
indices computed beforehand (by a data loader); ``dense``, lgamma at every entry (what runs on an accelerator when no
indices are given).

    OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 python benchmarks/likelihood_speed.py   # about 1 min of CPU time

Writes ``benchmarks/results/likelihood_speed.json``.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import platform
import statistics
import subprocess
import time
from pathlib import Path

import scvi
import scvi.distributions as scvi_distributions
import torch

from pengster.distributions import (
    SparseNegativeBinomial,
    SparseNegativeBinomialMixture,
    SparseZeroInflatedNegativeBinomial,
)
from pengster.distributions._sparse_counts import _NonzeroEntries

RESULTS = Path(__file__).resolve().parent / "results"
# (likelihood, posterior draws, n_cells, n_features, fraction of zero counts)
CASES = [
    *(("nb", 1, 256, n_genes, 0.9) for n_genes in (2_000, 5_000, 20_000)),
    *(("zinb", 1, 256, n_genes, 0.9) for n_genes in (2_000, 5_000, 20_000)),
    ("nb", 3, 256, 5_000, 0.9),
    ("nb", 1, 256, 5_000, 0.5),
    ("mixture", 1, 256, 250, 0.3),
    ("mixture", 1, 256, 2_000, 0.9),
]
CLASSES = {
    "nb": (scvi_distributions.NegativeBinomial, SparseNegativeBinomial),
    "zinb": (scvi_distributions.ZeroInflatedNegativeBinomial, SparseZeroInflatedNegativeBinomial),
    "mixture": (scvi_distributions.NegativeBinomialMixture, SparseNegativeBinomialMixture),
}


def cpu_model() -> str:
    """``lscpu``'s model name."""
    for line in subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout.splitlines():
        if line.startswith("Model name:"):
            return line.split(":", 1)[1].strip()
    return platform.processor()


def inputs(likelihood: str, draws: int, n_cells: int, n_features: int, zeros: float, seed: int = 0):
    """Leaf parameters, counts with ``zeros`` of them 0, and a feature mask with a tenth of the features masked."""
    generator = torch.Generator().manual_seed(seed)
    shape = (draws, n_cells, n_features) if draws > 1 else (n_cells, n_features)
    rate = torch.rand(shape, generator=generator) * 5
    counts = torch.poisson(rate[0] if draws > 1 else rate, generator=generator)
    counts = counts.clamp_min(1) * (torch.rand(n_cells, n_features, generator=generator) >= zeros)
    mask = (torch.rand(n_features, generator=generator) > 0.1).float().expand(n_cells, n_features)
    params = {"mu": rate, "log_theta": torch.randn(n_features, generator=generator) * 0.5}
    if likelihood != "nb":
        params["logits"] = torch.randn(shape, generator=generator)
    return {k: v.requires_grad_() for k, v in params.items()}, counts, mask


def build(cls, likelihood: str, params):
    theta = params["log_theta"].exp()
    if likelihood == "nb":
        return cls(mu=params["mu"], theta=theta, scale=None, validate_args=False)
    if likelihood == "zinb":
        return cls(mu=params["mu"], theta=theta, zi_logits=params["logits"], scale=None, validate_args=False)
    mu2 = params["mu"] * 3
    return cls(mu1=params["mu"], mu2=mu2, theta1=theta, mixture_logits=params["logits"], validate_args=False)


@contextlib.contextmanager
def lgamma_everywhere():
    """The path an accelerator takes without ``nonzero``: lgamma at every entry."""
    found = _NonzeroEntries.of
    _NonzeroEntries.of = classmethod(lambda cls, distribution, value, nonzero: None)
    try:
        yield
    finally:
        _NonzeroEntries.of = found


def step(cls, likelihood, params, counts, mask, **log_prob_kwargs) -> float:
    """CPU seconds of one forward + backward pass."""
    for p in params.values():
        p.grad = None
    start = time.process_time()
    px = build(cls, likelihood, params)
    loss = -(px.log_prob(counts, **log_prob_kwargs) * mask).sum(-1).mean()
    loss.backward()
    return time.process_time() - start


def time_case(likelihood, draws, n_cells, n_features, zeros, repeats) -> dict:
    scvi_cls, ours_cls = CLASSES[likelihood]
    params, counts, mask = inputs(likelihood, draws, n_cells, n_features, zeros)
    nonzero = counts.nonzero(as_tuple=True)
    contenders = {
        "scvi": lambda: step(scvi_cls, likelihood, params, counts, mask),
        "found": lambda: step(ours_cls, likelihood, params, counts, mask),
        "given": lambda: step(ours_cls, likelihood, params, counts, mask, nonzero=nonzero),
    }

    def dense():
        with lgamma_everywhere():
            return step(ours_cls, likelihood, params, counts, mask)

    def find_nonzero():
        start = time.process_time()
        counts.nonzero(as_tuple=True)
        return time.process_time() - start

    contenders["dense"] = dense
    contenders["nonzero_call"] = find_nonzero
    times = {name: [] for name in contenders}
    for run in contenders.values():
        run()  # warm-up
    for _ in range(repeats):
        for name, run in contenders.items():
            times[name].append(run())
    median = {name: statistics.median(values) for name, values in times.items()}
    return {
        "likelihood": likelihood,
        "posterior_draws": draws,
        "n_cells": n_cells,
        "n_features": n_features,
        "zeros": round(float((counts == 0).float().mean()), 3),
        "repeats": repeats,
        "cpu_s": {name: round(value, 5) for name, value in median.items()},
        "speedup_vs_scvi": {name: round(median["scvi"] / median[name], 2) for name in ("found", "given", "dense")},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=4)
    parser.add_argument("--out", type=Path, default=RESULTS / "likelihood_speed.json")
    args = parser.parse_args()
    torch.set_num_threads(1)
    started = time.perf_counter()
    records = []
    for case in CASES:
        record = time_case(*case, repeats=args.repeats)
        records.append(record)
        print(json.dumps(record), flush=True)
    report = {
        "what": "median CPU seconds of one forward + backward pass of -(px.log_prob(x) * mask).sum(-1).mean(); "
        "speedup_vs_scvi = scvi-tools' time / pengster's (found: log_prob finds the non-zero counts on the CPU; "
        "given: nonzero= passed; dense: lgamma everywhere, as on an accelerator without nonzero=)",
        "machine": {
            "cpu": cpu_model(),
            "torch_threads": torch.get_num_threads(),
            "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"),
            "MKL_NUM_THREADS": os.environ.get("MKL_NUM_THREADS"),
            "cores_online": os.cpu_count(),
            "load_average_at_end": [round(x, 2) for x in os.getloadavg()],
            "torch": torch.__version__,
            "scvi-tools": scvi.__version__,
            "python": platform.python_version(),
        },
        "date": datetime.date.today().isoformat(),
        "wall_s": round(time.perf_counter() - started, 1),
        "results": records,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out} in {report['wall_s']} s")


if __name__ == "__main__":
    main()
