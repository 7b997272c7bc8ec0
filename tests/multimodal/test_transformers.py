"""transformers: TimmWrapperModel folders of vizoo models, NCHW features for map consumers, a tiny FastVLM step."""

import json
import subprocess
import sys

import pytest
import timm
import torch
from transformers import (
    FastVlmConfig,
    FastVlmForConditionalGeneration,
    Qwen2Config,
    TimmWrapperConfig,
    TimmWrapperModel,
)

import vizoo.multimodal as vm


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    torch.manual_seed(2)
    model = timm.create_model("test_vmamba").eval()
    folder = vm.save_for_transformers(model, tmp_path_factory.mktemp("hf") / "test_vmamba")
    return folder, model


def test_folder_loads_with_timm_wrapper(saved, photos):
    folder, model = saved
    assert {"config.json", "model.safetensors"} <= {p.name for p in folder.iterdir()}
    config = json.loads((folder / "config.json").read_text())
    assert config["architecture"] == "test_vmamba" and config["model_args"]["features_fmt"] == "NCHW"
    assert "num_classes" not in config["model_args"]  # transformers passes its own
    wrapper = TimmWrapperModel.from_pretrained(folder).eval()
    with torch.no_grad():
        out = wrapper(photos, output_hidden_states=True)
        nhwc = model.forward_features(photos)
        _, stages = model.forward_intermediates(photos)
    torch.testing.assert_close(out.last_hidden_state, nhwc.permute(0, 3, 1, 2))  # (B, C, h, w)
    torch.testing.assert_close(out.pooler_output, model.forward_head(nhwc, pre_logits=True))
    assert len(out.hidden_states) == 4
    for got, want in zip(out.hidden_states, stages):
        torch.testing.assert_close(got, want)  # NCHW stage maps


def test_fastvlm_style_flatten_gives_row_major_tokens(saved, photos):
    folder, model = saved
    wrapper = TimmWrapperModel.from_pretrained(folder).eval()
    tower = vm.VisionTower(model).eval()
    with torch.no_grad():
        tokens = wrapper(photos).last_hidden_state.flatten(2).permute(0, 2, 1)  # what FastVLM does
        expected = tower(photos).tokens
    torch.testing.assert_close(tokens, expected)


def test_features_fmt_is_refused_for_token_models():
    with pytest.raises(ValueError, match="token features"):
        timm.create_model("test_vim", features_fmt="NCHW")
    with pytest.raises(ValueError, match="features_fmt must be"):
        timm.create_model("test_vmamba", features_fmt="NLC")
    # other timm models are untouched
    with pytest.raises(TypeError):
        timm.create_model("resnet10t", features_fmt="NCHW")


def test_nchw_model_keeps_weights_and_predictions(photos):
    plain = timm.create_model("test_lightnet").eval()
    nchw = timm.create_model("test_lightnet", features_fmt="NCHW").eval()
    nchw.load_state_dict(plain.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(nchw(photos), plain(photos))
        assert nchw.forward_features(photos).shape == (2, 64, 4, 4)


def test_tiny_fastvlm_trains_one_step_with_a_vizoo_tower(photos):
    torch.manual_seed(0)
    image_token = 5
    vision = TimmWrapperConfig(architecture="test_vmamba", hidden_size=192, model_args={"features_fmt": "NCHW"})
    text = Qwen2Config(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=64,
    )
    config = FastVlmConfig(vision_config=vision, text_config=text, image_token_index=image_token, image_seq_length=4)
    model = FastVlmForConditionalGeneration(config)
    n_image = 4  # test_vmamba at 64x64: a 2x2 grid at stride 32
    prompt = torch.tensor([[1, 2] + [image_token] * n_image + [7, 8, 9, 10]] * 2)
    labels = prompt.masked_fill(prompt == image_token, -100)
    out = model(input_ids=prompt, pixel_values=photos, labels=labels)
    assert torch.isfinite(out.loss)
    out.loss.backward()
    tower = model.model.vision_tower.timm_model
    assert tower.features_fmt == "NCHW"  # the projector read (B, N, C) row-major tokens, not an NHWC map
    grads = [p.grad for p in tower.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert tower.stem.conv1.weight.grad.abs().sum() > 0


def test_folder_loads_with_plain_vizoo_and_gives_nchw_features(saved):
    # A consumer process that imports only vizoo (not vizoo.multimodal) gets the NCHW map the folder asks for.
    folder, _ = saved
    code = (
        "import torch, vizoo\nfrom transformers import TimmWrapperModel\n"
        f"m = TimmWrapperModel.from_pretrained({str(folder)!r}).eval()\n"
        "print(m.timm_model.features_fmt, tuple(m(torch.randn(1, 3, 64, 64)).last_hidden_state.shape))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split()[0] == "NCHW" and "(1, 192, 2, 2)" in result.stdout, result.stdout
