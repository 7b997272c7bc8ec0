"""tools/official_check.py, the pieces the tools/check_official_*.py scripts share, and the scripts' command lines
(the comparisons themselves need the official sources: the scripts are run by hand against them)."""

import sys

import pytest
import timm
import torch
import torch.nn as nn

from vizoo.utils.checkpoint import CheckpointError

FILES = ("net.py", "blocks.py")
SCRIPTS = ("efficient_vim", "groupmamba", "mambavision", "vrwkv")


@pytest.fixture(scope="module")
def oc(load_tool):
    return load_tool("official_check")


def test_perturb_moves_every_weight_and_statistic_reproducibly(oc):
    def model():
        torch.manual_seed(0)
        return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Linear(4, 2), nn.BatchNorm1d(2))

    init = model().state_dict()
    moved = oc.perturb_(model(), seed=3).state_dict()
    for key, value in init.items():
        if key.endswith("num_batches_tracked"):
            continue
        assert not torch.equal(moved[key], value), key
        if key.endswith("running_var"):  # scaled by U(1, 1.5): stays a variance
            assert ((moved[key] >= value) & (moved[key] <= 1.5 * value)).all()
    again = oc.perturb_(model(), seed=3).state_dict()
    other = oc.perturb_(model(), seed=4).state_dict()
    assert all(torch.equal(again[k], v) for k, v in moved.items())
    assert not torch.equal(other["0.weight"], moved["0.weight"])


def test_max_difference_over_sizes_and_stage_lists(oc, capsys):
    conv = nn.Conv2d(3, 2, 1)
    shifted = lambda x: conv(x) + 0.5  # noqa: E731
    assert oc.max_difference(conv, conv, [(8, 8), (8, 12)]) == 0.0
    assert oc.max_difference(conv, shifted, [(8, 8), (8, 12)], label="plain ") == pytest.approx(0.5)
    lines = capsys.readouterr().out.splitlines()
    assert lines[-2].startswith("  plain 8x8: max |logit difference| 0.5") and lines[-1].startswith("  plain 8x12:")
    stages = lambda x: [x, conv(x)]  # noqa: E731
    wrong = lambda x: [x, shifted(x)]  # noqa: E731
    assert oc.max_difference(stages, wrong, [(8, 8)], what="stage output") == pytest.approx(0.5)
    assert "max |stage output difference| 0.5" in capsys.readouterr().out
    broken = lambda x: conv(x) * float("nan")  # noqa: E731
    assert torch.isnan(torch.tensor(oc.max_difference(conv, broken, [(8, 8), (4, 4)])))


def test_report_prints_each_variant_and_fails_outside_the_tolerance(oc, capsys):
    diffs = {"a": 1e-6, "b": 1e-3, "c": float("nan")}
    assert oc.report(["a"], lambda v: f"model_{v}", diffs.get, 1e-4) == 0
    assert capsys.readouterr().out == "model_a:\n  ok: 1e-06 (tolerance 0.0001)\n"
    assert oc.report(["a", "b", "c"], lambda v: f"model_{v}", diffs.get, 1e-4) == 1
    out = capsys.readouterr().out
    assert "  FAILED: 0.001 (tolerance 0.0001)" in out and "  FAILED: nan" in out
    assert out.endswith("outside the tolerance: b, c\n")
    assert torch.is_grad_enabled()  # the checks run without autograd, and leave the caller's mode as it was


def test_function_from_source_runs_that_function_alone(oc, tmp_path):
    (tmp_path / "ops.py").write_text(
        "import selective_scan_cuda  # only a CUDA build has it\n\ndef twice(x):\n    return scale * x\n"
    )
    twice = oc.function_from_source(tmp_path, "ops.py", "twice", {"scale": 2})
    assert twice(torch.ones(2)).tolist() == [2.0, 2.0]
    with pytest.raises(SystemExit, match="no function thrice"):
        oc.function_from_source(tmp_path, "ops.py", "thrice", {})
    with pytest.raises(SystemExit, match="cannot read missing.py"):
        oc.read_source(tmp_path, "missing.py")


def test_stub_module_and_import_official_package(oc, tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "path", list(sys.path))
    source = tmp_path / "official" / "models"
    source.mkdir(parents=True)
    (source / "net.py").write_text("from cuda_only_ext import fwd\nfrom .blocks import WIDTH\n")
    (source / "blocks.py").write_text("WIDTH = 7\n")
    try:
        oc.stub_module("cuda_only_ext", fwd=abs)
        work = tmp_path / "work"
        work.mkdir()
        module = oc.import_official_package(tmp_path / "official", work, "official_pkg", "models", FILES, "net")
        assert module.fwd is abs and module.WIDTH == 7
    finally:
        for name in [n for n in sys.modules if n.startswith(("official_pkg", "cuda_only_ext"))]:
            del sys.modules[name]


def test_load_released_loads_strictly_and_removes_the_file(oc, tmp_path):
    source = timm.create_model("test_mambavision").eval()
    path = tmp_path / "released.pth.tar"
    model = oc.load_released("test_mambavision", {"state_dict": source.state_dict()}, path)
    assert not path.exists()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(model(x), source(x))
    state = source.state_dict()
    dropped = next(k for k in state if k.endswith(".weight"))
    state.pop(dropped)
    with pytest.raises(CheckpointError, match=dropped):
        oc.load_released("test_mambavision", {"state_dict": state}, path)
    assert not path.exists()


@pytest.mark.parametrize("script", SCRIPTS)
def test_scripts_keep_their_command_lines(load_tool, script, capsys):
    tool = load_tool(f"check_official_{script}")
    with pytest.raises(SystemExit) as exit_:
        tool.main(["--help"])
    help_text = capsys.readouterr().out
    assert exit_.value.code == 0 and "--tol" in help_text
    expected = ("--source", "--model", "--img-size") if script == "groupmamba" else ("--official", "--variants")
    assert all(option in help_text for option in expected)
    if script == "mambavision":
        assert "--mamba" in help_text
