"""MobileMamba: the paper's table, the Haar wavelet, the two-route SS2D, BatchNorm fusion, and loading the official
key layout, written out here by hand from the official ``model/mobilemamba/mobilemamba.py`` and
``model/lib_mamba/vmambanew.py`` independently of vizoo's ``checkpoint_filter_fn``."""

import math

import onnx
import pytest
import timm
import torch
import torch.nn.functional as F

import vizoo  # noqa: F401
from vizoo.export import export_onnx
from vizoo.kernels.selective_scan import selective_scan
from vizoo.layers.mobilemamba import BidirectionalSS2D, MBWTConv2d, haar_dwt, haar_filters, haar_iwt, mrffi_split
from vizoo.model_table import paper_figures
from vizoo.utils.checkpoint import CheckpointError
from vizoo.utils.complexity import count_macs, count_params

# The table in the README of github.com/lewandofskee/MobileMamba, in the variants' pretrained cfgs: resolution
# (input_size), params in M to one decimal (paper_params_m) and FLOPs (paper_gmacs, printed there in MFLOPs).
NAMES = ["mobilemamba_t2", "mobilemamba_t4", "mobilemamba_s6", "mobilemamba_b1", "mobilemamba_b2", "mobilemamba_b4"]


def paper_row(name: str) -> tuple[int, float, float]:
    """(resolution, params in M, MFLOPs) of the paper's table."""
    paper = paper_figures(name)
    return timm.get_pretrained_cfg(name).input_size[-1], paper["paper_params_m"], paper["paper_gmacs"] * 1e3


PAPER = {name: paper_row(name) for name in NAMES}


# Trainable parameters of the official model, counted by building it from ``model/mobilemamba/mobilemamba.py``
# (T2's also in its training log: 8.837M with the frozen wavelet filters).
OFFICIAL_TRAINABLE = {"t2": 8_806_682, "t4": 14_137_690, "s6": 14_996_696, "b1": 17_070_625, "b2": 17_070_625}
OFFICIAL_TRAINABLE["b4"] = OFFICIAL_TRAINABLE["b1"]


@pytest.mark.parametrize("name", PAPER)
def test_params_and_macs_match_paper(name):
    """The table counts every official parameter, the frozen Haar filters too (``wt_filter`` and ``iwt_filter``,
    kept as constants here): without them T4 has 14.14 M, not the 14.2 M published."""
    res, params, mflops = PAPER[name]
    with torch.device("meta"):
        model = timm.create_model(name)
    assert count_params(model) == OFFICIAL_TRAINABLE[name.removeprefix("mobilemamba_")]
    frozen = sum(2 * b.numel() for n, b in model.named_buffers() if n.endswith("wavelet_filters"))
    assert round((count_params(model) + frozen) / 1e6, 1) == params
    measured = count_macs(model, (3, res, res)) / 1e6
    assert abs(measured / mflops - 1) < 0.01, f"{name}: {measured:.1f} MMACs vs paper {mflops}"


@pytest.mark.parametrize("name", PAPER)
def test_paper_flops_are_fvcore_on_the_unfused_model(name):
    """The table's numbers are fvcore's on the unfused model with the official selective-scan handle: vizoo's MACs
    plus what fvcore also counts (BatchNorm 2/element, LayerNorm 5/element, the global pool 1/element), minus the
    wavelet depthwise conv, which fvcore misses (``padding='same'`` traces to an op it has no handle for)."""
    res, _, mflops = PAPER[name]
    with torch.device("meta"):
        model = timm.create_model(name).eval()
    extra = []

    def add(module, _, out):
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            extra.append(2 * out.numel())
        elif isinstance(module, torch.nn.LayerNorm):
            extra.append(5 * out.numel())
        else:  # the wavelet conv
            extra.append(-out.numel() * module.kernel_size[0] ** 2)

    for m in model.modules():
        if isinstance(m, (torch.nn.modules.batchnorm._BatchNorm, torch.nn.LayerNorm)):
            m.register_forward_hook(add)
        elif isinstance(m, MBWTConv2d):
            m.wavelet_conv.register_forward_hook(add)
    macs = count_macs(model, (3, res, res))
    pooled = model.num_features * math.ceil(res / 64) ** 2
    assert abs((macs + sum(extra) + pooled) / 1e6 / mflops - 1) < 0.002


def test_mrffi_split_matches_official_t2_channels():
    """Global/local/identity channels of T2's stages, as the official training log's parameter shapes show them."""
    assert [mrffi_split(d, g, loc) for d, g, loc in [(144, 0.8, 0.2), (272, 0.7, 0.2), (368, 0.6, 0.3)]] == [
        (112, 28, 4),
        (192, 54, 26),
        (224, 110, 34),
    ]
    assert mrffi_split(64, 0.8, 0.2) == (48, 12, 4) and mrffi_split(40, 0.8, 0.2) == (32, 8, 0)


# --- Haar wavelet -----------------------------------------------------------------------------------------------------


def test_haar_dwt_gives_the_four_subbands():
    x = torch.randn(2, 3, 4, 6)
    bands = haar_dwt(x, haar_filters(3)).unflatten(1, (3, 4))
    p, q, r, s = x[..., 0::2, 0::2], x[..., 0::2, 1::2], x[..., 1::2, 0::2], x[..., 1::2, 1::2]
    expected = torch.stack([p + q + r + s, p + q - r - s, p - q + r - s, p - q - r + s], dim=2) / 2
    torch.testing.assert_close(bands, expected)


def test_haar_iwt_inverts_dwt_and_filters_are_orthonormal():
    filters = haar_filters(1).flatten(1)
    torch.testing.assert_close(filters @ filters.T, torch.eye(4))
    x = torch.randn(2, 5, 6, 8)
    torch.testing.assert_close(haar_iwt(haar_dwt(x, haar_filters(5)), haar_filters(5)), x)


@pytest.mark.parametrize("size", [(6, 8), (5, 7)])
def test_wavelet_branch_pads_odd_maps_and_crops_back(size):
    """With the SS2D branch off and the sub-band conv and scale identities, WTE-Mamba returns its input exactly."""
    layer = MBWTConv2d(16, kernel_size=3).eval()
    with torch.no_grad():
        layer.base_scale.zero_()
        layer.wavelet_scale.fill_(1.0)
        layer.wavelet_conv.weight.zero_()
        layer.wavelet_conv.weight[:, :, 1, 1] = 1.0
    x = torch.randn(2, 16, *size)
    with torch.no_grad():
        torch.testing.assert_close(layer(x), x)


# --- SS2D -------------------------------------------------------------------------------------------------------------


def test_bidirectional_ss2d_scans_rows_forward_and_backward():
    """Against an explicit two-pass form: route 0 reads the map row-major with parameter group 0, route 1 reads it
    reversed with group 1 (the official ``bidi`` routes: the second is the first flipped), outputs summed."""
    torch.manual_seed(0)
    ss2d = BidirectionalSS2D(16, d_state=1, ssm_ratio=2.0).eval()
    with torch.no_grad():
        for p in ss2d.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    x = torch.randn(2, 16, 3, 5)
    d, rank = 32, ss2d.dt_rank
    with torch.no_grad():
        u, z = ss2d.in_proj(x).chunk(2, dim=1)
        u = F.silu(ss2d.conv2d(u)).flatten(2)
        y = 0
        for k, seq in enumerate([u, u.flip(-1)]):
            dt, b, c = torch.split(ss2d.x_proj_weight[k] @ seq, [rank, 1, 1], dim=1)
            out = selective_scan(
                seq,
                ss2d.dt_projs_weight[k] @ dt,
                -torch.exp(ss2d.A_logs[k * d : (k + 1) * d]),
                b,
                c,
                ss2d.Ds[k * d : (k + 1) * d],
                delta_bias=ss2d.dt_projs_bias[k],
                delta_softplus=True,
                backend="reference",
            )
            y = y + (out if k == 0 else out.flip(-1))
        y = F.layer_norm(y.transpose(1, 2), (d,), ss2d.out_norm.weight, ss2d.out_norm.bias, 1e-5).transpose(1, 2)
        expected = ss2d.out_proj((y * F.silu(z.flatten(2))).unflatten(-1, (3, 5)))
        torch.testing.assert_close(ss2d(x), expected, rtol=1e-4, atol=1e-5)


# --- BatchNorm fusion -------------------------------------------------------------------------------------------------


def randomise_batchnorms(model):
    torch.manual_seed(0)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                m.running_mean.normal_(0, 0.2)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_(0, 0.2)
    return model


def test_fused_model_matches_unfused_in_eval_and_exports_without_batchnorm(tmp_path):
    # multiples of 32 give odd maps in stages 2 and 3 (3x5 -> 2x3), exercising the wavelet padding too
    model = randomise_batchnorms(timm.create_model("test_mobilemamba", input_multiple=32)).eval()
    x = torch.randn(2, 3, 96, 160)
    with torch.no_grad():
        expected = model(x)
        fused = model.fuse()
        assert not any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in fused.modules())
        torch.testing.assert_close(fused(x), expected, rtol=1e-4, atol=1e-5)
    result = export_onnx(fused, tmp_path / "fused.onnx")
    assert result.max_abs_diff <= 1e-4
    ops = {n.op_type for n in onnx.load(result.path).graph.node}
    assert "BatchNormalization" not in ops and "Conv" in ops


def test_fuse_keeps_the_head_norm_without_a_classifier():
    model = randomise_batchnorms(timm.create_model("test_mobilemamba", num_classes=0)).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        expected = model(x)
        model.fuse()
        torch.testing.assert_close(model(x), expected, rtol=1e-4, atol=1e-5)
    assert isinstance(model.head.norm, torch.nn.BatchNorm1d)


# --- Official checkpoints ---------------------------------------------------------------------------------------------

# vizoo module path -> official, inside a block (official MobileMambaBlockWindow ``attn``, Conv2d_BN ``c``, the
# DWConv2d_BN_ReLU local op and the single-level ModuleLists of the wavelet branch)
OFFICIAL_BLOCK_PARTS = [
    ("mixer.m.global_op.base_scale", "mixer.m.attn.global_op.base_scale.weight"),
    ("mixer.m.global_op.wavelet_scale", "mixer.m.attn.global_op.wavelet_scale.0.weight"),
    ("mixer.m.global_op.wavelet_conv.", "mixer.m.attn.global_op.wavelet_convs.0."),
    ("mixer.m.global_op.", "mixer.m.attn.global_op."),
    ("mixer.m.local_op.dw.conv.", "mixer.m.attn.local_op.dwconv3x3."),
    ("mixer.m.local_op.dw.bn.", "mixer.m.attn.local_op.bn1."),
    ("mixer.m.local_op.dw1x1.conv.", "mixer.m.attn.local_op.dwconv1x1."),
    ("mixer.m.local_op.dw1x1.bn.", "mixer.m.attn.local_op.bn2."),
    ("mixer.m.proj.", "mixer.m.attn.proj.1."),
]


def official_key(key: str) -> str:
    """vizoo key -> the key of the same tensor in the official MobileMamba."""
    parts = key.split(".")
    if parts[0] == "stem":  # patch_embed = Sequential(Conv2d_BN, ReLU, Conv2d_BN, ReLU, ...)
        key = ".".join(["patch_embed", str(2 * (int(parts[1][-1]) - 1)), *parts[2:]])
    elif parts[0] == "head":
        key = ".".join(["head", {"norm": "bn", "fc": "l"}[parts[1]], *parts[2:]])
    elif parts[2] == "downsample":  # blocks{2,3} = [Sequential(res), PatchMerging, Sequential(res), blocks...]
        index = ["res1", "patchmerge", "res2"].index(parts[3])
        key = ".".join([f"blocks{int(parts[1]) + 1}", str(index), *parts[4:]])
    else:
        rest = ".".join(parts[4:])
        for ours, theirs in OFFICIAL_BLOCK_PARTS:
            if rest.startswith(ours):
                rest = theirs + rest.removeprefix(ours)
                break
        index = int(parts[3]) + (3 if int(parts[1]) else 0)
        key = f"blocks{int(parts[1]) + 1}.{index}.{rest}"
    if key.endswith(".conv.weight"):  # every Conv2d_BN (the local op's plain convs are renamed above)
        key = key.removesuffix(".conv.weight") + ".c.weight"
    return key


def official_wavelet_filters(channels: int) -> torch.Tensor:
    """The official ``create_wavelet_filter("db1", ...)`` with pywt's db1 filters written out."""
    a = 1 / math.sqrt(2)
    lo, hi = torch.tensor([a, a]), torch.tensor([a, -a])  # dec_lo[::-1], dec_hi[::-1]
    bank = torch.stack([lo[None] * lo[:, None], lo[None] * hi[:, None], hi[None] * lo[:, None], hi[None] * hi[:, None]])
    return bank[:, None].repeat(channels, 1, 1, 1)


def official_state_dict(model):
    state = {official_key(k): v.clone() for k, v in model.state_dict().items()}
    for name, module in model.named_modules():
        if isinstance(module, MBWTConv2d):
            prefix = official_key(name + ".base_scale").removesuffix("base_scale.weight")
            filters = official_wavelet_filters(module.base_scale.shape[1])
            state[prefix + "wt_filter"], state[prefix + "iwt_filter"] = filters, filters.clone()
    return state


def perturbed_test_model(**kwargs):
    torch.manual_seed(0)
    model = randomise_batchnorms(timm.create_model("test_mobilemamba", **kwargs)).eval()
    with torch.no_grad():  # move every parameter off its init so a mis-mapped tensor shows in the output
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    return model


def test_official_checkpoint_loads_and_reproduces_outputs(tmp_path):
    source = perturbed_test_model()
    state = official_state_dict(source)
    for key in (
        "patch_embed.6.c.weight",
        "blocks1.0.mixer.m.attn.global_op.global_atten.x_proj_weight",
        "blocks1.0.mixer.m.attn.global_op.wt_filter",
        "blocks1.0.mixer.m.attn.local_op.dwconv3x3.weight",
        "blocks2.1.se.fc1.weight",
        "blocks3.3.mixer.m.attn.proj.1.bn.running_var",
        "head.l.weight",
    ):
        assert key in state, key
    path = tmp_path / "mobilemamba.pth"
    torch.save(state, path)
    loaded = timm.create_model("test_mobilemamba", pretrained=True, pretrained_cfg_overlay=dict(file=str(path)))
    x = torch.randn(2, 3, 64, 128)
    with torch.no_grad():
        torch.testing.assert_close(loaded.eval()(x), source(x))
    features = timm.create_model(
        "test_mobilemamba", pretrained=True, features_only=True, pretrained_cfg_overlay=dict(file=str(path))
    )
    assert [f.shape[1] for f in features(x)] == [48, 64, 80]
    refit = timm.create_model(
        "test_mobilemamba", pretrained=True, num_classes=5, pretrained_cfg_overlay=dict(file=str(path))
    )
    assert refit.eval()(x).shape == (2, 5)


def test_distillation_head_is_averaged_into_the_classifier(tmp_path):
    source = perturbed_test_model()
    state = official_state_dict(source)
    for name, value in list(state.items()):
        if name.startswith("head."):
            state["head_dist." + name.removeprefix("head.")] = value + torch.rand_like(value.float()).to(value) * 0.5
    path = tmp_path / "distilled.pth"
    torch.save(state, path)
    loaded = timm.create_model("test_mobilemamba", pretrained=True, pretrained_cfg_overlay=dict(file=str(path)))
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        pooled = source.forward_features(x).mean((2, 3))

        def bn_linear(prefix):  # the official BN_Linear in eval
            bn = F.batch_norm(
                pooled,
                state[f"{prefix}.bn.running_mean"],
                state[f"{prefix}.bn.running_var"],
                state[f"{prefix}.bn.weight"],
                state[f"{prefix}.bn.bias"],
                eps=1e-5,
            )
            return F.linear(bn, state[f"{prefix}.l.weight"], state[f"{prefix}.l.bias"])

        expected = (bn_linear("head") + bn_linear("head_dist")) / 2
        torch.testing.assert_close(loaded.eval()(x), expected, rtol=1e-4, atol=1e-5)


def test_checkpoint_of_another_variant_is_refused(tmp_path):
    path = tmp_path / "test.pth"
    torch.save(official_state_dict(timm.create_model("test_mobilemamba")), path)
    with pytest.raises(CheckpointError, match="does not match mobilemamba_t2"):
        timm.create_model("mobilemamba_t2", pretrained=True, pretrained_cfg_overlay=dict(file=str(path)))


def test_mismatched_checkpoint_names_the_keys(tmp_path):
    state = official_state_dict(timm.create_model("test_mobilemamba"))
    del state["blocks2.3.ffn0.m.pw1.c.weight"]
    state["blocks2.3.not_a_tensor"] = torch.zeros(1)
    path = tmp_path / "broken.pth"
    torch.save(state, path)
    with pytest.raises(CheckpointError, match=r"(?s)stages\.1\.blocks\.0\.ffn0\.m\.pw1\.conv\.weight.*not_a_tensor"):
        timm.create_model("test_mobilemamba", pretrained=True, pretrained_cfg_overlay=dict(file=str(path)))


def test_wavelet_filters_other_than_haar_are_refused(tmp_path):
    state = official_state_dict(timm.create_model("test_mobilemamba"))
    state["blocks1.0.mixer.m.attn.global_op.wt_filter"] *= 2
    path = tmp_path / "not_haar.pth"
    torch.save(state, path)
    with pytest.raises(CheckpointError, match=r"wt_filter is not the db1 \(Haar\) filter bank"):
        timm.create_model("test_mobilemamba", pretrained=True, pretrained_cfg_overlay=dict(file=str(path)))
