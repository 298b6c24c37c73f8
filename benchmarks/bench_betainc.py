"""Speed of ``gbs_loss.betainc`` (value and the three gradients) against ``scipy.special.betainc`` (value only).

For every region of the shape parameters, dtype and number of points, on the same inputs:

* ``scipy``: ``scipy.special.betainc(a, b, x)`` on NumPy arrays of the dtype (forward only: scipy has no
  gradients with respect to ``a`` and ``b``);
* ``ours fwd``: ``gbs_loss.betainc(a, b, x)`` without autograd;
* ``ours fwd+bwd``: ``gbs_loss.betainc(a, b, x)`` followed by the backward pass giving the gradients with
  respect to ``a``, ``b`` and ``x``.

Regions: ``moderate`` (``a, b`` uniform in ``[0.5, 10]``), ``tiny`` (one of ``a, b`` log-uniform in
``[1e-3, 0.05]``, the other log-uniform in ``[1e-3, 10]``) and ``large`` (``a, b`` log-uniform in
``[1e3, 1e5]``). Half of the points ``x`` are uniform in ``(0, 1)``, half are drawn from ``Beta(a, b)`` (where
the CDF is neither 0 nor 1, the hard part for large shapes); all are clipped to ``[1e-6, 1 - 1e-6]``.

Timing: every function is called once to warm up, then calibrated to an inner loop of at least ``--min-time``
seconds; the repeats interleave the functions (rotating their order) so that load on a shared machine hits
all of them alike; the figure is the median over repeats. Ratios are taken within one run. The CPU time that
other processes use during a case is read from ``/proc/stat``; a case during which they used more than
``--max-other-load`` of the machine is measured again (``--attempts`` times at most, the quietest kept), since
a busy core stalls torch's thread pool much more than single-threaded SciPy.

Usage::

    python benchmarks/bench_betainc.py [--quick | --full | --sizes 1e3 1e4 ...] [--repeats R] [--threads T]
        [--device cpu|cuda] [--markdown PATH] [--plot PATH] [--json PATH]

Default sizes: 196 (one Beta hyperprior call in MSViT), 1e3, 1e4 and 1e5 points; ``--full`` adds 1e6 points
(minutes on a 2-core machine). With ``--device cuda`` ours runs on the GPU, synchronised after every call; scipy
stays on the host. ``GBS_LOSS_BACKEND`` (``auto``, ``torch``, ``native``, ``triton``) chooses our implementation;
the machine line of the report says which was asked for.

Targets (issue 11, CPU): ours fwd+bwd at most 3x scipy's forward at 196 points, 1.5x at 1e3, 1.0x at 1e5; the
report gives, per size, the worst ratio over dtypes and regions.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from scipy import special

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (  # noqa: E402
    add_common_arguments,
    format_load,
    format_size,
    load_note,
    machine_info,
    machine_markdown,
    measure,
    parse_size,
    publish,
    pyplot,
    ratio_verdict,
    save_figure,
    set_threads,
    synchronize,
    where_measured,
)

import gbs_loss  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
REGIONS = ("moderate", "tiny", "large")
DTYPES = {"float32": torch.float32, "float64": torch.float64}
DEFAULT_SIZES = (196, 1_000, 10_000, 100_000)
FULL_SIZES = (196, 1_000, 10_000, 100_000, 1_000_000)
QUICK_SIZES = (196, 1_000)
# Targets of issue 11 (CPU): ours fwd+bwd / scipy fwd at most this, by number of points (196: one hyperprior call).
TARGETS = {196: 3.0, 1_000: 1.5, 100_000: 1.0}
X_CLIP = 1e-6


# ----------------------------------------------------------------------------------------------------------
# Inputs.
# ----------------------------------------------------------------------------------------------------------
def _log_uniform(rng: np.random.Generator, lo: float, hi: float, n: int) -> np.ndarray:
    return np.exp(rng.uniform(math.log(lo), math.log(hi), n))


def make_inputs(region: str, n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Float64 arrays ``a, b, x`` of ``n`` points of a region (see the module docstring)."""
    rng = np.random.default_rng(seed)
    if region == "moderate":
        a, b = rng.uniform(0.5, 10.0, n), rng.uniform(0.5, 10.0, n)
    elif region == "tiny":
        a, b = _log_uniform(rng, 1e-3, 0.05, n), _log_uniform(rng, 1e-3, 10.0, n)
        swap = rng.random(n) < 0.5
        a, b = np.where(swap, b, a), np.where(swap, a, b)
    elif region == "large":
        a, b = _log_uniform(rng, 1e3, 1e5, n), _log_uniform(rng, 1e3, 1e5, n)
    else:
        raise ValueError(f"unknown region {region!r}, expected one of {REGIONS}")
    x = np.where(rng.random(n) < 0.5, rng.random(n), rng.beta(a, b))
    return a, b, np.clip(x, X_CLIP, 1.0 - X_CLIP)


# ----------------------------------------------------------------------------------------------------------
# The benchmark.
# ----------------------------------------------------------------------------------------------------------
def bench_case(
    region: str,
    dtype: str,
    n: int,
    repeats: int,
    min_time: float,
    device: str = "cpu",
    max_other_load: float = 0.1,
    attempts: int = 3,
) -> dict[str, float | int | str | None]:
    """Seconds per call of scipy, ours forward and ours forward + backward on the same ``n`` points.

    scipy always runs on the host arrays; ours on ``device``, synchronised after every call.
    """
    arrays = [v.astype(np.dtype(dtype)) for v in make_inputs(region, n)]
    an, bn, xn = arrays
    ta, tb, tx = (torch.from_numpy(v).to(device) for v in arrays)
    ga, gb, gx = (t.clone().requires_grad_(True) for t in (ta, tb, tx))
    ones = torch.ones_like(tx)

    def scipy_forward() -> None:
        special.betainc(an, bn, xn)

    def ours_forward() -> None:
        with torch.no_grad():
            gbs_loss.betainc(ta, tb, tx)
        synchronize(device)

    def ours_forward_backward() -> None:
        y = gbs_loss.betainc(ga, gb, gx)
        torch.autograd.grad(y, (ga, gb, gx), ones)
        synchronize(device)

    # The autograd floor: an autograd.Function that computes nothing (its forward returns a stored value, its
    # backward multiplies the incoming gradient into stored derivatives, as ours does) under the same call.
    stored = torch.rand((4, n), dtype=ta.dtype, device=ta.device)

    class _Nothing(torch.autograd.Function):
        @staticmethod
        def forward(ctx, a, b, x):  # noqa: ANN001, ANN205
            ctx.save_for_backward(stored[1:])
            return stored[0].clone()

        @staticmethod
        def backward(ctx, grad):  # noqa: ANN001, ANN205
            (derivs,) = ctx.saved_tensors
            return (derivs * grad).unbind(0)

    def floor_forward_backward() -> None:
        y = _Nothing.apply(ga, gb, gx)
        torch.autograd.grad(y, (ga, gb, gx), ones)
        synchronize(device)

    times, other = measure(
        {
            "scipy": scipy_forward,
            "ours_fwd": ours_forward,
            "ours_fwd_bwd": ours_forward_backward,
            "floor_fwd_bwd": floor_forward_backward,
        },
        repeats,
        min_time,
        max_other_load,
        attempts,
    )
    ratio = times["ours_fwd_bwd"] / times["scipy"]
    # scipy's own accuracy in this dtype: its float32 loop computes in single precision.
    with np.errstate(all="ignore"):
        exact = special.betainc(*(v.astype(np.float64) for v in arrays))
        rel = np.abs(special.betainc(an, bn, xn).astype(np.float64) - exact) / np.abs(exact)
    scipy_error = float(np.nanmax(np.where(exact > 1e-30, rel, 0.0)))
    return {
        "region": region,
        "dtype": dtype,
        "n": n,
        **times,
        "ratio": ratio,
        "floor_ratio": times["floor_fwd_bwd"] / times["scipy"],
        "scipy_error": scipy_error,
        "other_load": other,
    }


def run(
    sizes: Sequence[int],
    repeats: int,
    min_time: float,
    regions: Sequence[str] = REGIONS,
    progress: bool = True,
    device: str = "cpu",
    max_other_load: float = 0.1,
    attempts: int = 3,
) -> list[dict[str, float | int | str | None]]:
    rows = []
    for dtype in DTYPES:
        for region in regions:
            for n in sizes:
                row = bench_case(region, dtype, n, repeats, min_time, device, max_other_load, attempts)
                if progress:
                    print(
                        f"  {dtype} {region:9s} n={n:>8d}: scipy {row['scipy'] * 1e3:9.3f} ms, "
                        f"ours fwd+bwd {row['ours_fwd_bwd'] * 1e3:9.3f} ms, ratio {row['ratio']:.2f}, "
                        f"other load {format_load(row['other_load'])}",
                        flush=True,
                    )
                rows.append(row)
    return rows


def markdown_table(rows: Sequence[dict]) -> list[str]:
    """One row per (dtype, region, size): nanoseconds per point, the ratio ours fwd+bwd / scipy, the target."""
    lines = [
        "| dtype | region | points | scipy fwd (ns/pt) | ours fwd (ns/pt) | ours fwd+bwd (ns/pt) "
        "| fwd+bwd / scipy fwd | target | autograd floor / scipy fwd | scipy's max rel. error | other load |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        per = 1e9 / r["n"]
        target = f"<= {TARGETS[r['n']]:g}" if r["n"] in TARGETS else "-"
        lines.append(
            f"| {r['dtype']} | {r['region']} | {format_size(r['n'])} | {r['scipy'] * per:.0f} "
            f"| {r['ours_fwd'] * per:.0f} | {r['ours_fwd_bwd'] * per:.0f} | {r['ratio']:.2f} | {target} "
            f"| {r['floor_ratio']:.2f} | {r['scipy_error']:.1e} | {format_load(r['other_load'])} |"
        )
    return lines


def targets(rows: Sequence[dict], max_other_load: float = 0.1) -> list[dict]:
    """Per target size: the worst ratio over the dtypes and regions measured, and whether it meets the target.

    ``verdict`` is ``inconclusive`` when other processes loaded the machine beyond ``max_other_load`` during
    the worst case.
    """
    out = []
    for n, limit in TARGETS.items():
        sel = [r for r in rows if r["n"] == n]
        if not sel:
            continue
        worst = max(sel, key=lambda r: r["ratio"])
        out.append(
            {
                "n": n,
                "limit": limit,
                "worst_ratio": worst["ratio"],
                "worst_case": f"{worst['dtype']} {worst['region']}",
                "met_cases": sum(r["ratio"] <= limit for r in sel),
                "cases": len(sel),
                "verdict": ratio_verdict(worst["ratio"], limit, worst["other_load"], max_other_load),
            }
        )
    return out


def target_lines(found: Sequence[dict]) -> list[str]:
    return [
        f"- {format_size(t['n'])} points: worst fwd+bwd / scipy fwd **{t['worst_ratio']:.2f}** ({t['worst_case']}), "
        f"target <= {t['limit']:g}: {t['verdict']} ({t['met_cases']} of {t['cases']} cases within it)"
        for t in found
    ]


def plot(rows: Sequence[dict], path: Path, title: str) -> None:
    plt = pyplot()
    regions = [reg for reg in REGIONS if any(r["region"] == reg for r in rows)]
    fig, axes = plt.subplots(1, len(regions), figsize=(4.2 * len(regions), 4.0), sharey=True, squeeze=False)
    styles = {"float64": "-", "float32": "--"}
    series = (("scipy", "scipy fwd", "tab:gray"), ("ours_fwd", "ours fwd", "tab:orange"))
    series += (("ours_fwd_bwd", "ours fwd+bwd", "tab:blue"),)
    for ax, region in zip(axes[0], regions, strict=True):
        for dtype, style in styles.items():
            sel = sorted((r for r in rows if r["region"] == region and r["dtype"] == dtype), key=lambda r: r["n"])
            if not sel:
                continue
            n = np.array([r["n"] for r in sel], dtype=float)
            for key, label, color in series:
                ns = np.array([r[key] for r in sel]) / n * 1e9
                ax.plot(n, ns, style, marker="o", ms=3, color=color, label=f"{label} {dtype}")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_title(region)
        ax.set_xlabel("points")
        ax.grid(True, which="both", alpha=0.3)
    axes[0][0].set_ylabel("ns per point")
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=len(series) * len(styles) // 2, fontsize=7)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout(rect=(0, 0.1, 1, 1))
    save_figure(fig, path)


def main(argv: Sequence[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="sizes 1e3 and 1e4, 3 repeats (a smoke run)")
    parser.add_argument("--full", action="store_true", help="sizes 1e3 .. 1e6 (1e6 takes minutes on 2 cores)")
    parser.add_argument("--sizes", type=parse_size, nargs="+", help="numbers of points (default 1e3 .. 1e5)")
    parser.add_argument("--regions", nargs="+", choices=REGIONS, default=list(REGIONS))
    add_common_arguments(parser)
    parser.add_argument("--plot", type=Path, help="write the PNG plot here")
    args = parser.parse_args(argv)
    sizes = args.sizes or (QUICK_SIZES if args.quick else FULL_SIZES if args.full else DEFAULT_SIZES)
    repeats = args.repeats or (3 if args.quick else 7)

    threads = set_threads(args.threads)
    info = machine_info(args.device)
    if not args.quiet:
        print(
            f"betainc benchmark on {args.device}: torch threads {threads} (scipy is single-threaded); "
            f"sizes {list(sizes)}"
        )
    rows = run(
        sizes,
        repeats,
        args.min_time,
        args.regions,
        progress=not args.quiet,
        device=args.device,
        max_other_load=args.max_other_load,
        attempts=args.attempts,
    )

    found = targets(rows, args.max_other_load)
    report = [
        "### betainc: value + 3 gradients (ours) vs scipy value",
        "",
        *machine_markdown(info),
        f"Median of {repeats} interleaved repeats; scipy.special.betainc is single-threaded. "
        + load_note(args.max_other_load, args.attempts),
        "",
        "'autograd floor': the same fwd+bwd call of an autograd.Function that computes nothing (its forward returns "
        "a stored tensor, its backward multiplies the gradient into stored derivatives): what any PyTorch function "
        "with gradients pays here before computing anything. 'scipy's max rel. error': scipy's result in this "
        "dtype against its own float64 result on the same points (its float32 loop computes in single precision; "
        "ours computes in float64 and rounds once).",
        "",
        *markdown_table(rows),
        "",
        *(["Targets (CPU):", "", *target_lines(found)] if found else []),
    ]
    result = publish(
        report, args, {"machine": info, "threads": threads, "repeats": repeats, "rows": rows, "targets": found}
    )
    if args.plot:
        plot(rows, args.plot, f"betainc on {where_measured(info, threads)}; scipy on the host CPU")
    return result


if __name__ == "__main__":
    main()
