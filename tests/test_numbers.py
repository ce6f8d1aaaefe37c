"""Every number a reader sees in the README and the documentation comes from the committed benchmark results.

The tables are generated from ``benchmarks/results/*.json`` (the README's accuracy table by ``benchmarks/_report.py``,
the Benchmarks page's by ``docs/_ext/benchmark_tables.py``); this file checks that the README's table is that
rendering, and that every number in the prose of the pages below is either

- a CLAIM: a value read from the results (or from the code, for a default that the prose states), which must print
  exactly as written, so that a rerun that changes the value fails here until the prose follows; or
- ALLOWED: a number that no measurement produces (a version, a date, a setting of the benchmark, a size of a data
  set), each pattern with its reason.

A number that is neither fails the test: measure it into a results file and claim it, or remove it.
"""

from __future__ import annotations

import importlib
import inspect
import json
import re
import sys
from collections.abc import Callable
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"

# the pages checked: what a user reads (CHANGELOG.md is the record of past releases and is not checked)
PAGES = [
    "README.md",
    "docs/index.md",
    "docs/benchmarks.md",
    "docs/tutorials.md",
    "docs/api.md",
    "docs/user_guide/jointvae.md",
    "docs/user_guide/differential.md",
    "benchmarks/README.md",
]


# ------------------------------------------------------------------------------------------------ the results
@cache
def _json(name: str):
    return json.loads((RESULTS / f"{name}.json").read_text())


def accuracy(dataset: str, task: str, method: str, metric: str | None = None, field: str = "mean") -> float:
    """A record of accuracy.json: the headline metric of (dataset, task) unless ``metric`` is given."""
    found = [
        r
        for r in _json("accuracy")
        if (r["dataset"], r["task"], r["method"]) == (dataset, task, method)
        and (r["metric"] == metric if metric else r["main"])
    ]
    assert len(found) == 1, f"accuracy.json: {len(found)} records for {dataset, task, method, metric}"
    return found[0][field]


def tune(candidate: str, dataset: str, task: str) -> float:
    """The headline metric of (dataset, task) for a candidate of tune.json (validation split)."""
    found = [
        r
        for r in _json("tune")["records"]
        if (r["candidate"], r["dataset"], r["task"]) == (candidate, dataset, task) and r["main"]
    ]
    assert len(found) == 1, f"tune.json: {len(found)} records for {candidate, dataset, task}"
    return found[0]["mean"]


def speed(hardware: str, dataset: str, method: str, variant: str, batch_size: int, field: str) -> float:
    found = [
        r
        for r in _json("speed")
        if (r["hardware"], r["dataset"], r["method"], r["variant"], r["batch_size"])
        == (hardware, dataset, method, variant, batch_size)
        and r["n_cells"] == 5000
    ]
    assert len(found) == 1, f"speed.json: {len(found)} records for {hardware, dataset, method, variant, batch_size}"
    return found[0][field]


def _differential(section: str, **keys) -> dict:
    found = [r for r in _json("differential")[section] if all(r[k] == v for k, v in keys.items())]
    assert len(found) == 1, f"differential.json: {len(found)} {section} records for {keys}"
    return found[0]


def de_agreement(modality: str, method: str, cells: str, metric: str) -> float:
    """Mean over seeds of an agreement metric of differential.json (predicted or model DE against measured DE)."""
    return _differential("agreement", modality=modality, method=method, cells=cells)[metric]["mean"]


def de_stability(modality: str, cells: str) -> float:
    """Mean pairwise Jaccard index across seeds of the features called DE (differential.json)."""
    return _differential("stability", modality=modality, cells=cells)["jaccard"]


def de_null_share() -> float:
    """The largest share of features pengster called DE between random halves of a cell type, over every case."""
    return max(r["called_fraction"]["mean"] for r in _json("differential")["null"] if r["method"] == "pengster")


def de_snareseq2(method: str, metric: str) -> float:
    """Mean over seeds of an agreement metric of differential.json's SNARE-seq2 part (held-out libraries)."""
    (found,) = [r for r in _json("differential")["snareseq2"]["agreement"] if r["method"] == method]
    return found[metric]["mean"]


def de_scale(method: str, n_cells: int, n_peaks: int, field: str) -> float:
    found = [
        r
        for r in _json("differential_scale")["runs"]
        if (r["method"], r["n_cells"], r["n_peaks"]) == (method, n_cells, n_peaks)
    ]
    assert len(found) == 1, f"differential_scale.json: {len(found)} runs for {method, n_cells, n_peaks}"
    return found[0][field]


def de_scale_added_gb(n_cells: int, n_peaks: int, method: str = "pengster") -> float:
    """GB that a method's differential_accessibility call added to the process (peak during minus before)."""
    return (de_scale(method, n_cells, n_peaks, "peak_rss_during_mb") - de_scale(method, n_cells, n_peaks,
            "rss_before_mb")) / 1024  # fmt: skip


def training_curve(epoch: int, field: str) -> float:
    (score,) = [s for s in _json("training_curve")["scores"] if s["epoch"] == epoch]
    return score[field]


def lowest_validation_loss_step() -> int:
    """The step count of the scored epoch with the lowest validation loss."""
    results = _json("training_curve")
    losses = results["history"]["validation_loss"]
    scores = results["scores"]
    return min(scores, key=lambda s: losses[s["epoch"] - 1])["steps"]


def reported_scale(dataset: str, task: str, method: str, metric: str, *, validation: bool = False) -> float:
    """Mean over seeds of a metric of reported_scale.json (test cells) or reported_scale_validation.json."""
    runs = _json("reported_scale_validation" if validation else "reported_scale")["runs"]
    values = [
        r["value"]
        for r in runs
        if (r["dataset"], r["task"], r["method"], r["metric"]) == (dataset, task, method, metric)
    ]
    assert values, f"reported_scale: no runs for {dataset, task, method, metric}"
    return sum(values) / len(values)


# ------------------------------------------------------------------------------------------------ the code
def default(qualname: str, argument: str):
    """The default of ``argument`` in the signature of ``qualname`` (a pengster callable)."""
    module, *attributes = qualname.split(".")
    target = importlib.import_module(module)
    for attribute in attributes:
        target = getattr(target, attribute)
    return inspect.signature(target).parameters[argument].default


def constant(module: str, name: str):
    return getattr(importlib.import_module(module), name)


def benchmark_setting(name: str):
    sys.path.insert(0, str(ROOT))
    try:
        return getattr(importlib.import_module("benchmarks.accuracy"), name)
    finally:
        sys.path.remove(str(ROOT))


def tutorial_metadata(name: str) -> dict:
    """What tutorials/execute.py recorded about the stored run of a tutorial (version, threads, wall time)."""
    return json.loads((ROOT / "tutorials" / f"{name}.ipynb").read_text())["metadata"]["pengster"]


Value = Callable[[], float] | tuple[Callable[[], float], ...]  # a tuple: the number stands for each of them
PERCENT = 100.0


def coverages(*, without: tuple[str, str]) -> list[float]:
    """pengster's 90% interval coverage (percent) of every calibration row of accuracy.json but ``without``."""
    return [
        PERCENT * r["mean"]
        for r in _json("accuracy")
        if r["method"] == "pengster" and r["metric"] == "coverage_90" and (r["dataset"], r["task"]) != without
    ]


def speed_ratio(dataset: str, variant: str, peer: str) -> float:
    """pengster's cells per CPU-second over the peer's, one thread, batch 256, in speed.json's cpu-2core run."""
    mine = speed("cpu-2core", dataset, "pengster", variant, 256, "cells_per_cpu_s")
    return mine / speed("cpu-2core", dataset, peer, "default", 256, "cells_per_cpu_s")


MOSAIC_FROM_ATAC = ("bmmc_mosaic", "ATAC->RNA calibration")
# "between 85% and 93% ... except RNA predicted from ATAC alone in the BMMC mosaic (69%)"
CALIBRATION_CLAIMS = {
    "85": lambda: min(coverages(without=MOSAIC_FROM_ATAC)),
    "93": lambda: max(coverages(without=MOSAIC_FROM_ATAC)),
    "69": lambda: PERCENT * accuracy(*MOSAIC_FROM_ATAC, "pengster", "coverage_90"),
}
CELF = "pengster.train._options"

# page -> {number as printed: where it comes from}. A number printed with d decimals must equal the value rounded to
# d decimals; thousands separators are ignored.
CLAIMS: dict[str, dict[str, Value]] = {
    "README.md": {
        # the bridge and the MMD on the BMMC mosaic's validation split (tune.json)
        "0.733": lambda: tune("bridge_off+auto_layer", "bmmc_mosaic", "RNA+ATAC->protein markers"),
        "0.912": lambda: tune("current+auto_layer", "bmmc_mosaic", "RNA+ATAC->protein markers"),
        # the automatic minibatch size
        "256": lambda: constant(CELF, "BASE_BATCH_SIZE"),
        "25k": lambda: constant(CELF, "CELLS_PER_BASE_BATCH") / 1000,
        "2048": lambda: constant(CELF, "MAX_AUTO_BATCH_SIZE"),
        # CPU speed (speed.json)
        "5,000": lambda: speed("cpu-2core", "multiome", "pengster", "fast", 256, "n_cells"),
        "10,000": lambda: constant("pengster.tl._write", "MAX_DEFAULT_PEAKS"),
        "20k": lambda: speed("cpu-2core", "multiome", "pengster", "fast", 256, "n_peaks") / 1000,
        "0.29": lambda: speed_ratio("multiome", "fast", "multivi"),
        "0.53": lambda: speed_ratio("multiome", "fast-peaks", "multivi"),
        "0.75": lambda: speed_ratio("multiome", "fast-sampled-peaks", "multivi"),
        "0.76": lambda: speed_ratio("cite", "fast", "totalvi"),
        # the accuracy table's prose (accuracy.json)
        "0.224": lambda: accuracy("bmmc_cite", "ADT->GEX", "pengster"),
        "0.245": lambda: accuracy("bmmc_cite", "ADT->GEX", "knn"),
        **CALIBRATION_CLAIMS,
    },
    "docs/benchmarks.md": {
        "500": lambda: benchmark_setting("MULTIVI_EPOCHS")["bmmc_cite"],
        **CALIBRATION_CLAIMS,
        "20k": lambda: speed("cpu-2core", "multiome", "pengster", "fast", 256, "n_peaks") / 1000,
        # predictions with the defaults on the test cells (reported_scale.json)
        "0.604": lambda: reported_scale("bmmc_multiome", "ATAC->GEX", "pengster", "pearson_per_cell"),
        "0.588": lambda: reported_scale("snareseq2", "ATAC->GEX", "pengster", "pearson_per_cell"),
        "0.590": lambda: reported_scale("bmmc_multiome", "ATAC->GEX", "mean", "pearson_per_cell"),
        "0.569": lambda: reported_scale("snareseq2", "ATAC->GEX", "mean", "pearson_per_cell"),
        "0.592": lambda: reported_scale("bmmc_multiome", "ATAC->GEX", "ridge", "pearson_per_cell"),
        "0.580": lambda: reported_scale("snareseq2", "ATAC->GEX", "ridge", "pearson_per_cell"),
        "1.377": lambda: reported_scale("bmmc_multiome", "ATAC->GEX", "pengster", "rmse"),
        "0.791": lambda: reported_scale("snareseq2", "ATAC->GEX", "pengster", "rmse"),
        "0.786": lambda: reported_scale("bmmc_multiome", "GEX->ATAC", "pengster", "overall_auroc"),
        "0.711": lambda: reported_scale("snareseq2", "GEX->ATAC", "pengster", "overall_auroc"),
        "0.780": lambda: reported_scale("bmmc_multiome", "GEX->ATAC", "mean", "overall_auroc"),
        "0.679": lambda: reported_scale("snareseq2", "GEX->ATAC", "mean", "overall_auroc"),
        "0.782": lambda: reported_scale("bmmc_multiome", "GEX->ATAC", "ridge", "overall_auroc"),
        "0.682": lambda: reported_scale("snareseq2", "GEX->ATAC", "ridge", "overall_auroc"),
        "0.574": lambda: reported_scale("bmmc_multiome", "GEX->ATAC", "pengster", "auroc"),
        "0.626": lambda: reported_scale("snareseq2", "GEX->ATAC", "pengster", "auroc"),
        "0.549": lambda: reported_scale("bmmc_multiome", "GEX->ATAC", "ridge", "auroc"),
        "0.591": lambda: reported_scale("snareseq2", "GEX->ATAC", "ridge", "auroc"),
    },
    "docs/user_guide/jointvae.md": {
        "24": lambda: constant("pengster.module._moments", "LOG1P_TERMS"),
        # the auto read-outs on the validation split (reported_scale_validation.json)
        "0.789": lambda: reported_scale(
            "bmmc_multiome", "GEX->ATAC", "pengster population", "overall_auroc", validation=True
        ),
        "0.777": lambda: reported_scale(
            "bmmc_multiome", "GEX->ATAC", "pengster decoder", "overall_auroc", validation=True
        ),
        "0.700": lambda: reported_scale(
            "snareseq2", "GEX->ATAC", "pengster population", "overall_auroc", validation=True
        ),
        "0.697": lambda: reported_scale("snareseq2", "GEX->ATAC", "pengster decoder", "overall_auroc", validation=True),
        "0.009": lambda: reported_scale("bmmc_multiome", "GEX->ATAC", "pengster population", "ece", validation=True),
        "0.020": lambda: reported_scale("bmmc_multiome", "GEX->ATAC", "pengster decoder", "ece", validation=True),
        "0.681": lambda: reported_scale("snareseq2", "GEX->ATAC", "pengster blend", "overall_auroc", validation=True),
        "1.374": lambda: reported_scale("bmmc_multiome", "ATAC->GEX", "pengster blend", "rmse", validation=True),
        "1.405": lambda: reported_scale("bmmc_multiome", "ATAC->GEX", "pengster decoder", "rmse", validation=True),
        "0.884": lambda: tune("cross_sampled+auto_layer", "bmmc_mosaic", "RNA+ATAC->protein markers"),
        "0.913": (  # sampled terms against all (cross_terms), and the blend with 50 neighbours against the decoder
            lambda: tune("cross_all+auto_layer", "bmmc_mosaic", "RNA+ATAC->protein markers"),
            lambda: tune("current+neighbors_50", "bmmc_mosaic", "RNA+ATAC->protein markers"),
        ),
        "0.733": lambda: tune("bridge_off+auto_layer", "bmmc_mosaic", "RNA+ATAC->protein markers"),
        "0.544": lambda: tune("bridge_off+auto_layer", "bmmc_mosaic", "joint embedding"),
        "0.911": lambda: tune("mixing_off+auto_layer", "bmmc_mosaic", "RNA+ATAC->protein markers"),
        "0.554": lambda: tune("mixing_off+auto_layer", "bmmc_mosaic", "joint embedding"),
        "0.919": lambda: tune("mixing_3+auto_layer", "bmmc_mosaic", "RNA+ATAC->protein markers"),
        "0.559": lambda: tune("mixing_3+auto_layer", "bmmc_mosaic", "joint embedding"),
        "0.912": lambda: tune("current+auto_layer", "bmmc_mosaic", "RNA+ATAC->protein markers"),
        "0.564": lambda: tune("current+auto_layer", "bmmc_mosaic", "joint embedding"),
        "455": lambda: lowest_validation_loss_step(),
        "0.106": lambda: training_curve(35, "atac_to_rna_pearson_per_gene"),
        "0.093": lambda: training_curve(80, "atac_to_rna_pearson_per_gene"),
        "1,040": lambda: training_curve(80, "steps"),
        "0.263": lambda: tune("current+decoder", "bmmc_cite", "ADT->GEX"),
        "0.272": lambda: tune("current+neighbors_50", "bmmc_cite", "ADT->GEX"),
        "0.900": lambda: tune("current+decoder", "bmmc_mosaic", "RNA+ATAC->protein markers"),
        "0.130": lambda: tune("current+neighbors_50", "bmmc_multiome", "GEX->ATAC"),
        "0.148": lambda: tune("current+decoder", "bmmc_multiome", "GEX->ATAC"),
        "89": lambda: PERCENT * accuracy("bmmc_cite", "GEX->ADT calibration", "pengster", "coverage_90"),
        # defaults stated in the text, read from the code
        "20": (lambda: default("pengster.model.JointVAE", "n_latent"), lambda: constant(CELF, "PATIENCE_EPOCHS")),
        "250": lambda: constant(CELF, "PATIENCE_STEPS"),
        "125": lambda: constant(CELF, "KL_WARMUP_STEPS"),
        "256": lambda: constant(CELF, "BASE_BATCH_SIZE"),
        "0.1": lambda: default("pengster.model.JointVAE", "temperature"),
        "50": lambda: default("pengster.model.JointVAE.predict", "n_neighbors"),
        "10": (
            lambda: constant("pengster.model._outputs", "STD_SAMPLES"),  # predict(n_samples=None) draws this many
            lambda: constant("pengster.module._bridge", "MIN_SHARED_GENES"),
        ),
        "10,000": lambda: constant("pengster.tl._write", "MAX_DEFAULT_PEAKS"),
    },
    "docs/user_guide/differential.md": {
        "128": lambda: constant("scvi", "settings").batch_size,
        "0.668": lambda: de_agreement("protein", "pengster", "multiome", "spearman_lfc"),
        "0.927": lambda: de_agreement("protein", "pengster", "multiome", "top_marker_auroc"),
        "0.022": lambda: de_agreement("protein", "kNN", "multiome", "spearman_lfc"),
        "0.590": (
            lambda: de_agreement("protein", "kNN", "multiome", "top_marker_auroc"),
            lambda: de_agreement("atac", "kNN", "cite", "top_marker_auroc"),
        ),
        "0.697": lambda: de_agreement("protein", "pengster (measured cells)", "cite", "spearman_lfc"),
        "0.929": lambda: de_agreement("protein", "pengster (measured cells)", "cite", "top_marker_auroc"),
        "0.806": lambda: de_agreement("protein", "TOTALVI", "cite", "spearman_lfc"),
        "0.947": lambda: de_agreement("protein", "TOTALVI", "cite", "top_marker_auroc"),
        "0.554": lambda: de_agreement("atac", "pengster", "cite", "spearman_lfc"),
        "0.655": lambda: de_agreement("atac", "pengster", "cite", "top_marker_auroc"),
        "0.232": lambda: de_agreement("atac", "kNN", "cite", "spearman_lfc"),
        "0.702": lambda: de_agreement("atac", "pengster (measured cells)", "multiome", "spearman_lfc"),
        "0.657": lambda: de_agreement("atac", "pengster (measured cells)", "multiome", "top_marker_auroc"),
        "0.000": lambda: de_null_share(),
        "0.465": (
            lambda: de_stability("protein", "multiome"),
            lambda: de_stability("atac", "multiome"),
        ),
        "0.227": lambda: de_stability("atac", "cite"),
        "0.570": lambda: de_stability("protein", "cite"),
        "0.263": lambda: de_snareseq2("pengster", "spearman_lfc"),
        "0.812": lambda: de_snareseq2("pengster", "top_marker_auroc"),
        "0.286": lambda: de_snareseq2("kNN", "spearman_lfc"),
        "0.798": lambda: de_snareseq2("kNN", "top_marker_auroc"),
        "20,000": (
            lambda: de_scale("pengster", 20000, 20000, "n_peaks"),
            lambda: de_scale("pengster", 20000, 20000, "n_cells"),
        ),
        "2.4": lambda: de_scale_added_gb(20000, 20000),
        "2.6": lambda: de_scale_added_gb(100000, 20000),
        "12.2": lambda: de_scale_added_gb(100000, 100000),
        "12.7": lambda: de_scale_added_gb(100000, 100000, "multivi"),
        "217": lambda: de_scale("pengster", 100000, 100000, "cpu_seconds"),
        "145": lambda: de_scale("multivi", 100000, 100000, "cpu_seconds"),
        "100,000": (
            lambda: de_scale("pengster", 100000, 20000, "n_cells"),
            lambda: de_scale("pengster", 100000, 100000, "n_peaks"),
        ),
        "10,000": lambda: de_scale("pengster", 20000, 10000, "n_peaks"),
    },
    "docs/tutorials.md": {
        "59": lambda: tutorial_metadata("01_snareseq2")["wall_time_s"] / 60,
    },
    "benchmarks/README.md": {
        "100": lambda: benchmark_setting("BMMC_EPOCHS"),
        "500": lambda: benchmark_setting("MULTIVI_EPOCHS")["bmmc_cite"],
        "25": lambda: benchmark_setting("N_CALIBRATION_SAMPLES"),
        # the default rule and read-out, described with the runs that use them
        "125": lambda: constant(CELF, "KL_WARMUP_STEPS"),
        "20": lambda: constant(CELF, "PATIENCE_EPOCHS"),
        "250": lambda: constant(CELF, "PATIENCE_STEPS"),
        "50": lambda: default("pengster.model.JointVAE.predict", "n_neighbors"),
    },
}

# Numbers that no measurement produces: (pattern, reason). A pattern removes the numbers it matches, in context,
# from the page before the remaining numbers are looked up in CLAIMS.
ALLOWED: list[tuple[str, str]] = [
    (
        r"\b0\.[123]\.0\b|(pengster|since|Upgrading from) 0\.[123]\b|Python 3\.11|scvi-tools 1\.4\.2",
        "a version",
    ),
    (r"\b2026-1[12]-\d\d\b", "the date a result was measured (benchmarks/README.md's table, checked below)"),
    (r"NeurIPS 2021", "the name of a competition and its data"),
    (r"per 10k", "the scale of normalized counts (counts per 10,000), a convention"),
    (
        r"\b2 CPU processes\b|\b[123] (times|decodes?)\b|instead of 3\b|[12] or 1 times|\b2 or 1\b",
        "a count of decodes or processes in a description of the code",
    ),
    (r"\b2-core\b|top-1 / top-10", "a name of a machine or a metric"),
    (
        r"90% intervals?|the 90%|50% and 90%|0\.6 bio \+ 0\.4 batch|coverage - 0\.9\||1 = best",
        "the definition of a metric",
    ),
    (
        r"600 (genes|peaks)|GEX 600 genes|ATAC 600 peaks|\b600\b(?=[,;] )|\b500\b(?=[,;] (GEX|600))|1,000 genes|134\b|"
        r"6,968|1,677|5,000 peaks|top 5,000|1,100|1,600|4 donors|\bp[1-4]\b|\b09[A-H]\b|s1d[12]|76 of 1,524|"
        r"4% (of entries )?nonzero|4,000 genes|100k cells x 100k peaks|20k-100k",
        "a size or a name in a data set (benchmarks/README.md's 'Data and splits'; the synthetic data of speed.py)",
    ),
    (
        r"1e-4|\b20% of|50 components|alpha from 0\.1 to 1000|\{5, 10, 20, 40\}|3-fold|six training|"
        r"10 on SNARE-seq2|\b100 on SNARE-seq2|seeds? 0, 1(,| and) 2|seed 0 only|"
        r"one of its six|MMD 3|MMD 10|\b10 when|else 0|2 seeds|3 seeds",
        "a setting of the benchmark or of an experiment, stated with it",
    ),
    (
        r"default 1\)|default : 1 when|\(default 1\)|from 0 to 1|at most 50|patience 20|90/10|"
        r"400 epochs up to 20k|slope clipped at 0|2\^-11|0\.25 to 4 times|1 cells",
        "a default or a constant of the code, written in its description (docstrings state the same)",
    ),
    (r"\b(CD|cd)\d+a?\b|\bCD\d+\b", "a protein's name"),
    (r"exit status \d+", "an exit status of the command line, stated with its meaning"),
]


# ------------------------------------------------------------------------------------------------ the pages
NUMBER = re.compile(r"(?<![\w.])-?\d[\d,]*(?:\.\d+)?[kM]?(?![\w])")
ACCURACY_TABLE = re.compile(r"<!-- accuracy-table:start -->.*?<!-- accuracy-table:end -->", re.DOTALL)


def prose(text: str) -> str:
    """The text a reader reads as prose or tables: without code blocks, inline code, math, link targets and
    directives' options."""
    text = ACCURACY_TABLE.sub(" ", text)
    text = re.sub(r"^(`{3,}|:{3,})[^\n]*\n.*?^\1\s*$", " ", text, flags=re.DOTALL | re.MULTILINE)
    text = re.sub(r"\$\$.*?\$\$", " ", text, flags=re.DOTALL)
    text = re.sub(r"\$[^$\n]+\$", " ", text)
    text = re.sub(r"`[^`\n]*`", " ", text)
    text = re.sub(r"\]\([^)]*\)", "]", text)
    text = re.sub(r"https?://\S+", " ", text)
    text = re.sub(r"<[^>\n]+>", " ", text)
    return re.sub(r"\s+", " ", text)


def numbers(text: str) -> list[str]:
    """The numbers of ``text`` that no ALLOWED pattern explains, as printed (a trailing comma dropped)."""
    for pattern, _ in ALLOWED:
        text = re.sub(pattern, " ", text)
    return [match.rstrip(",") for match in NUMBER.findall(text)]


def printed(value: float, text: str) -> str:
    """``value`` printed as ``text`` prints its number: the same decimals, thousands and k/M suffix."""
    suffix = text[-1] if text[-1] in "kM" else ""
    digits = text.rstrip("kM").replace(",", "")
    decimals = len(digits.split(".")[1]) if "." in digits else 0
    out = f"{value:,.{decimals}f}" if "," in text else f"{value:.{decimals}f}"
    return out + suffix


@pytest.mark.parametrize("page", PAGES)
def test_every_number_on_the_page_is_claimed_or_allowed(page):
    found = numbers(prose((ROOT / page).read_text()))
    claims = CLAIMS.get(page, {})
    unexplained = sorted({number for number in found if number not in claims})
    assert not unexplained, (
        f"{page}: numbers that no results file backs: {unexplained}. Add the value to a results file and a claim to "
        f"tests/test_numbers.py's CLAIMS, or remove the number (or, if no measurement produces it, add a pattern with "
        f"its reason to ALLOWED)"
    )
    stale = sorted(set(claims) - set(found))
    assert not stale, f"{page}: CLAIMS lists numbers the page no longer prints: {stale}; remove them"


@pytest.mark.parametrize("page", [page for page in PAGES if page in CLAIMS])
def test_every_claimed_number_is_the_value_of_its_source(page):
    wrong = {}
    for text, sources in CLAIMS[page].items():
        for source in sources if isinstance(sources, tuple) else (sources,):
            if printed(source(), text) != text:
                wrong.setdefault(text, []).append(printed(source(), text))
    assert not wrong, f"{page}: printed -> the results say: {wrong}; rerun or correct the prose"


def test_printed_rounds_like_the_pages():
    assert printed(0.2546, "0.255") == "0.255"
    assert printed(0.891 * 100, "89") == "89"
    assert printed(1365.2, "1,365") == "1,365"
    assert printed(25.0, "25k") == "25k"
    assert printed(0.2544, "0.255") != "0.255"


def test_an_unclaimed_number_fails():
    assert numbers(prose("pengster 0.2.0 scores 0.987 on `0.5` and $0.4$")) == ["0.987"]
    assert numbers(prose("```python\nx = 0.3\n```\n")) == []


def test_the_readme_accuracy_table_is_the_rendering_of_accuracy_json():
    sys.path.insert(0, str(ROOT))
    try:
        from benchmarks._report import README_END, README_START, headline
    finally:
        sys.path.remove(str(ROOT))
    readme = (ROOT / "README.md").read_text()
    table = readme.split(README_START, 1)[1].split(README_END, 1)[0]
    rows = [line for line in table.splitlines() if line.startswith("|")]
    assert rows == headline(_json("accuracy")), "README's accuracy table differs from accuracy.json: rerun the report"


def test_the_stated_measurement_dates_and_versions_are_those_of_the_results():
    """README and docs state when and with which version the tables were measured; benchmarks/README.md records it
    for each results file, and each results page states it too."""
    provenance = (ROOT / "benchmarks" / "README.md").read_text()
    for page in PAGES:
        for date in re.findall(r"\b2026-\d\d-\d\d\b", (ROOT / page).read_text()):
            assert date in provenance, f"{page} gives {date}, a date benchmarks/README.md does not record"
    # the dates the README gives for the accuracy table are those of the run that made accuracy.md
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("## Accuracy against") : readme.index("<!-- accuracy-table:start -->")]
    accuracy_page = (RESULTS / "accuracy.md").read_text()
    dates = re.findall(r"\b2026-\d\d-\d\d\b", section)
    assert dates and all(date in accuracy_page for date in dates), (dates, "not all in accuracy.md's provenance")
    for name in ["accuracy", "tune", "training_length", "training_curve", "readout", "query", "speed"]:
        text = (RESULTS / f"{name}.md").read_text()
        assert re.search(r"pengster 0\.\d\.\d", text), f"benchmarks/results/{name}.md does not state the version"


def test_the_readme_says_pengster_leads_only_where_it_does():
    """ "leads every headline row" must hold; "the best mean of every headline row but one" must name the one."""
    readme = (ROOT / "README.md").read_text()
    but_one = "pengster has the best mean of every headline row but one" in readme
    if "pengster leads every headline row" not in readme and not but_one:
        return
    by_row: dict[tuple[str, str], dict[str, float]] = {}
    for r in _json("accuracy"):
        if r["main"] and r["mean"] is not None and r["mean"] == r["mean"]:
            sign = 1 if r["higher_is_better"] else -1
            by_row.setdefault((r["dataset"], r["task"]), {})[r["method"]] = sign * round(r["mean"], 3)
    behind = sorted(row for row, scores in by_row.items() if scores["pengster"] < max(scores.values()))
    if but_one:
        assert behind == [("bmmc_cite", "ADT->GEX")], f"README names BMMC CITE-seq ADT->GEX; behind: {behind}"
        return
    assert not behind, f"README says pengster leads every headline row; it does not on {behind}"
