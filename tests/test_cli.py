"""The ``vizoo`` command, run in-process through ``vizoo.cli.main`` (tiny models, CPU)."""

import subprocess
import sys
import time

import timm
import torch

import vizoo
from vizoo import model_table
from vizoo.cli import main


def _run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_test_vmamba_registered():
    assert timm.is_model("test_vmamba") and "test_vmamba" in vizoo.list_models()


def test_list(capsys):
    code, out, err = _run(capsys, "list", "test_*")
    assert code == 0 and err == ""
    assert out.splitlines()[0].split() == ["model", "family", "params", "(M)", "GMACs", "input", "size"]
    line = next(line for line in out.splitlines() if line.startswith("test_vmamba"))
    family, params, gmacs, size = line.split()[1:]
    assert family == "vmamba" and 0.1 < float(params) < 2.0 and float(gmacs) > 0 and size == "3x64x64"
    assert len(out.splitlines()) == 2 + len(vizoo.list_models("test_*"))  # header, rule, one line a model


def test_list_builds_no_model(capsys, monkeypatch):
    """``vizoo list`` reads the model table: it builds nothing, so it answers at once for all models."""

    def no_build(*args, **kwargs):
        raise AssertionError("vizoo list built a model")

    monkeypatch.setattr(timm, "create_model", no_build)
    monkeypatch.setattr(model_table, "create", no_build)
    start = time.perf_counter()
    code, out, err = _run(capsys, "list")
    assert code == 0 and err == "" and time.perf_counter() - start < 5
    assert len(out.splitlines()) == 2 + len(vizoo.list_models())
    assert "-" not in [field for line in out.splitlines() for field in line.split()]


def test_list_live_counts_what_the_table_says(capsys):
    _, table, _ = _run(capsys, "list", "test_vmamba")
    code, live, _ = _run(capsys, "list", "test_vmamba", "--live")
    assert code == 0 and live == table
    code, live, _ = _run(capsys, "list", "test_vmamba", "--live", "--no-macs")
    line = live.splitlines()[2].split()
    assert code == 0 and line[3] == "-" and line[2] == table.splitlines()[2].split()[2]


def test_list_a_model_missing_from_the_table(capsys, monkeypatch):
    """A model registered after the table was generated is listed with "-" and one line says how to regenerate."""
    rows = [r for r in model_table.load_rows() if r.model != "test_vmamba"]
    monkeypatch.setattr(model_table, "load_rows", lambda: rows)
    code, out, err = _run(capsys, "list", "test_*")
    assert code == 0
    lines = {line.split()[0]: line.split()[1:] for line in out.splitlines()[2:]}
    assert lines["test_vmamba"] == ["vmamba", "-", "-", "-"]
    assert lines["test_vssd"][0] == "vssd" and float(lines["test_vssd"][1]) > 0
    assert len(err.splitlines()) == 1 and "python tools/model_table.py" in err and "test_vmamba" in err


def test_list_no_match(capsys):
    code, _, err = _run(capsys, "list", "no_such_model_*", "--no-macs")
    assert code == 1 and "no vizoo models match" in err


def test_info(capsys):
    code, out, _ = _run(capsys, "info", "test_vmamba")
    assert code == 0
    assert "params:" in out and "GMACs:" in out
    for field in ("input_size", "mean", "std", "crop_pct", "first_conv", "classifier", "pool_size"):
        assert field in out
    assert "feature_info:" in out and "reduction" in out
    assert "no_weight_decay:" in out


def test_info_unknown_model(capsys):
    code, _, err = _run(capsys, "info", "test_vmamab")
    assert code == 2
    assert "unknown model 'test_vmamab'" in err and "test_vmamba" in err and "vizoo list" in err


def test_bench(capsys, tmp_path):
    png = tmp_path / "lat.png"
    argv = ["bench", "test_vmamba", "--sizes", "32", "64", "--baselines", "test_resnet"]
    code, out, _ = _run(capsys, *argv, "--warmup", "1", "--min-time", "0.05", "--plot", str(png))
    assert code == 0
    assert "vs test_resnet" in out and "test_resnet (baseline)" in out
    model_lines = [line for line in out.splitlines() if line.startswith("test_vmamba ")]
    assert len(model_lines) == 2 and all(line.rstrip().endswith("x") for line in model_lines)
    assert "slope" in out
    slope_line = next(line for line in out.splitlines() if line.strip().startswith("test_vmamba:"))
    float(slope_line.split(":")[1])
    assert png.read_bytes()[:4] == b"\x89PNG"


def test_bench_unknown_baseline(capsys):
    code, _, err = _run(capsys, "bench", "test_vmamba", "--sizes", "32", "--baselines", "deit_smal_patch16_224")
    assert code == 2 and "deit_small_patch16_224" in err


def test_bench_cuda_unavailable(capsys, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    code, out, err = _run(capsys, "bench", "test_vmamba", "--sizes", "32", "--device", "cuda")
    assert code == 2 and "CUDA is not available" in err and out == ""


def test_usage_errors(capsys):
    assert main([]) == 2
    assert main(["bench"]) == 2
    assert main(["--help"]) == 0


def test_finetune_help_lists_both_kinds_with_their_options(capsys):
    """``vizoo finetune`` is a subcommand with the kinds det and seg; each kind's help shows its own data and model
    options and the shared training options."""
    code, out, _ = _run(capsys, "--help")
    assert code == 0 and "finetune" in out.split("positional arguments:")[1]
    code, out, _ = _run(capsys, "finetune", "--help")
    assert code == 0 and "det" in out and "seg" in out
    shared = ["--epochs", "--batch-size", "--lr", "--weight-decay", "--amp", "--device", "--workers", "--output"]
    shared += ["--resume", "--onnx", "--fp16"]
    own = {
        "det": ["--coins", "--train-ann", "--val-ann", "--out-indices", "--fpn-channels", "--num-convs", "--img-size"],
        "seg": ["--coins", "--train-masks", "--val-masks", "--num-classes", "--ignore-index", "--head", "--channels"],
    }
    for kind, options in own.items():
        code, out, _ = _run(capsys, "finetune", kind, "--help")
        assert code == 0 and out.startswith(f"usage: vizoo finetune {kind} ")
        assert all(option in out for option in options + shared), out
        assert f"vizoo finetune {kind} --coins" in out  # the examples


def test_finetune_usage_errors(capsys):
    """An unknown or missing kind is argparse's error (exit 2); so are --fp16 without --onnx and missing data, which
    are found before any dataset or model is built."""
    code, out, err = _run(capsys, "finetune", "cls")
    assert code == 2 and out == "" and "invalid choice: 'cls' (choose from 'det', 'seg')" in err
    code, _, err = _run(capsys, "finetune")
    assert code == 2 and "the following arguments are required" in err
    code, _, err = _run(capsys, "finetune", "det", "--fp16")
    assert code == 2 and err.startswith("usage: vizoo finetune det ")
    assert "vizoo finetune det: error: --fp16 is an option of the ONNX export: give --onnx FILE too" in err
    code, out, err = _run(capsys, "finetune", "seg", "--train-images", "img")
    assert code == 2 and out == ""
    assert "vizoo finetune seg: error: give --coins DIR, or all of --train-images --train-masks" in err


def test_finetune_options_reach_the_config():
    """Both kinds take the training options of ``add_finetune_arguments`` (one list), read back by
    ``FinetuneConfig.from_args``."""
    from vizoo.cli import build_parser
    from vizoo.train.finetune import FinetuneConfig

    train = ["--epochs", "3", "--batch-size", "4", "--lr", "2e-4", "--weight-decay", "0.1", "--amp", "--workers", "2"]
    for kind in ("det", "seg"):
        args = build_parser().parse_args(["finetune", kind, *train, "--output", "runs/x", "--img-size", "64", "96"])
        assert (args.command, args.kind, args.img_size) == ("finetune", kind, [64, 96])
        config = FinetuneConfig.from_args(args)
        assert (config.epochs, config.batch_size, config.lr, config.weight_decay) == (3, 4, 2e-4, 0.1)
        assert config.amp and config.num_workers == 2 and config.output_dir == "runs/x"
        assert args.resume is None and args.onnx is None and not args.fp16


def test_python_dash_m():
    proc = subprocess.run(
        [sys.executable, "-m", "vizoo", "list", "test_*", "--no-macs"], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    assert "test_vmamba" in proc.stdout


def test_a_command_builds_only_its_own_parser_group():
    """``vizoo list`` does not import what only other commands need (open_clip for clip-train, the training stack);
    a command's parser is the same whether built alone or with all the others; every command is in the usage line."""
    from vizoo.cli import COMMAND_GROUPS, OWN_COMMANDS, build_parser

    code = "import sys; from vizoo.cli import main; main(['list', 'test_vmamba', '--no-macs']); "
    code += (
        "print(sorted(m for m in ('open_clip', 'vizoo.multimodal', 'vizoo.train.classification') if m in sys.modules))"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[-1] == "[]"

    def choices(parser):
        return next(a for a in parser._actions if a.dest == "command").choices

    full = choices(build_parser())
    commands = [*OWN_COMMANDS, *(name for names in COMMAND_GROUPS.values() for name in names)]
    assert sorted(full) == sorted(commands)
    usage = next(a for a in build_parser()._actions if a.dest == "command").metavar
    assert sorted(usage.strip("{}").split(",")) == sorted(commands)
    for command in commands:
        alone = choices(build_parser(command))[command]
        assert alone.format_help() == full[command].format_help()
    assert sorted(choices(build_parser("no-such-command"))) == sorted(commands)  # argparse then lists every choice


def test_prune_saves_a_compacted_vit_that_loads_and_is_the_same_for_the_same_seed(capsys, tmp_path):
    """``vizoo prune`` from a random init: the seed fixes the init, so two runs with one seed save the same weights
    (``--latency-weight 0`` ranks by weights removed, which no timing moves); the saved model loads and runs."""
    from safetensors.torch import load_file

    from vizoo.pruning import load_pruned

    argv = ["prune", "vit_tiny_patch16_224", "--img-size", "32", "--calib-count", "2", "--latency-weight", "0"]
    runs = {}
    for stem, seed in (("a", "1"), ("b", "1"), ("c", "2")):
        code, out, _ = _run(capsys, *argv, "--seed", seed, "--output", str(tmp_path / stem))
        assert code == 0 and "params 5.68 M ->" in out and "GMACs" in out
        runs[stem] = load_file(tmp_path / f"{stem}.safetensors")
    assert runs["a"].keys() == runs["b"].keys()
    assert all(torch.equal(runs["a"][key], runs["b"][key]) for key in runs["a"])
    assert any(
        runs["a"][key].shape != runs["c"][key].shape or not torch.equal(runs["a"][key], runs["c"][key])
        for key in runs["a"]
    )
    model = load_pruned(tmp_path / "a")
    with torch.no_grad():
        assert model(torch.randn(1, 3, 32, 32)).shape == (1, 1000)
    assert sum(p.numel() for p in model.parameters()) < 0.7 * 5.68e6

    # the same init given as a checkpoint prunes to the same model
    timm.utils.random_seed(1)
    torch.save(timm.create_model("vit_tiny_patch16_224", img_size=32).state_dict(), tmp_path / "init.pth")
    code, _, _ = _run(capsys, *argv, "--checkpoint", str(tmp_path / "init.pth"), "--output", str(tmp_path / "e"))
    loaded = load_file(tmp_path / "e.safetensors")
    assert code == 0 and all(torch.equal(runs["a"][key], loaded[key]) for key in runs["a"])


def test_prune_refuses_what_it_cannot_prune_and_writes_nothing(capsys, tmp_path):
    (tmp_path / "no_images").mkdir()
    (tmp_path / "corrupt.pth").write_bytes(b"not a checkpoint")
    torch.save(timm.create_model("vit_small_patch16_224", img_size=32).state_dict(), tmp_path / "small.pth")
    tiny = ["vit_tiny_patch16_224", "--img-size", "32"]
    cases = [
        (["vit_tiny_patch16_2244"], "unknown model 'vit_tiny_patch16_2244'"),
        (["test_vmamba"], "take a timm VisionTransformer (ViT/DeiT), got VMamba"),
        ([*tiny, "--calib", str(tmp_path / "no_images")], "has no images"),
        ([*tiny, "--sparsity", "1.5"], "sparsity must be in [0, 1)"),
        ([*tiny, "--checkpoint", str(tmp_path / "missing.pth")], "does not exist; check the path"),
        ([*tiny, "--checkpoint", str(tmp_path / "corrupt.pth")], "it is corrupt, truncated or not a PyTorch"),
        ([*tiny, "--checkpoint", str(tmp_path / "small.pth")], "does not fit vit_tiny_patch16_224:\n"),
    ]
    for args, message in cases:
        code, _, err = _run(capsys, "prune", *args, "--output", str(tmp_path / "out"))
        assert code == 2 and message in err, (args, err)
    assert "size mismatch for pos_embed" in err and "more lines)\nIs it a checkpoint of this variant?" in err
    assert not list(tmp_path.glob("out*"))
