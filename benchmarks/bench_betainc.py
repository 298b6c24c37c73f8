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

``--full`` adds 1e6 points (minutes on a 2-core machine). With ``--device cuda`` ours runs on the GPU,
synchronised after every call; scipy stays on the host.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import scipy
import torch
from scipy import special

import gbs_loss

ROOT = Path(__file__).resolve().parents[1]
REGIONS = ("moderate", "tiny", "large")
DTYPES = {"float32": torch.float32, "float64": torch.float64}
DEFAULT_SIZES = (1_000, 10_000, 100_000)
FULL_SIZES = (1_000, 10_000, 100_000, 1_000_000)
QUICK_SIZES = (1_000, 10_000)
X_CLIP = 1e-6


# ----------------------------------------------------------------------------------------------------------
# Shared helpers (also used by bench_loss.py).
# ----------------------------------------------------------------------------------------------------------
def set_threads(threads: int | None) -> int:
    """Set torch's intra-op threads (default: all cores) and return the number in use."""
    torch.set_num_threads(threads if threads else (os.cpu_count() or 1))
    return torch.get_num_threads()


def synchronize(device: str | torch.device) -> None:
    """Wait for the device's queued work (a no-op on the CPU), so that timings include it."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def gpu_model(device: str | torch.device) -> str | None:
    if torch.device(device).type == "cuda":
        return torch.cuda.get_device_name(device)
    return None


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine_info(device: str = "cpu") -> dict[str, str | int | None]:
    """The machine and software versions, to print with every result."""
    return {
        "device": str(device),
        "gpu": gpu_model(device),
        "platform": platform.platform(),
        "cpu": cpu_model(),
        "cores": os.cpu_count() or 1,
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "scipy": scipy.__version__,
        "gbs_loss": gbs_loss.__version__,
    }


def write_output(path: Path | None, text: str) -> None:
    """Write ``text`` to ``path`` (creating its folder) when a path was given."""
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def machine_markdown(info: dict[str, str | int | None]) -> list[str]:
    gpu = f"; ours on {info['device']} ({info['gpu']}), synchronised" if info.get("gpu") else ""
    return [
        f"Machine: {info['platform']}, CPU {info['cpu']} ({info['cores']} cores), "
        f"torch threads {info['torch_threads']}{gpu}; Python {info['python']}, torch {info['torch']}, "
        f"NumPy {info['numpy']}, SciPy {info['scipy']}, gbs-loss {info['gbs_loss']}.",
    ]


def _machine_busy_seconds() -> float | None:
    """CPU seconds the whole machine has spent busy since boot (Linux ``/proc/stat``), None elsewhere."""
    try:
        fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except (OSError, ValueError):
        return None
    user, nice, system, _idle, _iowait, irq, softirq, *rest = fields + [0] * max(0, 8 - len(fields))
    steal = rest[0] if rest else 0
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def _own_seconds() -> float:
    t = os.times()
    return t.user + t.system


def interleaved_medians(
    fns: dict[str, Callable[[], object]], repeats: int, min_time: float = 0.02
) -> tuple[dict[str, float], float | None]:
    """Median seconds per call of every function, measured interleaved, and the load of other processes.

    Each function is called once (warm-up), then timed once more to choose an inner loop count so that one
    measurement lasts at least ``min_time`` seconds. The ``repeats`` rounds call the functions in a rotating
    order; the median over rounds is returned, with the fraction of the machine's CPU time that other
    processes used during the rounds (None where it cannot be read).
    """
    names = list(fns)
    loops = {}
    for name in names:
        fns[name]()
        start = time.perf_counter()
        fns[name]()
        once = max(time.perf_counter() - start, 1e-7)
        loops[name] = max(1, math.ceil(min_time / once))
    samples: dict[str, list[float]] = {name: [] for name in names}
    busy0, own0, wall0 = _machine_busy_seconds(), _own_seconds(), time.perf_counter()
    for r in range(max(1, repeats)):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            fn, n = fns[name], loops[name]
            start = time.perf_counter()
            for _ in range(n):
                fn()
            samples[name].append((time.perf_counter() - start) / n)
    busy1, own1, wall1 = _machine_busy_seconds(), _own_seconds(), time.perf_counter()
    other = None
    if busy0 is not None and busy1 is not None:
        other = max(0.0, (busy1 - busy0) - (own1 - own0)) / ((wall1 - wall0) * (os.cpu_count() or 1))
    return {name: statistics.median(v) for name, v in samples.items()}, other


def measure(
    fns: dict[str, Callable[[], object]],
    repeats: int,
    min_time: float = 0.02,
    max_other_load: float = 0.1,
    attempts: int = 3,
) -> tuple[dict[str, float], float | None]:
    """:func:`interleaved_medians`, repeated while other processes used more than ``max_other_load``.

    On a shared machine another process that takes a core stalls torch's thread pool far more than it slows
    single-threaded SciPy, which skews ratios. A measurement during which other processes used more than
    ``max_other_load`` of the machine's CPU time is taken again, up to ``attempts`` times in all; the one with
    the least foreign load is kept, and that load is returned with it.
    """
    best: tuple[dict[str, float], float | None] | None = None
    for _ in range(max(1, attempts)):
        times, other = interleaved_medians(fns, repeats, min_time)
        if best is None or (other is not None and best[1] is not None and other < best[1]):
            best = (times, other)
        if other is None or other <= max_other_load:
            break
    return best


def add_common_arguments(parser: argparse.ArgumentParser) -> None:
    """The options that both benchmark scripts take (the plots differ and are added by each)."""
    parser.add_argument("--repeats", type=int, help="interleaved repeats per case (default 7, quick 3)")
    parser.add_argument("--min-time", type=float, default=0.02, help="seconds per measurement (default 0.02)")
    parser.add_argument(
        "--max-other-load",
        type=float,
        default=0.1,
        help="retake a case when other processes used more than this fraction of the CPU (default 0.1)",
    )
    parser.add_argument("--attempts", type=int, default=3, help="measurements per case at most (default 3)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: all cores)")
    parser.add_argument("--device", default="cpu", help="device of ours, e.g. cuda (scipy stays on the host)")
    parser.add_argument("--markdown", type=Path, help="write the markdown report here")
    parser.add_argument("--json", type=Path, help="write the raw results here")
    parser.add_argument("--quiet", action="store_true", help="print only the report")


def where_measured(info: dict[str, str | int | None], threads: int) -> str:
    """The machine in a plot title: the GPU, else the CPU and the number of torch threads."""
    return str(info["gpu"] or f"{info['cpu']}, {threads} torch threads")


def publish(report: Sequence[str], args: argparse.Namespace, result: dict) -> dict:
    """Print the report and write it to ``--markdown``, the results to ``--json``; ``result`` plus the text."""
    text = "\n".join(report) + "\n"
    print(text)
    write_output(args.markdown, text)
    write_output(args.json, json.dumps(result, indent=1))
    return {**result, "markdown": text}


def load_note(max_other_load: float, attempts: int) -> str:
    return (
        f"'other load': share of the machine's CPU time used by other processes while measuring; cases above "
        f"{100 * max_other_load:.0f}% were measured again (at most {attempts} times, the quietest kept)."
    )


def parse_size(text: str) -> int:
    value = float(text)
    if value < 1 or value != int(value):
        raise argparse.ArgumentTypeError(f"a size must be a positive integer, got {text}")
    return int(value)


def format_load(load: float | None) -> str:
    return "-" if load is None else f"{100 * load:.0f}%"


def format_size(n: int) -> str:
    """``1e5`` for powers of ten, ``12,345`` otherwise."""
    exponent = round(math.log10(n)) if n > 0 else 0
    return f"1e{exponent}" if n == 10**exponent else f"{n:,}"


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

    times, other = measure(
        {"scipy": scipy_forward, "ours_fwd": ours_forward, "ours_fwd_bwd": ours_forward_backward},
        repeats,
        min_time,
        max_other_load,
        attempts,
    )
    ratio = times["ours_fwd_bwd"] / times["scipy"]
    return {"region": region, "dtype": dtype, "n": n, **times, "ratio": ratio, "other_load": other}


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
    """One row per (dtype, region, size): nanoseconds per point and the ratio ours fwd+bwd / scipy."""
    lines = [
        "| dtype | region | points | scipy fwd (ns/pt) | ours fwd (ns/pt) | ours fwd+bwd (ns/pt) "
        "| fwd+bwd / scipy fwd | other load |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        per = 1e9 / r["n"]
        lines.append(
            f"| {r['dtype']} | {r['region']} | {format_size(r['n'])} | {r['scipy'] * per:.0f} "
            f"| {r['ours_fwd'] * per:.0f} | {r['ours_fwd_bwd'] * per:.0f} | {r['ratio']:.2f} "
            f"| {format_load(r['other_load'])} |"
        )
    return lines


def pyplot():
    """``matplotlib.pyplot`` with the non-interactive Agg backend (imported only when a plot is asked for)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path: Path) -> None:
    """Write ``fig`` as a PNG to ``path`` (creating its folder) and release it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    pyplot().close(fig)


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

    report = [
        "### betainc: value + 3 gradients (ours) vs scipy value",
        "",
        *machine_markdown(info),
        f"Median of {repeats} interleaved repeats; scipy.special.betainc is single-threaded. "
        + load_note(args.max_other_load, args.attempts),
        "",
        *markdown_table(rows),
    ]
    result = publish(report, args, {"machine": info, "threads": threads, "repeats": repeats, "rows": rows})
    if args.plot:
        plot(rows, args.plot, f"betainc on {where_measured(info, threads)}; scipy on the host CPU")
    return result


if __name__ == "__main__":
    main()
