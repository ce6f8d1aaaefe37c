"""pengster.distributions: the ATAC Bernoulli with cell and region factors against torch's Bernoulli."""

from __future__ import annotations

import torch
from torch.distributions import Bernoulli

from pengster.distributions import FactorBernoulli
from pengster.distributions._factor_bernoulli import PROB_EPS


def test_factor_bernoulli_equals_torch_bernoulli_of_the_factorised_probabilities():
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(40, 30, generator=generator, requires_grad=True)
    region = torch.randn(30, generator=generator)
    cell = torch.rand(40, 1, generator=generator)
    open_peaks = (torch.rand(40, 30, generator=generator) < 0.2).float()
    counts = open_peaks * torch.randint(1, 4, (40, 30), generator=generator)
    probs = (torch.sigmoid(logits) * torch.sigmoid(region) * cell).clamp(PROB_EPS, 1 - PROB_EPS)
    reference = Bernoulli(probs=probs)
    px = FactorBernoulli(logits, region, cell)
    # counts above 1 are open peaks: the same as the binarised counts under torch's Bernoulli
    expected = reference.log_prob((counts > 0).float())
    torch.testing.assert_close(px.log_prob(counts), expected)
    torch.testing.assert_close(px.mean, reference.mean)
    torch.testing.assert_close(px.variance, reference.variance)
    (grad_expected,) = torch.autograd.grad(expected.sum(), logits)
    (grad_got,) = torch.autograd.grad(FactorBernoulli(logits, region, cell).log_prob(counts).sum(), logits)
    torch.testing.assert_close(grad_got, grad_expected)
    samples = px.sample((2000,))
    assert samples.shape == (2000, 40, 30) and set(samples.unique().tolist()) <= {0.0, 1.0}
    torch.testing.assert_close(samples.mean(0), probs.detach(), atol=0.05, rtol=0)


def test_factor_bernoulli_log_likelihood_is_finite_at_extreme_logits():
    logits = torch.tensor([[-1e4, 0.0, 1e4]])
    px = FactorBernoulli(logits, torch.zeros(3), torch.ones(1, 1))
    assert torch.isfinite(px.log_prob(torch.tensor([[1.0, 0.0, 0.0]]))).all()
    assert torch.isfinite(px.log_prob(torch.tensor([[0.0, 1.0, 1.0]]))).all()


def test_factor_bernoulli_scores_posterior_samples_and_every_factor_like_torch_bernoulli():
    # logits of several posterior draws (samples, cells, peaks) with one cell factor per cell; gradients of all three
    generator = torch.Generator().manual_seed(1)
    logits = torch.randn(3, 20, 15, generator=generator, requires_grad=True)
    region = torch.randn(15, generator=generator, requires_grad=True)
    cell = torch.rand(20, 1, generator=generator).mul(0.9).add(0.05).requires_grad_()
    value = (torch.rand(20, 15, generator=generator) < 0.3).float()
    got = FactorBernoulli(logits, region, cell).log_prob(value)
    probs = torch.sigmoid(logits) * torch.sigmoid(region) * cell
    expected = Bernoulli(probs=probs).log_prob(value.expand_as(probs))
    torch.testing.assert_close(got, expected)
    for parameter in (logits, region, cell):
        (grad_got,) = torch.autograd.grad(got.sum(), parameter, retain_graph=True)
        (grad_expected,) = torch.autograd.grad(expected.sum(), parameter, retain_graph=True)
        torch.testing.assert_close(grad_got, grad_expected)
