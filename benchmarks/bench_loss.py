"""Speed and memory of the Batch-Shaping losses at the shapes users have, against baselines in the same run.

Cases (float32 samples ``x = sigmoid(2 z)``, ``z`` standard normal; learnable prior parameters):

* ``MSViT gate 256x49`` and ``MSViT gate 256x196``: a batch of 256 images, one gate per coarse patch (7x7, or
  14x14), :class:`gbs_loss.GeneralizedBatchShaping` with one learned prior per position and a Normal
  hyperprior on the learned means;
* ``BaS flat 50k``: the original Batch-Shaping, 50,000 values flattened into one distribution
  (``batch_shaping_loss(x, prior, dim=None)``) with learnable scalar parameters;
* ``GBaS demo 500x30``: the shape of ``python -m gbs_loss demo``.

Each with a Relaxed Bernoulli prior (means in ``[0.1, 0.9]``, temperatures log-uniform in ``[0.2, 5]``) and a
Beta prior (means in ``[0.1, 0.9]``, concentrations ``a + b`` log-uniform in ``[1, 20]``). Measured, interleaved:

* ``ours fwd``: the loss (autograd recording); ``ours fwd+bwd``: the loss and its gradients with respect to
  ``x`` and every prior parameter;
* ``scipy CDF``: the prior's CDF alone with SciPy on the same (sorted) points, forward only:
  ``scipy.special.betainc`` for the Beta prior, ``scipy.special.expit(t * logit(x) - logit(m))`` for the
  Relaxed Bernoulli;
* ``sort + sigmoid``: ``torch.sort`` of the same tensor along the batch and one elementwise pass;
* ``published-style``: ``published_baseline.py``, a scipy round trip with clipped densities and
  finite-difference parameter gradients, called position by position, forward + backward (Beta prior only).

Targets of the project (256 x 196, float32): Beta GBaS forward + backward at most 1.0x scipy's CDF values on the
same 50,176 points (issue 11); Relaxed Bernoulli GBaS forward + backward at most 2x ``torch.sort`` plus one
elementwise pass.

Memory: the peak of the memory allocated by torch during one forward + backward (from the profiler's memory
timeline, which tracks every CPU allocation and free) and the bytes of the tensors saved for the backward, for
1e3 .. 1e6 values; a log-log slope of 1 means linear memory.

Usage::

    python benchmarks/bench_loss.py [--quick] [--repeats R] [--threads T] [--device cpu|cuda]
        [--memory-sizes 1e3 1e4 1e5 1e6] [--no-published] [--no-memory]
        [--markdown PATH] [--plot PATH] [--memory-plot PATH] [--json PATH]

With ``--device cuda`` the losses and ``torch.sort`` run on the GPU, synchronised after every call, and the
peak memory is the CUDA allocator's; scipy and the published-style baseline keep their host round trips.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from scipy import special
from torch import Tensor

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (  # noqa: E402
    add_common_arguments,
    format_load,
    load_note,
    machine_info,
    machine_markdown,
    measure,
    parse_size,
    publish,
    pyplot,
    save_figure,
    set_threads,
    synchronize,
    where_measured,
)
from published_baseline import published_bas_loss, published_gbas_loss  # noqa: E402

from gbs_loss import GeneralizedBatchShaping  # noqa: E402
from gbs_loss.functional import batch_shaping_loss  # noqa: E402
from gbs_loss.priors import Beta, Normal, RelaxedBernoulli  # noqa: E402

CASES = {
    "MSViT gate 256x49": ((256, 49), 0),
    "MSViT gate 256x196": ((256, 196), 0),
    "BaS flat 50k": ((50_000,), None),
    "GBaS demo 500x30": ((500, 30), 0),
}
QUICK_CASES = {"MSViT gate 16x49": ((16, 49), 0), "BaS flat 2k": ((2_000,), None)}
PRIORS = ("relaxed_bernoulli", "beta")
TARGET_CASE = "MSViT gate 256x196"
# Beta: issue 11 (was 3x before the fused betainc backends); Relaxed Bernoulli: the project's original target.
TARGETS = {"beta": ("scipy", 1.0), "relaxed_bernoulli": ("sort_sigmoid", 2.0)}
MEMORY_SIZES = (1_000, 10_000, 100_000, 1_000_000)
QUICK_MEMORY_SIZES = (1_000, 10_000)
MEMORY_SERIES = ("BaS flat, Beta", "BaS flat, Beta, ties", "GBaS Beta, 196 positions", "GBaS RB, 196 positions")
MEMORY_POSITIONS = 196


# ----------------------------------------------------------------------------------------------------------
# The problems: a loss closure, its differentiable inputs, and the points and parameters for the baselines.
# ----------------------------------------------------------------------------------------------------------
class Problem:
    """One case with one prior: ``loss()`` and the tensors the gradients are taken for."""

    def __init__(
        self,
        shape: tuple[int, ...],
        dim: int | None,
        prior: str,
        seed: int = 0,
        ties: bool = False,
        device: str = "cpu",
    ):
        gen = torch.Generator().manual_seed(seed)
        self.x = torch.sigmoid(2 * torch.randn(shape, generator=gen)).to(device).requires_grad_(True)
        self.dim, self.prior, self.device = dim, prior, device
        positions = shape[1:] if dim == 0 else ()
        mean = 0.1 + 0.8 * torch.rand(positions, generator=gen)
        spread_range = (0.2, 5.0) if prior == "relaxed_bernoulli" else (1.0, 20.0)
        lo, hi = (math.log(v) for v in spread_range)
        spread = torch.exp(lo + (hi - lo) * torch.rand(positions, generator=gen))
        mean, spread = mean.to(device), spread.to(device)
        if dim is None:
            self.module = None
            if prior == "relaxed_bernoulli":
                self.params = [torch.logit(mean).requires_grad_(True), spread.requires_grad_(True)]
                self.loss = lambda: batch_shaping_loss(
                    self.x, RelaxedBernoulli(logits=self.params[0], temperature=self.params[1]), dim=None, ties=ties
                )
            else:
                self.params = [(mean * spread).requires_grad_(True), ((1 - mean) * spread).requires_grad_(True)]
                self.loss = lambda: batch_shaping_loss(self.x, Beta(*self.params), dim=None, ties=ties)
        else:
            init = {"init_temperature" if prior == "relaxed_bernoulli" else "init_concentration": spread}
            self.module = GeneralizedBatchShaping(
                positions,
                prior=prior,
                hyperprior=Normal(0.3, 0.1, validate_args=False),
                init_mean=mean,
                ties=ties,
                **init,
            ).to(device)
            self.params = list(self.module.parameters())
            self.loss = lambda: self.module(self.x)
        self.inputs = [self.x, *self.params]

    def forward(self) -> None:
        self.loss()
        synchronize(self.device)

    def backward(self) -> None:
        torch.autograd.grad(self.loss(), self.inputs)
        synchronize(self.device)

    def prior_params(self) -> tuple[Tensor, Tensor]:
        """Detached ``(a, b)`` of the Beta prior or ``(mean, temperature)`` of the Relaxed Bernoulli."""
        with torch.no_grad():
            if self.module is not None:
                p = self.module.prior()
                if self.prior == "beta":
                    return p.a.detach().clone(), p.b.detach().clone()
                return p.mean.detach().clone(), p.temperature.detach().clone()
            if self.prior == "beta":
                return self.params[0].detach().clone(), self.params[1].detach().clone()
            return torch.sigmoid(self.params[0]).detach(), self.params[1].detach().clone()

    def sorted_points(self) -> Tensor:
        with torch.no_grad():
            return torch.sort(self.x.detach().reshape(-1) if self.dim is None else self.x.detach(), dim=0).values


def scipy_cdf_closure(problem: Problem) -> Callable[[], object]:
    """SciPy's forward CDF on the same sorted points, parameters broadcast per position (float32 arrays)."""
    xs = problem.sorted_points().cpu().numpy()
    p, q = (np.ascontiguousarray(np.broadcast_to(v.cpu().numpy(), xs.shape)) for v in problem.prior_params())
    if problem.prior == "beta":
        return lambda: special.betainc(p, q, xs)
    logit_m = special.logit(p)
    return lambda: special.expit(q * special.logit(xs) - logit_m)


def sort_sigmoid_closure(problem: Problem) -> Callable[[], object]:
    x = problem.x.detach()
    x = x.reshape(-1) if problem.dim is None else x

    def fn() -> None:
        with torch.no_grad():
            torch.sigmoid(torch.sort(x, dim=0).values)
        synchronize(problem.device)

    return fn


def published_closure(problem: Problem) -> Callable[[], object] | None:
    """The published-style scipy round trip, position by position, forward + backward (Beta prior only)."""
    if problem.prior != "beta":
        return None
    x = problem.x.detach().clone().requires_grad_(True)
    a, b = (v.requires_grad_(True) for v in problem.prior_params())

    def fn() -> None:
        if problem.dim is None:
            loss = published_bas_loss(x.reshape(-1), a, b)
        else:
            loss = published_gbas_loss(x.reshape(x.shape[0], -1), a.reshape(-1), b.reshape(-1))
        torch.autograd.grad(loss, (x, a, b))
        synchronize(problem.device)

    return fn


# ----------------------------------------------------------------------------------------------------------
# Speed.
# ----------------------------------------------------------------------------------------------------------
def bench_speed(
    cases: dict,
    repeats: int,
    min_time: float,
    published: bool,
    progress: bool,
    device: str = "cpu",
    max_other_load: float = 0.1,
    attempts: int = 3,
) -> list[dict[str, float | int | str | None]]:
    rows = []
    for name, (shape, dim) in cases.items():
        for prior in PRIORS:
            problem = Problem(shape, dim, prior, device=device)
            fns: dict[str, Callable[[], object]] = {
                "ours_fwd": problem.forward,
                "ours_fwd_bwd": problem.backward,
                "scipy": scipy_cdf_closure(problem),
                "sort_sigmoid": sort_sigmoid_closure(problem),
            }
            pub = published_closure(problem) if published else None
            if pub is not None:
                fns["published"] = pub
            times, other = measure(fns, repeats, min_time, max_other_load, attempts)
            row = {"case": name, "prior": prior, "values": problem.x.numel(), "published": None, **times}
            row["other_load"] = other
            row["vs_scipy"] = row["ours_fwd_bwd"] / row["scipy"]
            row["vs_sort"] = row["ours_fwd_bwd"] / row["sort_sigmoid"]
            row["published_vs_ours"] = row["published"] / row["ours_fwd_bwd"] if row["published"] else None
            if progress:
                print(
                    f"  {name:20s} {prior:17s}: ours fwd+bwd {row['ours_fwd_bwd'] * 1e3:8.2f} ms, "
                    f"/scipy {row['vs_scipy']:6.2f}, /sort+sigmoid {row['vs_sort']:6.2f}, "
                    f"other load {format_load(other)}",
                    flush=True,
                )
            rows.append(row)
    return rows


def targets(rows: Sequence[dict], max_other_load: float = 0.1) -> list[dict]:
    """The project's two target ratios, from the rows of the target case.

    ``met`` is None (inconclusive) where other processes loaded the machine beyond ``max_other_load`` during the
    measurement.
    """
    out = []
    for prior, (baseline, limit) in TARGETS.items():
        for r in rows:
            if r["case"] == TARGET_CASE and r["prior"] == prior:
                ratio = r["ours_fwd_bwd"] / r[baseline]
                load = r.get("other_load")
                met = None if load is not None and load > max_other_load else ratio <= limit
                out.append(
                    {"prior": prior, "baseline": baseline, "ratio": ratio, "limit": limit, "met": met, "load": load}
                )
    return out


def _ms(v: float | None) -> str:
    return "-" if v is None else f"{v * 1e3:.2f}"


def _ratio(v: float | None) -> str:
    return "-" if v is None else f"{v:.2f}"


def speed_table(rows: Sequence[dict]) -> list[str]:
    lines = [
        "| case | prior | values | ours fwd (ms) | ours fwd+bwd (ms) | scipy CDF fwd (ms) | sort + sigmoid (ms) "
        "| published-style fwd+bwd (ms) | fwd+bwd / scipy | fwd+bwd / (sort + sigmoid) | published / ours "
        "| other load |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['case']} | {r['prior']} | {r['values']:,} | {_ms(r['ours_fwd'])} | {_ms(r['ours_fwd_bwd'])} "
            f"| {_ms(r['scipy'])} | {_ms(r['sort_sigmoid'])} | {_ms(r['published'])} | {_ratio(r['vs_scipy'])} "
            f"| {_ratio(r['vs_sort'])} | {_ratio(r['published_vs_ours'])} | {format_load(r['other_load'])} |"
        )
    return lines


def target_lines(found: Sequence[dict]) -> list[str]:
    names = {"scipy": "scipy's forward CDF on the same points", "sort_sigmoid": "torch.sort + one sigmoid"}
    lines = []
    for t in found:
        if t["met"] is None:
            verdict = f"inconclusive, other load {format_load(t['load'])}: rerun on a quiet machine"
        else:
            verdict = "met" if t["met"] else "NOT met"
        lines.append(
            f"- {TARGET_CASE}, {t['prior']} GBaS forward + backward / {names[t['baseline']]}: "
            f"**{t['ratio']:.2f}** (target <= {t['limit']:g}: {verdict})"
        )
    return lines


# ----------------------------------------------------------------------------------------------------------
# Memory.
# ----------------------------------------------------------------------------------------------------------
def _memory_problem(series: str, n: int, device: str = "cpu") -> Problem:
    if series.startswith("BaS flat"):
        return Problem((n,), None, "beta", ties=series.endswith("ties"), device=device)
    rows = max(2, round(n / MEMORY_POSITIONS))
    prior = "beta" if "Beta" in series else "relaxed_bernoulli"
    return Problem((rows, MEMORY_POSITIONS), 0, prior, device=device)


def peak_and_saved_bytes(problem: Problem) -> tuple[int | None, int]:
    """(peak bytes allocated by torch during forward + backward, bytes of the tensors saved for backward).

    On the CPU the peak comes from the profiler's memory timeline (None where this torch has none), on CUDA
    from the allocator's peak statistics; the saved bytes are counted once per storage with
    ``torch.autograd.graph.saved_tensors_hooks``.

    On the CPU the sort of the packed keys is forced to torch (``GBS_LOSS_SORT=torch``): NumPy's sort allocates
    its output (8 bytes per value) outside torch, where the profiler cannot see it, while torch's sort allocates
    values and indices (16 bytes per value), so the peak measured this way bounds the NumPy path's from above.
    """
    previous = os.environ.get("GBS_LOSS_SORT")
    os.environ["GBS_LOSS_SORT"] = "torch"
    try:
        return _memory_of(problem)
    finally:
        if previous is None:
            del os.environ["GBS_LOSS_SORT"]
        else:
            os.environ["GBS_LOSS_SORT"] = previous


def _memory_of(problem: Problem) -> tuple[int | None, int]:
    problem.backward()  # warm-up: one-time allocations are not part of the loss's memory
    saved: dict[int, int] = {}

    def pack(t: Tensor) -> Tensor:
        storage = t.untyped_storage()
        saved[storage.data_ptr()] = storage.nbytes()
        return t

    if torch.device(problem.device).type == "cuda":
        torch.cuda.synchronize(problem.device)
        torch.cuda.reset_peak_memory_stats(problem.device)
        before = torch.cuda.memory_allocated(problem.device)
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            loss = problem.loss()
        torch.autograd.grad(loss, problem.inputs)
        torch.cuda.synchronize(problem.device)
        return torch.cuda.max_memory_allocated(problem.device) - before, sum(saved.values())

    activities = [torch.profiler.ProfilerActivity.CPU]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with torch.profiler.profile(
            activities=activities, profile_memory=True, record_shapes=True, with_stack=True
        ) as prof:
            with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
                loss = problem.loss()
            torch.autograd.grad(loss, problem.inputs)
        peak = None
        export = getattr(prof, "export_memory_timeline", None)
        if export is not None:
            try:
                with tempfile.TemporaryDirectory() as tmp:
                    path = os.path.join(tmp, "memory.json")
                    export(path, device="cpu")
                    _, sizes = json.loads(Path(path).read_text())
                peak = max((sum(s) for s in sizes), default=0)
            except Exception:  # noqa: BLE001 - a profiler without a usable timeline: report the saved bytes only
                peak = None
    return peak, sum(saved.values())


def loglog_slope(n: Sequence[float], v: Sequence[float | None], min_n: float = 1e4) -> float | None:
    pts = [(a, b) for a, b in zip(n, v, strict=True) if b and a >= min_n]
    if len(pts) < 2:
        pts = [(a, b) for a, b in zip(n, v, strict=True) if b]
    if len(pts) < 2:
        return None
    x, y = np.log([p[0] for p in pts]), np.log([p[1] for p in pts])
    return float(np.polyfit(x, y, 1)[0])


def bench_memory(sizes: Sequence[int], progress: bool, device: str = "cpu") -> list[dict]:
    rows = []
    for series in MEMORY_SERIES:
        for n in sizes:
            problem = _memory_problem(series, n, device)
            peak, saved = peak_and_saved_bytes(problem)
            row = {"series": series, "values": problem.x.numel(), "peak": peak, "saved": saved}
            if progress:
                shown = "-" if peak is None else f"{peak / row['values']:.0f}"
                print(f"  {series:26s} n={row['values']:>8d}: peak {shown} B/value", flush=True)
            rows.append(row)
            del problem
    return rows


def memory_summary(rows: Sequence[dict]) -> list[dict]:
    out = []
    for series in dict.fromkeys(r["series"] for r in rows):
        sel = [r for r in rows if r["series"] == series]
        n = [r["values"] for r in sel]
        out.append(
            {
                "series": series,
                "peak_slope": loglog_slope(n, [r["peak"] for r in sel]),
                "saved_slope": loglog_slope(n, [r["saved"] for r in sel]),
                "peak_per_value": (sel[-1]["peak"] / sel[-1]["values"]) if sel[-1]["peak"] else None,
                "saved_per_value": sel[-1]["saved"] / sel[-1]["values"],
            }
        )
    return out


def memory_table(rows: Sequence[dict], summary: Sequence[dict]) -> list[str]:
    lines = [
        "| series | values | peak (MiB) | peak (B/value) | saved for backward (MiB) | saved (B/value) |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        peak = "-" if r["peak"] is None else f"{r['peak'] / 2**20:.2f}"
        per = "-" if r["peak"] is None else f"{r['peak'] / r['values']:.0f}"
        lines.append(
            f"| {r['series']} | {r['values']:,} | {peak} | {per} | {r['saved'] / 2**20:.2f} "
            f"| {r['saved'] / r['values']:.0f} |"
        )
    lines += ["", "| series | log-log slope of the peak | log-log slope of the saved bytes |", "|---|---:|---:|"]
    for s in summary:
        lines.append(f"| {s['series']} | {_ratio(s['peak_slope'])} | {_ratio(s['saved_slope'])} |")
    return lines


# ----------------------------------------------------------------------------------------------------------
# Plots.
# ----------------------------------------------------------------------------------------------------------
def plot_speed(rows: Sequence[dict], path: Path, title: str) -> None:
    plt = pyplot()
    series = (
        ("ours_fwd_bwd", "ours fwd+bwd", "tab:blue"),
        ("scipy", "scipy CDF fwd", "tab:gray"),
        ("sort_sigmoid", "sort + sigmoid", "tab:green"),
        ("published", "published-style fwd+bwd", "tab:red"),
    )
    labels = [
        "\n".join([*r["case"].rsplit(" ", 1), "RB" if r["prior"] == "relaxed_bernoulli" else "Beta"]) for r in rows
    ]
    pos = np.arange(len(rows))
    width = 0.8 / len(series)
    fig, ax = plt.subplots(figsize=(max(6.0, 1.1 * len(rows)), 4.0))
    for i, (key, label, color) in enumerate(series):
        vals = [r[key] * 1e3 if r[key] else np.nan for r in rows]
        ax.bar(pos + (i - (len(series) - 1) / 2) * width, vals, width, label=label, color=color)
    ax.set_xticks(pos, labels, fontsize=7)
    ax.set_yscale("log")
    ax.set_ylabel("ms per call (median)")
    ax.grid(True, axis="y", which="both", alpha=0.3)
    ax.legend(fontsize=7)
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    save_figure(fig, path)


def plot_memory(rows: Sequence[dict], path: Path, title: str) -> None:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.0, 4.0))
    for i, series in enumerate(dict.fromkeys(r["series"] for r in rows)):
        sel = [r for r in rows if r["series"] == series]
        n = np.array([r["values"] for r in sel], dtype=float)
        color = f"C{i}"
        if all(r["peak"] for r in sel):
            ax.plot(n, [r["peak"] for r in sel], "-o", ms=3, color=color, label=f"{series}: peak")
        ax.plot(n, [r["saved"] for r in sel], ":s", ms=3, color=color, label=f"{series}: saved for backward")
    lo, hi = min(r["values"] for r in rows), max(r["values"] for r in rows)
    ax.plot([lo, hi], [100 * lo, 100 * hi], "k--", lw=0.8, label="100 bytes per value (slope 1)")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("values")
    ax.set_ylabel("bytes")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=6, loc="upper left")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    save_figure(fig, path)


# ----------------------------------------------------------------------------------------------------------
# Entry point.
# ----------------------------------------------------------------------------------------------------------
def main(argv: Sequence[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small cases, 3 repeats, memory at 1e3 and 1e4")
    add_common_arguments(parser)
    parser.add_argument("--memory-sizes", type=parse_size, nargs="+", help="numbers of values for the memory")
    parser.add_argument("--no-published", action="store_true", help="skip the published-style baseline")
    parser.add_argument("--no-memory", action="store_true", help="skip the memory measurement")
    parser.add_argument("--plot", type=Path, help="write the speed plot (PNG) here")
    parser.add_argument("--memory-plot", type=Path, help="write the memory plot (PNG) here")
    args = parser.parse_args(argv)
    cases = QUICK_CASES if args.quick else CASES
    repeats = args.repeats or (3 if args.quick else 7)
    memory_sizes = args.memory_sizes or (QUICK_MEMORY_SIZES if args.quick else MEMORY_SIZES)
    progress = not args.quiet

    threads = set_threads(args.threads)
    info = machine_info(args.device)
    if progress:
        print(f"loss benchmark on {args.device}: torch threads {threads} (scipy is single-threaded)", flush=True)
    rows = bench_speed(
        cases,
        repeats,
        args.min_time,
        not args.no_published,
        progress,
        args.device,
        args.max_other_load,
        args.attempts,
    )
    found = targets(rows, args.max_other_load)
    memory = [] if args.no_memory else bench_memory(memory_sizes, progress, args.device)
    summary = memory_summary(memory) if memory else []

    report = [
        "### Losses: forward + backward against baselines",
        "",
        *machine_markdown(info),
        f"Median of {repeats} interleaved repeats; float32; scipy is single-threaded. "
        + load_note(args.max_other_load, args.attempts),
        "",
        *speed_table(rows),
    ]
    if found:
        report += ["", "Targets:", "", *target_lines(found)]
    if memory:
        report += [
            "",
            "### Memory of one forward + backward (float32)",
            "",
            *memory_table(memory, summary),
        ]
    result = publish(
        report,
        args,
        {
            "machine": info,
            "threads": threads,
            "repeats": repeats,
            "rows": rows,
            "targets": found,
            "memory": memory,
            "memory_summary": summary,
        },
    )
    if args.plot:
        plot_speed(rows, args.plot, f"Losses on {where_measured(info, threads)}, float32; scipy on the host CPU")
    if args.memory_plot and memory:
        plot_memory(memory, args.memory_plot, f"Memory of one forward + backward on {args.device}, float32")
    return result


if __name__ == "__main__":
    main()
