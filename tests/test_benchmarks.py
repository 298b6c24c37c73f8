"""Smoke tests of the benchmark scripts (tiny sizes, one repeat) and of the published-style baseline.

They check the structure of the output, not the timings: benchmarks are not timed tests.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("scipy")
pytest.importorskip("matplotlib")

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))

import _common  # noqa: E402
import bench_betainc  # noqa: E402
import bench_loss  # noqa: E402
import published_baseline  # noqa: E402

from gbs_loss.functional import batch_shaping_loss  # noqa: E402
from gbs_loss.priors import Beta  # noqa: E402

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
FAST = ["--repeats", "1", "--min-time", "0", "--threads", "1", "--attempts", "1", "--quiet"]


def _table_rows(lines: list[str], header_start: str) -> list[list[str]]:
    """Cells of the body rows of the markdown table whose header starts with ``header_start``."""
    start = next(i for i, line in enumerate(lines) if line.startswith(header_start))
    rows = []
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        rows.append([c.strip() for c in line.strip("|").split("|")])
    return rows


def test_bench_betainc_main(tmp_path: Path) -> None:
    md, png, js = tmp_path / "b.md", tmp_path / "b.png", tmp_path / "b.json"
    out = bench_betainc.main(
        ["--sizes", "64", "196", *FAST, "--markdown", str(md), "--plot", str(png), "--json", str(js)]
    )
    rows = out["rows"]
    assert len(rows) == len(bench_betainc.DTYPES) * len(bench_betainc.REGIONS) * 2
    assert {(r["dtype"], r["region"], r["n"]) for r in rows} == {
        (d, reg, n) for d in bench_betainc.DTYPES for reg in bench_betainc.REGIONS for n in (64, 196)
    }
    for r in rows:
        assert r["scipy"] > 0 and r["ours_fwd"] > 0 and r["ours_fwd_bwd"] > 0 and r["floor_fwd_bwd"] > 0
        assert r["ratio"] == pytest.approx(r["ours_fwd_bwd"] / r["scipy"])
        assert r["floor_ratio"] == pytest.approx(r["floor_fwd_bwd"] / r["scipy"])
        # scipy's float64 is its own reference; its float32 loop is single precision (errors ~1e-5 and above).
        assert r["scipy_error"] == 0.0 if r["dtype"] == "float64" else 1e-8 < r["scipy_error"] < 1e-2
    assert out["threads"] == 1
    text = md.read_text()
    table = _table_rows(text.splitlines(), "| dtype | region |")
    assert len(table) == len(rows)
    # scipy, ours fwd, ours fwd+bwd, ratio | target | floor ratio, scipy's error | other load
    assert all(float(cell) > 0 for row in table for cell in row[3:7] + row[8:9])
    assert {row[7] for row in table} == {"-", "<= 3"}  # 196 points: the target of issue 11
    assert all(row[-1] == "-" or row[-1].endswith("%") for row in table)
    # The target summary: one line for 196 points, with the worst ratio over the six cases.
    (target,) = out["targets"]
    assert target["n"] == 196 and target["cases"] == 6
    assert target["worst_ratio"] == pytest.approx(max(r["ratio"] for r in rows if r["n"] == 196))
    assert "196 points: worst fwd+bwd / scipy fwd" in text
    assert png.read_bytes()[:8] == PNG_SIGNATURE
    assert len(json.loads(js.read_text())["rows"]) == len(rows)


def test_bench_betainc_target_verdicts() -> None:
    rows = [
        {"dtype": "float64", "region": "tiny", "n": 1000, "ratio": 1.2, "other_load": 0.0},
        {"dtype": "float64", "region": "large", "n": 1000, "ratio": 1.7, "other_load": 0.0},
        {"dtype": "float64", "region": "large", "n": 100000, "ratio": 0.9, "other_load": 0.5},
    ]
    found = {t["n"]: t for t in bench_betainc.targets(rows)}
    assert set(found) == {1000, 100000}
    assert found[1000]["worst_ratio"] == 1.7 and found[1000]["verdict"] == "NOT met" and found[1000]["met_cases"] == 1
    assert found[100000]["verdict"].startswith("inconclusive")
    lines = bench_betainc.target_lines(list(found.values()))
    assert "**1.70** (float64 large)" in lines[0]


def test_common_helpers() -> None:
    assert _common.format_size(100_000) == "1e5" and _common.format_size(196) == "196"
    assert _common.ratio_verdict(0.9, 1.0, None) == "met"
    assert _common.ratio_verdict(1.1, 1.0, 0.0) == "NOT met"
    assert _common.ratio_verdict(0.5, 1.0, 0.9).startswith("inconclusive")
    calls = []
    assert _common.median_time(lambda: calls.append(1), repeats=3) >= 0 and len(calls) == 4
    info = _common.machine_info()
    assert info["cores"] >= 1 and "backend" in info
    assert "Machine:" in _common.machine_markdown(info)[0]


@pytest.mark.parametrize("region", bench_betainc.REGIONS)
def test_bench_betainc_inputs_in_domain(region: str) -> None:
    a, b, x = bench_betainc.make_inputs(region, 1000)
    assert (a > 0).all() and (b > 0).all() and (x > 0).all() and (x < 1).all()
    if region == "tiny":
        assert (torch.minimum(torch.from_numpy(a), torch.from_numpy(b)) < 0.05).all()
    if region == "large":
        assert (a >= 1e3).all() and (b >= 1e3).all()


def test_bench_loss_main(tmp_path: Path) -> None:
    md, png, mem, js = (tmp_path / name for name in ("l.md", "l.png", "m.png", "l.json"))
    args = ["--quick", *FAST, "--memory-sizes", "1000", "--markdown", str(md), "--plot", str(png)]
    out = bench_loss.main([*args, "--memory-plot", str(mem), "--json", str(js)])
    rows = out["rows"]
    assert [(r["case"], r["prior"]) for r in rows] == [
        (case, prior) for case in bench_loss.QUICK_CASES for prior in bench_loss.PRIORS
    ]
    for r in rows:
        for key in ("ours_fwd", "ours_fwd_bwd", "scipy", "sort_sigmoid"):
            assert r[key] > 0
        assert (r["published"] is not None) == (r["prior"] == "beta")
    table = _table_rows(md.read_text().splitlines(), "| case | prior |")
    assert len(table) == len(rows)
    assert all(r["other_load"] is None or r["other_load"] >= 0 for r in rows)
    memory = out["memory"]
    assert len(memory) == len(bench_loss.MEMORY_SERIES)
    assert all(r["saved"] > 0 and (r["peak"] is None or r["peak"] > 0) for r in memory)
    assert [s["series"] for s in out["memory_summary"]] == list(bench_loss.MEMORY_SERIES)
    assert png.read_bytes()[:8] == PNG_SIGNATURE and mem.read_bytes()[:8] == PNG_SIGNATURE
    assert len(json.loads(js.read_text())["memory"]) == len(memory)


def test_bench_loss_targets_are_reported() -> None:
    rows = [
        {"case": bench_loss.TARGET_CASE, "prior": "beta", "ours_fwd_bwd": 0.8, "scipy": 1.0, "sort_sigmoid": 0.1},
        {
            "case": bench_loss.TARGET_CASE,
            "prior": "relaxed_bernoulli",
            "ours_fwd_bwd": 0.3,
            "scipy": 1.0,
            "sort_sigmoid": 0.1,
        },
    ]
    found = {t["prior"]: t for t in bench_loss.targets(rows)}
    assert found["beta"]["ratio"] == pytest.approx(0.8) and found["beta"]["met"]
    assert found["relaxed_bernoulli"]["ratio"] == pytest.approx(3.0) and not found["relaxed_bernoulli"]["met"]
    lines = bench_loss.target_lines(list(found.values()))
    assert len(lines) == 2 and "NOT met" in lines[1]
    rows[1]["other_load"] = 0.5
    busy = {t["prior"]: t for t in bench_loss.targets(rows, max_other_load=0.1)}
    assert busy["relaxed_bernoulli"]["met"] is None and busy["beta"]["met"]
    assert "inconclusive" in bench_loss.target_lines(list(busy.values()))[1]


def test_central_weights_differentiate_polynomials_exactly() -> None:
    w = published_baseline.central_weights(11)
    assert len(w) == 5
    h, t = 0.1, 0.3
    for degree in range(11):
        exact = degree * t ** (degree - 1) if degree else 0.0
        approx = sum(wk * ((t + k * h) ** degree - (t - k * h) ** degree) for k, wk in enumerate(w, 1)) / h
        assert approx == pytest.approx(exact, abs=1e-9)


def test_published_baseline_matches_the_library_where_it_is_accurate() -> None:
    gen = torch.Generator().manual_seed(0)
    x = torch.sigmoid(torch.randn(64, 5, generator=gen)).requires_grad_(True)
    a = (0.8 + 3 * torch.rand(5, generator=gen)).requires_grad_(True)
    b = (1.2 + 3 * torch.rand(5, generator=gen)).requires_grad_(True)
    ours = batch_shaping_loss(x, Beta(a, b))
    theirs = published_baseline.published_gbas_loss(x, a, b)
    assert theirs.item() == pytest.approx(ours.item(), rel=1e-5)
    g_ours = torch.autograd.grad(ours, (a, b))
    g_theirs = torch.autograd.grad(theirs, (a, b))
    for u, v in zip(g_theirs, g_ours, strict=True):
        torch.testing.assert_close(u, v, rtol=1e-3, atol=1e-6)


def test_measure_keeps_the_quietest_attempt(monkeypatch) -> None:
    loads = iter([0.5, 0.3, 0.4])
    monkeypatch.setattr(_common, "interleaved_medians", lambda fns, r, m: ({"f": next(loads)}, None))
    times, other = _common.measure({"f": lambda: None}, 1, 0.0, attempts=3)
    assert other is None and times == {"f": 0.5}  # no load reading: the first attempt is kept

    loads = iter([0.5, 0.3, 0.4])
    monkeypatch.setattr(_common, "interleaved_medians", lambda fns, r, m: ({"f": 1.0}, next(loads)))
    _, other = _common.measure({"f": lambda: None}, 1, 0.0, max_other_load=0.1, attempts=3)
    assert other == 0.3


def test_interleaved_medians_times_every_function() -> None:
    calls = {"a": 0, "b": 0}

    def make(name):
        def fn() -> None:
            calls[name] += 1

        return fn

    times, other = _common.interleaved_medians({"a": make("a"), "b": make("b")}, repeats=3, min_time=0.0)
    assert set(times) == {"a", "b"} and all(t > 0 for t in times.values())
    assert calls == {"a": 5, "b": 5}  # warm-up, calibration, three repeats
    assert other is None or 0 <= other <= 1
