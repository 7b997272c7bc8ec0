"""Loading official VMamba checkpoints: the official key layout is written out here by hand, from the official code
(``classification/models/vmamba.py``), independently of vizoo's ``checkpoint_filter_fn``."""

import pytest
import timm
import torch
from safetensors.torch import save_file

import vizoo  # noqa: F401
from vizoo.utils.checkpoint import CheckpointError


class TrainingConfig:
    """Stands in for the yacs config object official checkpoints pickle beside the weights."""

    def __init__(self):
        self.MODEL = {"TYPE": "vssm"}


def official_key(key: str, v0: bool) -> str:
    """vizoo key -> the key the official VSSM module uses for the same tensor."""
    stem = {"conv": "0", "norm": "2"} if v0 else {"conv1": "0", "norm1": "2", "conv2": "5", "norm2": "7"}
    parts = key.split(".")
    if parts[0] == "stem":
        return ".".join(["patch_embed", stem[parts[1]], *parts[2:]])
    if parts[0] == "stages" and parts[2] == "blocks":
        return ".".join(["layers", parts[1], *parts[2:]])
    if parts[0] == "stages" and parts[2] == "downsample":
        sub = parts[3:] if v0 else [{"conv": "1", "norm": "3"}[parts[3]], *parts[4:]]
        return ".".join(["layers", str(int(parts[1]) - 1), "downsample", *sub])
    if parts[0] == "norm":
        return "classifier.norm." + parts[1]
    if parts[:2] == ["head", "fc"]:
        return "classifier.head." + parts[2]
    raise AssertionError(key)


def official_checkpoint(model, v0, conv_weights=False):
    state = {}
    for key, value in model.state_dict().items():
        if conv_weights and value.dim() == 2 and key.endswith(("in_proj.weight", "out_proj.weight", "fc1.weight")):
            value = value[:, :, None, None]  # Linear2d weights saved in conv shape
        state[official_key(key, v0)] = value.clone()
    return {"model": state, "optimizer": {"state": {}}, "epoch": 264, "config": TrainingConfig()}


@pytest.mark.parametrize("name, v0", [("test_vmamba", False), ("vanilla_vmamba_tiny", True)])
def test_official_checkpoint_loads_and_reproduces_outputs(tmp_path, name, v0):
    source = timm.create_model(name).eval()
    path = tmp_path / "official.pth"
    torch.save(official_checkpoint(source, v0, conv_weights=not v0), path)
    loaded = timm.create_model(name, pretrained=True, pretrained_cfg_overlay=dict(file=str(path))).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), source(x))

    # A new classifier is fitted to num_classes; in_chans=1 adapts the first conv; features_only loads too.
    refit = timm.create_model(
        name, pretrained=True, num_classes=5, in_chans=1, pretrained_cfg_overlay=dict(file=str(path))
    )
    torch.testing.assert_close(refit.stages[-1].blocks[0].op.A_logs, source.stages[-1].blocks[0].op.A_logs)
    assert refit.get_classifier().out_features == 5
    features = timm.create_model(name, pretrained=True, features_only=True, pretrained_cfg_overlay=dict(file=str(path)))
    assert len(features(torch.randn(1, 3, 64, 64))) == 4


def test_vizoo_layout_safetensors_loads(tmp_path):
    source = timm.create_model("test_vmamba")
    path = tmp_path / "weights.safetensors"
    save_file(source.state_dict(), path)
    loaded = timm.create_model("test_vmamba", pretrained=True, pretrained_cfg_overlay=dict(file=str(path)))
    torch.testing.assert_close(
        loaded.state_dict()["stages.3.blocks.0.op.Ds"], source.state_dict()["stages.3.blocks.0.op.Ds"]
    )


def test_patch_merging_matches_official_channel_order():
    """Official PatchMerging2D concatenates x[0::2,0::2], x[1::2,0::2], x[0::2,1::2], x[1::2,1::2] (NHWC)."""
    model = timm.create_model("vanilla_vmamba_tiny")
    merge = model.stages[1].downsample
    x = torch.randn(1, 8, 8, 96)
    cat = torch.cat([x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]], dim=-1)
    torch.testing.assert_close(merge(x), merge.reduction(merge.norm(cat)))


def test_mismatched_checkpoint_names_missing_and_unexpected_keys(tmp_path):
    path = tmp_path / "vanilla.pth"
    torch.save(official_checkpoint(timm.create_model("vanilla_vmamba_tiny"), v0=True), path)
    with pytest.raises(CheckpointError) as info:
        timm.create_model("vmamba_tiny_s1l8", pretrained=True, pretrained_cfg_overlay=dict(file=str(path)))
    message = str(info.value)
    assert "does not match vmamba_tiny_s1l8" in message
    assert "missing keys: stem.conv2.weight" in message  # the v0 stem has one conv, v2 two
    assert "unexpected keys" in message and "stages.1.downsample.reduction.weight" in message  # patch merging
    assert "shape mismatches: stem.conv1.bias: checkpoint (96,) vs model (48,)" in message


@pytest.mark.parametrize("content", [b"", b"not a checkpoint at all", None])
def test_unreadable_checkpoint_says_so(tmp_path, content):
    path = tmp_path / "broken.pth"
    if content is None:  # a real checkpoint cut short
        torch.save(timm.create_model("test_vmamba").state_dict(), path)
        path.write_bytes(path.read_bytes()[:2000])
    else:
        path.write_bytes(content)
    with pytest.raises(CheckpointError, match="cannot read checkpoint .* corrupt, truncated"):
        timm.create_model("test_vmamba", pretrained=True, pretrained_cfg_overlay=dict(file=str(path)))


def test_missing_checkpoint_file(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        timm.create_model("test_vmamba", pretrained=True, pretrained_cfg_overlay=dict(file=str(tmp_path / "x.pth")))
