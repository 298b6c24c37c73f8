r"""Variable-length ("packed") execution of Transformer blocks: no compute on padding.

Public entry points (stable signatures; the timm adapter and `MixedScaleViT` call them):

    run_timm_blocks(blocks, x, lengths, *, checkpoint=False, rope=None, attention="auto") -> Tensor
        # blocks: an iterable of timm ``Block`` modules (vision_transformer.Block: norm1, attn.{qkv, q_norm,
        #         k_norm, attn_drop, norm, gate, proj, proj_drop}, ls1, drop_path1, norm2, mlp, ls2, drop_path2)
        # x:       (B, T, D) padded tokens, the real tokens of image b first (prefix tokens included) and
        #          anything at t >= lengths[b]
        # lengths: (B,) int64 real tokens per image (prefix tokens included), or None when every row is full
        #          (no padding: no packing and no host synchronisation, e.g. the budget mode)
        # returns: (B, T, D) in the padded layout, zeros at padding
    run_timm_blocks_packed(blocks, x, layout, *, checkpoint=False, rope=None, attention="auto") -> Tensor
        # the same on packed tokens x: (N, D) -> (N, D), with a PackedLayout from packed_layout(...)
    run_encoder_layers(layers, x, layout, *, checkpoint=False, attention="auto") -> Tensor
        # the same for torch.nn.TransformerEncoderLayer (batch_first, pre-norm) on packed tokens (N, D)
    packed_layout(lengths, length=None, total=None) -> PackedLayout
    pack(x, layout) -> Tensor        # (B, T, *F) -> (N, *F)
    unpack(x, layout) -> Tensor      # (N, *F) -> (B, T, *F), zeros at padding
    packed_attention(q, k, v, layout, *, dropout_p=0.0, scale=None, attention="auto") -> Tensor
        # q, k, v: (N, H, E) -> (N, H, E), attention within each image only

How it works. The token-wise layers (LayerNorm, the QKV and output projections, the MLP, LayerScale) run on the
``N = sum(lengths)`` real tokens of the whole batch, stored image after image as one ``(N, D)`` matrix, instead
of ``B * T`` padded ones. Attention, the only layer that mixes tokens, runs per image without padding:

* ``attention="nested"``: the packed queries, keys and values become jagged nested tensors
  (`torch.nested.nested_tensor_from_jagged`) for `torch.nn.functional.scaled_dot_product_attention`,
  which has fused variable-length kernels on CUDA;
* ``attention="padded"``: the queries, keys and values are scattered into the padded ``(B, H, T, E)`` layout for
  attention alone, with a key-padding mask, and the result is gathered back (the unpad / pad idea of
  FlashAttention's variable-length interface, Dao et al., "FlashAttention", NeurIPS 2022, arXiv 2205.14135);
* ``attention="auto"`` (default): ``"nested"`` on CUDA, ``"padded"`` elsewhere. On CPU, PyTorch 2.13 and 2.14
  run jagged SDPA through a slow per-image fallback (measured 4x slower than the padded kernel for batch 32 of
  50 to 196 tokens, 6 heads of 64).

When every image is full (``lengths=None``, or a layout with ``total == B * T``) nothing is gathered or masked:
the blocks run on the dense batch.

Synchronisation. `packed_layout` needs the total and maximal lengths on the host: one device
synchronisation (a single ``.tolist()`` of both) unless they are given. Nothing else synchronises.

Equality. The results equal those of the padded blocks with a key-padding mask up to float32 rounding (the
tests check it against timm's own forward and `torch.nn.TransformerEncoder`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Literal, NamedTuple, Protocol, TypeVar, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils import checkpoint as _checkpoint

__all__ = [
    "PackedLayout",
    "pack",
    "packed_attention",
    "packed_layout",
    "run_encoder_layers",
    "run_timm_blocks",
    "run_timm_blocks_packed",
    "unpack",
]

Attention = Literal["auto", "nested", "padded"]


class PackedLayout(NamedTuple):
    """Where the packed tokens of a batch live in the padded ``(B, T)`` layout.

    Attributes:
        index: ``(N,)`` int64 flat index ``b * T + t`` of every real token, image after image; ``None`` when the
            batch has no padding (``N == B * T``): then packing is a reshape.
        lengths: ``(B,)`` int64 real tokens per image.
        offsets: ``(B + 1,)`` int64 start of every image in the packed tokens (and ``N`` at the end).
        image: ``(N,)`` int64 image of every packed token.
        position: ``(N,)`` int64 position of every packed token in its image's row.
        batch: ``B``.
        length: ``T``, the padded length.
        total: ``N``, the number of real tokens.

    Example:
        >>> import torch
        >>> layout = packed_layout(torch.tensor([2, 3]))
        >>> layout.image.tolist(), layout.position.tolist(), layout.offsets.tolist()
        ([0, 0, 1, 1, 1], [0, 1, 0, 1, 2], [0, 2, 5])
        >>> layout.dense, packed_layout(torch.tensor([3, 3])).dense
        (False, True)
    """

    index: Tensor | None  # type: ignore[assignment]  # the field shadows tuple.index on purpose (public name)
    lengths: Tensor
    offsets: Tensor
    image: Tensor
    position: Tensor
    batch: int
    length: int
    total: int

    @property
    def dense(self) -> bool:
        """``True`` when no image has padding: packing and unpacking are reshapes.

        Example:
            >>> import torch
            >>> packed_layout(torch.tensor([3, 3])).dense, packed_layout(torch.tensor([3, 2])).dense
            (True, False)
        """
        return self.index is None


def packed_layout(lengths: Tensor, length: int | None = None, total: int | None = None) -> PackedLayout:
    """The packed layout of a batch whose image ``b`` has ``lengths[b]`` real tokens at the front of its row.

    Args:
        lengths: ``(B,)`` integer tensor, every entry in ``[0, length]``.
        length: The padded length ``T``; ``lengths.max()`` when ``None``.
        total: ``N = lengths.sum()`` if the caller knows it (for example ``B * T`` with a fixed per-image token
            count); computed when ``None``.

    Returns:
        A `PackedLayout`. When ``length`` or ``total`` is missing, both are read on the host with a single
        synchronisation; with both given nothing synchronises.

    Example:
        >>> import torch
        >>> layout = packed_layout(torch.tensor([2, 3]))
        >>> layout.index.tolist(), layout.length, layout.total
        ([0, 1, 3, 4, 5], 3, 5)
    """
    if not isinstance(lengths, Tensor) or lengths.dim() != 1 or lengths.dtype.is_floating_point:
        got = f"shape {tuple(lengths.shape)}, dtype {lengths.dtype}" if isinstance(lengths, Tensor) else type(lengths)
        raise TypeError(f"packed_layout: lengths must be a 1-D integer tensor (B,), got {got}")
    lengths = lengths.long()
    batch = lengths.shape[0]
    if length is None or total is None:
        s, m = torch.stack([lengths.sum(), lengths.max()]).tolist()  # the one host synchronisation
        length = m if length is None else length
        total = s if total is None else total
    device = lengths.device
    offsets = torch.cat([lengths.new_zeros(1), torch.cumsum(lengths, 0)])
    if total == batch * length:
        image = torch.arange(batch, device=device).repeat_interleave(length)
        position = torch.arange(length, device=device).repeat(batch)
        return PackedLayout(None, lengths, offsets, image, position, batch, length, total)
    slot = torch.arange(total, device=device)
    image = torch.searchsorted(offsets[1:], slot, right=True)
    position = slot - offsets[image]
    return PackedLayout(image * length + position, lengths, offsets, image, position, batch, length, total)


def pack(x: Tensor, layout: PackedLayout) -> Tensor:
    """Gather the real tokens of a padded batch: ``(B, T, *F)`` to ``(N, *F)``.

    Args:
        x: ``(B, T, *F)`` padded tokens, image ``b``'s real tokens at ``t < lengths[b]``.
        layout: The batch's `PackedLayout`.

    Returns:
        ``(N, *F)``, image after image.

    Example:
        >>> import torch
        >>> x = torch.arange(6.0).reshape(2, 3, 1)  # image 0 has 2 real tokens, image 1 has 3
        >>> pack(x, packed_layout(torch.tensor([2, 3]))).flatten().tolist()
        [0.0, 1.0, 3.0, 4.0, 5.0]
    """
    flat = x.reshape(layout.batch * layout.length, *x.shape[2:])
    return flat if layout.index is None else flat.index_select(0, layout.index)


def unpack(x: Tensor, layout: PackedLayout) -> Tensor:
    """Scatter packed tokens back to the padded layout: ``(N, *F)`` to ``(B, T, *F)``, zeros at padding.

    Args:
        x: ``(N, *F)`` packed tokens.
        layout: Their `PackedLayout`.

    Returns:
        ``(B, T, *F)``.

    Example:
        >>> import torch
        >>> layout = packed_layout(torch.tensor([2, 3]))
        >>> unpack(torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0]), layout).tolist()
        [[1.0, 2.0, 0.0], [3.0, 4.0, 5.0]]
    """
    rest = x.shape[1:]
    if layout.index is None:
        return x.reshape(layout.batch, layout.length, *rest)
    out = x.new_zeros((layout.batch * layout.length, *rest)).index_copy(0, layout.index, x)
    return out.view(layout.batch, layout.length, *rest)


def _resolve_attention(attention: str, device: torch.device) -> str:
    if attention not in ("auto", "nested", "padded"):
        raise ValueError(f"attention must be 'auto', 'nested' or 'padded', got {attention!r}")
    if attention == "auto":
        return "nested" if device.type == "cuda" else "padded"
    return attention


def packed_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    layout: PackedLayout,
    *,
    dropout_p: float = 0.0,
    scale: float | None = None,
    attention: Attention = "auto",
) -> Tensor:
    r"""Scaled dot-product attention of packed tokens, every image attending to its own tokens only.

    $$
    \mathrm{out}_i = \sum_{j \in \mathrm{img}(i)} \mathrm{softmax}_j(s\, q_i \cdot k_j)\, v_j,
    \qquad s = E^{-1/2} \text{ unless given}
    $$

    Args:
        q: ``(N, H, E)`` packed queries.
        k: ``(N, H, E)`` packed keys.
        v: ``(N, H, Ev)`` packed values.
        layout: The batch's `PackedLayout`.
        dropout_p: Attention dropout probability (pass 0 in evaluation).
        scale: The softmax scale $s$; $E^{-1/2}$ when ``None``.
        attention: ``"nested"`` (jagged nested tensors), ``"padded"`` (scatter to the padded layout with a
            key-padding mask) or ``"auto"`` (nested on CUDA, padded elsewhere).

    Returns:
        ``(N, H, Ev)``.

    Example:
        >>> import torch
        >>> layout = packed_layout(torch.tensor([2, 3]))
        >>> q = torch.randn(5, 2, 4)
        >>> out = packed_attention(q, q, q, layout)
        >>> alone = torch.nn.functional.scaled_dot_product_attention(*(q[:2].transpose(0, 1),) * 3)
        >>> torch.allclose(out[:2], alone.transpose(0, 1), atol=1e-6)
        True
    """
    return _attend(torch.stack([q, k, v], dim=1), layout, dropout_p, scale, attention)


def _attend(qkv: Tensor, layout: PackedLayout, dropout_p: float, scale: float | None, attention: str) -> Tensor:
    """Attention per image of packed ``qkv`` ``(N, 3, H, E)``; returns ``(N, H, E)``."""
    b, t = layout.batch, layout.length
    n, _, h, e = qkv.shape
    if layout.index is None:  # no padding: the dense batch
        q, k, v = qkv.view(b, t, 3, h, e).permute(2, 0, 3, 1, 4).unbind(0)
        out = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p, scale=scale)
        return out.transpose(1, 2).reshape(n, h, e)
    if _resolve_attention(attention, qkv.device) == "nested":
        offsets = layout.offsets
        # SDPA wants nested inputs contiguous after the transpose: jagged views of contiguous (N, H, E) values.
        q, k, v = (
            torch.nested.nested_tensor_from_jagged(x.contiguous(), offsets).transpose(1, 2) for x in qkv.unbind(1)
        )
        out = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p, scale=scale)
        return out.transpose(1, 2).values()
    # Scatter straight into the (3, B, H, T, E) layout attention reads (zeros at padding: finite, masked keys),
    # and gather the (N, H, E) result straight out of SDPA's (B, H, T, E) output: one copy each way.
    image, position = layout.image, layout.position
    padded = qkv.new_zeros(3, b, h, t, e)
    padded[:, image, :, position, :] = qkv
    keep = torch.arange(t, device=qkv.device).unsqueeze(0) < layout.lengths.unsqueeze(1)
    q, k, v = padded.unbind(0)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=keep[:, None, None, :], dropout_p=dropout_p, scale=scale)
    return out[image, :, position, :]


def _is_identity(module: nn.Module | None) -> bool:
    return module is None or isinstance(module, nn.Identity)


def _tokenwise(module: nn.Module, x: Tensor) -> Tensor:
    """Apply a token-wise timm module to packed ``(N, D)`` tokens (called on ``(1, N, D)``, the shape it expects)."""
    out: Tensor = module(x.unsqueeze(0))
    return out.squeeze(0)


def _drop_path(module: nn.Module | None, x: Tensor, layout: PackedLayout) -> Tensor:
    """Stochastic depth per image on packed tokens (timm's ``DropPath`` draws one decision per sample)."""
    if module is None or isinstance(module, nn.Identity):
        return x
    p = getattr(module, "drop_prob", None)
    if p is None:  # not a per-sample module (e.g. nn.Dropout): token-wise
        return _tokenwise(module, x)
    if p == 0.0 or not module.training:
        return x
    keep = 1.0 - p
    decision = x.new_empty(layout.batch).bernoulli_(keep)
    if keep > 0.0 and getattr(module, "scale_by_keep", True):
        decision = decision / keep
    return x * decision.index_select(0, layout.image).unsqueeze(-1)


class _TimmAttention(Protocol):
    """The attributes of a timm ``Attention`` that are always read (the optional ones through ``getattr``)."""

    qkv: nn.Module
    proj: nn.Module
    num_heads: int
    head_dim: int
    training: bool


class _TimmBlock(Protocol):
    """The attributes of a timm ``vision_transformer.Block`` that are always read."""

    attn: _TimmAttention
    norm1: nn.Module
    norm2: nn.Module
    mlp: nn.Module


def _check_timm_block(block: nn.Module, i: int) -> _TimmBlock:
    attn = getattr(block, "attn", None)
    needed = ("norm1", "attn", "norm2", "mlp")
    missing = [name for name in needed if not isinstance(getattr(block, name, None), nn.Module)]
    if not missing:
        missing = [
            f"attn.{name}" for name in ("qkv", "proj") if not isinstance(getattr(attn, name, None), nn.Module)
        ] + [f"attn.{name}" for name in ("num_heads", "head_dim") if not isinstance(getattr(attn, name, None), int)]
    if missing:
        raise TypeError(
            f"run_timm_blocks: block {i} must be a timm vision_transformer.Block (norm1, attn with qkv, num_heads, "
            f"head_dim and proj, norm2, mlp), got {type(block).__name__} without {', '.join(missing)}"
        )
    return cast(_TimmBlock, block)


def _timm_block(block: _TimmBlock, x: Tensor, layout: PackedLayout, attention: str) -> Tensor:
    """One timm ``Block`` on packed tokens ``(N, D)``, through the block's own submodules."""
    attn = block.attn
    n = x.shape[0]
    h = _tokenwise(block.norm1, x)
    gate = getattr(attn, "gate", None)
    qkv = _tokenwise(attn.qkv, h).reshape(n, 3, attn.num_heads, attn.head_dim)
    q_norm, k_norm = getattr(attn, "q_norm", None), getattr(attn, "k_norm", None)
    if not (_is_identity(q_norm) and _is_identity(k_norm)):
        q, k, v = qkv.unbind(1)
        q = q if q_norm is None else q_norm(q)
        k = k if k_norm is None else k_norm(k)
        qkv = torch.stack([q, k, v], dim=1)
    drop = getattr(attn, "attn_drop", None)
    p = float(getattr(drop, "p", 0.0)) if attn.training else 0.0
    a = _attend(qkv, layout, p, None, attention).reshape(n, -1)
    norm = getattr(attn, "norm", None)
    a = a if norm is None else _tokenwise(norm, a)
    if gate is not None:
        a = a * _tokenwise(gate, h).sigmoid()
    a = _tokenwise(attn.proj, a)
    proj_drop = getattr(attn, "proj_drop", None)
    a = a if proj_drop is None else _tokenwise(proj_drop, a)
    ls1 = getattr(block, "ls1", None)
    a = a if ls1 is None else _tokenwise(ls1, a)
    x = x + _drop_path(getattr(block, "drop_path1", None), a, layout)
    m = _tokenwise(block.mlp, _tokenwise(block.norm2, x))
    ls2 = getattr(block, "ls2", None)
    m = m if ls2 is None else _tokenwise(ls2, m)
    return x + _drop_path(getattr(block, "drop_path2", None), m, layout)


_Block = TypeVar("_Block")


def _run(
    fn: Callable[[_Block, Tensor, PackedLayout, str], Tensor],
    blocks: Sequence[_Block],
    x: Tensor,
    layout: PackedLayout,
    attention: str,
    checkpoint: bool,
) -> Tensor:
    use_checkpoint = checkpoint and torch.is_grad_enabled()
    for block in blocks:
        if use_checkpoint:
            x = _checkpoint.checkpoint(fn, block, x, layout, attention, use_reentrant=False)
        else:
            x = fn(block, x, layout, attention)
    return x


def run_timm_blocks_packed(
    blocks: Iterable[nn.Module],
    x: Tensor,
    layout: PackedLayout,
    *,
    checkpoint: bool = False,
    rope: Tensor | None = None,
    attention: Attention = "auto",
) -> Tensor:
    """Run timm ``Block`` modules on packed tokens (see `run_timm_blocks`).

    Args:
        blocks: timm ``vision_transformer.Block`` modules, run in order.
        x: ``(N, D)`` packed tokens.
        layout: Their `PackedLayout`.
        checkpoint: Recompute every block in the backward pass (`torch.utils.checkpoint.checkpoint`,
            non-reentrant) when gradients are enabled.
        rope: Reserved for per-token rotary embeddings; must be ``None`` (timm's ``Block`` has no RoPE).
        attention: See `packed_attention`.

    Returns:
        ``(N, D)``.

    Example:
        >>> import torch
        >>> from timm.models.vision_transformer import Block  # doctest: +SKIP
        >>> blocks = [Block(32, 4).eval()]  # doctest: +SKIP
        >>> layout = packed_layout(torch.tensor([5, 3]))
        >>> run_timm_blocks_packed(blocks, torch.randn(8, 32), layout).shape  # doctest: +SKIP
        torch.Size([8, 32])
    """
    if rope is not None:
        raise NotImplementedError(
            "run_timm_blocks: rope must be None: timm's vision_transformer.Block takes no rotary embedding"
        )
    checked = [_check_timm_block(block, i) for i, block in enumerate(blocks)]
    return _run(_timm_block, checked, x, layout, _resolve_attention(attention, x.device), checkpoint)


def run_timm_blocks(
    blocks: Iterable[nn.Module],
    x: Tensor,
    lengths: Tensor | None,
    *,
    checkpoint: bool = False,
    rope: Tensor | None = None,
    attention: Attention = "auto",
) -> Tensor:
    """Run timm's own ``Block`` modules on the real tokens of a padded batch, without computing on padding.

    Calls every block's submodules (``norm1``, ``attn.qkv``, ``attn.q_norm``, ``attn.k_norm``, ``attn.attn_drop``
    (as the attention dropout probability), ``attn.norm``, ``attn.gate``, ``attn.proj``, ``attn.proj_drop``,
    ``ls1``, ``drop_path1``, ``norm2``, ``mlp``, ``ls2``, ``drop_path2``) on the packed tokens and attends per
    image (`packed_attention`); timm's code is not copied. ``DropPath`` draws one decision per image, as in
    timm. The result equals ``blocks(x)`` with a key-padding mask, to float32 rounding, on the real tokens.

    Args:
        blocks: timm ``vision_transformer.Block`` modules (``vit.blocks``), run in order.
        x: ``(B, T, D)`` padded tokens, image ``b``'s real tokens (prefix tokens included) at ``t < lengths[b]``.
        lengths: ``(B,)`` int64 real tokens per image, or ``None`` when no row has padding (then nothing is
            packed and nothing synchronises).
        checkpoint: Recompute every block in the backward pass (pass the model's ``grad_checkpointing``).
        rope: Reserved for per-token rotary embeddings; must be ``None``.
        attention: ``"auto"``, ``"nested"`` or ``"padded"`` (see `packed_attention`).

    Returns:
        ``(B, T, D)``, zeros at padding.

    Shape:
        - x: ``(B, T, D)``; lengths: ``(B,)``.
        - Output: ``(B, T, D)``.

    Example:
        >>> import torch
        >>> from timm.models.vision_transformer import Block  # doctest: +SKIP
        >>> blocks = torch.nn.Sequential(Block(32, 4), Block(32, 4)).eval()  # doctest: +SKIP
        >>> x, lengths = torch.randn(2, 5, 32), torch.tensor([5, 3])  # doctest: +SKIP
        >>> out = run_timm_blocks(blocks, x, lengths)  # doctest: +SKIP
        >>> torch.allclose(out[1, :3], blocks(x[1:, :3])[0], atol=1e-5)  # doctest: +SKIP
        True
    """
    if not isinstance(x, Tensor) or x.dim() != 3:
        got = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
        raise ValueError(f"run_timm_blocks: x must be a (B, T, D) tensor, got {got}")
    b, t = x.shape[:2]
    if lengths is None:
        layout = packed_layout(torch.full((b,), t, dtype=torch.long, device=x.device), t, b * t)
    else:
        if not isinstance(lengths, Tensor) or tuple(lengths.shape) != (b,):
            got = tuple(lengths.shape) if isinstance(lengths, Tensor) else type(lengths).__name__
            raise ValueError(f"run_timm_blocks: lengths must have shape (B,) = ({b},), got {got}")
        layout = packed_layout(lengths, t)
    out = run_timm_blocks_packed(blocks, pack(x, layout), layout, checkpoint=checkpoint, rope=rope, attention=attention)
    return unpack(out, layout)


def _encoder_layer(layer: nn.TransformerEncoderLayer, x: Tensor, layout: PackedLayout, attention: str) -> Tensor:
    """One `torch.nn.TransformerEncoderLayer` on packed tokens, through its own submodules."""

    def self_attention(h: Tensor) -> Tensor:
        mha = layer.self_attn
        n, heads = h.shape[0], mha.num_heads
        qkv = F.linear(h, mha.in_proj_weight, mha.in_proj_bias).reshape(n, 3, heads, -1)
        p = mha.dropout if mha.training else 0.0
        a = _attend(qkv, layout, p, None, attention).reshape(n, -1)
        out: Tensor = layer.dropout1(mha.out_proj(a))
        return out

    def feed_forward(h: Tensor) -> Tensor:
        out: Tensor = layer.dropout2(layer.linear2(layer.dropout(layer.activation(layer.linear1(h)))))
        return out

    if layer.norm_first:
        x = x + self_attention(layer.norm1(x))
        return x + feed_forward(layer.norm2(x))
    x = layer.norm1(x + self_attention(x))
    out: Tensor = layer.norm2(x + feed_forward(x))
    return out


def _check_encoder_layer(layer: nn.Module, i: int) -> nn.TransformerEncoderLayer:
    mha = getattr(layer, "self_attn", None)
    ok = (
        isinstance(layer, nn.TransformerEncoderLayer)
        and isinstance(mha, nn.MultiheadAttention)
        and mha._qkv_same_embed_dim
        and mha.in_proj_weight is not None
        and mha.bias_k is None
        and not mha.add_zero_attn
    )
    if not ok:
        raise TypeError(
            f"run_encoder_layers: layer {i} must be an nn.TransformerEncoderLayer whose self-attention has equal "
            f"query, key and value sizes, no bias_k/bias_v and no add_zero_attn, got {type(layer).__name__}"
        )
    return cast(nn.TransformerEncoderLayer, layer)


def run_encoder_layers(
    layers: Iterable[nn.Module],
    x: Tensor,
    layout: PackedLayout,
    *,
    checkpoint: bool = False,
    attention: Attention = "auto",
) -> Tensor:
    """Run `torch.nn.TransformerEncoderLayer` modules on packed tokens, attention per image.

    Equals `torch.nn.TransformerEncoder` on the padded batch with ``src_key_padding_mask`` (pre-norm or
    post-norm layers) on the real tokens, to float32 rounding, and keeps the layers' parameters (and so
    ``state_dict``) as they are.

    Args:
        layers: The encoder layers (``encoder.layers``).
        x: ``(N, D)`` packed tokens.
        layout: Their `PackedLayout`.
        checkpoint: Recompute every layer in the backward pass.
        attention: See `packed_attention`.

    Returns:
        ``(N, D)``.

    Example:
        >>> import torch
        >>> layer = torch.nn.TransformerEncoderLayer(16, 2, 32, 0.0, batch_first=True, norm_first=True)
        >>> layout = packed_layout(torch.tensor([3, 2]))
        >>> out = run_encoder_layers([layer], torch.randn(5, 16), layout)
        >>> out.shape
        torch.Size([5, 16])
    """
    checked = [_check_encoder_layer(layer, i) for i, layer in enumerate(layers)]
    return _run(_encoder_layer, checked, x, layout, _resolve_attention(attention, x.device), checkpoint)
