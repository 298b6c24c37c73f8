"""Images per second of MSViT against the all-fine ViT of the same shape: padded, packed and budget execution.

Fewer tokens are only worth it when they cost less time. This script measures, in one run and interleaved, a
:class:`gbs_loss.msvit.MixedScaleViT` of ViT-S/16 shape (width 384, 6 heads, depth 12, MLP ratio 4, 224x224
images, 32-pixel coarse and 16-pixel fine patches, 1000 classes) against

* ``plain``: the all-fine ViT of the same shape built from the same layers (patch embedding, class token,
  ``nn.TransformerEncoderLayer`` layers run dense by :func:`gbs_loss.msvit._packed.run_encoder_layers`), and
* ``timm``: timm's ``vit_small_patch16_224`` (``pretrained=False``) when timm is installed.

The speed-up is over ``timm`` when timm is installed (else over ``plain``); both are in the JSON.

For every batch size (32 and 64) and split rate (0, 30, 50 and 100% of the 49 regions; ``u30`` is 30% on average
with every image drawing its own rate uniformly in [0, 60%], as trained gates do), three executions:

* ``padded``: every image padded to the longest one and a key-padding mask (the original implementation);
* ``packed``: no compute on padding: only used patches embedded, the token-wise layers on the batch's real tokens,
  attention per image (one host synchronisation per batch);
* ``budget``: per-image budget mode, the top ``k = rate * 49`` regions of every image (dense, no padding, no
  synchronisation).

``padded`` and ``packed`` run on a Bernoulli mask per region (images differ) with the gate evaluated beside them (its
soft values carry the straight-through gradient in training); ``budget`` runs the gate's top-k. Phases:
``inference`` (``torch.inference_mode``) and ``training`` (forward, cross-entropy, backward; no optimiser step).
The gate's and tokenizer's shares of the packed inference time are measured separately.

Target (issue 12): at 30% and 50% split, packed and budget, inference and training, speed-up over the all-fine
ViT >= 0.85 x the token ratio ``(196 + 1) / (mean tokens + 1)``.

Usage::

    python benchmarks/bench_msvit.py [--quick] [--batches 32 64] [--rates 0 0.3 0.5 1] [--no-uneven]
        [--depth 12] [--phases inference training] [--repeats R] [--threads T] [--device cpu|cuda]
        [--markdown PATH] [--json PATH] [--plot PATH]

With ``--device cuda`` every call is timed with CUDA events (synchronised after each call), and packed attention
uses jagged nested tensors. Shared helpers come from ``benchmarks/_common.py``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import textwrap
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as bc  # noqa: E402

from gbs_loss.msvit import MixedScaleViT  # noqa: E402
from gbs_loss.msvit._packed import packed_layout, run_encoder_layers  # noqa: E402
from gbs_loss.msvit.tokenizer import _mixed_tokens  # noqa: E402

__all__ = ["Shape", "main", "plain_forward", "split_mask", "token_ratio"]

EXECUTIONS = ("padded", "packed", "budget")
TARGET = 0.85


class Shape:
    """The model shape of a run (ViT-S/16 by default, tiny with ``--quick``)."""

    def __init__(self, quick: bool, depth: int | None) -> None:
        self.image = 64 if quick else 224
        self.coarse, self.fine = 32, 16
        self.dim = 64 if quick else 384
        self.heads = 2 if quick else 6
        self.depth = depth or (2 if quick else 12)
        self.classes = 10 if quick else 1000
        self.regions = (self.image // self.coarse) ** 2
        self.cells = (self.image // self.fine) ** 2

    def model(self, **kwargs) -> MixedScaleViT:
        return MixedScaleViT(
            num_classes=self.classes,
            image_size=self.image,
            coarse_size=self.coarse,
            fine_size=self.fine,
            embed_dim=self.dim,
            depth=self.depth,
            num_heads=self.heads,
            **kwargs,
        )

    def timm(self, device: str) -> nn.Module | None:
        try:
            import timm
        except ImportError:
            return None
        options = {"pretrained": False, "num_classes": self.classes, "img_size": self.image}
        options.update(embed_dim=self.dim, depth=self.depth, num_heads=self.heads)
        return timm.create_model("vit_small_patch16_224", **options).to(device)


def token_ratio(cells: int, mean_tokens: float) -> float:
    """``(cells + 1) / (mean tokens + 1)``: the class token counted on both sides."""
    return (cells + 1) / (mean_tokens + 1)


def split_mask(batch: int, regions: int, rate: float, uneven: bool, seed: int, device: str) -> Tensor:
    """A Bernoulli split mask ``(B, r, r)``: every region splits with probability ``rate`` (per image, drawn
    uniformly in ``[0, 2 rate]``, when ``uneven``)."""
    gen = torch.Generator().manual_seed(seed)
    side = int(round(regions**0.5))
    p = torch.full((batch, 1, 1), float(rate))
    if uneven:
        p = torch.rand(batch, 1, 1, generator=gen) * 2 * rate
    return (torch.rand(batch, side, side, generator=gen) < p).float().to(device)


def plain_forward(model: MixedScaleViT, images: Tensor) -> Tensor:
    """The all-fine ViT on ``model``'s own layers: patch embedding, class token, dense layers, head."""
    tok = model.tokenizer
    x = tok.patch_embed(images).flatten(2).transpose(1, 2) + tok.pos_embed.reshape(1, -1, x_dim(model))
    b, t, d = x.shape
    x = torch.cat([model.cls_token.expand(b, -1, -1), x], dim=1).reshape(b * (t + 1), d)
    lengths = torch.full((b,), t + 1, dtype=torch.long, device=images.device)
    x = run_encoder_layers(model.encoder.layers, x, packed_layout(lengths, t + 1, b * (t + 1)))
    x = model.encoder.norm(x).view(b, t + 1, d)
    return model.head(x[:, 0])


def x_dim(model: MixedScaleViT) -> int:
    return model.cls_token.shape[-1]


def _timed(fns: dict[str, Callable[[], object]], repeats: int, args: argparse.Namespace) -> dict[str, float]:
    """Median seconds per call, interleaved; CUDA events on a GPU, :func:`_common.measure` on the CPU."""
    if torch.device(args.device).type != "cuda":
        times, _ = bc.measure(fns, repeats, args.min_time, args.max_other_load, args.attempts)
        return times
    names = list(fns)
    for name in names:  # warm-up (allocator, kernels, cuBLAS heuristics)
        fns[name]()
        fns[name]()
    torch.cuda.synchronize(args.device)
    samples: dict[str, list[float]] = {name: [] for name in names}
    for r in range(max(1, repeats)):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fns[name]()
            end.record()
            end.synchronize()
            samples[name].append(start.elapsed_time(end) / 1e3)
    return {name: statistics.median(v) for name, v in samples.items()}


def _cases(shape: Shape, rates: Sequence[float], uneven: bool) -> list[tuple[str, float, bool]]:
    cases = [(f"{100 * r:.0f}%", r, False) for r in rates]
    if uneven:
        cases.append(("u30%", 0.3, True))
    return cases


def bench_group(
    shape: Shape,
    models: dict[str, MixedScaleViT],
    vit: nn.Module | None,
    batch: int,
    phase: str,
    rates: Sequence[float],
    uneven: bool,
    repeats: int,
    args: argparse.Namespace,
) -> list[dict]:
    """Time every execution at every split rate for one batch size and phase, interleaved with the baselines."""
    device = args.device
    images = torch.randn(batch, 3, shape.image, shape.image, generator=torch.Generator().manual_seed(0)).to(device)
    labels = torch.arange(batch, device=device) % shape.classes
    training = phase == "training"
    base = models["packed"]
    fns: dict[str, Callable[[], object]] = {}
    info: dict[str, dict] = {}

    def run(fn: Callable[[], Tensor]) -> Callable[[], object]:
        if training:

            def step() -> None:
                F.cross_entropy(fn(), labels).backward()
                for model in (*models.values(), vit):
                    if model is not None:
                        model.zero_grad(set_to_none=True)

            return step

        def infer() -> None:
            with torch.inference_mode():
                fn()

        return infer

    fns["plain"] = run(lambda: plain_forward(base, images))
    if vit is not None:
        fns["timm"] = run(lambda: vit(images))
    for label, rate, is_uneven in _cases(shape, rates, uneven):
        mask = split_mask(batch, shape.regions, rate, is_uneven, seed=1, device=device)
        lengths = shape.regions + 3 * mask.sum((1, 2))
        for execution in EXECUTIONS:
            if execution == "budget" and is_uneven:
                continue
            key = f"{execution}@{label}"
            if execution == "budget":
                k = int(round(rate * shape.regions))
                model = models["budget"]

                def fn(model=model, k=k) -> Tensor:
                    model.budget = k
                    return model(images).logits

                info[key] = {"mean_tokens": shape.regions + 3.0 * k, "padded_length": shape.regions + 3 * k}
            else:
                model = models[execution]

                def fn(model=model, mask=mask) -> Tensor:
                    gate = model.gate(images)
                    # The Bernoulli mask, with the gate's soft values' straight-through gradient in training.
                    hard = mask + (gate.soft - gate.soft.detach()) if training else mask
                    return model(images, hard).logits

                info[key] = {"mean_tokens": float(lengths.mean()), "padded_length": int(lengths.max())}
            info[key].update(execution=execution, label=label, rate=rate, uneven=is_uneven)
            fns[key] = run(fn)
        if not training and not is_uneven:
            fns[f"tokenizer@{label}"] = run(lambda mask=mask: _tokenize(base, images, mask))
    if not training:
        fns["gate"] = run(lambda: base.gate(images))
    if args.progress:
        print(f"  batch {batch}, {phase}: {len(fns)} functions", flush=True)
    times = _timed(fns, repeats, args)
    reference = times["timm"] if "timm" in times else times["plain"]
    rows = []
    for key, extra in info.items():
        t = times[key]
        ratio = token_ratio(shape.cells, extra["mean_tokens"])
        speedup = reference / t
        row = {
            "batch": batch,
            "phase": phase,
            **extra,
            "token_ratio": ratio,
            "seconds": t,
            "images_per_s": batch / t,
            "speedup": speedup,
            "speedup_vs_plain": times["plain"] / t,
            "speedup_vs_timm": times["timm"] / t if "timm" in times else None,
            "efficiency": speedup / ratio,
            "plain_images_per_s": batch / times["plain"],
            "timm_images_per_s": batch / times["timm"] if "timm" in times else None,
        }
        if not training and extra["execution"] == "packed" and not extra["uneven"]:
            row["gate_share"] = times["gate"] / t
            row["tokenizer_share"] = times[f"tokenizer@{extra['label']}"] / t
        rows.append(row)
    return rows


def _tokenize(model: MixedScaleViT, images: Tensor, mask: Tensor) -> Tensor:
    tok = model.tokenizer
    packed = _mixed_tokens(
        images,
        mask,
        tok.patch_embed,
        tok.pos_embed,
        coarse_size=tok.coarse_size,
        fine_size=tok.fine_size,
        embed_norm=None,
        max_tokens=None,
        budget=None,
        scores=None,
        packed=True,
    )[1]
    return packed


def targets(rows: Sequence[dict]) -> list[dict]:
    """The issue's target at 30% and 50% (Bernoulli), packed and budget, every batch and phase."""
    found = []
    for row in rows:
        if row["uneven"] or row["execution"] == "padded" or row["rate"] not in (0.3, 0.5):
            continue
        found.append({**row, "met": row["efficiency"] >= TARGET})
    return found


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{100 * v:.1f}%"


def table(rows: Sequence[dict], baseline: str) -> list[str]:
    lines = [
        f"| batch | phase | split | execution | mean tokens | padded length | token ratio | images/s | "
        f"speed-up over {baseline} | speed-up / token ratio | gate share | tokenizer share |",
        "|---:|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['batch']} | {r['phase']} | {r['label']} | {r['execution']} | {r['mean_tokens']:.1f} | "
            f"{r['padded_length']} | {r['token_ratio']:.2f} | {r['images_per_s']:.1f} | {r['speedup']:.2f}x | "
            f"{r['efficiency']:.2f} | {_pct(r.get('gate_share'))} | {_pct(r.get('tokenizer_share'))} |"
        )
    return lines


def baseline_lines(rows: Sequence[dict]) -> list[str]:
    seen = {}
    for r in rows:
        seen[(r["batch"], r["phase"])] = (r["plain_images_per_s"], r["timm_images_per_s"])
    lines = ["| batch | phase | plain ViT (same layers) images/s | timm vit_small_patch16_224 images/s |"]
    lines.append("|---:|---|---:|---:|")
    for (batch, phase), (plain, timm) in seen.items():
        lines.append(f"| {batch} | {phase} | {plain:.1f} | {'-' if timm is None else f'{timm:.1f}'} |")
    return lines


def target_lines(found: Sequence[dict]) -> list[str]:
    return [
        f"- batch {r['batch']}, {r['phase']}, {r['label']}, {r['execution']}: speed-up {r['speedup']:.2f}x, token "
        f"ratio {r['token_ratio']:.2f}, ratio {r['efficiency']:.2f} (target >= {TARGET}): "
        f"{'met' if r['met'] else 'NOT met'}"
        for r in found
    ]


def plot(rows: Sequence[dict], path: Path, title: str, baseline: str) -> None:
    plt = bc.pyplot()
    batches = sorted({r["batch"] for r in rows})
    phases = [p for p in ("inference", "training") if any(r["phase"] == p for r in rows)]
    fig, axes = plt.subplots(
        len(phases), len(batches), figsize=(5 * len(batches), 3.6 * len(phases)), squeeze=False, sharey=True
    )
    for i, phase in enumerate(phases):
        for j, batch in enumerate(batches):
            ax = axes[i][j]
            sel = [r for r in rows if r["phase"] == phase and r["batch"] == batch and not r["uneven"]]
            ideal = sorted({(r["rate"], r["token_ratio"]) for r in sel if r["execution"] == "packed"})
            if ideal:
                xs, ys = zip(*ideal, strict=True)
                ax.plot([100 * x for x in xs], ys, "k--", lw=1, label="token ratio")
                ax.plot([100 * x for x in xs], [TARGET * y for y in ys], "k:", lw=1, label=f"{TARGET} x token ratio")
            for execution, marker in zip(EXECUTIONS, "sox", strict=True):
                pts = sorted((r["rate"], r["speedup"]) for r in sel if r["execution"] == execution)
                if pts:
                    xs, ys = zip(*pts, strict=True)
                    ax.plot([100 * x for x in xs], ys, marker=marker, label=execution)
            ax.axhline(1.0, color="grey", lw=0.5)
            ax.set_title(f"{phase}, batch {batch}")
            ax.set_xlabel("regions split (%)")
            if j == 0:
                ax.set_ylabel(f"speed-up over {baseline}")
            ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    fig.suptitle("\n".join(textwrap.wrap(title, 45 * len(batches))), fontsize=9)
    fig.tight_layout()
    bc.save_figure(fig, path)


def main(argv: Sequence[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny model (64x64 images, width 64, depth 2)")
    parser.add_argument("--batches", type=int, nargs="+", help="batch sizes (default 32 64; quick 4 8)")
    parser.add_argument("--rates", type=float, nargs="+", default=[0.0, 0.3, 0.5, 1.0], help="split rates")
    parser.add_argument("--no-uneven", action="store_true", help="skip the uneven 30%% case")
    parser.add_argument("--depth", type=int, help="encoder depth (default 12; quick 2)")
    parser.add_argument("--phases", nargs="+", default=["inference", "training"], choices=["inference", "training"])
    parser.add_argument("--plot", type=Path, help="write the plot (PNG) here")
    bc.add_common_arguments(parser)
    args = parser.parse_args(argv)
    args.progress = not args.quiet
    batches = args.batches or ([4, 8] if args.quick else [32, 64])
    repeats = args.repeats or (3 if args.quick else 5)
    threads = bc.set_threads(args.threads)
    info = bc.machine_info(args.device)
    shape = Shape(args.quick, args.depth)
    torch.manual_seed(0)
    models = {
        execution: shape.model(execution="packed" if execution == "budget" else execution) for execution in EXECUTIONS
    }
    models["budget"].budget = 0
    for execution in ("padded", "budget"):
        models[execution].load_state_dict(models["packed"].state_dict())
    for model in models.values():
        model.to(args.device)
    vit = shape.timm(args.device)
    baseline = "timm vit_small_patch16_224" if vit is not None else "plain ViT (same layers)"
    if args.progress:
        print(f"MSViT benchmark on {args.device}, torch threads {threads}, depth {shape.depth}", flush=True)
    rows = []
    for phase in args.phases:
        for model in (*models.values(), vit):
            if model is not None:
                model.train(phase == "training")
        for batch in batches:
            rows += bench_group(shape, models, vit, batch, phase, args.rates, not args.no_uneven, repeats, args)
    found = targets(rows)
    report = [
        "### MSViT: images per second against the all-fine ViT",
        "",
        *bc.machine_markdown(info),
        f"Shape: width {shape.dim}, {shape.heads} heads, depth {shape.depth}, {shape.image}x{shape.image} images, "
        f"{shape.regions} regions of {shape.coarse} pixels, {shape.cells} fine patches. Median of {repeats} "
        "interleaved repeats, float32. "
        + (
            "CUDA events."
            if torch.device(args.device).type == "cuda"
            else bc.load_note(args.max_other_load, args.attempts)
        ),
        "",
        *baseline_lines(rows),
        "",
        *table(rows, baseline),
    ]
    if found:
        report += ["", "Targets (speed-up >= 0.85 x token ratio at 30% and 50% split):", "", *target_lines(found)]
    result = bc.publish(
        report,
        args,
        {"machine": info, "threads": threads, "repeats": repeats, "baseline": baseline, "rows": rows, "targets": found},
    )
    if args.plot:
        plot(
            rows, args.plot, f"MSViT (ViT-S shape, depth {shape.depth}) on {bc.where_measured(info, threads)}", baseline
        )
    return result


if __name__ == "__main__":
    main()
