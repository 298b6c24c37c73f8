"""Smoke tests of the demonstration (``python -m gbs_loss demo``) with few steps."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

pytest.importorskip("matplotlib")

from gbs_loss import demo  # noqa: E402
from gbs_loss.__main__ import main as cli_main  # noqa: E402

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
SMALL = ["--steps", "4", "--positions", "6", "--samples", "40", "--no-progress"]


def test_main_writes_png_and_prints_its_path(tmp_path: Path, capsys) -> None:
    out = tmp_path / "figs" / "demo.png"
    assert demo.main([*SMALL, "--out", str(out)]) == 0
    assert out.read_bytes()[:8] == PNG_SIGNATURE
    printed = capsys.readouterr().out
    assert f"saved the figure to {out.resolve()}" in printed
    assert "trained 4 steps" in printed


def test_cli_dispatches_to_the_demo(tmp_path: Path) -> None:
    out = tmp_path / "cli.png"
    assert cli_main(["demo", *SMALL, "--out", str(out)]) == 0
    assert out.read_bytes()[:8] == PNG_SIGNATURE


def test_docs_copy(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert demo.main([*SMALL, "--out", "a.png", "--docs"]) == 0
    assert (tmp_path / "docs" / "img" / "gbas_demo.png").read_bytes()[:8] == PNG_SIGNATURE


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--steps", "0"], "must be a positive integer, got 0"),
        (["--positions", "1"], "--positions and --samples must be at least 2"),
        (["--lr", "-1"], "--lr must be a positive number, got -1.0"),
    ],
)
def test_bad_options_exit_with_usage_error(argv: list[str], message: str, capsys) -> None:
    with pytest.raises(SystemExit) as info:
        demo.main(argv)
    assert info.value.code == 2
    assert message in capsys.readouterr().err


def test_train_moves_samples_and_priors() -> None:
    # Stated factor: 40 steps of the demo's training reduce the total loss at least 10-fold.
    result = demo.train(steps=40, positions=8, samples=100, progress=False)
    history = result["history"]
    assert len(history["total"]) == 41
    assert history["total"][-1] < history["total"][0] / 10
    assert result["x"].shape == result["x0"].shape == (100, 8)
    assert not torch.equal(result["x"], result["x0"])  # the samples moved
    assert not torch.allclose(result["means"], torch.full((8,), 0.5))  # and so did the priors
