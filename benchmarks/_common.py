"""Helpers shared by the benchmark scripts: threads, timing, load of other processes, machine, options, reports.

Every benchmark in this folder compares functions measured **in the same run**, interleaved, and reports ratios
(absolute times move with the machine's load). A script typically does::

    import _common as bc  # benchmarks/ is on sys.path when a script in it runs

    parser = argparse.ArgumentParser()
    bc.add_common_arguments(parser)          # --repeats --min-time --max-other-load --attempts --threads
    args = parser.parse_args()                # --device --markdown --json --quiet
    threads = bc.set_threads(args.threads)
    info = bc.machine_info(args.device)
    times, other = bc.measure({"ours": ours, "scipy": theirs}, repeats=7)   # median seconds per call
    report = [*bc.machine_markdown(info), "", "| ... |"]
    bc.publish(report, args, {"machine": info, "rows": rows})              # prints, writes --markdown/--json

API (all documented below):

* threads and devices: :func:`set_threads`, :func:`synchronize`;
* timing: :func:`interleaved_medians` (warm-up, calibrated inner loops, rotating order, medians, and the share of
  the CPU used by other processes, from ``/proc/stat``), :func:`measure` (the same, retaken while other processes
  load the machine), :func:`median_time` (one function, a fixed number of calls);
* machine: :func:`machine_info`, :func:`machine_markdown`, :func:`where_measured`, :func:`cpu_model`,
  :func:`gpu_model`;
* options and output: :func:`add_common_arguments`, :func:`parse_size`, :func:`publish`, :func:`write_output`,
  :func:`load_note`, :func:`format_load`, :func:`format_size`, :func:`ratio_verdict`;
* plots: :func:`pyplot` (matplotlib with the Agg backend, imported on demand), :func:`save_figure`.
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
import torch

__all__ = [
    "add_common_arguments",
    "cpu_model",
    "format_load",
    "format_size",
    "gpu_model",
    "interleaved_medians",
    "load_note",
    "machine_info",
    "machine_markdown",
    "measure",
    "median_time",
    "parse_size",
    "publish",
    "pyplot",
    "ratio_verdict",
    "save_figure",
    "set_threads",
    "synchronize",
    "where_measured",
    "write_output",
]


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


def _version(module: str) -> str | None:
    """``module.__version__``, or None when it does not import."""
    try:
        return __import__(module).__version__
    except Exception:  # noqa: BLE001 - a broken optional package must not stop a benchmark
        return None


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
        "scipy": _version("scipy"),
        "gbs_loss": _version("gbs_loss"),
        "backend": os.environ.get("GBS_LOSS_BACKEND", "auto"),
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
        f"NumPy {info['numpy']}, SciPy {info['scipy']}, gbs-loss {info['gbs_loss']}, "
        f"GBS_LOSS_BACKEND={info.get('backend', 'auto')}.",
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


def median_time(fn: Callable[[], object], repeats: int, warmup: int = 1) -> float:
    """Median seconds of ``repeats`` calls of ``fn`` after ``warmup`` calls (for slow functions, no inner loop)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(max(1, repeats)):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def ratio_verdict(ratio: float, limit: float, load: float | None, max_other_load: float = 0.1) -> str:
    """``met``, ``NOT met``, or ``inconclusive`` when other processes loaded the machine beyond ``max_other_load``."""
    if load is not None and load > max_other_load:
        return f"inconclusive, other load {format_load(load)}: rerun on a quiet machine"
    return "met" if ratio <= limit else "NOT met"
