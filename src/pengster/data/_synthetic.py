"""A synthetic mosaic with cell types, batches and real cross-modal dependence."""

from __future__ import annotations

import logging
from collections.abc import Mapping

import anndata as ad
import mudata as md
import numpy as np
import pandas as pd
from scipy import sparse

from ._mosaic import mosaic

logger = logging.getLogger(__name__)

N_LATENT = 3
"""Dimension of the true latent of :func:`synthetic_mosaic`."""
LATENT_OBSM_KEY = "synthetic_latent"
"""``mdata.obsm`` key of the true latent of each cell written by :func:`synthetic_mosaic`."""
_N_PROGRAMS = 8
_CHUNK_ELEMENTS = 2**23


def _modalities_of(name: str) -> tuple[str, ...]:
    lowered = name.lower()
    if "multiome" in lowered:
        return ("rna", "atac")
    if "cite" in lowered:
        return ("rna", "prot")
    if "rna" in lowered:
        return ("rna",)
    raise ValueError(
        f"synthetic_mosaic(): cannot tell the modalities of dataset {name!r}; use a name containing 'multiome' "
        "(rna+atac), 'cite' (rna+prot) or 'rna' (rna only)."
    )


def _softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
    return shifted / shifted.sum(axis=1, keepdims=True)


class _Truth:
    """Parameters shared by all datasets: one biology, measured by different assays."""

    def __init__(
        self, rng: np.random.Generator, *, n_genes: int, n_peaks: int, n_proteins: int, n_types: int, n_batches: int
    ):
        self.centroids = rng.normal(0.0, 2.0, size=(n_types, N_LATENT))
        self.w_rna = rng.normal(0.0, 0.5, size=(N_LATENT, n_genes))
        self.b_rna = rng.normal(0.0, 1.0, size=n_genes)
        self.s_rna = rng.normal(0.0, 0.3, size=(n_batches, n_genes))
        self.w_prot = rng.normal(0.0, 0.4, size=(N_LATENT, n_proteins))
        self.b_prot = rng.normal(1.0, 0.5, size=n_proteins)
        self.s_prot = rng.normal(0.0, 0.2, size=(n_batches, n_proteins))
        self.background_prot = np.exp(rng.normal(2.0, 0.5, size=n_proteins))
        # ATAC: each cell's accessibility is a mixture of a few peak programs whose weights depend on the
        # latent, so positions can be sampled per nonzero without a dense (cells x peaks) matrix.
        self.w_atac = rng.normal(0.0, 1.0, size=(N_LATENT, _N_PROGRAMS))
        self.s_atac = rng.normal(0.0, 0.3, size=(n_batches, _N_PROGRAMS))
        peak_logits = rng.normal(0.0, 0.5, size=n_peaks) + rng.normal(size=(_N_PROGRAMS, n_peaks))
        programs = np.exp(peak_logits - peak_logits.max(axis=1, keepdims=True))
        self.program_cdf = np.cumsum(programs, axis=1)
        self.program_cdf /= self.program_cdf[:, -1:]


def _chunks(n_cells: int, n_features: int):
    size = max(1, _CHUNK_ELEMENTS // max(n_features, 1))
    for start in range(0, n_cells, size):
        yield slice(start, min(start + size, n_cells))


def _rna(rng, truth: _Truth, latent, batch) -> sparse.csr_matrix:
    n_genes = truth.w_rna.shape[1]
    library = np.exp(rng.normal(np.log(1000.0), 0.4, size=len(latent)))
    blocks = []
    for rows in _chunks(len(latent), n_genes):
        proportions = _softmax(latent[rows] @ truth.w_rna + truth.b_rna + truth.s_rna[batch[rows]])
        mean = proportions * library[rows, None]
        # negative binomial with inverse dispersion 10, as a gamma-Poisson mixture
        counts = rng.poisson(rng.gamma(10.0, mean / 10.0))
        blocks.append(sparse.csr_matrix(counts.astype(np.float32)))
    return sparse.vstack(blocks, format="csr")


def _prot(rng, truth: _Truth, latent, batch) -> sparse.csr_matrix:
    blocks = []
    for rows in _chunks(len(latent), len(truth.b_prot)):
        background = truth.background_prot * np.exp(rng.normal(0.0, 0.3, size=(rows.stop - rows.start, 1)))
        foreground = np.exp(latent[rows] @ truth.w_prot + truth.b_prot + truth.s_prot[batch[rows]])
        mean = background * (1.0 + foreground)
        counts = rng.poisson(rng.gamma(20.0, mean / 20.0))
        blocks.append(sparse.csr_matrix(counts.astype(np.float32)))
    return sparse.vstack(blocks, format="csr")


def _sorted_uniforms(rng: np.random.Generator, size: int) -> np.ndarray:
    """Sorted uniform draws in linear time (normalised exponential spacings), for a fast searchsorted."""
    spacings = np.cumsum(rng.exponential(size=size + 1))
    return spacings[:-1] / spacings[-1]


def _atac(rng, truth: _Truth, latent, batch, *, density: float) -> sparse.csr_matrix:
    n_peaks = truth.program_cdf.shape[1]
    # about 1 / (1 - p) draws per distinct nonzero, so the stored fraction is near `density`
    draws_per_cell = -np.log1p(-min(density, 0.9)) * n_peaks
    depth = np.exp(rng.normal(-0.08, 0.4, size=len(latent)))
    blocks = []
    for rows in _chunks(len(latent), int(draws_per_cell * 4) + 1):
        weights = _softmax(latent[rows] @ truth.w_atac + truth.s_atac[batch[rows]])
        n_draws = np.minimum(rng.poisson(draws_per_cell * depth[rows]), 4 * n_peaks)
        per_program = rng.multinomial(n_draws, weights)
        cells, peaks = [], []
        for index in range(_N_PROGRAMS):
            program_cells = np.repeat(np.arange(len(n_draws), dtype=np.int64), per_program[:, index])
            # draws of one program are exchangeable across its cells: sorted peaks, shuffled cells
            rng.shuffle(program_cells)
            uniforms = _sorted_uniforms(rng, len(program_cells))
            cells.append(program_cells)
            peaks.append(np.searchsorted(truth.program_cdf[index], uniforms, side="right"))
        peak = np.minimum(np.concatenate(peaks), n_peaks - 1)
        block = sparse.csr_matrix(
            (np.ones(len(peak), dtype=np.float32), (np.concatenate(cells), peak)), shape=(len(n_draws), n_peaks)
        )
        block.sum_duplicates()
        blocks.append(block)
    return sparse.vstack(blocks, format="csr")


def _gene_panels(names: list[str], n_genes: int, gene_overlap: float, rng) -> dict[str, np.ndarray]:
    if not 0.0 <= gene_overlap <= 1.0:
        raise ValueError(f"synthetic_mosaic(): gene_overlap={gene_overlap}; pass a fraction in [0, 1].")
    rna_names = [name for name in names if "rna" in _modalities_of(name)]
    order = rng.permutation(n_genes)
    n_shared = round(gene_overlap * n_genes)
    private = np.array_split(order[n_shared:], max(len(rna_names), 1))
    return {name: np.sort(np.concatenate([order[:n_shared], private[i]])) for i, name in enumerate(rna_names)}


def synthetic_mosaic(
    *,
    n_cells: Mapping[str, int] | None = None,
    n_genes: int = 200,
    n_peaks: int = 300,
    n_proteins: int = 20,
    n_cell_types: int = 4,
    n_batches: int = 2,
    gene_overlap: float = 1.0,
    atac_density: float = 0.06,
    seed: int = 0,
) -> md.MuData:
    """Simulate a mosaic of datasets sharing one biology: for unit tests and scale benchmarks, never accuracy.

    Each cell has a cell type and a true latent of dimension 3 (Gaussian around its type's centroid).
    Every modality depends on that latent: RNA counts are negative binomial with
    ``log mean = log library + log softmax(latent @ W + bias + batch shift)`` and log-normal library
    sizes; protein counts are a background plus a foreground ``exp(latent @ W + bias + batch shift)``;
    ATAC counts (mostly 1, some 2+) are drawn per nonzero from a mixture of peak programs whose weights
    are a softmax of the latent, with a log-normal per-cell depth. ATAC is generated sparse in chunks, so
    memory is proportional to the nonzeros (1e6 cells x 1e5 peaks is feasible).

    Parameters
    ----------
    n_cells
        Dataset name to number of cells. Names containing ``'multiome'`` get rna+atac, ``'cite'`` rna+prot,
        ``'rna'`` rna only. Default ``{'multiome': 150, 'cite': 150}``.
    n_genes
        Number of genes in the union of the RNA panels.
    n_peaks
        Number of ATAC peaks.
    n_proteins
        Number of antibodies.
    n_cell_types
        Number of cell types.
    n_batches
        Number of batches (``'b0'``, ``'b1'``, ...), shared by all datasets, each with its own shifts.
    gene_overlap
        Fraction of genes measured by every dataset with RNA; the others are split between datasets.
    atac_density
        Approximate fraction of nonzero ATAC entries.
    seed
        Seed of the random generator; the same seed gives the same data.

    Returns
    -------
    The output of :func:`~pengster.data.mosaic` on the simulated datasets, with integer counts as
    float32 CSR in ``X`` and ``layers['counts']`` of every modality, ``obs['cell_type']``,
    ``obs['batch']``, ``obs['dataset']`` (categorical) and the true latent in ``obsm['synthetic_latent']``.
    """
    n_cells = {"multiome": 150, "cite": 150} if n_cells is None else dict(n_cells)
    rng = np.random.default_rng(seed)
    truth = _Truth(
        rng, n_genes=n_genes, n_peaks=n_peaks, n_proteins=n_proteins, n_types=n_cell_types, n_batches=n_batches
    )
    panels = _gene_panels(list(n_cells), n_genes, gene_overlap, rng)
    var = {
        "rna": pd.DataFrame(index=[f"gene{i}" for i in range(n_genes)]),
        "atac": pd.DataFrame(index=[f"peak{i}" for i in range(n_peaks)]),
        "prot": pd.DataFrame(index=[f"protein{i}" for i in range(n_proteins)]),
    }
    type_names = [f"type{i}" for i in range(n_cell_types)]
    batch_names = [f"b{i}" for i in range(n_batches)]
    datasets, latents = {}, []
    for name, count in n_cells.items():
        cell_type = rng.integers(n_cell_types, size=count)
        batch = rng.integers(n_batches, size=count)
        latent = truth.centroids[cell_type] + rng.normal(0.0, 0.5, size=(count, N_LATENT))
        latents.append(latent)
        obs = pd.DataFrame(
            {
                "cell_type": pd.Categorical.from_codes(cell_type, categories=type_names),
                "batch": pd.Categorical.from_codes(batch, categories=batch_names),
            },
            index=[f"{name}_cell{i}" for i in range(count)],
        )
        modalities = {}
        for key in _modalities_of(name):
            if key == "rna":
                counts = _rna(rng, truth, latent, batch)[:, panels[name]]
                features = var["rna"].iloc[panels[name]]
            elif key == "atac":
                counts, features = _atac(rng, truth, latent, batch, density=atac_density), var["atac"]
            else:
                counts, features = _prot(rng, truth, latent, batch), var["prot"]
            modalities[key] = ad.AnnData(X=counts, obs=obs.copy(), var=features.copy(), layers={"counts": counts})
        with md.set_options(pull_on_update=False):
            datasets[name] = md.MuData(modalities)
            datasets[name].obs = obs.loc[datasets[name].obs_names]
    combined = mosaic(datasets)
    combined.obsm[LATENT_OBSM_KEY] = np.concatenate(latents)
    logger.info("simulated %s cells over datasets %s", combined.n_obs, list(n_cells))
    return combined
