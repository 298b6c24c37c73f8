r"""Generalized Batch-Shaping demonstration: ``python -m gbs_loss demo``.

Thirty positions hold 500 learnable samples each (think of 30 gate positions seen over a batch of 500
images). Every position starts from its own distribution, some mostly near 0, some near 1, some spread out.
A `GeneralizedBatchShaping` loss holds one learnable Relaxed Bernoulli prior per position
and a $\mathrm{Beta}(3, 7)$ hyperprior on the priors' means, and Adam trains the samples and the priors
together for a few hundred steps. Two things happen at once, which is the point of the method (Havtorn,
Royer, Blankevoort, Ehteshami Bejnordi, "MSViT", ICCV Workshops 2023, arXiv 2307.02321):

* every position's samples and its learned prior move toward each other until the empirical CDF follows
  the prior's CDF (the Batch-Shaping term of Bejnordi, Blankevoort, Welling, ICLR 2020);
* the 30 learned means spread out like the hyperprior, so positions keep their own rates while the rates
  as a whole follow $\mathrm{Beta}(3, 7)$ (mean 0.3).

The figure shows both, with the loss curves, and is saved as a PNG.
"""

from __future__ import annotations

import argparse
import math
import shutil
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from gbs_loss.modules import GeneralizedBatchShaping
from gbs_loss.priors import Beta

if TYPE_CHECKING:
    from tqdm.auto import tqdm

__all__ = ["main", "plot", "train"]

DEFAULT_OUT = Path("outputs") / "gbas_demo.png"
DOCS_COPY = Path("docs") / "img" / "gbas_demo.png"


def train(
    steps: int = 300,
    positions: int = 30,
    samples: int = 500,
    seed: int = 0,
    lr: float = 0.08,
    hyperprior: tuple[float, float] = (3.0, 7.0),
    temperature_weight: float = 0.0,
    progress: bool = True,
) -> dict[str, Any]:
    r"""Train learnable samples and learned priors with the Generalized Batch-Shaping loss.

    The samples are $\sigma(s)$ with learnable logits $s$ of shape ``(samples, positions)``;
    position $k$ starts as $s_{ik} = \mu_k + \sigma_k \varepsilon_{ik}$ with
    $\mu_k \sim U(-2.5, 2.5)$, $\sigma_k \sim U(0.3, 2)$ and standard normal $\varepsilon$.

    Args:
        steps: Adam steps.
        positions: Number of positions (each its own distribution and prior).
        samples: Samples per position (the batch).
        seed: Seed of the initial samples.
        lr: Adam's learning rate, for the sample logits and the prior parameters alike.
        hyperprior: ``(a, b)`` of the Beta hyperprior on the learned means.
        temperature_weight: Weight of the L1 term on the temperatures.
        progress: Show a tqdm progress bar (on stderr).

    Returns:
        A dict with the initial and final samples (``"x0"``, ``"x"``: tensors of shape
        ``(samples, positions)``), the final learned ``"means"`` and ``"temperatures"`` (shape
        ``(positions,)``), the trained ``"module"``, the loss ``"history"`` (a dict of lists per component),
        the ``"hyperprior"`` and the wall-clock ``"seconds"``.

    Example:
        >>> from gbs_loss.demo import train
        >>> result = train(steps=5, positions=4, samples=50, progress=False)
        >>> result["x"].shape, result["means"].shape, len(result["history"]["total"])  # 5 steps and the end
        (torch.Size([50, 4]), torch.Size([4]), 6)
    """
    gen = torch.Generator().manual_seed(seed)
    loc = torch.rand(positions, generator=gen) * 5.0 - 2.5
    scale = torch.rand(positions, generator=gen) * 1.7 + 0.3
    logits = (loc + scale * torch.randn(samples, positions, generator=gen)).requires_grad_()
    hyper = Beta(*hyperprior)
    gbas = GeneralizedBatchShaping(
        positions, hyperprior=hyper, temperature_weight=temperature_weight, validate_args=False
    )
    optimizer = torch.optim.Adam([logits, *gbas.parameters()], lr=lr)
    x0 = torch.sigmoid(logits).detach().clone()
    history: dict[str, list[float]] = {"total": [], "prior": [], "hyperprior": [], "temperature": []}
    bar = _progress(steps, progress)
    start = time.perf_counter()
    for _ in range(steps):
        optimizer.zero_grad(set_to_none=True)
        loss = gbas(torch.sigmoid(logits))
        loss.backward()
        optimizer.step()
        for key, value in gbas.components.items():
            history[key].append(float(value))
        if bar is not None:
            bar.set_postfix(loss=f"{history['total'][-1]:.2e}", refresh=False)
            bar.update()
    if bar is not None:
        bar.close()
    seconds = time.perf_counter() - start
    temperatures = gbas.temperatures
    assert temperatures is not None  # the Relaxed Bernoulli family learns temperatures
    with torch.no_grad():
        x = torch.sigmoid(logits)
        # Components of the final state, after the last update.
        gbas(x)
        for key, value in gbas.components.items():
            history[key].append(float(value))
    return {
        "x0": x0,
        "x": x.detach(),
        "means": gbas.means.detach(),
        "temperatures": temperatures.detach(),
        "module": gbas,
        "history": history,
        "hyperprior": hyper,
        "seconds": seconds,
    }


def _progress(steps: int, enabled: bool) -> tqdm | None:
    if not enabled:
        return None
    try:
        from tqdm.auto import tqdm
    except ImportError:  # the progress bar is optional
        return None
    return tqdm(total=steps, desc="GBaS demo", unit="step", file=sys.stderr)


def _ecdf(values: torch.Tensor) -> tuple[list[float], list[float]]:
    """Step-plot coordinates of the empirical CDF i/(N+1) at the sorted values."""
    v = values.sort().values
    n = v.numel()
    return [0.0, *v.tolist(), 1.0], [0.0, *[(i + 1) / (n + 1) for i in range(n)], n / (n + 1)]


def plot(result: dict[str, Any], path: str | Path, dpi: int = 130) -> Path:
    """Draw the demonstration figure from `train`'s result and save it as a PNG at ``path``.

    Top row: for four positions (learned means from low to high), the samples' empirical CDF before and
    after training and the learned prior's CDF. Bottom row: the histogram of the learned means against the
    hyperprior's density (and where the positions started), and the loss curves.

    Example:
        >>> import tempfile
        >>> from pathlib import Path
        >>> from gbs_loss.demo import plot, train
        >>> result = train(steps=5, positions=4, samples=50, progress=False)
        >>> with tempfile.TemporaryDirectory() as folder:
        ...     path = plot(result, Path(folder) / "gbas_demo.png")
        ...     path.name, path.stat().st_size > 0
        ('gbas_demo.png', True)
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    module, hyper = result["module"], result["hyperprior"]
    x0, x, means, temps = result["x0"], result["x"], result["means"], result["temperatures"]
    history = result["history"]
    prior = module.prior()
    order = means.argsort()
    d = means.numel()
    picks = [int(order[round(q * (d - 1))]) for q in (0.0, 1 / 3, 2 / 3, 1.0)]

    colours = ["#1f77b4", "#2ca02c", "#ff7f0e", "#d62728"]
    fig = plt.figure(figsize=(15, 8.2), layout="constrained")
    grid = fig.add_gridspec(2, 4, height_ratios=[1.0, 1.05])
    grid_x = torch.linspace(0.0, 1.0, 801, dtype=torch.float64)
    for col, (k, colour) in enumerate(zip(picks, colours, strict=True)):
        ax = fig.add_subplot(grid[0, col])
        with torch.no_grad():
            cdf = prior.cdf(grid_x.unsqueeze(-1).expand(-1, d).to(means.dtype))[:, k]
        ax.plot([0, 1], [0, 1], color="0.75", lw=1.0, ls=":", label="prior, start (uniform)")
        ax.step(*_ecdf(x0[:, k]), where="post", color="0.6", lw=1.4, ls="--", label="samples, start")
        ax.step(*_ecdf(x[:, k]), where="post", color=colour, lw=2.2, label="samples, trained")
        ax.plot(grid_x, cdf, color="black", lw=1.2, ls=(0, (4, 2)), label="learned prior CDF")
        ax.set_title(f"position {k}: mean {means[k]:.2f}, temperature {temps[k]:.2f}", fontsize=10)
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.set_xlabel("sample value")
        ax.grid(alpha=0.25)
        if col == 0:
            ax.set_ylabel("CDF")
            ax.legend(loc="upper left", fontsize=8.5, frameon=True)

    ax = fig.add_subplot(grid[1, :2])
    bins = torch.linspace(0, 1, 21).tolist()
    start_rates = (x0 > 0.5).double().mean(0)
    ax.hist(
        means.tolist(),
        bins=bins,
        density=True,
        color="#6a51a3",
        alpha=0.55,
        edgecolor="white",
        label=f"learned prior means ({d} positions)",
    )
    inner = grid_x[1:-1]
    with torch.no_grad():
        density = hyper.log_prob(inner).exp()
    ax.plot(inner, density, color="black", lw=2.0, label=f"hyperprior Beta({hyper.a:g}, {hyper.b:g}) density")
    for k, colour in zip(picks, colours, strict=True):
        ax.axvline(float(means[k]), color=colour, lw=1.5, alpha=0.9)
    top = ax.get_ylim()[1]
    ax.plot(
        start_rates.tolist(),
        [-0.06 * top] * d,
        "|",
        color="0.35",
        markersize=14,
        mew=1.5,
        label="samples' share above 1/2 at the start",
    )
    ax.axhline(0, color="0.3", lw=0.8)
    ax.set_ylim(-0.12 * top, top)
    ax.set_xlim(0, 1)
    ax.set_xlabel("mean (share of samples above 1/2)")
    ax.set_ylabel("density")
    ax.set_title("learned means against the hyperprior (coloured lines: the positions above)", fontsize=10)
    ax.legend(fontsize=8.5, loc="upper right")
    ax.grid(alpha=0.25)

    ax = fig.add_subplot(grid[1, 2:])
    steps = range(len(history["total"]))
    ax.plot(steps, history["total"], color="black", lw=2.0, label="total")
    ax.plot(steps, history["prior"], color="#1f77b4", lw=1.4, label="prior term (samples vs. priors)")
    ax.plot(steps, history["hyperprior"], color="#6a51a3", lw=1.4, label="hyperprior term (means vs. Beta)")
    ax.set_yscale("log")
    ax.set_xlabel("Adam step")
    ax.set_ylabel("loss")
    ax.set_title("loss curves", fontsize=10)
    ax.legend(fontsize=8.5)
    ax.grid(alpha=0.25, which="both")

    n, _ = x.shape
    fig.suptitle(
        f"Generalized Batch-Shaping: {d} positions x {n} learnable samples, learned Relaxed Bernoulli "
        f"priors under a Beta({hyper.a:g}, {hyper.b:g}) hyperprior",
        fontsize=12,
    )
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return path


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {value}")
    return value


def main(argv: list[str] | None = None) -> int:
    """Run the demonstration from the command line; return the exit status.

    Example:
        >>> from gbs_loss.demo import main
        >>> main(["--steps", "300", "--out", "outputs/gbas_demo.png"])  # doctest: +SKIP
        trained 300 steps in ...
        saved the figure to ...
        0
    """
    parser = argparse.ArgumentParser(
        prog="python -m gbs_loss demo",
        description="Generalized Batch-Shaping: learnable samples and learned Relaxed Bernoulli priors "
        "under a Beta hyperprior; saves a PNG.",
    )
    parser.add_argument("--steps", type=_positive_int, default=300, help="Adam steps (default: 300)")
    parser.add_argument("--positions", type=_positive_int, default=30, help="positions (default: 30)")
    parser.add_argument("--samples", type=_positive_int, default=500, help="samples per position (default: 500)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the initial samples (default: 0)")
    parser.add_argument("--lr", type=float, default=0.08, help="Adam learning rate (default: 0.08)")
    parser.add_argument(
        "--temperature-weight",
        type=float,
        default=0.0,
        help="weight of the L1 term on the temperatures (default: 0)",
    )
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"output PNG (default: {DEFAULT_OUT})")
    parser.add_argument(
        "--docs",
        action="store_true",
        help=f"also save a copy as {DOCS_COPY} (relative to the current directory)",
    )
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    args = parser.parse_args([] if argv is None else argv)
    if args.positions < 2 or args.samples < 2:
        parser.error("--positions and --samples must be at least 2")
    if not (math.isfinite(args.lr) and args.lr > 0):
        parser.error(f"--lr must be a positive number, got {args.lr}")
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        print("the demo needs matplotlib: pip install 'gbs-loss[demo]'", file=sys.stderr)
        return 1
    torch.set_num_threads(1)
    result = train(
        steps=args.steps,
        positions=args.positions,
        samples=args.samples,
        seed=args.seed,
        lr=args.lr,
        temperature_weight=args.temperature_weight,
        progress=not args.no_progress,
    )
    history = result["history"]
    print(
        f"trained {args.steps} steps in {result['seconds']:.1f} s: loss {history['total'][0]:.3g} -> "
        f"{history['total'][-1]:.3g} (prior term {history['prior'][0]:.3g} -> {history['prior'][-1]:.3g}, "
        f"hyperprior term {history['hyperprior'][0]:.3g} -> {history['hyperprior'][-1]:.3g})"
    )
    path = plot(result, args.out)
    print(f"saved the figure to {path.resolve()}")
    if args.docs:
        DOCS_COPY.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, DOCS_COPY)
        print(f"saved a copy to {DOCS_COPY.resolve()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
