"""The tables of the Benchmarks page, written from ``benchmarks/results/*.json`` at build time.

One accuracy table per task (rows: data sets, columns: methods) and one speed table per hardware, so that each fits
the article column and says what was measured where. The numbers are those of the committed results; nothing here
computes a new one except the choice of the best mean per row.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable
from pathlib import Path

METHODS = {
    "pengster": "pengster",
    "multivi": "MULTIVI",
    "totalvi": "TOTALVI",
    "knn": "kNN",
    "ridge": "ridge",
    "mean": "training mean",
}

DATASETS = {
    "bmmc_cite": "BMMC CITE-seq",
    "bmmc_multiome": "BMMC multiome",
    "bmmc_mosaic": "BMMC mosaic",
    "pbmc_mosaic": "PBMC mosaic",
    "snareseq2": "SNARE-seq2 cortex",
}

# title, what the number is, [(dataset, task in accuracy.json, row label)]
ACCURACY_TABLES = [
    (
        "RNA → protein",
        "Pearson correlation per protein between predicted and measured CLR values of held-out cells, averaged over "
        "proteins; higher is better.",
        [
            ("bmmc_cite", "GEX->ADT", None),
            ("bmmc_mosaic", "RNA->protein", None),
            ("pbmc_mosaic", "RNA->protein", None),
        ],
    ),
    (
        "Protein → RNA",
        "Pearson correlation per gene, averaged over genes; higher is better.",
        [("bmmc_cite", "ADT->GEX", None)],
    ),
    (
        "ATAC → RNA",
        "Pearson correlation per gene, averaged over genes; higher is better.",
        [
            ("bmmc_multiome", "ATAC->GEX", None),
            ("bmmc_mosaic", "ATAC->RNA", None),
            ("snareseq2", "ATAC->GEX", None),
        ],
    ),
    (
        "RNA → ATAC",
        "Pearson correlation per peak between predicted accessibility and the binary peaks, averaged over peaks; "
        "higher is better.",
        [("bmmc_multiome", "GEX->ATAC", None), ("snareseq2", "GEX->ATAC", None)],
    ),
    (
        "Surface markers where protein was never measured",
        "AUROC of each cell type's canonical surface marker, predicted for cells that have no protein measurement "
        "(BMMC mosaic: the multiome cells, from RNA and ATAC; PBMC mosaic: the RNA-only donor), averaged over cell "
        "types; higher is better, 0.5 is chance.",
        [
            ("bmmc_mosaic", "RNA+ATAC->protein markers", "BMMC mosaic, from RNA + ATAC"),
            ("pbmc_mosaic", "RNA->protein markers", "PBMC mosaic, from RNA"),
        ],
    ),
    (
        "Joint embedding",
        "scib-metrics aggregate of the joint latent of all cells (0.6 x bio conservation + 0.4 x batch correction); "
        "higher is better.",
        [(dataset, "joint embedding", None) for dataset in DATASETS],
    ),
    (
        "Matching a cell's modalities",
        "FOSCTTM between the latents from either modality alone of held-out paired cells: the fraction of cells "
        "closer to a cell than its own other modality; lower is better, 0.5 is chance.",
        [
            ("bmmc_cite", "modality matching", "BMMC CITE-seq, RNA vs protein"),
            ("bmmc_multiome", "modality matching", "BMMC multiome, RNA vs ATAC"),
            ("snareseq2", "modality matching", "SNARE-seq2 cortex, RNA vs ATAC"),
        ],
    ),
    (
        "Calibration of the predictive standard deviation",
        "|fraction of held-out values inside the 90% interval (mean ± 1.645 std) - 0.9|; lower is better.",
        [
            ("bmmc_cite", "GEX->ADT calibration", "BMMC CITE-seq, RNA → protein"),
            ("bmmc_mosaic", "RNA->protein calibration", "BMMC mosaic, RNA → protein"),
            ("pbmc_mosaic", "RNA->protein calibration", "PBMC mosaic, RNA → protein"),
            ("bmmc_cite", "ADT->GEX calibration", "BMMC CITE-seq, protein → RNA"),
            ("bmmc_multiome", "ATAC->GEX calibration", "BMMC multiome, ATAC → RNA"),
            ("bmmc_mosaic", "ATAC->RNA calibration", "BMMC mosaic, ATAC → RNA"),
            ("snareseq2", "ATAC->GEX calibration", "SNARE-seq2 cortex, ATAC → RNA"),
        ],
    ),
]

# what each speed setting is, in the words of the API
SETTINGS = {
    ("pengster", "fast"): "defaults",
    ("pengster", "fast-bs2048"): "defaults",
    ("pengster", "fast-bs4096"): "defaults",
    ("pengster", "fast-backed"): "defaults, `backed=True`",
    ("pengster", "fast-sampled"): '`cross_terms="sampled"`',
    ("pengster", "fast-single"): '`cross_terms="single"`',
    ("pengster", "scvi-loader"): "`train(fast=False)`",
    ("pengster", "fast-peaks"): "`cross_peak_fraction=0.1`",
    ("pengster", "fast-sampled-peaks"): '`cross_terms="sampled"`, `cross_peak_fraction=0.1`',
    ("multivi", "default"): "defaults",
    ("multivi", "dense-loader"): "defaults",
    ("multivi", "load_sparse_tensor"): "`load_sparse_tensor=True`",
    ("totalvi", "default"): "defaults",
}

# the hardware whose rows of speed.json were measured with the current release; the H100 rows were measured with
# pengster 0.1.0, whose training path 0.2 replaced, so the site does not show them
CURRENT_HARDWARE = ("cpu-2core",)

HARDWARE = {
    "H100": (
        "One NVIDIA H100 80GB HBM3 GPU",
        "pengster 0.1.0 (this table has not been re-measured with 0.2), torch 2.11, scvi-tools 1.4.2, one CPU thread "
        "for the host side",
    ),
    "cpu-2core": (
        "CPU: a 2-core AMD EPYC (AVX2), no GPU",
        "pengster 0.2.0, torch 2.13, scvi-tools 1.4.2, one torch thread (`OMP_NUM_THREADS=1`); each run in its own "
        "process, timed by its CPU time",
    ),
}


def _scored(record: dict | None) -> bool:
    return record is not None and record["mean"] is not None and not math.isnan(record["mean"])


def _value(mean: float, sd: float, bold: bool) -> str:
    number = f"**{mean:.3f}**" if bold else f"{mean:.3f}"
    return f'{number}<span class="sd">± {sd:.3f}</span>'


def _table(header: list[str], rows: Iterable[list[str]], *, n_text: int = 1) -> str:
    """A MyST table: the first ``n_text`` columns text (left-aligned), the others numbers (right-aligned)."""
    lines = ["```{table}", ":class: benchmark", "", "| " + " | ".join(header) + " |"]
    lines.append("|" + "---|" * n_text + "---:|" * (len(header) - n_text))
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join([*lines, "```", ""])


def accuracy_tables(records: list[dict]) -> str:
    """Markdown: one table per task of ``ACCURACY_TABLES``, with the methods that scored it."""
    by_key = {(r["dataset"], r["task"], r["method"]): r for r in records if r["main"]}
    out = []
    for title, caption, rows in ACCURACY_TABLES:
        methods = [m for m in METHODS if any((d, t, m) in by_key for d, t, _ in rows)]
        # a constant prediction has no correlation: a column of "n/a" says nothing
        methods = [m for m in methods if any(_scored(by_key.get((d, t, m))) for d, t, _ in rows)]
        body = []
        for dataset, task, label in rows:
            cells = {m: by_key.get((dataset, task, m)) for m in methods}
            scored = {m: r for m, r in cells.items() if _scored(r)}
            sign = 1 if next(iter(scored.values()))["higher_is_better"] else -1
            # the best mean as printed: methods that tie at three decimals are all in bold
            best = max(round(sign * r["mean"], 3) for r in scored.values())
            row = [label or DATASETS[dataset]]
            for method in methods:
                record = scored.get(method)
                bold = record is not None and round(sign * record["mean"], 3) == best
                row.append(_value(record["mean"], record["sd"], bold) if record else "–")
            body.append(row)
        out += [f"### {title}", "", caption, "", _table(["data", *(METHODS[m] for m in methods)], body)]
    return "\n".join(out)


def _thousands(n: int) -> str:
    return f"{n // 1_000_000}M" if n >= 1_000_000 else f"{n // 1000}k"


def _data_label(record: dict) -> str:
    if record["dataset"] == "cite":
        return f"CITE-seq {_thousands(record['n_cells'])}"
    return f"multiome {_thousands(record['n_cells'])} × {_thousands(record['n_peaks'])}"


def speed_tables(records: list[dict], notes: str, hardware_shown: Iterable[str] = tuple(HARDWARE)) -> str:
    """Markdown: one table per hardware of ``hardware_shown``; rows of settings a user can choose (``SETTINGS``)."""
    # the notes say "- `cpu-2core` rows: measured 2026-12-07 ..." for each hardware
    measured = dict(re.findall(r"`?([\w-]+)`? rows: measured (\d{4}-\d\d-\d\d)", notes))
    out = []
    for hardware, (machine, software) in HARDWARE.items():
        if hardware not in hardware_shown:
            continue
        rows = [r for r in records if r["hardware"] == hardware and (r["method"], r["variant"]) in SETTINGS]
        dates = {r["session"].split()[0] for r in rows if "session" in r}
        date = ", ".join(sorted(dates)) if dates else measured.get(hardware, "")
        rows.sort(key=lambda r: (r["dataset"] != "multiome", r["n_cells"], -r["n_peaks"], r["batch_size"], r["method"]))
        gpu = hardware != "cpu-2core"
        header = ["data: cells × peaks", "method", "setting", "batch", "cells/s"]
        header += ["GPU busy %", "GPU GB"] if gpu else ["cells per CPU-s"]
        header += ["host GB"]
        body = []
        for r in rows:
            row = [_data_label(r), METHODS[r["method"]], SETTINGS[r["method"], r["variant"]], str(r["batch_size"])]
            row.append(f"{r['cells_per_s']:,.0f}")
            if gpu:
                row += [f"{r['gpu_util']:.0f}", f"{r['peak_gpu_mb'] / 1024:.1f}"]
            else:
                row.append(f"{r['cells_per_cpu_s']:,.0f}")
            row.append(f"{r['peak_rss_mb'] / 1024:.1f}")
            body.append(row)
        out += [f"### {machine}", "", f"Measured {date}; {software}.", "", _table(header, body, n_text=3)]
    return "\n".join(out)


def write_benchmark_tables(results: Path, out_dir: Path) -> None:
    """Write ``accuracy.md`` and ``speed.md`` into ``out_dir`` for the Benchmarks page to include."""
    out_dir.mkdir(parents=True, exist_ok=True)
    accuracy = json.loads((results / "accuracy.json").read_text())
    speed = json.loads((results / "speed.json").read_text())
    (out_dir / "accuracy.md").write_text(accuracy_tables(accuracy))
    notes = (results / "speed.md").read_text()
    (out_dir / "speed.md").write_text(speed_tables(speed, notes, CURRENT_HARDWARE))
