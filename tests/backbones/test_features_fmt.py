"""``features_fmt``: the layout of ``forward_features`` chosen at build time, for consumers that read a tower's
features as NCHW (transformers' TimmWrapperModel in FastVLM); weights and outputs stay the same."""

import pytest
import timm
import torch

import vizoo
from vizoo.backbones._base import StagedBackbone

MAP_MODELS = [
    name
    for name in vizoo.list_models("test_*")
    if issubclass(type(timm.create_model(name, pretrained=False)), StagedBackbone)
]


@pytest.mark.parametrize("name", MAP_MODELS)
def test_features_fmt_permutes_features_and_keeps_outputs(name):
    torch.manual_seed(0)
    native = timm.create_model(name).eval()
    size = native.pretrained_cfg["input_size"]
    x = torch.randn(1, *size)
    for fmt in ("NCHW", "NHWC"):
        model = timm.create_model(name, features_fmt=fmt).eval()
        model.load_state_dict(native.state_dict())
        with torch.no_grad():
            expected = native.forward_features(x)
            if native.output_fmt != fmt:
                expected = expected.permute(0, 3, 1, 2) if fmt == "NCHW" else expected.permute(0, 2, 3, 1)
            features = model.forward_features(x)
            torch.testing.assert_close(features, expected)
            channels = features.shape[1] if fmt == "NCHW" else features.shape[-1]
            assert channels == model.num_features
            torch.testing.assert_close(model.forward_head(features), native(x))
            torch.testing.assert_close(model.forward_intermediates(x)[0], features)


def test_features_fmt_is_refused_where_it_cannot_apply():
    assert MAP_MODELS, "no hierarchical test_ model found"
    with pytest.raises(ValueError, match="'NCHW' or 'NHWC'"):
        timm.create_model("test_vmamba", features_fmt="NLC")
    with pytest.raises(ValueError, match="token features"):
        timm.create_model("test_vim", features_fmt="NCHW")
    with pytest.raises(ValueError, match="features_only"):
        timm.create_model("test_vmamba", features_only=True, features_fmt="NCHW")
