"""Wiring the MSViT gate to the Generalized Batch-Shaping loss, the way MSViT does it."""

from __future__ import annotations

import math
from numbers import Real

from gbs_loss.modules import GeneralizedBatchShaping
from gbs_loss.priors import Normal

__all__ = ["msvit_gate_loss"]


def _check_fraction(name: str, value: object, low: float, high: float) -> float:
    if isinstance(value, bool) or not isinstance(value, Real):
        raise TypeError(f"msvit_gate_loss: {name} must be a real number, got {type(value).__name__}")
    number = float(value)
    if not (math.isfinite(number) and low < number < high):
        raise ValueError(f"msvit_gate_loss: {name} must be in ({low:g}, {high:g}), got {value!r}")
    return number


def _check_regions(regions: object) -> None:
    expected = "the grid of coarse regions, a pair of positive ints such as (7, 7), or their number"
    if isinstance(regions, int) and not isinstance(regions, bool):
        if regions <= 0:
            raise ValueError(f"msvit_gate_loss: regions must be {expected}, got {regions}")
        return
    if not isinstance(regions, (tuple, list)) or len(regions) != 2:
        raise TypeError(f"msvit_gate_loss: regions must be {expected}, got {type(regions).__name__} {regions!r}")
    for side in regions:
        if isinstance(side, bool) or not isinstance(side, int) or side <= 0:
            raise ValueError(f"msvit_gate_loss: regions must be {expected}, got {tuple(regions)!r}")


def msvit_gate_loss(
    regions: int | tuple[int, int] = (7, 7),
    target: float = 0.3,
    spread: float = 0.1,
    *,
    init_temperature: float = 1.0,
    prior_weight: float = 1.0,
    hyperprior_weight: float = 1.0,
    temperature_weight: float = 0.01,
    ties: bool = False,
    validate_args: bool = True,
) -> GeneralizedBatchShaping:
    r"""The Generalized Batch-Shaping loss for an MSViT gate's soft values.

    As in Havtorn, Royer, Blankevoort, Ehteshami Bejnordi, "MSViT: Dynamic Mixed-Scale Tokenization for Vision
    Transformers", ICCV Workshops 2023, arXiv 2307.02321: every coarse region $k$ gets its own learned
    Relaxed Bernoulli prior (mean $m_k$, temperature $\lambda_k$) for the soft gate values
    $x_{i,k}$ of the batch, and a Normal hyperprior $\mathcal{N}(\text{target}, \text{spread}^2)$ on
    the learned means $m_1, \dots, m_D$ keeps the average fraction of split regions near ``target`` while
    letting some regions (the centre of the image, say) split more often than others. A small L1 term on the
    temperatures favours nearly binary gates. The means start at ``target``.

    The returned module has learnable parameters (the priors): give them to the optimiser together with the
    gate's. Its hyperprior does not validate its arguments; with ``validate_args=False`` nothing in the loss
    synchronises with an accelerator.

    Args:
        regions: The grid of coarse regions, ``(H / Sc, W / Sc)`` (``(7, 7)`` for 224x224 images and 32-pixel
            coarse patches), or their number.
        target: Target fraction of split regions, the hyperprior's mean, in ``(0, 1)``.
        spread: Standard deviation of the hyperprior, how far the regions' rates may differ, in ``(0, 1)``.
        init_temperature: Initial temperature of every prior.
        prior_weight: Weight of the per-region prior term.
        hyperprior_weight: Weight of the hyperprior term.
        temperature_weight: Weight of the L1 term on the temperatures.
        ties: Give tied soft values the largest rank of their group.
        validate_args: Check that the soft values are finite; this reads them on the host (a synchronisation
            with an accelerator), so turn it off in a training loop on a GPU once things work.

    Returns:
        A `gbs_loss.modules.GeneralizedBatchShaping` taking the soft values ``(N, *regions)``.

    Example:
        >>> import torch
        >>> from gbs_loss.msvit import MixedScaleGate, msvit_gate_loss
        >>> gate = MixedScaleGate()
        >>> criterion = msvit_gate_loss((7, 7), target=0.3)
        >>> loss = criterion(gate(torch.randn(8, 3, 224, 224)).soft)
        >>> loss.backward()
        >>> criterion.means.shape
        torch.Size([7, 7])
    """
    _check_regions(regions)
    target = _check_fraction("target", target, 0.0, 1.0)
    spread = _check_fraction("spread", spread, 0.0, 1.0)
    return GeneralizedBatchShaping(
        regions,
        prior="relaxed_bernoulli",
        hyperprior=Normal(target, spread, validate_args=False),
        init_mean=target,
        init_temperature=init_temperature,
        prior_weight=prior_weight,
        hyperprior_weight=hyperprior_weight,
        temperature_weight=temperature_weight,
        ties=ties,
        validate_args=validate_args,
    )
