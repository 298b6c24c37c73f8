"""Tests of gbs_loss.functional against an independent numpy/scipy reference of the published conventions.

The reference follows the published research code's conventions: per position, sort the samples, pair the
i-th smallest with the empirical CDF i / (N + 1) (with tie handling, every tie gets the largest rank of its
group, here from ``scipy.stats.rankdata(method="max")``), average the squared differences to the prior CDF
over the batch, then over the positions. Prior CDFs come from scipy.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.special
import scipy.stats
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from gbs_loss import betainc
from gbs_loss.functional import _unsort, batch_shaping_loss, hyperprior_loss
from gbs_loss.priors import Beta, Normal, RelaxedBernoulli, SymmetricBeta

F64 = torch.float64
settings.register_profile("gbs_functional", deadline=None, max_examples=30, derandomize=True)


# ----------------------------------------------------------------------------------------------------------
# Independent reference.
# ----------------------------------------------------------------------------------------------------------
def reference_per_position(x: np.ndarray, cdf, ties: bool) -> np.ndarray:
    """Loss per column of ``x`` (N, D); ``cdf(values, k)`` is the prior CDF of column k (scipy)."""
    n, d = x.shape
    out = np.empty(d)
    for k in range(d):
        col = np.sort(x[:, k])
        ranks = scipy.stats.rankdata(col, method="max") if ties else np.arange(1, n + 1)
        out[k] = np.mean((ranks / (n + 1) - cdf(col, k)) ** 2)
    return out


def scipy_cdf(kind: str, params: dict[str, np.ndarray]):
    """A column-wise scipy CDF for the prior ``kind`` with per-position parameter arrays."""

    def cdf(values: np.ndarray, k: int) -> np.ndarray:
        p = {name: (np.asarray(v)[k] if np.ndim(v) else v) for name, v in params.items()}
        if kind == "beta":
            return scipy.stats.beta.cdf(values, p["a"], p["b"])
        if kind == "symmetric_beta":
            return scipy.stats.beta.cdf(values, p["a"], 1.0 - p["a"])
        if kind == "normal":
            return scipy.stats.norm.cdf(values, p["loc"], p["scale"])
        # Relaxed Bernoulli from its definition: X = sigmoid((logit m + L) / t), L standard logistic.
        with np.errstate(divide="ignore"):
            z = p["temperature"] * (np.log(values) - np.log1p(-values)) - scipy.special.logit(p["mean"])
        return scipy.stats.logistic.cdf(z)

    return cdf


def make_prior(kind: str, params: dict[str, np.ndarray]):
    t = {name: torch.as_tensor(v, dtype=F64) for name, v in params.items()}
    if kind == "beta":
        return Beta(t["a"], t["b"])
    if kind == "symmetric_beta":
        return SymmetricBeta(t["a"])
    if kind == "normal":
        return Normal(t["loc"], t["scale"])
    return RelaxedBernoulli(t["mean"], t["temperature"])


def random_params(kind: str, d: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    if kind == "beta":
        return {"a": rng.uniform(0.2, 8.0, d), "b": rng.uniform(0.2, 8.0, d)}
    if kind == "symmetric_beta":
        return {"a": rng.uniform(0.05, 0.95, d)}
    if kind == "normal":
        return {"loc": rng.uniform(0.0, 1.0, d), "scale": rng.uniform(0.05, 1.0, d)}
    return {"mean": rng.uniform(0.05, 0.95, d), "temperature": rng.uniform(0.2, 4.0, d)}


KINDS = ["beta", "symmetric_beta", "normal", "relaxed_bernoulli"]


def separated_samples(n: int, d: int, seed: int, dtype=F64) -> torch.Tensor:
    """Samples in (0, 1) with gaps well above gradcheck's step, so that the order is stable."""
    g = torch.Generator().manual_seed(seed)
    base = torch.linspace(0.03, 0.97, n, dtype=dtype).unsqueeze(1).repeat(1, d)
    base = base + (torch.rand(n, d, generator=g, dtype=dtype) - 0.5) * (0.5 / n)
    perm = torch.argsort(torch.rand(n, d, generator=g), dim=0)
    return base.gather(0, perm)


# ----------------------------------------------------------------------------------------------------------
# Smoke.
# ----------------------------------------------------------------------------------------------------------
class TestSmoke:
    def test_scalar_loss_and_gradients(self) -> None:
        x = torch.rand(64, 49, requires_grad=True)
        loss = batch_shaping_loss(x, Beta(0.6, 0.4))
        assert loss.shape == () and loss.dtype == torch.float32
        loss.backward()
        assert x.grad.shape == x.shape and torch.all(torch.isfinite(x.grad))

    def test_torch_distribution_prior(self) -> None:
        x = torch.randn(50, 3, dtype=F64)
        ours = batch_shaping_loss(x, Normal(0.3, 0.5))
        theirs = batch_shaping_loss(x, torch.distributions.Normal(torch.tensor(0.3, dtype=F64), 0.5))
        torch.testing.assert_close(ours, theirs)


# ----------------------------------------------------------------------------------------------------------
# Values against the reference.
# ----------------------------------------------------------------------------------------------------------
class TestReference:
    @pytest.mark.parametrize("kind", KINDS)
    @pytest.mark.parametrize("ties", [False, True])
    def test_matches_reference(self, kind: str, ties: bool) -> None:
        rng = np.random.default_rng(7)
        n, d = 40, 6
        x = rng.uniform(0.0, 1.0, (n, d))
        if ties:
            x = np.round(x * 8) / 8  # many ties, and samples exactly at 0 and 1
            if kind == "normal":
                x = x * 3 - 1
        params = random_params(kind, d, rng)
        expected = reference_per_position(x, scipy_cdf(kind, params), ties)
        got = batch_shaping_loss(torch.from_numpy(x), make_prior(kind, params), ties=ties, reduction="none")
        np.testing.assert_allclose(got.numpy(), expected, rtol=1e-11, atol=1e-15)
        mean = batch_shaping_loss(torch.from_numpy(x), make_prior(kind, params), ties=ties)
        assert float(mean) == pytest.approx(expected.mean(), rel=1e-11)

    @settings(settings.get_profile("gbs_functional"))
    @given(
        kind=st.sampled_from(KINDS),
        n=st.integers(2, 40),
        d=st.integers(1, 5),
        ties=st.booleans(),
        seed=st.integers(0, 2**31 - 1),
        levels=st.sampled_from([0, 3, 16]),
    )
    def test_matches_reference_over_shapes_and_parameters(self, kind, n, d, ties, seed, levels) -> None:
        rng = np.random.default_rng(seed)
        x = rng.uniform(0.0, 1.0, (n, d))
        if levels:
            x = np.round(x * levels) / levels
        params = random_params(kind, d, rng)
        expected = reference_per_position(x, scipy_cdf(kind, params), ties)
        got = batch_shaping_loss(torch.from_numpy(x), make_prior(kind, params), ties=ties, reduction="none")
        np.testing.assert_allclose(got.numpy(), expected, rtol=1e-10, atol=1e-14)

    def test_position_k_is_paired_with_prior_k_only(self) -> None:
        # One Beta prior per position: the loss is the mean of the column-by-column losses, not the
        # all-positions-with-all-priors cross product of the published code.
        rng = np.random.default_rng(3)
        x = torch.from_numpy(rng.uniform(size=(30, 4)))
        a, b = torch.tensor([0.5, 2.0, 5.0, 1.0], dtype=F64), torch.tensor([0.5, 5.0, 1.0, 3.0], dtype=F64)
        got = batch_shaping_loss(x, Beta(a, b), reduction="none")
        columns = torch.stack([batch_shaping_loss(x[:, k], Beta(a[k], b[k])) for k in range(4)])
        torch.testing.assert_close(got, columns)
        cross = torch.stack([batch_shaping_loss(x[:, j], Beta(a[k], b[k])) for j in range(4) for k in range(4)])
        assert abs(float(cross.mean() - got.mean())) > 1e-3

    def test_dim_none_is_one_distribution(self) -> None:
        rng = np.random.default_rng(5)
        x = rng.uniform(size=(12, 5))
        expected = reference_per_position(x.reshape(-1, 1), scipy_cdf("beta", {"a": 0.6, "b": 0.4}), False)
        got = batch_shaping_loss(torch.from_numpy(x), Beta(0.6, 0.4), dim=None)
        assert float(got) == pytest.approx(float(expected[0]), rel=1e-12)

    @pytest.mark.parametrize("dim", [1, -1, 2])
    def test_other_batch_dims(self, dim: int) -> None:
        x = torch.rand(4, 30, 3, dtype=F64)
        mean = torch.rand(*(s for i, s in enumerate(x.shape) if i != dim % 3), dtype=F64) * 0.8 + 0.1
        prior = RelaxedBernoulli(mean, 0.7)
        got = batch_shaping_loss(x, prior, dim=dim, reduction="none")
        expected = batch_shaping_loss(x.movedim(dim, 0), prior, dim=0, reduction="none")
        torch.testing.assert_close(got, expected)

    def test_reductions(self) -> None:
        x = torch.rand(20, 3, 4, dtype=F64)
        prior = Normal(torch.rand(3, 4, dtype=F64), 0.3)
        none = batch_shaping_loss(x, prior, reduction="none")
        assert none.shape == (3, 4)
        torch.testing.assert_close(batch_shaping_loss(x, prior, reduction="sum"), none.sum())
        torch.testing.assert_close(batch_shaping_loss(x, prior, reduction="mean"), none.mean())

    def test_prior_parameters_broadcast_against_positions(self) -> None:
        x = torch.rand(25, 3, 4, dtype=F64)
        mean = torch.tensor([[0.2], [0.5], [0.8]], dtype=F64)  # one prior per row of positions
        got = batch_shaping_loss(x, RelaxedBernoulli(mean, 1.5), reduction="none")
        full = batch_shaping_loss(x, RelaxedBernoulli(mean.expand(3, 4), 1.5), reduction="none")
        torch.testing.assert_close(got, full)


# ----------------------------------------------------------------------------------------------------------
# Properties.
# ----------------------------------------------------------------------------------------------------------
class TestProperties:
    @settings(settings.get_profile("gbs_functional"))
    @given(
        x=hnp.arrays(
            np.float64,
            hnp.array_shapes(min_dims=1, max_dims=3, min_side=2, max_side=9),
            elements=st.floats(0.0, 1.0),
        ),
        dim=st.integers(-3, 2),
        ties=st.booleans(),
        seed=st.integers(0, 1000),
        prior=st.one_of(
            st.builds(Beta, st.floats(0.05, 20.0), st.floats(0.05, 20.0)),
            st.builds(SymmetricBeta, st.floats(0.02, 0.98)),
            st.builds(RelaxedBernoulli, st.floats(0.02, 0.98), st.floats(0.05, 8.0)),
            st.builds(Normal, st.floats(-1.0, 2.0), st.floats(0.01, 3.0)),
        ),
    )
    def test_nonnegative_and_permutation_invariant(self, x: np.ndarray, dim: int, ties: bool, seed: int, prior) -> None:
        dim = dim % x.ndim
        xt = torch.from_numpy(x)
        loss = batch_shaping_loss(xt, prior, dim=dim, ties=ties, reduction="none")
        assert torch.all(loss >= 0)
        perm = torch.randperm(x.shape[dim], generator=torch.Generator().manual_seed(seed))
        permuted = batch_shaping_loss(xt.index_select(dim, perm), prior, dim=dim, ties=ties, reduction="none")
        torch.testing.assert_close(permuted, loss, rtol=1e-13, atol=1e-15)

    @pytest.mark.parametrize("kind", KINDS)
    @pytest.mark.parametrize("n", [2, 9, 200])
    def test_zero_at_the_prior_quantiles(self, kind: str, n: int) -> None:
        rng = np.random.default_rng(n)
        d = 3
        params = random_params(kind, d, rng)
        p = np.arange(1, n + 1) / (n + 1)
        if kind == "beta":
            q = scipy.stats.beta.ppf(p[:, None], params["a"], params["b"])
        elif kind == "symmetric_beta":
            q = scipy.stats.beta.ppf(p[:, None], params["a"], 1 - params["a"])
        else:
            q = make_prior(kind, params).icdf(torch.from_numpy(p)[:, None]).numpy()
        x = torch.from_numpy(rng.permuted(q, axis=0))  # any order
        loss = batch_shaping_loss(x, make_prior(kind, params), reduction="none")
        assert torch.all(loss < 1e-26), loss

    def test_ties_get_the_largest_rank(self) -> None:
        x = torch.tensor([0.5, 0.5, 0.5, 0.5], dtype=F64)
        prior = Normal(0.5, 1.0)  # F = 1/2 at the samples
        # Largest rank 4 for all: (4/5 - 1/2)^2.
        assert float(batch_shaping_loss(x, prior, ties=True)) == pytest.approx(0.09)
        # Without tie handling the ranks are 1..4: mean of (i/5 - 1/2)^2.
        assert float(batch_shaping_loss(x, prior)) == pytest.approx(np.mean((np.arange(1, 5) / 5 - 0.5) ** 2))

    def test_training_moves_samples_toward_the_prior(self) -> None:
        # Stated factor: 100 Adam steps on the sample logits reduce the loss at least 20-fold.
        torch.manual_seed(0)
        logits = (torch.randn(256, 8) * 0.3 + 1.5).requires_grad_()
        prior = Beta(0.6, 0.4)
        opt = torch.optim.Adam([logits], lr=0.05)
        first = None
        for _ in range(100):
            opt.zero_grad()
            loss = batch_shaping_loss(torch.sigmoid(logits), prior)
            first = float(loss.detach()) if first is None else first
            loss.backward()
            opt.step()
        last = float(batch_shaping_loss(torch.sigmoid(logits), prior).detach())
        assert last < first / 20, (first, last)


# ----------------------------------------------------------------------------------------------------------
# Gradients.
# ----------------------------------------------------------------------------------------------------------
class TestGradcheck:
    @pytest.mark.parametrize("ties", [False, True])
    def test_relaxed_bernoulli(self, ties: bool) -> None:
        x = separated_samples(9, 3, seed=1).requires_grad_()
        u = torch.tensor([-0.5, 0.2, 1.0], dtype=F64, requires_grad=True)
        t = torch.tensor([0.5, 1.0, 2.5], dtype=F64, requires_grad=True)

        def f(x, u, t):
            return batch_shaping_loss(x, RelaxedBernoulli(logits=u, temperature=t), ties=ties, reduction="none")

        assert torch.autograd.gradcheck(f, (x, u, t))

    def test_beta(self) -> None:
        x = separated_samples(8, 2, seed=2).requires_grad_()
        a = torch.tensor([0.6, 3.0], dtype=F64, requires_grad=True)
        b = torch.tensor([0.4, 1.5], dtype=F64, requires_grad=True)
        assert torch.autograd.gradcheck(lambda x, a, b: batch_shaping_loss(x, Beta(a, b), reduction="sum"), (x, a, b))

    def test_symmetric_beta_and_normal(self) -> None:
        x = separated_samples(8, 2, seed=3).requires_grad_()
        a = torch.tensor([0.3, 0.7], dtype=F64, requires_grad=True)
        loc = torch.tensor([0.2, 0.6], dtype=F64, requires_grad=True)
        scale = torch.tensor([0.3, 0.1], dtype=F64, requires_grad=True)
        assert torch.autograd.gradcheck(lambda x, a: batch_shaping_loss(x, SymmetricBeta(a)), (x, a))
        assert torch.autograd.gradcheck(lambda x, m, s: batch_shaping_loss(x, Normal(m, s)), (x, loc, scale))

    def test_hyperprior(self) -> None:
        means = separated_samples(12, 1, seed=4).reshape(3, 4).requires_grad_()
        loc = torch.tensor(0.3, dtype=F64, requires_grad=True)
        scale = torch.tensor(0.2, dtype=F64, requires_grad=True)
        assert torch.autograd.gradcheck(lambda m, l, s: hyperprior_loss(m, Normal(l, s)), (means, loc, scale))

    def test_gradient_matches_reference_formula(self) -> None:
        # dL/dx_(i) = -2/(N D) (i/(N+1) - F(x_(i))) f(x_(i)), scattered back to the original order.
        x = separated_samples(10, 2, seed=5).requires_grad_()
        prior = RelaxedBernoulli(torch.tensor([0.3, 0.6], dtype=F64), torch.tensor([0.8, 1.7], dtype=F64))
        batch_shaping_loss(x, prior).backward()
        xs, idx = torch.sort(x.detach(), dim=0)
        ecdf = torch.arange(1, 11, dtype=F64).unsqueeze(1) / 11
        grad_sorted = -2 / 20 * (ecdf - prior.cdf(xs)) * prior.log_prob(xs).exp()
        expected = torch.empty_like(grad_sorted).scatter_(0, idx, grad_sorted)
        torch.testing.assert_close(x.grad, expected)

    def test_gradients_are_finite_at_the_ends(self) -> None:
        x = torch.tensor([[0.0, 1.0], [1.0, 0.0], [0.3, 0.3], [0.0, 1.0]], requires_grad=True)
        u = torch.zeros(2, requires_grad=True)
        t = torch.tensor([0.3, 3.0], requires_grad=True)
        for prior in (RelaxedBernoulli(logits=u, temperature=t), Beta(t, 0.5)):
            loss = batch_shaping_loss(x, prior, ties=True)
            grads = torch.autograd.grad(loss, (x, t))
            assert torch.isfinite(loss) and all(torch.all(torch.isfinite(g)) for g in grads)


# ----------------------------------------------------------------------------------------------------------
# The fused node's backward.
# ----------------------------------------------------------------------------------------------------------
class TestFusedBackward:
    @pytest.mark.parametrize(
        "shape,dim", [((7, 5), 0), ((3, 6, 4), 1), ((2, 3, 5), 2), ((4, 3, 2, 5), 1), ((2, 5, 3), 0), ((9,), 0)]
    )
    def test_unsort_is_the_scatter_back(self, shape: tuple[int, ...], dim: int) -> None:
        g = torch.Generator().manual_seed(11)
        indices = torch.sort(torch.randn(shape, generator=g), dim=dim).indices
        src = torch.randn(shape, dtype=F64, generator=g)
        assert torch.equal(_unsort(src, indices, dim), torch.empty_like(src).scatter_(dim, indices, src))
        # Any layout of the indices and values (those of a batch gathered or transposed, say).
        reverse = tuple(reversed(range(len(shape))))
        indices_t = torch.sort(torch.randn(shape[::-1], generator=g).permute(reverse), dim=dim).indices
        src_t = torch.randn(shape[::-1], dtype=F64, generator=g).permute(reverse)
        expected = torch.empty_like(src_t).scatter_(dim, indices_t, src_t)
        assert torch.equal(_unsort(src_t, indices_t, dim), expected)

    @pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
    def test_backward_runs_twice_with_the_same_result(self, reduction: str) -> None:
        # The backward works in place in buffers of its own: nothing saved for it is overwritten.
        g = torch.Generator().manual_seed(12)
        x = torch.rand(64, 5, generator=g).requires_grad_()
        u = torch.randn(5, generator=g).requires_grad_()
        t = (torch.rand(5, generator=g) + 0.3).requires_grad_()
        loss = batch_shaping_loss(x, RelaxedBernoulli(logits=u, temperature=t), reduction=reduction)
        assert type(loss.grad_fn).__name__ == "_FusedShapingBackward"
        weight = torch.rand(loss.shape, generator=g)
        first = torch.autograd.grad(loss, (x, u, t), weight, retain_graph=True)
        second = torch.autograd.grad(loss, (x, u, t), weight)
        assert all(torch.equal(a, b) for a, b in zip(first, second, strict=True))


# ----------------------------------------------------------------------------------------------------------
# Dtypes.
# ----------------------------------------------------------------------------------------------------------
class TestDtypes:
    @pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
    def test_low_precision_is_computed_in_float32(self, dtype) -> None:
        x = torch.rand(64, 5).to(dtype).requires_grad_()
        prior = RelaxedBernoulli(torch.full((5,), 0.3), 0.7)
        loss = batch_shaping_loss(x, prior)
        assert loss.dtype == torch.float32
        torch.testing.assert_close(loss, batch_shaping_loss(x.detach().float(), prior))
        loss.backward()
        assert x.grad.dtype == dtype

    def test_float64_is_kept(self) -> None:
        assert batch_shaping_loss(torch.rand(8, 2, dtype=F64), Beta(0.6, 0.4)).dtype == F64


# ----------------------------------------------------------------------------------------------------------
# Exceptions.
# ----------------------------------------------------------------------------------------------------------
class TestExceptions:
    @pytest.mark.parametrize(
        ("call", "error", "message"),
        [
            (
                lambda p: batch_shaping_loss(torch.rand(0, 3), p),
                ValueError,
                r"x has an empty batch: shape \(0, 3\), dim=0",
            ),
            (
                lambda p: batch_shaping_loss(torch.rand(1, 3), p),
                ValueError,
                r"x needs a batch of at least 2 samples to have a distribution, got 1 "
                r"\(shape \(1, 3\), dim=0\)",
            ),
            (
                lambda p: batch_shaping_loss(torch.rand(5, 0), p),
                ValueError,
                r"x has no positions: shape \(5, 0\) with the batch along dim 0",
            ),
            (
                lambda p: batch_shaping_loss(torch.tensor(0.5), p),
                ValueError,
                r"x must have at least one dimension \(the batch\) when dim=0, got a 0-dimensional tensor",
            ),
            (
                lambda p: batch_shaping_loss(torch.tensor([[0.1, math.nan], [0.2, 0.3]]), p),
                ValueError,
                r"x must be finite, got 1 NaN or infinite value\(s\) in a tensor of shape \(2, 2\)",
            ),
            (
                lambda p: batch_shaping_loss(torch.tensor([[0.1, math.inf], [0.2, 0.3]]), p),
                ValueError,
                r"x must be finite, got 1 NaN or infinite value",
            ),
            (
                lambda p: batch_shaping_loss(torch.rand(4, 3), p, dim=2),
                ValueError,
                r"dim must be in \[-2, 1\] for x of shape \(4, 3\), got 2",
            ),
            (
                lambda p: batch_shaping_loss(torch.rand(4, 3), p, dim=-3),
                ValueError,
                r"dim must be in \[-2, 1\] for x of shape \(4, 3\), got -3",
            ),
            (
                lambda p: batch_shaping_loss(torch.rand(4, 3), p, reduction="max"),
                ValueError,
                r"reduction must be one of \('none', 'mean', 'sum'\), got 'max'",
            ),
            (
                lambda p: batch_shaping_loss(torch.rand(4, 3), RelaxedBernoulli(torch.full((4,), 0.5), 1.0)),
                ValueError,
                r"prior parameters of shape \(4,\) do not broadcast against the positions of shape "
                r"\(3,\)",
            ),
            (
                lambda p: batch_shaping_loss(torch.rand(4, 3), RelaxedBernoulli(torch.full((4, 1), 0.5), 1.0)),
                ValueError,
                r"prior parameters of shape \(4, 1\) do not broadcast against the positions of shape "
                r"\(3,\)",
            ),
            (
                lambda p: batch_shaping_loss(torch.rand(4, 3), p, dim=None),
                ValueError,
                r"prior parameters of shape \(3,\) do not broadcast against the positions of shape \(\)",
            ),
            (
                lambda p: batch_shaping_loss(torch.tensor([[0.1, 1.5], [0.2, 0.3]]), Beta(0.6, 0.4)),
                ValueError,
                r"Beta.cdf: x must be inside the support \[0, 1\]",
            ),
            (
                lambda p: batch_shaping_loss(torch.arange(6).reshape(3, 2), p),
                TypeError,
                r"x must be a floating-point tensor, got dtype torch.int64",
            ),
            (
                lambda p: batch_shaping_loss(torch.ones(3, 2, dtype=torch.bool), p),
                TypeError,
                r"x must be a floating-point tensor, got dtype torch.bool",
            ),
            (lambda p: batch_shaping_loss([[0.1, 0.2]], p), TypeError, r"x must be a torch.Tensor, got list"),
            (
                lambda p: batch_shaping_loss(torch.rand(4, 3), "beta"),
                TypeError,
                r"prior must be an object with a differentiable cdf method .*, got str",
            ),
            (
                lambda p: batch_shaping_loss(torch.rand(4, 3), p, dim=1.0),
                TypeError,
                r"dim must be an int or None, got float",
            ),
            (
                lambda p: batch_shaping_loss(torch.rand(4, 3), p, ties=1),
                TypeError,
                r"ties must be a bool, got int",
            ),
            (
                lambda p: batch_shaping_loss(torch.rand(4, 3), p, validate_args=None),
                TypeError,
                r"validate_args must be a bool, got NoneType",
            ),
            (
                lambda p: hyperprior_loss(torch.rand(1), Normal(0.3, 0.1)),
                ValueError,
                r"params needs a batch of at least 2 samples to have a distribution, got 1",
            ),
            (
                lambda p: hyperprior_loss(torch.tensor([0.1, math.nan]), Normal(0.3, 0.1)),
                ValueError,
                r"params must be finite",
            ),
            (
                lambda p: hyperprior_loss(torch.rand(5), object()),
                TypeError,
                r"hyperprior must be an object with a differentiable cdf method",
            ),
            (
                lambda p: hyperprior_loss(torch.rand(5), Normal(torch.zeros(5), 1.0)),
                ValueError,
                r"hyperprior parameters of shape \(5,\) do not broadcast against the positions of shape \(\)",
            ),
        ],
    )
    def test_bad_input(self, call, error, message: str) -> None:
        prior = Beta(torch.full((3,), 0.6), 0.4)
        with pytest.raises(error, match=message):
            call(prior)

    def test_cdf_of_wrong_shape(self) -> None:
        class Bad:
            def cdf(self, x):
                return x.sum(0)

        with pytest.raises(
            ValueError,
            match=r"prior.cdf must return a tensor of the samples' shape \(4, 3\) "
            r"\(batch first\), got \(3,\)",
        ):
            batch_shaping_loss(torch.rand(4, 3), Bad())

    def test_validation_off_lets_nan_through(self) -> None:
        x = torch.tensor([[0.1, 0.2], [math.nan, 0.3], [0.5, 0.6]])
        loss = batch_shaping_loss(x, Beta(0.6, 0.4, validate_args=False), validate_args=False, reduction="none")
        assert math.isnan(loss[0].item()) and math.isfinite(loss[1].item())


# ----------------------------------------------------------------------------------------------------------
# torch.compile.
# ----------------------------------------------------------------------------------------------------------
class TestCompile:
    @pytest.mark.parametrize("kind", ["relaxed_bernoulli", "beta"])
    def test_compiled_equals_eager_without_host_sync(self, kind: str) -> None:
        # fullgraph=True fails on any graph break, e.g. a host synchronisation such as .item().
        torch._dynamo.reset()
        x = torch.rand(32, 6, dtype=F64)
        x[:4] = x[4:8]  # ties
        p1 = torch.rand(6, dtype=F64).add(0.2).requires_grad_()
        p2 = torch.rand(6, dtype=F64).add(0.2).requires_grad_()

        def loss(x, p1, p2, ties):
            if kind == "beta":
                prior = Beta(p1, p2, validate_args=False)
            else:
                prior = RelaxedBernoulli(logits=p1, temperature=p2, validate_args=False)
            return batch_shaping_loss(x, prior, ties=ties, validate_args=False)

        compiled = torch.compile(loss, fullgraph=True, dynamic=False)
        for ties in (False, True):
            eager = loss(x, p1, p2, ties)
            got = compiled(x, p1, p2, ties)
            torch.testing.assert_close(got, eager)
            torch.testing.assert_close(torch.autograd.grad(got, (p1, p2)), torch.autograd.grad(eager, (p1, p2)))


def test_betainc_is_the_beta_cdf() -> None:
    # The Beta prior is wired to gbs_loss.betainc.
    x = torch.rand(5, dtype=F64)
    torch.testing.assert_close(Beta(2.0, 3.0).cdf(x), betainc(2.0, 3.0, x))
