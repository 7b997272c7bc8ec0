"""Vision-RWKV: the paper's table (params, FLOPs), the released block layout and init, Q-Shift, the resolution-
dependent decay, the official key layouts (written out here from OpenGVLab/Vision-RWKV
``classification/mmcls_custom/models/backbones/vrwkv.py`` for T/S/B and ``classification_internimage/models/vrwkv.py``
for L, independently of ``checkpoint_filter_fn``) and the input sizes. The logits against the official code itself:
tools/check_official_vrwkv.py."""

import math

import pytest
import timm
import torch
import torch.nn.functional as F

import vizoo.backbones.vrwkv as vrwkv
from vizoo.kernels import count_kernel_macs
from vizoo.model_table import paper_figures
from vizoo.utils.checkpoint import CheckpointError
from vizoo.utils.complexity import count_macs, count_params

VARIANTS = ["vrwkv_tiny", "vrwkv_small", "vrwkv_base", "vrwkv_large"]


@pytest.mark.parametrize("name", VARIANTS)
def test_params_and_flops_match_paper(name):
    """Params within 1% and FLOPs within 5% of the README / paper table (params to 0.1 M, GFLOPs to 0.1 G at the
    pretrained cfg's input size: 224², L 384²).

    The table's FLOPs are mmcv's ``get_model_complexity_info`` count (MACs of convolutions and Linears, plus the
    elements of LayerNorms and pooling, under 0.2% here) plus ``29·T·C`` per block for the WKV, which mmcv cannot see
    (``classification/get_flops_backbone.py``). Like with like: vizoo's convolution and matmul MACs plus the same
    29·T·C per block (whatever the WKV kernel records itself is taken out first)."""
    paper = paper_figures(name)
    with torch.device("meta"):  # shapes only: counting needs no arithmetic
        model = timm.create_model(name)
    params = count_params(model) / 1e6
    assert abs(params / paper["paper_params_m"] - 1) < 0.01, f"{name}: {params:.2f} M vs {paper['paper_params_m']}"
    size = model.pretrained_cfg["input_size"]
    with count_kernel_macs() as kernels:
        total = count_macs(model, size)
    tokens = (size[1] // 16) * (size[2] // 16)
    measured = (total - sum(kernels.values()) + 29 * tokens * model.embed_dim * len(model.blocks)) / 1e9
    assert abs(measured / paper["paper_gmacs"] - 1) < 0.05, f"{name}: {measured:.3f} G vs {paper['paper_gmacs']}"


@pytest.mark.parametrize(
    "name, width, depth, tokens, post_norm, gamma, large",
    [
        ("vrwkv_tiny", 192, 12, 196, False, None, False),
        ("vrwkv_small", 384, 12, 196, True, 1.0, False),
        ("vrwkv_base", 768, 12, 196, True, 1e-5, False),
        ("vrwkv_large", 1024, 24, 144, True, 1e-5, True),  # a 12x12 position embedding (MODEL.VRWKV.IMG_SIZE 192)
    ],
)
def test_block_layout_is_the_released_one(name, width, depth, tokens, post_norm, gamma, large):
    """T/S/B as classification/configs/vrwkv/; L as classification_internimage/configs/vrwkv_l_22kto1k_384.yaml with
    ``k_norm`` (default True there) and the ``Linear(C, 3072) -> Tanh -> Linear`` head of its deeper-than-12 models."""
    with torch.device("meta"):
        model = timm.create_model(name)
    assert len(model.blocks) == depth and model.patch_embed.proj.stride == (16, 16)
    assert model.pos_embed.shape == (1, tokens, width)
    if large:
        assert model.pretrained_cfg["input_size"] == (3, 384, 384) and model.pretrained_cfg["crop_pct"] == 1.0
        assert (model.pre_logits.fc.in_features, model.pre_logits.fc.out_features) == (width, 3072)
        assert isinstance(model.pre_logits.act, torch.nn.Tanh) and model.head.in_features == 3072
        assert model.head_hidden_size == 3072 and model.num_features == width
    else:
        assert isinstance(model.pre_logits, torch.nn.Identity) and model.head.in_features == width
    for block in model.blocks:
        assert block.post_norm == post_norm
        assert (block.ls1.gamma.shape == (width,)) if gamma else not hasattr(block.ls1, "gamma")
        assert block.channel_mix.key.out_features == 4 * width
        mixers = [block.spatial_mix.key, block.spatial_mix.value, block.spatial_mix.receptance]
        mixers += [block.spatial_mix.output, block.channel_mix.key, block.channel_mix.value]
        assert all(linear.bias is None for linear in mixers)
        if large:  # LayerNorm on the WKV output (C) and on ChannelMix's hidden activations (4C)
            assert block.spatial_mix.key_norm.normalized_shape == (width,)
            assert block.channel_mix.key_norm.normalized_shape == (4 * width,)
        else:
            assert isinstance(block.spatial_mix.key_norm, torch.nn.Identity)
            assert isinstance(block.channel_mix.key_norm, torch.nn.Identity)
    if gamma:
        gammas = timm.create_model("test_vrwkv", layer_scale=gamma).blocks[0].ls2.gamma
        assert torch.equal(gammas.detach(), torch.full_like(gammas, gamma))


def test_fancy_init():
    """RWKV's per-block init, as the official ``_init_weights(init_mode='fancy')``: decay from -5 to 3 over the
    channels with exponent 0.7 + 1.3·l/(L-1), first = ln 0.3 + 0.5·((i+1) mod 3 - 1), μ = (i/C)^(1 - l/L) (μ_v plus
    0.3·l/(L-1), μ_r to half the exponent in SpatialMix); Linears truncated normal, the position embedding zero."""
    model = timm.create_model("test_vrwkv")
    dim, depth = model.embed_dim, len(model.blocks)
    i = torch.arange(dim, dtype=torch.float64)
    for layer, block in enumerate(model.blocks):
        s, c = block.spatial_mix, block.channel_mix
        ramp = (i / dim) ** (1 - layer / depth)
        expected_decay = -5 + 8 * (i / (dim - 1)) ** (0.7 + 1.3 * layer / (depth - 1))
        torch.testing.assert_close(s.decay.double(), expected_decay, rtol=0, atol=1e-6)
        torch.testing.assert_close(s.first.double(), math.log(0.3) + 0.5 * ((i + 1) % 3 - 1), rtol=0, atol=1e-6)
        torch.testing.assert_close(s.mix_k.double().flatten(), ramp, rtol=0, atol=1e-6)
        torch.testing.assert_close(s.mix_v.double().flatten(), ramp + 0.3 * layer / (depth - 1), rtol=0, atol=1e-6)
        torch.testing.assert_close(
            s.mix_r.double().flatten(), (i / dim) ** (0.5 * (1 - layer / depth)), atol=1e-6, rtol=0
        )
        torch.testing.assert_close(c.mix_k.double().flatten(), ramp, rtol=0, atol=1e-6)
        assert s.mix_k.shape == (1, 1, dim)  # the official shape, so optimizers treat it as the official run does
        assert float(s.key.weight.detach().std()) == pytest.approx(0.02, rel=0.3)  # not PyTorch's default (~0.1 here)
    assert not model.pos_embed.any()


def test_q_shift_takes_each_quarter_from_one_neighbour():
    x = torch.randn(1, 3, 4, 10)  # (B, h, w, C): quarters of 2 channels, 2 channels left unshifted
    y = vrwkv.q_shift(x)
    zero = torch.zeros(1, 3, 1, 2)
    torch.testing.assert_close(y[:, :, 1:, 0:2], x[:, :, :-1, 0:2])  # from the left neighbour
    torch.testing.assert_close(y[:, :, :1, 0:2], zero)
    torch.testing.assert_close(y[:, :, :-1, 2:4], x[:, :, 1:, 2:4])  # from the right neighbour
    torch.testing.assert_close(y[:, :, -1:, 2:4], zero)
    torch.testing.assert_close(y[:, 1:, :, 4:6], x[:, :-1, :, 4:6])  # from the upper neighbour
    assert not y[:, 0, :, 4:6].any()
    torch.testing.assert_close(y[:, :-1, :, 6:8], x[:, 1:, :, 6:8])  # from the lower neighbour
    assert not y[:, -1, :, 6:8].any()
    torch.testing.assert_close(y[..., 8:], x[..., 8:])


def test_wkv_decay_and_bonus_are_divided_by_the_token_count(monkeypatch):
    model = timm.create_model("test_vrwkv").eval()
    seen, kernel = [], vrwkv.bi_wkv

    def spy(w, u, k, v, backend=None):
        seen.append((w, u, k.shape[1]))
        return kernel(w, u, k, v, backend)

    monkeypatch.setattr(vrwkv, "bi_wkv", spy)
    mix = model.blocks[0].spatial_mix
    with torch.no_grad():
        for h, w in ((64, 64), (64, 96)):
            seen.clear()
            model(torch.randn(1, 3, h, w))
            decay, bonus, tokens = seen[0]
            assert tokens == (h // 16) * (w // 16)
            torch.testing.assert_close(decay, mix.decay / tokens)
            torch.testing.assert_close(bonus, mix.first / tokens)


def test_position_embedding_is_resampled_as_mmcls():
    """Another grid resamples the (1, h·w, C) embedding bicubically without antialiasing (mmcls'
    ``resize_pos_embed``: ``F.interpolate(..., align_corners=False)``)."""
    model = timm.create_model("test_vrwkv").eval()
    with torch.no_grad():
        model.pos_embed.normal_()
    grid = model.pos_embed.reshape(1, 4, 4, -1).permute(0, 3, 1, 2)
    expected = F.interpolate(grid, size=(2, 6), mode="bicubic", align_corners=False).flatten(2).transpose(1, 2)
    torch.testing.assert_close(vrwkv.resample_pos_embed(model.pos_embed, (2, 6), (4, 4)), expected)


def official_key(key: str, mlp_head: bool = False) -> str:
    """vizoo key -> official key: ``backbone.`` prefix, ``patch_embed.projection``, ``layers.0.ln0``,
    ``layers.i.ln{1,2}``, ``gamma{1,2}``, ``att`` / ``ffn`` with ``spatial_decay``, ``spatial_first``,
    ``spatial_mix_{k,v,r}`` (and ``key_norm``), final ``ln1``; the mmcls head ``head.fc``, or with ``mlp_head`` the
    internimage ``VRWKV_Classification`` head ``Sequential(Linear, Tanh, Linear)``: ``head.0``, ``head.2``."""
    parts = key.split(".")
    if parts[0] == "pre_logits":
        return ".".join(["head", "0", *parts[2:]])
    if parts[0] == "head":
        return ".".join(["head", "2" if mlp_head else "fc", *parts[1:]])
    if parts[0] == "patch_embed":
        return ".".join(["backbone", "patch_embed", "projection", *parts[2:]])
    if parts[0] == "norm_pre":
        return ".".join(["backbone", "layers", "0", "ln0", *parts[1:]])
    if parts[0] == "norm":
        return ".".join(["backbone", "ln1", *parts[1:]])
    if parts[0] == "blocks":
        layer, module, rest = parts[1], parts[2], parts[3:]
        if module in ("norm1", "norm2"):
            return ".".join(["backbone", "layers", layer, "ln" + module[-1], *rest])
        if module in ("ls1", "ls2"):
            return f"backbone.layers.{layer}.gamma{module[-1]}"
        leaf = {"decay": "spatial_decay", "first": "spatial_first"}.get(rest[0], rest[0])
        leaf = "spatial_" + leaf if leaf.startswith("mix_") else leaf
        mixer = "att" if module == "spatial_mix" else "ffn"
        return ".".join(["backbone", "layers", layer, mixer, leaf, *rest[1:]])
    return "backbone." + key  # pos_embed


def official_checkpoint(model: torch.nn.Module) -> dict:
    """The released ``.pth`` layouts: mmcls' ``{"meta": ..., "state_dict": ...}``; internimage's ``save_checkpoint``
    (VRWKV-L) ``{"state_dict": ..., "epoch": ..., "max_accuracy": ...}``."""
    mlp_head = model.head_hidden_size != model.embed_dim
    state = {official_key(k, mlp_head): v.clone() for k, v in model.state_dict().items()}
    if mlp_head:
        return {"state_dict": state, "epoch": 19, "max_accuracy": 86.0}
    return {"meta": {"epoch": 300}, "state_dict": state}


# The official layouts: mmcls T/S/B; L's (key_norm, MLP head) on a tiny model.
LAYOUTS = {"mmcls": {}, "internimage": dict(key_norm=True, head_hidden_size=24)}


@pytest.mark.parametrize("layout", LAYOUTS)
def test_official_checkpoint_loads_and_reproduces_outputs(tmp_path, layout):
    torch.manual_seed(0)
    kwargs = LAYOUTS[layout]
    source = timm.create_model("test_vrwkv", **kwargs).eval()
    with torch.no_grad():  # move every parameter off its init so a mis-mapped tensor shows in the output
        for p in source.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    checkpoint = official_checkpoint(source)
    state = checkpoint["state_dict"]
    for key in (
        "backbone.pos_embed",
        "backbone.patch_embed.projection.bias",
        "backbone.layers.0.ln0.weight",
        "backbone.layers.1.ln2.bias",
        "backbone.layers.1.gamma1",
        "backbone.layers.2.att.spatial_decay",
        "backbone.layers.2.att.spatial_first",
        "backbone.layers.2.att.spatial_mix_v",
        "backbone.layers.2.att.output.weight",
        "backbone.layers.3.ffn.spatial_mix_r",
        "backbone.layers.3.ffn.value.weight",
        "backbone.ln1.weight",
        *(
            (
                "backbone.layers.2.att.key_norm.weight",
                "backbone.layers.3.ffn.key_norm.bias",
                "head.0.weight",
                "head.2.bias",
            )
            if kwargs
            else ("head.fc.bias",)
        ),
    ):
        assert key in state, key
    path = tmp_path / "vrwkv_test_in1k_224.pth"
    torch.save(checkpoint, path)
    loaded = timm.create_model(
        "test_vrwkv", pretrained=True, pretrained_cfg_overlay=dict(file=str(path)), **kwargs
    ).eval()
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), source(x))
    refit = timm.create_model(
        "test_vrwkv", pretrained=True, num_classes=5, img_size=96, pretrained_cfg_overlay=dict(file=str(path)), **kwargs
    )
    assert refit.pos_embed.shape == (1, 36, 32)  # the 4x4 embedding resampled to the 6x6 grid
    torch.testing.assert_close(refit.pos_embed, vrwkv.resample_pos_embed(source.pos_embed, (6, 6), (4, 4)))
    assert refit(x).shape == (1, 5)


def test_official_large_layout_maps_onto_vrwkv_large():
    """Every tensor of VRWKV-L in the official internimage layout (shapes only, on the meta device) maps onto
    vrwkv_large's keys and shapes, and the model loads the result strictly."""
    with torch.device("meta"):
        model = timm.create_model("vrwkv_large")
    state = official_checkpoint(model)["state_dict"]
    assert state["backbone.pos_embed"].shape == (1, 144, 1024)
    assert state["head.0.weight"].shape == (3072, 1024) and state["head.2.weight"].shape == (1000, 3072)
    assert state["backbone.layers.23.ffn.key_norm.weight"].shape == (4096,)
    converted = vrwkv.checkpoint_filter_fn(state, model)
    expected = model.state_dict()
    assert {k: tuple(v.shape) for k, v in converted.items()} == {k: tuple(v.shape) for k, v in expected.items()}
    model.load_state_dict(converted, strict=True, assign=True)


def test_reset_classifier_keeps_the_pre_logits_layer():
    """timm's contract: after ``reset_classifier(0)`` the output is the pre-logits features, (B, head_hidden_size)."""
    model = timm.create_model("test_vrwkv", head_hidden_size=24).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        pre = model.forward_head(model.forward_features(x), pre_logits=True)
        model.reset_classifier(7)
        assert model.head.in_features == 24 and model(x).shape == (1, 7)
        model.reset_classifier(0)
        torch.testing.assert_close(model(x), pre)
    assert pre.shape == (1, 24) and pre.abs().max() <= 1  # after the Tanh


def test_mismatched_checkpoint_names_the_keys(tmp_path):
    state = official_checkpoint(timm.create_model("test_vrwkv"))["state_dict"]
    state.pop("backbone.layers.1.att.spatial_decay")
    state["backbone.layers.1.att.not_a_tensor"] = torch.zeros(1)
    path = tmp_path / "broken.pth"
    torch.save(state, path)
    with pytest.raises(CheckpointError, match=r"decay[\s\S]*not_a_tensor"):
        timm.create_model("test_vrwkv", pretrained=True, pretrained_cfg_overlay=dict(file=str(path)))
    # A VRWKV-T-style checkpoint (no γ) into a model with γ (as S and B): the γ keys are named.
    state = official_checkpoint(timm.create_model("test_vrwkv"))["state_dict"]
    torch.save({k: v for k, v in state.items() if ".gamma" not in k}, path)
    with pytest.raises(CheckpointError, match=r"missing keys: blocks\.0\.ls1\.gamma"):
        timm.create_model("test_vrwkv", pretrained=True, pretrained_cfg_overlay=dict(file=str(path)))
    torch.save(official_checkpoint(timm.create_model("test_vrwkv", embed_dim=48)), path)
    with pytest.raises(CheckpointError, match=r"shape mismatches: pos_embed: checkpoint \(1, 16, 48\)"):
        timm.create_model("test_vrwkv", pretrained=True, pretrained_cfg_overlay=dict(file=str(path)))


def test_input_sizes():
    """Any multiple of 16 on each side (non-square included, the token count grows with the area); other sizes are
    refused rather than zero-padded as the official mmcv PatchEmbed does."""
    model = timm.create_model("test_vrwkv", num_classes=3).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 16, 48)).shape == (1, 3)
        assert model.forward_features(torch.randn(1, 3, 80, 32)).shape == (1, 10, 32)
    with pytest.raises(ValueError, match="divisible by 16, got 64x72; resize the input or pad it to 64x80"):
        model(torch.randn(1, 3, 64, 72))
    model.reset_classifier(0, "")
    with torch.no_grad():
        assert model(torch.randn(1, 3, 64, 64)).shape == (1, 4, 4, 32)
        with pytest.raises(ValueError, match="square map, but got 24 patch tokens; use forward_intermediates"):
            model(torch.randn(1, 3, 64, 96))
    with pytest.raises(ValueError, match="global_pool must be one of"):
        timm.create_model("test_vrwkv", global_pool="token")
    with pytest.raises(ValueError, match="token features"):
        timm.create_model("test_vrwkv", features_fmt="NCHW")


def test_wkv_backends_agree():
    x = torch.randn(1, 3, 64, 64)
    reference = timm.create_model("test_vrwkv", wkv_backend="reference").eval()
    chunked = timm.create_model("test_vrwkv", wkv_backend="torch").eval()
    chunked.load_state_dict(reference.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(chunked(x), reference(x), rtol=1e-5, atol=1e-5)


def test_vision_tower_tokens_are_the_final_map():
    """A token model without a class token: the VLM tower's tokens are all N normed tokens, row-major."""
    from vizoo.multimodal import VisionTower

    tower = VisionTower("test_vrwkv").eval()
    x = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        out = tower(x)
        features = tower.model.forward_features(x)
    assert out.grid == (4, 6)
    torch.testing.assert_close(out.tokens, features)
    torch.testing.assert_close(out.pooled, features.mean(dim=1))


def test_bf16_model_keeps_the_wkv_decay_in_fp32():
    """A bf16 model passes its decay and bonus to the kernel in fp32 (the kernel's contract; the official WKV casts
    them too), and its output stays bf16."""
    model = timm.create_model("test_vrwkv", dtype=torch.bfloat16).eval()
    with torch.no_grad():
        out = model(torch.randn(1, 3, 64, 48, dtype=torch.bfloat16))
    assert out.dtype == torch.bfloat16 and torch.isfinite(out).all()
