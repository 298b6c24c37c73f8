r"""Numerical constants shared by every implementation (backend) of `gbs_loss.betainc`.

The torch-operator reference, the native CPU kernel and the Triton kernel read their numbers from here, so that
they converge, switch methods and give up on exactly the same inputs.

* `MAX_STEPS` -- the continued fraction stops after this many steps on every device. An element that has
  not converged by then is reported as non-converged (NaN in the value and all three gradients). The number of
  steps grows like $\sqrt{\min(a, b)}$ with ``x`` at the mean: 4096 steps cover $a = b = 10^7$ (about
  1e7 at the mean); $10^5$ needs fewer than 400.
* `TOL` -- relative convergence test of the modified Lentz algorithm: an element has converged after the
  first step where $|C_n D_n - 1| \le$ ``TOL`` and the increments of both log-derivatives are at most
  ``TOL`` times the log-derivatives themselves.
* `TINY` -- replaces an exact zero denominator in the Lentz recurrences (Thompson & Barnett 1986).
* `LARGE` -- above this, log-gamma and digamma differences use Stirling's series; the prefactor uses the
  Stirling form when $\min(a, b) \ge$ ``LARGE``.
* Complement series (defect 1 of issue 11): after the swap to $I_{1-x}(b, a)$, with $p$ the new first
  parameter, the series of $\log J$ is used instead of the fraction when $p \le$
  `SERIES_P_MAX` (no bound on ``xx``: in the swapped region $xx < (1+p)/(p+q+2) \le 0.6$ and
  $q\,xx \lesssim 1.2$, so the terms decrease at least like $0.6^j$). Terms are added until, after term
  ``j``, both the term of $T$ and the term of $\partial T / \partial q$ are at most
  `SERIES_TOL` times the partial sums they are added to (or exactly zero); at most
  `SERIES_MAX_TERMS` terms, else the element is reported non-converged.
* `CHUNK_STEPS` -- the torch reference on accelerators runs the fraction in chunks of this many masked
  steps and checks once per chunk whether every element has converged (one host synchronisation per chunk).
"""

from __future__ import annotations

__all__ = [
    "CHUNK_STEPS",
    "LARGE",
    "MAX_STEPS",
    "SERIES_MAX_TERMS",
    "SERIES_P_MAX",
    "SERIES_TOL",
    "TINY",
    "TOL",
]

MAX_STEPS: int = 4096
TOL: float = 4.0e-16
TINY: float = 1.0e-300
LARGE: float = 10.0
SERIES_P_MAX: float = 0.2
SERIES_TOL: float = 1.0e-17
SERIES_MAX_TERMS: int = 256
CHUNK_STEPS: int = 32
