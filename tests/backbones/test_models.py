"""Every registered vizoo model, through timm's API. A new family is tested here by registering its models."""

import pytest
import timm
import timm.optim
import torch

import vizoo

MODELS = vizoo.list_models()
SIZE = 64  # smallest input that exercises all four stages at their full stride, keeps big models fast
SMALL = [name for name in MODELS if name.startswith("test_")]


def create(name, **kwargs):
    return timm.create_model(name, **kwargs)


def test_registry_is_not_empty():
    assert "vmamba_tiny_s1l8" in MODELS and "test_vmamba" in MODELS


@pytest.mark.parametrize("name", MODELS)
def test_forward_backward_reach_every_parameter(name):
    model = create(name, num_classes=42)
    x = torch.randn(2, 3, SIZE, SIZE)
    out = model(x)
    assert out.shape == (2, 42)
    assert torch.isfinite(out).all()
    out.mean().backward()
    no_grad = [n for n, p in model.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not no_grad, f"parameters without a finite gradient: {no_grad[:5]}"


@pytest.mark.parametrize("name", MODELS)
def test_default_cfg_contract(name):
    """timm's test_model_default_cfgs checks; pool_size at the pretrained cfg's input size, the rest at SIZE."""
    model = create(name).eval()
    cfg = model.pretrained_cfg
    for key in ("input_size", "mean", "std", "crop_pct", "first_conv", "classifier", "pool_size"):
        assert key in cfg, key
    state = model.state_dict()
    assert cfg["classifier"] + ".weight" in state and cfg["first_conv"] + ".weight" in state
    x = torch.randn(1, 3, SIZE, SIZE)
    with torch.no_grad():
        feats = model.forward_features(torch.randn(1, *cfg["input_size"]))
        if feats.dim() == 3:  # token models (Vim): (B, tokens, C)
            assert feats.shape[-1] == model.num_features
        else:
            nhwc = getattr(model, "output_fmt", "NCHW") == "NHWC"
            spatial, chans = (feats.shape[1:3], feats.shape[-1]) if nhwc else (feats.shape[2:], feats.shape[1])
            assert tuple(spatial) == tuple(cfg["pool_size"]) and chans == model.num_features
        assert model.forward_head(feats, pre_logits=True).shape == (1, model.head_hidden_size)
        model.reset_classifier(0)  # timm: the pre-logits features remain, as forward_head(pre_logits=True) gives
        assert model(x).shape == (1, model.head_hidden_size)
        model.reset_classifier(0, "")
        assert model(x).dim() == 4
        assert create(name, num_classes=0, global_pool="").eval()(x).dim() == 4


@pytest.mark.parametrize("name", MODELS)
def test_grad_checkpointing_gives_same_output(name):
    model = create(name).eval()
    x = torch.randn(1, 3, SIZE, SIZE)
    with torch.no_grad():
        ref = model(x)
        model.set_grad_checkpointing()
        torch.testing.assert_close(model(x), ref)
    model.train()  # batch 2: a stride-64 model (MobileMamba) has 1x1 maps at 64x64; BatchNorm needs > 1 value
    model(torch.randn(2, 3, SIZE, SIZE, requires_grad=True)).sum().backward()  # checkpointed backward runs


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("feature_cls", [None, "getter"])
def test_features_only_match_feature_info(name, feature_cls):
    kwargs = dict(features_only=True) | (dict(feature_cls=feature_cls) if feature_cls else {})
    model = create(name, **kwargs).eval()
    channels = model.feature_info.channels()
    reductions = model.feature_info.reduction()
    assert channels and reductions == sorted(reductions)
    with torch.no_grad():
        feats = model(torch.randn(1, 3, SIZE, SIZE * 2))
    # The default wrapper keeps the model's NHWC layout; the getter returns NCHW.
    nhwc = feature_cls is None and getattr(model, "output_fmt", "NCHW") == "NHWC"
    for f, c, r in zip(feats, channels, reductions):
        expected = (1, SIZE // r, 2 * SIZE // r, c) if nhwc else (1, c, SIZE // r, 2 * SIZE // r)
        assert tuple(f.shape) == expected


@pytest.mark.parametrize("name", MODELS)
def test_forward_intermediates(name):
    model = create(name).eval()
    x = torch.randn(1, 3, SIZE, SIZE)
    with torch.no_grad():
        final, inters = model.forward_intermediates(x)
        torch.testing.assert_close(final, model.forward_features(x))
        expected = [
            (info["num_chs"], SIZE // info["reduction"], SIZE // info["reduction"]) for info in model.feature_info
        ]
        assert [tuple(t.shape[1:]) for t in inters] == expected
        last = len(inters) - 1
        nhwc = model.forward_intermediates(x, indices=[1, last], output_fmt="NHWC", intermediates_only=True)
        torch.testing.assert_close(nhwc[0], inters[1].permute(0, 2, 3, 1))
        early = model.forward_intermediates(x, indices=[0], stop_early=True, intermediates_only=True)
        torch.testing.assert_close(early[0], inters[0])
        if final.dim() == 4:  # hierarchical models: the normed last intermediate is the final feature map
            last_two = model.forward_intermediates(x, indices=2, norm=True, intermediates_only=True)
            nchw_final = final if getattr(model, "output_fmt", "NCHW") == "NCHW" else final.permute(0, 3, 1, 2)
            torch.testing.assert_close(last_two[1], nchw_final)
    kept = model.prune_intermediate_layers([0, 1])
    assert kept == [0, 1]
    with torch.no_grad():
        pruned = model.forward_intermediates(x, indices=[0, 1], intermediates_only=True)
    for a, b in zip(pruned, inters[:2]):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("name", MODELS)
def test_torch_export_matches_eager(name):
    model = create(name).eval()
    x = torch.randn(1, 3, SIZE, SIZE)
    program = torch.export.export(model, (x,))
    with torch.no_grad():
        torch.testing.assert_close(program.module()(x), model(x), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("name", SMALL)
def test_other_input_sizes_and_channels(name):
    model = create(name, in_chans=1, num_classes=3).eval()
    m = model.input_multiple
    with torch.no_grad():
        assert model(torch.randn(2, 1, m, 3 * m)).shape == (2, 3)
        features = model.forward_intermediates(torch.randn(1, 1, 3 * m, 2 * m), indices=1, intermediates_only=True)
        reduction = model.feature_info[-1]["reduction"]
        assert features[0].shape[2:] == (3 * m // reduction, 2 * m // reduction)


@pytest.mark.parametrize("name", SMALL)
@pytest.mark.parametrize(
    "shape, message",
    [
        ((1, 1, 64, 64), "expects 3 input channels, got 1; pass in_chans=1"),
        ((1, 3, 64, 70), "divisible by {m}, got 64x70; resize the input or pad it to 64x{up}"),
        ((0, 3, 64, 64), "empty batch"),
        ((3, 64, 64), "4-D"),
    ],
)
def test_bad_input_says_what_to_do(name, shape, message):
    model = create(name).eval()
    m = model.input_multiple
    message = message.format(m=m, up=-(-70 // m) * m)
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        model(torch.randn(*shape))
    with pytest.raises(ValueError, match=f"divisible by {m}"):
        model.forward_intermediates(torch.randn(1, 3, 64, 64 + m // 2))


@pytest.mark.parametrize(
    "name, kwargs, message",
    [
        ("test_vmamba", dict(depths=(1, 1, 1)), "dims and depths need one entry per stage, got 4 dims and 3 depths"),
        ("test_spatial_mamba", dict(dims=(16, 32)), "got 2 dims and 4 depths"),
        ("test_vmamba", dict(downsample="pool"), "unknown downsample 'pool'; use 'conv' .* or 'merge'"),
        ("test_msvmamba", dict(downsample="pool"), "unknown downsample 'pool'"),
        ("test_vmamba", dict(stem="pool"), "unknown stem 'pool'"),
        ("test_efficient_vmamba", dict(stage_blocks=("evss", "evss", "conv", "mbconv")), "unknown block 'conv'"),
    ],
)
def test_bad_layout_arguments_say_what_to_do(name, kwargs, message):
    with pytest.raises(ValueError, match=message):
        create(name, **kwargs)


def test_unknown_model_name():
    with pytest.raises(RuntimeError, match="Unknown model"):
        timm.create_model("vmamba_tinyy")


@pytest.mark.parametrize("name", SMALL)
def test_no_weight_decay_reaches_the_optimizer(name):
    model = create(name)
    names = model.no_weight_decay()
    parameters = dict(model.named_parameters())
    assert all(n in parameters for n in names), "no_weight_decay must name parameters"
    if "vmamba" in name:
        assert names and all(n.split(".")[-1] in ("A_logs", "Ds", "dt_projs_bias") for n in names)
        assert any(n.endswith("A_logs") and parameters[n].dim() == 2 for n in names)
    optimizer = timm.optim.create_optimizer_v2(model, "adamw", lr=1e-3, weight_decay=0.05)
    no_decay = {id(p) for group in optimizer.param_groups if group["weight_decay"] == 0 for p in group["params"]}
    assert all(id(model.get_parameter(n)) in no_decay for n in names)
    groups = timm.optim.create_optimizer_v2(model, "adamw", lr=1e-3, layer_decay=0.8).param_groups
    assert len({g["lr_scale"] for g in groups}) > 2  # group_matcher gives per-block layer decay
