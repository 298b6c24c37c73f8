"""Accuracy and speed of ``gbs_loss.betainc`` against a 50-digit mpmath oracle and scipy.

Accuracy: for every region of ``tests/data/betainc_oracle.npz`` (made by
``scripts/make_betainc_oracle.py``), the max, 99th percentile and median relative error of the value and
of the three gradients, in float64 and float32, and, for comparison, of ``scipy.special.betainc`` (values
only; scipy has no gradients with respect to a and b) with float64 and float32 inputs. Relative errors are
``|got - ref| / max(|ref|, floor)`` with ``floor`` = ``tiny / 1e-12`` in float64 and ``tiny / 1e-5`` in
float32 (``tiny``: the smallest normal number of the dtype), as in the tests: below the floor only an absolute
error of about ``tiny`` is asked for; NaN or inf count as infinite.

Speed: ``betainc`` value and the three gradients (forward + backward) against scipy's forward alone, on the
same 1e5 points, median of repeats after a warm-up.

Usage: ``python benchmarks/betainc_accuracy.py [--markdown PATH] [--points N] [--repeats R]``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
from scipy import special

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import machine_info, machine_markdown, median_time, write_output  # noqa: E402

from gbs_loss import betainc  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
ORACLE = ROOT / "tests" / "data" / "betainc_oracle.npz"
QUANTITIES = (("value", "value"), ("d_a", "d/da"), ("d_b", "d/db"), ("d_x", "d/dx"))
REQUIRED = {"float64": {"value": 1e-12, "grad": 1e-11}, "float32": {"value": 1e-5, "grad": 1e-4}}


def rel_err(got: np.ndarray, ref: np.ndarray, floor: float) -> np.ndarray:
    with np.errstate(invalid="ignore", over="ignore"):
        err = np.abs(got.astype(np.float64) - ref) / np.maximum(np.abs(ref), floor)
    return np.where(np.isfinite(got) & np.isfinite(err), err, np.inf)


def evaluate(a: np.ndarray, b: np.ndarray, x: np.ndarray, dtype: torch.dtype) -> dict[str, np.ndarray]:
    ta, tb, tx = (torch.tensor(v, dtype=dtype, requires_grad=True) for v in (a, b, x))
    out = betainc(ta, tb, tx)
    out.backward(torch.ones_like(out))
    return {
        "value": out.detach().double().numpy(),
        "d_a": ta.grad.double().numpy(),
        "d_b": tb.grad.double().numpy(),
        "d_x": tx.grad.double().numpy(),
    }


def stats(err: np.ndarray) -> tuple[float, float, float]:
    if err.size == 0:
        return (float("nan"),) * 3
    # nearest-rank percentiles: defined even when some errors are infinite
    return (
        float(err.max()),
        float(np.percentile(err, 99, method="nearest")),
        float(np.percentile(err, 50, method="nearest")),
    )


def fmt(v: float) -> str:
    if np.isnan(v):
        return "-"
    if np.isinf(v):
        return "inf"
    return f"{v:.1e}" if v > 0 else "0"


def accuracy_tables() -> tuple[list[str], list[str]]:
    """(markdown lines, lines of failures against the required accuracy)."""
    o = np.load(ORACLE)
    names = [str(r) for r in o["region_names"]]
    a, b, x, f32 = o["a"], o["b"], o["x"], o["f32"]
    ref = {q: o[q] for q, _ in QUANTITIES}
    floor64 = np.finfo(np.float64).tiny / REQUIRED["float64"]["value"]
    floor32 = np.finfo(np.float32).tiny / REQUIRED["float32"]["value"]
    ours64 = evaluate(a, b, x, torch.float64)
    ours32 = evaluate(a[f32], b[f32], x[f32], torch.float32)
    with np.errstate(all="ignore"):
        scipy64 = special.betainc(a, b, x)
        scipy32 = special.betainc(a[f32].astype(np.float32), b[f32].astype(np.float32), x[f32].astype(np.float32))
    err64 = {q: rel_err(ours64[q], ref[q], floor64) for q, _ in QUANTITIES}
    err32 = {q: rel_err(ours32[q], ref[q][f32], floor32) for q, _ in QUANTITIES}
    err64["scipy"] = rel_err(scipy64, ref["value"], floor64)
    err32["scipy"] = rel_err(scipy32, ref["value"][f32], floor32)

    lines = [
        f"Oracle: mpmath {o['mpmath_version']} at {int(o['dps'])} digits, {len(a)} points "
        f"({int(f32.sum())} of them exactly representable in float32), "
        f"independent quadrature cross-check within {float(o['cross_check']):.0e}.",
        "",
    ]
    failures = []
    region_codes = o["region"]
    groups = [(name, region_codes == i) for i, name in enumerate(names)] + [("all regions", np.ones(len(a), bool))]
    for name, sel in groups:
        sel32 = sel[f32]
        under64 = int((np.abs(ref["value"][sel]) < floor64).sum())
        under32 = int((np.abs(ref["value"][f32][sel32]) < floor32).sum())
        lines += [
            f"#### {name} ({int(sel.sum())} points, {int(sel32.sum())} in float32; the value is below the floor "
            f"at {under64} in float64, {under32} in float32)",
            "",
            "| quantity | float64 max | float64 p99 | float64 median | float32 max | float32 p99 | float32 median |",
            "|---|---|---|---|---|---|---|",
        ]
        rows = [(q, f"`betainc` {label}") for q, label in QUANTITIES] + [("scipy", "scipy value")]
        for q, label in rows:
            s64, s32 = stats(err64[q][sel]), stats(err32[q][sel32])
            lines.append(f"| {label} | " + " | ".join(fmt(v) for v in (*s64, *s32)) + " |")
            if q != "scipy" and name != "all regions":
                kind = "value" if q == "value" else "grad"
                for dt, s in (("float64", s64), ("float32", s32)):
                    if not s[0] <= REQUIRED[dt][kind]:
                        failures.append(f"{name} {dt} {label}: max {fmt(s[0])} > {REQUIRED[dt][kind]:.0e}")
        lines.append("")
    return lines, failures


def timing(n: int, repeats: int) -> list[str]:
    rng = np.random.default_rng(0)
    setups = {
        "moderate: a, b log-uniform in [0.1, 10]": (0.1, 10.0),
        "wide: a, b log-uniform in [1e-3, 1e5]": (1e-3, 1e5),
    }
    lines = [
        f"Time for {n:.0e} points (x at uniformly random quantiles of Beta(a, b)); median of {repeats} runs "
        "after a warm-up. `betainc` computes the value and the three gradients (forward + backward); "
        "scipy the value only.",
        "",
        "| inputs | dtype | `betainc` value + 3 gradients | scipy value | ratio |",
        "|---|---|---|---|---|",
    ]
    for label, (lo, hi) in setups.items():
        a = np.exp(rng.uniform(np.log(lo), np.log(hi), n))
        b = np.exp(rng.uniform(np.log(lo), np.log(hi), n))
        x = special.betaincinv(a, b, rng.uniform(0.0, 1.0, n))
        x = np.clip(x, np.finfo(np.float32).tiny, 1.0 - 2.0**-24)
        for dtype, np_dtype in ((torch.float64, np.float64), (torch.float32, np.float32)):
            args = tuple(v.astype(np_dtype) for v in (a, b, x))

            def ours(args=args, dtype=dtype):
                ta, tb, tx = (torch.tensor(v, dtype=dtype, requires_grad=True) for v in args)
                betainc(ta, tb, tx).sum().backward()

            def theirs(args=args):
                special.betainc(*args)

            t_ours, t_scipy = median_time(ours, repeats), median_time(theirs, repeats)  # warm-up, then medians
            name = str(dtype).replace("torch.", "")
            lines.append(f"| {label} | {name} | {t_ours:.3f} s | {t_scipy:.3f} s | {t_ours / t_scipy:.0f}x |")
    lines.append("")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description="Accuracy and speed of gbs_loss.betainc.")
    parser.add_argument("--markdown", type=Path, help="also write the report to this markdown file")
    parser.add_argument("--points", type=int, default=100_000, help="points for the timing (default 1e5)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs after the warm-up (default 3)")
    parser.add_argument("--no-timing", action="store_true", help="accuracy tables only")
    args = parser.parse_args()

    lines = ["## Accuracy of `betainc` against mpmath", ""]
    lines.append(
        "Relative error `|got - ref| / max(|ref|, floor)`, floor = 2.2e-296 in float64 and 1.2e-33 in "
        "float32 (the smallest normal number divided by the value tolerance). "
        "Required: float64 value 1e-12, gradients 1e-11; float32 value 1e-5, gradients 1e-4."
    )
    lines.append("")
    table, failures = accuracy_tables()
    lines += table
    if failures:
        lines += ["Above the required accuracy:", ""] + [f"- {f}" for f in failures] + [""]
    else:
        lines += ["Every region is within the required accuracy.", ""]
    if not args.no_timing:
        lines += ["## Speed", "", *machine_markdown(machine_info()), ""]
        lines += timing(args.points, args.repeats)
    text = "\n".join(lines)
    print(text)
    write_output(args.markdown, text + "\n")


if __name__ == "__main__":
    main()
