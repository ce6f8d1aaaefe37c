"""pengster.distributions' count likelihoods with lgamma at the non-zero counts only, against scvi-tools' own.

How close is "equal" in float32. scvi-tools' log-likelihood adds large terms that cancel (at theta = 1e4,
``lgamma(x + theta) - lgamma(theta)`` subtracts two numbers near 8e4, which float32 keeps to about 0.005), and its
gradients pass through nonlinearities (softplus, logsumexp) that turn a rounding of the value into an error of the
gradient. A fixed rtol/atol is too loose for most entries or too tight for some. The tolerance is instead a first-order
bound on float32 rounding, computed per entry in float64 by autograd (``error_scales``): every input and every
intermediate of scvi-tools' formula is rounded to within ``eps32`` relative (half that for + - *, an ulp or so for
log and lgamma), and the bound is ``C * eps32`` times the sum of the value's (or gradient's) sensitivities to those
roundings. The tests check that scvi-tools' own float32 values and gradients are within the bound of the float64 ones
(the bound is the size of its rounding, not a threshold picked to pass), that ours are too, and that ours and
scvi-tools' are within twice the bound of each other. Measured over these tests, both are within ``0.61 * eps32`` times
the sensitivities, so ``C = 4`` leaves a factor 6.5. In float64 the two agree to ``1e-10`` of the same scale.
"""

import warnings

import pytest
import scvi.distributions as scvi_distributions
import torch
import torch.nn.functional as F

from pengster.distributions import (
    SparseNegativeBinomial,
    SparseNegativeBinomialMixture,
    SparseZeroInflatedNegativeBinomial,
)
from pengster.distributions._sparse_counts import EPS, _NonzeroEntries

EPS32 = torch.finfo(torch.float32).eps
C = 4
REGIMES = {
    # name: (log10 mu range, log10 theta range)
    "moderate": ((-1.0, 1.0), (-0.5, 1.0)),
    "theta_small": ((-1.0, 1.0), (-3.0, -1.0)),
    "theta_large": ((-1.0, 1.0), (3.0, 5.0)),
    "mu_tiny": ((-9.0, -5.0), (-1.0, 1.0)),
    "mu_large": ((2.0, 3.5), (-1.0, 1.0)),
}


def log_uniform(shape, low_high, generator):
    low, high = low_high
    return 10 ** (low + (high - low) * torch.rand(shape, generator=generator, dtype=torch.float64))


def counts_like(mu, theta, generator, zeros=0.9):
    """Negative binomial counts with ``zeros`` of the entries set to 0, and a few counts where mu is tiny."""
    rate = torch._standard_gamma(theta.expand_as(mu), generator=generator) * mu / theta
    counts = torch.poisson(rate.clamp_max(1e7), generator=generator)
    counts = counts * (torch.rand(mu.shape, generator=generator, dtype=torch.float64) > zeros)
    surprise = torch.rand(mu.shape, generator=generator, dtype=torch.float64) < 0.02
    return torch.where(surprise, torch.randint(1, 5, mu.shape, generator=generator, dtype=torch.float64), counts)


class Rounding:
    """The float32 rounding of each intermediate result, as a zero additive error that autograd differentiates."""

    def __init__(self):
        self.errors, self.intermediates, self.read_by_backward = [], [], []

    def __call__(self, intermediate, *, read_by_backward=False):
        error = torch.zeros_like(intermediate, requires_grad=True)
        self.errors.append(error)
        self.intermediates.append(intermediate)
        self.read_by_backward.append(read_by_backward)
        return intermediate + error


def scvi_log_nb(x, mu, theta, rounded):
    """scvi-tools' ``log_nb_positive``, operation by operation: ``(log NB(0), log NB(x) - log NB(0))``."""
    log_theta_mu = rounded(torch.log(rounded(theta + mu + EPS)))
    log_nb_zero = rounded(theta * rounded(rounded(torch.log(rounded(theta + EPS))) - log_theta_mu))
    log_odds = rounded(rounded(torch.log(rounded(mu + EPS))) - log_theta_mu)
    gamma_terms = rounded(
        rounded(rounded(torch.lgamma(rounded(x + theta))) - rounded(torch.lgamma(theta))) - rounded(torch.lgamma(x + 1))
    )
    return log_nb_zero, rounded(rounded(x * log_odds) + gamma_terms)


def scvi_nb(x, mu, theta, rounded):
    return rounded(sum(scvi_log_nb(x, mu, theta, rounded)))


def scvi_zinb(x, mu, theta, zi_logits, rounded):
    log_nb_zero, rest = scvi_log_nb(x, mu, theta, rounded)
    softplus = rounded(F.softplus(-zi_logits))
    nb_zero_not_dropout = rounded(log_nb_zero - zi_logits)
    log_zero = rounded(rounded(F.softplus(nb_zero_not_dropout)) - softplus)
    log_nonzero = rounded(rounded(nb_zero_not_dropout - softplus) + rest)
    return torch.where(x > 0, log_nonzero, log_zero)


def scvi_mixture(x, mu1, mu2, theta, logits, rounded):
    background, foreground = (rounded(sum(scvi_log_nb(x, mu, theta, rounded))) for mu in (mu1, mu2))
    # scvi-tools' logsumexp weighs the gradients of the components by exp(component - output): its float32 output
    mixed = rounded(torch.logaddexp(background, rounded(foreground - logits)), read_by_backward=True)
    return rounded(mixed - rounded(F.softplus(-logits)))


def error_scales(formula, params, x):
    """First-order float32 error scales of ``formula``'s value and of its gradient with respect to each parameter.

    Each intermediate ``t_k`` and each input ``p`` is off by a relative ``eps32`` at most (a few for ``lgamma``), so
    the value is off by ``eps32 * (sum_k |df/dt_k| |t_k| + sum_p |df/dp| |p|)`` to first order; a gradient ``g`` by
    ``eps32 * (sum_k |dg/dt_k| |t_k| + sum_q |dg/dq| |q| + sum_k |df/dt_k| |dt_k/dp| (1 + |t_k| if the backward pass
    reads t_k))``, the third for the rounding of the backward pass's own factors. Computed per entry in float64; a
    per-gene ``theta`` sums its cells.
    """
    shape = torch.broadcast_shapes(x.shape, *(p.shape for p in params))
    leaves = [p.detach().double().expand(shape).clone().requires_grad_() for p in params]
    rounded = Rounding()
    log_prob = formula(x.double(), *leaves, rounded)
    grads = torch.autograd.grad(log_prob.sum(), leaves, create_graph=True)
    df_dt = torch.autograd.grad(log_prob.sum(), rounded.errors, retain_graph=True, materialize_grads=True)
    sizes = [t.detach().abs() for t in rounded.intermediates]
    value_scale = sum(d.abs() * t for d, t in zip(df_dt, sizes, strict=True))
    value_scale = value_scale + sum(g.detach().abs() * p.detach().abs() for g, p in zip(grads, leaves, strict=True))
    grad_scales = []
    for param, leaf, grad in zip(params, leaves, grads, strict=True):
        dg_dt = torch.autograd.grad(grad.sum(), rounded.errors, retain_graph=True, materialize_grads=True)
        dg_dq = torch.autograd.grad(grad.sum(), leaves, retain_graph=True, materialize_grads=True)
        scale = sum(d.abs() * t for d, t in zip(dg_dt, sizes, strict=True))
        scale = scale + sum(d.abs() * q.detach().abs() for d, q in zip(dg_dq, leaves, strict=True))
        for d, t, read in zip(df_dt, rounded.intermediates, rounded.read_by_backward, strict=True):
            if t.requires_grad:
                (dt_dp,) = torch.autograd.grad(t.sum(), leaf, retain_graph=True, materialize_grads=True)
                scale = scale + d.abs() * dt_dp.abs() * (1 + t.detach().abs() if read else 1)
        grad_scales.append(sum_to(scale, param.shape))
    return value_scale, grad_scales


def sum_to(tensor, shape):
    """``tensor`` summed over the axes along which ``shape`` was broadcast."""
    lead = tensor.dim() - len(shape)
    tensor = tensor.sum(tuple(range(lead))) if lead else tensor
    axes = tuple(i for i, n in enumerate(shape) if n == 1 and tensor.shape[i] != 1)
    return tensor.sum(axes, keepdim=True) if axes else tensor


def value_and_grads(make, params, x, **log_prob_kwargs):
    leaves = [p.detach().clone().requires_grad_() for p in params]
    log_prob = make(*leaves).log_prob(x, **log_prob_kwargs)
    grads = torch.autograd.grad(log_prob.sum(), leaves)
    return log_prob.detach(), [g.detach() for g in grads]


def assert_within(got, expected, scale, factor):
    # below float32's smallest normal number the scale has underflowed: a weight of exp(-600) is 0 in float32
    excess = (got.double() - expected.double()).abs() - factor * scale - torch.finfo(torch.float32).tiny
    assert torch.isfinite(got).all()
    assert excess.max() <= 0, f"off by {excess.max():.3g} beyond the tolerance"


def check_against_scvi(ours, theirs, formula, params, x, **log_prob_kwargs):
    """Values and gradients of ``ours`` against ``theirs``, in float64 and float32 (see the module docstring)."""
    value_scale, grad_scales = error_scales(formula, params, x)
    truth, truth_grads = value_and_grads(theirs, [p.double() for p in params], x.double())
    got, got_grads = value_and_grads(ours, [p.double() for p in params], x.double(), **log_prob_kwargs)
    assert_within(got, truth, value_scale, 1e-10)
    for g, t, s in zip(got_grads, truth_grads, grad_scales, strict=True):
        assert_within(g, t, s, 1e-10)

    params32, x32 = [p.float() for p in params], x.float()
    expected, expected_grads = value_and_grads(theirs, params32, x32)
    got, got_grads = value_and_grads(ours, params32, x32, **log_prob_kwargs)
    for ours_, scvi_, truth_, scale in zip(
        [got, *got_grads], [expected, *expected_grads], [truth, *truth_grads], [value_scale, *grad_scales], strict=True
    ):
        assert_within(scvi_, truth_, scale, C * EPS32)  # the bound holds for scvi-tools' own float32 result
        assert_within(ours_, truth_, scale, C * EPS32)
        assert_within(ours_, scvi_, scale, 2 * C * EPS32)


def make_nb(cls):
    return lambda mu, theta: cls(mu=mu, theta=theta, scale=None, validate_args=False)


def make_zinb(cls):
    return lambda mu, theta, zi_logits: cls(mu=mu, theta=theta, zi_logits=zi_logits, validate_args=False)


def make_mixture(cls):
    return lambda mu1, mu2, theta, logits: cls(
        mu1=mu1, mu2=mu2, theta1=theta, mixture_logits=logits, validate_args=False
    )


def rna_params(regime, generator, shape=(24, 40)):
    mu_range, theta_range = REGIMES[regime]
    mu = log_uniform(shape, mu_range, generator)
    theta = log_uniform(shape[-1:], theta_range, generator)
    return mu, theta, counts_like(mu, theta, generator)


def protein_params(regime, generator, shape=(24, 12)):
    mu_range, theta_range = REGIMES[regime]
    background = log_uniform(shape, mu_range, generator)
    foreground = background * (1 + log_uniform(shape, (-1.0, 1.5), generator))
    theta = log_uniform(shape[-1:], theta_range, generator)
    logits = torch.randn(shape, generator=generator, dtype=torch.float64) * 3
    x = counts_like(foreground, theta, generator, zeros=0.3)
    return background, foreground, theta, logits, x


@pytest.fixture(params=["sparse", "dense"])
def path(request, monkeypatch):
    """Both ways through ``log_prob`` on the CPU: the non-zero entries found, and lgamma everywhere (as on a GPU
    without ``nonzero``)."""
    if request.param == "dense":
        monkeypatch.setattr(_NonzeroEntries, "of", classmethod(lambda cls, distribution, value, nonzero: None))
    return request.param


@pytest.mark.parametrize("regime", list(REGIMES))
def test_negative_binomial_equals_scvi_values_and_gradients(regime, path):
    generator = torch.Generator().manual_seed(0)
    mu, theta, x = rna_params(regime, generator)
    assert (x == 0).double().mean() > 0.8
    check_against_scvi(
        make_nb(SparseNegativeBinomial), make_nb(scvi_distributions.NegativeBinomial), scvi_nb, [mu, theta], x
    )


@pytest.mark.parametrize("regime", list(REGIMES))
def test_zero_inflated_negative_binomial_equals_scvi_values_and_gradients(regime, path):
    generator = torch.Generator().manual_seed(1)
    mu, theta, x = rna_params(regime, generator)
    zi_logits = torch.randn(mu.shape, generator=generator, dtype=torch.float64) * 3
    check_against_scvi(
        make_zinb(SparseZeroInflatedNegativeBinomial),
        make_zinb(scvi_distributions.ZeroInflatedNegativeBinomial),
        scvi_zinb,
        [mu, theta, zi_logits],
        x,
    )


@pytest.mark.parametrize("regime", list(REGIMES))
def test_negative_binomial_mixture_equals_scvi_values_and_gradients(regime, path):
    generator = torch.Generator().manual_seed(2)
    background, foreground, theta, logits, x = protein_params(regime, generator)
    check_against_scvi(
        make_mixture(SparseNegativeBinomialMixture),
        make_mixture(scvi_distributions.NegativeBinomialMixture),
        scvi_mixture,
        [background, foreground, theta, logits],
        x,
    )


def test_leading_posterior_axis_and_per_gene_theta_broadcast_like_scvi(path):
    # k posterior draws: mu (k, n_cells, n_genes), theta (n_genes,), counts (n_cells, n_genes); the protein background
    # is one (n_cells, n_proteins) tensor expanded over the draws, as pengster's protein head builds it
    generator = torch.Generator().manual_seed(3)
    mu, theta, x = rna_params("moderate", generator, shape=(3, 24, 40))
    x = x[0]
    zi_logits = torch.randn(mu.shape, generator=generator, dtype=torch.float64)
    for ours, theirs, formula, params in (
        (make_nb(SparseNegativeBinomial), make_nb(scvi_distributions.NegativeBinomial), scvi_nb, [mu, theta]),
        (
            make_zinb(SparseZeroInflatedNegativeBinomial),
            make_zinb(scvi_distributions.ZeroInflatedNegativeBinomial),
            scvi_zinb,
            [mu, theta, zi_logits],
        ),
    ):
        assert ours(*params).log_prob(x).shape == (3, 24, 40)
        check_against_scvi(ours, theirs, formula, params, x)

    background, foreground, theta, logits, x = protein_params("moderate", generator)
    foreground, logits = foreground.expand(2, -1, -1).clone(), logits.expand(2, -1, -1).clone()

    def expand_background(cls):
        return lambda mu1, mu2, theta, logits: make_mixture(cls)(mu1.expand_as(mu2), mu2, theta, logits)

    check_against_scvi(
        expand_background(SparseNegativeBinomialMixture),
        expand_background(scvi_distributions.NegativeBinomialMixture),
        scvi_mixture,
        [background, foreground, theta, logits],
        x,
    )


def masked_inputs(generator, shape=(16, 30)):
    """Rates that are 0 at the unmeasured features (as pengster's masked normalisation makes them), counts > 0 at
    some of them, parameters at their extremes, and the 0/1 feature mask."""
    mask = (torch.rand(shape[-1], generator=generator) > 0.3).float().expand(shape)
    mu = torch.rand(shape, generator=generator) * 10 ** torch.randint(-9, 4, shape, generator=generator) * mask
    theta = 10.0 ** torch.linspace(-6, 6, shape[-1])
    x = torch.poisson(torch.rand(shape, generator=generator) * 3) * (torch.rand(shape, generator=generator) < 0.2)
    return mu, theta, x, mask


@pytest.mark.parametrize("likelihood", ["nb", "zinb", "mixture"])
def test_masked_and_zero_entries_have_finite_values_and_gradients(likelihood, path):
    generator = torch.Generator().manual_seed(4)
    mu, theta, x, mask = masked_inputs(generator)
    assert ((x > 0) & (mask == 0)).any() and ((x == 0) & (mu == 0)).any()
    leaves = [mu.clone().requires_grad_(), theta.clone().requires_grad_()]
    if likelihood == "nb":
        px = SparseNegativeBinomial(mu=leaves[0], theta=leaves[1], validate_args=False)
    elif likelihood == "zinb":
        leaves.append((torch.randn(mu.shape, generator=generator) * 20).requires_grad_())
        px = SparseZeroInflatedNegativeBinomial(mu=leaves[0], theta=leaves[1], zi_logits=leaves[2], validate_args=False)
    else:
        leaves.append((torch.randn(mu.shape, generator=generator) * 20).requires_grad_())
        px = SparseNegativeBinomialMixture(
            mu1=leaves[0], mu2=leaves[0] * 3, theta1=leaves[1], mixture_logits=leaves[2], validate_args=False
        )
    log_prob = px.log_prob(x)
    assert torch.isfinite(log_prob).all()
    grads = torch.autograd.grad(-(log_prob * mask).sum(), leaves)
    assert all(torch.isfinite(g).all() for g in grads)
    assert (grads[0][mask == 0] == 0).all()


def test_nonzero_given_equals_nonzero_found_and_is_checked_with_validate_args():
    generator = torch.Generator().manual_seed(5)
    mu, theta, x = (t.float() for t in rna_params("moderate", generator))
    px = SparseZeroInflatedNegativeBinomial(mu=mu, theta=theta, zi_logits=torch.zeros_like(mu), validate_args=False)
    found = px.log_prob(x)
    torch.testing.assert_close(px.log_prob(x, nonzero=x.nonzero(as_tuple=True)), found, rtol=0, atol=0)
    no_counts = torch.zeros_like(x)
    reference = scvi_distributions.ZeroInflatedNegativeBinomial(
        mu=mu, theta=theta, zi_logits=torch.zeros_like(mu), validate_args=False
    )
    torch.testing.assert_close(px.log_prob(no_counts), reference.log_prob(no_counts))
    checked = SparseNegativeBinomial(mu=mu, theta=theta, validate_args=True)
    cells, features = x.nonzero(as_tuple=True)
    with pytest.raises(ValueError, match="nonzero is not value.nonzero"):
        checked.log_prob(x, nonzero=(cells[1:], features[1:]))
    with pytest.raises(ValueError, match=r"shape \(n_cells, n_features\)"):
        checked.log_prob(x[None], nonzero=(cells, features))


@pytest.mark.parametrize(
    ("ours", "theirs", "kwargs"),
    [
        (SparseNegativeBinomial, scvi_distributions.NegativeBinomial, {"scale": "scale"}),
        (
            SparseZeroInflatedNegativeBinomial,
            scvi_distributions.ZeroInflatedNegativeBinomial,
            {"zi_logits": "logits", "scale": "scale"},
        ),
    ],
)
def test_constructor_moments_and_samples_are_scvis(ours, theirs, kwargs):
    generator = torch.Generator().manual_seed(6)
    mu, theta = torch.rand(8, 5, generator=generator) * 4, torch.rand(5, generator=generator) + 0.5
    extra = {"logits": torch.randn(8, 5, generator=generator), "scale": mu / mu.sum(-1, keepdim=True)}
    arguments = {"mu": mu, "theta": theta, **{key: extra[name] for key, name in kwargs.items()}}
    px, reference = ours(**arguments, validate_args=False), theirs(**arguments, validate_args=False)
    assert isinstance(px, theirs)
    for attribute in ("mu", "theta", "scale", "mean", "variance"):
        torch.testing.assert_close(getattr(px, attribute), getattr(reference, attribute), rtol=0, atol=0)
    torch.manual_seed(0)
    samples = px.sample((3,))
    torch.manual_seed(0)
    torch.testing.assert_close(samples, reference.sample((3,)), rtol=0, atol=0)


def test_mixture_constructor_moments_and_samples_are_scvis():
    generator = torch.Generator().manual_seed(7)
    background = torch.rand(8, 5, generator=generator)
    arguments = {
        "mu1": background,
        "mu2": background * 4,
        "theta1": torch.rand(5, generator=generator) + 0.5,
        "mixture_logits": torch.randn(8, 5, generator=generator),
    }
    px = SparseNegativeBinomialMixture(**arguments, validate_args=False)
    reference = scvi_distributions.NegativeBinomialMixture(**arguments, validate_args=False)
    assert isinstance(px, scvi_distributions.NegativeBinomialMixture)
    for attribute in ("mu1", "mu2", "theta1", "mixture_logits", "mixture_probs", "mean"):
        torch.testing.assert_close(getattr(px, attribute), getattr(reference, attribute), rtol=0, atol=0)
    torch.manual_seed(0)
    samples = px.sample((3,))
    torch.manual_seed(0)
    torch.testing.assert_close(samples, reference.sample((3,)), rtol=0, atol=0)


def test_values_outside_the_support_warn_only_with_validate_args():
    mu, theta, x = torch.ones(2, 3), torch.ones(3), torch.tensor([[0.0, 1.5, 2.0], [1.0, 0.0, 3.0]])
    with pytest.warns(UserWarning, match="within the support"):
        SparseNegativeBinomial(mu=mu, theta=theta, validate_args=True).log_prob(x)
    with pytest.warns(UserWarning, match="within the support"):
        SparseZeroInflatedNegativeBinomial(mu=mu, theta=theta, zi_logits=mu, validate_args=True).log_prob(x)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        SparseZeroInflatedNegativeBinomial(mu=mu, theta=theta, zi_logits=mu, validate_args=False).log_prob(x)
