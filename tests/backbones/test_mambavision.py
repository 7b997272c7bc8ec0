"""MambaVision: the README's table (params, FLOPs), the released block layout, the official key layout (written out
here from NVlabs/MambaVision ``mambavision/models/mamba_vision.py``, independently of ``checkpoint_filter_fn``) and
the windowing of stages 3-4. The logits against the official code itself: tools/check_official_mambavision.py."""

import pytest
import timm
import torch

import vizoo  # noqa: F401
from vizoo.backbones.mambavision import MambaVisionMixer
from vizoo.model_table import paper_figures
from vizoo.utils.checkpoint import CheckpointError
from vizoo.utils.complexity import count_macs, count_params

VARIANTS = [
    "mambavision_tiny",
    "mambavision_tiny2",
    "mambavision_small",
    "mambavision_base",
    "mambavision_large",
    "mambavision_large2",
]


@pytest.mark.parametrize("name", VARIANTS)
def test_params_and_flops_match_paper(name):
    """Params within 1% and MACs within 5% of the README (which gives params to 0.1 M and ptflops MACs at 224²)."""
    paper = paper_figures(name)
    with torch.device("meta"):  # shapes only: counting needs no arithmetic
        model = timm.create_model(name)
    params = count_params(model) / 1e6
    assert abs(params / paper["paper_params_m"] - 1) < 0.01, (
        f"{name}: {params:.2f} M vs paper {paper['paper_params_m']}"
    )
    measured = count_macs(model) / 1e9
    assert abs(measured / paper["paper_gmacs"] - 1) < 0.05, (
        f"{name}: {measured:.2f} GMACs vs paper {paper['paper_gmacs']}"
    )


def official_transformer_blocks(depth: int) -> list[int]:
    """The official ``transformer_blocks`` of a stage of ``depth`` blocks (the rest are Mamba mixers)."""
    start = depth // 2 + 1 if depth % 2 else depth // 2
    return list(range(start, depth))


@pytest.mark.parametrize("name", VARIANTS)
def test_block_layout_is_the_released_one(name):
    with torch.device("meta"):
        model = timm.create_model(name)
    for stage in model.stages[2:]:
        attention = [j for j, block in enumerate(stage.blocks) if not isinstance(block.mixer, MambaVisionMixer)]
        assert attention == official_transformer_blocks(len(stage.blocks))
    with_gamma = any(n.endswith("ls1.gamma") for n, _ in model.named_parameters())
    assert with_gamma == (name in ("mambavision_base", "mambavision_large", "mambavision_large2"))


def official_key(key: str) -> str:
    """vizoo key -> official: ``patch_embed.conv_down.*`` stem, ``levels.i.blocks``, the downsample at the end of the
    previous level (``levels.{i-1}.downsample.reduction.0``), ``gamma_1``/``gamma_2``, ``head``."""
    parts = key.split(".")
    if parts[0] == "stem":
        return ".".join(["patch_embed", "conv_down", *parts[1:]])
    if parts[0] == "stages" and parts[2] == "downsample":
        return ".".join(["levels", str(int(parts[1]) - 1), "downsample", "reduction", "0", *parts[3:]])
    if parts[0] == "stages" and parts[4] in ("ls1", "ls2"):
        return ".".join(["levels", parts[1], "blocks", parts[3], "gamma_" + parts[4][-1]])
    if parts[0] == "stages":
        return ".".join(["levels", *parts[1:]])
    if parts[:2] == ["head", "fc"]:
        return ".".join(["head", *parts[2:]])
    return key  # norm.*: the final BatchNorm2d


def official_checkpoint(model: torch.nn.Module) -> dict:
    return {"state_dict": {official_key(k): v.clone() for k, v in model.state_dict().items()}, "epoch": 309}


def test_official_checkpoint_loads_and_reproduces_outputs(tmp_path):
    torch.manual_seed(0)
    source = timm.create_model("test_mambavision", layer_scale=1e-5).eval()
    with torch.no_grad():  # move every parameter off its init so a mis-mapped tensor shows in the output
        for p in source.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    checkpoint = official_checkpoint(source)
    state = checkpoint["state_dict"]
    for key in (
        "patch_embed.conv_down.4.running_var",
        "levels.0.downsample.reduction.0.weight",
        "levels.1.blocks.0.norm1.running_mean",
        "levels.2.blocks.0.mixer.conv1d_z.weight",
        "levels.2.blocks.0.mixer.A_log",
        "levels.2.blocks.1.mixer.qkv.bias",
        "levels.3.blocks.1.gamma_2",
        "norm.running_var",
        "head.weight",
    ):
        assert key in state, key
    path = tmp_path / "mambavision_test_1k.pth.tar"
    torch.save(checkpoint, path)
    loaded = timm.create_model(
        "test_mambavision", layer_scale=1e-5, pretrained=True, pretrained_cfg_overlay=dict(file=str(path))
    ).eval()
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), source(x))
    refit = timm.create_model(
        "test_mambavision",
        layer_scale=1e-5,
        pretrained=True,
        num_classes=5,
        pretrained_cfg_overlay=dict(file=str(path)),
    )
    assert refit(x).shape == (1, 5)


def test_mismatched_checkpoint_names_the_keys(tmp_path):
    state = official_checkpoint(timm.create_model("test_mambavision"))["state_dict"]
    state.pop("levels.2.blocks.0.mixer.A_log")
    state["levels.2.blocks.0.mixer.not_a_tensor"] = torch.zeros(1)
    path = tmp_path / "broken.pth"
    torch.save(state, path)
    with pytest.raises(CheckpointError, match=r"A_log[\s\S]*not_a_tensor"):
        timm.create_model("test_mambavision", pretrained=True, pretrained_cfg_overlay=dict(file=str(path)))
    torch.save(official_checkpoint(timm.create_model("test_mambavision", layer_scale=1e-5)), path)
    with pytest.raises(CheckpointError, match="gamma"):  # a layer-scaled checkpoint into a model without γ
        timm.create_model("test_mambavision", pretrained=True, pretrained_cfg_overlay=dict(file=str(path)))


def test_windows_are_padded_and_independent():
    """Stage 3 of the test model cuts its 4x4 map (64² input) into 3x3 windows after zero-padding to 6x6: a change
    in one window reaches no token outside it, and the padding is cropped away."""
    stage = timm.create_model("test_mambavision").eval().stages[2]
    x = torch.randn(1, stage.downsample.in_channels, 8, 8)  # -> 4x4 after the downsample
    with torch.no_grad():
        y = stage(x)
        x2 = x.clone()
        x2[..., 0, 0] += 1.0  # the downsample's 3x3/s2 receptive field of output (0, 0) only
        y2 = stage(x2)
    assert y.shape == (1, stage.downsample.out_channels, 4, 4)
    changed = (y2 - y).abs().amax(dim=1)[0] > 0
    assert changed[:3, :3].any()
    assert not changed[3:, :].any() and not changed[:, 3:].any()


def test_scan_backends_agree():
    x = torch.randn(1, 3, 64, 64)
    torch.manual_seed(0)
    reference = timm.create_model("test_mambavision", scan_backend="reference").eval()
    chunked = timm.create_model("test_mambavision", scan_backend="torch").eval()
    chunked.load_state_dict(reference.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(chunked(x), reference(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(depths=(1, 1, 2)), "depths needs 4 entries"),
        (dict(num_heads=(2, 4, 8, 16)), "num_heads and window_size 2"),
        (dict(num_heads=(3, 4)), "stage width 64 is not divisible by num_heads 3"),
    ],
)
def test_bad_layout_arguments_say_what_to_do(kwargs, message):
    with pytest.raises(ValueError, match=message):
        timm.create_model("test_mambavision", **kwargs)
