"""GroupMamba: the grouped single-route mixer against a per-group reference written from the kernels' specifications,
the paper's table, the official checkpoint layout and the head's options."""

import pytest
import timm
import torch
import torch.nn.functional as F

import vizoo  # noqa: F401
from vizoo.backbones.groupmamba import GroupedSS2D, ModulatedGroupMamba, route_unorder
from vizoo.kernels.cross_scan import cross_scan_routes, route_order
from vizoo.kernels.selective_scan.reference import selective_scan_reference
from vizoo.model_table import paper_figures
from vizoo.utils.checkpoint import CheckpointError
from vizoo.utils.complexity import count_macs, count_params


@pytest.mark.parametrize("backend", ["reference", "torch"])
def test_route_unorder_inverts_route_order(backend):
    maps = torch.randn(2, 4, 3, 5, 7)
    ordered = route_order(maps, backend=backend)
    torch.testing.assert_close(route_unorder(ordered, 5, 7), maps.flatten(-2), rtol=0, atol=0)


def per_group_reference(mixer: GroupedSS2D, x: torch.Tensor) -> torch.Tensor:
    """The four SS2D of the official MGM one by one: group k's channels through its own projections, read along route
    k of ``cross_scan_routes`` (row-major, column-major, both reversed), scanned by the reference selective scan, put
    back at its pixels by the route's indices."""
    b, h, w, c = x.shape
    routes = cross_scan_routes(h, w)
    d, n, r = mixer.d_inner, mixer.d_state, mixer.dt_rank
    outs = []
    for k, xk in enumerate(x.chunk(4, dim=-1)):
        xz = xk @ mixer.in_proj_weight[k].T
        u, z = xz[..., :d], xz[..., d:]
        conv_w = mixer.conv2d.weight[k * d : (k + 1) * d]
        conv_b = mixer.conv2d.bias[k * d : (k + 1) * d]
        u = F.silu(F.conv2d(u.permute(0, 3, 1, 2), conv_w, conv_b, padding=1, groups=d)).flatten(2)
        u = u[:, :, routes[k]]  # (b, d, l) in route k's order
        proj = torch.einsum("cd,bdl->bcl", mixer.x_proj_weight[k], u)
        dt, B, C = proj[:, :r], proj[:, None, r : r + n], proj[:, None, r + n :]  # B, C: (b, 1, n, l)
        y = selective_scan_reference(
            u,
            torch.einsum("dr,brl->bdl", mixer.dt_projs_weight[k], dt),
            -torch.exp(mixer.A_logs[k * d : (k + 1) * d]),
            B,
            C,
            mixer.Ds[k * d : (k + 1) * d],
            delta_bias=mixer.dt_projs_bias[k],
            delta_softplus=True,
        )
        y = torch.zeros_like(y).index_copy(-1, routes[k], y).transpose(1, 2).reshape(b, h, w, d)
        y = F.layer_norm(y, (d,), mixer.out_norm_weight[k], mixer.out_norm_bias[k])
        outs.append((y * F.silu(z)) @ mixer.out_proj_weight[k].T)
    return torch.cat(outs, dim=-1)


@pytest.mark.parametrize("backend", ["reference", "torch"])
def test_grouped_mixer_is_four_single_route_ss2d(backend):
    torch.manual_seed(0)
    mixer = GroupedSS2D(32, scan_backend=backend)
    with torch.no_grad():
        for p in mixer.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    x = torch.randn(2, 5, 6, 32)  # non-square: row- and column-major routes differ
    with torch.no_grad():
        torch.testing.assert_close(mixer(x), per_group_reference(mixer, x), rtol=1e-4, atol=1e-5)


def test_mgm_layer_modulates_and_reuses_its_norm():
    """``proj(LN(GroupedSS2D(LN x) · skip_scale · LN x · CAM))`` with one LayerNorm, CAM from the token mean."""
    torch.manual_seed(0)
    layer = ModulatedGroupMamba(32)
    with torch.no_grad():
        for p in layer.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    x = torch.randn(2, 4, 4, 32)
    with torch.no_grad():
        xn = layer.norm(x)
        cam = torch.sigmoid(layer.fc2(torch.relu(layer.fc1(xn.flatten(1, 2).mean(1)))))
        expected = layer.proj(layer.norm(layer.ssm(xn) * layer.skip_scale * xn * cam[:, None, None, :]))
        torch.testing.assert_close(layer(x), expected)


@pytest.mark.parametrize("name", ["groupmamba_tiny", "groupmamba_small", "groupmamba_base"])
def test_params_and_flops_match_paper(name):
    """Params within 1% of Table 1 (and to its rounding); MACs (selective scan 9·B·L·D·N) within 5%."""
    paper = paper_figures(name)
    with torch.device("meta"):
        model = timm.create_model(name)
    params = count_params(model) / 1e6
    assert round(params) == paper["paper_params_m"] and abs(params / paper["paper_params_m"] - 1) < 0.01, params
    gmacs = count_macs(model) / 1e9
    assert abs(gmacs / paper["paper_gmacs"] - 1) < 0.05, f"{name}: {gmacs:.2f} GMACs vs paper {paper['paper_gmacs']}"


def official_key(key: str) -> str:
    """vizoo key -> the official ``GroupMamba`` key, written out from classification/models/groupmamba.py."""
    parts = key.split(".")
    if parts[0] == "stem":
        return "patch_embed1." + ".".join(parts[1:])
    if parts[0] == "stages":
        i = int(parts[1]) + 1
        if parts[2] == "downsample":
            return f"patch_embed{i}." + {"conv": "proj", "norm": "norm"}[parts[3]] + "." + parts[4]
        if parts[2] == "norm":
            return f"norm{i}.{parts[3]}"
        rest = ".".join(parts[3:]).replace("mlp.dwconv.", "mlp.dwconv.dwconv.")
        return f"block{i}.{rest}"
    if parts[:2] == ["head", "norm"]:
        return f"norm4.{parts[2]}"
    if parts[:2] == ["head", "cls_block"]:
        return "post_network.0." + ".".join(parts[2:])
    raise AssertionError(key)


def official_state_dict(model) -> dict:
    """The model's weights in the official layout: per-group ``mamba_g{k}`` SS2D tensors, ``head`` and ``dist_head``
    (two different heads whose mean is vizoo's classifier)."""
    stacked = {
        "in_proj_weight": "in_proj.weight",
        "out_norm_weight": "out_norm.weight",
        "out_norm_bias": "out_norm.bias",
        "out_proj_weight": "out_proj.weight",
    }
    out = {}
    for key, value in model.state_dict().items():
        if key.startswith("head.fc."):
            leaf = key.rsplit(".", 1)[1]
            delta = torch.randn_like(value)
            out[f"head.{leaf}"], out[f"dist_head.{leaf}"] = value + delta, value - delta
            continue
        prefix, _, leaf = key.partition(".ssm.")
        if not leaf:
            out[official_key(key)] = value.clone()
            continue
        official_prefix = official_key(prefix + ".x")[:-2]
        # Stacked in vizoo, one tensor per group officially; the rest are concatenated along dim 0 (the K=1 route
        # axis of x_proj / dt_projs, the channels of conv2d, A_logs and Ds).
        parts = value.unbind(0) if leaf in stacked else value.chunk(4)
        for k, part in enumerate(parts, start=1):
            out[f"{official_prefix}.mamba_g{k}.{stacked.get(leaf, leaf)}"] = part.clone()
    return out


def test_official_checkpoint_loads_and_reproduces_outputs(tmp_path):
    torch.manual_seed(0)
    source = timm.create_model("test_groupmamba").eval()
    with torch.no_grad():
        for p in source.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    state = official_state_dict(source)
    assert state["block1.0.attn.mamba_g1.x_proj_weight"].shape[0] == 1  # the official K=1 SS2D layout
    path = tmp_path / "groupmamba_ema.pth"
    torch.save(state, path)  # the released files: a flat EMA state dict
    loaded = timm.create_model("test_groupmamba", pretrained=True, pretrained_cfg_overlay=dict(file=str(path))).eval()
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), source(x))
    torch.save({"model_ema": state, "epoch": 299}, path)  # a training checkpoint
    refit = timm.create_model(
        "test_groupmamba", pretrained=True, num_classes=5, pretrained_cfg_overlay=dict(file=str(path))
    )
    assert refit(x).shape == (1, 5)


def test_incomplete_official_checkpoint_names_the_keys(tmp_path):
    state = official_state_dict(timm.create_model("test_groupmamba"))
    state.pop("block2.0.attn.mamba_g3.A_logs")
    path = tmp_path / "broken.pth"
    torch.save(state, path)
    with pytest.raises(CheckpointError, match=r"stages\.1\.blocks\.0\.attn\.ssm\.A_logs"):
        timm.create_model("test_groupmamba", pretrained=True, pretrained_cfg_overlay=dict(file=str(path)))


def test_head_pools_with_its_class_token():
    model = timm.create_model("test_groupmamba").eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        feats = model.forward_features(x)  # (2, 2, 2, 64): stage 4, unnormalised as released
        token = model.head.norm(model.head.cls_block(feats.mean((1, 2), keepdim=True))).flatten(1)
        torch.testing.assert_close(model.forward_head(feats, pre_logits=True), token)
        torch.testing.assert_close(model(x), model.head.fc(token))


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(dims=(16, 32, 48, 66)), "multiple of 4, got 66"),
        (dict(dims=(8, 32, 48, 64)), "dim must be >= 16"),
        (dict(mlp_ratios=(2, 2, 2)), "one entry per stage, got 4, 4 and 3"),
        (dict(global_pool="avg"), "global_pool must be 'token' or ''"),
    ],
)
def test_bad_arguments_say_what_to_do(kwargs, message):
    with pytest.raises(ValueError, match=message):
        timm.create_model("test_groupmamba", **kwargs)


def test_any_multiple_of_32_and_features_for_detection():
    pytest.importorskip("mmdet")
    from vizoo.mm import VizooBackbone

    backbone = VizooBackbone("test_groupmamba", out_indices=(0, 1, 2, 3)).eval()
    with torch.no_grad():
        feats = backbone(torch.randn(1, 3, 96, 160))
    assert [tuple(f.shape) for f in feats] == [
        (1, c, 96 // s, 160 // s) for c, s in zip((16, 32, 48, 64), (4, 8, 16, 32))
    ]
