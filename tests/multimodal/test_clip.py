"""open_clip towers: registered configs, create_clip, input checks, LiT freezing, checkpointing, autocast."""

import math

import open_clip
import pytest
import torch
from open_clip.tokenizer import SimpleTokenizer

import vizoo
import vizoo.multimodal as vm


def test_every_vizoo_model_has_an_open_clip_config():
    names = open_clip.list_models()
    expected = {f"vizoo-{m}" for m in vizoo.list_models()}
    assert expected <= set(names)
    cfg = open_clip.get_model_config("vizoo-vmamba_tiny_s1l8")
    assert cfg["vision_cfg"]["timm_model_name"] == "vmamba_tiny_s1l8" and cfg["vision_cfg"]["image_size"] == 224
    assert {"embed_dim", "vision_cfg", "text_cfg"} <= set(cfg)
    # open_clip's own tokenizer lookup for these names is the bundled BPE (no "siglip" in any name: no download)
    assert isinstance(open_clip.get_tokenizer("vizoo-test_vmamba"), SimpleTokenizer)


def test_open_clip_builds_a_registered_config():
    model = open_clip.create_model("vizoo-test_vmamba", text_cfg=vm.TEXT_PRESETS["tiny"], embed_dim=32)
    assert model.encode_image(torch.randn(1, 3, 64, 64)).shape == (1, 32)


@pytest.mark.parametrize("loss", ["clip", "siglip"])
def test_create_clip_trains_one_step(photos, loss):
    model, train_tf, val_tf, tokenizer = vm.create_clip("test_vmamba", text="tiny", embed_dim=32, loss=loss)
    assert isinstance(tokenizer, SimpleTokenizer) and tokenizer.context_length == 32
    assert model.visual.preprocess_cfg["size"] == (64, 64)
    assert tuple(model.visual.preprocess_cfg["mean"]) == (0.485, 0.456, 0.406)  # the backbone's normalisation
    assert (model.logit_bias is not None) == (loss == "siglip")
    if loss == "siglip":
        assert model.logit_scale.item() == pytest.approx(math.log(10.0)) and model.logit_bias.item() == -10.0
    text = tokenizer(["a photo of an astronaut", "a photo of a cat"])
    out = model(photos, text)
    criterion = vm.create_loss(loss)
    value = criterion(**out) if isinstance(out, dict) else criterion(*out)
    value.backward()
    assert torch.isfinite(value)
    assert model.visual.trunk.stem.conv1.weight.grad.abs().sum() > 0


def test_val_transform_takes_a_pil_image():
    from PIL import Image
    from skimage import data

    _, _, val_tf, _ = vm.create_clip("test_vim", text="tiny", embed_dim=16)
    assert val_tf(Image.fromarray(data.chelsea())).shape == (3, 64, 64)


def test_bad_inputs_fail_clearly():
    with pytest.raises(ValueError, match=r"multiples of 32.*image_size=64"):
        vm.create_clip("test_vmamba", text="tiny", embed_dim=16, image_size=70)
    with pytest.raises(ValueError, match="patch_dropout"):
        vm.create_clip("test_vmamba", text="tiny", embed_dim=16, patch_dropout=0.5)
    with pytest.raises(ValueError, match="Did you mean.*vmamba_tiny_s1l8"):
        vm.create_clip("vmamba_tiny_s1l9", text="tiny")
    with pytest.raises(ValueError, match="autocast"):
        vm.create_clip("test_vmamba", text="tiny", precision="bf16")
    with pytest.raises(ValueError, match="reads an NCHW map"):
        vm.create_clip("test_vmamba", text="tiny", embed_dim=16, pool="abs_attn")
    with pytest.raises(ValueError, match="text preset"):
        vm.create_clip("test_vmamba", text="huge")


def _trainable(model):
    return {n for n, p in model.visual.named_parameters() if p.requires_grad}


def test_lock_image_tower_leaves_exactly_the_last_groups_trainable():
    # test_vmamba: stem, then blocks stages.0.0, 1.0, 2.0, 2.1, 3.0 (+ norm); each stage's downsample goes with its
    # first block (timm's group_matcher). The projection (visual.head) always stays trainable.
    model, *_ = vm.create_clip("test_vmamba", text="tiny", embed_dim=16)
    names = {n for n, _ in model.visual.named_parameters()}
    head = {n for n in names if n.startswith("visual.head.") or n.startswith("head.")}
    model.lock_image_tower(unlocked_groups=0)
    assert _trainable(model) == head == {"head.proj.weight"}
    model.lock_image_tower(unlocked_groups=1)
    expected = head | {n for n in names if n.startswith(("trunk.stages.3.", "trunk.norm."))}
    assert _trainable(model) == expected
    model.lock_image_tower(unlocked_groups=2)
    expected |= {n for n in names if n.startswith("trunk.stages.2.blocks.1.")}
    assert _trainable(model) == expected
    model.lock_image_tower(unlocked_groups=100)
    assert _trainable(model) == names
    # the text tower is untouched
    assert all(p.requires_grad for p in model.transformer.parameters())


def test_lock_with_the_trunk_classifier_as_projection():
    # timm_proj None: the trunk's classifier is the projection. open_clip's own TimmModel.lock freezes it with the
    # trunk (lock(0)) or counts it as the last group (lock(1)); vizoo's keeps it trainable and out of the count.
    model, *_ = vm.create_clip("test_vmamba", text="tiny", embed_dim=16, proj=None)
    assert model.visual.trunk.head.fc.out_features == 16
    model.lock_image_tower(0)
    assert _trainable(model) == {"trunk.head.fc.weight", "trunk.head.fc.bias"}
    model.lock_image_tower(1)
    trainable = _trainable(model)
    assert {"trunk.norm.weight", "trunk.stages.3.blocks.0.op.A_logs", "trunk.head.fc.weight"} <= trainable
    assert not any(n.startswith("trunk.stages.2.") for n in trainable)


def _grads(model, images, text):
    model.zero_grad()
    image, text_features, scale = model(images, text)
    (image @ text_features.T * scale).logsumexp(-1).sum().backward()
    return {n: p.grad.clone() for n, p in model.visual.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("name", ["test_vmamba", "test_vim"])
def test_grad_checkpointing_gives_the_same_gradients(photos, name):
    model, _, _, tokenizer = vm.create_clip(name, text="tiny", embed_dim=16)
    model.eval()  # no dropout / drop path, so both runs compute the same function
    text = tokenizer(["an astronaut", "a cat"])
    plain = _grads(model, photos, text)
    model.set_grad_checkpointing(True)
    stages = getattr(model.visual.trunk, "stages", None)
    assert stages[0].grad_checkpointing if stages is not None else model.visual.trunk.grad_checkpointing
    checkpointed = _grads(model, photos, text)
    assert plain.keys() == checkpointed.keys() and len(plain) == len(list(model.visual.parameters()))
    for n in plain:
        torch.testing.assert_close(checkpointed[n], plain[n], rtol=1e-4, atol=1e-6, msg=n)


def test_bf16_autocast_keeps_fp32_parameters(photos):
    model, _, _, tokenizer = vm.create_clip("test_vmamba", text="tiny", embed_dim=32)
    model.eval()
    with torch.no_grad():
        reference = model.encode_image(photos, normalize=True)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            mixed = model.encode_image(photos, normalize=True)
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert mixed.dtype == torch.bfloat16
    cosine = torch.nn.functional.cosine_similarity(mixed.float(), reference, dim=-1)
    assert cosine.min() > 0.99
