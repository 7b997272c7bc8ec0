"""MSVMamba v3 (Shi et al., NeurIPS 2024; official branch ``v2`` of YuHengsss/MSVMamba): the published sizes, the
official checkpoint layout and the v3 mixer against a direct formulation of the official ``vms`` forward.

The official key names and shapes are written out here by hand from the official module structure
(``classification/models/vmamba.py`` and ``csms6s.py`` on branch ``v2``), independently of vizoo's converter."""

import math

import pytest
import timm
import torch
import torch.nn.functional as F

import vizoo  # noqa: F401
from vizoo.kernels import force_backend
from vizoo.layers.msvmamba import MSVSSBlock, MultiScaleSS2D
from vizoo.model_table import paper_figures
from vizoo.utils.checkpoint import CheckpointError
from vizoo.utils.complexity import count_macs, count_params

# name: official drop_path_rate. The params in M and GFLOPs at 224² of the official README / paper table are the
# variants' pretrained cfgs (paper_params_m, paper_gmacs).
DROP_PATH = {"msvmamba_v3_tiny": 0.2, "msvmamba_v3_small": 0.4, "msvmamba_v3_base": 0.5}
V3_MIXER = dict(d_state=1, ssm_ratio=1.0, upsample="nearest", norm_after_merge=True, full_res_group=0)
SMALL_V3 = dict(dims=(16, 32, 64, 128), depths=(1, 1, 2, 1))  # a small v3 model; only the sizes differ


@pytest.mark.parametrize("name", DROP_PATH)
def test_params_macs_and_drop_path_match_the_paper(name):
    paper = paper_figures(name)
    params, gflops, drop_path = paper["paper_params_m"], paper["paper_gmacs"], DROP_PATH[name]
    with torch.device("meta"):  # shapes only
        model = timm.create_model(name)
    assert round(count_params(model) / 1e6) == params  # the table rounds to whole millions
    measured = count_macs(model) / 1e9
    assert abs(measured / gflops - 1) < 0.05, f"{name}: {measured:.2f} GMACs vs paper {gflops}"
    assert model.stages[-1].blocks[-1].drop_path.drop_prob == pytest.approx(drop_path)  # linear, last = maximum
    assert {m.eps for m in model.modules() if isinstance(m, torch.nn.LayerNorm)} == {1e-5}  # as the official norms
    cfg = model.pretrained_cfg
    assert cfg["input_size"] == (3, 224, 224) and cfg["crop_pct"] == 0.875 and cfg["interpolation"] == "bicubic"


def official_v3_shapes(dims, depths, gate, num_classes=1000, in_chans=3):
    """The official v3 state dict: key -> shape (VSSM with PATCHEMBED v2, DOWNSAMPLE v3, ln2d, vms/vms_noz,
    CONVFFN ratio 4, ADD_SE, ssm_ratio 1, d_state 1, dt_rank auto, SSM_CONV_BIAS True)."""
    shapes = {
        "patch_embed.0.weight": (dims[0] // 2, in_chans, 3, 3),
        "patch_embed.0.bias": (dims[0] // 2,),
        "patch_embed.2.weight": (dims[0] // 2,),
        "patch_embed.2.bias": (dims[0] // 2,),
        "patch_embed.5.weight": (dims[0], dims[0] // 2, 3, 3),
        "patch_embed.5.bias": (dims[0],),
        "patch_embed.7.weight": (dims[0],),
        "patch_embed.7.bias": (dims[0],),
    }
    for i, (dim, depth) in enumerate(zip(dims, depths)):
        d, r = dim, math.ceil(dim / 16)  # d_inner = ssm_ratio * dim
        for j in range(depth):
            p = f"layers.{i}.blocks.{j}."
            shapes |= {
                p + "norm.weight": (dim,),
                p + "norm.bias": (dim,),
                p + "op.in_proj.weight": ((2 * d if gate else d), dim),  # Linear2d stores Linear's shape
                p + "op.conv2d.weight": (d, 1, 3, 3),
                p + "op.conv2d.bias": (d,),
                p + "op.conv2d_b1.weight": (d, 1, 7, 7),
                p + "op.conv2d_b1.bias": (d,),
                p + "op.x_proj_weight": (2, r + 2, d),
                p + "op.dt_projs_weight": (2, d, r),
                p + "op.dt_projs_bias": (2, d),
                p + "op.A_logs": (2 * d, 1),
                p + "op.Ds": (2 * d,),
                p + "op.out_norm.weight": (d,),
                p + "op.out_norm.bias": (d,),
                p + "op.se.fc.0.weight": (d // 8, d),
                p + "op.se.fc.2.weight": (d, d // 8),
                p + "op.out_proj.weight": (dim, d),
                p + "norm2.weight": (dim,),
                p + "norm2.bias": (dim,),
                p + "convFFN.linear1.weight": (4 * dim, dim, 1, 1),
                p + "convFFN.linear1.bias": (4 * dim,),
                p + "convFFN.dwc.weight": (4 * dim, 1, 3, 3),
                p + "convFFN.dwc.bias": (4 * dim,),
                p + "convFFN.linear2.weight": (dim, 4 * dim, 1, 1),
                p + "convFFN.linear2.bias": (dim,),
            }
        if i < len(dims) - 1:  # Sequential(Identity, Conv2d, Identity, LayerNorm2d) at the end of the stage
            shapes |= {
                f"layers.{i}.downsample.1.weight": (dims[i + 1], dim, 3, 3),
                f"layers.{i}.downsample.1.bias": (dims[i + 1],),
                f"layers.{i}.downsample.3.weight": (dims[i + 1],),
                f"layers.{i}.downsample.3.bias": (dims[i + 1],),
            }
    return shapes | {
        "classifier.norm.weight": (dims[-1],),
        "classifier.norm.bias": (dims[-1],),
        "classifier.head.weight": (num_classes, dims[-1]),
        "classifier.head.bias": (num_classes,),
    }


def official_v3_key(key: str) -> str:
    """vizoo key -> official v3 key."""
    parts = key.split(".")
    if parts[0] == "stem":
        official = {"conv1": "0", "norm1": "2", "conv2": "5", "norm2": "7"}[parts[1]]
        return ".".join(["patch_embed", official, *parts[2:]])
    if parts[0] == "stages" and parts[2] == "blocks":
        return ".".join(["layers", *parts[1:]])
    if parts[0] == "stages" and parts[2] == "downsample":
        return ".".join(
            ["layers", str(int(parts[1]) - 1), "downsample", {"conv": "1", "norm": "3"}[parts[3]], parts[4]]
        )
    if parts[0] == "norm":
        return "classifier." + key
    if parts[:2] == ["head", "fc"]:
        return "classifier.head." + parts[2]
    raise AssertionError(key)


def perturbed(name, **kwargs):
    torch.manual_seed(0)
    model = timm.create_model(name, **SMALL_V3, **kwargs).eval()
    with torch.no_grad():  # move every parameter off its init so a mis-mapped tensor shows in the output
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model


@pytest.mark.parametrize("name, gate", [("msvmamba_v3_tiny", False), ("msvmamba_v3_base", True)])
def test_official_v3_checkpoint_loads_and_reproduces_outputs(tmp_path, name, gate):
    source = perturbed(name)
    state = {official_v3_key(k): v.clone() for k, v in source.state_dict().items()}
    assert {k: tuple(v.shape) for k, v in state.items()} == official_v3_shapes(
        SMALL_V3["dims"], SMALL_V3["depths"], gate
    )
    for k in [k for k in state if k.endswith(("in_proj.weight", "out_proj.weight"))][:2]:
        state[k] = state[k][:, :, None, None]  # a Linear2d weight saved in conv form
    path = tmp_path / "official.pth"
    torch.save({"model": state, "epoch": 299}, path)
    loaded = timm.create_model(name, pretrained=True, **SMALL_V3, pretrained_cfg_overlay=dict(file=str(path))).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), source(x))


def test_broken_v3_checkpoint_names_the_keys(tmp_path):
    state = {official_v3_key(k): v for k, v in timm.create_model("msvmamba_v3_tiny", **SMALL_V3).state_dict().items()}
    state.pop("layers.2.blocks.1.op.conv2d_b1.weight")
    state["layers.0.blocks.0.op.not_a_tensor"] = torch.zeros(1)
    path = tmp_path / "broken.pth"
    torch.save(state, path)
    with pytest.raises(CheckpointError, match="not_a_tensor") as error:
        timm.create_model("msvmamba_v3_tiny", pretrained=True, **SMALL_V3, pretrained_cfg_overlay=dict(file=str(path)))
    assert "stages.2.blocks.1.op.conv2d_b1.weight" in str(error.value)


def direct_vms(op: MultiScaleSS2D, x: torch.Tensor, gate: bool) -> torch.Tensor:
    """The official ``vms``/``vms_noz`` forward written out: explicit routes, a step-by-step scan per group (group 0
    full resolution), the three low-resolution routes undone and summed, nearest upsampling, then LayerNorm, SE,
    SiLU gate and out_proj. x is (B, H, W, C)."""
    b, h, w, _ = x.shape
    d, n, r = op.d_inner, op.d_state, op.dt_rank
    x = x @ op.in_proj.weight.T
    if gate:
        x, z = x.chunk(2, dim=-1)
    x = x.permute(0, 3, 1, 2)
    x_full = F.silu(F.conv2d(x, op.conv2d.weight, op.conv2d.bias, padding=1, groups=d))
    x_low = F.silu(F.conv2d(x, op.conv2d_b1.weight, op.conv2d_b1.bias, stride=2, padding=3, groups=d))
    lh, lw = x_low.shape[2:]

    def scan(u, g):  # u (b, d, l)
        dbl = torch.einsum("cd,bdl->bcl", op.x_proj_weight[g], u)
        dt = torch.einsum("dr,brl->bdl", op.dt_projs_weight[g], dbl[:, :r]) + op.dt_projs_bias[g][:, None]
        dt = F.softplus(dt)
        a = -torch.exp(op.A_logs.view(2, d, n)[g])
        bs, cs = dbl[:, r : r + n], dbl[:, r + n :]
        state = torch.zeros(b, d, n)
        ys = []
        for t in range(u.shape[-1]):
            state = torch.exp(dt[..., t, None] * a) * state + (dt[..., t] * u[..., t])[..., None] * bs[:, None, :, t]
            ys.append((state * cs[:, None, :, t]).sum(-1) + op.Ds.view(2, d)[g] * u[..., t])
        return torch.stack(ys, dim=-1)

    rows, cols = x_low.flatten(2), x_low.transpose(2, 3).flatten(2)
    y_low = scan(torch.cat([rows.flip(-1), cols, cols.flip(-1)], dim=-1), 1).chunk(3, dim=-1)
    y_low = (
        y_low[0].flip(-1).view(b, d, lh, lw)
        + y_low[1].view(b, d, lw, lh).transpose(2, 3)
        + y_low[2].flip(-1).view(b, d, lw, lh).transpose(2, 3)
    )
    y = scan(x_full.flatten(2), 0).view(b, d, h, w) + F.interpolate(y_low, size=(h, w), mode="nearest")
    y = F.layer_norm(y.permute(0, 2, 3, 1), (d,), op.out_norm.weight, op.out_norm.bias)
    se = torch.sigmoid(F.relu(y.mean((1, 2)) @ op.se.fc[0].weight.T) @ op.se.fc[2].weight.T)
    y = y * se[:, None, None, :]
    if gate:
        y = y * F.silu(z)
    return y @ op.out_proj.weight.T


@pytest.mark.parametrize("gate", [False, True])
def test_v3_multiscale_ss2d_is_the_official_vms_forward_on_odd_sizes(gate):
    torch.manual_seed(0)
    op = MultiScaleSS2D(8, gate=gate, **V3_MIXER).eval()
    with torch.no_grad():
        for p in op.parameters():
            p.add_(torch.randn_like(p) * 0.1)  # groups, norms and biases all differ
        x = torch.randn(2, 7, 5, 8)
        expected = direct_vms(op, x, gate)
        torch.testing.assert_close(op(x), expected, rtol=1e-4, atol=1e-5)
        with force_backend("reference"):
            torch.testing.assert_close(op(x), expected, rtol=1e-4, atol=1e-5)


def test_v3_block_normalises_the_conv_ffn_output():
    torch.manual_seed(0)
    block = MSVSSBlock(8, ffn_expansion=4, ffn_post_norm=True, **V3_MIXER).eval()
    x = torch.randn(1, 6, 4, 8)
    with torch.no_grad():
        x1 = x + block.op(block.norm(x))
        expected = x1 + block.norm2(block.convFFN(x1.permute(0, 3, 1, 2)).permute(0, 2, 3, 1))
        torch.testing.assert_close(block(x), expected)
