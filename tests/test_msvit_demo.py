"""``python -m gbs_loss msvit-demo``: a fast smoke run, the label-free signal and the photographs.

The demo needs the optional ``demo`` extra (scikit-image, matplotlib); these tests are skipped without it.
"""

from __future__ import annotations

import re

import pytest
import torch

pytest.importorskip("skimage")
pytest.importorskip("matplotlib")

from gbs_loss.__main__ import main as cli_main  # noqa: E402
from gbs_loss.msvit.demo import load_photo, main, resize_error  # noqa: E402


def test_smoke_run_saves_a_png_and_reports_token_counts(tmp_path, capsys):
    out = tmp_path / "demo.png"
    code = cli_main(
        [
            "msvit-demo",
            "--steps",
            "2",
            "--batch-size",
            "4",
            "--image-size",
            "64",
            "--display-size",
            "64",
            "--dpi",
            "40",
            "--quiet",
            "--out",
            str(out),
        ]
    )
    assert code == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    text = capsys.readouterr().out
    found = re.search(r"average token count: ([\d.]+) per image against (\d+) all-fine", text)
    assert found is not None, text
    average, all_fine = float(found.group(1)), int(found.group(2))
    assert all_fine == 16  # (64 / 16) ** 2
    assert 4 <= average <= 16  # between all-coarse (2x2 regions) and all-fine
    counts = [int(n) for n in re.findall(r":\s+(\d+) tokens,", text)]
    assert len(counts) == 6 and sum(counts) / 6 == pytest.approx(average, abs=0.05)
    assert all((n - 4) % 3 == 0 for n in counts)  # regions + 3 * split regions


def test_bad_options_exit_with_a_message(capsys):
    with pytest.raises(SystemExit):
        main(["--image-size", "100"])
    assert "--image-size must be a multiple of --coarse-size=32, got 100" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--batch-size", "1"])
    assert "--batch-size must be at least 2" in capsys.readouterr().err


def test_resize_error_is_zero_on_smooth_patches_and_large_on_fine_detail():
    flat = torch.full((1, 3, 64, 64), 0.3)
    assert torch.equal(resize_error(flat), torch.zeros(1, 2, 2))
    checker = ((torch.arange(64)[:, None] + torch.arange(64)[None, :]) % 2).float().expand(1, 3, 64, 64)
    torch.testing.assert_close(resize_error(checker), torch.full((1, 2, 2), 0.25))
    mixed = flat.clone()
    mixed[:, :, :32, 32:] = checker[:, :, :32, 32:]
    error = resize_error(mixed)
    assert error[0, 0, 1] > 0.2 and error[0, 1, 0] == 0


@pytest.mark.parametrize("name", ["camera", "astronaut"])
def test_photographs_load_as_rgb_in_the_unit_range(name):
    photo = load_photo(name)
    assert photo.dim() == 3 and photo.shape[0] == 3 and photo.dtype == torch.float32
    assert 0.0 <= float(photo.min()) and float(photo.max()) <= 1.0 and float(photo.std()) > 0.05


def test_unknown_photograph_is_rejected():
    with pytest.raises(ValueError, match="unknown scikit-image photograph 'nope'"):
        load_photo("nope")
