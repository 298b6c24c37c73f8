r"""The mixed-scale tokenizer of MSViT: coarse tokens where the gate keeps a region, fine tokens where it splits.

Havtorn, Royer, Blankevoort, Ehteshami Bejnordi, "MSViT: Dynamic Mixed-Scale Tokenization for Vision
Transformers", ICCV Workshops 2023, arXiv 2307.02321. Given images, the gate's hard mask (one 0/1 value per
coarse region), a fine patch embedding (the ``Conv2d`` of stride $S_f$ of a ViT) and the ViT's grid of fine
position embeddings, every coarse region becomes either

* one **coarse token**: the fine patch embedding of the coarse patch resized to the fine size (area averaging,
  $S_c / S_f$ times smaller), plus the mean of the position embeddings of the fine positions it covers; or
* $(S_c / S_f)^2$ **fine tokens**: the usual patch embeddings plus position embeddings.

Every pixel is covered by exactly one token and nothing is dropped, unlike token pruning. With
$S_c = 2 S_f$ an image of $R$ regions of which $s$ are split has $R + 3 s$ tokens.
"""

from __future__ import annotations

from typing import Any, NamedTuple, TypeGuard

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gbs_loss.msvit._packed import PackedLayout, packed_layout, unpack
from gbs_loss.msvit._validation import (
    check_images,
    check_mask,
    check_patch_sizes,
    check_positive_int,
    resolve_budget,
)

__all__ = ["MixedScaleTokenizer", "MixedTokens", "mixed_scale_tokens"]


class MixedTokens(NamedTuple):
    """A padded batch of mixed-scale token sequences and what is needed to map tokens back to the image.

    Tokens are in a stable spatial order: sorted by the raster index, on the fine grid, of their top-left fine
    cell. With an all-fine mask this is the usual ViT order; with an all-coarse mask it is the raster order of
    the coarse grid.

    Attributes:
        tokens: ``(B, T, D)`` token embeddings (patch embedding plus position embedding); zeros at padding.
        padding_mask: ``(B, T)`` bool, ``True`` at padding (the convention of ``src_key_padding_mask`` in
            `torch.nn.TransformerEncoder`).
        lengths: ``(B,)`` int64 number of tokens of every image (at most ``T``).
        positions: ``(B, T)`` int64 raster index on the fine grid of every token's top-left fine cell (0 at
            padding).
        is_fine: ``(B, T)`` bool, ``True`` for fine tokens (``False`` for coarse tokens and padding).
        fine_to_token: ``(B, Gh, Gw)`` int64 index in the sequence of the token that covers every fine cell;
            cells whose token was cut off by ``max_tokens`` hold ``T``.
        truncated: ``(B,)`` bool, ``True`` where ``max_tokens`` cut tokens off the end of an image's sequence.
        grid_size: ``(Gh, Gw)``, the fine grid, ``(H / Sf, W / Sf)``.
        fine_size: Side of a fine patch in pixels.
        coarse_size: Side of a coarse patch in pixels.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> embed = nn.Conv2d(3, 8, kernel_size=16, stride=16)
        >>> mask = torch.zeros(2, 2, 2)
        >>> mask[0, 0, 0] = 1.0  # split the top-left region of image 0 into 4 fine tokens
        >>> out = mixed_scale_tokens(torch.randn(2, 3, 64, 64), mask, embed, None)
        >>> out.tokens.shape, out.lengths.tolist()
        (torch.Size([2, 7, 8]), [7, 4])
        >>> out.is_fine[0].tolist()
        [True, True, False, True, True, False, False]
        >>> out.padding_mask[1].tolist()
        [False, False, False, False, True, True, True]
    """

    tokens: Tensor
    padding_mask: Tensor
    lengths: Tensor
    positions: Tensor
    is_fine: Tensor
    fine_to_token: Tensor
    truncated: Tensor
    grid_size: tuple[int, int]
    fine_size: int
    coarse_size: int

    def to_grid(self, values: Tensor) -> Tensor:
        """Scatter per-token values back to the fine grid, for dense tasks.

        Every fine cell receives the value of the token that covers it (a coarse token's value is repeated on
        its $(S_c / S_f)^2$ cells). Cells whose token was cut off by ``max_tokens`` receive zeros.

        Args:
            values: ``(B, T, *F)`` values per token (for example a ViT's output tokens, without class token).

        Returns:
            ``(B, Gh, Gw, *F)``.

        Example:
            >>> import torch
            >>> from torch import nn
            >>> from gbs_loss.msvit import mixed_scale_tokens
            >>> embed = nn.Conv2d(3, 8, kernel_size=16, stride=16)
            >>> mask = torch.tensor([[[1.0, 0.0], [0.0, 0.0]]])
            >>> out = mixed_scale_tokens(torch.randn(1, 3, 64, 64), mask, embed, None)
            >>> out.to_grid(out.tokens).shape
            torch.Size([1, 4, 4, 8])
        """
        if (
            not isinstance(values, Tensor)
            or values.dim() < 2
            or tuple(values.shape[:2]) != tuple(self.tokens.shape[:2])
        ):
            got = tuple(values.shape) if isinstance(values, Tensor) else type(values).__name__
            raise ValueError(
                f"MixedTokens.to_grid: values must have shape (B, T, ...) = "
                f"{tuple(self.tokens.shape[:2])} + (...), got {got}"
            )
        b = values.shape[0]
        rest = values.shape[2:]
        padded = torch.cat([values, values.new_zeros((b, 1, *rest))], dim=1)
        index = self.fine_to_token.reshape(b, -1)
        index = index.reshape(*index.shape, *([1] * len(rest))).expand(*index.shape, *rest)
        return torch.gather(padded, 1, index).reshape(b, *self.grid_size, *rest)

    def boxes(self) -> Tensor:
        """Pixel box ``(top, left, bottom, right)`` of every token (bottom and right exclusive).

        Returns:
            ``(B, T, 4)`` int64; zeros at padding.

        Example:
            >>> import torch
            >>> from torch import nn
            >>> embed = nn.Conv2d(3, 8, kernel_size=16, stride=16)
            >>> mask = torch.tensor([[[0.0, 1.0], [0.0, 0.0]]])  # split the top-right region
            >>> boxes = mixed_scale_tokens(torch.randn(1, 3, 64, 64), mask, embed, None).boxes()
            >>> boxes.shape, boxes[0, :3].tolist()  # a coarse token, then fine tokens
            (torch.Size([1, 7, 4]), [[0, 0, 32, 32], [0, 32, 16, 48], [0, 48, 16, 64]])
        """
        gw = self.grid_size[1]
        row = torch.div(self.positions, gw, rounding_mode="floor")
        col = self.positions - row * gw
        top, left = row * self.fine_size, col * self.fine_size
        side = torch.where(self.is_fine, self.fine_size, self.coarse_size)
        out = torch.stack([top, left, top + side, left + side], dim=-1)
        return out.masked_fill(self.padding_mask.unsqueeze(-1), 0)


def _pos_grid(pos_embed: Tensor, grid: tuple[int, int], owner: str) -> Tensor:
    """Bring a fine position-embedding grid to shape ``(Gh, Gw, D)``."""
    gh, gw = grid
    shape = tuple(pos_embed.shape)
    if pos_embed.dim() == 3 and shape[:2] == (gh, gw):
        return pos_embed
    if pos_embed.dim() == 4 and shape[0] == 1 and shape[1:3] == (gh, gw):
        return pos_embed[0]
    if pos_embed.dim() == 2 and shape[0] == gh * gw:
        return pos_embed.reshape(gh, gw, shape[1])
    if pos_embed.dim() == 3 and shape[0] == 1 and shape[1] == gh * gw:
        return pos_embed.reshape(gh, gw, shape[2])
    raise ValueError(
        f"{owner}: pos_embed must be the fine grid of position embeddings for a {gh}x{gw} grid, "
        f"of shape ({gh}, {gw}, D), (1, {gh}, {gw}, D), ({gh * gw}, D) or (1, {gh * gw}, D) "
        f"(without class-token entries), got {shape}"
    )


def _embed(patch_embed: nn.Module, images: Tensor, grid: tuple[int, int], owner: str) -> Tensor:
    """Apply the patch embedding to whole images; return channels-last ``(B, gh, gw, D)``."""
    expected = f"(B, D, H / fine_size, W / fine_size) = (B, D, {grid[0]}, {grid[1]})"
    try:
        out = patch_embed(images)
    except RuntimeError as error:
        raise ValueError(
            f"{owner}: patch_embed must map (B, C, H, W) images to {expected}; calling it on images of shape "
            f"{tuple(images.shape)} failed: {error}"
        ) from error
    if not isinstance(out, Tensor) or out.dim() != 4 or tuple(out.shape[2:]) != grid:
        got = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
        raise ValueError(f"{owner}: patch_embed must map (B, C, H, W) images to {expected}, got {got}")
    return out.permute(0, 2, 3, 1)


def _check_patch_embed(owner: str, patch_embed: Any, fine_size: int) -> int | None:
    """Check the fine patch embedding; return its input channels when it says (``nn.Conv2d``)."""
    if not isinstance(patch_embed, nn.Module):
        raise TypeError(
            f"{owner}: patch_embed must be an nn.Module (for example nn.Conv2d(C, D, "
            f"kernel_size={fine_size}, stride={fine_size})), got {type(patch_embed).__name__}"
        )
    if isinstance(patch_embed, nn.Linear):
        raise TypeError(
            f"{owner}: patch_embed must map images (B, C, H, W) to (B, D, H / fine_size, W / fine_size), like "
            f"nn.Conv2d(C, D, kernel_size={fine_size}, stride={fine_size}); got nn.Linear({patch_embed.in_features}, "
            f"{patch_embed.out_features}), which acts on the last dimension"
        )
    if isinstance(patch_embed, nn.Conv2d):
        if tuple(patch_embed.stride) != (fine_size, fine_size):
            raise ValueError(
                f"{owner}: patch_embed must have stride fine_size={fine_size}, got stride {tuple(patch_embed.stride)}"
            )
        return patch_embed.in_channels
    return None


def _is_patchwise(patch_embed: nn.Module, fine_size: int) -> TypeGuard[nn.Conv2d]:
    """Whether ``patch_embed`` is a plain non-overlapping patch convolution (then only used patches are embedded)."""
    return (
        type(patch_embed) is nn.Conv2d
        and tuple(patch_embed.kernel_size) == (fine_size, fine_size)
        and tuple(patch_embed.stride) == (fine_size, fine_size)
        and tuple(patch_embed.padding) == (0, 0)
        and tuple(patch_embed.dilation) == (1, 1)
        and patch_embed.groups == 1
    )


def _limit_splits(split: Tensor, scores: Tensor | None, allowed: int) -> tuple[Tensor, Tensor]:
    """Keep at most ``allowed`` splits per image, the highest ``scores`` first; return (kept, un-split)."""
    b = split.shape[0]
    flat = split.reshape(b, -1)
    regions = flat.shape[1]
    steps = torch.arange(regions, device=split.device)
    if scores is None:  # no confidence given: the earliest regions (raster order) keep their splits
        key = (-steps).to(torch.float32).expand(b, regions)
    else:
        key = scores.detach().reshape(b, regions).to(torch.float32)
    key = key.masked_fill(~flat, float("-inf"))
    order = torch.argsort(key, dim=1, descending=True, stable=True)
    rank = torch.empty_like(order).scatter_(1, order, steps.expand(b, regions))
    kept = flat & (rank < allowed)
    return kept.reshape(split.shape), (flat & ~kept).reshape(split.shape)


def _mixed_tokens(
    images: Tensor,
    mask: Tensor,
    patch_embed: nn.Module,
    pos_embed: Tensor | None,
    *,
    coarse_size: int,
    fine_size: int,
    embed_norm: nn.Module | None,
    max_tokens: int | None,
    budget: int | float | None,
    scores: Tensor | None,
    packed: bool,
    owner: str = "mixed_scale_tokens",
) -> tuple[MixedTokens, Tensor | None, PackedLayout | None]:
    """Mixed tokens, and with ``packed=True`` also the packed tokens ``(N, D)`` and their layout."""
    ratio = check_patch_sizes(owner, coarse_size, fine_size)
    in_channels = _check_patch_embed(owner, patch_embed, fine_size)
    rh, rw = check_images(owner, images, in_channels, coarse_size)
    b = images.shape[0]
    check_mask(owner, mask, b, (rh, rw))
    if max_tokens is not None:
        check_positive_int(owner, "max_tokens", max_tokens)
    if pos_embed is not None and not isinstance(pos_embed, Tensor):
        raise TypeError(f"{owner}: pos_embed must be a torch.Tensor or None, got {type(pos_embed).__name__}")
    if scores is not None and (not isinstance(scores, Tensor) or tuple(scores.shape) != tuple(mask.shape)):
        got = tuple(scores.shape) if isinstance(scores, Tensor) else type(scores).__name__
        raise ValueError(f"{owner}: scores must have the shape of mask, {tuple(mask.shape)}, got {got}")
    gh, gw = rh * ratio, rw * ratio
    cells, regions, extra = gh * gw, rh * rw, ratio * ratio - 1
    device = images.device
    k = resolve_budget(owner, budget, regions)
    if k is not None and max_tokens is not None:
        raise ValueError(
            f"{owner}: give budget or max_tokens, not both (got budget={budget!r}, max_tokens={max_tokens})"
        )

    split = mask if mask.dtype == torch.bool else mask > 0.5  # (B, Rh, Rw)
    unsplit = None
    total = None
    if k is not None:
        length = regions + extra * k
        total = b * length
        if images.device.type == "cpu" and not torch.compiler.is_compiling():
            counts = split.reshape(b, -1).sum(1)
            if bool((counts != k).any()):
                raise ValueError(
                    f"{owner}: budget={budget!r} means exactly {k} split regions in every image, got "
                    f"{counts.tolist()} (use MixedScaleGate's budget mode)"
                )
    elif max_tokens is not None:
        length = max_tokens
        allowed = max(0, max_tokens - regions) // extra
        if allowed < regions:  # un-split the least confident regions until every image fits
            split, unsplit = _limit_splits(split, scores, allowed)
    else:
        length = None
    split_cells = split.repeat_interleave(ratio, 1).repeat_interleave(ratio, 2)  # (B, Gh, Gw)
    # A cell starts a token if its region is split, or if it is the top-left cell of a kept region.
    top_left = torch.zeros(gh, gw, dtype=torch.bool, device=device)
    top_left[::ratio, ::ratio] = True
    starts = (split_cells | top_left).reshape(b, cells)
    order = torch.cumsum(starts, dim=1) - 1  # index in the sequence of each starting cell
    full_lengths = starts.sum(dim=1)
    if length is None:
        total, length = torch.stack([full_lengths.sum(), full_lengths.max()]).tolist()  # the one synchronisation
    lengths = full_lengths.clamp(max=length)
    valid_start = starts & (order < length)
    cell_ids = torch.arange(b * cells, device=device)

    # The source cell of every slot: packed (N slots, image after image) or padded (B * T slots).
    layout = None
    if packed or total is not None:  # packed slots (then padded by a scatter when asked)
        if total is None:
            total = int(lengths.sum())  # max_tokens with packed output: one synchronisation
        flat_valid = valid_start.reshape(-1)
        slot = torch.where(flat_valid, torch.cumsum(flat_valid, 0) - 1, total)
        src = torch.zeros(total + 1, dtype=torch.long, device=device).scatter(0, slot, cell_ids)[:total]
        layout = packed_layout(lengths, length, total)
        slot_valid = None
    else:
        dest = torch.where(valid_start, order, length) + (length + 1) * torch.arange(b, device=device)[:, None]
        src = torch.zeros(b * (length + 1), dtype=torch.long, device=device).scatter(0, dest.reshape(-1), cell_ids)
        src = src.view(b, length + 1)[:, :length].reshape(-1)
        slot_valid = (torch.arange(length, device=device)[None, :] < lengths[:, None]).reshape(-1)
    image = torch.div(src, cells, rounding_mode="floor")
    cell = src - image * cells
    row = torch.div(cell, gw, rounding_mode="floor")
    col = cell - row * gw
    region = torch.div(row, ratio, rounding_mode="floor") * rw + torch.div(col, ratio, rounding_mode="floor")
    is_fine = split_cells.reshape(-1).index_select(0, src)

    pooled = F.avg_pool2d(images, ratio)  # coarse patches resized to the fine size (area averaging)
    if _is_patchwise(patch_embed, fine_size):
        # Embed only the patches that become tokens: a fine patch for split regions, the resized coarse patch
        # for kept ones; the convolution of a single patch is a matrix product.
        c, f = images.shape[1], fine_size
        fine_pix = images.reshape(b, c, gh, f, gw, f)[image, :, row, :, col, :]  # (S, C, f, f)
        rrow, rcol = torch.div(row, ratio, rounding_mode="floor"), torch.div(col, ratio, rounding_mode="floor")
        coarse_pix = pooled.reshape(b, c, rh, f, rw, f)[image, :, rrow, :, rcol, :]
        pix = torch.where(is_fine[:, None, None, None], fine_pix, coarse_pix).reshape(src.shape[0], -1)
        weight = patch_embed.weight.reshape(patch_embed.out_channels, -1)
        tokens = F.linear(pix, weight, patch_embed.bias)
    else:  # a general embedding: run it on the whole image and on the resized one, keep what is used
        fine_all = _embed(patch_embed, images, (gh, gw), owner).reshape(b * cells, -1)
        coarse_all = _embed(patch_embed, pooled, (rh, rw), owner).reshape(b * regions, -1)
        tokens = torch.where(
            is_fine[:, None], fine_all.index_select(0, src), coarse_all.index_select(0, image * regions + region)
        )
    if embed_norm is not None:
        tokens = embed_norm(tokens)
    if mask.dtype != torch.bool and mask.requires_grad:
        # Straight-through: factors exactly 1 in the forward pass; an un-split region keeps m - 1 = 0.
        m = mask.to(tokens.dtype)
        if unsplit is not None:
            m = m - unsplit.to(tokens.dtype)
        m = m.reshape(-1).index_select(0, image * regions + region)
        tokens = tokens * torch.where(is_fine, m, 1.0 - m).unsqueeze(-1)
    if pos_embed is not None:
        pos = _pos_grid(pos_embed, (gh, gw), owner)
        if pos.shape[-1] != tokens.shape[-1]:
            raise ValueError(
                f"{owner}: pos_embed has embedding size {pos.shape[-1]} but patch_embed gives {tokens.shape[-1]}"
            )
        pos_coarse = F.avg_pool2d(pos.permute(2, 0, 1).unsqueeze(0), ratio)[0].permute(1, 2, 0)
        table = torch.cat([pos.reshape(cells, -1), pos_coarse.reshape(regions, -1)]).to(tokens.dtype)
        tokens = tokens + table.index_select(0, torch.where(is_fine, cell, cells + region))

    order_grid = order.reshape(b, gh, gw)
    region_token = order_grid[:, ::ratio, ::ratio].repeat_interleave(ratio, 1).repeat_interleave(ratio, 2)
    fine_to_token = torch.where(split_cells, order_grid, region_token).clamp(max=length)
    truncated = full_lengths > length
    if unsplit is not None:
        truncated = truncated | unsplit.reshape(b, -1).any(1)
    padding_mask = torch.arange(length, device=device).unsqueeze(0) >= lengths.unsqueeze(1)
    if layout is not None:
        padded_tokens, positions, fine_flags = unpack(tokens, layout), unpack(cell, layout), unpack(is_fine, layout)
    else:
        assert slot_valid is not None  # set whenever layout is None
        padded_tokens = torch.where(slot_valid[:, None], tokens, 0.0).view(b, length, -1)
        positions = torch.where(slot_valid, cell, 0).view(b, length)
        fine_flags = (is_fine & slot_valid).view(b, length)
    out = MixedTokens(
        tokens=padded_tokens,
        padding_mask=padding_mask,
        lengths=lengths,
        positions=positions,
        is_fine=fine_flags,
        fine_to_token=fine_to_token,
        truncated=truncated,
        grid_size=(gh, gw),
        fine_size=fine_size,
        coarse_size=coarse_size,
    )
    return out, (tokens if packed else None), (layout if packed else None)


def mixed_scale_tokens(
    images: Tensor,
    mask: Tensor,
    patch_embed: nn.Module,
    pos_embed: Tensor | None,
    *,
    coarse_size: int = 32,
    fine_size: int = 16,
    embed_norm: nn.Module | None = None,
    max_tokens: int | None = None,
    budget: int | float | None = None,
    scores: Tensor | None = None,
) -> MixedTokens:
    r"""Build the mixed-scale token sequences of a batch of images (functional form of the tokenizer).

    Coarse token of region $r$: ``embed(area_resize(patch_r, fine_size))`` plus the mean of the position
    embeddings of the $(S_c/S_f)^2$ fine cells it covers. Fine token: ``embed(fine patch)`` plus its
    position embedding. Sequences are padded to a common length ``T`` (Havtorn et al., "MSViT", ICCV Workshops
    2023, arXiv 2307.02321).

    **Straight-through gradients.** When ``mask`` is a floating tensor that requires grad (the gate's
    `GateOutput.mask` in training), the content of every fine token is
    multiplied by its region's mask value and that of every coarse token by one minus it. These factors are
    exactly 1 in the forward pass and give the gate the gradient of the task loss with respect to its decision.

    **Only used patches are embedded.** With a plain ``nn.Conv2d`` patch embedding (kernel and stride
    ``fine_size``, no padding, dilation or groups) the fine patches of split regions and the resized coarse
    patches of kept regions are gathered and embedded as one matrix product, so the embedding costs what the
    tokens cost. Any other module runs on the whole image and the resized image, and the used cells are kept.

    **Synchronisation.** With ``max_tokens=None`` the padded length ``T`` is the largest token count in the
    batch, which must be read on the host: one device synchronisation per call (unavoidable for a
    data-dependent shape). A fixed ``max_tokens`` avoids it: ``T = max_tokens``. An image with more tokens
    **un-splits its least confident splits** (lowest ``scores``; without scores, the last splits in raster order)
    until it fits, so every pixel stays covered; only when even its all-coarse sequence is longer than
    ``max_tokens`` are its last tokens, in spatial order, dropped. Both are reported in
    `MixedTokens.truncated`. ``max_tokens`` equal to the all-fine count ``(H / Sf) * (W / Sf)`` never
    truncates. In the **budget mode** (``budget``) every image has exactly
    ``regions + ((Sc / Sf)^2 - 1) k`` tokens: no padding and no synchronisation. The mask must then split
    exactly ``k`` regions of every image (as `MixedScaleGate` does with the same
    ``budget``); this is checked on CPU tensors outside ``torch.compile`` (elsewhere it would cost a
    synchronisation). A NaN in a floating mask is refused on the same terms.

    Args:
        images: Images ``(B, C, H, W)``, ``H`` and ``W`` multiples of ``coarse_size``.
        mask: Split decisions ``(B, H / Sc, W / Sc)``: bool, or floating with 1 = split (values above 0.5
            split).
        patch_embed: The fine patch embedding, a module mapping ``(B, C, h, w)`` to ``(B, D, h / Sf, w / Sf)``,
            typically ``nn.Conv2d(C, D, kernel_size=Sf, stride=Sf)``.
        pos_embed: The fine grid of position embeddings, shape ``(Gh, Gw, D)``, ``(1, Gh, Gw, D)``,
            ``(Gh * Gw, D)`` or ``(1, Gh * Gw, D)`` with ``(Gh, Gw) = (H / Sf, W / Sf)``; ``None`` adds none.
        coarse_size: Side of a coarse patch in pixels.
        fine_size: Side of a fine patch in pixels (the stride of ``patch_embed``).
        embed_norm: Optional token-wise module applied to the patch embeddings before the position
            embeddings are added (the ``norm`` of a timm ``PatchEmbed``).
        max_tokens: Fixed padded length (see above), or ``None`` for the batch's largest token count.
        budget: Regions split in every image, an int ``k`` or a float fraction of the regions (rounded): the
            budget mode (see above); ``None`` for free masks. Not together with ``max_tokens``.
        scores: Confidence of every split, ``(B, H / Sc, W / Sc)`` (the gate's logits), for ``max_tokens``.

    Returns:
        A `MixedTokens`.

    Shape:
        - images: ``(B, C, H, W)``; mask: ``(B, H / Sc, W / Sc)``.
        - tokens: ``(B, T, D)``, ``T`` the largest token count, ``max_tokens``, or ``regions + 3 k`` with a
          budget (for ``Sc = 2 Sf``).

    Example:
        >>> import torch
        >>> from torch import nn
        >>> from gbs_loss.msvit import mixed_scale_tokens
        >>> embed = nn.Conv2d(3, 8, kernel_size=16, stride=16)
        >>> pos = torch.zeros(4, 4, 8)
        >>> mask = torch.tensor([[[1.0, 0.0], [0.0, 0.0]], [[0.0, 0.0], [0.0, 0.0]]])
        >>> out = mixed_scale_tokens(torch.randn(2, 3, 64, 64), mask, embed, pos)
        >>> out.tokens.shape, out.lengths.tolist()
        (torch.Size([2, 7, 8]), [7, 4])
    """
    return _mixed_tokens(
        images,
        mask,
        patch_embed,
        pos_embed,
        coarse_size=coarse_size,
        fine_size=fine_size,
        embed_norm=embed_norm,
        max_tokens=max_tokens,
        budget=budget,
        scores=scores,
        packed=False,
    )[0]


class MixedScaleTokenizer(nn.Module):
    r"""Module form of `mixed_scale_tokens`: holds the patch embedding and the position-embedding grid.

    MSViT's mixed-scale tokenization (Havtorn, Royer, Blankevoort, Ehteshami Bejnordi, "MSViT: Dynamic
    Mixed-Scale Tokenization for Vision Transformers", ICCV Workshops 2023, arXiv 2307.02321): a coarse token is
    the fine patch embedding of the coarse patch resized (area averaging) to the fine size, with the mean of the
    position embeddings of the fine cells it covers; fine tokens are the usual ones. See
    `mixed_scale_tokens` for the straight-through gradients to the gate and the one host synchronisation
    (avoided with a fixed ``max_tokens``).

    Args:
        patch_embed: The fine patch embedding (``nn.Conv2d(C, D, kernel_size=Sf, stride=Sf)`` or any module
            mapping ``(B, C, h, w)`` to ``(B, D, h / Sf, w / Sf)``); shared, not copied.
        pos_embed: The fine grid of position embeddings (see `mixed_scale_tokens` for the accepted
            shapes), or ``None``. An ``nn.Parameter`` is registered as a parameter, another tensor as a buffer.
            A grid passed to `forward` takes precedence.
        coarse_size: Side of a coarse patch in pixels.
        fine_size: Side of a fine patch in pixels.
        embed_norm: Optional token-wise module applied to the patch embeddings (before the position embeddings).
        max_tokens: Fixed padded length, or ``None`` for the batch's largest token count; images with more
            tokens un-split their least confident regions (see `mixed_scale_tokens`).
        budget: Budget mode: every mask splits exactly this many regions per image (an int, or a float fraction
            of the regions), so that the batch is dense with no padding and no host synchronisation (see
            `mixed_scale_tokens`); ``None`` for free masks. Not together with ``max_tokens``.

    Shape:
        - images: ``(B, C, H, W)``; mask: ``(B, H / Sc, W / Sc)``.
        - Output: `MixedTokens` with ``tokens`` of shape ``(B, T, D)``.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> from gbs_loss.msvit import MixedScaleGate, MixedScaleTokenizer
        >>> gate = MixedScaleGate().eval()
        >>> tokenizer = MixedScaleTokenizer(nn.Conv2d(3, 192, 16, stride=16), nn.Parameter(torch.zeros(14, 14, 192)))
        >>> images = torch.randn(2, 3, 224, 224)
        >>> mask = gate(images).mask
        >>> out = tokenizer(images, mask)
        >>> bool((out.lengths == 49 + 3 * mask.sum((1, 2)).long()).all())
        True
    """

    pos_embed: Tensor | None

    def __init__(
        self,
        patch_embed: nn.Module,
        pos_embed: Tensor | None = None,
        coarse_size: int = 32,
        fine_size: int = 16,
        embed_norm: nn.Module | None = None,
        max_tokens: int | None = None,
        budget: int | float | None = None,
    ) -> None:
        super().__init__()
        owner = type(self).__name__
        self.ratio = check_patch_sizes(owner, coarse_size, fine_size)
        if not isinstance(patch_embed, nn.Module):
            raise TypeError(f"{owner}: patch_embed must be an nn.Module, got {type(patch_embed).__name__}")
        if isinstance(patch_embed, nn.Conv2d) and tuple(patch_embed.stride) != (fine_size, fine_size):
            raise ValueError(
                f"{owner}: patch_embed must have stride fine_size={fine_size}, got stride {tuple(patch_embed.stride)}"
            )
        if max_tokens is not None:
            check_positive_int(owner, "max_tokens", max_tokens)
        resolve_budget(owner, budget, None)
        if budget is not None and max_tokens is not None:
            raise ValueError(
                f"{owner}: give budget or max_tokens, not both (got budget={budget!r}, max_tokens={max_tokens})"
            )
        if embed_norm is not None and not isinstance(embed_norm, nn.Module):
            raise TypeError(f"{owner}: embed_norm must be an nn.Module or None, got {type(embed_norm).__name__}")
        self.patch_embed = patch_embed
        self.embed_norm = embed_norm
        if pos_embed is None or isinstance(pos_embed, nn.Parameter):
            self.pos_embed = pos_embed
        elif isinstance(pos_embed, Tensor):
            self.register_buffer("pos_embed", pos_embed)
        else:
            raise TypeError(f"{owner}: pos_embed must be a torch.Tensor or None, got {type(pos_embed).__name__}")
        self.coarse_size = coarse_size
        self.fine_size = fine_size
        self.max_tokens = max_tokens
        self.budget = budget

    def forward(
        self, images: Tensor, mask: Tensor, pos_embed: Tensor | None = None, *, scores: Tensor | None = None
    ) -> MixedTokens:
        """Tokenize a batch of images under a split mask.

        Args:
            images: Images ``(B, C, H, W)``.
            mask: Split decisions ``(B, H / Sc, W / Sc)`` (for example
                `GateOutput.mask`).
            pos_embed: A fine position-embedding grid to use instead of the stored one.
            scores: Confidence of every split ``(B, H / Sc, W / Sc)`` (the gate's logits), used by ``max_tokens``
                to un-split the least confident regions first.

        Returns:
            A `MixedTokens`.
        """
        return mixed_scale_tokens(
            images,
            mask,
            self.patch_embed,
            self.pos_embed if pos_embed is None else pos_embed,
            coarse_size=self.coarse_size,
            fine_size=self.fine_size,
            embed_norm=self.embed_norm,
            max_tokens=self.max_tokens,
            budget=self.budget,
            scores=scores,
        )

    def extra_repr(self) -> str:
        return (
            f"coarse_size={self.coarse_size}, fine_size={self.fine_size}, max_tokens={self.max_tokens}, "
            f"budget={self.budget!r}"
        )
