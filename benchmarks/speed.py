"""Speed and memory of pengster vs MULTIVI (multiome) and TOTALVI (CITE-seq) on the same synthetic data and hardware.

Each (method, dataset, cells, batch size) runs in its own process, so that peak host RSS and peak GPU memory are its
own. Throughput is training cells over the median wall time of the training epochs after the first (which holds
start-up, data upload and compilation); validation is off for every method. GPU utilisation is the mean of NVML
samples every 50 ms over those epochs.

    python benchmarks/speed.py --preset cpu      # 2 cores, one torch thread: 5k cells, 20k peaks
    python benchmarks/speed.py --preset gpu      # one GPU: 100k peaks, 10k/100k cells, 1M cells for pengster
    python benchmarks/speed.py --preset gpu-precision --only fast,fast-bf16 --trace traces   # where a step's time goes

Results are appended to ``benchmarks/results/speed.json`` (a list of records) and rendered as ``speed.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
FIELDS = (
    "hardware",
    "dataset",
    "n_cells",
    "n_peaks",
    "method",
    "batch_size",
    "cells_per_s",
    "gpu_util",
    "peak_rss_mb",
    "peak_gpu_mb",
)


class Monitor:
    """Samples GPU utilisation (NVML) and host RSS every 50 ms while ``active``."""

    def __init__(self):
        self.active = False
        self.util: list[float] = []
        self.peak_rss = 0
        self._stop = False
        self._nvml = None
        try:
            import pynvml

            pynvml.nvmlInit()
            self._nvml = (pynvml, pynvml.nvmlDeviceGetHandleByIndex(0))
        except Exception:  # noqa: BLE001 - no GPU, no NVML: utilisation stays None
            self._nvml = None
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self):
        page = os.sysconf("SC_PAGE_SIZE")
        while not self._stop:
            with open("/proc/self/statm") as handle:
                self.peak_rss = max(self.peak_rss, int(handle.read().split()[1]) * page)
            if self.active and self._nvml is not None:
                pynvml, handle = self._nvml
                self.util.append(pynvml.nvmlDeviceGetUtilizationRates(handle).gpu)
            time.sleep(0.05)

    def stop(self):
        self._stop = True
        self._thread.join()


def _epoch_timer(monitor: Monitor):
    import lightning.pytorch as pl
    import torch

    class EpochTimer(pl.Callback):
        def __init__(self):
            self.times: list[float] = []
            self.cpu_times: list[float] = []
            self.cells: list[int] = []
            self._start = 0.0
            self._cpu_start = 0.0

        def _sync(self):
            if torch.cuda.is_available():
                torch.cuda.synchronize()

        def on_train_epoch_start(self, trainer, module):
            self._sync()
            self._start = time.perf_counter()
            self._cpu_start = time.process_time()
            self.cells.append(0)
            monitor.active = trainer.current_epoch > 0

        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
            self.cells[-1] += len(next(iter(batch.values())))

        def on_train_epoch_end(self, trainer, module):
            self._sync()
            self.times.append(time.perf_counter() - self._start)
            self.cpu_times.append(time.process_time() - self._cpu_start)
            monitor.active = False

    return EpochTimer()


def _data(spec: dict):
    sys.path.insert(0, str(HERE))
    import speed_data

    if spec.get("h5mu"):
        import mudata as md

        path = Path(spec["h5mu"])
        if not path.exists():
            speed_data.write_multiome_h5mu(path, spec["n_cells"], spec["n_peaks"], seed=spec["seed"])
        return md.read_h5mu(path, backed=True)
    if spec["dataset"] == "cite":
        return speed_data.cite(spec["n_cells"], seed=spec["seed"])
    return speed_data.multiome(spec["n_cells"], spec["n_peaks"], seed=spec["seed"])


def _trace_callbacks(spec: dict) -> list:
    if not spec.get("trace"):
        return []
    sys.path.insert(0, str(HERE))
    from _trace import StepTrace

    name = f"{spec['method']}-{spec.get('variant', 'default')}-{spec['n_cells']}-{spec['n_peaks']}-{spec['batch_size']}"
    return [StepTrace(spec["trace"], name)]


def run_one(spec: dict) -> dict:
    """Train one method on one dataset; return its record."""
    import torch

    torch.set_num_threads(spec["threads"])
    import scvi

    scvi.settings.seed = 0
    scvi.settings.dl_num_workers = 0
    monitor = Monitor()
    mdata = _data(spec)
    timer = _epoch_timer(monitor)
    common = {
        "max_epochs": spec["epochs"],
        "train_size": 0.9,
        "check_val_every_n_epoch": 10**6,
        "early_stopping": False,
        "enable_progress_bar": False,
        "callbacks": [timer] + _trace_callbacks(spec),
        "accelerator": "gpu" if torch.cuda.is_available() else "cpu",
        "devices": 1,
    }
    method, dataset = spec["method"], spec["dataset"]
    if method.startswith("pengster"):
        import pengster

        modalities = (
            {"rna_layer": "rna", "atac_layer": "atac"}
            if dataset == "multiome"
            else {"rna_layer": "rna", "protein_layer": "prot"}
        )
        pengster.model.JointVAE.setup_mudata(mdata, modalities=modalities, batch_key="batch")
        model = pengster.model.JointVAE(mdata, **(spec.get("model_kwargs") or {}))
        for name, value in (spec.get("module_attrs") or {}).items():
            setattr(model.module, name, value)
        options = dict(spec.get("options") or {})
        model.train(batch_size=spec["batch_size"], **options, **common)
        batch_size = spec["batch_size"] or pengster.train.auto_batch_size(mdata.n_obs)
    elif method == "multivi":
        scvi.model.MULTIVI.setup_mudata(mdata, modalities={"rna_layer": "rna", "atac_layer": "atac"}, batch_key="batch")
        model = scvi.model.MULTIVI(mdata, n_genes=mdata["rna"].n_vars, n_regions=mdata["atac"].n_vars)
        batch_size = spec["batch_size"]
        splitter = {"load_sparse_tensor": bool(spec.get("load_sparse_tensor"))}
        model.train(batch_size=batch_size, datasplitter_kwargs=splitter, **common)
    elif method == "totalvi":
        scvi.model.TOTALVI.setup_mudata(
            mdata, modalities={"rna_layer": "rna", "protein_layer": "prot"}, batch_key="batch"
        )
        model = scvi.model.TOTALVI(mdata)
        batch_size = spec["batch_size"]
        model.train(batch_size=batch_size, **common)
    else:
        raise ValueError(f"unknown method {method!r}")
    monitor.stop()
    timed = timer.times[1:] or timer.times
    cpu_timed = timer.cpu_times[1:] or timer.cpu_times
    n_train = timer.cells[-1]
    peak_gpu = torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else None
    return {
        "hardware": spec["hardware"],
        "dataset": dataset,
        "n_cells": spec["n_cells"],
        "n_peaks": spec["n_peaks"] if dataset == "multiome" else 0,
        "method": method.split(":")[0],
        "variant": spec.get("variant", "default"),
        "batch_size": int(batch_size),
        "cells_per_s": round(n_train / float(np.median(timed)), 1),
        "n_train": n_train,
        "seconds_per_epoch": round(float(np.median(timed)), 3),
        "epoch_seconds": [round(t, 3) for t in timer.times],
        # CPU seconds of this process: on a shared machine, the work done, not the share of the cores it got
        "cells_per_cpu_s": round(n_train / float(np.median(cpu_timed)), 1),
        "epoch_cpu_seconds": [round(t, 3) for t in timer.cpu_times],
        "gpu_util": round(float(np.mean(monitor.util)), 1) if monitor.util else None,
        "peak_rss_mb": round(max(monitor.peak_rss, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024) / 2**20),
        "peak_gpu_mb": None if peak_gpu is None else round(peak_gpu),
        "threads": spec["threads"],
    }


def _run_subprocess(spec: dict, timeout: float) -> dict | None:
    env = {**os.environ, "OMP_NUM_THREADS": str(spec["threads"]), "MKL_NUM_THREADS": str(spec["threads"])}
    start = time.perf_counter()
    try:
        done = subprocess.run(
            [sys.executable, __file__, "--one", json.dumps(spec)],
            capture_output=True,
            text=True,
            env=env,
            timeout=timeout,
        )
    except subprocess.TimeoutExpired:
        print(f"TIMEOUT after {timeout:.0f}s: {spec}", flush=True)
        return None
    lines = [line for line in done.stdout.splitlines() if line.startswith("RECORD ")]
    if done.returncode != 0 or not lines:
        print(f"FAILED {spec}\n{done.stderr[-3000:]}", flush=True)
        return None
    record = json.loads(lines[-1][len("RECORD ") :])
    record["wall_s"] = round(time.perf_counter() - start, 1)
    print(json.dumps(record), flush=True)
    return record


PEAK_FRACTION = 0.1
"""``cross_peak_fraction`` of the ``-peaks`` variants."""


def plan(preset: str, hardware: str, threads: int, epochs: int, h5mu_dir: str) -> list[dict]:
    """The runs of a preset."""
    specs = []

    def add(method, dataset, n_cells, n_peaks, batch_size, **extra):
        specs.append(
            {
                "method": method,
                "dataset": dataset,
                "n_cells": n_cells,
                "n_peaks": n_peaks,
                "batch_size": batch_size,
                "hardware": hardware,
                "threads": threads,
                "epochs": extra.pop("epochs", epochs),
                "seed": 0,
                **extra,
            }
        )

    sampled, single = {"cross_terms": "sampled"}, {"cross_terms": "single"}
    peaks = {"cross_peak_fraction": PEAK_FRACTION}
    if preset == "cpu":
        add("pengster", "multiome", 5000, 20_000, 256, variant="fast-peaks", model_kwargs=peaks)
        add("pengster", "multiome", 5000, 20_000, 256, variant="fast-sampled-peaks", model_kwargs={**sampled, **peaks})
        for batch_size in (128, 256):
            add("pengster", "multiome", 5000, 20_000, batch_size, variant="fast")
            add("pengster", "multiome", 5000, 20_000, batch_size, variant="fast-sampled", model_kwargs=sampled)
            add("pengster", "multiome", 5000, 20_000, batch_size, variant="fast-single", model_kwargs=single)
            add("multivi", "multiome", 5000, 20_000, batch_size)
        add("pengster", "multiome", 5000, 20_000, 256, variant="scvi-loader", options={"fast": False})
        add("pengster", "cite", 5000, 0, 256, variant="fast")
        add("totalvi", "cite", 5000, 0, 256)
        add("pengster", "multiome", 10_000, 20_000, None, variant="fast", epochs=2)
    elif preset == "gpu":
        for n_cells in (10_000, 100_000):
            add("pengster", "multiome", n_cells, 100_000, None, variant="fast")
            add("multivi", "multiome", n_cells, 100_000, 1024, variant="load_sparse_tensor", load_sparse_tensor=True)
        add("pengster", "multiome", 100_000, 100_000, None, variant="fast-peaks", model_kwargs=peaks)
        add("pengster", "multiome", 100_000, 100_000, None, variant="fast-sampled", model_kwargs=sampled)
        add("pengster", "multiome", 100_000, 100_000, None, variant="fast-single", model_kwargs=single)
        add("multivi", "multiome", 100_000, 100_000, 1024, variant="dense-loader", epochs=2)
        for batch_size in (2048, 4096):
            add("pengster", "multiome", 100_000, 100_000, batch_size, variant=f"fast-bs{batch_size}")
        add("pengster", "multiome", 100_000, 20_000, None, variant="fast")
        add("multivi", "multiome", 100_000, 20_000, 1024, variant="load_sparse_tensor", load_sparse_tensor=True)
        add("pengster", "cite", 100_000, 0, None, variant="fast")
        add("totalvi", "cite", 100_000, 0, 1024)
        add(
            "pengster",
            "multiome",
            1_000_000,
            100_000,
            None,
            variant="fast-backed",
            epochs=2,
            h5mu=f"{h5mu_dir}/multiome_1m_100k.h5mu",
        )
    elif preset == "gpu-precision":
        # the 100k x 100k comparison with the candidate speed-ups: bf16 autocast, sampled cross terms, sparse
        # encoders, batch size
        bf16 = {"precision": "bf16-mixed"}
        add("multivi", "multiome", 100_000, 100_000, 1024, variant="load_sparse_tensor", load_sparse_tensor=True)
        add("pengster", "multiome", 100_000, 100_000, None, variant="fast")
        add("pengster", "multiome", 100_000, 100_000, None, variant="fast-bf16", options=bf16)
        add("pengster", "multiome", 100_000, 100_000, None, variant="fast-sampled", model_kwargs=sampled)
        add("pengster", "multiome", 100_000, 100_000, None, variant="fast-sampled-bf16", model_kwargs=sampled,
            options=bf16)  # fmt: skip
        add("pengster", "multiome", 100_000, 100_000, None, variant="fast-single", model_kwargs=single)
        add("pengster", "multiome", 100_000, 100_000, 4096, variant="fast-single-bs4096", model_kwargs=single)
    else:
        raise ValueError(f"unknown preset {preset!r}")
    return specs


def markdown(records: list[dict]) -> str:
    """Markdown table of the records, with the pengster/MULTIVI (or TOTALVI) ratio of each setting.

    On CPU the ratio is given for wall time and for CPU time (cells per CPU second of the training process): on a
    shared machine the second measures the work each method needs, whatever share of the cores it got.
    """
    lines = [
        "| hardware | dataset | cells | peaks | method | variant | batch | cells/s | s/epoch | GPU util % | "
        "peak RSS MB | peak GPU MB | pengster / peer | cells/CPU-s | pengster / peer (CPU time) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in records:
        peers = [
            p
            for p in records
            if p["method"] in ("multivi", "totalvi")
            and (p["hardware"], p["dataset"], p["n_cells"], p["n_peaks"])
            == (r["hardware"], r["dataset"], r["n_cells"], r["n_peaks"])
            and (r["hardware"] != "cpu-2core" or p["batch_size"] == r["batch_size"])
        ]
        is_pengster = r["method"] == "pengster" and peers
        ratio = f"{r['cells_per_s'] / max(p['cells_per_s'] for p in peers):.1f}x" if is_pengster else ""
        cpu_peers = [p["cells_per_cpu_s"] for p in peers if p.get("cells_per_cpu_s")]
        cpu_ratio = (
            f"{r['cells_per_cpu_s'] / max(cpu_peers):.2f}x"
            if is_pengster and cpu_peers and r.get("cells_per_cpu_s")
            else ""
        )
        lines.append(
            f"| {r['hardware']} | {r['dataset']} | {r['n_cells']:,} | {r['n_peaks']:,} | {r['method']} | "
            f"{r.get('variant', '')} | {r['batch_size']} | {r['cells_per_s']:,.0f} | "
            f"{r.get('seconds_per_epoch', '')} | "
            f"{'' if r['gpu_util'] is None else r['gpu_util']} | {r['peak_rss_mb']:,} | "
            f"{'' if r['peak_gpu_mb'] is None else format(r['peak_gpu_mb'], ',')} | {ratio} | "
            f"{format(r['cells_per_cpu_s'], ',.0f') if r.get('cells_per_cpu_s') else ''} | {cpu_ratio} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", choices=["cpu", "gpu", "gpu-precision"], default="cpu")
    parser.add_argument("--hardware", default=None, help="label, e.g. H100 or cpu-2core (default: detected)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--only", default=None, help="comma-separated methods to run")
    parser.add_argument("--out", default=str(RESULTS / "speed.json"))
    parser.add_argument("--h5mu-dir", default="/tmp")
    parser.add_argument("--timeout", type=float, default=1800)
    parser.add_argument(
        "--trace", default=None, help="profile 11 steps of each run into this folder (_trace.py); keeps no record"
    )
    parser.add_argument("--one", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.one:
        print("RECORD " + json.dumps(run_one(json.loads(args.one))), flush=True)
        return
    import torch

    hardware = args.hardware or (
        torch.cuda.get_device_name(0).split()[1] if torch.cuda.is_available() else f"cpu-{os.cpu_count()}core"
    )
    specs = plan(args.preset, hardware, args.threads, args.epochs, args.h5mu_dir)
    for spec in specs:
        spec["trace"] = args.trace
    if args.only:
        keep = set(args.only.split(","))
        specs = [s for s in specs if s["method"] in keep or s.get("variant") in keep]
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    records = json.loads(out.read_text()) if out.exists() else []
    for spec in specs:
        record = _run_subprocess(spec, args.timeout)
        if record is None or args.trace:  # a profiled epoch is slower: its record is printed, not kept
            continue
        records = [r for r in records if _key(r) != _key(record)] + [record]
        out.write_text(json.dumps(records, indent=1) + "\n")
        write_markdown(out.with_suffix(".md"), records)
    print(markdown(records))


def write_markdown(path: Path, records: list[dict]) -> None:
    """Write the table of ``records`` to ``path``, keeping the notes written below the previous table."""
    notes = ""
    if path.exists():
        _, _, notes = path.read_text().partition("\n\n")
    path.write_text(markdown(records) + ("\n" + notes if notes else ""))


def _key(record: dict) -> tuple:
    return tuple(
        record.get(k) for k in ("hardware", "dataset", "n_cells", "n_peaks", "method", "variant", "batch_size")
    )


if __name__ == "__main__":
    main()
