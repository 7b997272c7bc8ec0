"""CAS-ViT: BatchNorm fusion for deployment, and loading the official (``RCViT``) key layout, written out here from
the official ``classification/model/rcvit.py`` independently of vizoo's ``checkpoint_filter_fn``."""

import onnx
import pytest
import timm
import torch

import vizoo  # noqa: F401
from vizoo.export import export_onnx
from vizoo.utils.checkpoint import CheckpointError


def randomise_batchnorms(model):
    torch.manual_seed(0)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.2)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_(0, 0.2)
    return model


def test_fused_model_matches_unfused_in_eval_and_exports_without_batchnorm(tmp_path):
    model = randomise_batchnorms(timm.create_model("test_cas_vit")).eval()
    x = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        expected = model(x)
        fused = model.fuse()
        assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in fused.modules())
        torch.testing.assert_close(fused(x), expected, rtol=1e-4, atol=1e-5)
    result = export_onnx(fused, tmp_path / "fused.onnx")
    assert result.max_abs_diff <= 1e-4
    ops = {n.op_type for n in onnx.load(result.path).graph.node}
    assert "BatchNormalization" not in ops and "Conv" in ops


def test_fuse_keeps_features_without_a_classifier():
    """With no classifier the final BN has nowhere to go: it stays, and the features are unchanged."""
    model = randomise_batchnorms(timm.create_model("test_cas_vit", num_classes=0)).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        expected = model.forward_features(x)
        model.fuse()
        torch.testing.assert_close(model.forward_features(x), expected, rtol=1e-4, atol=1e-5)
    assert isinstance(model.norm, torch.nn.BatchNorm2d)


def official_key(key: str) -> str:
    """vizoo key -> the key of the same tensor in the official RCViT."""
    parts = key.split(".")
    if parts[0] == "stem":
        return ".".join(["patch_embed", *parts[1:]])
    if parts[0] == "stages":
        i = int(parts[1])
        if parts[2] == "blocks":
            return ".".join(["network", str(2 * i), *parts[3:]])
        return ".".join(["network", str(2 * i - 1), *parts[3:]])
    if parts[:2] == ["head", "fc"]:
        return ".".join(["head", *parts[2:]])
    return key  # norm.*


def official_checkpoint(model):
    state = {official_key(k): v.clone() for k, v in model.state_dict().items()}
    state["dist_head.weight"] = torch.randn_like(state["head.weight"])
    state["dist_head.bias"] = torch.randn_like(state["head.bias"])
    return {"model": state, "epoch": 299}


def test_official_checkpoint_loads_and_averages_the_distillation_head(tmp_path):
    source = randomise_batchnorms(timm.create_model("test_cas_vit")).eval()
    checkpoint = official_checkpoint(source)
    assert "network.1.proj.weight" in checkpoint["model"] and "network.6.0.attn.qkv.weight" in checkpoint["model"]
    path = tmp_path / "rcvit.pth"
    torch.save(checkpoint, path)
    loaded = timm.create_model("test_cas_vit", pretrained=True, pretrained_cfg_overlay=dict(file=str(path))).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        features = source.forward_head(source.forward_features(x), pre_logits=True)
        # the official eval output: the mean of the two heads' logits
        head, dist = checkpoint["model"]["head.weight"], checkpoint["model"]["dist_head.weight"]
        hb, db = checkpoint["model"]["head.bias"], checkpoint["model"]["dist_head.bias"]
        expected = ((features @ head.T + hb) + (features @ dist.T + db)) / 2
        torch.testing.assert_close(loaded(x), expected, rtol=1e-4, atol=1e-5)
    features_only = timm.create_model(
        "test_cas_vit", pretrained=True, features_only=True, pretrained_cfg_overlay=dict(file=str(path))
    )
    assert len(features_only(x)) == 4


def test_checkpoint_of_another_variant_is_refused(tmp_path):
    path = tmp_path / "xs.pth"
    torch.save(official_checkpoint(timm.create_model("test_cas_vit")), path)
    with pytest.raises(CheckpointError, match="does not match cas_vit_xs"):
        timm.create_model("cas_vit_xs", pretrained=True, pretrained_cfg_overlay=dict(file=str(path)))
