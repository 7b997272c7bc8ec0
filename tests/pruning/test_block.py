"""Block pruning: masks, Fisher importance, compaction, save/reload, ONNX, errors."""

import pytest
import timm
import torch
import torch.nn as nn

from vizoo.pruning import block_prune, compact, fisher_importance, load_pruned, save_pruned, sparsity_of
from vizoo.pruning.block import _group_scores, prunable_linears

BLOCK = (16, 16)


def tiny_vit(**kw) -> nn.Module:
    """dim 64, 2 heads of 32, MLP 256, 2 blocks, 32x32 input (16 patches of 8x8)."""
    args = dict(img_size=32, patch_size=8, embed_dim=64, depth=2, num_heads=2, num_classes=5)
    args.update(kw)
    return timm.create_model("vit_tiny_patch16_224", **args).eval()


def calibration(n=2, b=4):
    g = torch.Generator().manual_seed(1)
    return [torch.randn(b, 3, 32, 32, generator=g) for _ in range(n)]


@pytest.mark.parametrize("structure", ["group", "block"])
@pytest.mark.parametrize("sparsity", [0.0, 0.3, 0.5])
def test_masks_block_aligned_and_hit_sparsity(structure, sparsity):
    model = block_prune(tiny_vit(), sparsity, calibration(), block=BLOCK, structure=structure, latency=None)
    r, c = BLOCK
    for name, linear in prunable_linears(model).items():
        mask = linear.parametrizations.weight[0].mask
        tiles = mask.reshape(mask.shape[0] // r, r, mask.shape[1] // c, c)
        assert (tiles.all((1, 3)) == tiles.any((1, 3))).all(), f"{name} mask is not made of whole {BLOCK} tiles"
    achieved = sparsity_of(model)
    assert achieved == pytest.approx(model.pruning_report["sparsity"])
    total = sum(m.weight.numel() for m in prunable_linears(model).values())
    largest_group = 4 * 64 * 32 / total  # one head: q, k, v rows and proj columns
    assert sparsity <= achieved <= sparsity + largest_group + 1e-9


def test_fisher_ranks_useless_group_lowest():
    model = tiny_vit()
    with torch.no_grad():
        model.blocks[1].mlp.fc2.weight[:, 16:32] = 0  # hidden units 16..31 of block 1 feed nothing
    scores = fisher_importance(model, calibration())
    groups = _group_scores(model, scores, 16)
    mlp = torch.stack([g["mlp"] for g in groups])  # (blocks, groups)
    assert mlp.argmin() == 1 * mlp.shape[1] + 1
    assert mlp.min() == 0 and (mlp.flatten().sort().values[1] > 0)


def test_fisher_uses_labels():
    model = tiny_vit()
    x = torch.randn(4, 3, 32, 32)
    a = fisher_importance(model, [(x, torch.tensor([0, 1, 2, 3]))])
    b = fisher_importance(model, [x])
    assert not torch.allclose(a["blocks.0.mlp.fc1"], b["blocks.0.mlp.fc1"])


def test_pruning_removes_useless_group():
    model = tiny_vit()
    with torch.no_grad():
        model.blocks[1].mlp.fc2.weight[:, 16:32] = 0
    block_prune(model, 0.02, calibration(), block=BLOCK, latency=None)
    assert (model.blocks[1].mlp.fc1.weight[16:32] == 0).all()


@pytest.mark.parametrize("structure", ["group", "block"])
def test_compact_matches_masked_and_removes_params(structure):
    model = block_prune(tiny_vit(), 0.5, calibration(), block=BLOCK, structure=structure, latency=None)
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        masked = model(x)
    before = sum(p.numel() for p in model.parameters())
    compact(model)
    with torch.no_grad():
        out = model(x)
    torch.testing.assert_close(out, masked, atol=1e-5, rtol=0)
    after = sum(p.numel() for p in model.parameters())
    if structure == "group":
        assert after < 0.8 * before
    else:
        assert after <= before


def test_compact_folds_constant_units_and_heads():
    model = tiny_vit()
    with torch.no_grad():
        model.blocks[0].mlp.fc1.weight[:16] = 0  # units that output gelu(bias), a constant
        model.blocks[0].mlp.fc1.bias[:16] = torch.linspace(-1, 1, 16)
        model.blocks[1].attn.qkv.weight[128 + 32 :] = 0  # v rows of head 1: the head outputs its v bias
        model.blocks[1].attn.qkv.bias.normal_()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        ref = model(x)
        compact(model)
        out = model(x)
    assert model.blocks[0].mlp.fc1.out_features == 256 - 16
    assert model.blocks[1].attn.num_heads == 1
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=0)


def test_latency_model_allocation_runs():
    from vizoo.pruning import LatencyModel

    lat = LatencyModel.measure(64, 256, 2, 32, seq=17, step=16, points=3, runs=1)
    assert lat.mlp(256) >= lat.mlp(16) >= 0 and lat.attention(2) >= lat.attention(1)
    model = block_prune(tiny_vit(), 0.4, calibration(1), block=BLOCK, latency=lat)
    assert model.pruning_report["sparsity"] >= 0.4


def test_save_reload_round_trip(tmp_path):
    model = block_prune(tiny_vit(), 0.5, calibration(), block=BLOCK, latency=None)
    compact(model)
    save_pruned(model, tmp_path / "tiny")
    loaded = load_pruned(tmp_path / "tiny.json")
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x), atol=0, rtol=0)
    assert [b.attn.num_heads for b in loaded.blocks] == [b.attn.num_heads for b in model.blocks]


def test_onnx_parity_of_compacted_model(tmp_path):
    pytest.importorskip("onnxruntime")
    from vizoo.export import export_onnx

    model = compact(block_prune(tiny_vit(), 0.5, calibration(), block=BLOCK, latency=None))
    result = export_onnx(model, tmp_path / "c.onnx", img_size=32, simplify=False)
    assert result.max_abs_diff < 1e-4


def test_errors():
    model = tiny_vit()
    with pytest.raises(ValueError, match="sparsity"):
        block_prune(model, 1.0, calibration(), block=BLOCK)
    with pytest.raises(ValueError, match="sparsity"):
        block_prune(model, -0.1, calibration(), block=BLOCK)
    with pytest.raises(ValueError, match="does not divide"):
        block_prune(model, 0.5, calibration(), block=(24, 24))
    with pytest.raises(ValueError, match="empty"):
        block_prune(model, 0.5, [], block=BLOCK, latency=None)
    with pytest.raises(TypeError, match="VisionTransformer"):
        block_prune(nn.Sequential(nn.Linear(4, 4)), 0.5, calibration(), block=BLOCK)
    with pytest.raises(TypeError, match="calibration"):
        block_prune(model, 0.5, ["not a tensor"], block=BLOCK, latency=None)
    with pytest.raises(ValueError, match="head_dim"):
        block_prune(model, 0.5, calibration(), block=(64, 64))
