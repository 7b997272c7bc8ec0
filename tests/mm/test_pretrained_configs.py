"""The shipped configs start from the official ImageNet weights, at the address vizoo's registry records, and the
backbone downloads, converts and strictly loads them. Downloads are redirected to local files in the official layout;
no socket is opened."""

from __future__ import annotations

import email.message
import importlib.util
import io
import socket
import sys
import urllib.error
from pathlib import Path

import pytest
import timm
import torch
from mm_helpers import RETINANET, ROOT, UPERNET_PLAIN, shrink_config
from mmengine.config import Config
from mmengine.registry import init_default_scope

from vizoo.backbones._pretrained import weights_kind
from vizoo.mm import VizooBackbone
from vizoo.mm.pretrained import address_cfg, official_checkpoint
from vizoo.utils.checkpoint import CheckpointError

SHIPPED = sorted(p for d in ("mmdet", "mmseg") for p in (ROOT / "configs" / d).glob("*.py"))
# The backbones whose configs start from random weights, and why: "manual" = released, but only behind a browser
# (Google Drive, a Hub folder of unnamed files; the config's comment gives the address); "" = none released.
RANDOM_INIT = {
    "cas_vit_m": "manual",
    "lightnet_tiny": "",
    "mala_tiny": "manual",
    "mobilemamba_b1": "manual",
    "msvmamba_tiny": "manual",
    "spatial_mamba_tiny": "manual",
}


def _official_layout(test_file: str):
    """``official_checkpoint(model)`` of a tests/backbones module: the official key layout, written out by hand."""
    path = ROOT / "tests" / "backbones" / test_file
    module = sys.modules.get(path.stem)  # already imported where pytest collected tests/backbones
    if module is None:
        spec = importlib.util.spec_from_file_location(path.stem, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[path.stem] = module  # torch.save pickles the module's stand-in config class by name
        spec.loader.exec_module(module)
    return module.official_checkpoint


@pytest.fixture
def offline(monkeypatch, tmp_path):
    """torch's hub cache in tmp_path, every socket refused; returns ``serve(url, file)`` to redirect a URL's download
    (torch.hub's ``urlopen``) to a local file, and the list of URLs fetched."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setattr(torch.hub, "_hub_dir", None)

    def refuse(self, address):
        raise OSError(f"test tried to connect to {address}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    served, fetched = {}, []

    def urlopen(request, *args, **kwargs):
        url = getattr(request, "full_url", request)
        if url not in served:
            raise urllib.error.URLError(f"no route to {url}")
        fetched.append(url)
        data = served[url].read_bytes()
        headers = email.message.Message()
        headers["Content-Length"] = str(len(data))
        response = io.BytesIO(data)
        response.info = lambda: headers
        return response

    monkeypatch.setattr(torch.hub, "urlopen", urlopen)

    def serve(url: str, path: Path) -> list[str]:
        served[url] = path
        return fetched

    return serve


def test_configs_follow_the_registry(load_tool):
    """Each config's backbone init_cfg is the registry's address (tools/mm_pretrained_configs.py writes them)."""
    tool = load_tool("mm_pretrained_configs")
    assert tool.main(["--check"]) == 0, "run python tools/mm_pretrained_configs.py"
    random_init = {}
    for path in SHIPPED:
        backbone = Config.fromfile(str(path)).model.backbone
        address = official_checkpoint(backbone.model_name)
        if address is None:
            assert backbone.init_cfg is None, path.name
            random_init[backbone.model_name] = weights_kind(timm.get_pretrained_cfg(backbone.model_name))
        else:
            assert backbone.init_cfg == dict(type="Pretrained", checkpoint=address), path.name
    assert random_init == RANDOM_INIT


def test_config_starts_from_the_official_weights_offline(offline, tmp_path):
    """The RetinaNet config's URL, served from a file in VMamba's official layout: downloaded once, converted by
    checkpoint_filter_fn and loaded strictly into the detector's backbone."""
    url = Config.fromfile(str(RETINANET)).model.backbone.init_cfg.checkpoint
    assert url == official_checkpoint("vmamba_tiny_s1l8") and url.startswith("https://")
    source = timm.create_model("test_vmamba")
    official = tmp_path / "official.pth"
    torch.save(_official_layout("test_vmamba_checkpoint.py")(source, v0=False, conv_weights=True), official)
    fetched = offline(url, official)

    cfg = shrink_config(RETINANET)
    cfg.model.backbone.init_cfg = dict(type="Pretrained", checkpoint=url)
    init_default_scope("mmdet")
    from mmdet.registry import MODELS

    for _ in range(2):
        detector = MODELS.build(cfg.model)
        detector.init_weights()
        for name, value in source.state_dict().items():
            if not name.startswith(("head.", "norm.")):  # the features model drops the classifier
                torch.testing.assert_close(detector.backbone.model.state_dict()[name], value, msg=name)
    assert fetched == [url]  # the second build read the cached copy
    assert (Path(torch.hub.get_dir()) / "checkpoints" / Path(url).name).is_file()


def test_hub_address_downloads_through_the_hub_cache(monkeypatch, offline, tmp_path):
    """The Vim config's hf-hub: address goes through huggingface_hub (its cache); the official layout loads."""
    address = Config.fromfile(str(UPERNET_PLAIN)).model.backbone.init_cfg.checkpoint
    assert address == official_checkpoint("vim_tiny") and address.startswith("hf-hub:")
    source = timm.create_model("test_vim")
    official = tmp_path / "vim.pth"
    torch.save(_official_layout("test_vim_checkpoint.py")(source), official)
    calls = []

    def hf_hub_download(repo_id, filename, revision=None, cache_dir=None):
        calls.append(f"hf-hub:{repo_id}/{filename}")
        return str(official)

    import huggingface_hub

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", hf_hub_download)
    backbone = VizooBackbone("test_vim", out_indices=(0, 1, 2, 3), init_cfg=dict(type="Pretrained", checkpoint=address))
    assert calls == [address]
    torch.testing.assert_close(backbone.model.pos_embed, source.pos_embed)


def test_failed_download_says_how_to_proceed_by_hand(offline):
    url = official_checkpoint("vmamba_tiny_s1l8")
    with pytest.raises(OSError, match="could not download") as info:
        VizooBackbone("test_vmamba", init_cfg=dict(type="Pretrained", checkpoint=url))
    message = str(info.value)
    assert url in message and "checkpoint='/path/to/file'" in message


def test_corrupt_cached_download_says_which_file_to_delete(offline, tmp_path):
    url = official_checkpoint("vmamba_tiny_s1l8")
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(b"PK\x03\x04 not a whole checkpoint")
    offline(url, truncated)
    with pytest.raises(CheckpointError, match="corrupt") as info:
        VizooBackbone("test_vmamba", init_cfg=dict(type="Pretrained", checkpoint=url))
    cached = Path(torch.hub.get_dir()) / "checkpoints" / Path(url).name
    assert f"delete {cached}" in str(info.value)


def test_another_variants_weights_name_the_keys_and_the_owner(offline, tmp_path):
    """VMamba-T's official address given to a VSSD backbone: strict load fails, naming the keys and whose they are."""
    url = official_checkpoint("vmamba_tiny_s1l8")
    official = tmp_path / "official.pth"
    torch.save(_official_layout("test_vmamba_checkpoint.py")(timm.create_model("test_vmamba"), v0=False), official)
    offline(url, official)
    with pytest.raises(CheckpointError, match="missing keys") as info:
        VizooBackbone("test_vssd", init_cfg=dict(type="Pretrained", checkpoint=url))
    assert "holds the official weights of vmamba_tiny_s1l8, not test_vssd" in str(info.value)


def test_official_address_shares_the_cache_of_pretrained_true():
    """The official address resolves to the registry's cfg (name.tag, hash), so the config and
    ``timm.create_model(name, pretrained=True)`` download one file; another model's use of it is a plain URL."""
    url = official_checkpoint("mlla_tiny")
    cfg = address_cfg(url, "mlla_tiny")
    assert cfg == timm.get_pretrained_cfg("mlla_tiny") and cfg.tag == "in1k"
    assert address_cfg(url, "test_mlla").url == url
    hub = address_cfg("hf-hub:org/repo@v1/weights/model.pth", "test_vim")
    assert (hub.hf_hub_id, hub.hf_hub_filename) == ("org/repo@v1", "weights/model.pth")
    with pytest.raises(ValueError, match="hf-hub:ORG/REPO"):
        address_cfg("hf-hub:org/repo", "test_vim")
