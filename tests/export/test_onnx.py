"""ONNX export: parity in onnxruntime on real images, graph contents, dynamic batch, fp16, int8, mobile, errors,
and tools/benchmark_onnx.py."""

import json
import re
import sys
import time
from collections import Counter

import numpy as np
import onnx
import pytest
import timm
import torch
from PIL import Image

import vizoo  # noqa: F401
from vizoo.data import photo_batch
from vizoo.export import (
    ExportError,
    convert_to_fp16,
    convert_to_ort,
    export_onnx,
    input_shape,
    max_abs_diff,
    mobile_usability,
    quantize_int8,
    run_onnx,
)
from vizoo.export.timing import eager_vs_onnx_ms

SMALL_MODELS = [name for name in vizoo.list_models() if name.startswith("test_")]
FORBIDDEN_OPS = {"Loop", "Scan", "CumSum", "Einsum", "If"}  # no control flow; nothing mobile runtimes lack for scans


@pytest.mark.parametrize("name", SMALL_MODELS)
def test_every_family_exports(name, tmp_path, subtests):
    """The small variant of every family, exported once (one test, so that no two workers export the same model),
    then checked for parity, a plain graph, float16, int8 and the mobile report."""
    model = timm.create_model(name).eval()
    result = export_onnx(model, tmp_path / f"{name}.onnx")
    checks = {
        "parity and dynamic batch on real images": _parity_and_dynamic_batch,
        "plain graph with native LayerNorm": _plain_graph_with_native_layernorm,
        "float16 graph is close": _fp16_graph_is_close,
        "int8 quantization stays close": _int8_quantization_stays_close,
        "mobile report and ORT format": _mobile_report_and_ort_format,
    }
    for check_name, check in checks.items():
        with subtests.test(check_name):
            check(model, result, tmp_path)


def _parity_and_dynamic_batch(model, result, tmp_path):
    assert result.max_abs_diff is not None and result.max_abs_diff <= 1e-4
    for batch in (1, 5):
        images = photo_batch(model.pretrained_cfg["input_size"], count=batch)
        assert max_abs_diff(result.path, model, images) <= 1e-4


def _plain_graph_with_native_layernorm(model, result, tmp_path):
    graph = onnx.load(result.path)
    onnx.checker.check_model(graph)
    ops = {n.op_type for n in graph.graph.node}
    assert not ops & FORBIDDEN_OPS, ops & FORBIDDEN_OPS
    if any(isinstance(m, torch.nn.LayerNorm) for m in model.modules()):
        assert "LayerNormalization" in ops
    assert max(o.version for o in graph.opset_import if o.domain in ("", "ai.onnx")) >= 17
    assert all(o.domain in ("", "ai.onnx") for o in graph.opset_import if o.version)  # no ATen fallback ops


def _fp16_graph_is_close(model, result, tmp_path):
    """The float32 graph converted to float16: float32 in and out, float16 inside, within 5% of eager."""
    path = convert_to_fp16(result.path, tmp_path / "fp16.onnx")
    images = photo_batch(model.pretrained_cfg["input_size"])
    with torch.no_grad():
        expected = model(images).numpy()
    out = run_onnx(path, images)
    assert out.dtype == np.float32
    assert np.abs(out - expected).max() <= 0.05 * np.abs(expected).max()
    assert onnx.TensorProto.FLOAT16 in {t.data_type for t in onnx.load(path).graph.initializer}


def _int8_quantization_stays_close(model, result, tmp_path):
    """Dynamic and calibrated (static) int8 quantization both run and correlate with the float32 graph."""
    images = photo_batch(model.pretrained_cfg["input_size"], count=7)
    fp32 = run_onnx(result.path, images)
    for calibrate in (False, True):
        q_path = quantize_int8(
            result.path, tmp_path / f"q{int(calibrate)}.onnx", calibration=images[:4] if calibrate else None
        )
        ops = {n.op_type for n in onnx.load(q_path).graph.node}
        assert ops & (
            {"QuantizeLinear", "DequantizeLinear"} if calibrate else {"MatMulInteger", "DynamicQuantizeLinear"}
        )
        correlation = np.corrcoef(fp32.ravel(), run_onnx(q_path, images).ravel())[0, 1]
        assert correlation > 0.9, (calibrate, correlation)


def _mobile_report_and_ort_format(model, result, tmp_path):
    report = mobile_usability(result.path)
    assert {"NNAPI", "CoreML MLProgram"} <= set(report)
    fixed = report["CoreML MLProgram (fixed shapes)"]
    assert 0 < fixed["nodes"] <= fixed["total"] and fixed["partitions"] >= 1
    files = convert_to_ort(result.path)
    assert files and all(f.stat().st_size > 0 for f in files)


def test_trained_weights_survive_export(tmp_path):
    """A model whose weights moved away from init (perturbed SSM parameters) keeps parity."""
    model = timm.create_model("test_vmamba", num_classes=3, in_chans=1).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    result = export_onnx(model, tmp_path / "m.onnx", img_size=96, dynamic_batch=False)
    assert result.max_abs_diff <= 1e-4
    assert run_onnx(result.path, torch.randn(1, 1, 96, 96)).shape == (1, 3)


def test_fp16_export_equals_converting_the_float32_graph(tmp_path):
    """``export_onnx(fp16=True)`` writes what ``convert_to_fp16`` makes of the float32 export."""
    model = timm.create_model("test_cas_vit").eval()
    fp32 = export_onnx(model, tmp_path / "fp32.onnx", check=False)
    fp16 = export_onnx(model, tmp_path / "fp16.onnx", fp16=True, check=False)
    converted = convert_to_fp16(fp32.path, tmp_path / "converted.onnx")
    images = photo_batch(model.pretrained_cfg["input_size"])
    np.testing.assert_array_equal(run_onnx(fp16.path, images), run_onnx(converted, images))


def test_vmamba_tiny_graph_size(tmp_path):
    """Issue budget: vmamba_tiny_s1l8 in at most 5,000 nodes after simplification, with parity at 224."""
    result = export_onnx("vmamba_tiny_s1l8", tmp_path / "tiny.onnx", dynamic_batch=False)
    assert result.nodes <= 5000, result.nodes
    assert result.max_abs_diff <= 1e-4


@pytest.fixture(scope="module")
def vmamba_in_onnxruntime(tmp_path_factory):
    """test_vmamba exported at a fixed size, and the graph onnxruntime makes of it (basic and extended fusions):
    (ExportResult, optimized ModelProto)."""
    import onnxruntime as ort

    folder = tmp_path_factory.mktemp("optimized")
    result = export_onnx("test_vmamba", folder / "v.onnx", dynamic_batch=False)
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    options.optimized_model_filepath = str(folder / "optimized.onnx")
    ort.InferenceSession(result.path, options, providers=["CPUExecutionProvider"])
    return result, onnx.load(options.optimized_model_filepath)


def test_onnxruntime_keeps_the_route_transposes_block_moves(vmamba_in_onnxruntime):
    """The SS2D map's move to channel-last and the routes' step-major Transposes stay apart in onnxruntime's optimized
    graph (``keep_block_transposes``): no Transpose of rank 5 there moves the channel axis of a channel-first map to
    the innermost place, which copies value by value."""
    result, optimized = vmamba_in_onnxruntime
    perms = [
        list(attribute.ints)
        for node in optimized.graph.node
        if node.op_type == "Transpose"
        for attribute in node.attribute
        if attribute.name == "perm"
    ]
    blocks = sum(len(stage.blocks) for stage in timm.create_model("test_vmamba").stages)
    routes = [perm for perm in perms if perm in ([0, 3, 1, 2, 4], [0, 2, 3, 1, 4])]  # rows, columns; pixels move whole
    assert len(routes) >= 2 * blocks, perms
    assert not [perm for perm in perms if len(perm) == 5 and perm[-1] == 1], perms
    assert result.op_counts["Flatten"] == blocks
    assert result.max_abs_diff <= 1e-4


def test_onnxruntime_fuses_every_exact_gelu(vmamba_in_onnxruntime):
    """``order_gelu_for_fusion``: each MLP's exact GELU becomes one fused Gelu node in onnxruntime."""
    result, optimized = vmamba_in_onnxruntime
    ops = Counter(node.op_type for node in optimized.graph.node)
    assert result.op_counts["Erf"] > 0 and ops["Erf"] == 0 and ops["Gelu"] == result.op_counts["Erf"], ops


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(model="vmamba_tinyy"), "unknown model 'vmamba_tinyy'. Did you mean"),
        (dict(model="test_vmamba", img_size=70), "divisible by 32, got 70x70"),
        (dict(model="test_vmamba", opset=13), "opset 13 is too old"),
    ],
)
def test_bad_requests_say_what_to_do(tmp_path, kwargs, message):
    with pytest.raises((ExportError, ValueError), match=message):
        export_onnx(output=tmp_path / "x.onnx", **kwargs)


def test_cli_export_and_calibration_errors(tmp_path, capsys):
    from vizoo.cli import main

    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["export", "test_cas_vit", "--output", str(tmp_path / "a.onnx"), "--int8", str(empty)]) == 2
    assert "has no images" in capsys.readouterr().err
    calib = tmp_path / "calib"
    calib.mkdir()
    for i, img in enumerate(photo_batch((3, 80, 80), count=2)):
        Image.fromarray((img.permute(1, 2, 0).numpy() * 50 + 128).clip(0, 255).astype(np.uint8)).save(
            calib / f"{i}.png"
        )
    code = main(["export", "test_cas_vit", "--output", str(tmp_path / "b.onnx"), "--int8", str(calib)])
    out = capsys.readouterr().out
    assert code == 0 and "max abs diff" in out and "int8, static QDQ, 2 calibration images" in out
    assert (tmp_path / "b.int8.onnx").exists()


def test_cli_export_checks_parity_without_scikit_image(tmp_path, capsys, monkeypatch):
    """Only the demo extra installs scikit-image: with the onnx extra alone, `vizoo export` checks parity on
    synthetic images instead of failing on the import."""
    from vizoo.cli import main

    for name in [m for m in sys.modules if m.split(".")[0] == "skimage"] + ["skimage"]:
        monkeypatch.setitem(sys.modules, name, None)  # as if not installed: importing it raises ImportError
    with pytest.raises(ImportError):
        photo_batch((3, 32, 32), count=1)
    assert main(["export", "test_cas_vit", "--output", str(tmp_path / "m.onnx")]) == 0
    diff = float(re.search(r"max abs diff (\S+)", capsys.readouterr().out).group(1))
    assert diff <= 1e-4


def test_primitive_layernorm_is_exact():
    from timm.layers import LayerNorm2d

    from vizoo.export.mobile import PrimitiveLayerNorm

    norm, norm2d, rms = torch.nn.LayerNorm(12), LayerNorm2d(12), torch.nn.RMSNorm(12)
    for n in (norm, norm2d, rms):
        torch.nn.init.normal_(n.weight)
    for n in (norm, norm2d):
        torch.nn.init.normal_(n.bias)
    x = torch.randn(2, 5, 7, 12) * 3 + 1
    torch.testing.assert_close(PrimitiveLayerNorm(norm)(x), norm(x), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(PrimitiveLayerNorm(rms)(x), rms(x), rtol=1e-5, atol=1e-5)
    x = x.permute(0, 3, 1, 2)
    torch.testing.assert_close(PrimitiveLayerNorm(norm2d, channel_dim=1)(x), norm2d(x), rtol=1e-5, atol=1e-5)


NNAPI_LACKS = {
    "Erf", "LayerNormalization", "Softplus", "Greater", "Where", "ReduceSum", "Reciprocal", "Expand", "Sign",
    "ReduceL2", "ConvTranspose", "CastLike",
}  # fmt: skip
MOBILE_WHOLE_ON_NNAPI = [
    "test_vmamba", "test_mala", "test_mlla", "test_vssd", "test_spatial_mamba", "test_pvt_v2_ecoformer",
    "test_mobilemamba", "test_mambavision", "test_groupmamba", "test_efficient_vim", "test_vrwkv",
]  # fmt: skip


def clip_bounds(path) -> list[tuple[float | None, float | None]]:
    """(min, max) of every Clip node in the ONNX file (None where the bound is absent)."""
    from onnx import numpy_helper

    graph = onnx.load(path).graph
    constants = {t.name: numpy_helper.to_array(t).item() for t in graph.initializer if t.dims in ([], [1])}
    return [
        tuple(constants.get(name) if name else None for name in (list(node.input[1:]) + ["", ""])[:2])
        for node in graph.node
        if node.op_type == "Clip"
    ]


@pytest.mark.parametrize("name", MOBILE_WHOLE_ON_NNAPI)
def test_mobile_graph_runs_whole_on_nnapi(tmp_path, name):
    """--mobile: every node on NNAPI in one partition (scans, linear-attention normalisers and shared heads included);
    for VMamba, CoreML MLProgram lacks only Log (one per block's softplus)."""
    model = timm.create_model(name).eval()
    result = export_onnx(model, tmp_path / "mobile.onnx", dynamic_batch=False, mobile=True)
    assert result.max_abs_diff <= 5e-3
    assert not set(result.op_counts) & NNAPI_LACKS, result.op_counts
    # onnxruntime's NNAPI EP maps Clip to ReLU6 or ReLU1 only, which the usability checker does not check
    assert set(clip_bounds(result.path)) <= {(0.0, 6.0), (-1.0, 1.0)}, clip_bounds(result.path)
    report = mobile_usability(result.path)
    assert report["NNAPI"]["nodes"] == report["NNAPI"]["total"] and report["NNAPI"]["partitions"] == 1, report
    if name == "test_vmamba":
        assert not set(result.op_counts) & {"Pad", "Gather"}  # the scan pads by Concat and steps by Split
        blocks = sum(len(stage.blocks) for stage in model.stages)
        coreml = report["CoreML MLProgram"]
        assert coreml["total"] - coreml["nodes"] == blocks and coreml["partitions"] <= blocks + 1


def test_msvmamba_mobile_graph_leaves_nnapi_only_its_resizes(tmp_path):
    """The checker counts MSVMamba's upsampling Resize nodes as dynamic-shape: their roi and scales inputs are empty,
    as ONNX allows when sizes are given, and the checker reads an empty input as one of unknown shape. onnxruntime's
    NNAPI EP takes a 4-D Resize with constant sizes in linear half_pixel mode (Android API 30+). Every other node is
    taken."""
    from onnx import numpy_helper

    result = export_onnx(
        timm.create_model("test_msvmamba").eval(), tmp_path / "m.onnx", dynamic_batch=False, mobile=True
    )
    graph = onnx.load(result.path).graph
    initializers = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    resizes = [node for node in graph.node if node.op_type == "Resize"]
    report = mobile_usability(result.path)["NNAPI"]
    assert report["total"] - report["nodes"] == len(resizes) > 0, report
    for node in resizes:
        attributes = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        assert attributes["mode"] == b"linear" and attributes["coordinate_transformation_mode"] == b"half_pixel"
        assert list(node.input[1:3]) == ["", ""] and initializers[node.input[3]].shape == (4,)


def test_eager_and_onnx_latencies_are_each_measured(tmp_path):
    """Alternating blocks time each runtime on its own: an eager model that sleeps 30 ms per pass reads >= 30 ms,
    while the graph exported from the same model without the sleep runs far faster."""

    class Sleepy(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.net = torch.nn.Conv2d(3, 4, 3)

        def forward(self, x):
            if not torch.compiler.is_compiling() and not torch.jit.is_tracing():
                time.sleep(0.03)
            return self.net(x).mean((2, 3))

    model = Sleepy().eval()
    path = export_onnx(model.net, tmp_path / "conv.onnx", img_size=32, check=False).path
    latency = eager_vs_onnx_ms(model, path, torch.randn(1, 3, 32, 32), rounds=3, passes=3)
    assert latency.eager_ms >= 30 and 0 < latency.onnx_ms < 10 and latency.ratio < 1 / 3
    # one ratio per round, each from that round's two blocks
    assert len(latency.round_ratios) == 3 and all(0 < ratio < 1 / 3 for ratio in latency.round_ratios)


@pytest.fixture(scope="module")
def tool(load_tool):
    return load_tool("benchmark_onnx")


def test_benchmark_tool_reports_parity_and_refuses_unknown_names(tool, capsys):
    assert tool.main(["--rounds", "1", "test_vmam*"]) == 0
    row = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("test_vmamba "))
    nodes, parity, output_size, eager_ms, ort_ms, ratio, spread = row.split()[2:]
    assert float(parity) <= 1e-4 < float(output_size) and float(eager_ms) > 0 and float(ort_ms) > 0
    # the times are printed to 0.1 ms and the ratio to 0.01: it must lie in the range those roundings allow
    eager_ms, ort_ms = float(eager_ms), float(ort_ms)
    assert (
        (ort_ms - 0.05) / (eager_ms + 0.05) - 0.005
        <= float(ratio.rstrip("x"))
        <= (ort_ms + 0.05) / (eager_ms - 0.05) + 0.005
    )
    assert spread == f"{ratio.rstrip('x')}-{ratio.rstrip('x')}"  # one round: its ratio is the lowest and the highest
    assert tool.main(["--parity-only", "--tolerance", "0", "test_vmamba"]) == 1  # parity above 0 fails the run
    assert tool.main(["--parity-only", "--profile", "test_vmamba"]) == 0
    lines = capsys.readouterr().out.splitlines()
    summary = next(i for i, line in enumerate(lines) if "ORT profile:" in line)
    total, gflop, rate, share, peak = re.search(
        r"([\d.]+) ms per pass in nodes; matrix products ([\d.]+) GFLOP at (\d+) GFLOP/s, (\d+)% of .* (\d+) here",
        lines[summary],
    ).groups()
    assert float(gflop) > 0 and abs(float(rate) / float(peak) - float(share) / 100) < 0.01 + 1 / float(peak)
    rows = [re.match(r" {4}(.+?) +([\d.]+) ms +([\d.]+)%", line) for line in lines[summary + 1 :]]
    rows = [row.groups() for row in rows[: next((i for i, row in enumerate(rows) if row is None), len(rows))]]
    assert "Mul" in [op for op, _, _ in rows]  # the scan's elementwise products
    assert abs(sum(float(ms) for _, ms, _ in rows) - float(total)) <= 0.005 * len(rows) + 0.05
    assert abs(sum(float(pct) for _, _, pct in rows) - 100) <= 0.05 * len(rows)
    with pytest.raises(SystemExit):
        tool.main(["no_such_model*"])
    assert "no vizoo or timm model matches 'no_such_model*'" in capsys.readouterr().err


def test_benchmark_tool_compares_int8_with_fp32(tool, capsys):
    """--int8: both int8 graphs are timed against fp32 onnxruntime and stay close to it on held-out photos."""
    assert tool.main(["--rounds", "1", "--int8", "test_cas_vit"]) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if line.lstrip().startswith("int8")]
    assert [row.split()[1] for row in rows] == ["dynamic", "static"]
    for row in rows:
        m = re.search(r"([\d.]+) ms = ([\d.]+)x fp32 ORT \(([\d.]+) ms\).* max change ([\d.]+)% .* kept (\d)/4", row)
        assert m and float(m[1]) > 0 and float(m[3]) > 0 and float(m[4]) < 25, row


def test_benchmark_tool_takes_pruned_vits(tool, tmp_path, capsys):
    """The pruned-ViT family: a compacted ViT saved by save_pruned, and token merging/pruning applied by flags."""
    from vizoo.pruning import block_prune, save_pruned

    args = dict(img_size=32, patch_size=4, embed_dim=64, depth=2, num_heads=2, num_classes=5)
    vit = timm.create_model("vit_tiny_patch16_224", **args).eval()
    block_prune(vit, 0.5, [torch.randn(2, 3, 32, 32)], block=(32, 32), latency=None)
    save_pruned(vit, tmp_path / "vit_50")
    stem = str(tmp_path / "vit_50")
    assert tool.main(["--rounds", "1", stem]) == 0
    assert tool.main(["--parity-only", "--tome", "4", stem]) == 0
    assert tool.main(["--parity-only", "--keep-rate", "0.5", stem]) == 0
    assert tool.main(["--parity-only", "--keep-rate", "0.8", "test_vim"]) == 0  # Vim: hidden-state-aligned pruning
    assert tool.main(["--parity-only", "test_vim"]) == 0
    rows = {line.split()[0]: line.split() for line in capsys.readouterr().out.splitlines()}
    assert {"vit_50", "vit_50+tome4", "vit_50+keep0.5", "test_vim+keep0.8"} <= rows.keys()
    assert rows["test_vim+keep0.8"][2] != rows["test_vim"][2]
    assert float(rows["vit_50"][6]) > 0 and rows["vit_50+tome4"][1] == "3x32x32"
    # ToMe's merge and EViT's fused token make graphs that differ from the plain one
    assert len({rows[label][2] for label in ("vit_50", "vit_50+tome4", "vit_50+keep0.5")}) == 3
    with pytest.raises(SystemExit):
        tool.main(["--tome", "4", "test_vmamba"])
    assert "test_vmamba: " in (err := capsys.readouterr().err) and "VisionTransformer (ViT/DeiT), got VMamba" in err
    with pytest.raises(SystemExit):
        tool.main([str(tmp_path / "missing")])
    assert "not a pruned model saved by `vizoo prune`" in capsys.readouterr().err
    meta = json.loads((tmp_path / "vit_50.json").read_text())
    meta["widths"][0]["mlp_hidden"] += 32
    (tmp_path / "vit_50.json").write_text(json.dumps(meta))
    with pytest.raises(SystemExit):  # widths that do not match the weights
        tool.main([stem])
    assert "vit_50: Error(s) in loading state_dict" in capsys.readouterr().err


def test_input_shape_of_a_timm_vit_built_at_another_size():
    """timm keeps the architecture's 224 cfg for a ViT built at 32; its patch embedding's fixed size decides."""
    vit = timm.create_model("vit_tiny_patch16_224", img_size=32, patch_size=4, depth=1)
    assert vit.pretrained_cfg["input_size"] == (3, 224, 224)
    assert input_shape(vit, None) == (3, 32, 32) and input_shape(vit, 64) == (3, 64, 64)
    model = timm.create_model("test_vmamba")
    assert input_shape(model, None) == model.pretrained_cfg["input_size"]
