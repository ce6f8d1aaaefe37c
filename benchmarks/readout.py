"""Time and peak memory of pengster's read-outs against one training epoch and against MULTIVI's, on one CPU thread.

Read-outs: ``predict(target="atac", return_std=True)``, ``predict(target="rna", return_std=True)`` (default
read-out and draws), ``tl.write_results`` with its default targets, and with ATAC opted in. MULTIVI (scvi-tools):
``get_normalized_accessibility`` (scvi-tools 1.4's name for ``get_accessibility_estimates``) and
``get_normalized_expression``, defaults. Data: SNARE-seq2 (``pengster.datasets.mop_snareseq2``, 6,968 nuclei x
25,734 peaks, 1,677 genes) and a synthetic multiome of 100k cells x 100k peaks at SNARE-seq2's density (0.4%
nonzero; ``pengster.data.synthetic_mosaic``), 2,000 genes.

Times are CPU seconds of the measuring process (``time.process_time``; one torch/OpenMP thread, so they are its
work whatever share of a shared machine it got; wall seconds are in the JSON). Each measurement runs in its own
process (``--child``), so that its peak RSS (``getrusage``'s ``ru_maxrss``, which includes the data and the model
loaded before the read-out: reported as ``rss_before_mb``) is its own. Epoch time: SNARE-seq2, the second of 2 full
training epochs (all cells, no validation; the first holds start-up); 100k, the median time between
consecutive training steps over ``STEPS_100K`` steps, times the steps of one epoch (a full epoch on one thread
would take longer than the whole benchmark may). Models are trained briefly: read-out cost does not depend on
how well they are trained.

    OMP_NUM_THREADS=1 nice python benchmarks/readout.py            # writes benchmarks/results/readout.json/.md
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
SNARE_EPOCHS = 2
STEPS_100K = 5
N_100K = 100_000
PEAKS_100K = 100_000
GENES_100K = 2_000
DENSITY_100K = 0.004
MULTIVI_CELLS_100K = 2_000
"""MULTIVI's read-outs return dense cells x features frames (40 GB for 100k x 100k): at 100k they run on this many
cells and their time is scaled linearly to all cells (``scaled``)."""
PREDICT_ATAC_CELLS_100K = N_100K
"""At 100k cells, ``predict(target="atac")`` may be timed on the first this many cells (its work is per minibatch, so
its time scales linearly to all cells, ``scaled``; its peak memory does not depend on how many cells stream through),
for a machine too busy for the full 100k x 100k decode."""
ATAC_FEATURES_100K = 2_000
"""At 100k cells the opt-in ATAC ``write_results`` writes this many peaks (all 100k peaks are decoded): 100k cells x
100k peaks would be 40 GB of float32 for the prediction and as much for its std."""


def _clock() -> float:
    """CPU seconds of this process: one thread, so its work, whatever share of a shared machine's cores it got."""
    return time.process_time()


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class Sink:
    """An ``out=`` target that keeps a checksum of each block instead of the values (100k x 100k is 40 GB)."""

    def __init__(self, shape):
        self.shape = shape
        self.total = 0.0

    def __setitem__(self, rows, block):
        self.total += float(np.nansum(block))


def _load(spec: dict):
    import mudata as md
    import torch

    import pengster

    md.set_options(pull_on_update=False)
    torch.set_num_threads(1)
    if spec["dataset"] == "snareseq2":
        return pengster.datasets.mop_snareseq2()
    return md.read_h5mu(spec["h5mu"])


def _timer():
    from lightning.pytorch import Callback

    class Timer(Callback):
        def __init__(self):
            self.epochs, self.steps, self._start, self._last = [], [], None, None

        def on_train_epoch_start(self, trainer, module):
            self._start = _clock()

        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
            now = _clock()
            if self._last is not None and batch_idx > 0:
                self.steps.append(now - self._last)
            self._last = now

        def on_train_epoch_end(self, trainer, module):
            self.epochs.append(_clock() - self._start)
            self._last = None

    return Timer()


def _epoch_seconds(timer, n_cells: int, batch_size: int, full: bool) -> float:
    if full:
        return float(np.median(timer.epochs[1:] or timer.epochs))
    return float(np.median(timer.steps)) * int(np.ceil(n_cells / batch_size))


def train_pengster(spec: dict) -> dict:
    import pengster

    mdata = _load(spec)
    pengster.model.JointVAE.setup_mudata(
        mdata, modalities={"rna_layer": "rna", "atac_layer": "atac"}, batch_key="batch"
    )
    model = pengster.model.JointVAE(mdata)
    timer = _timer()
    full = spec["dataset"] == "snareseq2"
    limits = {} if full else {"limit_train_batches": STEPS_100K}
    batch_size = pengster.train.auto_batch_size(mdata.n_obs)
    model.train(
        max_epochs=SNARE_EPOCHS if full else 1,
        train_size=1.0,
        early_stopping=False,
        accelerator="cpu",
        enable_progress_bar=False,
        callbacks=[timer],
        **limits,
    )
    model.save(spec["model_dir"], overwrite=True)
    return {"seconds": _epoch_seconds(timer, mdata.n_obs, batch_size, full), "batch_size": batch_size}


def readout_pengster(spec: dict) -> dict:
    import pengster

    mdata = _load(spec)
    model = pengster.model.JointVAE.load(spec["model_dir"], adata=mdata, accelerator="cpu")
    before = _peak_mb()
    what = spec["what"]
    start, wall = _clock(), time.perf_counter()
    if what.startswith("predict_"):
        target = what.split("_")[1]
        n_features = mdata.mod[target].n_vars
        if spec["dataset"] == "snareseq2":
            model.predict(target=target, return_std=True)
        else:
            n_cells = min(mdata.n_obs, spec.get("n_cells") or mdata.n_obs)
            shape = (n_cells, n_features)
            model.predict(
                indices=np.arange(n_cells), target=target, return_std=True, out=Sink(shape), out_std=Sink(shape)
            )
            return {
                "seconds": _clock() - start,
                "wall_seconds": time.perf_counter() - wall,
                "rss_before_mb": before,
                "n_cells_run": n_cells,
                "scaled": n_cells < mdata.n_obs,
            }
    elif what == "write_results":
        pengster.tl.write_results(model, mdata)
    elif what == "write_results_atac":
        features = None
        if spec["dataset"] != "snareseq2":
            features = {"atac": list(mdata.mod["atac"].var_names[:ATAC_FEATURES_100K])}
        pengster.tl.write_results(model, mdata, targets=["rna", "atac"], features=features)
    return {"seconds": _clock() - start, "wall_seconds": time.perf_counter() - wall, "rss_before_mb": before}


def _multivi(spec: dict):
    import scvi

    mdata = _load(spec)
    scvi.model.MULTIVI.setup_mudata(mdata, modalities={"rna_layer": "rna", "atac_layer": "atac"}, batch_key="batch")
    return mdata, scvi.model.MULTIVI(mdata, n_genes=mdata["rna"].n_vars, n_regions=mdata["atac"].n_vars)


def train_multivi(spec: dict) -> dict:
    mdata, model = _multivi(spec)
    timer = _timer()
    full = spec["dataset"] == "snareseq2"
    limits = {} if full else {"limit_train_batches": STEPS_100K}
    model.train(
        max_epochs=SNARE_EPOCHS if full else 1,
        train_size=1.0,
        early_stopping=False,  # no validation cells (train_size=1.0), as pengster's epoch
        batch_size=128,
        accelerator="cpu",
        enable_progress_bar=False,
        callbacks=[timer],
        **limits,
    )
    return {"seconds": _epoch_seconds(timer, mdata.n_obs, 128, full), "batch_size": 128}


def readout_multivi(spec: dict) -> dict:
    mdata, model = _multivi(spec)
    model.is_trained_ = True  # an untrained model reads out at the same cost
    n_cells = min(mdata.n_obs, spec.get("n_cells") or mdata.n_obs)
    indices = np.arange(n_cells)
    before = _peak_mb()
    start, wall = _clock(), time.perf_counter()
    if spec["what"] == "accessibility":
        model.get_normalized_accessibility(indices=indices)
    else:
        model.get_normalized_expression(indices=indices)
    seconds, wall = _clock() - start, time.perf_counter() - wall
    scaled = n_cells < mdata.n_obs
    return {"seconds": seconds, "wall_seconds": wall, "n_cells_run": n_cells, "scaled": scaled, "rss_before_mb": before}


def make_100k(spec: dict) -> dict:
    import pengster

    if Path(spec["h5mu"]).exists():  # made by an earlier run in the same --work folder
        return {"seconds": 0.0, "reused": True}
    mdata = pengster.data.synthetic_mosaic(
        n_cells={"multiome": N_100K},
        n_genes=GENES_100K,
        n_peaks=PEAKS_100K,
        atac_density=DENSITY_100K,
        seed=0,
    )
    mdata.write(spec["h5mu"])
    atac = mdata.mod["atac"].X
    return {"seconds": 0.0, "density": atac.nnz / np.prod(atac.shape)}


KINDS = {
    "data": make_100k,
    "train_pengster": train_pengster,
    "readout_pengster": readout_pengster,
    "train_multivi": train_multivi,
    "readout_multivi": readout_multivi,
}


def child(spec: dict) -> None:
    result = KINDS[spec["kind"]](spec)
    result["peak_rss_mb"] = _peak_mb()
    print("RESULT " + json.dumps(result), flush=True)


def run(spec: dict, timeout: float) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    command = [sys.executable, __file__, "--child", json.dumps(spec)]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        return {**spec, "error": f"timed out after {timeout} s"}
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    if done.returncode or not lines:
        return {**spec, "error": done.stderr[-2000:]}
    return {**spec, **json.loads(lines[-1][len("RESULT ") :])}


def plan(work: Path, only: set[str] | None) -> list[dict]:
    specs = []
    for dataset in ("snareseq2", "synthetic_100k"):
        if only and dataset not in only:
            continue
        common = {"dataset": dataset, "h5mu": str(work / "synthetic_100k.h5mu"), "model_dir": str(work / dataset)}
        if dataset == "synthetic_100k":
            specs.append({**common, "kind": "data", "what": "data"})
        specs.append({**common, "kind": "train_pengster", "what": "epoch"})
        for what in ("predict_atac", "predict_rna", "write_results", "write_results_atac"):
            cells = (
                {"n_cells": PREDICT_ATAC_CELLS_100K} if dataset == "synthetic_100k" and what == "predict_atac" else {}
            )
            specs.append({**common, "kind": "readout_pengster", "what": what, **cells})
        specs.append({**common, "kind": "train_multivi", "what": "epoch"})
        subset = {"n_cells": MULTIVI_CELLS_100K} if dataset == "synthetic_100k" else {}
        for what in ("accessibility", "expression"):
            specs.append({**common, "kind": "readout_multivi", "what": what, **subset})
    return specs


def markdown(records: list[dict]) -> str:
    lines = [
        "# Read-out cost (CPU, one thread)",
        "",
        "Generated by `benchmarks/readout.py`; see its docstring for the method. `x epoch`: time over one training "
        "epoch of the same method on the same data; `x MULTIVI`: pengster's time over MULTIVI's corresponding "
        "read-out (accessibility for ATAC, expression for RNA). `(scaled)`: timed on a subset of the cells and scaled "
        f"linearly to all: MULTIVI's read-outs at 100k ran on {MULTIVI_CELLS_100K:,} cells (they return dense frames). "
        "At 100k, pengster's ATAC prediction is written into a sink that keeps a checksum (100k x 100k is 40 GB), and "
        f"`write_results_atac` writes {ATAC_FEATURES_100K:,} of the peaks (all are decoded). Epochs: SNARE-seq2 a full "
        f"epoch; 100k, {STEPS_100K} training steps scaled to an epoch. Times are CPU seconds of one thread; peak RSS "
        "includes the data and the model loaded before the read-out (`RSS before`).",
        "",
        "| data | method | what | seconds | x epoch | x MULTIVI | peak RSS (MB) | RSS before (MB) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for dataset in dict.fromkeys(r["dataset"] for r in records):
        rows = [r for r in records if r["dataset"] == dataset and r["kind"] != "data"]
        epoch = {r["kind"].split("_")[1]: r.get("seconds") for r in rows if r["kind"].startswith("train")}
        multivi = {
            r["what"]: r.get("all_cells_seconds", r.get("seconds")) for r in rows if r["kind"] == "readout_multivi"
        }
        for r in rows:
            if "error" in r:
                lines.append(f"| {dataset} | | {r['what']} | error: {r['error'][-120:]!r} | | | | |")
                continue
            method = r["kind"].split("_")[1]
            seconds = r.get("all_cells_seconds", r["seconds"])
            training = r["kind"].startswith("train") or not epoch.get(method)
            per_epoch = "" if training else f"{seconds / epoch[method]:.2f}"
            peer = {"predict_atac": "accessibility", "predict_rna": "expression"}.get(r["what"])
            versus = f"{seconds / multivi[peer]:.3f}" if method == "pengster" and multivi.get(peer) else ""
            scaled = " (scaled)" if r.get("scaled") else ""
            before = f"{r['rss_before_mb']:.0f}" if "rss_before_mb" in r else ""
            lines.append(
                f"| {dataset} | {method} | {r['what']} | {seconds:.1f}{scaled} | {per_epoch} | {versus} | "
                f"{r['peak_rss_mb']:.0f} | {before} |"
            )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--only", help="comma-separated datasets: snareseq2, synthetic_100k")
    parser.add_argument("--what", help="measurements to (re)run, e.g. train_multivi:epoch,predict_atac")
    parser.add_argument("--timeout", type=float, default=3600.0, help="wall seconds per measurement")
    parser.add_argument("--work", help="folder for the synthetic h5mu and the models (default: a temporary one)")
    args = parser.parse_args(argv)
    if args.child:
        child(json.loads(args.child))
        return
    work = Path(args.work or tempfile.mkdtemp(prefix="pengster_readout_"))
    work.mkdir(parents=True, exist_ok=True)
    datasets = set(args.only.split(",")) if args.only else {"snareseq2", "synthetic_100k"}
    specs = plan(work, datasets)
    if args.what:
        wanted = set(args.what.split(","))
        specs = [s for s in specs if s["kind"] == "data" or {s["what"], f"{s['kind']}:{s['what']}"} & wanted]
    saved = RESULTS / "readout.json"
    records = []
    for spec in specs:
        record = run(spec, args.timeout)
        if record.get("scaled"):
            record["all_cells_seconds"] = record["seconds"] * N_100K / record["n_cells_run"]
        record = {key: value for key, value in record.items() if key not in ("h5mu", "model_dir")}
        record["threads"] = 1
        print(json.dumps(record), flush=True)
        records.append(record)
        # the other measurements (of another run, e.g. the other data set in a second process) stay
        done = {_key(r) for r in records}
        others = [r for r in json.loads(saved.read_text()) if _key(r) not in done] if saved.exists() else []
        order = {_key(spec): i for i, spec in enumerate(plan(work, None))}
        everything = sorted(others + records, key=lambda r: order.get(_key(r), -1))
        RESULTS.mkdir(exist_ok=True)
        saved.write_text(json.dumps(everything, indent=1) + "\n")
        (RESULTS / "readout.md").write_text(markdown(everything))


def _key(record: dict) -> tuple:
    return record["dataset"], record["kind"], record["what"]


if __name__ == "__main__":
    main()
