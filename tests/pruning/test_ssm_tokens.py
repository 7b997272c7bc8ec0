"""Vim token pruning with hidden-state alignment (vizoo.pruning.ssm_tokens)."""

import pytest
import timm
import torch

import vizoo  # noqa: F401
from vizoo.layers.mamba_block import BiMamba
from vizoo.pruning import apply_vim_token_pruning, remove_vim_token_pruning
from vizoo.pruning.ssm_tokens import token_importance
from vizoo.utils.complexity import count_macs


def _model(**kwargs):
    torch.manual_seed(0)
    # 8x8 patches of 8 pixels: 64 patch tokens, enough to prune twice.
    return timm.create_model("test_vim", patch_size=8, **kwargs).eval()


def test_aligned_tokens_see_the_scan_of_the_full_sequence_with_empty_steps():
    """BiMamba on kept tokens at ``positions`` == BiMamba on the full sequence whose pruned steps are zero tokens."""
    torch.manual_seed(0)
    mixer = BiMamba(16, d_state=4).eval()
    x = torch.randn(2, 11, 16)
    positions = torch.tensor([[0, 2, 3, 7, 10], [1, 4, 5, 6, 9]])
    full = torch.zeros(2, 11, 16).scatter(1, positions[..., None].expand(-1, -1, 16), x[:, :5])
    want = mixer(full).gather(1, positions[..., None].expand(-1, -1, 16))
    with torch.no_grad():
        torch.testing.assert_close(mixer(x[:, :5], positions, 11), want, rtol=1e-5, atol=1e-6)
        packed = mixer(x[:, :5])  # naive pruning: the same tokens packed together see different neighbours
    assert not torch.allclose(packed, want, atol=1e-3)


@pytest.mark.parametrize("align", [True, False])
def test_keep_rate_one_is_exact(align):
    model = _model()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        want = model(x)
        apply_vim_token_pruning(model, keep_rate=1.0, layers=[1, 2], align=align)
        torch.testing.assert_close(model(x), want, rtol=1e-5, atol=1e-5)
        assert torch.equal(remove_vim_token_pruning(model)(x), want)


def test_pruned_model_keeps_the_best_tokens_and_the_class_token():
    model = apply_vim_token_pruning(_model(), keep_rate=0.5, layers=[1, 2])
    x = torch.randn(3, 3, 64, 64)
    with torch.no_grad():
        tokens = model.forward_tokens(x)
        assert tokens.shape[1] == 16 + 1  # 64 -> 32 -> 16 patch tokens, plus the class token
        logits = model(x)
    assert logits.shape == (3, model.num_classes) and torch.isfinite(logits).all()
    # The head reads the class token: the pruned model's pre-logits are the middle kept token after the final norm.
    torch.testing.assert_close(model.forward_head(model.norm(tokens), pre_logits=True), model.norm(tokens)[:, 8])
    # Alignment saves the projections of pruned tokens; naive packing also shortens the convs and scans.
    aligned = count_macs(model, (3, 64, 64))
    naive = count_macs(apply_vim_token_pruning(_model(), keep_rate=0.5, layers=[1, 2], align=False), (3, 64, 64))
    assert naive < aligned < count_macs(_model(), (3, 64, 64))


def test_importance_is_the_clipped_channel_sum():
    y = torch.tensor([[[1.0, -2.0, 3.0], [-1.0, -1.0, 0.5]]])
    torch.testing.assert_close(token_importance(y), torch.tensor([[4.0, 0.5]]))


def test_pruned_model_trains():
    model = apply_vim_token_pruning(_model(num_classes=4), keep_rate=0.5, layers=[1])
    model.train()
    model(torch.randn(2, 3, 64, 64)).sum().backward()
    assert model.patch_embed.proj.weight.grad is not None and model.head.weight.grad.abs().sum() > 0


def test_bad_arguments_are_refused():
    with pytest.raises(TypeError, match="needs a vizoo Vim"):
        apply_vim_token_pruning(timm.create_model("test_vmamba"))
    with pytest.raises(ValueError, match="keep_rate must be in"):
        apply_vim_token_pruning(_model(), keep_rate=0.0)
    with pytest.raises(ValueError, match=r"block indices in \[0, 4\)"):
        apply_vim_token_pruning(_model(), layers=[4])
