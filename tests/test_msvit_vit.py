"""End-to-end MSViT example: the plain-PyTorch ViT on mixed tokens (the timm adapter: test_msvit_timm.py)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from gbs_loss.msvit import MixedScaleGate, MixedScaleViT, ViTOutput, msvit_gate_loss


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


@pytest.mark.parametrize("execution", ["packed", "padded"])
@pytest.mark.parametrize("mode", ["train", "eval", "inference"])
def test_padding_does_not_change_an_images_result(mode, execution):
    # "inference" takes PyTorch's fused encoder path (no autograd), the others the regular one.
    model = _model(execution=execution).train(mode == "train")
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


@pytest.mark.parametrize("execution", ["auto", "packed"])
def test_fixed_max_tokens_gives_the_same_result(execution):
    model = _model(max_tokens=16, execution=execution).eval()
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
    with pytest.raises(ValueError, match="images must be 64x64 .*image_size.*got 96x96"):
        model(torch.randn(1, 3, 96, 96))


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"mlp_ratio": "4"}, TypeError, "mlp_ratio must be a number > 0 .*got str '4'"),
        ({"mlp_ratio": 0.0}, ValueError, "mlp_ratio must be a finite number > 0"),
        ({"mlp_ratio": float("inf")}, ValueError, "mlp_ratio must be a finite number > 0"),
        ({"dropout": 1.0}, ValueError, r"dropout must be a number in \[0, 1\), got 1.0"),
        ({"dropout": None}, TypeError, r"dropout must be a number in \[0, 1\), got NoneType"),
        ({"num_classes": 10.0}, TypeError, "num_classes must be a positive int, got float"),
        ({"depth": 0}, ValueError, "depth must be a positive int, got 0"),
        ({"max_tokens": 0}, ValueError, "max_tokens must be a positive int, got 0"),
        ({"budget": 5}, ValueError, r"budget must be in \[0, 4\]"),
        ({"budget": 1, "max_tokens": 8}, ValueError, "give budget or max_tokens, not both"),
        ({"execution": "nested"}, ValueError, "execution must be 'auto', 'packed' or 'padded', got 'nested'"),
        ({"attention": "flash"}, ValueError, "attention must be 'auto', 'nested' or 'padded', got 'flash'"),
        (
            {"fine_size": 8, "gate": MixedScaleGate(32, 16)},
            ValueError,
            "the gate has coarse_size=32, fine_size=16 and in_channels=3, expected 32, 8 and 3",
        ),
    ],
)
def test_every_constructor_argument_is_validated(kwargs, error, message):
    options = {"num_classes": 5, "image_size": 64, "embed_dim": 32, "depth": 2, "num_heads": 4}
    options.update(kwargs)
    with pytest.raises(error, match=message):
        MixedScaleViT(**options)
