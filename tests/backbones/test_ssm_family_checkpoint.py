"""Loading official Spatial-Mamba, VSSD, MSVMamba and EfficientVMamba checkpoints. The official key layouts are written
out here by hand from the official code (EdwardChasel/Spatial-Mamba ``spatialmamba.py``, YuHengsss/VSSD ``mamba2.py``,
YuHengsss/MSVMamba ``vmamba.py``, TerryPei/EfficientVMamba ``vmamba_efficient.py`` and ``lib/models/operations.py``),
independently of vizoo's ``checkpoint_filter_fn``."""

import pytest
import timm
import torch

import vizoo  # noqa: F401
from vizoo.utils.checkpoint import CheckpointError


def mlla_official_key(key: str) -> str:
    """Spatial-Mamba / VSSD: ``patch_embed``, ``layers.i.{blocks,downsample}`` (downsample at the end), ``head``."""
    parts = key.split(".")
    if parts[0] == "stem":
        return ".".join(["patch_embed", *parts[1:]])
    if parts[0] == "stages" and parts[2] == "blocks":
        return ".".join(["layers", *parts[1:]])
    if parts[0] == "stages" and parts[2] == "downsample":
        return ".".join(["layers", str(int(parts[1]) - 1), *parts[2:]])
    if parts[0] == "norm":
        return key
    if parts[:2] == ["head", "fc"]:
        return "head." + parts[2]
    raise AssertionError(key)


def msvmamba_official_key(key: str) -> str:
    """MSVMamba v1: ``patch_embed.{0,2}``, ``layers.i``, ``classifier.{norm,head}``."""
    parts = key.split(".")
    if parts[0] == "stem":
        return ".".join(["patch_embed", {"conv": "0", "norm": "2"}[parts[1]], *parts[2:]])
    if parts[0] == "norm":
        return "classifier." + key
    if parts[:2] == ["head", "fc"]:
        return "classifier.head." + parts[2]
    return mlla_official_key(key)


def efficient_vmamba_official_key(key: str) -> str:
    """EfficientVMamba (the one-block-per-stage test variant): EVSS stages as MSVMamba's; an inverted-residual stage
    ``layers.i`` is Sequential(Permute, block, Permute, downsample) with MobileNetV2-style block names."""
    parts = key.split(".")
    rest = ".".join(parts[5:])
    if parts[0] == "stages" and parts[1] == "3" and parts[2] == "downsample":
        return "layers.2.3." + ".".join(parts[3:])
    if parts[0] == "stages" and int(parts[1]) >= 2 and parts[2] == "blocks":
        official = {
            "conv_pw": "conv_pw.0",
            "bn1": "conv_pw.1",
            "conv_dw": "conv_dw.0",
            "bn2": "conv_dw.1",
            "se": "se",
            "conv_pwl": "conv_pw2.0",
            "bn3": "conv_pw2.1",
        }[parts[4]]
        return f"layers.{parts[1]}.{int(parts[3]) + 1}.{official}.{rest}"
    return msvmamba_official_key(key)


OFFICIAL_KEY = {
    "test_spatial_mamba": mlla_official_key,
    "test_vssd": mlla_official_key,
    "test_msvmamba": msvmamba_official_key,
    "test_efficient_vmamba": efficient_vmamba_official_key,
}


def official_checkpoint(model, name):
    state = {OFFICIAL_KEY[name](k): v.clone() for k, v in model.state_dict().items()}
    if name == "test_spatial_mamba":  # an eval-time buffer the official StateFusion may leave in its state dict
        state["layers.0.blocks.0.self_attention.state_fusion._merge_weight"] = torch.zeros(32, 1, 11, 11)
    return {"model": state, "epoch": 299}


@pytest.mark.parametrize("name", list(OFFICIAL_KEY))
def test_official_checkpoint_loads_and_reproduces_outputs(tmp_path, name):
    torch.manual_seed(0)
    source = timm.create_model(name).eval()
    with torch.no_grad():  # move every parameter off its init so a mis-mapped tensor shows in the output
        for p in source.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    path = tmp_path / "official.pth"
    torch.save(official_checkpoint(source, name), path)
    loaded = timm.create_model(name, pretrained=True, pretrained_cfg_overlay=dict(file=str(path))).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), source(x))
    refit = timm.create_model(name, pretrained=True, num_classes=5, pretrained_cfg_overlay=dict(file=str(path)))
    assert refit(x).shape == (1, 5)


@pytest.mark.parametrize("name", list(OFFICIAL_KEY))
def test_mismatched_checkpoint_names_the_keys(tmp_path, name):
    state = official_checkpoint(timm.create_model(name), name)["model"]
    state.pop(next(k for k in state if ".blocks.0." in k))
    state["layers.0.blocks.0.not_a_tensor"] = torch.zeros(1)
    path = tmp_path / "broken.pth"
    torch.save(state, path)
    with pytest.raises(CheckpointError, match="not_a_tensor"):
        timm.create_model(name, pretrained=True, pretrained_cfg_overlay=dict(file=str(path)))
