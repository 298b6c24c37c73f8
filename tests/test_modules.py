"""Tests of gbs_loss.modules: BatchShaping and GeneralizedBatchShaping."""

from __future__ import annotations

import math

import pytest
import scipy.stats
import torch

from gbs_loss import BatchShaping, GeneralizedBatchShaping
from gbs_loss.functional import batch_shaping_loss, hyperprior_loss
from gbs_loss.priors import Beta, Normal, RelaxedBernoulli

F64 = torch.float64


# ----------------------------------------------------------------------------------------------------------
# BatchShaping.
# ----------------------------------------------------------------------------------------------------------
class TestBatchShaping:
    @pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
    @pytest.mark.parametrize("dim", [0, 1, None])
    @pytest.mark.parametrize("ties", [False, True])
    def test_module_equals_functional(self, reduction: str, dim, ties: bool) -> None:
        x = (torch.rand(20, 16, dtype=F64) * 10).round() / 10
        prior = Beta(0.6, 0.4)
        module = BatchShaping(prior, dim=dim, ties=ties, reduction=reduction)
        torch.testing.assert_close(module(x), batch_shaping_loss(x, prior, dim, ties, reduction))

    def test_gradients_flow(self) -> None:
        x = torch.rand(32, 4, requires_grad=True)
        BatchShaping(RelaxedBernoulli(0.3, 0.5))(x).backward()
        assert torch.all(torch.isfinite(x.grad)) and torch.any(x.grad != 0)

    def test_repr(self) -> None:
        assert repr(BatchShaping(Beta(0.6, 0.4))) == (
            "BatchShaping(prior=Beta(a=0.6, b=0.4), dim=0, ties=False, reduction='mean')"
        )

    @pytest.mark.parametrize(
        ("kwargs", "error", "message"),
        [
            ({"prior": None}, TypeError, r"prior must be an object with a differentiable cdf method"),
            (
                {"reduction": "avg"},
                ValueError,
                r"reduction must be one of \('none', 'mean', 'sum'\), got 'avg'",
            ),
            ({"dim": "0"}, TypeError, r"dim must be an int or None, got str"),
            ({"ties": "yes"}, TypeError, r"ties must be a bool, got str"),
        ],
    )
    def test_bad_options(self, kwargs, error, message: str) -> None:
        kwargs = {"prior": Beta(0.6, 0.4), **kwargs}
        with pytest.raises(error, match=message):
            BatchShaping(**kwargs)

    def test_training_moves_samples_toward_the_prior(self) -> None:
        # Stated factor: 60 Adam steps on the sample logits reduce the loss at least 10-fold.
        torch.manual_seed(1)
        logits = (torch.randn(200, 6) - 2.0).requires_grad_()
        criterion = BatchShaping(RelaxedBernoulli(0.7, 0.5))
        opt = torch.optim.Adam([logits], lr=0.1)
        first = float(criterion(torch.sigmoid(logits)).detach())
        for _ in range(60):
            opt.zero_grad()
            criterion(torch.sigmoid(logits)).backward()
            opt.step()
        last = float(criterion(torch.sigmoid(logits)).detach())
        assert last < first / 10, (first, last)
        # The share of samples above 1/2 approaches the prior's mean 0.7 (it starts near 0.02).
        share = float((torch.sigmoid(logits) > 0.5).float().mean())
        assert abs(share - 0.7) < 0.05


# ----------------------------------------------------------------------------------------------------------
# GeneralizedBatchShaping.
# ----------------------------------------------------------------------------------------------------------
def manual_gbas(module: GeneralizedBatchShaping, x: torch.Tensor, hyperprior, wp, wh, wt) -> dict:
    """The loss written out from the functional API and the module's raw parameters."""
    u = module.mean_logits
    if module.family == "relaxed_bernoulli":
        spread = torch.nn.functional.softplus(module.raw_temperatures)
        prior = RelaxedBernoulli(torch.sigmoid(u), spread)
    else:
        spread = torch.nn.functional.softplus(module.raw_concentrations)
        prior = Beta(torch.sigmoid(u) * spread, (1 - torch.sigmoid(u)) * spread)
    terms = {
        "prior": batch_shaping_loss(x, prior, dim=module.dim),
        "hyperprior": hyperprior_loss(torch.sigmoid(u), hyperprior) if hyperprior is not None else torch.zeros(()),
        "temperature": spread.mean(),
    }
    terms["total"] = wp * terms["prior"] + wh * terms["hyperprior"] + wt * terms["temperature"]
    return terms


class TestGeneralizedBatchShaping:
    @pytest.mark.parametrize("family", ["relaxed_bernoulli", "beta"])
    @pytest.mark.parametrize("hyperprior", [None, Normal(0.3, 0.1), Beta(3.0, 7.0)], ids=["none", "normal", "beta"])
    def test_module_equals_functional(self, family: str, hyperprior) -> None:
        torch.manual_seed(0)
        weights = {"prior_weight": 1.5, "hyperprior_weight": 0.7, "temperature_weight": 0.01}
        module = GeneralizedBatchShaping(
            (3, 4), family, hyperprior, init_mean=torch.rand(3, 4) * 0.8 + 0.1, **weights
        ).double()
        x = torch.rand(40, 3, 4, dtype=F64)
        total = module(x)
        expected = manual_gbas(module, x, hyperprior, *weights.values())
        torch.testing.assert_close(total, expected["total"])
        assert sorted(module.components) == ["hyperprior", "prior", "temperature", "total"]
        for key, value in module.components.items():
            assert not value.requires_grad and value.shape == ()
            torch.testing.assert_close(value, expected[key].detach().to(value.dtype))
        grads = torch.autograd.grad(total, list(module.parameters()))
        expected_grads = torch.autograd.grad(expected["total"], list(module.parameters()))
        torch.testing.assert_close(grads, expected_grads)

    def test_initialisation_is_uniform_prior(self) -> None:
        module = GeneralizedBatchShaping((7, 7))
        assert module.means.shape == (7, 7) and module.temperatures.shape == (7, 7)
        torch.testing.assert_close(module.means, torch.full((7, 7), 0.5))
        torch.testing.assert_close(module.temperatures, torch.ones(7, 7))
        x = torch.linspace(0.01, 0.99, 11).reshape(11, 1, 1)
        torch.testing.assert_close(module.prior().cdf(x), x.expand(11, 7, 7))
        beta = GeneralizedBatchShaping(5, prior="beta", init_mean=0.25, init_concentration=8.0)
        torch.testing.assert_close(beta.concentrations, torch.full((5,), 8.0))
        prior = beta.prior()
        torch.testing.assert_close(prior.a, torch.full((5,), 2.0))
        torch.testing.assert_close(prior.b, torch.full((5,), 6.0))
        assert beta.temperatures is None and module.concentrations is None

    def test_init_mean_per_position(self) -> None:
        init = torch.tensor([0.1, 0.5, 0.9])
        module = GeneralizedBatchShaping(3, init_mean=init, init_temperature=torch.tensor([0.5, 1.0, 3.0]))
        torch.testing.assert_close(module.means, init)
        torch.testing.assert_close(module.temperatures, torch.tensor([0.5, 1.0, 3.0]))

    def test_prior_object(self) -> None:
        module = GeneralizedBatchShaping((7, 7))
        prior = module.prior()
        assert isinstance(prior, RelaxedBernoulli) and prior.batch_shape == (7, 7)
        assert not prior.validate_args

    def test_positions_int_and_batch_dim(self) -> None:
        x = torch.rand(49, 16)  # positions first, batch along dim 1
        module = GeneralizedBatchShaping(49, dim=1)
        expected = batch_shaping_loss(x, module.prior(), dim=1)
        torch.testing.assert_close(module(x), expected)

    def test_positions_broadcast_over_extra_dims(self) -> None:
        module = GeneralizedBatchShaping((7, 7), init_mean=torch.rand(7, 7) * 0.8 + 0.1)
        x = torch.rand(8, 3, 7, 7)  # 3 channels share the per-position priors
        torch.testing.assert_close(module(x), batch_shaping_loss(x, module.prior()))

    def test_torch_distribution_hyperprior(self) -> None:
        x = torch.rand(30, 10)
        ours = GeneralizedBatchShaping(10, hyperprior=Normal(0.3, 0.1), init_mean=torch.linspace(0.1, 0.9, 10))
        theirs = GeneralizedBatchShaping(
            10, hyperprior=torch.distributions.Normal(0.3, 0.1), init_mean=torch.linspace(0.1, 0.9, 10)
        )
        torch.testing.assert_close(ours(x), theirs(x))

    def test_temperature_term(self) -> None:
        module = GeneralizedBatchShaping(4, init_temperature=torch.tensor([0.5, 1.0, 2.0, 4.5]), temperature_weight=0.1)
        x = torch.rand(10, 4)
        total = module(x)
        assert float(module.components["temperature"]) == pytest.approx(2.0)
        torch.testing.assert_close(total, module.components["prior"] + 0.1 * 2.0)
        # Without a weight the term is only reported, and does not reach the temperatures.
        free = GeneralizedBatchShaping(4, temperature_weight=0.0)
        free(x).backward()
        only_prior = torch.autograd.grad(batch_shaping_loss(x, free.prior()), free.raw_temperatures)[0]
        torch.testing.assert_close(free.raw_temperatures.grad, only_prior)

    def test_state_dict_round_trip(self) -> None:
        torch.manual_seed(0)
        module = GeneralizedBatchShaping((2, 3), hyperprior=Beta(3.0, 7.0), temperature_weight=0.01)
        opt = torch.optim.Adam(module.parameters(), lr=0.1)
        x = torch.rand(16, 2, 3)
        for _ in range(3):
            opt.zero_grad()
            module(x).backward()
            opt.step()
        state = module.state_dict()
        assert sorted(state) == ["mean_logits", "raw_temperatures"]
        fresh = GeneralizedBatchShaping((2, 3), hyperprior=Beta(3.0, 7.0), temperature_weight=0.01)
        fresh.load_state_dict(state)
        torch.testing.assert_close(fresh(x), module(x))
        torch.testing.assert_close(fresh.means, module.means)
        beta = GeneralizedBatchShaping(3, prior="beta")
        assert sorted(beta.state_dict()) == ["mean_logits", "raw_concentrations"]

    @pytest.mark.parametrize("family", ["relaxed_bernoulli", "beta"])
    def test_gradcheck(self, family: str) -> None:
        module = GeneralizedBatchShaping(
            3, family, Normal(0.4, 0.2), init_mean=torch.tensor([0.2, 0.5, 0.7]), temperature_weight=0.05
        ).double()
        g = torch.Generator().manual_seed(0)
        x = (
            torch.linspace(0.05, 0.95, 8, dtype=F64).unsqueeze(1) + torch.rand(8, 3, generator=g, dtype=F64) * 0.01
        ).requires_grad_()
        name = "raw_temperatures" if family == "relaxed_bernoulli" else "raw_concentrations"
        u = module.mean_logits.detach().clone().requires_grad_()
        r = getattr(module, name).detach().clone().requires_grad_()

        def loss(x, u, r):
            return torch.func.functional_call(module, {"mean_logits": u, name: r}, (x,))

        assert torch.autograd.gradcheck(loss, (x, u, r))

    def test_float32_parameters_with_half_input(self) -> None:
        module = GeneralizedBatchShaping(5, hyperprior=Normal(0.3, 0.1))
        x = torch.rand(32, 5).half().requires_grad_()
        loss = module(x)
        assert loss.dtype == torch.float32 and torch.isfinite(loss)
        loss.backward()
        assert x.grad.dtype == torch.float16

    def test_training_moves_samples_and_priors(self) -> None:
        # Learnable samples and learned priors under a Beta(3, 7) hyperprior: 120 Adam steps reduce the total
        # loss at least 50-fold, and the learned means follow the hyperprior's quantiles.
        torch.manual_seed(0)
        d, n = 12, 200
        logits = (torch.rand(d) * 4 - 2 + torch.randn(n, d)).requires_grad_()
        module = GeneralizedBatchShaping(d, hyperprior=Beta(3.0, 7.0))
        opt = torch.optim.Adam([logits, *module.parameters()], lr=0.08)
        first = float(module(torch.sigmoid(logits)).detach())
        for _ in range(120):
            opt.zero_grad()
            module(torch.sigmoid(logits)).backward()
            opt.step()
        last = float(module(torch.sigmoid(logits)).detach())
        assert last < first / 50, (first, last)
        quantiles = scipy.stats.beta.ppf([(j + 1) / (d + 1) for j in range(d)], 3.0, 7.0)
        means = module.means.detach().sort().values
        torch.testing.assert_close(means, torch.tensor(quantiles, dtype=torch.float32), atol=0.03, rtol=0)

    def test_compiled_equals_eager(self) -> None:
        torch._dynamo.reset()
        module = GeneralizedBatchShaping(
            6,
            hyperprior=Normal(0.3, 0.1, validate_args=False),
            init_mean=torch.linspace(0.1, 0.9, 6),
            temperature_weight=0.01,
            validate_args=False,
        )
        x = torch.rand(24, 6)
        eager = module(x)
        eager_grads = torch.autograd.grad(eager, list(module.parameters()))
        compiled = torch.compile(module, fullgraph=True, dynamic=False)(x)
        grads = torch.autograd.grad(compiled, list(module.parameters()))
        torch.testing.assert_close(compiled, eager)
        torch.testing.assert_close(grads, eager_grads)

    def test_repr(self) -> None:
        module = GeneralizedBatchShaping((7, 7), hyperprior=Normal(0.3, 0.1))
        assert "positions=(7, 7), prior='relaxed_bernoulli', hyperprior=Normal(loc=0.3, scale=0.1)" in repr(module)

    @pytest.mark.parametrize(
        ("args", "kwargs", "error", "message"),
        [
            (
                (0,),
                {},
                ValueError,
                r"positions must be a positive int or a non-empty tuple of positive ints, got 0",
            ),
            (((7, -1),), {}, ValueError, r"positions must be .*, got \(7, -1\)"),
            (((),), {}, ValueError, r"positions must be .*, got \(\)"),
            (("49",), {}, ValueError, r"positions must be .*, got '49'"),
            (
                (49, "gauss"),
                {},
                ValueError,
                r"prior must be one of \('relaxed_bernoulli', 'beta'\), got 'gauss'",
            ),
            (
                (49, "beta", "normal"),
                {},
                TypeError,
                r"hyperprior must be an object with a differentiable cdf",
            ),
            (
                (1, "beta", Normal(0.3, 0.1)),
                {},
                ValueError,
                r"a hyperprior needs at least 2 positions to shape, got positions \(1,\)",
            ),
            ((49,), {"init_mean": 1.0}, ValueError, r"init_mean must be in \(0, 1\), got 1"),
            (
                (3,),
                {"init_mean": torch.tensor([0.2, 0.0, 0.5])},
                ValueError,
                r"init_mean must be in \(0, 1\), got a tensor with values such as 0",
            ),
            (
                (3,),
                {"init_mean": torch.full((4,), 0.5)},
                ValueError,
                r"init_mean of shape \(4,\) does not broadcast to the positions \(3,\)",
            ),
            ((3,), {"init_mean": "half"}, TypeError, r"init_mean must be a real number or a real tensor, got str"),
            ((49,), {"init_temperature": 0.0}, ValueError, r"init_temperature must be > 0 and finite, got 0"),
            (
                (49, "beta"),
                {"init_concentration": -2.0},
                ValueError,
                r"init_concentration must be > 0 and finite, got -2",
            ),
            ((49,), {"prior_weight": -1.0}, ValueError, r"prior_weight must be finite and >= 0, got -1.0"),
            (
                (49,),
                {"hyperprior_weight": math.nan},
                ValueError,
                r"hyperprior_weight must be finite and >= 0",
            ),
            (
                (49,),
                {"temperature_weight": "0.1"},
                TypeError,
                r"temperature_weight must be a real number, got str",
            ),
            ((49,), {"dim": None}, TypeError, r"dim must be an int, got NoneType"),
            ((49,), {"ties": None}, TypeError, r"ties must be a bool, got NoneType"),
        ],
    )
    def test_bad_construction(self, args, kwargs, error, message: str) -> None:
        with pytest.raises(error, match=message):
            GeneralizedBatchShaping(*args, **kwargs)

    @pytest.mark.parametrize(
        ("x", "message", "error"),
        [
            (
                torch.rand(8, 48),
                r"x of shape \(8, 48\) has positions \(48,\) \(its shape without dim 0\), which "
                r"do not match the module's positions \(49,\)",
                ValueError,
            ),
            (torch.rand(1, 49), r"x needs a batch of at least 2 samples", ValueError),
            (torch.rand(0, 49), r"x has an empty batch", ValueError),
            (torch.full((4, 49), math.nan), r"x must be finite, got 196 NaN or infinite value", ValueError),
            (
                torch.ones(4, 49, dtype=torch.int32),
                r"x must be a floating-point tensor, got dtype torch.int32",
                TypeError,
            ),
        ],
    )
    def test_bad_input(self, x, message: str, error) -> None:
        with pytest.raises(error, match=message):
            GeneralizedBatchShaping(49)(x)

    def test_dim_out_of_range(self) -> None:
        with pytest.raises(ValueError, match=r"dim must be in \[-2, 1\] for x of shape \(4, 49\), got 2"):
            GeneralizedBatchShaping(49, dim=2)(torch.rand(4, 49))
