r"""``python -m gbs_loss msvit-demo``: the MSViT gate trained on real photographs, without labels.

The photographs are those that ship inside scikit-image (no download; the optional ``demo`` extra installs
scikit-image and matplotlib). A `MixedScaleGate` is trained on random crops of one set
of photographs and shown on others that it never saw.

**The training signal is a label-free stand-in.** MSViT (Havtorn, Royer, Blankevoort, Ehteshami Bejnordi,
ICCV Workshops 2023, arXiv 2307.02321) trains the gate with the task loss of the ViT (classification,
segmentation), through the straight-through estimator. Here there is no task: the signal is how much detail a
coarse token loses, the error of resizing the coarse patch down to the fine size and back up. Per batch, the
logarithm of that error is standardised to a score $z$, and the "task" loss
$-\operatorname{mean}(\text{mask} \cdot z)$ rewards splitting regions that lose more than the batch's
average and penalises splitting the others; the hard mask carries the straight-through gradient to the gate.
The Generalized Batch-Shaping loss (`msvit_gate_loss`, target 30% split regions)
decides how many regions may split.
"""

from __future__ import annotations

import argparse
import math
import time
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from gbs_loss.msvit.gate import MixedScaleGate
from gbs_loss.msvit.loss import msvit_gate_loss

__all__ = ["DISPLAY_IMAGES", "TRAIN_IMAGES", "load_photo", "main", "resize_error"]

#: Photographs the gate is shown on (never used for training).
DISPLAY_IMAGES = ("astronaut", "coffee", "chelsea", "rocket", "motorcycle", "camera")
#: Photographs whose random crops train the gate.
TRAIN_IMAGES = (
    "coins",
    "clock",
    "moon",
    "page",
    "text",
    "brick",
    "grass",
    "gravel",
    "hubble_deep_field",
    "immunohistochemistry",
    "colorwheel",
    "cell",
    "retina",
    "logo",
)

_DOCS_IMAGE = Path(__file__).resolve().parents[2] / "docs" / "img" / "msvit_demo.png"
_MEAN, _STD = 0.45, 0.25  # normalisation of [0, 1] pixels for the gate


def _require(module: str) -> ModuleType:
    try:
        return __import__(module)
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise SystemExit(f"msvit-demo needs {module}: pip install 'gbs-loss[demo]' ({err})") from err


def load_photo(name: str) -> Tensor:
    """One of scikit-image's bundled photographs as an RGB float tensor ``(3, H, W)`` in ``[0, 1]``.

    Args:
        name: A function name of `skimage.data` (``"astronaut"``, ``"coffee"``, ...), or
            ``"motorcycle"`` for the left view of ``stereo_motorcycle``.

    Returns:
        The photograph; grayscale ones are repeated on three channels, an alpha channel is dropped.

    Example:
        >>> from gbs_loss.msvit.demo import load_photo
        >>> load_photo("camera").shape  # a grayscale photograph, on three channels
        torch.Size([3, 512, 512])
        >>> load_photo("motorcycle").shape
        torch.Size([3, 500, 741])
    """
    _require("skimage")
    from skimage import data

    if name == "motorcycle":
        array = data.stereo_motorcycle()[0]  # type: ignore[no-untyped-call]  # unannotated in scikit-image
    else:
        loader = getattr(data, name, None)
        if loader is None:
            raise ValueError(f"load_photo: unknown scikit-image photograph {name!r}")
        array = loader()
    array = np.asarray(array)
    if array.dtype == bool:
        array = array.astype(np.float32)
    elif array.dtype == np.uint8:
        array = array.astype(np.float32) / 255.0
    else:
        array = array.astype(np.float32)
        array = (array - array.min()) / max(float(array.max() - array.min()), 1e-12)
    if array.ndim == 2:
        array = np.repeat(array[..., None], 3, axis=2)
    array = array[..., :3]
    return torch.from_numpy(np.ascontiguousarray(array)).permute(2, 0, 1).contiguous()


def _resize(image: Tensor, size: int) -> Tensor:
    return F.interpolate(image.unsqueeze(0), size=(size, size), mode="bilinear", antialias=True, align_corners=False)[
        0
    ].clamp(0.0, 1.0)


def _shrink(image: Tensor, short_side: int) -> Tensor:
    """Downscale ``image`` so that its short side is at most ``short_side`` (cheaper random crops)."""
    scale = short_side / min(image.shape[1:])
    if scale >= 1:
        return image
    return F.interpolate(image.unsqueeze(0), scale_factor=scale, mode="bilinear", antialias=True, align_corners=False)[
        0
    ].clamp(0.0, 1.0)


def _center_square(image: Tensor, size: int) -> Tensor:
    _, h, w = image.shape
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    return _resize(image[:, top : top + side, left : left + side], size)


def _random_crops(photos: list[Tensor], count: int, size: int, generator: torch.Generator) -> Tensor:
    """Random square crops (a quarter to all of the short side), flipped at random, resized to ``size``."""
    out = []
    for _ in range(count):
        image = photos[int(torch.randint(len(photos), (1,), generator=generator))]
        _, h, w = image.shape
        short = min(h, w)
        side = int(short * (0.25 + 0.75 * float(torch.rand((), generator=generator))))
        side = max(side, min(short, 64))
        top = int(torch.randint(h - side + 1, (1,), generator=generator))
        left = int(torch.randint(w - side + 1, (1,), generator=generator))
        crop = image[:, top : top + side, left : left + side]
        if float(torch.rand((), generator=generator)) < 0.5:
            crop = crop.flip(-1)
        out.append(_resize(crop, size))
    return torch.stack(out)


def resize_error(images: Tensor, coarse_size: int = 32, fine_size: int = 16) -> Tensor:
    """Detail lost by one coarse token: the error of resizing each coarse patch to the fine size and back.

    Each coarse patch is area-averaged down to ``fine_size`` pixels square (what the coarse token sees), brought
    back up with bilinear interpolation, and compared with the original.

    Args:
        images: Images ``(B, C, H, W)``, ``H`` and ``W`` multiples of ``coarse_size``.
        coarse_size: Side of a coarse patch in pixels.
        fine_size: Side of a fine patch in pixels; divides ``coarse_size``.

    Returns:
        Mean squared error per coarse region, ``(B, H / coarse_size, W / coarse_size)``.

    Example:
        >>> import torch
        >>> from gbs_loss.msvit.demo import resize_error
        >>> images = torch.zeros(1, 3, 64, 64)
        >>> images[..., :32, :32] = torch.rand(3, 32, 32, generator=torch.Generator().manual_seed(0))
        >>> resize_error(images, coarse_size=32, fine_size=16)  # only the noisy region loses detail
        tensor([[[0.0675, 0.0000],
                 [0.0000, 0.0000]]])
    """
    b, c, h, w = images.shape
    rh, rw = h // coarse_size, w // coarse_size
    patches = images.reshape(b, c, rh, coarse_size, rw, coarse_size).permute(0, 2, 4, 1, 3, 5)
    patches = patches.reshape(b * rh * rw, c, coarse_size, coarse_size)
    small = F.avg_pool2d(patches, coarse_size // fine_size)
    back = F.interpolate(small, size=(coarse_size, coarse_size), mode="bilinear", align_corners=False)
    return (patches - back).pow(2).mean(dim=(1, 2, 3)).reshape(b, rh, rw)


def _detail_score(error: Tensor) -> Tensor:
    """Standardised log resize error over the batch: > 0 where a coarse token loses more than average."""
    log_error = torch.log(error + 1e-6)
    return (log_error - log_error.mean()) / (log_error.std() + 1e-6)


@dataclass
class _Result:
    names: list[str]
    images: Tensor  # (B, 3, S, S) in [0, 1]
    masks: Tensor  # (B, R, R) 0/1


def _train(args: argparse.Namespace) -> tuple[MixedScaleGate, float]:
    generator = torch.Generator().manual_seed(args.seed)
    torch.manual_seed(args.seed)
    photos = [_shrink(load_photo(name), 448) for name in TRAIN_IMAGES]
    regions = args.image_size // args.coarse_size
    gate = MixedScaleGate(coarse_size=args.coarse_size, fine_size=args.fine_size, noise=args.noise)
    criterion = msvit_gate_loss(
        (regions, regions), target=args.target, spread=args.spread, temperature_weight=args.temperature_weight
    )
    optimizer = torch.optim.Adam([*gate.parameters(), *criterion.parameters()], lr=args.lr)
    progress = range(args.steps)
    if not args.quiet:
        try:
            from tqdm import tqdm

            progress = tqdm(progress, desc="training the gate", unit="step", leave=False)
        except ImportError:  # pragma: no cover - tqdm is part of the demo extra
            pass
    start = time.perf_counter()
    for step in progress:
        images = _random_crops(photos, args.batch_size, args.image_size, generator)
        score = _detail_score(resize_error(images, args.coarse_size, args.fine_size))
        out = gate((images - _MEAN) / _STD)
        task = -(out.mask * score).mean()
        shaping = criterion(out.soft)
        loss = task + args.shaping_weight * shaping
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if not args.quiet and hasattr(progress, "set_postfix") and step % 20 == 0:
            progress.set_postfix(split=f"{float(out.mask.detach().mean()):.2f}", gbas=f"{float(shaping.detach()):.4f}")
    return gate, time.perf_counter() - start


def _draw(result: _Result, coarse_px: float, fine_px: float, summary: str, path: Path, dpi: int) -> None:
    """Save a grid of the photographs with the kept (coarse) and split (fine) regions drawn on them."""
    _require("matplotlib")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.collections import LineCollection
    from matplotlib.layout_engine import ConstrainedLayoutEngine
    from matplotlib.patches import Patch, Rectangle

    fine_color, coarse_color = "#00d5ff", "#ffffff"
    count = len(result.names)
    cols = min(3, count)
    rows = math.ceil(count / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.0 * cols, 4.5 * rows + 0.9), squeeze=False, layout="constrained")
    size = result.images.shape[-1]
    sc, sf = coarse_px, fine_px
    ratio = round(sc / sf)
    for ax in axes.ravel():
        ax.axis("off")
    for ax, name, image, mask in zip(axes.ravel(), result.names, result.images, result.masks, strict=False):
        ax.imshow(image.permute(1, 2, 0).numpy(), extent=(0, size, size, 0), interpolation="lanczos")
        grid: list[list[tuple[float, float]]] = [[(0, k * sc), (size, k * sc)] for k in range(1, mask.shape[0])]
        grid += [[(k * sc, 0), (k * sc, size)] for k in range(1, mask.shape[1])]
        ax.add_collection(LineCollection(grid, colors=coarse_color, linewidths=0.7, alpha=0.6))
        fine_lines = []
        for i, j in mask.nonzero().tolist():
            top, left = i * sc, j * sc
            ax.add_patch(Rectangle((left, top), sc, sc, facecolor=fine_color, alpha=0.16, lw=0))
            for k in range(1, ratio):
                fine_lines.append([(left + k * sf, top), (left + k * sf, top + sc)])
                fine_lines.append([(left, top + k * sf), (left + sc, top + k * sf)])
            ax.add_patch(Rectangle((left, top), sc, sc, fill=False, edgecolor=fine_color, lw=1.3))
        ax.add_collection(LineCollection(fine_lines, colors=fine_color, linewidths=0.8, alpha=0.9))
        split = int(mask.sum())
        tokens = mask.numel() + (ratio**2 - 1) * split
        ax.set_title(f"{name}\n{tokens} tokens, {split} of {mask.numel()} regions split", fontsize=10)
        ax.set_xlim(0, size)
        ax.set_ylim(size, 0)
    handles = [
        Patch(facecolor=fine_color, edgecolor=fine_color, alpha=0.7, label=f"split region: {ratio**2} fine tokens"),
        Patch(facecolor="#dddddd", edgecolor="#777777", label="kept region: 1 coarse token"),
    ]
    fig.legend(handles=handles, loc="outside lower center", ncol=2, frameon=False, fontsize=10)
    fig.suptitle(summary, fontsize=11.5)
    engine = fig.get_layout_engine()
    assert isinstance(engine, ConstrainedLayoutEngine)  # layout="constrained" above
    engine.set(h_pad=0.12, w_pad=0.06)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi, facecolor="white")
    plt.close(fig)
    _compact_png(path)


def _compact_png(path: Path) -> None:
    """Store the PNG with a 256-colour palette (about four times smaller; Pillow comes with matplotlib)."""
    from PIL import Image

    with Image.open(path) as image:
        palette = image.convert("RGB").quantize(
            256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.FLOYDSTEINBERG
        )
    palette.save(path, optimize=True)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m gbs_loss msvit-demo",
        description="Train the MSViT gate on scikit-image photographs with a label-free signal (the error of "
        "resizing a coarse patch to the fine size and back) under the Generalized Batch-Shaping "
        "loss, and save a picture of its decisions on photographs it never saw.",
    )
    parser.add_argument("--steps", type=int, default=400, help="training steps (default: 400)")
    parser.add_argument("--batch-size", type=int, default=32, help="random crops per step (default: 32)")
    parser.add_argument("--image-size", type=int, default=224, help="image side in pixels (default: 224)")
    parser.add_argument("--coarse-size", type=int, default=32, help="coarse patch side (default: 32)")
    parser.add_argument("--fine-size", type=int, default=16, help="fine patch side (default: 16)")
    parser.add_argument("--target", type=float, default=0.3, help="target fraction of split regions (0.3)")
    parser.add_argument("--spread", type=float, default=0.1, help="hyperprior standard deviation (0.1)")
    parser.add_argument(
        "--shaping-weight", type=float, default=10.0, help="weight of the Generalized Batch-Shaping loss (default: 10)"
    )
    parser.add_argument(
        "--temperature-weight",
        type=float,
        default=0.1,
        help="weight of the L1 term on the priors' temperatures (default: 0.1)",
    )
    parser.add_argument(
        "--noise",
        choices=("none", "logistic"),
        default="none",
        help="noise on the gate's logits in training (default: none, so that the evaluation "
        "threshold sees the values the loss shaped)",
    )
    parser.add_argument("--lr", type=float, default=3e-3, help="Adam learning rate (default: 3e-3)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default: 1)")
    parser.add_argument(
        "--display-size",
        type=int,
        default=448,
        help="side in pixels of the photographs drawn in the picture (default: 448)",
    )
    parser.add_argument("--dpi", type=int, default=110, help="resolution of the PNG (default: 110)")
    parser.add_argument(
        "--out",
        type=Path,
        default=Path("outputs/msvit_demo.png"),
        help="where to save the PNG (default: outputs/msvit_demo.png)",
    )
    parser.add_argument(
        "--docs", action="store_true", help=f"also save the picture for the documentation, {_DOCS_IMAGE.as_posix()}"
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the demonstration; return the exit status.

    Args:
        argv: Command-line options (see ``python -m gbs_loss msvit-demo --help``); ``None`` reads
            ``sys.argv``.

    Returns:
        0 on success.

    Example:
        >>> from gbs_loss.msvit.demo import main
        >>> main(["--steps", "600", "--out", "outputs/msvit_demo.png"])  # doctest: +SKIP
        trained the gate for 600 steps in ...
        0
    """
    parser = _parser()
    args = parser.parse_args(argv)
    for name in ("steps", "batch_size", "image_size", "coarse_size", "fine_size", "threads", "display_size", "dpi"):
        if getattr(args, name) <= 0:
            parser.error(f"--{name.replace('_', '-')} must be positive, got {getattr(args, name)}")
    if args.batch_size < 2:
        parser.error(f"--batch-size must be at least 2 (a batch needs a distribution), got {args.batch_size}")
    if args.coarse_size % args.fine_size or args.coarse_size <= args.fine_size:
        parser.error(
            f"--coarse-size must be a multiple of --fine-size larger than it, got {args.coarse_size} "
            f"and {args.fine_size}"
        )
    if args.image_size % args.coarse_size:
        parser.error(f"--image-size must be a multiple of --coarse-size={args.coarse_size}, got {args.image_size}")
    if not 0 < args.target < 1 or not 0 < args.spread < 1:
        parser.error(f"--target and --spread must be in (0, 1), got {args.target} and {args.spread}")
    torch.set_num_threads(args.threads)

    gate, seconds = _train(args)
    gate.eval()
    names = list(DISPLAY_IMAGES)
    photos = [load_photo(name) for name in names]
    images = torch.stack([_center_square(p, args.image_size) for p in photos])
    with torch.no_grad():
        masks = gate((images - _MEAN) / _STD).mask
        error = resize_error(images, args.coarse_size, args.fine_size)
    ratio = args.coarse_size // args.fine_size
    regions = masks[0].numel()
    all_fine = regions * ratio**2
    split = masks.sum(dim=(1, 2))
    tokens = regions + (ratio**2 - 1) * split
    average = float(tokens.mean())
    # Resize error held by the split regions, against the best and a random choice of as many regions.
    best = torch.stack(
        [row.sort(descending=True).values[: int(k)].sum() for row, k in zip(error.flatten(1), split, strict=True)]
    ).sum()
    chosen = (error * masks).sum()
    random = (error.flatten(1).mean(1) * split).sum()
    share, random_share = float(chosen / best.clamp_min(1e-12)), float(random / best.clamp_min(1e-12))

    display = torch.stack([_center_square(p, args.display_size) for p in photos])
    scale = args.display_size / args.image_size
    summary = (
        f"MSViT gate on photographs it never saw, trained without labels for {args.steps} steps\n"
        f"{average:.1f} tokens per image on average against {all_fine} all-fine "
        f"({100 * average / all_fine:.0f}%); {100 * float(masks.mean()):.0f}% of regions split "
        f"(target {100 * args.target:.0f}%)"
    )
    paths = [args.out] + ([_DOCS_IMAGE] if args.docs else [])
    for path in paths:
        _draw(_Result(names, display, masks), args.coarse_size * scale, args.fine_size * scale, summary, path, args.dpi)

    print(
        f"trained the gate for {args.steps} steps in {seconds:.1f} s "
        f"({gate.num_parameters()} parameters, {gate.macs(args.image_size, args.image_size) / 1e6:.2f} M "
        f"multiply-accumulates per {args.image_size}x{args.image_size} image)"
    )
    for name, mask, count in zip(names, masks, tokens, strict=True):
        print(f"  {name:>12}: {int(count):4d} tokens, {int(mask.sum()):3d} of {regions} regions split")
    print(
        f"average token count: {average:.1f} per image against {all_fine} all-fine "
        f"({100 * average / all_fine:.0f}%), {100 * float(masks.mean()):.0f}% of regions split "
        f"(target {100 * args.target:.0f}%)"
    )
    print(
        f"the split regions hold {100 * share:.0f}% of the resize error of the same number of regions chosen "
        f"best ({100 * random_share:.0f}% for a random choice)"
    )
    for path in paths:
        print(f"saved {path}")
    return 0
