"""MSViT mixed-scale tokenizer: token counts, coverage, order, padding, equivalence with plain patch
embeddings, straight-through gradients, the map back to the fine grid, and argument checks."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from gbs_loss.msvit import MixedScaleGate, MixedScaleTokenizer, MixedTokens, mixed_scale_tokens

D = 8


def _setup(seed: int = 0, size: tuple[int, int] = (64, 96), fine: int = 16, batch: int = 3):
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    images = torch.randn(batch, 3, *size, generator=gen)
    embed = nn.Conv2d(3, D, kernel_size=fine, stride=fine)
    pos = torch.randn(size[0] // fine, size[1] // fine, D, generator=gen)
    return images, embed, pos


def _random_mask(batch: int, regions: tuple[int, int], seed: int = 0, p: float = 0.4) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return (torch.rand(batch, *regions, generator=gen) < p).float()


# -- token counts and layout ---------------------------------------------------------------------------------
@pytest.mark.parametrize(("coarse", "fine"), [(32, 16), (48, 16), (32, 8)])
def test_token_count_is_regions_plus_extra_fine_tokens(coarse, fine):
    size = (coarse * 2, coarse * 3)
    images, embed, pos = _setup(size=size, fine=fine, batch=5)
    mask = _random_mask(5, (2, 3), seed=1)
    mask[0] = 0
    mask[1] = 1
    out = mixed_scale_tokens(images, mask, embed, pos, coarse_size=coarse, fine_size=fine)
    split = mask.sum(dim=(1, 2)).long()
    ratio = coarse // fine
    assert torch.equal(out.lengths, 6 + (ratio**2 - 1) * split)
    assert out.lengths[0] == 6 and out.lengths[1] == 6 * ratio**2
    assert out.tokens.shape == (5, int(out.lengths.max()), D)
    assert torch.equal(out.is_fine.sum(1), ratio**2 * split)


def test_every_pixel_is_covered_exactly_once():
    images, embed, pos = _setup(batch=4)
    mask = _random_mask(4, (2, 3), seed=3)
    out = mixed_scale_tokens(images, mask, embed, pos)
    boxes = out.boxes()
    for b in range(4):
        cover = torch.zeros(64, 96, dtype=torch.long)
        for t in range(int(out.lengths[b])):
            top, left, bottom, right = boxes[b, t].tolist()
            cover[top:bottom, left:right] += 1
        assert torch.equal(cover, torch.ones_like(cover))
        # The map from fine cells to tokens agrees with the boxes.
        cells = out.fine_to_token[b].repeat_interleave(16, 0).repeat_interleave(16, 1)
        for t in range(int(out.lengths[b])):
            top, left, bottom, right = boxes[b, t].tolist()
            assert (cells[top:bottom, left:right] == t).all()
            assert int((cells == t).sum()) == (bottom - top) * (right - left)


def test_tokens_are_in_spatial_order_and_padding_is_marked():
    images, embed, pos = _setup(batch=4)
    mask = _random_mask(4, (2, 3), seed=5)
    mask[2] = 1  # the longest sequence
    mask[3] = 0  # the shortest
    out = mixed_scale_tokens(images, mask, embed, pos)
    assert out.tokens.shape[1] == 24
    steps = torch.arange(out.tokens.shape[1])
    assert torch.equal(out.padding_mask, steps[None, :] >= out.lengths[:, None])
    for b in range(4):
        n = int(out.lengths[b])
        assert (out.positions[b, 1:n] > out.positions[b, : n - 1]).all()
        assert (out.tokens[b, n:] == 0).all()
        assert (out.positions[b, n:] == 0).all() and not out.is_fine[b, n:].any()
    assert not out.truncated.any()


def test_bool_and_float_masks_agree():
    images, embed, pos = _setup()
    mask = _random_mask(3, (2, 3), seed=7)
    a = mixed_scale_tokens(images, mask, embed, pos)
    b = mixed_scale_tokens(images, mask.bool(), embed, pos)
    for x, y in zip(a[:7], b[:7], strict=True):
        assert torch.equal(x, y)


# -- what each token holds ----------------------------------------------------------------------------------------
def test_all_fine_mask_equals_a_plain_vit_patch_embedding():
    images, embed, pos = _setup()
    out = mixed_scale_tokens(images, torch.ones(3, 2, 3), embed, pos)
    plain = embed(images).flatten(2).transpose(1, 2) + pos.reshape(1, -1, D)
    torch.testing.assert_close(out.tokens, plain)
    assert not out.padding_mask.any() and out.is_fine.all()
    assert torch.equal(out.positions, torch.arange(24).expand(3, 24))


def test_all_coarse_mask_equals_a_plain_vit_patch_embedding_at_the_coarse_scale():
    images, embed, pos = _setup()
    out = mixed_scale_tokens(images, torch.zeros(3, 2, 3), embed, pos)
    # A ViT with 32x32 patches whose kernel is the 16x16 one resized (each weight spread over 2x2 pixels) and
    # whose position embeddings are the fine ones averaged over each 2x2 block.
    coarse = nn.Conv2d(3, D, kernel_size=32, stride=32)
    with torch.no_grad():
        coarse.weight.copy_(embed.weight.repeat_interleave(2, 2).repeat_interleave(2, 3) / 4)
        coarse.bias.copy_(embed.bias)
    pos_coarse = F.avg_pool2d(pos.permute(2, 0, 1), 2).permute(1, 2, 0)
    plain = coarse(images).flatten(2).transpose(1, 2) + pos_coarse.reshape(1, -1, D)
    torch.testing.assert_close(out.tokens, plain, rtol=1e-5, atol=1e-5)
    assert out.tokens.shape[1] == 6 and not out.is_fine.any()
    # The same as a plain 16-pixel ViT on the image resized to half its size.
    half = F.interpolate(images, scale_factor=0.5, mode="area")
    torch.testing.assert_close(out.tokens, embed(half).flatten(2).transpose(1, 2) + pos_coarse.reshape(1, -1, D))


def test_mixed_tokens_hold_the_right_patches():
    images, embed, pos = _setup(batch=1)
    mask = torch.tensor([[[1.0, 0.0, 1.0], [0.0, 0.0, 1.0]]])
    out = mixed_scale_tokens(images, mask, embed, pos)
    boxes = out.boxes()[0]
    for t in range(int(out.lengths[0])):
        top, left, bottom, right = boxes[t].tolist()
        patch = images[:, :, top:bottom, left:right]
        if out.is_fine[0, t]:
            expected = embed(patch).reshape(D) + pos[top // 16, left // 16]
        else:
            resized = F.interpolate(patch, size=(16, 16), mode="area")
            expected = embed(resized).reshape(D) + pos[top // 16 : bottom // 16, left // 16 : right // 16].mean((0, 1))
        torch.testing.assert_close(out.tokens[0, t], expected, rtol=1e-5, atol=1e-5)


def test_embed_norm_is_applied_before_the_position_embedding():
    images, embed, pos = _setup()
    norm = nn.LayerNorm(D)
    out = mixed_scale_tokens(images, torch.ones(3, 2, 3), embed, pos, embed_norm=norm)
    plain = norm(embed(images).flatten(2).transpose(1, 2)) + pos.reshape(1, -1, D)
    torch.testing.assert_close(out.tokens, plain)


@pytest.mark.parametrize("layout", ["grid", "batched_grid", "flat", "batched_flat"])
def test_position_embedding_layouts_agree(layout):
    images, embed, pos = _setup()
    mask = _random_mask(3, (2, 3), seed=9)
    reference = mixed_scale_tokens(images, mask, embed, pos).tokens
    shaped = {
        "grid": pos,
        "batched_grid": pos[None],
        "flat": pos.reshape(-1, D),
        "batched_flat": pos.reshape(1, -1, D),
    }[layout]
    torch.testing.assert_close(mixed_scale_tokens(images, mask, embed, shaped).tokens, reference)


def test_without_position_embedding():
    images, embed, _ = _setup()
    out = mixed_scale_tokens(images, torch.ones(3, 2, 3), embed, None)
    torch.testing.assert_close(out.tokens, embed(images).flatten(2).transpose(1, 2))


def test_float64_inputs_give_float64_tokens():
    images, embed, pos = _setup()
    out = mixed_scale_tokens(images.double(), _random_mask(3, (2, 3)), embed.double(), pos.double())
    assert out.tokens.dtype == torch.float64
    assert out.lengths.dtype == torch.int64 and out.padding_mask.dtype == torch.bool


# -- back to the fine grid -------------------------------------------------------------------------------------
def test_to_grid_repeats_coarse_tokens_over_their_cells():
    images, embed, pos = _setup()
    mask = _random_mask(3, (2, 3), seed=11)
    out = mixed_scale_tokens(images, mask, embed, pos)
    values = torch.randn(*out.tokens.shape[:2], 5)
    grid = out.to_grid(values)
    assert grid.shape == (3, 4, 6, 5)
    boxes = out.boxes()
    for b in range(3):
        for t in range(int(out.lengths[b])):
            top, left, bottom, right = (v // 16 for v in boxes[b, t].tolist())
            assert torch.equal(grid[b, top:bottom, left:right], values[b, t].expand(bottom - top, right - left, 5))
    full = mixed_scale_tokens(images, torch.ones(3, 2, 3), embed, pos)
    torch.testing.assert_close(full.to_grid(full.tokens), full.tokens.reshape(3, 4, 6, D))


def test_to_grid_rejects_values_of_the_wrong_length():
    images, embed, pos = _setup()
    out = mixed_scale_tokens(images, torch.ones(3, 2, 3), embed, pos)
    with pytest.raises(ValueError, match=r"values must have shape \(B, T, ...\) = \(3, 24\)"):
        out.to_grid(torch.zeros(3, 23, D))


# -- fixed length (no host synchronisation) ------------------------------------------------------------------------
def test_max_tokens_pads_to_a_fixed_length():
    images, embed, pos = _setup()
    mask = _random_mask(3, (2, 3), seed=13)
    free = mixed_scale_tokens(images, mask, embed, pos)
    fixed = mixed_scale_tokens(images, mask, embed, pos, max_tokens=24)
    t = free.tokens.shape[1]
    assert fixed.tokens.shape == (3, 24, D)
    torch.testing.assert_close(fixed.tokens[:, :t], free.tokens)
    assert (fixed.tokens[:, t:] == 0).all() and fixed.padding_mask[:, t:].all()
    assert torch.equal(fixed.lengths, free.lengths) and not fixed.truncated.any()


def test_max_tokens_unsplits_the_least_confident_regions():
    images, embed, pos = _setup()
    mask = torch.zeros(3, 2, 3)
    mask[0] = 1  # 24 tokens; 10 allow the 6 regions and one split (6 + 3)
    mask[1, 0, :2] = 1  # 12 tokens
    scores = torch.randn(3, 2, 3, generator=torch.Generator().manual_seed(4))
    out = mixed_scale_tokens(images, mask, embed, pos, max_tokens=10, scores=scores)
    assert out.tokens.shape == (3, 10, D)
    assert out.truncated.tolist() == [True, True, False]
    assert out.lengths.tolist() == [9, 9, 6]
    expected = torch.zeros(3, 2, 3)
    expected.view(3, -1)[0, scores[0].flatten().argmax()] = 1
    best = scores[1, 0, :2].argmax()
    expected[1, 0, best] = 1
    reduced = mixed_scale_tokens(images, expected, embed, pos, max_tokens=10)
    torch.testing.assert_close(out.tokens, reduced.tokens)
    assert torch.equal(out.fine_to_token, reduced.fine_to_token) and torch.equal(out.positions, reduced.positions)
    # The whole image is still covered: no cell points past the end.
    assert (out.fine_to_token < out.lengths[:, None, None]).all()


def test_max_tokens_without_scores_keeps_the_first_splits():
    images, embed, pos = _setup()
    mask = torch.ones(3, 2, 3)
    out = mixed_scale_tokens(images, mask, embed, pos, max_tokens=12)  # 6 regions + 2 splits
    expected = torch.zeros(3, 2, 3)
    expected[:, 0, :2] = 1
    torch.testing.assert_close(out.tokens, mixed_scale_tokens(images, expected, embed, pos, max_tokens=12).tokens)
    assert out.truncated.all() and out.lengths.tolist() == [12, 12, 12]


def test_max_tokens_below_the_coarse_count_drops_the_last_tokens():
    images, embed, pos = _setup()
    mask = torch.zeros(3, 2, 3)
    mask[0] = 1
    out = mixed_scale_tokens(images, mask, embed, pos, max_tokens=4)
    assert out.lengths.tolist() == [4, 4, 4] and out.truncated.all()
    full = mixed_scale_tokens(images, torch.zeros(3, 2, 3), embed, pos)
    torch.testing.assert_close(out.tokens, full.tokens[:, :4])
    # Cells whose token was cut off point past the end and come back as zeros from to_grid.
    grid = out.to_grid(out.tokens)
    lost = out.fine_to_token[0] == 4
    assert int(lost.sum()) == 8 and (grid[0][lost] == 0).all()


def test_unsplit_regions_keep_a_straight_through_gradient():
    images, embed, pos = _setup(batch=1)
    hard = torch.ones(1, 2, 3)
    mask = hard.clone().requires_grad_(True)
    scores = torch.arange(6.0).reshape(1, 2, 3)
    out = mixed_scale_tokens(images, mask, embed, pos, max_tokens=9, scores=scores)  # keeps region 5 only
    expected = torch.zeros(1, 2, 3)
    expected[0, 1, 2] = 1
    torch.testing.assert_close(out.tokens, mixed_scale_tokens(images, expected, embed, pos).tokens)
    out.tokens.sum().backward()
    assert (mask.grad != 0).all()


# -- straight-through gradients -------------------------------------------------------------------------------
def test_gradient_reaches_the_gate_through_the_tokens():
    images, embed, pos = _setup()
    gate = MixedScaleGate().train()
    torch.manual_seed(0)
    out = mixed_scale_tokens(images, gate(images).mask, embed, pos)
    (out.tokens * torch.randn_like(out.tokens)).sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in gate.parameters())


def test_straight_through_gradient_of_each_region():
    images, embed, pos = _setup(batch=1)
    hard = torch.tensor([[[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]]])
    mask = hard.clone().requires_grad_(True)
    out = mixed_scale_tokens(images, mask, embed, pos)
    plain = mixed_scale_tokens(images, hard, embed, pos)
    torch.testing.assert_close(out.tokens, plain.tokens)  # the factors are exactly 1 in the forward pass
    weights = torch.randn_like(out.tokens)
    (out.tokens * weights).sum().backward()
    # Split region: d/dm of m * content summed over its fine tokens; kept region: minus its coarse content.
    pos_cells = pos.reshape(-1, D)
    content = plain.tokens[0] - torch.where(
        plain.is_fine[0, :, None],
        pos_cells[plain.positions[0]],
        F.avg_pool2d(pos.permute(2, 0, 1), 2)
        .permute(1, 2, 0)
        .reshape(-1, D)[(plain.positions[0] // 6 // 2) * 3 + (plain.positions[0] % 6) // 2],
    )
    expected = torch.zeros(2, 3)
    boxes = plain.boxes()[0]
    for t in range(int(plain.lengths[0])):
        r, c = int(boxes[t, 0]) // 32, int(boxes[t, 1]) // 32
        sign = 1.0 if plain.is_fine[0, t] else -1.0
        expected[r, c] += sign * (weights[0, t] * content[t]).sum().detach()
    torch.testing.assert_close(mask.grad[0], expected, rtol=1e-4, atol=1e-4)


# -- embedding only what is used ---------------------------------------------------------------------------
class _Wrapped(nn.Module):
    """The same convolution behind a module the tokenizer cannot see through (the whole-image path)."""

    def __init__(self, conv: nn.Conv2d) -> None:
        super().__init__()
        self.conv = conv

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


@pytest.mark.parametrize("max_tokens", [None, 20])
@pytest.mark.parametrize("norm", [False, True])
def test_embedding_the_used_patches_equals_embedding_the_whole_image(max_tokens, norm):
    images, embed, pos = _setup(batch=5)
    mask = _random_mask(5, (2, 3), seed=21, p=0.5)
    embed_norm = nn.LayerNorm(D) if norm else None
    fast = mixed_scale_tokens(images, mask, embed, pos, max_tokens=max_tokens, embed_norm=embed_norm)
    slow = mixed_scale_tokens(images, mask, _Wrapped(embed), pos, max_tokens=max_tokens, embed_norm=embed_norm)
    torch.testing.assert_close(fast.tokens, slow.tokens, rtol=1e-5, atol=1e-5)
    for x, y in zip(fast[1:7], slow[1:7], strict=True):
        assert torch.equal(x, y)


def test_only_the_used_patches_are_embedded():
    from torch.utils.flop_counter import FlopCounterMode

    images, embed, pos = _setup(batch=4)
    mask = _random_mask(4, (2, 3), seed=23, p=0.3)
    with FlopCounterMode(display=False) as counter:
        out = mixed_scale_tokens(images, mask, embed, pos)
    tokens = int(out.lengths.sum())
    assert counter.get_total_flops() == 2 * tokens * D * 3 * 16 * 16
    with FlopCounterMode(display=False) as counter:
        mixed_scale_tokens(images, mask, _Wrapped(embed), pos)
    assert counter.get_total_flops() == 2 * 4 * (24 + 6) * D * 3 * 16 * 16  # every fine and every coarse patch


# -- budget mode ------------------------------------------------------------------------------------------------
def _budget_mask(batch: int, regions: tuple[int, int], k: int, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    scores = torch.rand(batch, regions[0] * regions[1], generator=gen)
    mask = torch.zeros_like(scores).scatter(1, scores.topk(k, dim=1).indices, 1.0)
    return mask.reshape(batch, *regions)


@pytest.mark.parametrize("budget", [0, 2, 6, 0.5])
def test_budget_gives_dense_tokens_equal_to_the_free_ones(budget):
    images, embed, pos = _setup(batch=4)
    k = budget if isinstance(budget, int) else 3
    mask = _budget_mask(4, (2, 3), k)
    out = mixed_scale_tokens(images, mask, embed, pos, budget=budget)
    assert out.tokens.shape == (4, 6 + 3 * k, D) and not out.padding_mask.any()
    free = mixed_scale_tokens(images, mask, embed, pos)
    torch.testing.assert_close(out.tokens, free.tokens)


def test_budget_checks_the_split_count_and_arguments():
    images, embed, pos = _setup()
    with pytest.raises(ValueError, match=r"budget=2 means exactly 2 split regions in every image, got \[0, 0, 0\]"):
        mixed_scale_tokens(images, torch.zeros(3, 2, 3), embed, pos, budget=2)
    with pytest.raises(ValueError, match=r"budget must be in \[0, 6\]"):
        mixed_scale_tokens(images, torch.zeros(3, 2, 3), embed, pos, budget=7)
    with pytest.raises(ValueError, match="give budget or max_tokens, not both"):
        mixed_scale_tokens(images, torch.zeros(3, 2, 3), embed, pos, budget=0, max_tokens=6)
    with pytest.raises(TypeError, match="budget must be an int"):
        mixed_scale_tokens(images, torch.zeros(3, 2, 3), embed, pos, budget="2")


# -- the module ---------------------------------------------------------------------------------------------------
def test_module_registers_the_embeddings_and_matches_the_function():
    images, embed, pos = _setup()
    mask = _random_mask(3, (2, 3), seed=17)
    tokenizer = MixedScaleTokenizer(embed, nn.Parameter(pos.clone()))
    names = {name for name, _ in tokenizer.named_parameters()}
    assert names == {"patch_embed.weight", "patch_embed.bias", "pos_embed"}
    out = tokenizer(images, mask)
    assert isinstance(out, MixedTokens)
    torch.testing.assert_close(out.tokens, mixed_scale_tokens(images, mask, embed, pos).tokens)
    buffered = MixedScaleTokenizer(embed, pos)
    assert "pos_embed" in dict(buffered.named_buffers())
    other = torch.zeros_like(pos)
    torch.testing.assert_close(
        buffered(images, mask, pos_embed=other).tokens, mixed_scale_tokens(images, mask, embed, other).tokens
    )


# -- argument checks -------------------------------------------------------------------------------------------
def test_image_size_must_be_a_multiple_of_the_coarse_size():
    _, embed, pos = _setup()
    with pytest.raises(ValueError, match=r"multiples of coarse_size=32, got 64x80"):
        mixed_scale_tokens(torch.randn(1, 3, 64, 80), torch.zeros(1, 2, 2), embed, None)


def test_coarse_size_must_be_a_multiple_of_the_fine_size():
    images, embed, pos = _setup()
    with pytest.raises(ValueError, match="coarse_size=40 and fine_size=16"):
        mixed_scale_tokens(images, torch.zeros(3, 2, 3), embed, pos, coarse_size=40)
    with pytest.raises(ValueError, match="coarse_size=40 and fine_size=16"):
        MixedScaleTokenizer(embed, pos, coarse_size=40)


def test_wrong_channel_count_is_reported():
    _, embed, pos = _setup()
    with pytest.raises(ValueError, match="images must have 3 channels.*got 4"):
        mixed_scale_tokens(torch.randn(3, 4, 64, 96), torch.zeros(3, 2, 3), embed, pos)


@pytest.mark.parametrize(
    ("mask", "error", "message"),
    [
        (torch.zeros(3, 3, 2), ValueError, r"mask must have shape .* = \(3, 2, 3\), got \(3, 3, 2\)"),
        (torch.zeros(2, 2, 3), ValueError, r"= \(3, 2, 3\), got \(2, 2, 3\)"),
        (torch.zeros(3, 2, 3, dtype=torch.long), TypeError, "mask must be a bool or floating-point tensor"),
        ([[0.0]], TypeError, "mask must be a torch.Tensor, got list"),
    ],
)
def test_bad_masks_are_rejected(mask, error, message):
    images, embed, pos = _setup()
    with pytest.raises(error, match=message):
        mixed_scale_tokens(images, mask, embed, pos)


def test_bad_embeddings_are_rejected():
    images, embed, pos = _setup()
    mask = torch.zeros(3, 2, 3)
    with pytest.raises(ValueError, match=r"patch_embed must have stride fine_size=16, got stride \(8, 8\)"):
        mixed_scale_tokens(images, mask, nn.Conv2d(3, D, 8, stride=8), pos)
    with pytest.raises(ValueError, match=r"pos_embed must be the fine grid .* 4x6 grid.*got \(5, 6, 8\)"):
        mixed_scale_tokens(images, mask, embed, torch.zeros(5, 6, D))
    with pytest.raises(ValueError, match="pos_embed has embedding size 7 but patch_embed gives 8"):
        mixed_scale_tokens(images, mask, embed, torch.zeros(4, 6, 7))
    with pytest.raises(TypeError, match="patch_embed must be an nn.Module"):
        mixed_scale_tokens(images, mask, lambda x: x, pos)
    with pytest.raises(ValueError, match=r"max_tokens must be a positive int, got 0"):
        mixed_scale_tokens(images, mask, embed, pos, max_tokens=0)
    with pytest.raises(ValueError, match=r"patch_embed must map .* = \(B, D, 4, 6\), got \(3, 8, 8, 12\)"):
        mixed_scale_tokens(images, mask, nn.Sequential(nn.Conv2d(3, D, 8, stride=8)), pos)
    with pytest.raises(TypeError, match=r"got nn.Linear\(3, 8\), which acts on the last dimension"):
        mixed_scale_tokens(images, mask, nn.Linear(3, D), pos)
    with pytest.raises(ValueError, match=r"patch_embed must map .*calling it on images of shape \(3, 3, 64, 96\)"):
        mixed_scale_tokens(images, mask, nn.Sequential(nn.Linear(3, D)), pos)
    with pytest.raises(ValueError, match=r"scores must have the shape of mask"):
        mixed_scale_tokens(images, mask, embed, pos, scores=torch.zeros(3, 6))


def test_nan_masks_are_refused():
    images, embed, pos = _setup()
    mask = torch.zeros(3, 2, 3)
    mask[1, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="mask must not hold NaN"):
        mixed_scale_tokens(images, mask, embed, pos)
