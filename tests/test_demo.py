"""The demo's printed metrics table: no NaN cells, a dash with its reason instead."""

from __future__ import annotations

import numpy as np
import pandas as pd

from pengster._demo import format_metrics


def _table() -> pd.DataFrame:
    rows = [
        {"task": "RNA->protein (CITE test)", "pearson_per_feature": 0.61234, "rmse": 1.5, "auroc": np.nan},
        {"task": "RNA->ATAC (multiome test)", "pearson_per_feature": 0.2, "rmse": 0.3, "auroc": 0.6789},
        {"task": "ATAC->RNA (multiome test)", "pearson_per_feature": np.nan, "rmse": 0.9, "auroc": np.nan},
    ]
    return pd.DataFrame(rows).set_index("task").assign(never=np.nan)


def test_format_metrics_shows_no_nan_and_says_why_a_cell_is_empty():
    text = format_metrics(_table())
    assert "nan" not in text.lower()
    lines = text.splitlines()
    header, _, protein, atac, rna = lines[:5]  # the second line names the index
    assert "never" not in header  # a metric with no value at all is left out
    assert protein.split()[-3:] == ["0.612", "1.500", "-"]
    assert atac.split()[-3:] == ["0.200", "0.300", "0.679"]
    assert rna.split()[-3:] == ["-", "0.900", "-"]
    assert lines[5:] == [
        "- in pearson_per_feature: not defined for those cells (e.g. constant observed or predicted values)",
        "- in auroc: AUROC scores open/closed (binary) targets, so only RNA->ATAC has one",
    ]


def test_format_metrics_of_a_full_table_has_no_footnote():
    table = _table().drop(columns=["auroc", "never"]).fillna(0.5)
    assert len(format_metrics(table).splitlines()) == 5
