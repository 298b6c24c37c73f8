"""The MSViT adapter around real timm Vision Transformers (``gbs_loss.msvit.timm``) and ``from_timm``.

Skipped without timm, unless ``GBS_LOSS_REQUIRE_TIMM=1`` (CI's timm environment), where a missing timm fails.
Models are built with ``pretrained=False``: nothing is downloaded.
"""

from __future__ import annotations

import os

import pytest
import torch
import torch.nn.functional as F

from gbs_loss.msvit import MixedScaleGate, TimmMixedScaleViT, ViTOutput, from_timm

if os.environ.get("GBS_LOSS_REQUIRE_TIMM") == "1":
    import timm  # GBS_LOSS_REQUIRE_TIMM=1: a missing timm is an error, not a skip
else:
    timm = pytest.importorskip("timm")


def _create(name: str, **kwargs) -> torch.nn.Module:
    torch.manual_seed(0)
    return timm.create_model(name, pretrained=False, **kwargs).eval()


def _tiny(**kwargs) -> torch.nn.Module:
    """A small ViT (width 192, depth 12) on 64x64 images, for the tests that need no particular model."""
    options = {"num_classes": 5, "img_size": 64}
    options.update(kwargs)
    return _create("vit_tiny_patch16_224", **options)


def _images(batch: int = 4, size: int | tuple[int, int] = 64) -> torch.Tensor:
    h, w = (size, size) if isinstance(size, int) else size
    return torch.randn(batch, 3, h, w, generator=torch.Generator().manual_seed(1))


def _mixed_mask(batch: int = 4, regions: tuple[int, int] = (2, 2)) -> torch.Tensor:
    """Split masks with every image at a different token count (image 1 all split, image 2 all coarse)."""
    mask = (torch.rand(batch, *regions, generator=torch.Generator().manual_seed(2)) > 0.5).float()
    mask[1] = 1.0
    mask[2] = 0.0
    return mask


# -- compatibility: every region split gives the timm model's own logits -----------------------------------------
COMPATIBLE = [
    pytest.param("vit_small_patch16_224", {}, 224, id="vit_small_patch16_224"),
    pytest.param("deit_small_patch16_224", {}, 224, id="deit_small_patch16_224"),
    pytest.param("vit_small_patch14_reg4_dinov2", {"img_size": 224}, 224, id="vit_small_patch14_reg4_dinov2"),
    pytest.param("vit_small_patch16_224", {"global_pool": "avg"}, 224, id="global_avg_pool"),
    pytest.param("vit_small_patch16_224", {"dynamic_img_size": True}, 224, id="dynamic_img_size"),
    pytest.param("deit_tiny_distilled_patch16_224", {"img_size": 64}, 64, id="deit_tiny_distilled"),
    pytest.param("vit_tiny_patch16_224", {"img_size": 64, "global_pool": "max"}, 64, id="max_pool"),
    pytest.param("vit_tiny_patch16_224", {"img_size": 64, "global_pool": "avgmax"}, 64, id="avgmax_pool"),
    pytest.param("vit_tiny_patch16_224", {"img_size": 64, "global_pool": "map"}, 64, id="map_pool"),
    pytest.param("vit_tiny_patch16_224", {"img_size": 64, "global_pool": ""}, 64, id="no_pool"),
    pytest.param(
        "vit_tiny_patch16_224",
        {"img_size": 64, "global_pool": "avg", "pool_include_prefix": True, "reg_tokens": 2},
        64,
        id="avg_pool_with_prefix",
    ),
    pytest.param("vit_tiny_patch16_224", {"img_size": 64, "reg_tokens": 2, "no_embed_class": True}, 64, id="registers"),
    pytest.param("vit_tiny_patch16_224", {"img_size": 64, "class_token": False, "global_pool": "avg"}, 64, id="no_cls"),
    pytest.param("vit_tiny_patch16_224", {"img_size": 64, "pre_norm": True}, 64, id="pre_norm"),
]


@pytest.mark.parametrize(("name", "kwargs", "size"), COMPATIBLE)
def test_every_region_split_gives_the_timm_models_own_logits(name, kwargs, size):
    vit = _create(name, num_classes=7, **kwargs)
    model = TimmMixedScaleViT(vit).eval()
    images = _images(2, size)
    regions = size // model.coarse_size
    with torch.no_grad():
        ours = model(images, torch.ones(2, regions, regions)).logits
        theirs = vit(images)
    # Everything after the embedding is timm's own code path; the tokenizer embeds the patches with a matrix
    # product instead of timm's convolution, hence float32 rounding differences (about 1e-6) rather than 0.0.
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    "kwargs",
    [
        pytest.param({}, id="token"),
        pytest.param({"global_pool": "avg"}, id="avg"),
        pytest.param({"global_pool": "max"}, id="max"),
        pytest.param({"global_pool": "avgmax"}, id="avgmax"),
        pytest.param({"global_pool": "map"}, id="map"),
        pytest.param({"global_pool": "avg", "pool_include_prefix": True, "reg_tokens": 2}, id="avg_with_prefix"),
        pytest.param({"reg_tokens": 2, "no_embed_class": True}, id="registers"),
        pytest.param({"global_pool": ""}, id="no_pool"),
    ],
)
def test_padding_does_not_change_an_images_result(kwargs):
    # Alone, an image has no padding and runs through timm's own forward_head on the same features; batched, the
    # padding must be invisible to attention and to the pooling.
    model = TimmMixedScaleViT(_tiny(**kwargs)).eval()
    images, mask = _images(), _mixed_mask()
    with torch.no_grad():
        batched = model(images, mask)
        assert batched.tokens.padding_mask.any()
        for i in range(4):
            alone = model(images[i : i + 1], mask[i : i + 1])
            n = alone.logits.shape[1] if kwargs.get("global_pool") == "" else None
            torch.testing.assert_close(batched.logits[i, :n], alone.logits[0], rtol=1e-4, atol=1e-5)


def test_distilled_deit_averages_its_two_heads_on_mixed_tokens():
    vit = _create("deit_tiny_distilled_patch16_224", num_classes=5, img_size=64)
    model = TimmMixedScaleViT(vit).eval()
    assert model.num_prefix_tokens == 2
    images, mask = _images(), _mixed_mask()
    with torch.no_grad():
        out = model(images, mask)
        x = model.vit.norm(torch.cat([out.features.new_zeros(4, 2, 192), out.features], 1))  # shape check only
        alone = torch.cat([model(images[i : i + 1], mask[i : i + 1]).logits for i in range(4)])
    assert x.shape[1] == 2 + out.features.shape[1]
    torch.testing.assert_close(out.logits, alone, rtol=1e-4, atol=1e-5)
    # Training with distillation: timm returns the two heads' logits separately; so does the adapter.
    vit.set_distilled_training(True)
    model.train()
    logits, logits_dist = model(images, mask).logits
    assert logits.shape == logits_dist.shape == (4, 5)


def test_dynamic_img_size_runs_at_other_image_sizes():
    vit = _create("vit_tiny_patch16_224", num_classes=5, img_size=64, dynamic_img_size=True)
    model = TimmMixedScaleViT(vit).eval()
    images = _images(2, (96, 64))
    with torch.no_grad():
        ours = model(images, torch.ones(2, 3, 2)).logits
        theirs = vit(images)
        mixed = model(images)
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)
    assert mixed.gate.mask.shape == (2, 3, 2)


def test_blocks_without_attention_mask_run_image_by_image():
    model = TimmMixedScaleViT(_tiny()).eval()
    assert model.masked_blocks  # timm 1.x blocks take attn_mask
    images, mask = _images(), _mixed_mask()
    with torch.no_grad():
        masked = model(images, mask)
        model.masked_blocks = False  # the path for old timm versions
        one_by_one = model(images, mask)
    torch.testing.assert_close(one_by_one.logits, masked.logits, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(
    "kwargs",
    [
        pytest.param({}, id="token"),
        pytest.param({"global_pool": "avg", "reg_tokens": 2}, id="avg_registers"),
        pytest.param({"global_pool": "map", "init_values": 1e-5, "qk_norm": True}, id="map_layerscale_qknorm"),
        pytest.param({"class_token": False, "global_pool": "avgmax"}, id="no_cls"),
    ],
)
def test_packed_execution_equals_the_padded_path(kwargs):
    model = TimmMixedScaleViT(_tiny(**kwargs)).eval()
    assert model.packed  # timm's Block: the packed runner, no compute on padding
    images, mask = _images(), _mixed_mask()
    packed = model(images, mask)
    packed.logits.sum().backward()
    grads = [p.grad.clone() for p in model.vit.parameters()]
    model.zero_grad()
    model.packed = False  # the masked padded path
    padded = model(images, mask)
    padded.logits.sum().backward()
    torch.testing.assert_close(packed.logits, padded.logits, rtol=1e-4, atol=1e-5)
    keep = ~packed.tokens.padding_mask
    torch.testing.assert_close(packed.features[keep], padded.features[keep], rtol=1e-4, atol=1e-5)
    for g, p in zip(grads, model.vit.parameters(), strict=True):
        torch.testing.assert_close(p.grad, g, rtol=1e-3, atol=1e-5)


def test_other_block_types_run_masked_and_packed_true_is_refused_for_them():
    from timm.models.vision_transformer import ResPostBlock

    vit = _tiny(block_fn=ResPostBlock, depth=2)
    model = TimmMixedScaleViT(vit).eval()
    assert not model.packed and model.masked_blocks
    images, mask = _images(), _mixed_mask()
    with torch.no_grad():
        batched = model(images, mask)
        alone = torch.cat([model(images[i : i + 1], mask[i : i + 1]).logits for i in range(4)])
    torch.testing.assert_close(batched.logits, alone, rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="packed=True needs timm's vision_transformer.Block"):
        TimmMixedScaleViT(vit, packed=True)


def test_gate_budget_mode_needs_no_padding():
    vit = _tiny(img_size=128)
    gate = MixedScaleGate(32, 16, budget=5)
    model = TimmMixedScaleViT(vit, gate=gate).eval()
    images = _images(4, 128)
    with torch.no_grad():
        out = model(images)
        assert not out.tokens.padding_mask.any()
        assert out.tokens.lengths.tolist() == [16 + 3 * 5] * 4
        model.gate.budget = None
        masked = model(images, out.gate.mask)
    torch.testing.assert_close(out.logits, masked.logits, rtol=1e-5, atol=1e-5)


def test_a_fresh_gate_starts_near_the_target_split_rate():
    model = from_timm(_create("vit_small_patch16_224", num_classes=5, depth=1), target=0.3).train()
    assert model.gate.init_rate == 0.3
    with torch.no_grad():
        rate = model.gate(_images(32, 224)).mask.mean().item()
    assert 0.2 < rate < 0.4


def test_a_fresh_gate_splits_about_the_target_in_evaluation_whatever_the_seed():
    rates = []
    for seed in range(3):
        torch.manual_seed(seed)
        model = from_timm(_create("vit_small_patch16_224", num_classes=5, depth=1), target=0.3).eval()
        with torch.no_grad():
            images = torch.randn(16, 3, 224, 224, generator=torch.Generator().manual_seed(100 + seed))
            model(images)
            rates.append(model.last_output.gate.mask.mean().item())
    assert all(abs(r - 0.3) < 0.12 for r in rates), rates


# -- defaults for every patch size --------------------------------------------------------------------------------
@pytest.mark.parametrize(("patch", "size", "resolution"), [(8, 64, 8), (14, 56, 7), (16, 64, 8), (32, 128, 8)])
def test_defaults_fit_every_patch_size(patch, size, resolution):
    vit = _create("vit_tiny_patch16_224", num_classes=5, img_size=size, patch_size=patch, depth=2)
    model = TimmMixedScaleViT(vit).eval()
    assert model.fine_size == patch and model.coarse_size == 2 * patch
    assert model.gate.gate_resolution == resolution
    with torch.no_grad():
        out = model(_images(2, size))
    assert out.logits.shape == (2, 5)


def test_patch14_dinov2_with_registers_is_accepted_with_a_fitting_gate():
    vit = _create("vit_small_patch14_reg4_dinov2", img_size=224, num_classes=3)
    model = TimmMixedScaleViT(vit)
    assert (model.coarse_size, model.gate.gate_resolution, model.num_prefix_tokens) == (28, 7, 5)


# -- training: gate loss, gradient checkpointing, state_dict ---------------------------------------------------
def test_forward_backward_with_the_gate_loss():
    model = from_timm(_tiny(), target=0.3).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    images, labels = _images(), torch.tensor([0, 1, 2, 3])
    logits = model(images)
    assert isinstance(logits, torch.Tensor) and logits.shape == (4, 5)
    assert isinstance(model.last_output, ViTOutput) and model.last_output.gate is not None
    loss = F.cross_entropy(logits, labels) + model.gate_loss()
    loss.backward()
    assert torch.isfinite(loss)
    for name, p in model.named_parameters():
        assert p.grad is None or torch.isfinite(p.grad).all(), name
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.gate.parameters())
    assert model.gate_criterion.mean_logits.grad is not None
    optimizer.step()


def _count_checkpoints(monkeypatch) -> list[int]:
    calls = [0]
    original = torch.utils.checkpoint.checkpoint

    def counting(*args, **kwargs):
        calls[0] += 1
        return original(*args, **kwargs)

    monkeypatch.setattr(torch.utils.checkpoint, "checkpoint", counting)
    return calls


@pytest.mark.parametrize("split", ["all", "mixed"])
def test_grad_checkpointing_is_honoured(monkeypatch, split):
    vit = _tiny()
    model = TimmMixedScaleViT(vit).train()
    images = _images()
    mask = torch.ones(4, 2, 2) if split == "all" else _mixed_mask()
    torch.manual_seed(3)
    plain = model(images, mask).logits
    plain.sum().backward()
    grads = [p.grad.clone() for p in vit.parameters()]
    model.zero_grad()

    calls = _count_checkpoints(monkeypatch)
    model.set_grad_checkpointing(True)
    vit(images).sum().backward()
    timm_calls, calls[0] = calls[0], 0
    model.zero_grad()
    torch.manual_seed(3)
    checkpointed = model(images, mask).logits
    checkpointed.sum().backward()
    assert timm_calls == len(vit.blocks) == 12
    assert calls[0] == timm_calls
    torch.testing.assert_close(checkpointed, plain)
    for g, p in zip(grads, vit.parameters(), strict=True):
        torch.testing.assert_close(p.grad, g, rtol=1e-4, atol=1e-6)
    with torch.no_grad():  # no checkpoint without autograd, as in timm
        calls[0] = 0
        model(images, mask)
    assert calls[0] == 0


def test_state_dict_round_trips():
    model = from_timm(_tiny(), target=0.3).eval()
    with torch.no_grad():
        model.gate_criterion.mean_logits.add_(0.5)
    torch.manual_seed(5)
    other = from_timm(timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=5, img_size=64))
    other.eval()
    state = model.state_dict()
    assert any(k.startswith("gate_criterion.") for k in state) and any(k.startswith("gate.") for k in state)
    other.load_state_dict(state)
    images = _images()
    with torch.no_grad():
        assert torch.equal(other(images), model(images))
        assert torch.equal(other.last_output.gate.mask, model.last_output.gate.mask)
    assert torch.equal(other.gate_criterion.mean_logits, model.gate_criterion.mean_logits)


def test_deepcopy_after_a_training_step_as_timms_model_ema_does():
    import copy

    model = from_timm(_tiny()).train()
    F.cross_entropy(model(_images()), torch.tensor([0, 1, 2, 3])).backward()
    ema = copy.deepcopy(model)
    assert ema.last_output is None and model.last_output is not None
    with torch.no_grad():
        assert torch.equal(ema.eval()(_images()), model.eval()(_images()))


def test_timm_optimizer_factory_keeps_priors_and_tokens_out_of_weight_decay():
    model = from_timm(_tiny())
    from timm.optim import create_optimizer_v2

    groups = create_optimizer_v2(model, "adamw", lr=1e-3, weight_decay=0.05).param_groups
    no_decay = {id(p) for g in groups if g["weight_decay"] == 0.0 for p in g["params"]}
    assert id(model.gate_criterion.mean_logits) in no_decay
    assert id(model.vit.pos_embed) in no_decay
    assert id(model.vit.blocks[0].attn.qkv.weight) not in no_decay


# -- outputs of the one-line entry -----------------------------------------------------------------------------
def test_from_timm_returns_logits_and_keeps_the_gate_on_the_side():
    model = from_timm(_tiny(), coarse_size=32, target=0.3).eval()
    assert isinstance(model, TimmMixedScaleViT)
    assert model.num_classes == 5 and model.pretrained_cfg is model.vit.pretrained_cfg
    with torch.no_grad():
        logits = model(_images())
    assert logits.shape == (4, 5)
    assert model.last_output.logits is logits
    assert model.last_output.gate.soft.shape == (4, 2, 2)
    assert torch.isfinite(model.gate_loss())
    model(_images(), torch.ones(4, 2, 2))
    with pytest.raises(RuntimeError, match="no gate output: run forward first, without a mask"):
        model.gate_loss()
    model.return_logits = False
    assert isinstance(model(_images()), ViTOutput)


def test_gate_loss_checks_the_grid_of_regions():
    model = from_timm(_tiny(dynamic_img_size=True)).eval()
    with torch.no_grad():
        model(_images(2, 96))
    with pytest.raises(ValueError, match="built for a 2x2 grid of coarse regions, got soft values of shape"):
        model.gate_loss()
    assert from_timm(_tiny(dynamic_img_size=True), img_size=96).gate_criterion.mean_logits.shape == (3, 3)


def test_fine_tuning_loop_of_the_docs_runs():
    # The loop of docs/msvit.md, on a tiny model and two steps.
    model = from_timm(_tiny(), target=0.3)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.05)
    model.train()
    for _ in range(2):
        images, labels = _images(), torch.tensor([0, 1, 2, 3])
        loss = F.cross_entropy(model(images), labels) + model.gate_loss()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert torch.isfinite(loss)


# -- refusals -------------------------------------------------------------------------------------------------
def test_rope_models_are_refused():
    vit = _create("vit_small_patch16_rope_224", num_classes=5)
    with pytest.raises(ValueError, match=r"rotary position embeddings are not supported \(vit.rope is"):
        TimmMixedScaleViT(vit)


def test_unsupported_pooling_and_patch_dropout_are_refused():
    with pytest.raises(ValueError, match=r"vit.global_pool must be one of \['token', 'avg', 'max', 'avgmax', 'map'"):
        TimmMixedScaleViT(_tiny(global_pool="prr", depth=1))
    with pytest.raises(ValueError, match=r"vit.patch_drop must be nn.Identity \(patch_drop_rate=0\), got PatchDrop"):
        TimmMixedScaleViT(_tiny(patch_drop_rate=0.1, depth=1))


def test_models_without_a_conv_patch_embedding_are_refused():
    with pytest.raises(TypeError, match="patch_embed.proj is an nn.Conv2d, got Linear"):
        TimmMixedScaleViT(torch.nn.Linear(2, 2))


def test_bad_gates_and_arguments_are_refused():
    vit = _tiny(depth=1)
    with pytest.raises(ValueError, match="the gate has coarse_size=48"):
        TimmMixedScaleViT(vit, gate=MixedScaleGate(coarse_size=48))
    with pytest.raises(TypeError, match="gate must be a MixedScaleGate or None, got Linear"):
        TimmMixedScaleViT(vit, gate=torch.nn.Linear(2, 2))
    with pytest.raises(ValueError, match="target must be a number in"):
        from_timm(vit, target=1.5)
    with pytest.raises(ValueError, match="img_size must be positive multiples of coarse_size=32"):
        from_timm(vit, img_size=48)
