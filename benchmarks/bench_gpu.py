"""GPU benchmark of ``betainc`` (value + three gradients, Triton backend) and of the GBaS loss; one prepared script.

Measures, on one CUDA device, with CUDA events (torch work) or synchronised wall-clock (CuPy, JAX), warm-up calls
first and the median of several timed calls:

* ``betainc`` value + the three gradients at 1e4, 1e5, 1e6 and 1e7 points, float32 and float64, in three regions
  of the parameters (``moderate``: a, b in [0.5, 5], x uniform; ``tiny``: a, b in [1e-3, 0.1]; ``large``: a, b in
  [1e3, 1e5] with x near the mean, where the continued fraction needs hundreds of steps):
  ``gbs_loss kernel`` (the one Triton launch that computes all four), ``gbs_loss fwd+bwd`` (``betainc`` forward
  and backward through autograd);
* the same points through CuPy's ``cupyx.scipy.special.betainc`` and JAX's ``jax.scipy.special.betainc``, forward
  (values) only, as neither has the parameter gradients; skipped with a note when not installed;
* the torch-operator fallback (``GBS_LOSS_BACKEND=torch``) at one small size, for comparison;
* the GBaS loss at 256 x 196 (batch x positions) with per-position Beta priors and with per-position Relaxed
  Bernoulli priors, forward + backward.

Targets (issue 11, H200): float64 value + three gradients at 1e6 points no slower than CuPy's forward alone; the
256 x 196 Beta GBaS step under 0.2 ms.

Every section runs in its own ``try``: an error is recorded in the report and the script goes on. A time budget
(``--budget``, default 240 s) skips what is left once spent. Output: ``bench_gpu.md`` (a markdown table) and
``bench_gpu.json`` in ``--out`` (default ``$OUT`` when set, else ``benchmarks/results``).

Usage::

    python benchmarks/bench_gpu.py                      # on the GPU, full sizes, under 5 minutes on an H200
    TRITON_INTERPRET=1 python benchmarks/bench_gpu.py --device cpu --quick   # CPU smoke run (tests)
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

__all__ = ["main"]

SIZES = (10_000, 100_000, 1_000_000, 10_000_000)
REGIONS = ("moderate", "tiny", "large")
DTYPES = {"float32": torch.float32, "float64": torch.float64}


# ----------------------------------------------------------------------------------------------------------
# Timing.
# ----------------------------------------------------------------------------------------------------------
class Timer:
    """Median time of a callable on ``device``: CUDA events around each call on CUDA, wall-clock elsewhere."""

    def __init__(self, device: torch.device, warmup: int, repeats: int, max_seconds: float) -> None:
        self.device = device
        self.warmup = warmup
        self.repeats = repeats
        self.max_seconds = max_seconds

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def torch_time(self, fn: Callable[[], object]) -> dict:
        """Median seconds per call of torch work (CUDA events on the current stream)."""
        for _ in range(self.warmup):
            fn()
        self.sync()
        times = []
        start_all = time.perf_counter()
        for _ in range(self.repeats):
            if self.device.type == "cuda":
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                fn()
                end.record()
                end.synchronize()
                times.append(start.elapsed_time(end) / 1e3)
            else:
                t0 = time.perf_counter()
                fn()
                times.append(time.perf_counter() - t0)
            if time.perf_counter() - start_all > self.max_seconds:
                break
        return {"median_s": statistics.median(times), "calls": len(times)}

    def wall_time(self, fn: Callable[[], object], block: Callable[[object], object]) -> dict:
        """Median seconds per call of foreign work: synchronise, call, ``block`` on the result, wall-clock."""
        for _ in range(self.warmup):
            block(fn())
        times = []
        start_all = time.perf_counter()
        for _ in range(self.repeats):
            self.sync()
            t0 = time.perf_counter()
            block(fn())
            times.append(time.perf_counter() - t0)
            if time.perf_counter() - start_all > self.max_seconds:
                break
        return {"median_s": statistics.median(times), "calls": len(times)}


# ----------------------------------------------------------------------------------------------------------
# Inputs.
# ----------------------------------------------------------------------------------------------------------
def make_points(region: str, n: int, device: torch.device, seed: int = 0) -> tuple[torch.Tensor, ...]:
    """float64 ``(a, b, x)`` of ``n`` points in ``region`` (see the module docstring)."""
    gen = torch.Generator(device="cpu").manual_seed(seed)

    def log_uniform(lo: float, hi: float) -> torch.Tensor:
        u = torch.rand(n, generator=gen, dtype=torch.float64)
        return torch.exp(math.log(lo) + u * (math.log(hi) - math.log(lo)))

    if region == "moderate":
        a = 0.5 + 4.5 * torch.rand(n, generator=gen, dtype=torch.float64)
        b = 0.5 + 4.5 * torch.rand(n, generator=gen, dtype=torch.float64)
        x = torch.rand(n, generator=gen, dtype=torch.float64)
    elif region == "tiny":
        a, b = log_uniform(1e-3, 0.1), log_uniform(1e-3, 0.1)
        x = torch.rand(n, generator=gen, dtype=torch.float64)
    elif region == "large":
        a, b = log_uniform(1e3, 1e5), log_uniform(1e3, 1e5)
        mean = a / (a + b)
        sd = torch.sqrt(a * b / ((a + b) ** 2 * (a + b + 1)))
        x = mean + sd * torch.randn(n, generator=gen, dtype=torch.float64)
    else:
        raise ValueError(f"unknown region {region!r}")
    x = x.clamp(1e-6, 1 - 1e-6)
    return tuple(t.to(device) for t in (a, b, x))


# ----------------------------------------------------------------------------------------------------------
# Optional competitors.
# ----------------------------------------------------------------------------------------------------------
def load_cupy():
    """``(cupy, betainc)`` or ``None`` with the reason recorded by the caller."""
    import cupy
    from cupyx.scipy import special as cupy_special

    return cupy, cupy_special.betainc


def load_jax():
    """``(jax, jitted betainc)`` with float64 enabled."""
    # Without this JAX reserves 75% of the GPU's memory at its first use, and torch runs out at 1e7 points.
    os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
    import jax

    jax.config.update("jax_enable_x64", True)
    from jax.scipy import special as jax_special

    return jax, jax.jit(jax_special.betainc)


# ----------------------------------------------------------------------------------------------------------
# Sections.
# ----------------------------------------------------------------------------------------------------------
class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.device = torch.device(args.device)
        repeats = 1 if args.quick else 7
        warmup = 1 if args.quick else 2
        self.timer = Timer(self.device, warmup, repeats, max_seconds=1.0 if not args.quick else 30.0)
        self.rows: list[dict] = []
        self.notes: list[str] = []
        self.started = time.perf_counter()

    def over_budget(self) -> bool:
        return time.perf_counter() - self.started > self.args.budget

    def record(self, section: str, impl: str, dtype: str, region: str, n: int, fn: Callable[[], dict]) -> None:
        """Run one measurement; record its result or its error, and go on."""
        row = {"section": section, "impl": impl, "dtype": dtype, "region": region, "n": n}
        if self.over_budget():
            row["error"] = "skipped: time budget spent"
        else:
            try:
                row.update(fn())
            except Exception as exc:  # noqa: BLE001 - every failure is recorded, the script goes on
                row["error"] = f"{type(exc).__name__}: {exc}"[:500]
                if self.args.verbose:
                    traceback.print_exc()
            finally:
                if self.device.type == "cuda":
                    torch.cuda.empty_cache()
        if "median_s" in row and n:
            row["points_per_s"] = n / row["median_s"]
        self.rows.append(row)
        status = row.get("error") or f"{row['median_s'] * 1e3:.3f} ms"
        print(f"[{time.perf_counter() - self.started:6.1f}s] {section} {impl} {dtype} {region} n={n}: {status}")

    # -- betainc -------------------------------------------------------------------------------------------
    def betainc_section(self) -> None:
        from gbs_loss import betainc
        from gbs_loss.special import backends
        from gbs_loss.special.backends import triton as triton_backend

        sizes = self.args.sizes
        regions = ("moderate",) if self.args.quick else REGIONS
        dtypes = ("float64",) if self.args.quick else ("float32", "float64")
        try:
            cupy, cupy_betainc = load_cupy()
        except Exception as exc:  # noqa: BLE001
            cupy = None
            self.notes.append(f"CuPy not measured ({type(exc).__name__}: {exc})")
        try:
            jax, jax_betainc = load_jax()
            jax_device = jax.devices("gpu")[0] if self.device.type == "cuda" else jax.devices("cpu")[0]
        except Exception as exc:  # noqa: BLE001
            jax = None
            self.notes.append(f"JAX not measured ({type(exc).__name__}: {exc})")

        for n in sizes:
            for region in regions:
                a64, b64, x64 = make_points(region, n, self.device)
                for dname in dtypes:
                    dtype = DTYPES[dname]
                    a, b, x = (t.to(dtype) for t in (a64, b64, x64))

                    def kernel(a=a, b=b, x=x):
                        # float32 and float64 are read and written by the kernel itself (computed in float64).
                        return triton_backend.betainc_with_grads(a, b, x)

                    def fwd_bwd(a=a, b=b, x=x):
                        ar, br, xr = (t.detach().requires_grad_() for t in (a, b, x))
                        with backends.use("triton"):
                            out = betainc(ar, br, xr)
                            out.backward(torch.ones_like(out))
                        return out

                    def row(label, measure, dname=dname, region=region, n=n):
                        self.record("betainc", label, dname, region, n, measure)

                    row("gbs_loss kernel (value + 3 grads)", lambda kernel=kernel: self.timer.torch_time(kernel))
                    row("gbs_loss fwd+bwd (value + 3 grads)", lambda fwd_bwd=fwd_bwd: self.timer.torch_time(fwd_bwd))
                    # Forward-only baselines on the same points: (label, arrays, function, synchronisation).
                    baselines = []
                    if cupy is not None and self.device.type == "cuda":
                        arrays = tuple(cupy.from_dlpack(t.detach()) for t in (a, b, x))
                        baselines.append(
                            ("cupy", arrays, cupy_betainc, lambda r: cupy.cuda.get_current_stream().synchronize())
                        )
                    if jax is not None:
                        arrays = tuple(jax.device_put(t.detach().cpu().numpy(), jax_device) for t in (a, b, x))
                        baselines.append(("jax", arrays, jax_betainc, lambda r: r.block_until_ready()))
                    for name, (ba, bb, bx), fn, sync in baselines:
                        row(
                            f"{name} forward (value only)",
                            lambda ba=ba, bb=bb, bx=bx, fn=fn, sync=sync: self.timer.wall_time(
                                lambda: fn(ba, bb, bx), sync
                            ),
                        )
                del a64, b64, x64

        # The torch-operator fallback at one small size.
        n = self.args.fallback_size
        a, b, x = make_points("moderate", n, self.device)

        def fallback(a=a, b=b, x=x):
            ar, br, xr = (t.detach().requires_grad_() for t in (a, b, x))
            with backends.use("torch"):
                out = betainc(ar, br, xr)
                out.backward(torch.ones_like(out))
            return out

        self.record(
            "betainc",
            "gbs_loss fwd+bwd, torch fallback",
            "float64",
            "moderate",
            n,
            lambda: self.timer.torch_time(fallback),
        )

    # -- GBaS ------------------------------------------------------------------------------------------------
    def gbas_section(self) -> None:
        from gbs_loss import priors
        from gbs_loss.functional import batch_shaping_loss
        from gbs_loss.special import backends

        batch, positions = (8, 4) if self.args.quick else (256, 196)
        gen = torch.Generator(device="cpu").manual_seed(1)
        x0 = torch.rand(batch, positions, generator=gen).clamp(0.01, 0.99).to(self.device)
        a0 = (0.5 + torch.rand(positions, generator=gen)).to(self.device)
        b0 = (0.5 + torch.rand(positions, generator=gen)).to(self.device)
        m0 = (0.2 + 0.6 * torch.rand(positions, generator=gen)).to(self.device)
        t0 = (0.3 + torch.rand(positions, generator=gen)).to(self.device)
        x = x0.clone().requires_grad_()
        a, b, mean, temp = (t.clone().requires_grad_() for t in (a0, b0, m0, t0))

        def beta_step():
            with backends.use("triton"):
                loss = batch_shaping_loss(x, priors.Beta(a, b, validate_args=False), validate_args=False)
                loss.backward()
            return loss

        def bernoulli_step():
            prior = priors.RelaxedBernoulli(mean, temperature=temp, validate_args=False)
            loss = batch_shaping_loss(x, prior, validate_args=False)
            loss.backward()
            return loss

        n = batch * positions
        shape = f"{batch}x{positions}"
        self.record("gbas", "Beta priors, fwd+bwd", "float32", shape, n, lambda: self.timer.torch_time(beta_step))
        self.record(
            "gbas",
            "Relaxed Bernoulli priors, fwd+bwd",
            "float32",
            shape,
            n,
            lambda: self.timer.torch_time(bernoulli_step),
        )

    # -- report ----------------------------------------------------------------------------------------------
    def machine(self) -> dict:
        info = {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "device": str(self.device),
            "triton_interpret": os.environ.get("TRITON_INTERPRET", ""),
        }
        if self.device.type == "cuda":
            info["gpu"] = torch.cuda.get_device_name(self.device)
        for module in ("triton", "cupy", "jax"):
            try:
                info[module] = __import__(module).__version__
            except Exception:  # noqa: BLE001
                info[module] = None
        return info

    def verdicts(self) -> list[str]:
        """The two targets of the issue, where both sides were measured."""
        lines = []

        def find(section, impl_prefix, dtype, region, n):
            for row in self.rows:
                if (
                    row["section"] == section
                    and row["impl"].startswith(impl_prefix)
                    and row["dtype"] == dtype
                    and row["region"] == region
                    and row["n"] == n
                    and "median_s" in row
                ):
                    return row["median_s"]
            return None

        for region in REGIONS:
            ours = find("betainc", "gbs_loss kernel", "float64", region, 1_000_000)
            cupy = find("betainc", "cupy", "float64", region, 1_000_000)
            if ours is not None and cupy is not None:
                verdict = "met" if ours <= cupy else "not met"
                lines.append(
                    f"- float64 value + 3 grads at 1e6 points ({region}): {ours * 1e3:.3f} ms against CuPy's forward "
                    f"{cupy * 1e3:.3f} ms (ratio {ours / cupy:.2f}; target <= 1): {verdict}"
                )
        gbas = find("gbas", "Beta", "float32", "256x196", 256 * 196)
        if gbas is not None:
            verdict = "met" if gbas < 2e-4 else "not met"
            lines.append(f"- GBaS 256x196 Beta step: {gbas * 1e3:.3f} ms (target < 0.2 ms): {verdict}")
        return lines

    def publish(self) -> None:
        out = Path(self.args.out)
        out.mkdir(parents=True, exist_ok=True)
        machine = self.machine()
        lines = [
            "# GPU benchmark (benchmarks/bench_gpu.py)",
            "",
            "Machine: " + ", ".join(f"{k} {v}" for k, v in machine.items() if v),
            "",
            "Times are medians per call after warm-up (CUDA events for torch work; synchronised wall-clock for CuPy "
            "and JAX). `kernel`: the one Triton launch computing the value and three gradients in float64; "
            "`fwd+bwd`: `betainc` forward and backward through autograd in the given dtype.",
            "",
            "| section | implementation | dtype | region | points | median ms | points/s |",
            "|---|---|---|---|---:|---:|---:|",
        ]
        for row in self.rows:
            if "median_s" in row:
                ms = f"{row['median_s'] * 1e3:.3f}"
                rate = f"{row['points_per_s']:.3g}"
            else:
                ms, rate = row.get("error", "")[:80], ""
            lines.append(
                f"| {row['section']} | {row['impl']} | {row['dtype']} | {row['region']} | {row['n']:,} "
                f"| {ms} | {rate} |"
            )
        verdicts = self.verdicts()
        if verdicts:
            lines += ["", "Targets:", *verdicts]
        if self.notes:
            lines += ["", "Notes:", *[f"- {note}" for note in self.notes]]
        lines += ["", f"Total time: {time.perf_counter() - self.started:.1f} s"]
        text = "\n".join(lines) + "\n"
        (out / "bench_gpu.md").write_text(text)
        result = {"machine": machine, "rows": self.rows, "notes": self.notes, "targets": verdicts}
        (out / "bench_gpu.json").write_text(json.dumps(result, indent=2, default=str))
        print(text)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda", help="cuda (default) or cpu (with TRITON_INTERPRET=1)")
    parser.add_argument("--quick", action="store_true", help="tiny sizes and one timed call: a smoke run")
    parser.add_argument("--out", default=os.environ.get("OUT") or str(HERE / "results"), help="output folder")
    parser.add_argument("--budget", type=float, default=240.0, help="seconds after which what is left is skipped")
    parser.add_argument("--sizes", type=int, nargs="*", default=None, help="betainc sizes (default 1e4 .. 1e7)")
    parser.add_argument("--fallback-size", type=int, default=None, help="size of the torch-fallback measurement")
    parser.add_argument("--verbose", action="store_true", help="print the traceback of every error")
    args = parser.parse_args(argv)
    if args.sizes is None:
        args.sizes = [48] if args.quick else list(SIZES)
    if args.fallback_size is None:
        args.fallback_size = 48 if args.quick else 10_000
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("no CUDA device: use --device cpu (with TRITON_INTERPRET=1) for a smoke run", file=sys.stderr)
        return 2
    bench = Bench(args)
    for section in (bench.gbas_section, bench.betainc_section):
        try:
            section()
        except Exception as exc:  # noqa: BLE001 - a failing section is recorded, the others still run
            bench.rows.append(
                {"section": section.__name__, "impl": "", "dtype": "", "region": "", "n": 0, "error": repr(exc)[:500]}
            )
            traceback.print_exc()
    bench.publish()
    return 0


if __name__ == "__main__":
    sys.exit(main())
