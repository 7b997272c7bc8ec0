"""VisionTower tokens: row-major order, shapes for hierarchical and plain towers, pixel shuffle, projector."""

import pytest
import timm
import torch

import vizoo.multimodal as vm


def test_map_to_tokens_is_row_major():
    h, w = 3, 5
    rows = torch.arange(h).view(1, h, 1, 1).expand(2, h, w, 1)
    cols = torch.arange(w).view(1, 1, w, 1).expand(2, h, w, 1)
    tokens = vm.map_to_tokens(torch.cat([rows, cols], dim=-1))
    for i in range(h * w):
        assert tokens[:, i].tolist() == [[i // w, i % w]] * 2
    torch.testing.assert_close(vm.tokens_to_map(tokens, (h, w)), torch.cat([rows, cols], dim=-1))


def test_pixel_shuffle_matches_a_manual_rearrangement():
    x = torch.randn(2, 4, 6, 3)
    r = 2
    out = vm.pixel_shuffle(x, r)
    assert out.shape == (2, 2, 3, 12)
    for i in range(2):
        for j in range(3):
            manual = torch.cat([x[:, i * r + dy, j * r + dx] for dy in range(r) for dx in range(r)], dim=-1)
            torch.testing.assert_close(out[:, i, j], manual)
    with pytest.raises(ValueError, match="divisible by 4"):
        vm.pixel_shuffle(x, 4)


def test_hierarchical_tower_tokens_follow_its_feature_map(photos):
    tower = vm.VisionTower("test_vmamba").eval()
    with torch.no_grad():
        out = tower(photos, output_hidden_states=True)
        features = tower.model.forward_features(photos)  # NHWC (B, h, w, C), normed
    h, w = out.grid
    assert out.tokens.shape == (2, h * w, 192) and (h, w) == (2, 2) and tower.out_channels == 192
    for i in range(h * w):
        torch.testing.assert_close(out.tokens[:, i], features[:, i // w, i % w])
    torch.testing.assert_close(out.pooled, tower.model.forward_head(features, pre_logits=True))
    assert [tuple(s.shape) for s in out.hidden_states] == [
        (2, 16, 16, 24),
        (2, 8, 8, 48),
        (2, 4, 4, 96),
        (2, 2, 2, 192),
    ]


def test_earlier_stage_multiscale_and_reduction(photos):
    stage = vm.VisionTower("test_vmamba", tokens="stage", stage=-2).eval()
    multi = vm.VisionTower("test_vmamba", tokens="multiscale", stages=(-2, -1)).eval()
    reduced = vm.VisionTower("test_vmamba", tokens="stage", stage=-2, reduce=2).eval()
    reduced.load_state_dict(stage.state_dict()), multi.load_state_dict(stage.state_dict())
    with torch.no_grad():
        s, m, r = stage(photos), multi(photos), reduced(photos)
    assert s.tokens.shape == (2, 16, 96) and s.grid == (4, 4) and stage.out_channels == 96
    assert m.tokens.shape == (2, 4, 4 * 96 + 192) and m.grid == (2, 2) and multi.out_channels == 4 * 96 + 192
    assert r.tokens.shape == (2, 4, 4 * 96) and r.grid == (2, 2)
    manual = vm.pixel_shuffle(vm.tokens_to_map(s.tokens, s.grid), 2)
    torch.testing.assert_close(r.tokens, vm.map_to_tokens(manual))
    torch.testing.assert_close(m.tokens[..., : 4 * 96], r.tokens)  # stage 3 unshuffled 2x2, then stage 4
    with pytest.raises(ValueError, match="divisible by 4"):
        vm.VisionTower("test_vmamba", reduce=4)(photos)


@pytest.mark.parametrize("name", ["test_vim", "test_lightnet"])
def test_plain_towers(photos, name):
    tower = vm.VisionTower(name).eval()
    with torch.no_grad():
        out = tower(photos, output_hidden_states=True)
        maps = tower.model.forward_intermediates(
            photos, indices=1, norm=True, output_fmt="NHWC", intermediates_only=True
        )
    assert out.grid == (4, 4) and out.tokens.shape == (2, 16, 64) and out.pooled.shape == (2, 64)
    assert len(out.hidden_states) == 4  # one per block
    torch.testing.assert_close(out.tokens, vm.map_to_tokens(maps[-1]))  # patch tokens only (Vim's class token out)
    if name == "test_vim":
        features = tower.model.forward_features(photos)
        torch.testing.assert_close(out.pooled, features[:, 8])  # the middle class token of 16 + 1 tokens
    reduced = vm.VisionTower(tower.model, reduce=2).eval()
    with torch.no_grad():
        assert reduced(photos).tokens.shape == (2, 4, 256)


def test_projector_maps_tokens_to_the_language_width(photos):
    tower = vm.VisionTower("test_mlla", tokens="stage", stage=-2)
    projector = vm.MLPProjector(tower.out_channels, 48)
    out = projector(tower(photos).tokens)
    assert out.shape == (2, 16, 48)
    assert [type(m).__name__ for m in projector.children()] == ["Linear", "GELU", "Linear"]
    out.sum().backward()
    assert tower.model.stem.parameters().__next__().grad is not None


def test_bad_tower_options():
    with pytest.raises(ValueError, match="tokens must be"):
        vm.VisionTower("test_vmamba", tokens="all")
    with pytest.raises(ValueError, match="out of range"):
        vm.VisionTower("test_vmamba", tokens="stage", stage=7)
    with pytest.raises(ValueError, match="Did you mean"):
        vm.VisionTower("test_vmambaa")
    with pytest.raises(TypeError):
        vm.VisionTower(torch.nn.Linear(2, 2))
    assert timm.create_model("test_vmamba").output_fmt == "NHWC"
