"""Packed (variable-length) execution of MSViT: equal to the padded path, budget mode, compile, the timm runner."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from gbs_loss.msvit import MixedScaleViT
from gbs_loss.msvit._packed import (
    pack,
    packed_attention,
    packed_layout,
    run_encoder_layers,
    run_timm_blocks,
    unpack,
)


def _model(**kwargs) -> MixedScaleViT:
    torch.manual_seed(0)
    options = {"num_classes": 5, "image_size": 128, "embed_dim": 32, "depth": 2, "num_heads": 4}
    options.update(kwargs)
    return MixedScaleViT(**options)


def _images(batch: int = 6, size: int = 128) -> torch.Tensor:
    return torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(1))


def _bernoulli_mask(batch: int = 6, p: float = 0.4, seed: int = 2) -> torch.Tensor:
    mask = (torch.rand(batch, 4, 4, generator=torch.Generator().manual_seed(seed)) < p).float()
    mask[0] = 0  # one all-coarse image and one all-fine image: the extremes of the batch
    mask[1] = 1
    return mask


# -- the layout ------------------------------------------------------------------------------------------------------
def test_pack_and_unpack_round_trip():
    lengths = torch.tensor([3, 0, 5, 1])
    layout = packed_layout(lengths)
    assert (layout.length, layout.total) == (5, 9)
    x = torch.randn(4, 5, 2)
    keep = (torch.arange(5)[None] < lengths[:, None]).unsqueeze(-1)
    packed = pack(x, layout)
    assert packed.shape == (9, 2)
    torch.testing.assert_close(unpack(packed, layout), x * keep)
    assert layout.image.tolist() == [0, 0, 0, 2, 2, 2, 2, 2, 3]
    dense = packed_layout(torch.tensor([4, 4]), 4, 8)
    assert dense.dense and dense.index is None
    y = torch.randn(2, 4, 3)
    assert torch.equal(unpack(pack(y, dense), dense), y)


@pytest.mark.filterwarnings("ignore:The PyTorch API of nested tensors is in prototype stage")
@pytest.mark.parametrize("attention", ["padded", "nested"])
def test_packed_attention_is_attention_per_image(attention):
    lengths = torch.tensor([4, 1, 7])
    layout = packed_layout(lengths)
    q, k, v = (torch.randn(12, 2, 8, generator=torch.Generator().manual_seed(s)) for s in range(3))
    out = packed_attention(q, k, v, layout, attention=attention)
    start = 0
    for n in lengths.tolist():
        sl = slice(start, start + n)
        alone = F.scaled_dot_product_attention(q[sl].transpose(0, 1), k[sl].transpose(0, 1), v[sl].transpose(0, 1))
        torch.testing.assert_close(out[sl], alone.transpose(0, 1), rtol=1e-5, atol=1e-6)
        start += n


def test_encoder_layers_on_packed_tokens_equal_the_masked_encoder():
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(16, 2, 32, 0.0, batch_first=True, norm_first=True)
    encoder = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False).eval()
    lengths = torch.tensor([5, 2, 4])
    x = torch.randn(3, 5, 16)
    padding = torch.arange(5)[None] >= lengths[:, None]
    reference = encoder(x, src_key_padding_mask=padding)
    layout = packed_layout(lengths)
    out = unpack(run_encoder_layers(encoder.layers, pack(x, layout), layout), layout)
    torch.testing.assert_close(out[~padding], reference[~padding], rtol=1e-5, atol=1e-5)
    with pytest.raises(TypeError, match="layer 0 must be an nn.TransformerEncoderLayer"):
        run_encoder_layers([nn.Linear(16, 16)], pack(x, layout), layout)


# -- MixedScaleViT: packed equals padded ------------------------------------------------------------------------------
@pytest.mark.filterwarnings("ignore:The PyTorch API of nested tensors is in prototype stage")
@pytest.mark.parametrize("attention", ["padded", "nested"])
@pytest.mark.parametrize("inference", [False, True])
def test_packed_logits_equal_the_padded_ones(attention, inference):
    packed = _model(execution="packed", attention=attention).eval()
    padded = _model(execution="padded").eval()
    padded.load_state_dict(packed.state_dict())
    images, mask = _images(), _bernoulli_mask()
    with torch.inference_mode(inference):
        a, b = packed(images, mask), padded(images, mask)
    torch.testing.assert_close(a.logits, b.logits, rtol=1e-5, atol=1e-5)
    real = ~a.tokens.padding_mask
    torch.testing.assert_close(a.features[real], b.features[real], rtol=1e-5, atol=1e-5)
    assert (a.features[~real] == 0).all()
    for x, y in zip(a.tokens[:7], b.tokens[:7], strict=True):
        torch.testing.assert_close(x, y)


def test_packed_training_step_gives_the_padded_gradients():
    packed = _model(execution="packed").train()
    padded = _model(execution="padded").train()
    images = _images()
    grads = []
    for model in (packed, padded):
        torch.manual_seed(5)  # the same gate noise
        out = model(images)
        real = ~out.tokens.padding_mask  # padded rows hold meaningless values in the padded execution
        loss = F.cross_entropy(out.logits, torch.arange(6) % 5) + out.features[real].square().mean()
        loss.backward()
        grads.append({n: p.grad for n, p in model.named_parameters()})
    assert grads[0].keys() == grads[1].keys()
    for name in grads[0]:
        torch.testing.assert_close(grads[0][name], grads[1][name], rtol=1e-4, atol=1e-6, msg=name)
    assert all(p.grad.abs().sum() > 0 for p in packed.gate.parameters())


def test_state_dict_keys_are_those_of_the_transformer_encoder():
    keys = set(_model(execution="packed").state_dict())
    assert "encoder.layers.0.self_attn.in_proj_weight" in keys and "encoder.norm.weight" in keys
    assert keys == set(_model(execution="padded").state_dict())


def test_grad_checkpointing_recomputes_the_layers_with_the_same_gradients(monkeypatch):
    images, mask = _images(), _bernoulli_mask()
    grads = []
    calls = []
    from torch.utils import checkpoint as cp

    original = cp.checkpoint

    def counting(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(cp, "checkpoint", counting)
    for enable in (False, True):
        model = _model(execution="packed").eval()
        model.set_grad_checkpointing(enable)
        model(images, mask).logits.sum().backward()
        grads.append([p.grad for p in model.parameters() if p.grad is not None])
    assert len(calls) == 2  # one per layer, only when enabled
    for g, h in zip(*grads, strict=True):
        torch.testing.assert_close(g, h)


# -- budget mode ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("budget", [0, 3, 16, 0.3])
def test_budget_mode_gives_dense_batches_and_the_padded_result(budget):
    model = _model(budget=budget).eval()
    k = budget if isinstance(budget, int) else round(0.3 * 16)
    images = _images()
    out = model(images)
    assert out.tokens.tokens.shape[1] == 16 + 3 * k and not out.tokens.padding_mask.any()
    assert torch.equal(out.gate.mask.sum((1, 2)), torch.full((6,), float(k)))
    padded = _model(execution="padded").eval()
    padded.load_state_dict(model.state_dict())
    torch.testing.assert_close(out.logits, padded(images, out.gate.mask).logits, rtol=1e-5, atol=1e-5)


def test_budget_mode_trains_the_gate_through_the_top_k():
    model = _model(budget=0.25).train()
    out = model(_images())
    F.cross_entropy(out.logits, torch.arange(6) % 5).backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.gate.parameters())


def test_budget_mode_compiles_to_one_graph():
    model = _model(budget=4).eval()
    images = _images(4)
    expected = model(images).logits
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    torch.testing.assert_close(compiled(images).logits, expected, rtol=1e-5, atol=1e-5)
    model.train()
    out = compiled(images)  # training mode (gate noise, straight-through) also traces without a break
    out.logits.sum().backward()


# -- max_tokens: un-split the least confident regions ------------------------------------------------------------------
def test_max_tokens_unsplits_the_regions_with_the_lowest_logits():
    model = _model(max_tokens=22).eval()  # 16 regions + 2 splits
    images = _images()
    out = model(images)
    logits = out.gate.logits.reshape(6, -1)
    split = out.gate.mask.reshape(6, -1).bool()
    for i in range(6):
        chosen = logits[i][split[i]].sort(descending=True).values[:2]
        fine_regions = out.tokens.is_fine[i].sum().item() // 4
        assert fine_regions == min(2, int(split[i].sum()))
        # The kept splits are the most confident ones: their tokens cover the regions with the largest logits.
        kept = torch.zeros(16, dtype=torch.bool)
        cells = out.tokens.positions[i][out.tokens.is_fine[i]]
        kept[(cells // 8 // 2) * 4 + (cells % 8) // 2] = True
        assert torch.equal(logits[i][kept].sort(descending=True).values, chosen)


# -- timm's own blocks ------------------------------------------------------------------------------------------------
def _timm_blocks(**kwargs):
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    vit = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=5, img_size=64, **kwargs)
    return vit.blocks


@pytest.mark.parametrize("kwargs", [{}, {"qk_norm": True, "init_values": 0.1}])
def test_timm_blocks_on_packed_tokens_equal_each_image_alone(kwargs):
    blocks = _timm_blocks(**kwargs).eval()
    x = torch.randn(3, 17, 192)
    lengths = torch.tensor([17, 9, 12])
    out = run_timm_blocks(blocks, x, lengths)
    for i, n in enumerate(lengths.tolist()):
        torch.testing.assert_close(out[i, :n], blocks(x[i : i + 1, :n])[0], rtol=1e-5, atol=1e-5)
        assert (out[i, n:] == 0).all()
    torch.testing.assert_close(run_timm_blocks(blocks, x, None), blocks(x), rtol=1e-5, atol=1e-5)


def test_timm_blocks_with_drop_path_drop_whole_images_and_checkpoint():
    blocks = _timm_blocks(drop_path_rate=0.5).train()
    x = torch.randn(8, 10, 192, requires_grad=True)
    lengths = torch.full((8,), 10)
    torch.manual_seed(3)
    out = run_timm_blocks(blocks, x, lengths, checkpoint=True)
    out.sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    with pytest.raises(TypeError, match="block 0 must be a timm vision_transformer.Block"):
        run_timm_blocks([nn.Linear(4, 4)], x, lengths)
    with pytest.raises(NotImplementedError, match="rope must be None"):
        run_timm_blocks(blocks, x, lengths, rope=torch.zeros(1))


# -- the benchmark ----------------------------------------------------------------------------------------------
def test_benchmark_quick_mode_writes_a_table_json_and_plot(tmp_path):
    pytest.importorskip("matplotlib")
    import json
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import bench_msvit

    argv = ["--quick", "--batches", "2", "--rates", "0.5", "--repeats", "1", "--min-time", "0", "--threads", "1"]
    argv += ["--attempts", "1", "--quiet", "--json", str(tmp_path / "r.json"), "--plot", str(tmp_path / "r.png")]
    result = bench_msvit.main(argv)
    rows = result["rows"]
    assert {(r["phase"], r["execution"], r["label"]) for r in rows} >= {
        ("inference", "packed", "50%"),
        ("inference", "budget", "50%"),
        ("training", "padded", "50%"),
        ("training", "packed", "u30%"),
    }
    packed = next(r for r in rows if r["phase"] == "inference" and r["execution"] == "packed" and r["label"] == "50%")
    assert 0 < packed["gate_share"] and 0 < packed["tokenizer_share"]
    assert packed["token_ratio"] == pytest.approx(17 / (packed["mean_tokens"] + 1))
    assert "| batch | phase | split | execution |" in result["markdown"]
    assert len(result["targets"]) == 4  # 50%: packed and budget, inference and training
    assert json.loads((tmp_path / "r.json").read_text())["rows"]
    assert (tmp_path / "r.png").read_bytes().startswith(b"\x89PNG")
