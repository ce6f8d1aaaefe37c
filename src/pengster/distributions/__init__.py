"""Likelihoods that :mod:`scvi.distributions` lacks, and scvi-tools' count likelihoods scored at non-zero counts."""

from ._factor_bernoulli import FactorBernoulli
from ._sparse_counts import SparseNegativeBinomial, SparseNegativeBinomialMixture, SparseZeroInflatedNegativeBinomial

__all__ = [
    "FactorBernoulli",
    "SparseNegativeBinomial",
    "SparseNegativeBinomialMixture",
    "SparseZeroInflatedNegativeBinomial",
]
