"""ToMe and EViT on timm ViTs: shapes, exact equivalence when disabled, ONNX parity."""

import pytest
import timm
import torch

from vizoo.pruning import apply_evit, apply_tome, bipartite_merge, remove_token_reduction


def tiny_vit(**kw):
    args = dict(img_size=32, patch_size=4, embed_dim=64, depth=4, num_heads=2, num_classes=5)  # 64 patches
    args.update(kw)
    return timm.create_model("vit_tiny_patch16_224", **args).eval()


def test_bipartite_merge_is_size_weighted_mean():
    x = torch.tensor([[[0.0], [10.0], [1.0], [20.0]]])  # A = {0, 1}, B = {10, 20}
    metric = torch.tensor([[[1.0, 0.0], [1.0, 0.1], [0.0, 1.0], [0.1, 1.0]]])
    size = torch.tensor([[[1.0], [1.0], [3.0], [1.0]]])
    out, s = bipartite_merge(x, size, metric, r=2)
    torch.testing.assert_close(out, torch.tensor([[[5.0], [(20 + 3) / 4]]]))
    torch.testing.assert_close(s, torch.tensor([[[2.0], [4.0]]]))


def test_tome_exact_at_r0_and_shapes():
    model = tiny_vit()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        ref = model(x)
        apply_tome(model, 0)
        assert torch.equal(model(x), ref)
        apply_tome(model, 8)
        feats = model.forward_features(x)
        assert feats.shape == (2, 1 + 64 - 4 * 8, 64)
        assert model(x).shape == (2, 5)
        apply_tome(model, [16, 16, 16, 16])  # clamped to half of what is left: 64 -> 48 -> 32 -> 16 -> 8
        assert model.forward_features(x).shape == (2, 1 + 8, 64)
        remove_token_reduction(model)
        assert torch.equal(model(x), ref)


def test_evit_exact_at_keep_rate_1_and_shapes():
    model = tiny_vit()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        ref = model(x)
        apply_evit(model, 1.0)
        assert torch.equal(model(x), ref)
        apply_evit(model, 0.5, layers=[1, 2])
        # 64 patches -> 32 kept + 1 fused -> 17 kept + 1 fused
        assert model.forward_features(x).shape == (2, 1 + 17 + 1, 64)


def test_token_errors():
    with pytest.raises(ValueError, match="keep_rate"):
        apply_evit(tiny_vit(), 0.0)
    with pytest.raises(ValueError, match="r must be"):
        apply_tome(tiny_vit(), -1)
    with pytest.raises(TypeError, match="VisionTransformer"):
        apply_tome(torch.nn.Linear(2, 2), 4)
    with pytest.raises(ValueError, match="class token"):
        apply_evit(tiny_vit(class_token=False, global_pool="avg"), 0.5)


@pytest.mark.parametrize("method", ["tome", "evit"])
def test_onnx_parity(method, tmp_path):
    pytest.importorskip("onnxruntime")
    import onnx

    from vizoo.export import export_onnx

    model = tiny_vit()
    apply_tome(model, 8) if method == "tome" else apply_evit(model, 0.5)
    result = export_onnx(model, tmp_path / f"{method}.onnx", img_size=32, simplify=False)
    assert result.max_abs_diff < 1e-4
    ops = {n.op_type for n in onnx.load(result.path).graph.node}
    if method == "tome":
        assert "ScatterElements" in ops or "ScatterND" in ops
