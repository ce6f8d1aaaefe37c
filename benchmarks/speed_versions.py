"""Training speed of this checkout against another pengster checkout (e.g. the previous release), in one run.

Runs the CPU configurations of ``speed.py`` (synthetic multiome 5,000 cells x 20,000 peaks and CITE-seq 5,000 cells,
minibatch 256, one torch thread, pengster's default ``fast`` path) alternately with this checkout's ``src`` and the
other's on ``PYTHONPATH``, ``--repeats`` times each, so that both see the same machine load; MULTIVI and TOTALVI run
once as the peers. Each run is its own process (``speed.py --one``). Writes ``results/speed_versions.json`` and ``.md``.

    git worktree add /tmp/v0.2 <commit of the previous release>
    python benchmarks/speed_versions.py --other /tmp/v0.2 --other-label 0.2.0
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
SPEED = HERE / "speed.py"


def _spec(method: str, dataset: str, n_peaks: int) -> dict:
    return {
        "method": method, "dataset": dataset, "n_cells": 5000, "n_peaks": n_peaks, "batch_size": 256,
        "hardware": f"cpu-{os.cpu_count()}core", "threads": 1, "epochs": 3, "seed": 0, "trace": None,
        **({"variant": "fast"} if method == "pengster" else {}),
    }  # fmt: skip


def _run(spec: dict, src: Path | None) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    if src is not None:
        env["PYTHONPATH"] = str(src)
    done = subprocess.run(
        [sys.executable, str(SPEED), "--one", json.dumps(spec)], capture_output=True, text=True, env=env, check=False
    )
    lines = [line for line in done.stdout.splitlines() if line.startswith("RECORD ")]
    if done.returncode != 0 or not lines:
        raise RuntimeError(f"{spec['method']} {spec['dataset']} failed:\n{done.stderr[-3000:]}")
    return json.loads(lines[-1][len("RECORD ") :])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--other", type=Path, required=True, help="the other checkout (its src/ is imported)")
    parser.add_argument("--other-label", default="other")
    parser.add_argument("--label", default="this checkout")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--out", type=Path, default=HERE / "results" / "speed_versions.json")
    args = parser.parse_args(argv)
    this_src = HERE.parent / "src"
    runs = {"multiome": [], "cite": []}
    start = time.perf_counter()
    for dataset, n_peaks in (("multiome", 20_000), ("cite", 0)):
        spec = _spec("pengster", dataset, n_peaks)
        for _ in range(args.repeats):
            for label, src in ((args.label, this_src), (args.other_label, args.other / "src")):
                record = _run(spec, src)
                runs[dataset].append({"version": label, "cells_per_s": record["cells_per_s"]})
                print(dataset, label, record["cells_per_s"], flush=True)
        peer = "multivi" if dataset == "multiome" else "totalvi"
        record = _run(_spec(peer, dataset, n_peaks), None)
        runs[dataset].append({"version": peer, "cells_per_s": record["cells_per_s"]})
        print(dataset, peer, record["cells_per_s"], flush=True)
    summary = []
    for dataset, records in runs.items():
        by_version = {}
        for record in records:
            by_version.setdefault(record["version"], []).append(record["cells_per_s"])
        peer = "multivi" if dataset == "multiome" else "totalvi"
        for version, values in by_version.items():
            summary.append(
                {
                    "dataset": dataset,
                    "version": version,
                    "cells_per_s": float(np.median(values)),
                    "runs": values,
                    "ratio_to_peer": float(np.median(values) / np.median(by_version[peer])),
                }
            )
    result = {
        "note": "CPU, 1 torch thread, batch 256, 5,000 synthetic cells (multiome: 20,000 peaks), 3 epochs; cells per "
        "second of training epochs after the first (speed.py); versions run alternately in the same run",
        "machine": f"cpu-{os.cpu_count()}core",
        "wall_s": round(time.perf_counter() - start),
        "summary": summary,
    }
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    lines = ["| dataset | version | cells/s (median) | runs | / peer |", "|---|---|---|---|---|"]
    for row in summary:
        runs_text = ", ".join(f"{v:.0f}" for v in row["runs"])
        lines.append(
            f"| {row['dataset']} | {row['version']} | {row['cells_per_s']:.0f} | {runs_text} | "
            f"{row['ratio_to_peer']:.2f} |"
        )
    args.out.with_suffix(".md").write_text(result["note"] + "\n\n" + "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
