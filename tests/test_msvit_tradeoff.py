"""``python -m gbs_loss msvit-tradeoff``: the digit canvases and a seconds-long smoke run of the comparison.

Needs the optional ``demo`` extra (scikit-learn, scikit-image, matplotlib); skipped without it.
"""

from __future__ import annotations

import json
import re

import pytest
import torch

pytest.importorskip("sklearn")
pytest.importorskip("skimage")
pytest.importorskip("matplotlib")

from gbs_loss.__main__ import main as cli_main  # noqa: E402
from gbs_loss.msvit.tradeoff import (  # noqa: E402
    TEST_BACKGROUNDS,
    TRAIN_BACKGROUNDS,
    TradeoffConfig,
    bernoulli_mask,
    encoder_macs,
    load_backgrounds,
    load_digit_split,
    make_canvases,
)


@pytest.fixture(scope="module")
def digits():
    return load_digit_split(seed=0)


@pytest.fixture(scope="module")
def backgrounds():
    return load_backgrounds(TRAIN_BACKGROUNDS[:2])


def test_digit_split_is_disjoint_stratified_and_seeded(digits):
    assert digits.train_images.shape[1:] == (8, 8) and digits.test_images.shape[1:] == (8, 8)
    assert len(digits.train_labels) + len(digits.test_labels) == 1797
    assert 0.2 < len(digits.test_labels) / 1797 < 0.3
    assert digits.train_images.min() >= 0 and digits.train_images.max() <= 1
    assert set(digits.test_labels.tolist()) == set(range(10))
    for cls in range(10):  # every class split at about the same fraction
        n_test, n_train = int((digits.test_labels == cls).sum()), int((digits.train_labels == cls).sum())
        assert abs(n_test / (n_test + n_train) - 0.25) < 0.01
    train_rows = {tuple(x.flatten().tolist()) for x in digits.train_images}
    assert sum(tuple(x.flatten().tolist()) in train_rows for x in digits.test_images) < 5  # (a few duplicate scans)
    again = load_digit_split(seed=0)
    assert torch.equal(again.test_labels, digits.test_labels) and torch.equal(again.test_images, digits.test_images)
    other = load_digit_split(seed=1)
    assert not torch.equal(other.test_images, digits.test_images)


def test_backgrounds_are_small_rgb_photographs():
    photos = load_backgrounds(TEST_BACKGROUNDS, short_side=32)
    assert len(photos) == len(TEST_BACKGROUNDS)
    for photo in photos:
        assert photo.shape[0] == 3 and min(photo.shape[1:]) == 32
        assert photo.min() >= 0 and photo.max() <= 1
    assert not set(TRAIN_BACKGROUNDS) & set(TEST_BACKGROUNDS)


@pytest.mark.parametrize(("canvas", "size", "lattice"), [(24, 8, 4), (64, 12, 1), (32, 8, 8)])
def test_canvases_shapes_and_digit_placement(digits, backgrounds, canvas, size, lattice):
    gen = torch.Generator().manual_seed(3)
    out = make_canvases(digits.train_images[:64], backgrounds, gen, canvas, (size, size), lattice=lattice)
    assert out.images.shape == (64, 3, canvas, canvas) and out.images.dtype == torch.float32
    assert out.images.min() >= 0 and out.images.max() <= 1
    top, left, bottom, right = out.boxes.unbind(1)
    assert (top >= 0).all() and (left >= 0).all() and (bottom <= canvas).all() and (right <= canvas).all()
    assert ((bottom - top) == size).all() and ((right - left) == size).all()
    assert (top % lattice == 0).all() and (left % lattice == 0).all()
    assert len(set(top.tolist())) > 1 and len(set(left.tolist())) > 1  # positions vary


def test_canvases_carry_the_digit_inside_its_box_only(digits, backgrounds):
    """Pasting a blank digit changes nothing; pasting a real one changes pixels inside its box only."""
    images = digits.train_images[:16]
    blank = make_canvases(torch.zeros_like(images), backgrounds, torch.Generator().manual_seed(5), 24, (8, 8))
    inked = make_canvases(images, backgrounds, torch.Generator().manual_seed(5), 24, (8, 8))
    assert torch.equal(blank.boxes, inked.boxes)
    changed = (blank.images - inked.images).abs().amax(dim=1) > 1e-6
    for i, (top, left, bottom, right) in enumerate(inked.boxes.tolist()):
        inside = torch.zeros_like(changed[i])
        inside[top:bottom, left:right] = True
        assert changed[i].any() and not (changed[i] & ~inside).any()


def test_canvases_are_deterministic_under_a_seed(digits, backgrounds):
    a = make_canvases(digits.train_images[:8], backgrounds, torch.Generator().manual_seed(11))
    b = make_canvases(digits.train_images[:8], backgrounds, torch.Generator().manual_seed(11))
    c = make_canvases(digits.train_images[:8], backgrounds, torch.Generator().manual_seed(12))
    assert torch.equal(a.images, b.images) and torch.equal(a.boxes, b.boxes)
    assert not torch.equal(a.images, c.images)


def test_canvases_reject_bad_arguments(digits, backgrounds):
    gen = torch.Generator()
    with pytest.raises(ValueError, match="shape"):
        make_canvases(digits.train_images[:2, :4], backgrounds, gen)
    with pytest.raises(ValueError, match="digit_sizes"):
        make_canvases(digits.train_images[:2], backgrounds, gen, canvas_size=16, digit_sizes=(8, 20))


def test_bernoulli_mask_rates():
    gen = torch.Generator().manual_seed(0)
    mask = bernoulli_mask(4000, (3, 3), 0.25, gen)
    assert mask.shape == (4000, 3, 3) and set(mask.unique().tolist()) <= {0.0, 1.0}
    assert abs(float(mask.mean()) - 0.25) < 0.01
    per_image = bernoulli_mask(2, (4, 4), torch.tensor([0.0, 1.0]), gen)
    assert per_image[0].sum() == 0 and per_image[1].sum() == 16
    with pytest.raises(ValueError):
        bernoulli_mask(2, (3, 3), 1.5, gen)


def test_encoder_macs_grow_with_tokens():
    cfg = TradeoffConfig()
    macs = encoder_macs(torch.tensor([9.0, 18.0, 36.0]), cfg)
    assert (macs[1:] > macs[:-1]).all() and macs[0] > 0


def test_quick_run_prints_a_sane_table_and_saves_pngs(tmp_path, capsys):
    out, record = tmp_path / "tradeoff.png", tmp_path / "tradeoff.json"
    code = cli_main(["msvit-tradeoff", "--quick", "--quiet", "--dpi", "40", "--out", str(out), "--json", str(record)])
    assert code == 0
    assert out.stat().st_size > 0 and (tmp_path / "tradeoff_gate.png").stat().st_size > 0
    text = capsys.readouterr().out
    rows = [line for line in text.splitlines() if line.startswith("| ") and not line.startswith("| model")]
    names = [row.split("|")[1].strip() for row in rows]
    assert names == ["all-coarse", "random gate 25%", "random gate 50%", "MSViT 25%", "MSViT 50%", "all-fine"]
    data = json.loads(record.read_text())
    cfg = data["config"]
    regions = (cfg["canvas_size"] // cfg["coarse_size"]) ** 2
    ratio = cfg["coarse_size"] // cfg["fine_size"]
    by_name = {}
    for r in data["results"]:
        assert 0.0 <= r["accuracy"] <= 1.0
        assert 0.0 <= r["split_rate"] <= 1.0 and 0.0 <= r["digit_split"] <= 1.0
        # the token count follows the measured split rate: regions + (ratio^2 - 1) * splits
        assert r["tokens"] == pytest.approx(regions * (1 + (ratio**2 - 1) * r["split_rate"]), rel=1e-6)
        assert r["mmacs"] > 0
        by_name[(r["kind"], r["target"])] = r
    assert by_name[("all-fine", 1.0)]["tokens"] == regions * ratio**2
    assert by_name[("all-fine", 1.0)]["split_rate"] == 1.0
    assert by_name[("all-coarse", 0.0)]["tokens"] == regions
    assert by_name[("all-coarse", 0.0)]["split_rate"] == 0.0
    for rate in (0.25, 0.5):
        assert abs(by_name[("random", rate)]["split_rate"] - rate) < 0.05
    assert re.search(r"seeds 0", text)
