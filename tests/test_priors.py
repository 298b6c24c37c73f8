"""Tests of gbs_loss.priors: CDFs, densities and quantiles against scipy and torch.distributions."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.integrate
import scipy.special
import scipy.stats
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from gbs_loss.priors import Beta, Normal, Prior, RelaxedBernoulli, SymmetricBeta

F64 = torch.float64
settings.register_profile("gbs_priors", deadline=None, max_examples=40, derandomize=True)


def t64(values) -> torch.Tensor:
    return torch.as_tensor(np.asarray(values, dtype=np.float64), dtype=F64)


def rb_cdf_reference(x: np.ndarray, mean: float, temperature: float) -> np.ndarray:
    """CDF of X = sigmoid((logit(mean) + L) / temperature), L standard logistic, from that definition."""
    x = np.asarray(x, dtype=np.float64)
    with np.errstate(divide="ignore"):
        threshold = temperature * (np.log(x) - np.log1p(-x)) - scipy.special.logit(mean)
    return scipy.stats.logistic.cdf(threshold)


# ----------------------------------------------------------------------------------------------------------
# Smoke and values.
# ----------------------------------------------------------------------------------------------------------
class TestSmoke:
    @pytest.mark.parametrize(
        "prior",
        [Beta(0.6, 0.4), SymmetricBeta(0.6), RelaxedBernoulli(0.3, 0.5), Normal(0.3, 0.1)],
        ids=["beta", "symmetric_beta", "relaxed_bernoulli", "normal"],
    )
    def test_cdf_is_monotone_in_unit_range(self, prior: Prior) -> None:
        x = torch.linspace(0.0, 1.0, 101, dtype=F64)
        cdf = prior.cdf(x)
        assert cdf.shape == x.shape
        assert torch.all(torch.diff(cdf) >= 0)
        assert torch.all((cdf >= 0) & (cdf <= 1))

    def test_repr(self) -> None:
        assert repr(Beta(0.6, 0.4)) == "Beta(a=0.6, b=0.4)"
        assert repr(RelaxedBernoulli(logits=torch.zeros(3), temperature=2.0)) == (
            "RelaxedBernoulli(logits=<tensor of shape (3,)>, temperature=2)"
        )
        assert repr(Normal(0.3, 0.1)) == "Normal(loc=0.3, scale=0.1)"


class TestValuesAgainstOracles:
    @settings(settings.get_profile("gbs_priors"))
    @given(
        a=st.floats(0.05, 60.0),
        b=st.floats(0.05, 60.0),
        x=st.lists(st.floats(0.0, 1.0), min_size=1, max_size=8),
    )
    def test_beta_cdf_matches_scipy(self, a: float, b: float, x: list[float]) -> None:
        ours = Beta(a, b).cdf(t64(x)).numpy()
        np.testing.assert_allclose(ours, scipy.stats.beta.cdf(x, a, b), rtol=1e-10, atol=1e-14)

    @settings(settings.get_profile("gbs_priors"))
    @given(a=st.floats(0.01, 0.99), x=st.lists(st.floats(0.0, 1.0), min_size=1, max_size=8))
    def test_symmetric_beta_is_beta_a_one_minus_a(self, a: float, x: list[float]) -> None:
        ours = SymmetricBeta(a).cdf(t64(x)).numpy()
        np.testing.assert_allclose(ours, scipy.stats.beta.cdf(x, a, 1.0 - a), rtol=1e-10, atol=1e-14)

    @settings(settings.get_profile("gbs_priors"))
    @given(
        loc=st.floats(-5.0, 5.0),
        scale=st.floats(0.01, 10.0),
        x=st.lists(st.floats(-40.0, 40.0), min_size=1, max_size=8),
    )
    def test_normal_cdf_matches_scipy(self, loc: float, scale: float, x: list[float]) -> None:
        ours = Normal(loc, scale).cdf(t64(x)).numpy()
        np.testing.assert_allclose(ours, scipy.stats.norm.cdf(x, loc, scale), rtol=1e-12, atol=1e-300)

    @settings(settings.get_profile("gbs_priors"))
    @given(
        mean=st.floats(0.01, 0.99),
        temperature=st.floats(0.05, 10.0),
        x=st.lists(st.floats(0.0, 1.0), min_size=1, max_size=8),
    )
    def test_relaxed_bernoulli_cdf_matches_its_definition(self, mean: float, temperature: float, x) -> None:
        ours = RelaxedBernoulli(mean, temperature).cdf(t64(x)).numpy()
        np.testing.assert_allclose(ours, rb_cdf_reference(x, mean, temperature), rtol=1e-12, atol=1e-300)

    @pytest.mark.parametrize(("mean", "temperature"), [(0.3, 0.5), (0.8, 2.0), (0.5, 1.0)])
    def test_relaxed_bernoulli_cdf_integrates_torch_density(self, mean: float, temperature: float) -> None:
        # Independent oracle: torch.distributions' density of the binary concrete, integrated numerically.
        dist = torch.distributions.RelaxedBernoulli(torch.tensor(temperature, dtype=F64), probs=mean)

        def density(v: float) -> float:
            return float(dist.log_prob(torch.tensor(v, dtype=F64)).exp())

        prior = RelaxedBernoulli(mean, temperature)
        for x in (0.1, 0.5, 0.9):
            expected, _ = scipy.integrate.quad(density, 0.0, x, epsabs=1e-12, epsrel=1e-10, limit=200)
            assert float(prior.cdf(torch.tensor(x, dtype=F64))) == pytest.approx(expected, rel=1e-7, abs=1e-10)

    def test_relaxed_bernoulli_special_cases(self) -> None:
        x = torch.linspace(0.0, 1.0, 11, dtype=F64)
        torch.testing.assert_close(RelaxedBernoulli(0.5, 1.0).cdf(x), x)  # uniform
        # As the temperature goes to 0 the CDF is that of Bernoulli(mean): 1 - mean inside (0, 1).
        cdf = RelaxedBernoulli(0.3, 1e-6).cdf(torch.tensor([0.2, 0.5, 0.8], dtype=F64))
        torch.testing.assert_close(cdf, torch.full((3,), 0.7, dtype=F64), atol=1e-5, rtol=0)
        # P(X > 1/2) is the mean parameter whatever the temperature.
        for t in (0.2, 1.0, 5.0):
            assert float(RelaxedBernoulli(0.3, t).cdf(torch.tensor(0.5, dtype=F64))) == pytest.approx(0.7)

    def test_logits_and_mean_parametrisations_agree(self) -> None:
        mean = t64([0.1, 0.4, 0.9])
        x = t64([0.05, 0.5, 0.95])
        by_mean = RelaxedBernoulli(mean, 0.7).cdf(x)
        by_logits = RelaxedBernoulli(logits=torch.logit(mean), temperature=0.7).cdf(x)
        torch.testing.assert_close(by_mean, by_logits)
        torch.testing.assert_close(RelaxedBernoulli(logits=torch.logit(mean), temperature=1.0).mean, mean)

    def test_means(self) -> None:
        assert float(Beta(3.0, 7.0).mean) == pytest.approx(0.3)
        assert float(SymmetricBeta(0.6).mean) == pytest.approx(0.6)
        assert float(SymmetricBeta(0.6).b) == pytest.approx(0.4)
        assert float(Normal(0.2, 1.0).mean) == pytest.approx(0.2)
        assert float(RelaxedBernoulli(0.25, 3.0).mean) == pytest.approx(0.25)


class TestLogProbAndIcdf:
    def test_beta_log_prob_matches_scipy(self) -> None:
        x = t64([0.01, 0.3, 0.5, 0.99])
        for a, b in [(3.0, 7.0), (0.6, 0.4), (50.0, 2.0)]:
            np.testing.assert_allclose(Beta(a, b).log_prob(x).numpy(), scipy.stats.beta.logpdf(x, a, b), rtol=1e-10)

    def test_normal_log_prob_matches_scipy(self) -> None:
        x = t64([-3.0, 0.3, 2.5])
        np.testing.assert_allclose(
            Normal(0.3, 0.7).log_prob(x).numpy(), scipy.stats.norm.logpdf(x, 0.3, 0.7), rtol=1e-12
        )

    def test_relaxed_bernoulli_log_prob_matches_torch(self) -> None:
        x = t64([1e-6, 0.2, 0.5, 0.8, 1 - 1e-6])
        for mean, t in [(0.3, 0.5), (0.7, 2.0), (0.5, 1.0)]:
            dist = torch.distributions.RelaxedBernoulli(torch.tensor(t, dtype=F64), probs=torch.tensor(mean, dtype=F64))
            torch.testing.assert_close(RelaxedBernoulli(mean, t).log_prob(x), dist.log_prob(x))

    def test_relaxed_bernoulli_log_prob_ends_are_limits(self) -> None:
        ends = t64([0.0, 1.0])
        assert RelaxedBernoulli(0.3, 0.5).log_prob(ends).tolist() == [math.inf, math.inf]
        assert RelaxedBernoulli(0.3, 2.0).log_prob(ends).tolist() == [-math.inf, -math.inf]
        # t = 1: the density is e^{-logit m} = (1 - m) / m at 0 and m / (1 - m) at 1.
        got = RelaxedBernoulli(0.3, 1.0).log_prob(ends)
        torch.testing.assert_close(got, t64([math.log(0.7 / 0.3), math.log(0.3 / 0.7)]))
        near = RelaxedBernoulli(0.3, 1.0).log_prob(t64([1e-12, 1 - 1e-12]))
        torch.testing.assert_close(near, got, rtol=1e-9, atol=1e-9)
        outside = RelaxedBernoulli(0.3, 1.0, validate_args=False).log_prob(t64([-0.5, 1.5]))
        assert outside.tolist() == [-math.inf, -math.inf]

    def test_icdf_inverts_cdf(self) -> None:
        p = t64([1e-6, 0.1, 0.5, 0.9, 1 - 1e-6])
        rb = RelaxedBernoulli(t64([0.2]), t64([0.6]))
        torch.testing.assert_close(rb.cdf(rb.icdf(p)), p, rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(Normal(0.3, 2.0).icdf(p).numpy(), scipy.stats.norm.ppf(p, 0.3, 2.0), rtol=1e-12)
        assert RelaxedBernoulli(0.2, 0.6).icdf(t64([0.0, 1.0])).tolist() == [0.0, 1.0]

    def test_icdf_rejects_probabilities_outside_unit_interval(self) -> None:
        with pytest.raises(ValueError, match=r"RelaxedBernoulli.icdf: p must be in \[0, 1\], got 1.5"):
            RelaxedBernoulli(0.2, 0.6).icdf(torch.tensor(1.5))

    @pytest.mark.parametrize(("a", "b"), [(2.0, 3.0), (0.6, 0.4), (50.0, 0.5)])
    def test_beta_icdf_against_scipy_and_round_trip(self, a: float, b: float) -> None:
        p = t64([1e-6, 0.1, 0.5, 0.9, 1 - 1e-6])
        prior = Beta(a, b)
        x = prior.icdf(p)
        np.testing.assert_allclose(x.numpy(), scipy.stats.beta.ppf(p.numpy(), a, b), rtol=1e-10)
        # Near 1 with b < 1 the density is huge: one ulp of x moves the CDF by more than 1e-10.
        torch.testing.assert_close(prior.cdf(x), p, rtol=1e-10, atol=1e-8)

    def test_beta_icdf_gradient_is_the_inverse_density(self) -> None:
        p = t64([0.2, 0.7]).requires_grad_()
        x = Beta(2.0, 3.0).icdf(p)
        (g,) = torch.autograd.grad(x.sum(), p)
        density = scipy.stats.beta.pdf(x.detach().numpy(), 2.0, 3.0)
        np.testing.assert_allclose(g.numpy(), 1.0 / density, rtol=1e-9)

    def test_icdf_type_error_names_p(self) -> None:
        with pytest.raises(
            TypeError, match=r"RelaxedBernoulli.icdf: p must be a real number or a real tensor, got list"
        ):
            RelaxedBernoulli(0.2, 0.6).icdf([0.5])
        with pytest.raises(ValueError, match=r"Beta.icdf: p must be in \[0, 1\], got -0.5"):
            Beta(2.0, 3.0).icdf(torch.tensor(-0.5))


# ----------------------------------------------------------------------------------------------------------
# Ends of the support and values outside it.
# ----------------------------------------------------------------------------------------------------------
class TestEnds:
    @pytest.mark.parametrize("temperature", [0.05, 1.0, 5.0])
    @pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
    def test_relaxed_bernoulli_exact_ends_and_finite_gradients(self, temperature: float, dtype) -> None:
        tiny = torch.finfo(dtype).tiny
        x = torch.tensor([0.0, tiny, 1e-30, 0.5, 1 - torch.finfo(dtype).eps / 2, 1.0], dtype=dtype, requires_grad=True)
        t = torch.tensor(temperature, dtype=dtype, requires_grad=True)
        u = torch.tensor(-0.4, dtype=dtype, requires_grad=True)
        cdf = RelaxedBernoulli(logits=u, temperature=t).cdf(x)
        assert cdf[0].item() == 0.0 and cdf[-1].item() == 1.0
        assert torch.all(torch.isfinite(cdf))
        cdf.sum().backward()
        for grad in (x.grad, t.grad, u.grad):
            assert torch.all(torch.isfinite(grad))
        assert x.grad[0].item() == 0.0 and x.grad[-1].item() == 0.0

    @pytest.mark.parametrize(
        "prior",
        [
            Beta(0.6, 0.4, validate_args=False),
            RelaxedBernoulli(0.3, 0.5, validate_args=False),
            SymmetricBeta(0.3, validate_args=False),
        ],
        ids=["beta", "relaxed_bernoulli", "symmetric_beta"],
    )
    def test_outside_support_without_validation(self, prior: Prior) -> None:
        x = torch.tensor([-2.0, -1e-9, 1.0 + 1e-9, 3.0, math.nan], dtype=F64, requires_grad=True)
        cdf = prior.cdf(x)
        assert cdf[:4].tolist() == [0.0, 0.0, 1.0, 1.0]
        assert math.isnan(cdf[4].item())
        cdf[:4].sum().backward()
        assert x.grad[:4].tolist() == [0.0, 0.0, 0.0, 0.0]

    def test_tiny_temperature_does_not_give_nan(self) -> None:
        x = torch.tensor([0.0, 0.3, 1.0])
        cdf = RelaxedBernoulli(0.3, 1e-45, validate_args=False).cdf(x)
        assert torch.all(torch.isfinite(cdf))
        assert cdf[0].item() == 0.0 and cdf[2].item() == 1.0

    def test_relaxed_bernoulli_density_beyond_the_dtype_saturates(self) -> None:
        # With the median at x = 2e-38 and t = 1e4 the density there is about t / (4 x) = 1.25e41, beyond
        # float32: the gradient saturates at the largest float32 instead of becoming infinite.
        x = torch.tensor([0.0, 2e-38, 0.5, 1.0], requires_grad=True)
        t = torch.tensor(1e4)
        u = t * torch.logit(torch.tensor(2e-38))
        cdf = RelaxedBernoulli(logits=u, temperature=t).cdf(x)
        (grad,) = torch.autograd.grad(cdf.sum(), x)
        assert grad.tolist() == [0.0, torch.finfo(torch.float32).max, 0.0, 0.0]

    def test_relaxed_bernoulli_backward_leaves_its_inputs_alone(self) -> None:
        # The backward computes in place in buffers of its own: the incoming gradient is not modified, and a
        # second backward through the same graph gives the same gradients.
        x = t64([[0.0, 0.2], [0.5, 0.9], [1.0, 0.7]]).requires_grad_()
        t = t64([0.4, 2.5]).requires_grad_()
        u = t64([0.3, -1.0]).requires_grad_()
        cdf = RelaxedBernoulli(logits=u, temperature=t).cdf(x)
        g = t64([[0.3, -1.0], [2.0, 0.5], [1.0, -0.2]])
        kept = g.clone()
        first = torch.autograd.grad(cdf, (x, t, u), g, retain_graph=True)
        second = torch.autograd.grad(cdf, (x, t, u), g)
        assert torch.equal(g, kept)
        assert all(torch.equal(a, b) for a, b in zip(first, second, strict=True))


# ----------------------------------------------------------------------------------------------------------
# Gradients.
# ----------------------------------------------------------------------------------------------------------
class TestGradcheck:
    def test_beta(self) -> None:
        x = t64([0.05, 0.3, 0.7, 0.95]).requires_grad_()
        a = t64([0.6, 2.0, 5.0, 1.3]).requires_grad_()
        b = t64([0.4, 3.0, 0.8, 7.0]).requires_grad_()
        assert torch.autograd.gradcheck(lambda x, a, b: Beta(a, b).cdf(x), (x, a, b))

    def test_symmetric_beta(self) -> None:
        x = t64([0.05, 0.3, 0.7, 0.95]).requires_grad_()
        a = t64([0.6, 0.2, 0.5, 0.9]).requires_grad_()
        assert torch.autograd.gradcheck(lambda x, a: SymmetricBeta(a).cdf(x), (x, a))

    @pytest.mark.parametrize("by", ["mean", "logits"])
    def test_relaxed_bernoulli(self, by: str) -> None:
        x = t64([[0.02, 0.3], [0.6, 0.97], [0.5, 0.1]]).requires_grad_()
        t = t64([0.4, 2.5]).requires_grad_()
        p = t64([0.3, 0.8]).requires_grad_()

        def cdf(x, t, p):
            prior = RelaxedBernoulli(p, t) if by == "mean" else RelaxedBernoulli(logits=torch.logit(p), temperature=t)
            return prior.cdf(x)

        assert torch.autograd.gradcheck(cdf, (x, t, p))

    def test_relaxed_bernoulli_broadcast_scalar_point(self) -> None:
        # The point broadcasts against the parameters: its gradient sums over them.
        x = torch.tensor(0.4, dtype=F64, requires_grad=True)
        t = t64([0.4, 2.5, 1.0]).requires_grad_()
        u = t64([0.3, -1.0, 2.0]).requires_grad_()
        assert torch.autograd.gradcheck(lambda x, t, u: RelaxedBernoulli(logits=u, temperature=t).cdf(x), (x, t, u))

    def test_normal(self) -> None:
        x = t64([-1.0, 0.3, 2.0]).requires_grad_()
        loc = t64([0.0, 0.5, 1.0]).requires_grad_()
        scale = t64([0.5, 1.0, 3.0]).requires_grad_()
        assert torch.autograd.gradcheck(lambda x, m, s: Normal(m, s).cdf(x), (x, loc, scale))

    def test_relaxed_bernoulli_density_is_cdf_derivative(self) -> None:
        x = t64([0.01, 0.2, 0.5, 0.9]).requires_grad_()
        prior = RelaxedBernoulli(0.35, 0.6)
        (grad,) = torch.autograd.grad(prior.cdf(x).sum(), x)
        torch.testing.assert_close(grad, prior.log_prob(x.detach()).exp())

    def test_learnable_tensors_receive_gradients(self) -> None:
        a = torch.tensor([0.6, 2.0], requires_grad=True)
        prior = Beta(a, 0.4)
        assert prior.a is a
        prior.cdf(torch.tensor([0.3, 0.6])).sum().backward()
        assert a.grad is not None and torch.all(a.grad != 0)


# ----------------------------------------------------------------------------------------------------------
# Shapes and dtypes.
# ----------------------------------------------------------------------------------------------------------
class TestShapesAndDtypes:
    def test_batch_shape_and_broadcasting(self) -> None:
        prior = RelaxedBernoulli(torch.full((7, 1), 0.3), torch.ones(5))
        assert prior.batch_shape == torch.Size([7, 5])
        assert prior.cdf(torch.rand(4, 7, 5)).shape == (4, 7, 5)
        assert Normal(0.0, 1.0).batch_shape == torch.Size([])
        assert Beta(torch.ones(3), 2.0).cdf(torch.rand(10, 1)).shape == (10, 3)

    @pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
    @pytest.mark.parametrize(
        "prior", [Beta(0.6, 0.4), RelaxedBernoulli(0.3, 0.5), Normal(0.5, 0.2)], ids=["beta", "rb", "normal"]
    )
    def test_low_precision_points_are_computed_in_float32(self, dtype, prior: Prior) -> None:
        x = torch.linspace(0.01, 0.99, 17).to(dtype)
        got = prior.cdf(x)
        assert got.dtype == torch.float32
        torch.testing.assert_close(got, prior.cdf(x.float()))

    def test_scalar_float64_parameters_do_not_promote_float32_points(self) -> None:
        prior = Beta(torch.tensor(0.6, dtype=F64), torch.tensor(0.4, dtype=F64))
        assert prior.cdf(torch.rand(5)).dtype == torch.float32
        assert RelaxedBernoulli(torch.full((5,), 0.3, dtype=F64), 1.0).cdf(torch.rand(5)).dtype == F64

    def test_integer_parameters_become_floating(self) -> None:
        prior = Beta(torch.tensor([2, 3]), 4)
        assert prior.a.dtype == torch.get_default_dtype()
        np.testing.assert_allclose(
            prior.cdf(torch.tensor(0.3)).numpy(), scipy.stats.beta.cdf(0.3, [2, 3], 4), rtol=1e-5
        )

    def test_python_number_points(self) -> None:
        assert float(Normal(0.0, 1.0).cdf(0.0)) == pytest.approx(0.5)


# ----------------------------------------------------------------------------------------------------------
# Validation errors.
# ----------------------------------------------------------------------------------------------------------
class TestExceptions:
    @pytest.mark.parametrize(
        ("make", "message"),
        [
            (lambda: Beta(-1.0, 1.0), r"Beta: a must be > 0 and finite, got -1"),
            (lambda: Beta(1.0, 0.0), r"Beta: b must be > 0 and finite, got 0"),
            (lambda: Beta(math.inf, 1.0), r"Beta: a must be > 0 and finite, got inf"),
            (
                lambda: Beta(torch.tensor([1.0, -2.0, 3.0]), 1.0),
                r"Beta: a must be > 0 and finite, got a tensor of shape \(3,\) with 1 value\(s\) out of "
                r"range \(for example -2\)",
            ),
            (lambda: SymmetricBeta(1.0), r"SymmetricBeta: a must be in \(0, 1\), got 1"),
            (lambda: RelaxedBernoulli(0.0, 1.0), r"RelaxedBernoulli: mean must be in \(0, 1\), got 0"),
            (
                lambda: RelaxedBernoulli(0.5, 0.0),
                r"RelaxedBernoulli: temperature must be > 0 and finite, got 0",
            ),
            (lambda: RelaxedBernoulli(logits=math.inf), r"RelaxedBernoulli: logits must be finite, got inf"),
            (
                lambda: RelaxedBernoulli(),
                r"RelaxedBernoulli: give exactly one of mean and logits, got neither",
            ),
            (
                lambda: RelaxedBernoulli(0.5, logits=0.0),
                r"RelaxedBernoulli: give exactly one of mean and logits, got both",
            ),
            (lambda: Normal(0.0, -1.0), r"Normal: scale must be > 0 and finite, got -1"),
            (lambda: Normal(math.nan, 1.0), r"Normal: loc must be finite, got nan"),
            (
                lambda: Beta(torch.ones(3), torch.ones(4)),
                r"Beta: a, b must have shapes that broadcast together, got a: \(3,\), b: \(4,\)",
            ),
        ],
    )
    def test_bad_parameters_raise_value_error(self, make, message: str) -> None:
        with pytest.raises(ValueError, match=message):
            make()

    @pytest.mark.parametrize(
        ("make", "message"),
        [
            (lambda: Beta("1", 1.0), r"Beta: a must be a real number or a real tensor, got str"),
            (lambda: Beta(True, 1.0), r"Beta: a must be a real number or a real tensor, got bool"),
            (
                lambda: Normal(0.0, torch.tensor([True])),
                r"Normal: scale must be a real number or a real tensor, got a tensor of dtype torch.bool",
            ),
            (
                lambda: RelaxedBernoulli(torch.tensor(0.5 + 0j), 1.0),
                r"RelaxedBernoulli: mean must be a real number or a real tensor, got a tensor of dtype",
            ),
            (lambda: Beta(1.0, 1.0, validate_args=1), r"Beta: validate_args must be a bool or None, got int"),
            (lambda: Normal(0.0, 1.0).cdf("0.5"), r"Normal.cdf: x must be a real number or a real tensor, got str"),
            (
                lambda: Normal(0.0, 1.0).cdf(torch.tensor([True])),
                r"Normal.cdf: x must be a real number or a real tensor, got a tensor of dtype torch.bool",
            ),
        ],
    )
    def test_bad_types_raise_type_error(self, make, message: str) -> None:
        with pytest.raises(TypeError, match=message):
            make()

    @pytest.mark.parametrize("prior", [Beta(0.6, 0.4), RelaxedBernoulli(0.3, 1.0), SymmetricBeta(0.6)])
    def test_points_outside_support(self, prior: Prior) -> None:
        name = type(prior).__name__
        with pytest.raises(
            ValueError,
            match=rf"{name}.cdf: x must be inside the support \[0, 1\] \(and not NaN\), "
            r"got a tensor of shape \(3,\) with 1 value\(s\) out of range \(for "
            r"example 1.5\)",
        ):
            prior.cdf(torch.tensor([0.2, 1.5, 0.3]))
        with pytest.raises(ValueError, match=rf"{name}.cdf: x must be inside the support .*, got nan"):
            prior.cdf(torch.tensor(math.nan))

    def test_normal_rejects_nan_points(self) -> None:
        with pytest.raises(ValueError, match=r"Normal.cdf: x must be inside the support \[-inf, inf\]"):
            Normal(0.0, 1.0).cdf(torch.tensor([0.0, math.nan]))

    def test_validation_off_skips_checks(self) -> None:
        prior = Beta(-1.0, 1.0, validate_args=False)
        assert torch.isnan(prior.cdf(torch.tensor(0.5)))
        assert RelaxedBernoulli(0.5, 1.0, validate_args=False).cdf(torch.tensor(2.0)).item() == 1.0


# ----------------------------------------------------------------------------------------------------------
# torch.compile.
# ----------------------------------------------------------------------------------------------------------
class TestCompile:
    def test_relaxed_bernoulli_cdf_compiles_and_matches_eager(self) -> None:
        torch._dynamo.reset()
        x = torch.rand(16, 5, dtype=F64)
        x[0, 0], x[1, 1] = 0.0, 1.0

        def f(x, u, t):
            return RelaxedBernoulli(logits=u, temperature=t, validate_args=False).cdf(x)

        u = torch.randn(5, dtype=F64, requires_grad=True)
        t = (torch.rand(5, dtype=F64) + 0.3).requires_grad_()
        eager = f(x, u, t)
        (ge_u, ge_t) = torch.autograd.grad(eager.sum(), (u, t))
        compiled = torch.compile(f, fullgraph=True)(x, u, t)
        (gc_u, gc_t) = torch.autograd.grad(compiled.sum(), (u, t))
        torch.testing.assert_close(compiled, eager)
        torch.testing.assert_close(gc_u, ge_u)
        torch.testing.assert_close(gc_t, ge_t)


# ----------------------------------------------------------------------------------------------------------
# The priors are torch.distributions.
# ----------------------------------------------------------------------------------------------------------
class TestTorchDistributions:
    def test_subclasses(self) -> None:
        assert isinstance(Beta(0.6, 0.4), torch.distributions.Beta)
        assert isinstance(SymmetricBeta(0.6), Beta)
        assert isinstance(RelaxedBernoulli(0.3, 0.5), torch.distributions.RelaxedBernoulli)
        assert isinstance(Normal(0.3, 0.1), torch.distributions.Normal)

    def test_prior_protocol_is_structural(self) -> None:
        assert isinstance(torch.distributions.Normal(0.0, 1.0), Prior)
        assert isinstance(Beta(2.0, 3.0), Prior)
        assert not isinstance(object(), Prior)

    def test_beta_moments_entropy_and_rsample_are_torch(self) -> None:
        a = t64([2.0, 0.5]).requires_grad_()
        prior = Beta(a, 3.0)
        torch.testing.assert_close(prior.mean, a.detach() / (a.detach() + 3.0))
        np.testing.assert_allclose(prior.variance.detach().numpy(), scipy.stats.beta.var([2.0, 0.5], 3.0), rtol=1e-12)
        np.testing.assert_allclose(
            prior.entropy().detach().numpy(), scipy.stats.beta.entropy([2.0, 0.5], 3.0), rtol=1e-10
        )
        sample = prior.rsample((5,))
        assert sample.shape == (5, 2) and bool(((sample >= 0) & (sample <= 1)).all())
        (g,) = torch.autograd.grad(sample.sum(), a)
        assert bool(torch.isfinite(g).all()) and bool((g != 0).any())

    def test_numbers_stay_exact_for_the_cdf(self) -> None:
        prior = Beta(0.6, 0.4)
        x = t64([0.1, 0.5, 0.9])
        np.testing.assert_allclose(prior.cdf(x).numpy(), scipy.special.betainc(0.6, 0.4, x.numpy()), rtol=1e-13)
        assert prior.a.dtype == F64 and prior.a.dim() == 0
        # torch's own attribute follows torch's rule: a number becomes the default dtype.
        assert prior.concentration1.dtype == torch.get_default_dtype()
        assert prior.cdf(x.float()).dtype == torch.float32

    def test_relaxed_bernoulli_names_match_torch(self) -> None:
        mean = t64([0.2, 0.7])
        prior = RelaxedBernoulli(mean, temperature=t64([0.5]))
        torch.testing.assert_close(prior.probs, mean)
        torch.testing.assert_close(prior.mean, mean)
        torch.testing.assert_close(prior.logits, torch.logit(mean))
        assert prior.batch_shape == (2,)
        assert prior.rsample((3,)).shape == (3, 2)
        # The CDF is that of torch's distribution: P(X <= x) estimated from torch's own samples.
        torch.manual_seed(0)
        samples = torch.distributions.RelaxedBernoulli(t64([0.5, 0.5]), probs=mean).sample((20000,))
        x = t64([0.3, 0.6])
        empirical = (samples <= x).double().mean(0)
        torch.testing.assert_close(prior.cdf(x), empirical, atol=0.015, rtol=0)

    def test_symmetric_beta_is_beta_with_b_one_minus_a(self) -> None:
        a = t64(0.3).requires_grad_()
        x = t64([0.2, 0.6])
        prior = SymmetricBeta(a)
        torch.testing.assert_close(prior.b, 1.0 - a.detach())
        (g,) = torch.autograd.grad(prior.cdf(x).sum(), a)
        h = 1e-6
        fd = (
            scipy.special.betainc(0.3 + h, 0.7 - h, x.numpy()) - scipy.special.betainc(0.3 - h, 0.7 + h, x.numpy())
        ) / (2 * h)
        np.testing.assert_allclose(g.item(), fd.sum(), rtol=1e-6)

    def test_validate_args_default_true_none_follows_torch(self) -> None:
        previous = torch.distributions.Distribution._validate_args
        # torch.compile switches torch's global default off on first use: ours stays on.
        torch.distributions.Distribution.set_default_validate_args(False)
        try:
            assert Beta(2.0, 3.0).validate_args
            with pytest.raises(ValueError, match="Beta: a must be > 0"):
                Beta(-1.0, 3.0)
            assert not Beta(-1.0, 3.0, validate_args=None).validate_args  # torch's default: accepted
        finally:
            torch.distributions.Distribution.set_default_validate_args(previous)

    @pytest.mark.parametrize(
        "make",
        [
            lambda: Beta(torch.empty(0), 0.4),
            lambda: Normal(torch.empty(2, 0), 1.0),
            lambda: RelaxedBernoulli(torch.empty(0), 1.0),
            lambda: SymmetricBeta(torch.empty(0)),
        ],
    )
    def test_empty_parameters_are_refused(self, make) -> None:
        with pytest.raises(ValueError, match=r"must have at least one element, got a tensor of shape \((2, )?0,?\)"):
            make()

    def test_expand(self) -> None:
        x = t64([0.25])
        for prior in (Normal(0.3, 0.1), Beta(2.0, 3.0), RelaxedBernoulli(0.3, 0.5)):
            expanded = prior.expand((3,))
            assert type(expanded) is type(prior) and expanded.batch_shape == (3,)
            torch.testing.assert_close(expanded.cdf(x), prior.cdf(x).expand(3), rtol=1e-6, atol=0)

    def test_closed_form_capability(self) -> None:
        assert Normal(0.0, 1.0).closed_form_cdf() is not None
        assert RelaxedBernoulli(0.3, 0.5).closed_form_cdf() is not None

        class Shifted(Normal):
            def cdf(self, value):
                return super().cdf(value - 1.0)

        assert Shifted(0.0, 1.0).closed_form_cdf() is None
