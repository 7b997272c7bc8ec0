"""MALA: the released hybrid layout, the all-linear option, and the official key layout
(``classfication_release/model.py``, written out here independently of ``checkpoint_filter_fn``)."""

import re

import timm
import torch

import vizoo  # noqa: F401
from vizoo.layers.linear_attention import MagnitudeAwareLinearAttention, SoftmaxAttentionRoPE


def attention_types(model):
    return ["L" if isinstance(b.attn, MagnitudeAwareLinearAttention) else "S" for s in model.stages for b in s.blocks]


def test_released_layout_is_hybrid_and_all_linear_is_an_option():
    hybrid = timm.create_model("mala_tiny")
    assert attention_types(hybrid) == ["L"] * 4 + ["S"] * 8  # depths 2-2-6-2: MALA in stages 1-2, softmax in 3-4
    linear = timm.create_model("test_mala", attn_layout="LLLL")
    assert set(attention_types(linear)) == {"L"}
    assert not any(isinstance(m, SoftmaxAttentionRoPE) for m in linear.modules())
    # the same parameters: hybrid weights load into the all-linear model
    linear.load_state_dict(timm.create_model("test_mala").state_dict())


def official_key(key: str) -> str:
    parts = key.split(".")
    if parts[0] == "stem":
        return ".".join(["patch_embed", "proj", *parts[1:]])
    if parts[0] == "stages" and parts[2] == "blocks":
        rest = ".".join(parts[3:])
        rest = re.sub(r"^(\d+)\.(norm[12])\.", r"\1.\2.norm.", rest)  # official LayerNorm2d wraps nn.LayerNorm
        return f"layers.{parts[1]}.blocks.{rest}"
    if parts[0] == "stages" and parts[2] == "downsample":
        return ".".join(["layers", str(int(parts[1]) - 1), *parts[2:]])
    if parts[0] == "norm":  # vizoo's norm is the official conv head: proj (1x1 conv) and norm (BN)
        return ".".join(parts[1:])
    if parts[:2] == ["head", "fc"]:
        return ".".join(["head", *parts[2:]])
    raise AssertionError(key)


def test_official_checkpoint_loads_and_reproduces_outputs(tmp_path):
    source = timm.create_model("test_mala").eval()
    state = {}
    for key, value in source.state_dict().items():
        if key == "head.fc.weight":
            value = value[:, :, None, None]  # the official classifier is a 1x1 conv
        state[official_key(key)] = value.clone()
    for i in range(4):
        state[f"layers.{i}.RoPE.angle"] = torch.rand(8)
    assert "layers.0.blocks.0.norm1.norm.weight" in state and "proj.weight" in state and "norm.running_var" in state
    path = tmp_path / "mala.pth"
    torch.save({"model": state}, path)
    loaded = timm.create_model("test_mala", pretrained=True, pretrained_cfg_overlay=dict(file=str(path))).eval()
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), source(x))
