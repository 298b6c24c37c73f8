r"""End-to-end MSViT examples: the gate and the mixed-scale tokenizer in front of a Vision Transformer.

* `MixedScaleViT` -- a small ViT in plain PyTorch (the layers of a `torch.nn.TransformerEncoder`)
  running on the mixed tokens, packed (no compute on padding), padded, or in the per-image budget mode;
* `TimmMixedScaleViT` -- the same around a ``timm`` ``VisionTransformer``; it lives in
  `gbs_loss.msvit.timm` and is re-exported here.

Havtorn, Royer, Blankevoort, Ehteshami Bejnordi, "MSViT: Dynamic Mixed-Scale Tokenization for Vision
Transformers", ICCV Workshops 2023, arXiv 2307.02321.
"""

from __future__ import annotations

import math
from typing import Any, Literal, NamedTuple

import torch
from torch import Tensor, nn
from torch.utils import checkpoint as _checkpoint

from gbs_loss.msvit._packed import packed_layout, run_encoder_layers, unpack
from gbs_loss.msvit._validation import check_patch_sizes, check_positive_int, resolve_budget
from gbs_loss.msvit.gate import GateOutput, MixedScaleGate
from gbs_loss.msvit.tokenizer import MixedScaleTokenizer, MixedTokens, _mixed_tokens

__all__ = ["MixedScaleViT", "ViTOutput"]


class ViTOutput(NamedTuple):
    """What the mixed-scale ViTs return.

    Attributes:
        logits: ``(B, num_classes)`` classification logits.
        features: ``(B, T, D)`` output tokens of the encoder without the class (and register) tokens, in the
            order of `tokens`; values at padding are meaningless. ``tokens.to_grid(features)`` maps them
            to the fine grid for dense tasks.
        gate: The gate's `GateOutput` (its ``soft`` values go to the Generalized
            Batch-Shaping loss), or ``None`` when a mask was given to ``forward``.
        tokens: The `MixedTokens` the encoder ran on.

    Example:
        >>> import torch
        >>> model = MixedScaleViT(num_classes=10, image_size=64, embed_dim=32, depth=1, num_heads=2).eval()
        >>> out = model(torch.randn(2, 3, 64, 64), mask=torch.ones(2, 2, 2, dtype=torch.bool))  # all fine
        >>> out.logits.shape, out.features.shape, out.gate is None
        (torch.Size([2, 10]), torch.Size([2, 16, 32]), True)
        >>> out.tokens.to_grid(out.features).shape
        torch.Size([2, 4, 4, 32])
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

    The gate picks, per coarse region, one coarse token or $(S_c/S_f)^2$ fine tokens; the
    `MixedScaleTokenizer` embeds them with the ViT's own patch embedding and position
    embeddings; a class token is prepended and pre-norm Transformer layers (a `torch.nn.TransformerEncoder`)
    run on them (Havtorn et al., "MSViT", ICCV Workshops 2023, arXiv 2307.02321). In training, the gate's
    straight-through mask carries the task loss's gradient to the gate; add the Generalized Batch-Shaping loss of
    ``output.gate.soft`` (`msvit_gate_loss`) to control how many regions split.

    **Execution** (``execution``; the results agree to float32 rounding):

    * ``"packed"``: no compute on padding. Only the tokens each image has are embedded; the token-wise layers
      (LayerNorm, QKV and output projections, MLP) run on the ``sum(lengths)`` tokens of the whole batch and
      attention runs per image (`gbs_loss.msvit._packed`). One host synchronisation per batch, for the
      data-dependent token count.
    * ``"padded"``: every image padded to the longest one (or ``max_tokens``) and
      `torch.nn.TransformerEncoder` with ``src_key_padding_mask``; no host synchronisation with a fixed
      ``max_tokens``.
    * ``"auto"`` (default): ``"padded"`` with a fixed ``max_tokens``, ``"packed"`` otherwise.

    **Budget mode** (``budget``): every image splits exactly its ``k`` most confident regions (the gate's top-k
    logits, straight-through) and has exactly ``regions + ((Sc / Sf)^2 - 1) k`` tokens (49 + 3k for 224-pixel
    images, 32 and 16-pixel patches): a dense batch, no padding, no host synchronisation, one graph for
    ``torch.compile(fullgraph=True)``.

    The parameters (and ``state_dict`` keys) are those of a ``TransformerEncoder`` whatever the execution.

    Args:
        num_classes: Number of classes of the linear head.
        image_size: Side of the (square) input images in pixels; fixes the position-embedding grid.
        coarse_size: Side of a coarse patch in pixels.
        fine_size: Side of a fine patch in pixels.
        in_channels: Number of image channels.
        embed_dim: Token width $D$.
        depth: Number of encoder layers.
        num_heads: Attention heads; must divide ``embed_dim``.
        mlp_ratio: Width of the feed-forward layers relative to ``embed_dim``, a number > 0.
        dropout: Dropout of the encoder layers, in ``[0, 1)``.
        gate: The gate; a default `MixedScaleGate` when ``None``. Its ``coarse_size``,
            ``fine_size`` and ``in_channels`` must match.
        max_tokens: Fixed padded length of the token sequences (no host synchronisation; images with more tokens
            un-split their least confident regions, see `mixed_scale_tokens`), or ``None``
            for the batch's largest token count.
        budget: Regions to split per image (int) or their fraction (float in ``[0, 1]``): the budget mode above;
            ``None`` lets the gate threshold every region. Not together with ``max_tokens``.
        execution: ``"auto"``, ``"packed"`` or ``"padded"`` (see above).
        attention: Attention of the packed execution: ``"auto"`` (jagged nested tensors on CUDA, padded attention
            elsewhere), ``"nested"`` or ``"padded"`` (see `gbs_loss.msvit._packed.packed_attention`).

    Shape:
        - Input: ``(B, C, image_size, image_size)``; optional mask ``(B, image_size / Sc, image_size / Sc)``.
        - Output: `ViTOutput` with ``logits`` of shape ``(B, num_classes)``.

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
        >>> budgeted = MixedScaleViT(num_classes=10, image_size=64, embed_dim=32, depth=2, num_heads=2, budget=1)
        >>> budgeted(images).tokens.lengths.tolist()  # 4 regions, one of them split in every image
        [7, 7, 7, 7]
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
        budget: int | float | None = None,
        execution: Literal["auto", "packed", "padded"] = "auto",
        attention: Literal["auto", "nested", "padded"] = "auto",
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
        if isinstance(mlp_ratio, bool) or not isinstance(mlp_ratio, (int, float)):
            raise TypeError(
                f"{owner}: mlp_ratio must be a number > 0 (e.g. 4.0), got {type(mlp_ratio).__name__} {mlp_ratio!r}"
            )
        if not (math.isfinite(mlp_ratio) and mlp_ratio > 0 and int(embed_dim * mlp_ratio) >= 1):
            raise ValueError(
                f"{owner}: mlp_ratio must be a finite number > 0 with int(embed_dim * mlp_ratio) >= 1, got "
                f"{mlp_ratio!r}"
            )
        if isinstance(dropout, bool) or not isinstance(dropout, (int, float)):
            raise TypeError(f"{owner}: dropout must be a number in [0, 1), got {type(dropout).__name__} {dropout!r}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"{owner}: dropout must be a number in [0, 1), got {dropout!r}")
        if max_tokens is not None:
            check_positive_int(owner, "max_tokens", max_tokens)
        regions = (image_size // coarse_size) ** 2
        resolve_budget(owner, budget, regions)
        if budget is not None and max_tokens is not None:
            raise ValueError(
                f"{owner}: give budget or max_tokens, not both (got budget={budget!r}, max_tokens={max_tokens})"
            )
        if execution not in ("auto", "packed", "padded"):
            raise ValueError(f"{owner}: execution must be 'auto', 'packed' or 'padded', got {execution!r}")
        if attention not in ("auto", "nested", "padded"):
            raise ValueError(f"{owner}: attention must be 'auto', 'nested' or 'padded', got {attention!r}")
        if gate is None:
            gate = MixedScaleGate(coarse_size, fine_size, in_channels)
        elif not isinstance(gate, MixedScaleGate):
            raise TypeError(f"{owner}: gate must be a MixedScaleGate or None, got {type(gate).__name__}")
        elif (gate.coarse_size, gate.fine_size, gate.in_channels) != (coarse_size, fine_size, in_channels):
            raise ValueError(
                f"{owner}: the gate has coarse_size={gate.coarse_size}, fine_size={gate.fine_size} and in_channels="
                f"{gate.in_channels}, expected {coarse_size}, {fine_size} and {in_channels}"
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
        self.budget = budget
        self.execution = execution
        self.attention = attention
        self.grad_checkpointing = False

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute every encoder layer in the backward pass (less memory, more time), as timm's models do."""
        self.grad_checkpointing = bool(enable)

    def _final_norm(self, x: Tensor) -> Tensor:
        norm = self.encoder.norm
        assert norm is not None  # built with a LayerNorm
        out: Tensor = norm(x)
        return out

    def _mode(self) -> str:
        if self.execution != "auto":
            return self.execution
        return "padded" if self.tokenizer.max_tokens is not None and self.budget is None else "packed"

    def forward(self, images: Tensor, mask: Tensor | None = None) -> ViTOutput:
        """Classify a batch of images on mixed-scale tokens.

        Args:
            images: Images ``(B, C, image_size, image_size)``.
            mask: Split decisions to use instead of the gate's (e.g. all ones for an all-fine ViT); in budget
                mode it must split exactly the budget's count of regions in every image.

        Returns:
            A `ViTOutput`; ``features`` is in the padded layout of ``tokens`` whatever the execution.
        """
        owner = type(self).__name__
        if isinstance(images, Tensor) and images.dim() == 4 and tuple(images.shape[-2:]) != (self.image_size,) * 2:
            raise ValueError(
                f"{owner}: images must be {self.image_size}x{self.image_size} (the image_size the model was built "
                f"for, which fixes its position embeddings), got {images.shape[-2]}x{images.shape[-1]}"
            )
        budget = self.budget
        scores = None
        if mask is None:
            gate_out = self.gate(images, budget=budget)
            mask, scores = gate_out.mask, gate_out.logits
        else:
            gate_out = None
        mode = self._mode()
        tok = self.tokenizer
        tokens, packed, layout = _mixed_tokens(
            images,
            mask,
            tok.patch_embed,
            tok.pos_embed,
            coarse_size=tok.coarse_size,
            fine_size=tok.fine_size,
            embed_norm=tok.embed_norm,
            max_tokens=None if budget is not None else tok.max_tokens,
            budget=budget,
            scores=scores,
            packed=mode == "packed",
            owner=owner,
        )
        b = images.shape[0]
        cls = self.cls_token.to(tokens.tokens.dtype)
        if mode == "padded":
            x = torch.cat([cls.expand(b, -1, -1), tokens.tokens], dim=1)
            padding = torch.cat([tokens.padding_mask.new_zeros(b, 1), tokens.padding_mask], dim=1)
            if self.grad_checkpointing and torch.is_grad_enabled():
                for layer in self.encoder.layers:
                    x = _checkpoint.checkpoint(layer, x, src_key_padding_mask=padding, use_reentrant=False)
                x = self._final_norm(x)
            else:
                x = self.encoder(x, src_key_padding_mask=padding)
            return ViTOutput(self.head(x[:, 0]), x[:, 1:], gate_out, tokens)
        assert packed is not None and layout is not None
        d = packed.shape[-1]
        t = layout.length
        if layout.dense:  # every image has the same length: a dense batch
            x = torch.cat([cls.expand(b, -1, -1), packed.view(b, t, d)], dim=1).reshape(b * (t + 1), d)
            with_cls = packed_layout(layout.lengths + 1, t + 1, b * (t + 1))
        else:
            with_cls = packed_layout(layout.lengths + 1, t + 1, layout.total + b)
            token_slot = torch.arange(layout.total, device=packed.device) + layout.image + 1
            x = packed.new_zeros(layout.total + b, d).index_copy(0, token_slot, packed)
            x = x.index_copy(0, with_cls.offsets[:-1], cls.reshape(1, d).expand(b, d))
        x = run_encoder_layers(
            self.encoder.layers, x, with_cls, checkpoint=self.grad_checkpointing, attention=self.attention
        )
        x = self._final_norm(x)
        if layout.dense:
            x = x.view(b, t + 1, d)
            return ViTOutput(self.head(x[:, 0]), x[:, 1:], gate_out, tokens)
        features = unpack(x.index_select(0, token_slot), layout)
        return ViTOutput(self.head(x.index_select(0, with_cls.offsets[:-1])), features, gate_out, tokens)

    def extra_repr(self) -> str:
        return f"image_size={self.image_size}, budget={self.budget!r}, execution={self.execution!r}"


def __getattr__(name: str) -> Any:
    # TimmMixedScaleViT moved to gbs_loss.msvit.timm; kept importable from here (lazily, to avoid an import cycle).
    if name == "TimmMixedScaleViT":
        from gbs_loss.msvit.timm import TimmMixedScaleViT

        return TimmMixedScaleViT
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
