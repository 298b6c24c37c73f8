"""End-to-end MSViT examples: the plain-PyTorch ViT on mixed tokens and the optional timm adapter."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from gbs_loss.msvit import MixedScaleGate, MixedScaleViT, TimmMixedScaleViT, ViTOutput, msvit_gate_loss


def _model(**kwargs) -> MixedScaleViT:
    torch.manual_seed(0)
    options = {"num_classes": 5, "image_size": 64, "embed_dim": 32, "depth": 2, "num_heads": 4}
    options.update(kwargs)
    return MixedScaleViT(**options)


def _images(batch: int = 4, size: int = 64) -> torch.Tensor:
    return torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(1))


def _mixed_mask() -> torch.Tensor:
    return torch.tensor(
        [[[1.0, 0.0], [0.0, 0.0]], [[1.0, 1.0], [1.0, 1.0]], [[0.0, 0.0], [0.0, 0.0]], [[0.0, 1.0], [1.0, 0.0]]]
    )


# -- the plain-PyTorch ViT ---------------------------------------------------------------------------------------
def test_output_shapes():
    model = _model().eval()
    out = model(_images())
    assert isinstance(out, ViTOutput)
    assert out.logits.shape == (4, 5)
    assert out.gate.mask.shape == (4, 2, 2)
    assert out.features.shape == (4, out.tokens.tokens.shape[1], 32)
    assert torch.equal(out.tokens.lengths, 4 + 3 * out.gate.mask.sum((1, 2)).long())


@pytest.mark.parametrize("mode", ["train", "eval", "inference"])
def test_padding_does_not_change_an_images_result(mode):
    # "inference" takes PyTorch's fused encoder path (no autograd), the others the regular one.
    model = _model().train(mode == "train")
    images, mask = _images(), _mixed_mask()
    with torch.inference_mode(mode == "inference"):
        batched = model(images, mask)
        assert batched.tokens.padding_mask.any()
        for i in range(4):
            alone = model(images[i : i + 1], mask[i : i + 1])
            torch.testing.assert_close(batched.logits[i], alone.logits[0], rtol=1e-4, atol=1e-5)
            n = int(alone.tokens.lengths[0])
            torch.testing.assert_close(batched.features[i, :n], alone.features[0, :n], rtol=1e-4, atol=1e-5)


def test_all_fine_mask_is_a_plain_vit():
    model = _model().eval()
    images = _images()
    out = model(images, torch.ones(4, 2, 2))
    tok = model.tokenizer
    x = tok.patch_embed(images).flatten(2).transpose(1, 2) + tok.pos_embed.reshape(1, -1, 32)
    x = torch.cat([model.cls_token.expand(4, -1, -1), x], dim=1)
    plain = model.head(model.encoder(x)[:, 0])
    torch.testing.assert_close(out.logits, plain, rtol=1e-4, atol=1e-5)


def test_fixed_max_tokens_gives_the_same_result():
    model = _model(max_tokens=16).eval()
    images, mask = _images(), _mixed_mask()
    fixed = model(images, mask)
    assert fixed.tokens.tokens.shape[1] == 16
    model.tokenizer.max_tokens = None
    free = model(images, mask)
    torch.testing.assert_close(fixed.logits, free.logits, rtol=1e-4, atol=1e-5)


def test_task_loss_reaches_the_gate_through_the_straight_through_estimator():
    model = _model().train()
    out = model(_images())
    F.cross_entropy(out.logits, torch.tensor([0, 1, 2, 3])).backward()
    grads = [p.grad for p in model.gate.parameters()]
    assert all(g is not None and g.abs().sum() > 0 for g in grads)


def test_training_step_with_the_gbas_loss():
    model = _model().train()
    criterion = msvit_gate_loss((2, 2), target=0.3)
    optimizer = torch.optim.SGD([*model.parameters(), *criterion.parameters()], lr=0.01)
    out = model(_images())
    loss = F.cross_entropy(out.logits, torch.tensor([0, 1, 2, 3])) + criterion(out.gate.soft)
    before = model.gate.mlp[0].weight.detach().clone()
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    assert torch.isfinite(loss)
    assert not torch.equal(before, model.gate.mlp[0].weight)


def test_dense_features_map_back_to_the_fine_grid():
    model = _model().eval()
    out = model(_images(), _mixed_mask())
    grid = out.tokens.to_grid(out.features)
    assert grid.shape == (4, 4, 4, 32)
    # Image 2 is all coarse: every 2x2 block of cells carries one token's features.
    torch.testing.assert_close(grid[2, 0, 0], grid[2, 1, 1])
    torch.testing.assert_close(grid[2, 0, 0], out.features[2, 0])


def test_bad_arguments_are_rejected():
    with pytest.raises(ValueError, match="image_size must be a multiple of coarse_size=32, got 72"):
        MixedScaleViT(image_size=72)
    with pytest.raises(ValueError, match="num_heads must divide embed_dim=32, got 3"):
        MixedScaleViT(embed_dim=32, num_heads=3)
    with pytest.raises(ValueError, match="the gate has coarse_size=48"):
        MixedScaleViT(gate=MixedScaleGate(coarse_size=48))
    with pytest.raises(TypeError, match="gate must be a MixedScaleGate or None, got Linear"):
        MixedScaleViT(gate=torch.nn.Linear(2, 2))
    model = _model()
    with pytest.raises(ValueError, match="pos_embed must be the fine grid of position embeddings for a 6x6 grid"):
        model(torch.randn(1, 3, 96, 96))


# -- timm (optional) ---------------------------------------------------------------------------------------------
def _timm_vit(**kwargs):
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    options = {"pretrained": False, "num_classes": 5, "img_size": 64}
    options.update(kwargs)
    return timm.create_model("vit_tiny_patch16_224", **options).eval()


@pytest.mark.parametrize("pool", ["token", "avg"])
def test_timm_all_fine_equals_the_timm_vit(pool):
    vit = _timm_vit(global_pool=pool)
    model = TimmMixedScaleViT(vit).eval()
    images = _images()
    torch.testing.assert_close(model(images, torch.ones(4, 2, 2)).logits, vit(images), rtol=1e-4, atol=1e-5)


def test_timm_register_tokens_and_unshared_class_position():
    vit = _timm_vit(reg_tokens=2, no_embed_class=True)
    model = TimmMixedScaleViT(vit).eval()
    images = _images()
    torch.testing.assert_close(model(images, torch.ones(4, 2, 2)).logits, vit(images), rtol=1e-4, atol=1e-5)


def test_timm_padding_does_not_change_an_images_result():
    model = TimmMixedScaleViT(_timm_vit()).eval()
    images, mask = _images(), _mixed_mask()
    batched = model(images, mask)
    for i in range(4):
        alone = model(images[i : i + 1], mask[i : i + 1])
        torch.testing.assert_close(batched.logits[i], alone.logits[0], rtol=1e-4, atol=1e-5)


def test_timm_blocks_without_attention_mask_run_image_by_image():
    model = TimmMixedScaleViT(_timm_vit()).eval()
    assert model.masked_blocks  # recent timm blocks accept attn_mask
    images, mask = _images(), _mixed_mask()
    masked = model(images, mask)
    model.masked_blocks = False  # the path taken for older timm versions
    one_by_one = model(images, mask)
    torch.testing.assert_close(one_by_one.logits, masked.logits, rtol=1e-4, atol=1e-5)


def test_timm_task_loss_reaches_the_gate():
    model = TimmMixedScaleViT(_timm_vit()).train()
    out = model(_images())
    F.cross_entropy(out.logits, torch.tensor([0, 1, 2, 3])).backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.gate.parameters())


def test_timm_adapter_rejects_models_without_a_conv_patch_embedding():
    with pytest.raises(TypeError, match="patch_embed.proj is an nn.Conv2d, got Linear"):
        TimmMixedScaleViT(torch.nn.Linear(2, 2))


def test_timm_adapter_rejects_attention_pooling():
    vit = _timm_vit(global_pool="map")
    with pytest.raises(ValueError, match="global_pool must be 'token' or 'avg', got 'map'"):
        TimmMixedScaleViT(vit)
