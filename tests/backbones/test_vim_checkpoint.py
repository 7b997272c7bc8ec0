"""Loading official Vim checkpoints: the official key layout (``vim/models_mamba.py`` with mamba-ssm's ``Mamba``,
``bimamba_type="v2"``) is written out here by hand, independently of vizoo's ``checkpoint_filter_fn``."""

import pytest
import timm
import torch

import vizoo  # noqa: F401
from vizoo.utils.checkpoint import CheckpointError


def official_key(key: str) -> str:
    """vizoo key -> the key the official VisionMamba uses for the same tensor."""
    if key.startswith("blocks."):
        return "layers." + key.removeprefix("blocks.")
    if key.startswith("norm."):
        return "norm_f." + key.removeprefix("norm.")
    return key  # patch_embed.proj, cls_token, pos_embed, head


def official_checkpoint(model):
    state = {official_key(k): v.clone() for k, v in model.state_dict().items()}
    assert "layers.0.mixer.A_b_log" in state and "layers.0.mixer.conv1d_b.weight" in state and "norm_f.weight" in state
    return {"model": state, "epoch": 300}


def test_official_checkpoint_loads_and_reproduces_outputs(tmp_path):
    source = timm.create_model("test_vim").eval()
    with torch.no_grad():
        for p in source.parameters():
            p.add_(torch.randn_like(p) * 0.02)  # away from init, so a mix-up of forward/backward weights shows
    path = tmp_path / "official.pth"
    torch.save(official_checkpoint(source), path)
    loaded = timm.create_model("test_vim", pretrained=True, pretrained_cfg_overlay=dict(file=str(path))).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), source(x))

    # A checkpoint made at another resolution: pos_embed is resampled with the class entry kept in the middle.
    big = timm.create_model("test_vim", img_size=96).eval()
    torch.save(official_checkpoint(big), path)
    resized = timm.create_model("test_vim", pretrained=True, pretrained_cfg_overlay=dict(file=str(path)))
    assert resized.pos_embed.shape == (1, 17, 64)
    torch.testing.assert_close(resized.pos_embed[:, 8], big.pos_embed[:, 18])  # class entries: index N // 2

    refit = timm.create_model(
        "test_vim", pretrained=True, num_classes=5, in_chans=1, pretrained_cfg_overlay=dict(file=str(path))
    )
    assert refit(torch.randn(1, 1, 64, 64)).shape == (1, 5)


def test_wrong_checkpoint_says_which_keys(tmp_path):
    state = official_checkpoint(timm.create_model("test_vim"))["model"]
    del state["layers.1.mixer.x_proj_b.weight"]
    path = tmp_path / "bad.pth"
    torch.save(state, path)
    with pytest.raises(CheckpointError, match=r"missing keys: blocks\.1\.mixer\.x_proj_b\.weight"):
        timm.create_model("test_vim", pretrained=True, pretrained_cfg_overlay=dict(file=str(path)))


def test_token_layout_is_documented_and_usable():
    """The class token sits at N // 2; forward_head reads it there; the blocks map (B, T, C) -> (B, T, C)."""
    model = timm.create_model("test_vim").eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        tokens = model.embed(x)
        assert tokens.shape == (2, 17, 64) and model.cls_index(16) == 8
        torch.testing.assert_close(tokens[:, 8], (model.cls_token[:, 0] + model.pos_embed[:, 8]).expand(2, -1))
        out = model.forward_tokens(x)
        torch.testing.assert_close(model.forward_head(model.norm(out)), model(x))
        pruned = torch.cat([out[:, :3], out[:, 8:9], out[:, 13:]], dim=1)  # keep 3 + 3 patches around the class token
        torch.testing.assert_close(model.forward_head(model.norm(pruned)), model.head(model.norm(out)[:, 8]))
