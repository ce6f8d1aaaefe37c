"""The markdown tables of the accuracy benchmark."""

from __future__ import annotations

import pandas as pd

METHODS = ("pengster", "multivi", "totalvi", "knn", "ridge", "mean")


def _cell(row: pd.Series | None, best: bool) -> str:
    if row is None:
        return "–"
    text = f"{row['mean']:.3f} ± {row['sd']:.3f}"
    return f"**{text}**" if best else text


def _table(frame: pd.DataFrame, keys: list[str]) -> list[str]:
    methods = [m for m in METHODS if m in set(frame["method"])]
    lines = ["| " + " | ".join(keys + methods) + " |", "|" + "---|" * (len(keys) + len(methods))]
    for key, group in frame.groupby(keys, sort=False):
        key = key if isinstance(key, tuple) else (key,)
        by_method = {row["method"]: row for _, row in group.iterrows()}
        direction = group["higher_is_better"].iloc[0]
        best = None
        if direction is not None and not pd.isna(direction):
            values = {m: r["mean"] for m, r in by_method.items()}
            best = (max if direction else min)(values, key=values.get)
        cells = [_cell(by_method.get(m), m == best) for m in methods]
        lines.append("| " + " | ".join([str(k) for k in key] + cells) + " |")
    return lines


def markdown(records: list[dict], *, note: str) -> str:
    """Headline table (the main metric of each dataset and task) and the full table, mean ± sd over seeds."""
    frame = pd.DataFrame(records)
    main = frame[frame["main"]]
    lines = [
        "# Accuracy benchmark",
        "",
        f"Mean ± sd over seeds ({note}). Best per row in bold. Produced by `benchmarks/accuracy.py`; "
        "see benchmarks/README.md for data, splits, metrics and settings.",
        "",
        "## Headline metric per dataset and task",
        "",
        *_table(main, ["dataset", "task", "metric"]),
        "",
        "## Every metric",
        "",
        *_table(frame, ["dataset", "task", "metric"]),
        "",
    ]
    return "\n".join(lines)
