"""Hub-ready folders (``vizoo convert``), uploads (``vizoo push-to-hub``, the Hub mocked) and torch.hub (hubconf.py),
on test_ models, CPU, with the network blocked."""

import hashlib
import importlib.util
import json
import shutil
import sys
from pathlib import Path

import pytest
import timm
import timm.models._hub
import torch
from doc_snippets import no_network
from safetensors.torch import save_file

import vizoo
from vizoo import model_table
from vizoo.backbones._pretrained import weights_address
from vizoo.cli import main
from vizoo.hub import HUB_FILES, convert, model_card
from vizoo.utils.checkpoint import CheckpointError

ROOT = Path(__file__).resolve().parents[1]


def _vmamba_checkpoint_helpers():
    """tests/backbones/test_vmamba_checkpoint.py, which writes the official VMamba key layout by hand."""
    spec = importlib.util.spec_from_file_location(
        "vmamba_official_layout", ROOT / "tests" / "backbones" / "test_vmamba_checkpoint.py"
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # the pickled training config names its class by this module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def official(tmp_path_factory):
    """(source model, path): test_vmamba's weights as an official training checkpoint (layout, 1x1 convs in conv
    shape, optimizer state and a pickled config beside the weights)."""
    torch.manual_seed(3)
    source = timm.create_model("test_vmamba").eval()
    path = tmp_path_factory.mktemp("official") / "vssm_official.pth"
    torch.save(_vmamba_checkpoint_helpers().official_checkpoint(source, v0=False, conv_weights=True), path)
    return source, path


@pytest.fixture(scope="module")
def converted(official, tmp_path_factory):
    source, path = official
    with no_network() as attempts:
        folder = convert(path, "test_vmamba", tmp_path_factory.mktemp("hub") / "test_vmamba")
    assert attempts == []
    return source, path, folder


def test_convert_writes_save_for_hf_folder_that_timm_loads(converted):
    source, _, folder = converted
    assert sorted(p.name for p in folder.iterdir()) == sorted(HUB_FILES)  # nothing left behind
    config = json.loads((folder / "config.json").read_text())
    assert config["architecture"] == "test_vmamba" and config["num_classes"] == 1000
    assert "num_classes" not in config["model_args"] and config["model_args"]["features_fmt"] == "NCHW"
    x = torch.randn(2, 3, 64, 64)
    with no_network() as attempts:
        loaded = timm.create_model(f"local-dir:{folder}", pretrained=True).eval()
    assert attempts == []
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), source(x), rtol=0, atol=0)
        assert loaded.forward_features(x).shape == (2, 192, 2, 2)  # NCHW, as recorded


def test_converted_folder_loads_in_transformers(converted):
    transformers = pytest.importorskip("transformers")
    source, _, folder = converted
    x = torch.randn(2, 3, 64, 64)
    with no_network():
        wrapper = transformers.TimmWrapperModel.from_pretrained(folder).eval()
        classifier = transformers.TimmWrapperForImageClassification.from_pretrained(folder).eval()
    with torch.no_grad():
        features = source.forward_features(x)
        out = wrapper(x)
        torch.testing.assert_close(out.last_hidden_state, features.permute(0, 3, 1, 2))
        torch.testing.assert_close(out.pooler_output, source.forward_head(features, pre_logits=True))
        torch.testing.assert_close(classifier(x).logits, source(x))


def test_model_card_comes_from_the_registry(converted):
    source, path, folder = converted
    readme = (folder / "README.md").read_text()
    cfg = timm.get_pretrained_cfg("test_vmamba")
    assert f"license: {cfg.license}\n" in readme
    assert "https://arxiv.org/abs/2401.10166" in readme and cfg.paper_ids == "arXiv:2401.10166"
    assert vizoo.backbones.vmamba.__doc__.splitlines()[0].rstrip(".") in readme  # the paper's title
    assert f"Original:** {cfg.origin_url}" in readme
    assert hashlib.sha256(path.read_bytes()).hexdigest() in readme and path.name in readme
    params = model_table.format_params(sum(p.numel() for p in source.parameters()))
    assert f"Params (M): {params}" in readme
    macs = model_table.macs_or_none(source, "test_vmamba", (3, 64, 64))
    assert f"GMACs: {model_table.format_gmacs(macs)}" in readme and macs > 0


def test_model_card_of_a_paper_model_states_the_expected_top1():
    figures = model_table.paper_figures("vmamba_tiny_s1l8")
    card = model_card(
        "vmamba_tiny_s1l8",
        params=30_000_000,
        macs=4_900_000_000,
        input_size=(3, 224, 224),
        num_classes=1000,
        source="x",
    )
    row = next(line for line in card["comparison"].splitlines() if "top-1" in line)
    assert row.split("|")[-2].strip() == str(figures["paper_top1"])
    assert card["license"] == timm.get_pretrained_cfg("vmamba_tiny_s1l8").license
    assert card["details"]["Dataset"] == "ImageNet-1k"
    assert card["details"].get("Official weights", "") == weights_address(timm.get_pretrained_cfg("vmamba_tiny_s1l8"))
    # A checkpoint fine-tuned to other classes is not expected to reproduce the ImageNet top-1.
    other = model_card("vmamba_tiny_s1l8", params=1, macs=None, input_size=(3, 224, 224), num_classes=10, source="x")
    assert "top-1" not in other["comparison"] and "Dataset" not in other["details"]
    assert other["details"]["Model Stats"]["GMACs"] == "n/a"


def test_convert_command_vizoo_layout_and_output_safety(tmp_path, capsys):
    model = timm.create_model("test_mlla", num_classes=10).eval()
    path = tmp_path / "trained.safetensors"
    save_file(model.state_dict(), path)
    out = tmp_path / "out"
    argv = ["convert", str(path), "--model", "test_mlla", "--output", str(out), "--num-classes", "10"]
    assert main(argv) == 0
    assert "wrote" in capsys.readouterr().out
    loaded = timm.create_model(f"local-dir:{out}", pretrained=True).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x))
    assert "top-1" not in (out / "README.md").read_text()

    # A non-empty folder is refused and left as it was; --force replaces the three files and keeps the rest.
    (out / "notes.txt").write_text("mine")
    before = (out / "model.safetensors").read_bytes()
    assert main(argv) == 2
    assert "not empty" in capsys.readouterr().err and (out / "model.safetensors").read_bytes() == before
    assert main([*argv, "--force"]) == 0
    assert (out / "notes.txt").read_text() == "mine"
    assert sorted(p.name for p in out.iterdir()) == sorted([*HUB_FILES, "notes.txt"])


def test_convert_errors(official, tmp_path, capsys):
    source, path = official
    out = tmp_path / "out"

    assert main(["convert", str(path), "--model", "test_vmambaa", "--output", str(out)]) == 2
    assert "Did you mean: test_vmamba" in capsys.readouterr().err
    assert main(["convert", str(path), "--model", "resnet18", "--output", str(out)]) == 2
    assert "not a vizoo one" in capsys.readouterr().err

    corrupt = tmp_path / "corrupt.pth"
    corrupt.write_bytes(path.read_bytes()[:1000])  # truncated
    with pytest.raises(CheckpointError, match="corrupt, truncated"):
        convert(corrupt, "test_vmamba", out)
    with pytest.raises(CheckpointError, match="does not exist"):
        convert(tmp_path / "missing.pth", "test_vmamba", out)

    other = tmp_path / "msvmamba.safetensors"  # another family's checkpoint
    save_file(timm.create_model("test_msvmamba").state_dict(), other)
    with pytest.raises(CheckpointError, match="missing keys") as e:
        convert(other, "test_vmamba", out)
    assert "unexpected keys" in str(e.value)

    ten = tmp_path / "ten.safetensors"  # fine-tuned to 10 classes, converted as if it had 1000
    save_file(timm.create_model("test_vmamba", num_classes=10).state_dict(), ten)
    with pytest.raises(CheckpointError, match="--num-classes"):
        convert(ten, "test_vmamba", out)

    (tmp_path / "a_file").write_text("")
    with pytest.raises(ValueError, match="is a file"):
        convert(path, "test_vmamba", tmp_path / "a_file")
    assert not out.exists()  # no failure wrote anything


class _FakeHub:
    """Stands in for huggingface_hub.HfApi: records the calls and what each upload would send."""

    def __init__(self):
        self.calls = []
        self.uploaded = {}

    def install(self, monkeypatch):
        import huggingface_hub

        hub = self

        class Api:
            def __init__(self, token=None, library_name=None, library_version=None):
                hub.calls.append(("init", token, library_name))

            def create_repo(self, repo_id, private=False, exist_ok=False, **kwargs):
                hub.calls.append(("create_repo", repo_id, private, exist_ok))
                return huggingface_hub.RepoUrl(f"https://huggingface.co/{repo_id}")

            def create_branch(self, repo_id, branch, exist_ok=False, **kwargs):
                hub.calls.append(("create_branch", repo_id, branch, exist_ok))

            def upload_folder(self, repo_id, folder_path, allow_patterns=None, revision=None, **kwargs):
                files = sorted(p.name for p in Path(folder_path).iterdir() if p.name in (allow_patterns or [p.name]))
                hub.uploaded = {name: (Path(folder_path) / name).read_bytes() for name in files}
                hub.calls.append(("upload_folder", repo_id, revision, kwargs.get("create_pr")))
                return "commit"

        monkeypatch.setattr(huggingface_hub, "HfApi", Api)
        return self


def test_push_folder_uploads_what_convert_wrote(converted, monkeypatch, tmp_path, capsys):
    _, _, folder = converted
    hub = _FakeHub().install(monkeypatch)
    with no_network() as attempts:
        code = main(["push-to-hub", str(folder), "--repo-id", "org/test-vmamba", "--private", "--revision", "v1"])
    assert code == 0 and attempts == []
    assert hub.calls == [
        ("init", None, "timm"),
        ("create_repo", "org/test-vmamba", True, True),
        ("create_branch", "org/test-vmamba", "v1", True),
        ("upload_folder", "org/test-vmamba", "v1", False),
    ]
    assert hub.uploaded == {name: (folder / name).read_bytes() for name in HUB_FILES}


def test_push_model_converts_its_checkpoint_first(official, monkeypatch, capsys):
    source, path = official
    hub = _FakeHub().install(monkeypatch)
    with no_network():
        assert main(["push-to-hub", "test_vmamba", "--repo-id", "org/x", "--checkpoint", str(path)]) == 0
    assert [c[0] for c in hub.calls] == ["init", "create_repo", "upload_folder"]
    assert set(hub.uploaded) == set(HUB_FILES)
    assert json.loads(hub.uploaded["config.json"])["architecture"] == "test_vmamba"
    assert hashlib.sha256(path.read_bytes()).hexdigest().encode() in hub.uploaded["README.md"]


def test_push_refuses_what_would_not_load(converted, monkeypatch, tmp_path, capsys):
    hub = _FakeHub().install(monkeypatch)
    (tmp_path / "config.json").write_text("{}")
    assert main(["push-to-hub", str(tmp_path), "--repo-id", "org/x"]) == 2
    assert "model.safetensors, README.md missing" in capsys.readouterr().err
    assert main(["push-to-hub", "test_vmamba", "--repo-id", "org/x"]) == 2
    assert "--checkpoint" in capsys.readouterr().err
    assert main(["push-to-hub", "test_vmamba", "--repo-id", "org/x", "--checkpoint", "missing.pth"]) == 2
    assert "does not exist" in capsys.readouterr().err
    _, _, folder = converted
    assert main(["push-to-hub", str(folder), "--repo-id", "org/x", "--checkpoint", "x.pth"]) == 2
    assert hub.calls == []


def test_hubconf_lists_every_model(monkeypatch):
    # torch.hub.list has no source="local": point its download step at this checkout.
    monkeypatch.setattr(torch.hub, "_get_cache_or_reload", lambda *args, **kwargs: str(ROOT))
    assert sorted(torch.hub.list("owner/vizoo")) == vizoo.list_models()
    assert "arXiv:2401.10166" in torch.hub.help("owner/vizoo", "vmamba_tiny_s1l8")


def test_hubconf_load_local(official):
    source, path = official
    with no_network() as attempts:
        model = torch.hub.load(str(ROOT), "test_vmamba", source="local")
        loaded = torch.hub.load(
            str(ROOT), "test_vmamba", source="local", pretrained=True, pretrained_cfg_overlay=dict(file=str(path))
        ).eval()
        features = torch.hub.load(str(ROOT), "test_mlla", source="local", features_only=True, out_indices=(3,))
    assert attempts == []
    assert type(model).__name__ == "VMamba" and model.pretrained_cfg["architecture"] == "test_vmamba"
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), source(x))
        assert len(features(x)) == 1


def test_hubconf_pretrained_downloads_once_through_timm(official, monkeypatch, tmp_path):
    """pretrained=True through torch.hub takes vizoo's download path (the release address, torch.hub's cache, the
    family's converter, a strict load); the download is redirected to the official-layout file."""
    source, path = official
    url = "https://github.com/example/releases/download/v1/vssm_tiny_official.pth"
    requested = []

    def download(address, dst, hash_prefix=None, progress=True):
        requested.append(address)
        shutil.copyfile(path, dst)

    monkeypatch.setattr(timm.models._hub, "download_url_to_file", download)
    before = torch.hub.get_dir()
    torch.hub.set_dir(str(tmp_path / "hub"))
    try:
        with no_network() as attempts:
            for _ in range(2):  # the second load reads the cached file
                model = torch.hub.load(
                    str(ROOT), "test_vmamba", source="local", pretrained=True, pretrained_cfg_overlay=dict(url=url)
                ).eval()
    finally:
        torch.hub.set_dir(before)
    assert attempts == [] and requested == [url]
    assert (tmp_path / "hub" / "checkpoints" / "vssm_tiny_official.pth").is_file()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(model(x), source(x))
