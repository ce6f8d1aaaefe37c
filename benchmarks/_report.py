"""The markdown tables of the accuracy benchmark."""

from __future__ import annotations

import pandas as pd

METHODS = ("pengster", "multivi", "totalvi", "knn", "ridge", "mean")


def _cell(row: pd.Series | None, best: bool) -> str:
    if row is None:
        return "–"
    if pd.isna(row["mean"]):
        return "n/a"
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
            values = {m: r["mean"] for m, r in by_method.items() if not pd.isna(r["mean"])}
            best = (max if direction else min)(values, key=values.get) if values else None
        cells = [_cell(by_method.get(m), m == best) for m in methods]
        lines.append("| " + " | ".join([str(k) for k in key] + cells) + " |")
    return lines


README_START = "<!-- accuracy-table:start -->"
README_END = "<!-- accuracy-table:end -->"


def headline(records: list[dict]) -> list[str]:
    """The headline table: the main metric of each dataset and task, one column per method."""
    frame = pd.DataFrame(records)
    return _table(frame[frame["main"]], ["dataset", "task", "metric"])


def update_readme(path, records: list[dict], *, note: str) -> bool:
    """Replace the text between the README's accuracy-table markers with the headline table; False if no markers."""
    text = path.read_text()
    if README_START not in text or README_END not in text:
        return False
    before, rest = text.split(README_START, 1)
    _, after = rest.split(README_END, 1)
    table = "\n".join([f"Mean ± sd over seeds ({note}); best per row in bold.", "", *headline(records)])
    path.write_text(f"{before}{README_START}\n{table}\n{README_END}{after}")
    return True


def markdown(records: list[dict], *, note: str, provenance: str | None = None) -> str:
    """Headline table (the main metric of each dataset and task) and the full table, mean ± sd over seeds.

    ``provenance``: a line above the note, e.g. which version measured which method when.
    """
    frame = pd.DataFrame(records)
    lines = [
        "# Accuracy benchmark",
        "",
        *([provenance, ""] if provenance else []),
        f"Mean ± sd over seeds ({note}). Best per row in bold. Produced by `benchmarks/accuracy.py`; "
        "see benchmarks/README.md for data, splits, metrics and settings.",
        "",
        "## Headline metric per dataset and task",
        "",
        *headline(records),
        "",
        "## Every metric",
        "",
        *_table(frame, ["dataset", "task", "metric"]),
        "",
    ]
    return "\n".join(lines)
