"""MLLA: the official key layout (``models/mlla.py``, written out here independently of ``checkpoint_filter_fn``)
loads, its fixed-size RoPE buffers are dropped, and the model takes sizes the official classification code cannot."""

import timm
import torch

import vizoo  # noqa: F401


def official_key(key: str) -> str:
    parts = key.split(".")
    if parts[0] == "stem":
        return ".".join(["patch_embed", *parts[1:]])
    if parts[0] == "stages" and parts[2] == "blocks":
        return ".".join(["layers", parts[1], *parts[2:]])
    if parts[0] == "stages" and parts[2] == "downsample":
        return ".".join(["layers", str(int(parts[1]) - 1), *parts[2:]])
    if parts[:2] == ["head", "fc"]:
        return ".".join(["head", *parts[2:]])
    return key  # norm.*


def test_official_checkpoint_loads_and_reproduces_outputs(tmp_path):
    source = timm.create_model("test_mlla").eval()
    state = {official_key(k): v.clone() for k, v in source.state_dict().items()}
    assert "layers.0.downsample.conv.2.norm.running_var" in state and "patch_embed.conv3.1.conv.weight" in state
    for key in [k for k in state if k.endswith("attn.qk.weight")]:  # the official 56x56... complex RoPE tables
        state[key.replace("qk.weight", "rope.rotations")] = torch.randn(4, 4, state[key].shape[1] // 2, 2)
    path = tmp_path / "mlla.pth"
    torch.save({"model": state, "max_accuracy": 83.5}, path)
    loaded = timm.create_model("test_mlla", pretrained=True, pretrained_cfg_overlay=dict(file=str(path))).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), source(x))


def test_non_square_and_unseen_sizes():
    model = timm.create_model("test_mlla").eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 96, 160)).shape == (1, 1000)
        features = model.forward_intermediates(torch.randn(1, 3, 64, 128), intermediates_only=True)
    assert [tuple(f.shape[2:]) for f in features] == [(16, 32), (8, 16), (4, 8), (2, 4)]
