"""Time and memory of differential accessibility on many cells and peaks: pengster next to MULTIVI, same data, same run.

Synthetic multiome data from ``benchmarks/speed_data.py`` (4,000 genes at 8% nonzero, peaks at 4% nonzero, 10 cell
types). Each method runs in its own process per size: generate the data, set the model up, then one
``differential_accessibility`` of one cell type against all other cells at the methods' defaults (5,000 posterior
samples per group, ``mode="change"``). The models are not trained: a read-out costs the same with any weights, so each
model is marked trained (``is_trained_ = True``) to save the training time; the numbers are costs, not results.

Recorded per run: wall and CPU seconds of the call; the process's resident memory before it; the peak resident memory
during it (Linux ``VmHWM`` after resetting it through ``/proc/self/clear_refs``); and the peak of the whole process
(``resource.getrusage``, which includes generating the data).

Run (writes benchmarks/results/differential_scale.json and .md)::

    OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 .venv/bin/python benchmarks/differential_scale.py
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
import warnings
from datetime import UTC, datetime
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
METHODS = ("pengster", "multivi")
# (cells, peaks): cells grow at 20k peaks, peaks grow at 20k cells, and the target size of 100k x 100k
SIZES = ((20_000, 10_000), (20_000, 20_000), (60_000, 20_000), (100_000, 20_000), (100_000, 100_000))
TIMEOUT_S = 3600


def _status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def run_one(spec: dict) -> dict:
    """Set ``spec['method']`` up on synthetic data and time one differential_accessibility call."""
    import scvi
    import torch

    torch.set_num_threads(1)
    warnings.filterwarnings("ignore")
    sys.path.insert(0, str(HERE))
    import speed_data

    scvi.settings.seed = 0
    mdata = speed_data.multiome(spec["n_cells"], spec["n_peaks"], seed=0)
    if spec["method"] == "pengster":
        import pengster

        pengster.model.JointVAE.setup_mudata(mdata, modalities={"rna_layer": "rna", "atac_layer": "atac"},
                                             batch_key="batch")  # fmt: skip
        model = pengster.model.JointVAE(mdata)
        version = pengster.__version__
    else:
        scvi.model.MULTIVI.setup_mudata(mdata, modalities={"rna_layer": "rna", "atac_layer": "atac"}, batch_key="batch")
        model = scvi.model.MULTIVI(mdata, n_genes=mdata["rna"].n_vars, n_regions=mdata["atac"].n_vars)
        version = scvi.__version__
    model.is_trained_ = True
    rss_before_mb = _status_kb("VmRSS") / 1024
    # resets VmHWM (the peak resident memory) to the current RSS: the peak below is that of the call
    Path("/proc/self/clear_refs").write_text("5")
    wall, cpu = time.perf_counter(), time.process_time()
    table = model.differential_accessibility(groupby="cell_type", group1="type0")
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    return {
        "method": spec["method"],
        "version": version,
        "n_cells": spec["n_cells"],
        "n_peaks": spec["n_peaks"],
        "n_genes": int(mdata["rna"].n_vars),
        "rows": len(table),
        "seconds": round(wall, 1),
        "cpu_seconds": round(cpu, 1),
        "rss_before_mb": round(rss_before_mb),
        "peak_rss_during_mb": round(_status_kb("VmHWM") / 1024),
        "peak_rss_process_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
    }


def run_subprocess(spec: dict) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    try:
        done = subprocess.run([sys.executable, __file__, "--one", json.dumps(spec)], capture_output=True, text=True,
                              env=env, timeout=TIMEOUT_S)  # fmt: skip
    except subprocess.TimeoutExpired:
        return {**spec, "error": f"did not finish in {TIMEOUT_S} s"}
    lines = [line for line in done.stdout.splitlines() if line.startswith("RECORD ")]
    if done.returncode != 0 or not lines:
        return {
            **spec,
            "error": done.stderr.strip().splitlines()[-1] if done.stderr.strip() else f"exit {done.returncode}",
        }
    return json.loads(lines[-1][len("RECORD ") :])


def markdown(results: dict) -> str:
    s = results["settings"]
    lines = [
        "# Differential accessibility at scale",
        "",
        f"pengster {s['pengster']}, scvi-tools {s['scvi_tools']} (MULTIVI), measured {s['date']} on a 2-core CPU "
        "machine shared with other jobs (1 torch thread per process; wall time depends on the load, CPU time less so). "
        "Produced by `benchmarks/differential_scale.py`; every number is in `differential_scale.json`.",
        "",
        "One `differential_accessibility` of one cell type (about a tenth of the cells) against all other cells, at "
        "each method's defaults, on synthetic multiome data (`benchmarks/speed_data.py`: 4,000 genes, peaks 4% "
        "nonzero). The models are untrained and marked trained (`is_trained_ = True`): a read-out costs the same with "
        "any weights. Each run is its own process. Memory in GB: resident before the call (data and model), peak "
        "during the call, and the peak of the whole process (`getrusage`, including generating the data).",
        "",
        "| cells | peaks | method | wall s | CPU s | GB before | GB peak during call | GB peak of process |",
        "|---:|---:|---|---:|---:|---:|---:|---:|",
    ]
    for r in results["runs"]:
        if "error" in r:
            lines.append(f"| {r['n_cells']:,} | {r['n_peaks']:,} | {r['method']} | {r['error']} | | | | |")
            continue
        lines.append(
            f"| {r['n_cells']:,} | {r['n_peaks']:,} | {r['method']} | {r['seconds']:.0f} | {r['cpu_seconds']:.0f} | "
            f"{r['rss_before_mb'] / 1024:.2f} | {r['peak_rss_during_mb'] / 1024:.2f} | "
            f"{r['peak_rss_process_mb'] / 1024:.2f} |"
        )
    lines += ["", *growth(results["runs"]), ""]
    return "\n".join(lines)


def growth(runs: list[dict]) -> list[str]:
    """How the memory the call adds (peak during it minus resident before it) grows with cells and with peaks."""
    done = [r for r in runs if "error" not in r]
    lines = ["Memory the call adds (GB, peak during the call minus resident before it):", ""]
    for method in METHODS:
        added = ", ".join(
            f"{(r['peak_rss_during_mb'] - r['rss_before_mb']) / 1024:.2f} at {r['n_cells']:,} x {r['n_peaks']:,}"
            for r in done
            if r["method"] == method
        )
        lines.append(f"- {method}: {added}")
    lines += [
        "",
        "Both methods run scvi-tools' test, which draws 5,000 posterior samples per group and pairs 10,000 of them: "
        "arrays of samples x peaks, whatever the number of cells. Their memory grows with the peaks, not with the "
        "cells.",
    ]
    return lines


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--one", help=argparse.SUPPRESS)
    parser.add_argument("--sizes", nargs="+", help="CELLSxPEAKS, e.g. 20000x20000")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--add", action="store_true", help="keep the runs of the existing results at other sizes")
    parser.add_argument("--report", action="store_true", help="only rewrite the .md from the existing .json")
    args = parser.parse_args(argv)
    if args.one:
        print("RECORD " + json.dumps(run_one(json.loads(args.one))), flush=True)
        return
    if args.report:
        results = json.loads((args.out / "differential_scale.json").read_text())
        (args.out / "differential_scale.md").write_text(markdown(results))
        return
    import scvi

    import pengster

    sizes = [tuple(int(n) for n in size.split("x")) for size in args.sizes] if args.sizes else SIZES
    runs = []
    previous = args.out / "differential_scale.json"
    if args.add and previous.exists():
        runs = [r for r in json.loads(previous.read_text())["runs"] if (r["n_cells"], r["n_peaks"]) not in sizes]
    for n_cells, n_peaks in sizes:
        for method in METHODS:
            record = run_subprocess({"method": method, "n_cells": n_cells, "n_peaks": n_peaks})
            print(json.dumps(record), flush=True)
            runs.append(record)
    results = {
        "settings": {"pengster": pengster.__version__, "scvi_tools": scvi.__version__,
                     "date": datetime.now(UTC).strftime("%Y-%m-%d"), "threads": 1},
        "runs": sorted(runs, key=lambda r: (r["n_peaks"], r["n_cells"], METHODS.index(r["method"]))),
    }  # fmt: skip
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "differential_scale.json").write_text(json.dumps(results, indent=1) + "\n")
    (args.out / "differential_scale.md").write_text(markdown(results))


if __name__ == "__main__":
    main()
