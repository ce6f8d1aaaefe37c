"""Likelihoods that :mod:`scvi.distributions` lacks."""

from ._factor_bernoulli import FactorBernoulli

__all__ = ["FactorBernoulli"]
