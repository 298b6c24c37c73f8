"""A scipy round-trip Beta CDF and Batch-Shaping loss in the manner of the published research code.

The published Batch-Shaping code (see ``MISSION.md``, "What the published code does") evaluates the Beta CDF
with ``scipy.stats.beta`` on the host and approximates its gradients:

* the value is ``scipy.stats.beta.cdf`` of the samples copied to the host, returned as float32;
* the gradient with respect to ``x`` is the density clipped to ``[1e-3, 100]``;
* the gradients with respect to ``a`` and ``b`` are central finite differences on 11 points
  (``a + k h``, ``k = -5 .. 5``) with step ``h = 0.01``.

This module rebuilds that approach as a :class:`torch.autograd.Function`, so it runs forward and backward like
:func:`gbs_loss.betainc`, and the Batch-Shaping loss on top of it, called position by position (one Beta prior
per position, each position paired with its own prior only). It is a baseline for ``bench_loss.py`` and is
not part of the library: its gradients are approximate (wrong where the density leaves ``[1e-3, 100]``, and
the finite differences need ``a, b > 5 h``).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from scipy import stats
from torch import Tensor

STEP = 0.01
POINTS = 11
DENSITY_CLIP = (1e-3, 100.0)


def central_weights(points: int = POINTS) -> list[float]:
    """Weights ``w_k``, ``k = 1 .. m``, of the ``2 m + 1``-point central difference of a first derivative.

    ``f'(t) ~ sum_k w_k (f(t + k h) - f(t - k h)) / h``, exact for polynomials of degree ``2 m``;
    ``w_k = (-1)^(k+1) (m!)^2 / (k (m - k)! (m + k)!)``.
    """
    if points < 3 or points % 2 == 0:
        raise ValueError(f"points must be odd and at least 3, got {points}")
    m = points // 2
    fm = math.factorial(m)
    return [(-1) ** (k + 1) * fm * fm / (k * math.factorial(m - k) * math.factorial(m + k)) for k in range(1, m + 1)]


def _shifted_cdfs(x: np.ndarray, a: float, b: float, step: float, points: int) -> tuple[np.ndarray, ...]:
    """The CDF and its finite-difference derivatives with respect to ``a`` and ``b``, from one scipy call.

    ``scipy.stats.beta.cdf`` is evaluated once on a grid of shape ``(1 + 4 m, N)``: the value, then
    ``a +- k h`` and ``b +- k h`` for ``k = 1 .. m``.
    """
    m = points // 2
    k = np.arange(1, m + 1, dtype=np.float64) * step
    shift_a = np.concatenate([[0.0], k, -k, np.zeros(2 * m)])
    shift_b = np.concatenate([[0.0], np.zeros(2 * m), k, -k])
    grid = stats.beta.cdf(x[None, :], (a + shift_a)[:, None], (b + shift_b)[:, None])
    w = np.asarray(central_weights(points))
    d_a = w @ (grid[1 : m + 1] - grid[m + 1 : 2 * m + 1]) / step
    d_b = w @ (grid[2 * m + 1 : 3 * m + 1] - grid[3 * m + 1 :]) / step
    return grid[0], d_a, d_b


class ScipyBetaCdf(torch.autograd.Function):
    """Beta CDF of one position: samples ``x`` (any shape), scalar shapes ``a`` and ``b`` (0-d tensors).

    Forward: a device-to-host copy, ``scipy.stats.beta.cdf``, and, for the backward, the clipped density and
    the finite-difference derivatives with respect to ``a`` and ``b`` (21 CDF evaluations per sample, in one
    vectorised scipy call). The value comes back as float32 on the device of ``x``.
    """

    @staticmethod
    def forward(ctx, x: Tensor, a: Tensor, b: Tensor) -> Tensor:
        xn = x.detach().cpu().double().numpy()
        an, bn = float(a.detach().cpu()), float(b.detach().cpu())
        value, d_a, d_b = _shifted_cdfs(xn.reshape(-1), an, bn, STEP, POINTS)
        value, d_a, d_b = (v.reshape(xn.shape) for v in (value, d_a, d_b))
        density = np.clip(stats.beta.pdf(xn, an, bn), *DENSITY_CLIP)
        saved = [torch.from_numpy(v).to(device=x.device, dtype=torch.float32) for v in (density, d_a, d_b)]
        ctx.save_for_backward(*saved)
        ctx.dtypes = (x.dtype, a.dtype, b.dtype)
        ctx.shapes = (a.shape, b.shape)
        return torch.from_numpy(value).to(device=x.device, dtype=torch.float32)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        density, d_a, d_b = ctx.saved_tensors
        dtype_x, dtype_a, dtype_b = ctx.dtypes
        shape_a, shape_b = ctx.shapes
        grad_x = (grad * density).to(dtype_x)
        grad_a = (grad * d_a).sum().reshape(shape_a).to(dtype_a)
        grad_b = (grad * d_b).sum().reshape(shape_b).to(dtype_b)
        return grad_x, grad_a, grad_b


def published_bas_loss(x: Tensor, a: Tensor, b: Tensor) -> Tensor:
    """Batch-Shaping loss of one position: ``x`` of shape ``(N,)`` against ``Beta(a, b)`` (0-d ``a``, ``b``).

    ``mean_i (i / (N + 1) - F(x_(i)))^2`` with the samples sorted; ties are ranked in the sort's order.
    """
    xs = torch.sort(x).values
    n = xs.shape[0]
    ecdf = torch.arange(1, n + 1, dtype=torch.float32, device=x.device) / (n + 1)
    return ((ecdf - ScipyBetaCdf.apply(xs, a, b)) ** 2).mean()


def published_gbas_loss(x: Tensor, a: Tensor, b: Tensor) -> Tensor:
    """Mean over positions of :func:`published_bas_loss`, called position by position.

    ``x`` has shape ``(N, D)`` (batch first), ``a`` and ``b`` shape ``(D,)``: position ``k`` is paired with
    ``Beta(a[k], b[k])`` only.
    """
    if x.dim() != 2 or a.shape != (x.shape[1],) or b.shape != (x.shape[1],):
        raise ValueError(f"expected x of shape (N, D) and a, b of shape (D,), got {x.shape}, {a.shape}, {b.shape}")
    terms = [published_bas_loss(x[:, k], a[k], b[k]) for k in range(x.shape[1])]
    return torch.stack(terms).mean()
