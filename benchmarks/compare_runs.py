"""Compare pengster's metrics in two ``accuracy_runs.csv`` files (e.g. a refactor against the release), seed by seed.

    python benchmarks/accuracy.py --methods pengster --datasets bmmc_cite bmmc_multiome snareseq2 --out /tmp/new
    python benchmarks/compare_runs.py /tmp/new/accuracy_runs.csv benchmarks/results/pengster_runs.csv \\
        --out benchmarks/results/accuracy_heads

Writes ``<out>.json`` and ``<out>.md``: per (dataset, task, metric), the mean over the common seeds of each file, the
mean difference, and the standard deviation over seeds of the reference file (seed noise).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pandas as pd

KEY = ["dataset", "task", "metric"]
SKIP = {"train_seconds"}  # wall time, not accuracy


def compare(new: pd.DataFrame, old: pd.DataFrame) -> pd.DataFrame:
    new, old = (frame[(frame["method"] == "pengster") & ~frame["metric"].isin(SKIP)] for frame in (new, old))
    both = new.merge(old, on=[*KEY, "seed"], suffixes=("_new", "_old"))
    grouped = both.groupby(KEY)
    table = pd.DataFrame(
        {
            "new": grouped["value_new"].mean(),
            "old": grouped["value_old"].mean(),
            "difference": grouped.apply(lambda g: (g["value_new"] - g["value_old"]).mean(), include_groups=False),
            "seed_sd_old": grouped["value_old"].std(),
            "seeds": grouped["seed"].apply(lambda s: sorted(s.unique().tolist())),
        }
    ).reset_index()
    table["within_seed_noise"] = table["difference"].abs() <= table["seed_sd_old"].fillna(0) + 1e-9
    return table


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("new", type=Path)
    parser.add_argument("old", type=Path)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--labels", nargs=2, default=["new", "old"])
    args = parser.parse_args(argv)
    table = compare(pd.read_csv(args.new), pd.read_csv(args.old))
    records = table.to_dict(orient="records")
    args.out.with_suffix(".json").write_text(json.dumps({"labels": args.labels, "rows": records}, indent=1) + "\n")
    new, old = args.labels
    lines = [
        f"pengster {new} against {old}, the same seeds, splits and settings (`benchmarks/accuracy.py`); difference = "
        f"mean over seeds of {new} minus {old}; seed sd = sd over seeds of {old}.",
        "",
        f"| dataset | task | metric | {new} | {old} | difference | seed sd | within seed sd |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in records:
        lines.append(
            f"| {row['dataset']} | {row['task']} | {row['metric']} | {row['new']:.3f} | {row['old']:.3f} | "
            f"{row['difference']:+.4f} | {row['seed_sd_old']:.4f} | {'yes' if row['within_seed_noise'] else 'no'} |"
        )
    args.out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
