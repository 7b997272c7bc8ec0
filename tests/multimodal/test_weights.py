"""Weights in and out of a CLIP tower: strict backbone loading, the trunk back to timm, local-dir folders."""

import open_clip
import pytest
import timm
import torch
from safetensors.torch import save_file

import vizoo.multimodal as vm
from vizoo.utils.checkpoint import CheckpointError


@pytest.fixture(scope="module")
def backbone_file(tmp_path_factory):
    """A trained-looking test_vmamba checkpoint (a plain timm state dict with its 1000-class head) and its model."""
    torch.manual_seed(1)
    backbone = timm.create_model("test_vmamba").eval()
    path = tmp_path_factory.mktemp("ckpt") / "test_vmamba.safetensors"
    save_file({k: v.contiguous() for k, v in backbone.state_dict().items()}, str(path))
    return path, backbone


def test_backbone_checkpoint_loads_strictly_and_gives_identical_trunk_outputs(photos, backbone_file):
    path, backbone = backbone_file
    model, *_ = vm.create_clip("test_vmamba", text="tiny", embed_dim=16, backbone_checkpoint=path)
    trunk = model.visual.trunk.eval()
    with torch.no_grad():
        torch.testing.assert_close(trunk.forward_features(photos), backbone.forward_features(photos), rtol=0, atol=0)
    # an official-layout .pth (nested under "model", as the official trainers save) goes through the filter too
    official = dict(model=backbone.state_dict())
    torch.save(official, path.with_suffix(".pth"))
    other, *_ = vm.create_clip("test_vmamba", text="tiny", embed_dim=16)
    vm.load_backbone(other, path.with_suffix(".pth"))
    torch.testing.assert_close(other.visual.trunk.norm.weight, backbone.norm.weight)


def test_mismatched_checkpoint_fails_clearly(backbone_file):
    path, backbone = backbone_file
    model, *_ = vm.create_clip("test_vmamba", text="tiny", embed_dim=16)
    # another model's weights (open_clip's pretrained_image path would load nothing, silently)
    with pytest.raises(CheckpointError, match="missing keys"):
        vm.load_backbone(model, timm.create_model("test_mlla").state_dict())
    truncated = {k: v for k, v in backbone.state_dict().items() if not k.startswith("stages.3.")}
    with pytest.raises(CheckpointError, match=r"missing keys: stages\.3\."):
        vm.load_backbone(model, truncated)
    with pytest.raises(CheckpointError, match="does not exist"):
        vm.load_backbone(model, path.with_name("nope.pth"))


def test_trunk_goes_back_to_timm_strictly(photos):
    model, *_ = vm.create_clip("test_vmamba", text="tiny", embed_dim=16)
    with torch.no_grad():
        for p in model.visual.trunk.parameters():
            p.add_(0.01 * torch.randn_like(p))  # "trained"
    state_dict = vm.trunk_state_dict(model)
    assert all(not k.startswith(("visual.", "head.fc")) for k in state_dict)
    plain = timm.create_model("test_vmamba", num_classes=0).eval()
    plain.load_state_dict(state_dict, strict=True)
    with torch.no_grad():
        torch.testing.assert_close(plain(photos), model.visual.trunk.eval()(photos))


def test_local_dir_round_trip_through_open_clip(tmp_path, photos):
    model, _, _, tokenizer = vm.create_clip("test_vim", text="tiny", embed_dim=16, loss="siglip")
    folder = vm.save_clip(model, tmp_path / "clip")
    assert {p.name for p in folder.iterdir()} == {"open_clip_config.json", "open_clip_model.safetensors"}
    loaded, _, val_tf = open_clip.create_model_and_transforms(f"local-dir:{folder}")
    loaded_tokenizer = open_clip.get_tokenizer(f"local-dir:{folder}")
    assert loaded.visual.preprocess_cfg["size"] == (64, 64)
    assert tuple(loaded.visual.preprocess_cfg["mean"]) == tuple(model.visual.preprocess_cfg["mean"])
    text = ["an astronaut", "a cat"]
    model.eval(), loaded.eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded.encode_image(photos), model.encode_image(photos))
        torch.testing.assert_close(loaded.encode_text(loaded_tokenizer(text)), model.encode_text(tokenizer(text)))
    assert loaded.logit_bias.item() == model.logit_bias.item()


def test_save_clip_needs_a_config():
    model = open_clip.create_model("vizoo-test_vmamba", text_cfg=vm.TEXT_PRESETS["tiny"], embed_dim=16)
    with pytest.raises(ValueError, match="model_cfg"):
        vm.save_clip(model, "unused")
