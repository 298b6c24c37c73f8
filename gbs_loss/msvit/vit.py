r"""End-to-end MSViT examples: the gate and the mixed-scale tokenizer in front of a Vision Transformer.

* :class:`MixedScaleViT` -- a small ViT in plain PyTorch (:class:`torch.nn.TransformerEncoder` with
  ``src_key_padding_mask``) running on the mixed tokens;
* :class:`TimmMixedScaleViT` -- the same around a ``timm`` ``VisionTransformer``, reusing its patch embedding,
  position embedding, class/register tokens, blocks, norms and head (``timm`` is optional).

Havtorn, Royer, Blankevoort, Ehteshami Bejnordi, "MSViT: Dynamic Mixed-Scale Tokenization for Vision
Transformers", ICCV Workshops 2023, arXiv 2307.02321.
"""

from __future__ import annotations

import inspect
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn

from gbs_loss.msvit._validation import check_patch_sizes, check_positive_int
from gbs_loss.msvit.gate import GateOutput, MixedScaleGate
from gbs_loss.msvit.tokenizer import MixedScaleTokenizer, MixedTokens, mixed_scale_tokens

__all__ = ["MixedScaleViT", "TimmMixedScaleViT", "ViTOutput"]


class ViTOutput(NamedTuple):
    """What the mixed-scale ViTs return.

    Attributes:
        logits: ``(B, num_classes)`` classification logits.
        features: ``(B, T, D)`` output tokens of the encoder without the class (and register) tokens, in the
            order of :attr:`tokens`; values at padding are meaningless. ``tokens.to_grid(features)`` maps them
            to the fine grid for dense tasks.
        gate: The gate's :class:`~gbs_loss.msvit.GateOutput` (its ``soft`` values go to the Generalized
            Batch-Shaping loss), or ``None`` when a mask was given to ``forward``.
        tokens: The :class:`~gbs_loss.msvit.MixedTokens` the encoder ran on.
    """

    logits: Tensor
    features: Tensor
    gate: GateOutput | None
    tokens: MixedTokens


def _gate_and_mask(gate: MixedScaleGate, images: Tensor, mask: Tensor | None) -> tuple[GateOutput | None, Tensor]:
    if mask is not None:
        return None, mask
    out = gate(images)
    return out, out.mask


class MixedScaleViT(nn.Module):
    r"""A small Vision Transformer in plain PyTorch on MSViT's mixed-scale tokens.

    The gate picks, per coarse region, one coarse token or :math:`(S_c/S_f)^2` fine tokens; the
    :class:`~gbs_loss.msvit.MixedScaleTokenizer` embeds them with the ViT's own patch embedding and position
    embeddings; a class token is prepended and a pre-norm :class:`torch.nn.TransformerEncoder` runs on the padded
    batch with ``src_key_padding_mask``, so padding never changes the result of an image (Havtorn et al.,
    "MSViT", ICCV Workshops 2023, arXiv 2307.02321). In training, the gate's straight-through mask carries the
    task loss's gradient to the gate; add the Generalized Batch-Shaping loss of ``output.gate.soft``
    (:func:`~gbs_loss.msvit.msvit_gate_loss`) to control how many regions split.

    Args:
        num_classes: Number of classes of the linear head.
        image_size: Side of the (square) input images in pixels; fixes the position-embedding grid.
        coarse_size: Side of a coarse patch in pixels.
        fine_size: Side of a fine patch in pixels.
        in_channels: Number of image channels.
        embed_dim: Token width :math:`D`.
        depth: Number of encoder layers.
        num_heads: Attention heads; must divide ``embed_dim``.
        mlp_ratio: Width of the feed-forward layers relative to ``embed_dim``.
        dropout: Dropout of the encoder layers.
        gate: The gate; a default :class:`~gbs_loss.msvit.MixedScaleGate` when ``None``.
        max_tokens: Fixed padded length of the token sequences (no host synchronisation; see
            :func:`~gbs_loss.msvit.mixed_scale_tokens`), or ``None`` for the batch's largest token count.

    Shape:
        - Input: ``(B, C, image_size, image_size)``; optional mask ``(B, image_size / Sc, image_size / Sc)``.
        - Output: :class:`ViTOutput` with ``logits`` of shape ``(B, num_classes)``.

    Example:
        >>> import torch
        >>> from gbs_loss.msvit import MixedScaleViT, msvit_gate_loss
        >>> model = MixedScaleViT(num_classes=10, image_size=64, embed_dim=32, depth=2, num_heads=2)
        >>> criterion = msvit_gate_loss((2, 2), target=0.3)
        >>> images, labels = torch.randn(4, 3, 64, 64), torch.randint(10, (4,))
        >>> out = model(images)
        >>> loss = torch.nn.functional.cross_entropy(out.logits, labels) + criterion(out.gate.soft)
        >>> loss.backward()
        >>> out.logits.shape, model.gate.mlp[0].weight.grad is not None
        (torch.Size([4, 10]), True)
    """

    def __init__(
        self,
        num_classes: int = 1000,
        image_size: int = 224,
        coarse_size: int = 32,
        fine_size: int = 16,
        in_channels: int = 3,
        embed_dim: int = 192,
        depth: int = 12,
        num_heads: int = 3,
        mlp_ratio: float = 4.0,
        dropout: float = 0.0,
        gate: MixedScaleGate | None = None,
        max_tokens: int | None = None,
    ) -> None:
        super().__init__()
        owner = type(self).__name__
        check_patch_sizes(owner, coarse_size, fine_size)
        for name, value in (
            ("num_classes", num_classes),
            ("image_size", image_size),
            ("in_channels", in_channels),
            ("embed_dim", embed_dim),
            ("depth", depth),
            ("num_heads", num_heads),
        ):
            check_positive_int(owner, name, value)
        if image_size % coarse_size:
            raise ValueError(f"{owner}: image_size must be a multiple of coarse_size={coarse_size}, got {image_size}")
        if embed_dim % num_heads:
            raise ValueError(f"{owner}: num_heads must divide embed_dim={embed_dim}, got {num_heads}")
        if gate is None:
            gate = MixedScaleGate(coarse_size, fine_size, in_channels)
        elif not isinstance(gate, MixedScaleGate):
            raise TypeError(f"{owner}: gate must be a MixedScaleGate or None, got {type(gate).__name__}")
        elif gate.coarse_size != coarse_size or gate.in_channels != in_channels:
            raise ValueError(
                f"{owner}: the gate has coarse_size={gate.coarse_size} and in_channels="
                f"{gate.in_channels}, expected {coarse_size} and {in_channels}"
            )
        self.gate = gate
        grid = image_size // fine_size
        pos_embed = nn.Parameter(torch.empty(grid, grid, embed_dim))
        nn.init.trunc_normal_(pos_embed, std=0.02)
        self.tokenizer = MixedScaleTokenizer(
            nn.Conv2d(in_channels, embed_dim, kernel_size=fine_size, stride=fine_size),
            pos_embed,
            coarse_size=coarse_size,
            fine_size=fine_size,
            max_tokens=max_tokens,
        )
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        layer = nn.TransformerEncoderLayer(
            embed_dim,
            num_heads,
            int(embed_dim * mlp_ratio),
            dropout,
            activation="gelu",
            batch_first=True,
            norm_first=True,
        )
        self.encoder = nn.TransformerEncoder(layer, depth, norm=nn.LayerNorm(embed_dim), enable_nested_tensor=False)
        self.head = nn.Linear(embed_dim, num_classes)
        self.image_size = image_size

    def forward(self, images: Tensor, mask: Tensor | None = None) -> ViTOutput:
        """Classify a batch of images on mixed-scale tokens.

        Args:
            images: Images ``(B, C, image_size, image_size)``.
            mask: Split decisions to use instead of the gate's (e.g. all ones for an all-fine ViT).

        Returns:
            A :class:`ViTOutput`.
        """
        gate_out, mask = _gate_and_mask(self.gate, images, mask)
        tokens = self.tokenizer(images, mask)
        b = images.shape[0]
        x = torch.cat([self.cls_token.expand(b, -1, -1).to(tokens.tokens.dtype), tokens.tokens], dim=1)
        padding = torch.cat([tokens.padding_mask.new_zeros(b, 1), tokens.padding_mask], dim=1)
        x = self.encoder(x, src_key_padding_mask=padding)
        return ViTOutput(self.head(x[:, 0]), x[:, 1:], gate_out, tokens)


def _identity(x: Tensor) -> Tensor:
    return x


def _accepts_attn_mask(block: nn.Module) -> bool:
    try:
        return "attn_mask" in inspect.signature(block.forward).parameters
    except (TypeError, ValueError):  # pragma: no cover - exotic callables
        return False


class TimmMixedScaleViT(nn.Module):
    r"""MSViT around a ``timm`` ``VisionTransformer``: its own embeddings, blocks and head on mixed-scale tokens.

    The fine patch embedding is the ViT's ``patch_embed.proj`` (with ``patch_embed.norm``), the fine
    position-embedding grid is ``pos_embed`` without its class-token entries (whose entries go to the class and
    register tokens, as in timm); coarse tokens are built as in :func:`~gbs_loss.msvit.mixed_scale_tokens`.
    The blocks get an additive attention mask that hides the padding when they accept ``attn_mask`` (recent
    timm); otherwise every image runs alone at its own length (one host synchronisation per batch). Pooling
    ``"token"`` takes the class token, ``"avg"`` averages the real (non-padding) patch tokens; patch dropout is
    not applied. Havtorn et al., "MSViT", ICCV Workshops 2023, arXiv 2307.02321.

    ``timm`` is an optional dependency: ``pip install timm``. With an all-fine mask and in evaluation mode the
    output equals ``vit(images)``.

    Args:
        vit: A ``timm.models.vision_transformer.VisionTransformer`` with a fixed image size
            (``dynamic_img_size=False``), a ``Conv2d`` patch embedding and ``global_pool`` ``"token"`` or
            ``"avg"``.
        gate: The gate; a default :class:`~gbs_loss.msvit.MixedScaleGate` when ``None``.
        coarse_size: Side of a coarse patch in pixels; twice the ViT's patch size when ``None``.
        max_tokens: Fixed padded length of the token sequences, or ``None`` (see
            :func:`~gbs_loss.msvit.mixed_scale_tokens`).

    Shape:
        - Input: ``(B, C, H, W)`` at the ViT's image size; optional mask ``(B, H / Sc, W / Sc)``.
        - Output: :class:`ViTOutput`.

    Example:
        >>> import torch
        >>> import timm  # doctest: +SKIP
        >>> from gbs_loss.msvit import TimmMixedScaleViT
        >>> vit = timm.create_model("vit_small_patch16_224", num_classes=10)  # doctest: +SKIP
        >>> model = TimmMixedScaleViT(vit)  # doctest: +SKIP
        >>> model(torch.randn(2, 3, 224, 224)).logits.shape  # doctest: +SKIP
        torch.Size([2, 10])
    """

    def __init__(
        self,
        vit: nn.Module,
        gate: MixedScaleGate | None = None,
        coarse_size: int | None = None,
        max_tokens: int | None = None,
    ) -> None:
        super().__init__()
        owner = type(self).__name__
        patch_embed = getattr(vit, "patch_embed", None)
        proj = getattr(patch_embed, "proj", None)
        if not isinstance(proj, nn.Conv2d):
            raise TypeError(
                f"{owner}: vit must be a timm VisionTransformer whose patch_embed.proj is an "
                f"nn.Conv2d, got {type(vit).__name__} with patch_embed.proj "
                f"{type(proj).__name__}"
            )
        if getattr(vit, "dynamic_img_size", False):
            raise ValueError(
                f"{owner}: vit must have a fixed image size (dynamic_img_size=False), got dynamic_img_size=True"
            )
        stride = tuple(proj.stride)
        if stride[0] != stride[1] or tuple(proj.kernel_size) != stride:
            raise ValueError(
                f"{owner}: the patch embedding must have square, non-overlapping patches, got "
                f"kernel_size={tuple(proj.kernel_size)} and stride={stride}"
            )
        fine_size = stride[0]
        coarse_size = 2 * fine_size if coarse_size is None else coarse_size
        check_patch_sizes(owner, coarse_size, fine_size)
        pool = getattr(vit, "global_pool", "token")
        if pool not in ("token", "avg") or getattr(vit, "attn_pool", None) is not None:
            raise ValueError(f"{owner}: vit.global_pool must be 'token' or 'avg', got {pool!r}")
        if gate is None:
            gate = MixedScaleGate(coarse_size, fine_size, proj.in_channels)
        elif not isinstance(gate, MixedScaleGate):
            raise TypeError(f"{owner}: gate must be a MixedScaleGate or None, got {type(gate).__name__}")
        if max_tokens is not None:
            check_positive_int(owner, "max_tokens", max_tokens)
        self.vit = vit
        self.gate = gate
        self.coarse_size = coarse_size
        self.fine_size = fine_size
        self.max_tokens = max_tokens
        self.masked_blocks = all(_accepts_attn_mask(block) for block in vit.blocks)

    def _module(self, name: str) -> Any:
        """An optional layer of the timm model (``norm_pre``, ``fc_norm``, ...), the identity where it has none."""
        module = getattr(self.vit, name, None)
        return _identity if module is None else module

    def _prefix(self, b: int) -> tuple[Tensor | None, int]:
        """Class and register tokens (with their position embeddings when timm adds them) and their count."""
        vit = self.vit
        parts = [
            t.expand(b, -1, -1)
            for t in (getattr(vit, "cls_token", None), getattr(vit, "reg_token", None))
            if t is not None
        ]
        if not parts:
            return None, 0
        prefix = torch.cat(parts, dim=1)
        count = prefix.shape[1]
        if vit.pos_embed is not None and not getattr(vit, "no_embed_class", False):
            prefix = prefix + vit.pos_embed[:, :count]
        return prefix, count

    def forward(self, images: Tensor, mask: Tensor | None = None) -> ViTOutput:
        """Classify a batch of images on mixed-scale tokens with the timm ViT's own layers.

        Args:
            images: Images ``(B, C, H, W)`` at the ViT's image size.
            mask: Split decisions to use instead of the gate's.

        Returns:
            A :class:`ViTOutput`.
        """
        vit = self.vit
        gate_out, mask = _gate_and_mask(self.gate, images, mask)
        b = images.shape[0]
        prefix, count = self._prefix(b)
        pos = vit.pos_embed
        if pos is not None and not getattr(vit, "no_embed_class", False):
            pos = pos[:, count:]
        tokens = mixed_scale_tokens(
            images,
            mask,
            vit.patch_embed.proj,
            pos,
            coarse_size=self.coarse_size,
            fine_size=self.fine_size,
            embed_norm=getattr(vit.patch_embed, "norm", None),
            max_tokens=self.max_tokens,
        )
        x = tokens.tokens if prefix is None else torch.cat([prefix.to(tokens.tokens.dtype), tokens.tokens], 1)
        x = self._module("norm_pre")(self._module("pos_drop")(x))
        padding = torch.cat([tokens.padding_mask.new_zeros(b, count), tokens.padding_mask], dim=1)
        if self.masked_blocks:
            bias = torch.zeros(padding.shape, dtype=x.dtype, device=x.device).masked_fill(padding, float("-inf"))
            bias = bias[:, None, None, :]
            for block in vit.blocks:
                x = block(x, attn_mask=bias)
        else:
            rows = []
            for i, length in enumerate((tokens.lengths + count).tolist()):  # one synchronisation per batch
                row = vit.blocks(x[i : i + 1, :length])
                rows.append(torch.cat([row, row.new_zeros(1, x.shape[1] - length, row.shape[2])], dim=1))
            x = torch.cat(rows, dim=0)
        x = self._module("norm")(x)
        features = x[:, count:]
        if vit.global_pool == "token":
            pooled = x[:, 0]
        else:
            keep = (~tokens.padding_mask).unsqueeze(-1).to(x.dtype)
            pooled = (features * keep).sum(1) / keep.sum(1).clamp(min=1.0)
        pooled = self._module("head_drop")(self._module("fc_norm")(pooled))
        return ViTOutput(vit.head(pooled), features, gate_out, tokens)
