"""The docs' Benchmarks page: each speed table states the date its own hardware's rows were measured."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "docs" / "_ext"))

import benchmark_tables


def _row(hardware: str) -> dict:
    return {
        "hardware": hardware, "method": "pengster", "variant": "fast", "dataset": "multiome", "n_cells": 5000,
        "n_peaks": 20000, "batch_size": 256, "cells_per_s": 150.0, "cells_per_cpu_s": 150.0, "gpu_util": 40.0,
        "peak_gpu_mb": 1000, "peak_rss_mb": 2000,
    }  # fmt: skip


def test_each_speed_table_gives_the_date_of_its_own_hardware():
    notes = "- H100 rows: measured 2026-11-23 on one H100.\n- `cpu-2core` rows: measured 2026-12-07 with 0.2.0.\n"
    text = benchmark_tables.speed_tables([_row("H100"), _row("cpu-2core")], notes)
    gpu, cpu = text.split("### ")[1:]
    assert "Measured 2026-11-23" in gpu and "Measured 2026-12-07" in cpu
