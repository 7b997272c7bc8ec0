"""``pretrained=True``: the registry's official weights (addresses, licences, paper figures, tags, input limits), one
download into the torch hub / HF cache converted through ``checkpoint_filter_fn`` and loaded strictly, and the errors
of bad input. Nothing here touches the network: every test fails if a socket connects, downloads are redirected to
local files written in the official key layouts, and caches live in ``tmp_path``."""

import argparse
import hashlib
import os
import re
import shutil
import socket
import urllib.error

import huggingface_hub
import pytest
import timm
import timm.models._hub
import torch
import torch.hub
from test_ssm_family_checkpoint import official_checkpoint

import vizoo.backbones._builder
from vizoo.backbones import FAMILIES
from vizoo.backbones._pretrained import WeightsDownloadError, weights_address, weights_kind
from vizoo.utils.checkpoint import CheckpointError

ARCHS = timm.list_models(module=list(FAMILIES))
TAGGED = [tagged for arch in ARCHS for tagged in timm.models.get_arch_pretrained_cfgs(arch)]
TEST_MODELS = [name for name in ARCHS if name.startswith("test_")]
URL = "https://github.com/example/releases/download/v1/test_vssd_official.pth"
# Released weights whose paper reports no top-1 (the MALA paper gives Small's figures only).
NO_PUBLISHED_TOP1 = {"mala_large.in1k"}


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    """Fail the test (not an OSError, which the download code would turn into its own error) on any connection."""

    def refuse(self, address):
        pytest.fail(f"a test opened a network connection to {address}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)


@pytest.fixture
def hub_dir(tmp_path):
    """torch.hub's cache in tmp_path: ``timm.models.download_cached_file`` keeps files in ``<hub>/checkpoints``."""
    before = torch.hub.get_dir()
    torch.hub.set_dir(str(tmp_path / "hub"))
    yield tmp_path / "hub" / "checkpoints"
    torch.hub.set_dir(before)


def trained(name: str, **kwargs) -> torch.nn.Module:
    """``name`` with every parameter moved off its init, so that a mis-mapped tensor shows in the output."""
    model = timm.create_model(name, **kwargs).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    return model


def save_official(model, name, path):
    """``model`` in its official layout as the official training scripts save it, with a non-tensor object (the
    run's argparse Namespace) that ``torch.load(weights_only=True)`` refuses."""
    checkpoint = official_checkpoint(model, name)
    checkpoint["args"] = argparse.Namespace(model=name, lr=1e-3)
    torch.save(checkpoint, path)
    with pytest.raises(Exception, match="argparse.Namespace"):
        torch.load(path, weights_only=True)
    return path


@pytest.fixture
def serve(monkeypatch):
    """Redirect torch.hub's downloads: ``serve({url: local_file})``; a URL not served fails like a refused request.
    The real ``download_url_to_file`` copies the file (``file://``): torch.hub's temporary file, progress bar and
    hash check run as they do on a download. Returns the list of URLs requested."""
    real = torch.hub.download_url_to_file
    files, requested = {}, []

    def download(url, dst, hash_prefix=None, progress=True):
        requested.append(url)
        if url not in files:
            raise urllib.error.URLError("Temporary failure in name resolution")
        real(f"file://{files[url]}", dst, hash_prefix, progress)

    monkeypatch.setattr(timm.models._hub, "download_url_to_file", download)

    def add(mapping):
        files.update({url: os.fspath(path) for url, path in mapping.items()})
        return requested

    return add


@pytest.fixture
def serve_hf(monkeypatch, tmp_path):
    """Redirect ``huggingface_hub.hf_hub_download`` to local files laid out as the HF cache does: the file under
    ``blobs/<sha256>`` (the name the Hub gives LFS files) and a ``snapshots/<revision>/<filename>`` link to it."""
    files, requested = {}, []

    def download(repo_id, filename, revision=None, cache_dir=None, **kwargs):
        requested.append((repo_id, filename))
        if (repo_id, filename) not in files:
            raise huggingface_hub.errors.EntryNotFoundError(f"404 Client Error: {repo_id}/{filename}")
        root = tmp_path / "hf" / f"models--{repo_id.replace('/', '--')}"
        source = files[repo_id, filename]
        blob = root / "blobs" / hashlib.sha256(open(source, "rb").read()).hexdigest()
        link = root / "snapshots" / (revision or "main") / filename
        if not link.exists():
            blob.parent.mkdir(parents=True, exist_ok=True)
            link.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source, blob)
            link.symlink_to(blob)
        return str(link)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", download)

    def add(mapping):
        files.update({key: os.fspath(path) for key, path in mapping.items()})
        return requested

    return add


def test_the_network_guard_refuses_connections():
    with pytest.raises(pytest.fail.Exception, match="network connection"):
        socket.create_connection(("127.0.0.1", 9), timeout=1)


# The registry.


@pytest.mark.parametrize("tagged", TAGGED)
def test_every_weight_source_names_its_address_licence_and_paper_top1(tagged):
    cfg = timm.get_pretrained_cfg(tagged)
    arch, tag = timm.models.split_model_name_tag(tagged)
    assert (arch, tag) == (cfg.architecture, cfg.tag) and re.fullmatch(r"[a-z0-9]+(_[a-z0-9]+)*", tag), tagged
    kind = weights_kind(cfg)
    if kind:
        assert cfg.license and weights_address(cfg).startswith("https://"), tagged
    if kind in ("url", "hf-hub") and tagged not in NO_PUBLISHED_TOP1:
        assert cfg.paper_top1 is not None, f"{tagged} downloads weights but records no paper top-1"
    if kind == "url":
        assert not cfg.hf_hub_id, f"{tagged}: timm would take hf_hub_id over url"
    if tag == "untrained":
        assert not kind and arch.startswith(("test_", "lightnet_")), tagged


WITH_WEIGHTS = [a for a in ARCHS if any(weights_kind(c) for c in timm.models.get_arch_pretrained_cfgs(a).values())]


# Models whose paper-table checkpoint is not trained on ImageNet-1k alone: the tag says how it was trained.
NOT_IN1K_ONLY = {"vrwkv_large": "in22k_ft_in1k"}


@pytest.mark.parametrize("arch", WITH_WEIGHTS)
def test_default_tag_is_the_papers_checkpoint(arch):
    """The plain ImageNet-1k checkpoint the paper's table reports is the default (or, where the table reports an
    ImageNet-22k pretrained one, that one); MESA, distilled and other checkpoints are asked for by tag."""
    assert timm.get_pretrained_cfg(arch).tag == NOT_IN1K_ONLY.get(arch, "in1k")


class Fetched(Exception):
    """Raised by the stubbed downloader with the pretrained cfg it was given, before any model is built."""


@pytest.mark.parametrize("tagged", [t for t in TAGGED if weights_kind(timm.get_pretrained_cfg(t)) in ("url", "hf-hub")])
def test_pretrained_true_fetches_the_registered_address(monkeypatch, tagged):
    """Every downloadable tag reaches vizoo's downloader (hence its safe reader and strict load) with its own cfg."""

    def fetched(cfg, cache_dir=None):
        raise Fetched(cfg)

    monkeypatch.setattr(vizoo.backbones._builder, "cached_weights_file", fetched)
    with pytest.raises(Fetched) as got:
        timm.create_model(tagged, pretrained=True)
    assert weights_address(got.value.args[0]) == weights_address(timm.get_pretrained_cfg(tagged))


def test_tags_name_other_checkpoints_with_their_figures():
    assert timm.get_pretrained_cfg("vssd_tiny.mesa_in1k").paper_top1 == 84.1
    assert timm.get_pretrained_cfg("vssd_tiny").paper_top1 == 83.6
    assert timm.get_pretrained_cfg("mobilemamba_b1.dist_in1k").paper_top1 == 82.2
    assert "vssd_base.mesa_in1k" in timm.list_pretrained("vssd_*")


# Downloading, converting and loading.


def test_url_weights_download_once_convert_and_load_strictly(hub_dir, serve, tmp_path, capfd):
    source = trained("test_vssd")
    requested = serve({URL: save_official(source, "test_vssd", tmp_path / "official.pth")})
    x = torch.randn(1, 3, 64, 64)
    for _ in range(2):
        model = timm.create_model("test_vssd", pretrained=True, pretrained_cfg_overlay=dict(url=URL)).eval()
        with torch.no_grad():
            torch.testing.assert_close(model(x), source(x))
    assert requested == [URL], "the second build must use the cached file"
    assert "100%" in capfd.readouterr().err, "the download shows a progress bar"
    assert (hub_dir / "test_vssd_official.pth").is_file()
    assert "state_dict" not in model.pretrained_cfg and model.pretrained_cfg["url"] == URL


def test_cache_dir_keeps_the_download(serve, tmp_path):
    serve({URL: save_official(trained("test_vssd"), "test_vssd", tmp_path / "official.pth")})
    timm.create_model("test_vssd", pretrained=True, pretrained_cfg_overlay=dict(url=URL), cache_dir=tmp_path / "c")
    assert (tmp_path / "c" / "test_vssd_official.pth").is_file()


def test_address_without_file_name_is_cached_under_the_model_name(hub_dir, serve, tmp_path):
    url = "https://cloud.example.edu/f/0123456789/?dl=1"  # MLLA's TsinghuaCloud links look like this
    serve({url: save_official(trained("test_vssd"), "test_vssd", tmp_path / "official.pth")})
    timm.create_model("test_vssd", pretrained=True, pretrained_cfg_overlay=dict(url=url))
    assert (hub_dir / "test_vssd.untrained.pth").is_file()


def test_registry_hub_weights_of_a_paper_variant_load(serve_hf, tmp_path):
    """vssd_micro.in1k as registered: its Hub repo and file, the official layout, the default tag."""
    source = trained("vssd_micro")
    path = save_official(source, "test_vssd", tmp_path / "vssd_micro_best.pth")
    requested = serve_hf({("YuhengSSS/VSSD", "vssd_micro_best.pth"): path})
    model = timm.create_model("vssd_micro", pretrained=True).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(model(x), source(x))
    timm.create_model("vssd_micro", pretrained=True, features_only=True)  # timm's feature wrapper: loads, from cache
    assert requested == [("YuhengSSS/VSSD", "vssd_micro_best.pth")] * 2  # the HF cache decides; see serve_hf


def test_tagged_weights_download_their_own_file(serve_hf, tmp_path):
    path = save_official(trained("test_vssd"), "test_vssd", tmp_path / "mesa.pth")
    requested = serve_hf({("YuhengSSS/VSSD", "vssd_tiny_e300_with_mesa.pth"): path})
    cfg = timm.get_pretrained_cfg("vssd_tiny.mesa_in1k")
    overlay = dict(hf_hub_id=cfg.hf_hub_id, hf_hub_filename=cfg.hf_hub_filename)
    timm.create_model("test_vssd", pretrained=True, pretrained_cfg_overlay=overlay)
    assert requested == [("YuhengSSS/VSSD", "vssd_tiny_e300_with_mesa.pth")]


# Bad input.


def test_failed_download_names_the_address_and_the_manual_route(hub_dir, serve):
    serve({})
    with pytest.raises(WeightsDownloadError, match=re.escape(URL)) as error:
        timm.create_model("test_vssd", pretrained=True, pretrained_cfg_overlay=dict(url=URL))
    assert "pretrained_cfg_overlay=dict(file=PATH)" in str(error.value)
    assert not list(hub_dir.glob("*.pth")), "a failed download leaves no file in the cache"


def test_failed_hub_download_names_the_file(serve_hf):
    serve_hf({})
    with pytest.raises(WeightsDownloadError, match="huggingface.co/YuhengSSS/VSSD/blob/main/vssd_micro_best.pth"):
        timm.create_model("vssd_micro", pretrained=True)


def test_truncated_cached_file_says_to_delete_it(hub_dir, serve, tmp_path):
    path = save_official(trained("test_vssd"), "test_vssd", tmp_path / "official.pth")
    hub_dir.mkdir(parents=True)
    (hub_dir / "test_vssd_official.pth").write_bytes(path.read_bytes()[:5000])
    serve({URL: path})
    with pytest.raises(CheckpointError, match="corrupt, truncated") as error:
        timm.create_model("test_vssd", pretrained=True, pretrained_cfg_overlay=dict(url=URL))
    assert f"delete {hub_dir / 'test_vssd_official.pth'}" in str(error.value)


def test_cached_file_failing_its_sha256_says_to_delete_it(hub_dir, serve, tmp_path):
    """A hash prefix in the file name (torch.hub's convention) and an HF cache blob (named by its SHA-256) are
    checked on every load, not only on download."""
    path = save_official(trained("test_vssd"), "test_vssd", tmp_path / "official.pth")
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    url = f"https://example.org/w/test_vssd-{digest[:8]}.pth"
    serve({url: path})
    timm.create_model("test_vssd", pretrained=True, pretrained_cfg_overlay=dict(url=url))
    cached = hub_dir / f"test_vssd-{digest[:8]}.pth"
    data = bytearray(cached.read_bytes())
    data[-100] ^= 1  # a flipped bit that torch.load may not notice
    cached.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=f"(?s)SHA-256 .* {digest[:8]}.*delete"):
        timm.create_model("test_vssd", pretrained=True, pretrained_cfg_overlay=dict(url=url))


def test_a_short_hex_word_in_a_file_name_is_not_taken_for_a_hash(hub_dir, serve, tmp_path):
    url = "https://example.org/w/test_vssd-b0.pth"  # "b0" is hex, but a variant's name, not a SHA-256 prefix
    serve({url: save_official(trained("test_vssd"), "test_vssd", tmp_path / "official.pth")})
    for _ in range(2):
        timm.create_model("test_vssd", pretrained=True, pretrained_cfg_overlay=dict(url=url))


def test_corrupt_hub_blob_says_which_file_to_delete(serve_hf, tmp_path):
    path = save_official(trained("test_vssd"), "test_vssd", tmp_path / "official.pth")
    serve_hf({("org/repo", "w.pth"): path})
    overlay = dict(hf_hub_id="org/repo", hf_hub_filename="w.pth")
    timm.create_model("test_vssd", pretrained=True, pretrained_cfg_overlay=overlay)
    blob = next((tmp_path / "hf").rglob("blobs/*"))
    blob.write_bytes(blob.read_bytes()[:-10])
    with pytest.raises(CheckpointError, match=f"delete {re.escape(str(blob))}"):
        timm.create_model("test_vssd", pretrained=True, pretrained_cfg_overlay=overlay)


def test_checkpoint_of_another_variant_names_the_keys_and_the_cached_file(hub_dir, serve, tmp_path):
    other = timm.create_model("test_vssd", dims=(16, 32, 64, 96))
    serve({URL: save_official(other, "test_vssd", tmp_path / "official.pth")})
    with pytest.raises(CheckpointError, match=r"shape mismatches.*\n(.*\n)*.*delete .*test_vssd_official.pth"):
        timm.create_model("test_vssd", pretrained=True, pretrained_cfg_overlay=dict(url=URL))


def test_no_released_weights_names_those_that_exist():
    with pytest.raises(CheckpointError, match="no released ImageNet weights.*mobilemamba_t2.in1k"):
        timm.create_model("test_mobilemamba", pretrained=True)
    with pytest.raises(CheckpointError, match="lightnet_tiny.untrained has no released ImageNet weights"):
        timm.create_model("lightnet_tiny", pretrained=True)


def test_weights_no_url_can_fetch_name_the_page_and_the_manual_route():
    with pytest.raises(CheckpointError, match="drive.google.com/file/d/14UUeEeN62a1jo5qit-m0yChQnNU8JWQG") as error:
        timm.create_model("mobilemamba_t2.dist_in1k", pretrained=True)
    assert "timm.create_model('mobilemamba_t2.dist_in1k', pretrained=True, pretrained_cfg_overlay" in str(error.value)


def test_a_local_file_is_used_without_downloading(serve, tmp_path):
    requested = serve({})
    path = save_official(trained("test_vssd"), "test_vssd", tmp_path / "official.pth")
    timm.create_model("test_vssd", pretrained=True, pretrained_cfg_overlay=dict(url=URL, file=str(path)))
    assert requested == []


# Input sizes: min_input_size is what timm's model tests fall back to, and each model's smallest input.


@pytest.mark.parametrize("arch", ARCHS)
def test_min_input_size_is_the_models_input_multiple(arch):
    cfg = timm.get_pretrained_cfg(arch)
    _, h, w = cfg.min_input_size
    assert h == w and cfg.input_size[1] % h == 0 and cfg.input_size[2] % w == 0, cfg.min_input_size
    with torch.device("meta"):
        model = timm.create_model(arch)
    assert model.input_multiple == h, f"{arch} takes multiples of {model.input_multiple}, its cfg says {h}"


@pytest.mark.filterwarnings("ignore:EcoFormer hashing is not fitted")
@pytest.mark.parametrize("name", TEST_MODELS)
def test_smallest_input_runs_and_other_sizes_say_the_multiple(name):
    model = timm.create_model(name).eval()
    _, m, _ = model.pretrained_cfg["min_input_size"]
    with torch.no_grad():
        assert model(torch.randn(1, 3, m, m)).shape == (1, 1000)
        with pytest.raises(ValueError, match=f"divisible by {m}, got {m}x{m + m // 2}"):
            model(torch.randn(1, 3, m, m + m // 2))


# docs/weights.md


def test_weights_table_of_the_docs_is_current(load_tool, tmp_path, capsys):
    tool = load_tool("weights_table")
    assert tool.main(["--check"]) == 0, capsys.readouterr().out
    stale = tmp_path / "weights.md"
    stale.write_text(
        tool.DOCS_PATH.read_text().replace("| `vmamba_tiny_s1l8.in1k` | 82.6 |", "| `vmamba_tiny_s1l8.in1k` | 80 |")
    )
    assert tool.main(["--check", "--docs", str(stale)]) == 1
    assert "vmamba_tiny_s1l8.in1k" in capsys.readouterr().out
    assert tool.main(["--docs", str(stale)]) == 0 and tool.main(["--check", "--docs", str(stale)]) == 0
    stale.write_text("# no markers\n")
    assert tool.main(["--check", "--docs", str(stale)]) == 1
