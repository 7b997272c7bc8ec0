"""EfficientViM: the README's table (params, fvcore FLOPs), HSM-SSD against its formula on non-square maps, the
convex block mixing, the hidden-state fusion head through timm's API, and the official key layout (written out here
from mlvlab/EfficientViM ``classification/models/EfficientViM.py`` and ``utils.py``, independently of
``checkpoint_filter_fn``), plain and distilled. The logits against the official code itself:
tools/check_official_efficient_vim.py."""

import copy
import re

import pytest
import timm
import torch
import torch.nn.functional as F

import vizoo  # noqa: F401
from vizoo.backbones.efficient_vim import HSMSSD
from vizoo.model_table import paper_figures
from vizoo.utils.checkpoint import CheckpointError
from vizoo.utils.complexity import count_macs, count_params

VARIANTS = ["efficient_vim_m1", "efficient_vim_m2", "efficient_vim_m3", "efficient_vim_m4"]


def resolution(name: str) -> int:
    return timm.get_pretrained_cfg(name).input_size[-1]


@pytest.mark.parametrize("name", VARIANTS)
def test_params_and_flops_match_paper(name):
    """Params within 1% and MACs within 5% of the README's table (params to 0.1 M, MFLOPs at 224², M4 at 256²)."""
    paper = paper_figures(name)
    with torch.device("meta"):
        model = timm.create_model(name)
    params = count_params(model) / 1e6
    assert abs(params / paper["paper_params_m"] - 1) < 0.01, f"{name}: {params:.2f} M vs {paper['paper_params_m']}"
    size = resolution(name)
    macs = count_macs(model, (3, size, size)) / 1e9
    assert abs(macs / paper["paper_gmacs"] - 1) < 0.05, f"{name}: {macs:.3f} GMACs vs {paper['paper_gmacs']}"


@pytest.mark.parametrize("name", VARIANTS)
def test_paper_flops_are_fvcore_counts(name):
    """The table is the official ``flops()``: fvcore on the eval model, which adds to vizoo's MACs (convolutions,
    matmuls, linears) BatchNorm at 2 per element and the final global average pool at 1 per input element, and
    ignores the elementwise ops it is told to (the LayerNorms, which the official code writes elementwise, softmax,
    SiLU, sigmoid, the squeeze-excite's mean). Counted so, vizoo's model gives the table's figure to its 1 M
    rounding."""
    with torch.device("meta"):
        model = timm.create_model(name).eval()
    bn_elements = []
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.register_forward_hook(lambda module, _, out: bn_elements.append(out.numel()))
    size = resolution(name)
    macs = count_macs(model, (3, size, size))
    pooled = model.num_features * -((-size // 64) ** 2)
    fvcore = (macs + 2 * sum(bn_elements) + pooled) / 1e6
    assert abs(fvcore - paper_figures(name)["paper_gmacs"] * 1e3) < 1.0, f"{name}: {fvcore:.1f} MFLOPs"


def test_block_layout_is_the_released_one():
    with torch.device("meta"):
        model = timm.create_model("efficient_vim_m4")
    assert [len(s.blocks) for s in model.stages] == [3, 4, 2]
    assert [s.blocks[0].mixer.state_dim for s in model.stages] == [64, 32, 16]
    assert [s.blocks[0].mixer.A.shape[0] for s in model.stages] == [64, 32, 16]
    merge = model.stages[1].downsample
    assert (merge.conv1.conv.out_channels, merge.conv3.conv.out_channels) == (4 * 320, 320)  # hidden: 4x the output
    assert [info["reduction"] for info in model.feature_info] == [16, 32, 64]


def reference_hsmssd(mixer: HSMSSD, x: torch.Tensor, height: int, width: int):
    """The paper's HSM-SSD written channel-first as the official module is, from the same weights: (B, C, L) tokens."""
    b, _, length = x.shape
    n = mixer.state_dim
    bcdt = F.conv1d(x, mixer.BCdt_proj.weight[:, :, None]).view(b, 3 * n, height, width)
    bcdt = F.conv2d(bcdt, mixer.dw.weight, padding=1, groups=3 * n).flatten(2)
    B, C, dt = bcdt[:, :n], bcdt[:, n : 2 * n], bcdt[:, 2 * n :]
    a_hat = torch.softmax(dt + mixer.A.view(1, -1, 1), dim=-1)
    h = torch.einsum("bcl,bnl->bcn", x, a_hat * B)
    h, z = F.conv1d(h, mixer.hz_proj.weight[:, :, None]).chunk(2, dim=1)
    h = F.conv1d(h * F.silu(z) + h * mixer.D, mixer.out_proj.weight[:, :, None])
    y = torch.einsum("bcn,bnl->bcl", h, C)
    return y.view(b, -1, height, width), h


def test_hsmssd_matches_its_formula_on_non_square_maps():
    torch.manual_seed(0)
    mixer = HSMSSD(12, state_dim=5)
    x = torch.randn(2, 12, 3 * 5)
    y, h = mixer(x.transpose(1, 2), 3, 5)
    y_ref, h_ref = reference_hsmssd(mixer, x, 3, 5)
    torch.testing.assert_close(y, y_ref)
    torch.testing.assert_close(h, h_ref.transpose(1, 2))
    assert y.shape == (2, 12, 3, 5) and h.shape == (2, 5, 12)


def test_block_mixing_is_convex_per_step():
    """``x <- x + sigmoid(α)·(f(x) - x)``: α -> -∞ leaves the map unchanged (the state is still computed)."""
    block = timm.create_model("test_efficient_vim").stages[0].blocks[0].eval()
    x = torch.randn(1, 32, 4, 6)
    with torch.no_grad():
        block.alpha.fill_(-40.0)
        y, h = block(x)
    torch.testing.assert_close(y, x)
    assert h.shape == (1, 8, 32)


# The hidden-state fusion head through timm's API.


@pytest.fixture(scope="module")
def trained():
    torch.manual_seed(0)
    model = timm.create_model("test_efficient_vim").eval()
    with torch.no_grad():  # move every parameter off its init so a mis-mapped tensor shows in the output
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
        for name, b in model.named_buffers():
            if name.endswith("running_var"):
                b.uniform_(0.5, 1.5)
    return model


def test_forward_head_fuses_the_states_forward_features_kept(trained):
    x = torch.randn(2, 3, 64, 128)
    with torch.no_grad():
        logits = trained(x)
        features = trained.forward_features(x)
        assert features.shape == (2, 64, 1, 2)
        torch.testing.assert_close(trained.forward_head(features), logits)
        pooled = trained.forward_head(features, pre_logits=True)
        torch.testing.assert_close(pooled, features.mean(dim=(2, 3)))
        final, _ = trained.forward_intermediates(x)
        torch.testing.assert_close(trained.forward_head(final), logits)
        with pytest.raises(ValueError, match="fuses the hidden states of every stage"):
            trained.forward_head(features.clone())
        torch.testing.assert_close(trained.forward_head(features.clone(), pre_logits=True), pooled)
    # a copy (EMA, export rewrites) starts without the states and carries no autograd graph
    trained.forward_features(torch.randn(1, 3, 64, 64, requires_grad=True))
    copied = copy.deepcopy(trained)
    assert copied._last_states.states is None


def test_fusion_weights_mix_four_branches(trained):
    """With all the softmax weight on one branch the logits are that branch alone: the final map's pooled features
    through ``head.fc``, or stage 0's last hidden state through LayerNorm, the mean over states and its linear."""
    model = copy.deepcopy(trained)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        model.head.weights.copy_(torch.tensor([-1e4, -1e4, -1e4, 0.0]))
        torch.testing.assert_close(model(x), model.head.fc(model.forward_features(x).mean(dim=(2, 3))))
        model.head.weights.copy_(torch.tensor([0.0, -1e4, -1e4, -1e4]))
        h = model.stages[0].forward_with_state(model.stem(x))[1]
        expected = model.head.state_fc[0](model.head.state_norm[0](h).mean(dim=1))
        torch.testing.assert_close(model(x), expected)


def test_classifier_reset_and_pooling():
    model = timm.create_model("test_efficient_vim").eval()
    x = torch.randn(1, 3, 64, 64)
    model.reset_classifier(10)
    assert model(x).shape == (1, 10) and model.head.state_fc[2].out_features == 10
    model.reset_classifier(0)
    assert model(x).shape == (1, 64) and model.head.weights is None
    assert not any(n.startswith("head.") for n, _ in model.named_parameters())  # no unused parameters (DDP)
    model.reset_classifier(0, "")
    assert model(x).shape == (1, 64, 1, 1)
    model.reset_classifier(10)  # keeps the pooling (timm's contract), so it cannot classify until given one
    with pytest.raises(ValueError, match=r"global_pool is ''.*reset_classifier\(num_classes, 'avg'\)"):
        model(x)
    model.reset_classifier(10, "avg")
    assert model(x).shape == (1, 10)
    with pytest.raises(ValueError, match="global_pool='' needs num_classes=0"):
        timm.create_model("test_efficient_vim", global_pool="")
    assert timm.create_model("test_efficient_vim", global_pool="max").eval()(x).shape == (1, 1000)


def test_fuse_keeps_outputs(trained):
    x = torch.randn(2, 3, 64, 64)
    fused = copy.deepcopy(trained).fuse()
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in fused.modules())
    with torch.no_grad():
        torch.testing.assert_close(fused(x), trained(x), rtol=1e-4, atol=1e-5)


# Input sizes.


def test_valid_sizes_and_refusal():
    """Paper variants take multiples of 32 (224 = 3.5·64: the last stage rounds 3.5 up to 4, as the official model);
    the test model multiples of 64. Non-square inputs are valid."""
    with torch.device("meta"):
        m1 = timm.create_model("efficient_vim_m1")
    assert m1.input_multiple == 32 and timm.get_pretrained_cfg("efficient_vim_m1").pool_size == (4, 4)
    with pytest.raises(ValueError, match="divisible by 32, got 224x240; resize the input or pad it to 224x256"):
        m1(torch.empty(1, 3, 224, 240, device="meta"))
    model = timm.create_model("test_efficient_vim", input_multiple=32).eval()
    with torch.no_grad():
        maps = model.forward_intermediates(torch.randn(1, 3, 96, 160), intermediates_only=True)
    assert [tuple(m.shape[2:]) for m in maps] == [(6, 10), (3, 5), (2, 3)]


# The official checkpoint layout (classification/models/EfficientViM.py, utils.py), written from the vizoo keys.

STEM_BLOCK = {"conv": "conv", "bn": "norm"}
MERGE_PARTS = {"conv1": "conv.0", "conv2": "conv.1", "se": "conv.2", "conv3": "conv.3"}


def official_key(key: str, num_stages: int = 3) -> str:
    """vizoo key -> official: ``patch_embed.conv.k`` stem, ConvLayer2D's BatchNorm is ``norm``, the patch merging at
    the end of the previous stage, the FFN's ``fc1``/``fc2``, the mixer's 1x1 ``Conv1d`` wrapped in ``.conv``, the
    head's branches in ``norm.0-3``, ``heads.0-3`` and ``weights``."""
    parts = key.split(".")
    if parts[0] == "stem":  # stem.conv{k}.{conv,bn}.x
        return ".".join(["patch_embed", "conv", str(int(parts[1][-1]) - 1), STEM_BLOCK[parts[2]], *parts[3:]])
    if parts[0] == "head":
        if parts[1] == "weights":
            return "weights"
        if parts[1] == "fc":
            return f"heads.{num_stages}.{parts[2]}"
        return ("norm." if parts[1] == "state_norm" else "heads.") + ".".join(parts[2:])
    if parts[0] == "norm":
        return f"norm.{num_stages}.{parts[1]}"
    stage, rest = int(parts[1]), parts[2:]
    if rest[0] == "downsample":
        inner = rest[1:]
        if inner[0] in MERGE_PARTS:
            inner = MERGE_PARTS[inner[0]].split(".") + inner[1:]
        inner = ["norm" if p == "bn" else p for p in inner]
        return ".".join(["stages", str(stage - 1), "downsample", *inner])
    rest = ["norm" if p == "bn" else {"pw1": "fc1", "pw2": "fc2"}.get(p, p) for p in rest]
    if rest[2] == "mixer" and rest[3] in ("BCdt_proj", "hz_proj", "out_proj", "dw"):
        rest = rest[:4] + ["conv"] + rest[4:]
    return ".".join(["stages", str(stage), *rest])


def official_state(model: torch.nn.Module) -> dict:
    """The official state dict: 1x1 Conv1d weights (out, in, 1), LayerNorm affines (1, C, 1) and (1, C, 1, 1)."""
    state = {}
    for key, value in model.state_dict().items():
        new = official_key(key)
        if new.endswith(("BCdt_proj.conv.weight", "hz_proj.conv.weight", "out_proj.conv.weight")):
            value = value[:, :, None]
        elif new.startswith("norm.3."):
            value = value.view(1, -1, 1, 1)
        elif new.startswith("norm.") or re.fullmatch(r"stages\.\d+\.blocks\.\d+\.norm\.(weight|bias)", new):
            value = value.view(1, -1, 1)
        state[new] = value.clone()
    return state


def test_official_checkpoint_loads_and_reproduces_outputs(trained, tmp_path):
    state = official_state(trained)
    for key in (
        "patch_embed.conv.3.norm.running_var",
        "stages.0.downsample.conv.2.fc1.bias",
        "stages.1.downsample.dwconv2.norm.weight",
        "stages.2.blocks.1.mixer.BCdt_proj.conv.weight",
        "stages.2.blocks.1.mixer.dw.conv.weight",
        "stages.0.blocks.0.ffn.fc2.norm.running_mean",
        "stages.0.blocks.0.alpha",
        "norm.3.weight",
        "heads.3.bias",
        "weights",
    ):
        assert key in state, key
    assert state["norm.0.weight"].shape == (1, 32, 1) and state["stages.0.blocks.0.norm.bias"].shape == (1, 32, 1)
    path = tmp_path / "EfficientViM_test_e300.pth"
    torch.save({"model": state, "epoch": 299}, path)
    loaded = timm.create_model("test_efficient_vim", pretrained=True, pretrained_cfg_overlay=dict(file=str(path)))
    x = torch.randn(1, 3, 64, 128)
    with torch.no_grad():
        torch.testing.assert_close(loaded.eval()(x), trained(x))
    refit = timm.create_model(
        "test_efficient_vim", pretrained=True, num_classes=5, pretrained_cfg_overlay=dict(file=str(path))
    )
    assert refit(x).shape == (1, 5)
    torch.testing.assert_close(refit.stages[2].blocks[1].mixer.A, trained.stages[2].blocks[1].mixer.A)


def test_distilled_checkpoint_averages_its_two_heads(trained, tmp_path):
    """The official distilled model returns ``(fused(heads) + fused(heads_dist)) / 2`` at eval; vizoo folds the two."""
    teacher_side = copy.deepcopy(trained)
    with torch.no_grad():
        for p in teacher_side.head.parameters():
            p.copy_(torch.randn_like(p) * 0.3)
        teacher_side.head.state_norm.load_state_dict(trained.head.state_norm.state_dict())  # one norm per stage
    state = official_state(trained)
    for key, value in official_state(teacher_side).items():
        if key.startswith("heads.") or key == "weights":
            state[key.replace("heads.", "heads_dist.").replace("weights", "weights_dist")] = value
    path = tmp_path / "EfficientViM_test_dist.pth"
    torch.save({"model": state}, path)
    loaded = timm.create_model("test_efficient_vim", pretrained=True, pretrained_cfg_overlay=dict(file=str(path)))
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(loaded.eval()(x), (trained(x) + teacher_side(x)) / 2)


def test_timm_port_state_dict_loads():
    """timm's own port (``timm.models.efficientvim``, whose Hub weights are the official ones converted) keeps the
    official names with (C,) LayerNorm affines; its state dicts load too, with its logits on square inputs."""
    port = pytest.importorskip("timm.models.efficientvim")
    torch.manual_seed(0)
    source = port.EfficientViM(embed_dim=(32, 48, 64), depths=(1, 1, 2), state_dim=(8, 4, 4), mlp_ratio=2.0).eval()
    with torch.no_grad():
        for p in source.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    ours = timm.create_model("test_efficient_vim").eval()
    ours.load_state_dict(vizoo.backbones.efficient_vim.checkpoint_filter_fn(source.state_dict(), ours))
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), source(x))


def test_mismatched_checkpoint_names_the_keys(tmp_path):
    state = official_state(timm.create_model("test_efficient_vim"))
    state.pop("stages.1.blocks.0.mixer.A")
    state["stages.1.blocks.0.mixer.not_a_tensor"] = torch.zeros(1)
    path = tmp_path / "broken.pth"
    torch.save({"model": state}, path)
    with pytest.raises(CheckpointError, match=r"mixer\.A[\s\S]*not_a_tensor"):
        timm.create_model("test_efficient_vim", pretrained=True, pretrained_cfg_overlay=dict(file=str(path)))
    other = timm.create_model("test_efficient_vim", state_dims=(8, 4, 6))  # another variant's state sizes
    torch.save({"model": official_state(other)}, path)
    with pytest.raises(CheckpointError, match="shape"):
        timm.create_model("test_efficient_vim", pretrained=True, pretrained_cfg_overlay=dict(file=str(path)))


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(depths=(1, 1)), "one entry per stage in dims, depths and state_dims"),
        (dict(depths=(1, 0, 1)), "at least one block per stage"),
    ],
)
def test_bad_layout_arguments_say_what_to_do(kwargs, message):
    with pytest.raises(ValueError, match=message):
        timm.create_model("test_efficient_vim", **kwargs)
