"""VizooBackbone on its own: registration for mmdet and mmseg, outputs, freezing, checkpointing, loud loading."""

from __future__ import annotations

import pytest
import timm
import torch
from mmengine.registry import init_default_scope

from vizoo.mm import VizooBackbone
from vizoo.utils.checkpoint import CheckpointError


@pytest.mark.parametrize("scope", ["mmdet", "mmseg"])
def test_registered_for_mmdet_and_mmseg(scope):
    init_default_scope(scope)
    if scope == "mmdet":
        from mmdet.registry import MODELS
    else:
        from mmseg.registry import MODELS
    backbone = MODELS.build(dict(type="VizooBackbone", model_name="test_vmamba", out_indices=(1, 3)))
    assert isinstance(backbone, VizooBackbone)
    feats = backbone(torch.randn(2, 3, 64, 96))
    assert [tuple(f.shape) for f in feats] == [(2, 48, 8, 12), (2, 192, 2, 3)]  # NCHW at strides 8 and 32
    assert backbone.out_channels == (48, 192) and backbone.strides == (8, 32)


def test_frozen_stages_and_norm_eval():
    backbone = VizooBackbone("test_cas_vit", frozen_stages=1, norm_eval=True)
    backbone.train()
    frozen = {n for n, p in backbone.named_parameters() if not p.requires_grad}
    assert frozen and all(n.startswith(("body.model.stem.", "body.model.stages.0.")) for n in frozen)
    assert all(p.requires_grad for n, p in backbone.named_parameters() if n.startswith("body.model.stages.1."))
    assert not backbone.model.stem.training and not backbone.model.stages[0].training
    assert backbone.model.stages[1].training
    bns = [m for m in backbone.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert bns and not any(m.training for m in bns)
    # Frozen stem stays in eval with norm_eval off too.
    stem_only = VizooBackbone("test_vmamba", frozen_stages=0).train()
    assert not stem_only.model.stem.training and stem_only.model.stages[0].training
    assert all(not p.requires_grad for p in stem_only.model.stem.parameters())


def test_with_cp_gives_the_same_gradients():
    x = torch.randn(1, 3, 64, 64)
    plain = VizooBackbone("test_vmamba")
    cp = VizooBackbone("test_vmamba", with_cp=True)
    cp.load_state_dict(plain.state_dict())
    assert all(stage.grad_checkpointing for stage in cp.model.stages)
    for m in (plain, cp):
        sum(f.sum() for f in m(x)).backward()
    for (name, p), q in zip(plain.named_parameters(), cp.parameters()):
        torch.testing.assert_close(p.grad, q.grad, msg=name)


def test_pretrained_loads_strictly(tmp_path):
    source = timm.create_model("test_vmamba")
    path = tmp_path / "test_vmamba.pth"
    torch.save(source.state_dict(), path)
    backbone = VizooBackbone("test_vmamba", init_cfg=dict(type="Pretrained", checkpoint=str(path)))
    backbone.init_weights()  # the Pretrained entry was consumed: mmengine does not load it a second time, loosely
    torch.testing.assert_close(backbone.model.stem.conv1.weight, source.stem.conv1.weight)
    assert backbone.init_cfg is None

    # The same weights under a detector's "backbone." prefix, through `pretrained=` and `prefix`.
    det = tmp_path / "det.pth"
    torch.save({"state_dict": {f"backbone.{k}": v for k, v in source.state_dict().items()}}, det)
    prefixed = VizooBackbone("test_vmamba", init_cfg=dict(type="Pretrained", checkpoint=str(det), prefix="backbone."))
    torch.testing.assert_close(prefixed.model.stem.conv1.weight, source.stem.conv1.weight)

    broken = dict(source.state_dict())
    broken.pop("stages.0.blocks.0.norm.weight")
    broken["extra.weight"] = torch.zeros(1)
    torch.save(broken, path)
    with pytest.raises(CheckpointError, match=r"missing keys: stages\.0\.blocks\.0\.norm\.weight") as info:
        VizooBackbone("test_vmamba", pretrained=str(path))
    assert "unexpected keys: extra.weight" in str(info.value)

    with pytest.raises(CheckpointError, match="does not exist"):
        VizooBackbone("test_vmamba", pretrained=str(tmp_path / "nope.pth"))
    with pytest.raises(ValueError, match="not both"):
        VizooBackbone("test_vmamba", pretrained=str(path), init_cfg=dict(type="Pretrained", checkpoint=str(path)))
    with pytest.raises(ValueError, match="a local file, an http"):
        VizooBackbone("test_vmamba", pretrained="s3://bucket/w.pth")


def test_bad_model_name_and_out_indices():
    with pytest.raises(ValueError, match=r"unknown model 'vmamba_tinyy'.*list_models"):
        VizooBackbone("vmamba_tinyy")
    with pytest.raises(ValueError, match=r"out_indices \(0, 4\) do not fit test_vmamba.*0, 1, 2, 3"):
        VizooBackbone("test_vmamba", out_indices=(0, 4))


def test_model_that_cannot_give_features():
    from timm.models import register_model

    @register_model
    def vizoo_mm_test_plain(pretrained: bool = False, **kwargs) -> torch.nn.Module:
        return torch.nn.Conv2d(3, 8, 3)  # an entrypoint that ignores features_only

    with pytest.raises(ValueError, match="cannot give feature maps"):
        VizooBackbone("vizoo_mm_test_plain")


def test_default_out_indices_are_every_stage():
    assert VizooBackbone("test_vmamba").strides == (4, 8, 16, 32)
    three_stages = VizooBackbone("test_mobilemamba")  # MobileMamba: three stages, strides 16 to 64
    assert three_stages.out_indices == (0, 1, 2) and three_stages.strides == (16, 32, 64)
    assert len(three_stages(torch.randn(1, 3, 128, 128))) == 3
