r"""Gathering a batch split over data-parallel processes, with gradients flowing back to each slice.

With data-parallel training (`torch.nn.parallel.DistributedDataParallel`, DDP) every process sees a
slice of the batch. A batch-level loss such as Batch-Shaping depends on the empirical CDF of the *whole*
batch, which no single slice has: `gather_batch` concatenates the slices of all processes along the
batch dimension, and its backward hands every process the gradient of its own slice.

## Gradient scaling

After the gather every process holds the same batch and computes the same loss $L$. DDP averages the
parameter gradients over the $W$ processes, that is, it trains on the mean of the per-process
objectives. The backward of `gather_batch` is the exact adjoint of the gather: the gradient reaching
process $r$'s slice is the *sum* over processes of the gradients of their losses with respect to that
slice (a reduce-scatter). Since all processes compute the same $L$, that is
$W\,\partial L / \partial x_r$, and DDP's division by $W$ turns the parameter gradients of the model that produced
$x_r$ into exactly those of one process training on the whole batch. Parameters that enter the loss
directly (the learned priors of `GeneralizedBatchShaping`) receive
$\partial L / \partial \phi$ on every process, which DDP's averaging leaves unchanged. Both are therefore the gradients
of a single process on the concatenated batch.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

__all__ = ["gather_batch"]

_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
_SHAPE_SLOTS = 8  # dimensions of the positions compared across processes (besides their count and product)

# torch >= 2.10 names the single-tensor collectives *_single; older releases call them *_tensor.
_all_gather_single: Any = getattr(dist, "all_gather_single", None) or getattr(dist, "all_gather_into_tensor", None)
_reduce_scatter_single: Any = getattr(dist, "reduce_scatter_single", None) or getattr(
    dist, "reduce_scatter_tensor", None
)


def _check_group(process_group: Any) -> None:
    """The group must be None (the default group) or a `torch.distributed.ProcessGroup`."""
    if not dist.is_available():
        raise RuntimeError("distributed=True needs torch.distributed, which this build of PyTorch does not have")
    if process_group is not None and not isinstance(process_group, dist.ProcessGroup):
        raise TypeError(
            f"process_group must be a torch.distributed.ProcessGroup or None (the default group), "
            f"got {type(process_group).__name__}"
        )


def _describe(x: Tensor) -> Tensor:
    """Batch size, dtype and positions of a batch-first tensor as a fixed-length integer vector."""
    positions = list(x.shape[1:])
    shown = (positions + [-1] * _SHAPE_SLOTS)[:_SHAPE_SLOTS]
    code = _DTYPES.index(x.dtype) if x.dtype in _DTYPES else len(_DTYPES)
    numel = 1
    for p in positions:
        numel *= p
    return torch.tensor([x.shape[0], code, len(positions), numel, *shown], dtype=torch.int64, device=x.device)


def _exchange_sizes(x: Tensor, group: Any, world: int, name: str) -> list[int]:
    """Every process's batch size; raises the same ``ValueError`` on every process if the rest differs."""
    mine = _describe(x)
    every = torch.empty(world * mine.numel(), dtype=mine.dtype, device=mine.device)
    _all_gather_single(every, mine, group=group)
    rows = every.reshape(world, -1).tolist()  # reads values: synchronises with an accelerator
    for rank, row in enumerate(rows):
        if row[1:] != rows[0][1:]:
            dtypes = [str(_DTYPES[r[1]]) if r[1] < len(_DTYPES) else "other" for r in (rows[0], row)]
            raise ValueError(
                f"{name} must have the same dtype and positions on every process (all but the batch size), "
                f"got dtype {dtypes[0]} and positions {_positions(rows[0])} on rank 0 but dtype {dtypes[1]} "
                f"and positions {_positions(row)} on rank {rank}"
            )
    return [row[0] for row in rows]


def _positions(row: list[int]) -> tuple[int, ...] | str:
    count = row[2]
    if count > _SHAPE_SLOTS:
        return f"<{count} dimensions, {row[3]} positions>"
    return tuple(row[4 : 4 + count])


class _GatherBatch(torch.autograd.Function):
    """All-gather along dim 0 (batch first, contiguous); the backward reduce-scatters the gradient."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, group: Any, sizes: list[int], rank: int) -> Tensor:
        world = len(sizes)
        most = max(sizes)
        ctx.group, ctx.sizes, ctx.rank = group, sizes, rank
        if world == 1 or most == 0:
            return x.clone()
        mine = x if x.shape[0] == most else _pad(x, most)
        out = x.new_empty((world * most, *x.shape[1:]))
        _all_gather_single(out, mine.contiguous(), group=group)
        if all(n == most for n in sizes):
            return out
        return torch.cat([out.narrow(0, r * most, n) for r, n in enumerate(sizes)])

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None, None, None]:
        sizes, rank = ctx.sizes, ctx.rank
        world = len(sizes)
        most = max(sizes)
        if world == 1 or most == 0:
            return grad, None, None, None
        if all(n == most for n in sizes):
            padded = grad.contiguous()
        else:
            padded = grad.new_zeros((world * most, *grad.shape[1:]))
            start = 0
            for r, n in enumerate(sizes):
                padded.narrow(0, r * most, n).copy_(grad.narrow(0, start, n))
                start += n
        out = grad.new_empty((most, *grad.shape[1:]))
        _reduce_scatter_single(out, padded, op=dist.ReduceOp.SUM, group=ctx.group)
        return out.narrow(0, 0, sizes[rank]), None, None, None


def _pad(x: Tensor, rows: int) -> Tensor:
    """``x`` with zero rows appended along dim 0 up to ``rows``."""
    return torch.cat([x, x.new_zeros((rows - x.shape[0], *x.shape[1:]))])


def gather_batch(
    x: Tensor,
    dim: int = 0,
    process_group: Any = None,
    equal_sizes: bool = False,
    name: str = "x",
) -> Tensor:
    r"""Concatenate the batches of all processes along ``dim``; gradients flow back to each process's slice.

    Process $r$ contributes $x_r$ with $n_r$ samples along ``dim``; every process receives
    $\operatorname{cat}(x_0, \dots, x_{W-1})$ in rank order. The backward is the adjoint of the gather:
    process $r$ receives the sum over all processes of the gradients with respect to its slice (a
    reduce-scatter). When every process computes the same loss from the gathered batch, this is $W$
    times the single-process gradient, which DDP's gradient averaging divides back (see the module
    docstring).

    By default the processes first exchange their batch sizes, dtypes and positions (one small all-gather
    whose result is read on the host, so it synchronises with an accelerator): batch sizes may then differ
    between processes, even be 0 on some, and a dtype or shape mismatch raises the same ``ValueError`` on
    every process instead of a hang or garbage. With ``equal_sizes=True`` nothing is exchanged and nothing
    synchronises with the host; every process must then pass the same shape and dtype.

    Every process of the group must call this function, in the same order relative to other collectives on
    that group, with the same ``dim``, ``process_group`` and ``equal_sizes``.

    Args:
        x: This process's slice of the batch; any dtype the backend can communicate.
        dim: The batch dimension.
        process_group: The group of processes to gather over; ``None`` for the default group.
        equal_sizes: Skip the exchange of sizes (no host synchronisation): all processes have the same
            shape.
        name: The argument name used in error messages.

    Returns:
        The whole batch, every process's slice in rank order along ``dim``, of ``x``'s dtype and device.

    Raises:
        RuntimeError: ``torch.distributed`` is unavailable or its process group is not initialised.
        TypeError: ``x`` is not a tensor, ``process_group`` is not a process group, or ``dim`` not an int.
        ValueError: ``dim`` out of range, or the processes disagree on dtype or positions.

    Shape:
        - ``x``: $(*, n_r, *)$ with the batch along ``dim``.
        - Output: $(*, \sum_r n_r, *)$.

    Example:
        >>> import torch
        >>> import torch.distributed as dist
        >>> from gbs_loss.distributed import gather_batch
        >>> dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
        >>> x = torch.rand(4, 3, requires_grad=True)
        >>> gather_batch(x).shape  # with 2 processes of 4 samples each: torch.Size([8, 3])
        torch.Size([4, 3])
        >>> dist.destroy_process_group()
    """
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if isinstance(dim, bool) or not isinstance(dim, int):
        raise TypeError(f"dim must be an int, got {type(dim).__name__}")
    if x.dim() == 0:
        raise ValueError(
            f"{name} must have at least one dimension (the batch) to be gathered, got a 0-dimensional tensor"
        )
    if not -x.dim() <= dim < x.dim():
        raise ValueError(f"dim must be in [{-x.dim()}, {x.dim() - 1}] for {name} of shape {tuple(x.shape)}, got {dim}")
    if not isinstance(equal_sizes, bool):
        raise TypeError(f"equal_sizes must be a bool, got {type(equal_sizes).__name__}")
    _check_group(process_group)
    if not dist.is_initialized():
        raise RuntimeError(
            "distributed=True needs an initialised process group: call torch.distributed.init_process_group "
            "on every process first"
        )
    world = dist.get_world_size(process_group)
    rank = dist.get_rank(process_group)
    if rank < 0:
        raise ValueError("process_group does not contain this process")
    batch_first = x.movedim(dim, 0)
    if equal_sizes:
        sizes = [batch_first.shape[0]] * world
    else:
        sizes = _exchange_sizes(batch_first, process_group, world, name)
    out: Tensor = _GatherBatch.apply(batch_first, process_group, sizes, rank)  # type: ignore[no-untyped-call]
    return out.movedim(0, dim)
