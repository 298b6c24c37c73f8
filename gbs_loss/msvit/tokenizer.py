r"""The mixed-scale tokenizer of MSViT: coarse tokens where the gate keeps a region, fine tokens where it splits.

Havtorn, Royer, Blankevoort, Ehteshami Bejnordi, "MSViT: Dynamic Mixed-Scale Tokenization for Vision
Transformers", ICCV Workshops 2023, arXiv 2307.02321. Given images, the gate's hard mask (one 0/1 value per
coarse region), a fine patch embedding (the ``Conv2d`` of stride :math:`S_f` of a ViT) and the ViT's grid of fine
position embeddings, every coarse region becomes either

* one **coarse token**: the fine patch embedding of the coarse patch resized to the fine size (area averaging,
  :math:`S_c / S_f` times smaller), plus the mean of the position embeddings of the fine positions it covers; or
* :math:`(S_c / S_f)^2` **fine tokens**: the usual patch embeddings plus position embeddings.

Every pixel is covered by exactly one token and nothing is dropped, unlike token pruning. With
:math:`S_c = 2 S_f` an image of :math:`R` regions of which :math:`s` are split has :math:`R + 3 s` tokens.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gbs_loss.msvit._validation import check_images, check_mask, check_patch_sizes, check_positive_int

__all__ = ["MixedScaleTokenizer", "MixedTokens", "mixed_scale_tokens"]


class MixedTokens(NamedTuple):
    """A padded batch of mixed-scale token sequences and what is needed to map tokens back to the image.

    Tokens are in a stable spatial order: sorted by the raster index, on the fine grid, of their top-left fine
    cell. With an all-fine mask this is the usual ViT order; with an all-coarse mask it is the raster order of
    the coarse grid.

    Attributes:
        tokens: ``(B, T, D)`` token embeddings (patch embedding plus position embedding); zeros at padding.
        padding_mask: ``(B, T)`` bool, ``True`` at padding (the convention of ``src_key_padding_mask`` in
            :class:`torch.nn.TransformerEncoder`).
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
        its :math:`(S_c / S_f)^2` cells). Cells whose token was cut off by ``max_tokens`` receive zeros.

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


def _embed(
    patch_embed: nn.Module, embed_norm: nn.Module | None, images: Tensor, grid: tuple[int, int], owner: str
) -> Tensor:
    """Apply the patch embedding; return channels-last ``(B, gh, gw, D)``."""
    out = patch_embed(images)
    if not isinstance(out, Tensor) or out.dim() != 4 or tuple(out.shape[2:]) != grid:
        got = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
        raise ValueError(
            f"{owner}: patch_embed must map (B, C, H, W) images to (B, D, H / fine_size, "
            f"W / fine_size) = (B, D, {grid[0]}, {grid[1]}), got {got}"
        )
    out = out.permute(0, 2, 3, 1)
    if embed_norm is not None:
        out = embed_norm(out)
    return out


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
) -> MixedTokens:
    r"""Build the mixed-scale token sequences of a batch of images (functional form of the tokenizer).

    Coarse token of region :math:`r`: ``embed(area_resize(patch_r, fine_size))`` plus the mean of the position
    embeddings of the :math:`(S_c/S_f)^2` fine cells it covers. Fine token: ``embed(fine patch)`` plus its
    position embedding. Sequences are padded to a common length ``T`` (Havtorn et al., "MSViT", ICCV Workshops
    2023, arXiv 2307.02321).

    **Straight-through gradients.** When ``mask`` is a floating tensor that requires grad (the gate's
    :attr:`GateOutput.mask <gbs_loss.msvit.GateOutput.mask>` in training), the content of every fine token is
    multiplied by its region's mask value and that of every coarse token by one minus it. These factors are
    exactly 1 in the forward pass and give the gate the gradient of the task loss with respect to its decision.

    **Synchronisation.** With ``max_tokens=None`` the padded length ``T`` is the largest token count in the
    batch, which must be read on the host: one device synchronisation per call (unavoidable for a
    data-dependent shape). A fixed ``max_tokens`` avoids it: ``T = max_tokens``; images with more tokens lose
    the last ones in spatial order (reported in :attr:`MixedTokens.truncated`). ``max_tokens`` equal to the
    all-fine count ``(H / Sf) * (W / Sf)`` never truncates.

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
        embed_norm: Optional module applied to the channels-last patch embeddings before the position
            embeddings are added (the ``norm`` of a timm ``PatchEmbed``).
        max_tokens: Fixed padded length (see above), or ``None`` for the batch's largest token count.

    Returns:
        A :class:`MixedTokens`.

    Shape:
        - images: ``(B, C, H, W)``; mask: ``(B, H / Sc, W / Sc)``.
        - tokens: ``(B, T, D)``, ``T`` the largest token count or ``max_tokens``.

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
    owner = "mixed_scale_tokens"
    ratio = check_patch_sizes(owner, coarse_size, fine_size)
    if not isinstance(patch_embed, nn.Module):
        raise TypeError(
            f"{owner}: patch_embed must be an nn.Module (for example nn.Conv2d(C, D, "
            f"kernel_size={fine_size}, stride={fine_size})), got {type(patch_embed).__name__}"
        )
    in_channels = None
    if isinstance(patch_embed, nn.Conv2d):
        in_channels = patch_embed.in_channels
        if tuple(patch_embed.stride) != (fine_size, fine_size):
            raise ValueError(
                f"{owner}: patch_embed must have stride fine_size={fine_size}, got stride {tuple(patch_embed.stride)}"
            )
    rh, rw = check_images(owner, images, in_channels, coarse_size)
    b = images.shape[0]
    check_mask(owner, mask, b, (rh, rw))
    if max_tokens is not None:
        check_positive_int(owner, "max_tokens", max_tokens)
    gh, gw = rh * ratio, rw * ratio
    cells = gh * gw
    device = images.device

    split = mask if mask.dtype == torch.bool else mask > 0.5  # (B, Rh, Rw)
    split_cells = split.repeat_interleave(ratio, 1).repeat_interleave(ratio, 2)  # (B, Gh, Gw)

    fine = _embed(patch_embed, embed_norm, images, (gh, gw), owner)  # (B, Gh, Gw, D)
    coarse = _embed(patch_embed, embed_norm, F.avg_pool2d(images, ratio), (rh, rw), owner)  # (B, Rh, Rw, D)
    if mask.dtype != torch.bool and mask.requires_grad:
        m = mask.to(fine.dtype).unsqueeze(-1)
        fine = fine * m.repeat_interleave(ratio, 1).repeat_interleave(ratio, 2)
        coarse = coarse * (1.0 - m)
    if pos_embed is not None:
        if not isinstance(pos_embed, Tensor):
            raise TypeError(f"{owner}: pos_embed must be a torch.Tensor or None, got {type(pos_embed).__name__}")
        pos = _pos_grid(pos_embed, (gh, gw), owner)
        if pos.shape[-1] != fine.shape[-1]:
            raise ValueError(
                f"{owner}: pos_embed has embedding size {pos.shape[-1]} but patch_embed gives {fine.shape[-1]}"
            )
        pos_coarse = F.avg_pool2d(pos.permute(2, 0, 1).unsqueeze(0), ratio)[0].permute(1, 2, 0)
        fine = fine + pos
        coarse = coarse + pos_coarse
    coarse_cells = coarse.repeat_interleave(ratio, 1).repeat_interleave(ratio, 2)  # (B, Gh, Gw, D)
    per_cell = torch.where(split_cells.unsqueeze(-1), fine, coarse_cells).reshape(b, cells, -1)

    # A cell starts a token if its region is split, or if it is the top-left cell of a kept region.
    top_left = torch.zeros(gh, gw, dtype=torch.bool, device=device)
    top_left[::ratio, ::ratio] = True
    starts = (split_cells | top_left).reshape(b, cells)
    order = torch.cumsum(starts, dim=1) - 1  # index in the sequence of each starting cell
    lengths = starts.sum(dim=1)
    if max_tokens is None:
        length = int(lengths.max())  # the one host synchronisation (data-dependent padded shape)
    else:
        length = max_tokens
    dest = torch.where(starts & (order < length), order, length)  # non-starting / cut cells go to slot T

    d = per_cell.shape[-1]
    tokens = per_cell.new_zeros(b, length + 1, d).scatter(1, dest.unsqueeze(-1).expand(b, cells, d), per_cell)
    cell_index = torch.arange(cells, device=device).expand(b, cells)
    positions = torch.zeros(b, length + 1, dtype=torch.long, device=device).scatter(1, dest, cell_index)
    is_fine = torch.zeros(b, length + 1, dtype=torch.bool, device=device).scatter(
        1, dest, split_cells.reshape(b, cells)
    )

    order_grid = order.reshape(b, gh, gw)
    region_token = order_grid[:, ::ratio, ::ratio].repeat_interleave(ratio, 1).repeat_interleave(ratio, 2)
    fine_to_token = torch.where(split_cells, order_grid, region_token).clamp(max=length)

    clipped = lengths.clamp(max=length)
    padding_mask = torch.arange(length, device=device).unsqueeze(0) >= clipped.unsqueeze(1)
    return MixedTokens(
        tokens=tokens[:, :length],
        padding_mask=padding_mask,
        lengths=clipped,
        positions=positions[:, :length].masked_fill(padding_mask, 0),
        is_fine=is_fine[:, :length] & ~padding_mask,
        fine_to_token=fine_to_token,
        truncated=lengths > length,
        grid_size=(gh, gw),
        fine_size=fine_size,
        coarse_size=coarse_size,
    )


class MixedScaleTokenizer(nn.Module):
    r"""Module form of :func:`mixed_scale_tokens`: holds the patch embedding and the position-embedding grid.

    MSViT's mixed-scale tokenization (Havtorn, Royer, Blankevoort, Ehteshami Bejnordi, "MSViT: Dynamic
    Mixed-Scale Tokenization for Vision Transformers", ICCV Workshops 2023, arXiv 2307.02321): a coarse token is
    the fine patch embedding of the coarse patch resized (area averaging) to the fine size, with the mean of the
    position embeddings of the fine cells it covers; fine tokens are the usual ones. See
    :func:`mixed_scale_tokens` for the straight-through gradients to the gate and the one host synchronisation
    (avoided with a fixed ``max_tokens``).

    Args:
        patch_embed: The fine patch embedding (``nn.Conv2d(C, D, kernel_size=Sf, stride=Sf)`` or any module
            mapping ``(B, C, h, w)`` to ``(B, D, h / Sf, w / Sf)``); shared, not copied.
        pos_embed: The fine grid of position embeddings (see :func:`mixed_scale_tokens` for the accepted
            shapes), or ``None``. An ``nn.Parameter`` is registered as a parameter, another tensor as a buffer.
            A grid passed to :meth:`forward` takes precedence.
        coarse_size: Side of a coarse patch in pixels.
        fine_size: Side of a fine patch in pixels.
        embed_norm: Optional module applied to the channels-last patch embeddings.
        max_tokens: Fixed padded length, or ``None`` for the batch's largest token count.

    Shape:
        - images: ``(B, C, H, W)``; mask: ``(B, H / Sc, W / Sc)``.
        - Output: :class:`MixedTokens` with ``tokens`` of shape ``(B, T, D)``.

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

    def forward(self, images: Tensor, mask: Tensor, pos_embed: Tensor | None = None) -> MixedTokens:
        """Tokenize a batch of images under a split mask.

        Args:
            images: Images ``(B, C, H, W)``.
            mask: Split decisions ``(B, H / Sc, W / Sc)`` (for example :attr:`GateOutput.mask
                <gbs_loss.msvit.GateOutput.mask>`).
            pos_embed: A fine position-embedding grid to use instead of the stored one.

        Returns:
            A :class:`MixedTokens`.
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
        )

    def extra_repr(self) -> str:
        return f"coarse_size={self.coarse_size}, fine_size={self.fine_size}, max_tokens={self.max_tokens}"
