"""One prepared GPU check of vizoo's Triton kernels and models: tests, parity, overflow, speed, training, compile.

Made for a short loan of a CUDA machine (an H100 in mind: the sections fit in about 8 minutes). Every section runs in
turn, each in its own try, and the JSON file is rewritten after each one, so a section that breaks or a run cut short
still leaves what was measured. Sections, in the order they run:

  parity    Triton against the torch path at real layer sizes (VMamba-T stage 1, vanilla VMamba's d_state 16,
            Vim-S with its gate, MLLA-T stage 1, VSSD's shared-head form, packed sequences, Vision-RWKV-T's Bi-WKV):
            outputs and every input's gradient, fp32 and bf16, as the largest difference relative to the largest value.
  sweep     the same ops in bf16 on inputs scaled x100: Triton's outputs and gradients must be finite wherever the
            torch path's are.
  tests     pytest tests/kernels on CUDA (the kernel tests pick the GPU when there is one), with a JUnit summary.
  train     50 steps of vmamba_tiny_s1l8 with the Triton kernels on generated class-coloured images (the loss must
            stay finite and fall), and the first step's gradients against the torch path's, in fp32.
  kernels   tools/benchmark_kernels.py --quick --no-models: kernel times and their share of copy bandwidth.
  models    vmamba_tiny_s1l8 (Triton and torch backends) against swin_tiny_patch4_window7_224: inference and
            training images/s at batch 128, bf16 autocast, in the same process.
  sparse    DeiT-S block-pruned 50% in 32x32 tiles: the block-sparse (BSR) and 2:4 semi-structured forms of
            ``vizoo.pruning.to_block_sparse`` against the masked dense model, fp16, batch 64.
  compile   torch.compile of vmamba_tiny_s1l8 for inference: compile time, speed-up over eager, largest difference.

    python tools/gpu_check.py OUT_DIR                      # everything; OUT_DIR/gpu_check.json
    python tools/gpu_check.py OUT_DIR --sections parity train
    python tools/gpu_check.py OUT_DIR --budget-s 300       # skip the sections that would start after 300 s

It runs from a checkout with nothing installed (``PYTHONPATH=.``); it needs torch, triton and timm, and pytest (with
pytest-xdist and hypothesis) for the tests section. Without CUDA it says so and exits with code 2. Exit code 1 when a
check failed or a section raised, else 0.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
import traceback
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import timm
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchmark_kernels, beside this file

import benchmark_kernels  # noqa: E402

import vizoo  # noqa: E402,F401  (registers the models)
from vizoo.kernels import (  # noqa: E402
    bi_wkv,
    cross_merge,
    cross_scan,
    cross_selective_scan,
    force_backend,
    linear_attention,
    selective_scan,
)
from vizoo.kernels.backend import interpreter_enabled  # noqa: E402
from vizoo.pruning import block_prune, to_block_sparse  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SECTION_ORDER = ("parity", "sweep", "tests", "train", "kernels", "models", "sparse", "compile")
#: Largest difference relative to the largest reference value that passes parity: fp32 outputs, fp32 gradients
#: (sums over batch and sequence round differently in the two paths), and anything in bf16 (8 bits of mantissa).
TOLERANCE = {"fp32 out": 1e-4, "fp32 grad": 1e-3, "bf16": 2e-2}
#: Models each section builds (the import test on CPU builds them too).
MODELS = ("vmamba_tiny_s1l8", "swin_tiny_patch4_window7_224", "deit_small_patch16_224")


@dataclass(frozen=True)
class Sizes:
    """Layer sizes of the kernel cases. ``real`` are the sizes the models run at; ``tiny`` runs on the CPU in tests."""

    batch: int = 16  # VMamba-T stage 1 at d_state 1
    batch_n16: int = 4  # d_state 16: the torch path holds n times more per step
    channels: int = 192  # per route
    side: int = 56
    vim_channels: int = 768  # Vim-S: d_inner = 2 x 384
    vim_length: int = 197
    heads: int = 2  # MLLA-T stage 1: dim 64 in 2 heads of 32
    head_dim: int = 32
    packed: tuple[int, ...] = (197, 50, 1, 3136)  # token-pruned or mixed-resolution batches

    @classmethod
    def tiny(cls) -> Sizes:
        return cls(
            batch=2,
            batch_n16=1,
            channels=3,
            side=5,
            vim_channels=6,
            vim_length=13,
            heads=2,
            head_dim=4,
            packed=(7, 1, 4),
        )


# --------------------------------------------------------------------------------------------------- kernel cases


@dataclass
class Case:
    """One kernel call: ``fn(backend=..., **inputs)``; ``inputs`` holds every tensor, float ones get gradients."""

    name: str
    fn: Callable
    inputs: dict


def kernel_cases(sizes: Sizes, dtype: torch.dtype, device: str, scale: float = 1.0) -> Iterator[Case]:
    """The shared kernels as the model families call them, data in ``dtype`` (parameters fp32), data times ``scale``."""
    g = torch.Generator(device=device).manual_seed(0)

    def data(*shape, offset=0.0):
        return ((torch.randn(*shape, device=device, generator=g) + offset) * scale).to(dtype)

    def param(*shape):
        return torch.randn(*shape, device=device, generator=g)

    def scan(b, d, length, groups, n, gate):
        return dict(
            u=data(b, d, length),
            delta=data(b, d, length, offset=-2.0),
            A=-torch.rand(d, n, device=device, generator=g) - 0.1,
            B=data(b, groups, n, length),
            C=data(b, groups, n, length),
            D=param(d),
            z=data(b, d, length) if gate else None,
            delta_bias=param(d) * 0.1,
        )

    def scan_fn(backend, **t):
        return selective_scan(**t, delta_softplus=True, backend=backend)

    side, c = sizes.side, sizes.channels
    yield Case("selective_scan vmamba n=1", scan_fn, scan(sizes.batch, 4 * c, side * side, 4, 1, False))
    yield Case("selective_scan vmamba n=16", scan_fn, scan(sizes.batch_n16, 4 * c, side * side, 4, 16, False))
    yield Case(
        "selective_scan vim n=16 gated", scan_fn, scan(sizes.batch, sizes.vim_channels, sizes.vim_length, 1, 16, True)
    )

    s = scan(sizes.batch, 4 * c, side * side, 4, 1, False)
    fused = dict(
        x=data(sizes.batch, side, side, c).permute(0, 3, 1, 2),  # channel-last data seen as (b, d, h, w)
        delta=s["delta"].unflatten(1, (4, c)),
        **{k: s[k] for k in ("A", "B", "C", "D", "delta_bias")},
    )
    yield Case(
        "cross_selective_scan vmamba n=1",
        lambda backend, **t: cross_selective_scan(**t, delta_softplus=True, out_channel_first=False, backend=backend),
        fused,
    )
    yield Case("cross_scan", lambda backend, x: cross_scan(x, backend=backend), dict(x=fused["x"]))
    y = data(sizes.batch, 4, c, side, side)
    yield Case("cross_merge", lambda backend, y: cross_merge(y, backend=backend), dict(y=y))

    b, h, n, d = sizes.batch, sizes.heads, side * side, sizes.head_dim
    qkv = dict(
        q=F.elu(data(b, h, n, d).float()).to(dtype) + 1,
        k=F.elu(data(b, h, n, d).float()).to(dtype) + 1,
        v=data(b, h, n, d),
    )
    yield Case(
        "linear_attention mlla",
        lambda backend, **t: linear_attention(**t, kv_scale="mean", backend=backend),
        qkv,
    )
    shared = dict(q=data(b, 1, n, d), k=data(b, 1, n, d), v=data(b, h, n, 2 * d), weights=data(b, h, n).abs())
    yield Case(
        "linear_attention vssd shared head",
        lambda backend, **t: linear_attention(**t, normalize=False, kv_scale="mean", backend=backend),
        shared,
    )
    total = sum(sizes.packed)
    cu = torch.tensor([0, *torch.tensor(sizes.packed).cumsum(0).tolist()], dtype=torch.int32, device=device)
    packed = {k: torch.relu(data(1, h, total, d)) + 0.1 * scale for k in ("q", "k")}
    yield Case(
        "linear_attention packed",
        lambda backend, **t: linear_attention(**t, cu_seqlens=cu, backend=backend),
        dict(packed, v=data(1, h, total, d)),
    )
    tokens = max(side // 4, 2) ** 2  # Vision-RWKV-T: 16-pixel patches, 14 x 14 tokens of 192 channels at 224²
    yield Case(
        "bi_wkv vrwkv",
        lambda backend, **t: bi_wkv(**t, backend=backend),
        dict(w=param(c) / tokens, u=param(c) / tokens, k=data(sizes.batch, tokens, c), v=data(sizes.batch, tokens, c)),
    )


def run_case(case: Case, backend: str, grad_out: torch.Tensor | None = None):
    """(output, {input name: gradient}) of one backend, on fresh leaves; ``grad_out`` defaults to a fixed random one."""
    leaves = {
        k: v.detach().clone().requires_grad_(v.is_floating_point()) if isinstance(v, torch.Tensor) else v
        for k, v in case.inputs.items()
    }
    out = case.fn(backend, **leaves)
    if grad_out is None:
        gen = torch.Generator(device=out.device).manual_seed(1)
        grad_out = torch.randn(out.shape, device=out.device, generator=gen).to(out.dtype)
    wrt = {k: v for k, v in leaves.items() if isinstance(v, torch.Tensor) and v.requires_grad}
    grads = torch.autograd.grad(out, list(wrt.values()), grad_out, allow_unused=True)
    return out.detach(), dict(zip(wrt, grads))


def relative_difference(a: torch.Tensor | None, b: torch.Tensor | None) -> float:
    """max |a - b| / max |b| in fp32 (0 when both are absent or b is all zero and a equals it)."""
    if a is None or b is None:
        return 0.0 if a is None and b is None else math.inf
    a, b = a.float(), b.float()
    scale = b.abs().max().item()
    diff = (a - b).abs().max().item()
    return diff / scale if scale > 0 else diff


def is_finite(t: torch.Tensor | None) -> bool:
    return t is None or bool(torch.isfinite(t).all())


def parity(sizes: Sizes, device: str) -> dict:
    """Triton against the torch path, each case in fp32 and bf16; passes when every difference is in TOLERANCE."""
    rows, passed = [], True
    for dtype, label in ((torch.float32, "fp32"), (torch.bfloat16, "bf16")):
        for case in kernel_cases(sizes, dtype, device):
            fast_out, fast_grads = run_case(case, "triton")
            ref_out, ref_grads = run_case(case, "torch")
            grads = {k: relative_difference(fast_grads[k], ref_grads[k]) for k in ref_grads}
            out_diff = relative_difference(fast_out, ref_out)
            worst = max(grads, key=grads.get) if grads else None
            ok = out_diff <= TOLERANCE[f"{label} out" if label == "fp32" else label] and all(
                v <= TOLERANCE["fp32 grad" if label == "fp32" else label] for v in grads.values()
            )
            passed &= ok
            rows.append(
                dict(
                    case=case.name,
                    dtype=label,
                    out=out_diff,
                    worst_grad=worst,
                    worst_grad_diff=grads.get(worst, 0.0),
                    grads=grads,
                    passed=ok,
                )
            )
            del fast_out, fast_grads, ref_out, ref_grads
            _empty_cache(device)
    return dict(passed=passed, tolerance=TOLERANCE, rows=rows)


def overflow_sweep(sizes: Sizes, device: str, scale: float = 100.0) -> dict:
    """bf16 inputs times ``scale``: Triton's output and gradients finite wherever the torch path's are."""
    rows, passed = [], True
    for case in kernel_cases(sizes, torch.bfloat16, device, scale=scale):
        fast_out, fast_grads = run_case(case, "triton")
        ref_out, ref_grads = run_case(case, "torch")
        fast = {"out": is_finite(fast_out), **{k: is_finite(v) for k, v in fast_grads.items()}}
        ref = {"out": is_finite(ref_out), **{k: is_finite(v) for k, v in ref_grads.items()}}
        broken = [k for k in ref if ref[k] and not fast[k]]
        passed &= not broken
        rows.append(dict(case=case.name, triton_finite=fast, torch_finite=ref, triton_only_nonfinite=broken))
        _empty_cache(device)
    return dict(passed=passed, scale=scale, rows=rows)


# ----------------------------------------------------------------------------------------------------- the tests


def kernel_tests(
    out_dir: Path, timeout_s: float, workers: int = 8, paths: tuple[str, ...] = ("tests/kernels",)
) -> dict:
    """pytest ``paths`` in a subprocess (on the GPU there: the kernel tests pick CUDA when it is available)."""
    report = out_dir / "kernel_tests.xml"
    command = [sys.executable, "-m", "pytest", *paths, "-q", "-p", "no:cacheprovider", f"--junitxml={report}"]
    if workers > 1:
        command += ["-n", str(workers)]
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}  # a session of its own
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    try:
        proc = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout_s)
        returncode, tail = proc.returncode, (proc.stdout + proc.stderr)[-3000:]
    except subprocess.TimeoutExpired as e:
        returncode, tail = None, f"timed out after {timeout_s:.0f} s\n" + _text(e.stdout)[-3000:]
    result = dict(returncode=returncode, output_tail=tail, **junit_summary(report))
    result["passed"] = returncode == 0
    return result


def junit_summary(path: Path) -> dict:
    """Counts and the failing test ids with the first lines of their messages, from a pytest JUnit XML file."""
    if not path.exists():
        return dict(tests=0, failures=0, errors=0, skipped=0, failed=[])
    root = ET.parse(path).getroot()
    suites = [root] if root.tag == "testsuite" else list(root)
    counts = {k: sum(int(s.get(k, 0)) for s in suites) for k in ("tests", "failures", "errors", "skipped")}
    failed = []
    for case in root.iter("testcase"):
        problem = case.find("failure")
        problem = problem if problem is not None else case.find("error")
        if problem is not None:
            message = (problem.get("message") or problem.text or "").strip().splitlines()
            failed.append(f"{case.get('classname')}::{case.get('name')}: {' '.join(message[:2])[:300]}")
    return dict(counts, failed=failed)


# ------------------------------------------------------------------------------------------------------- training


def class_images(batch: int, classes: int, size: int, device: str, seed: int = 0):
    """Generated images a model can learn: noise plus a colour and a stripe period that depend on the class."""
    g = torch.Generator(device=device).manual_seed(seed)
    labels = torch.arange(batch, device=device) % classes
    colours = torch.rand(classes, 3, 1, 1, device=device, generator=g) * 2 - 1
    rows = torch.arange(size, device=device).float()
    stripes = torch.sin(rows[None, :, None] * (labels[:, None, None] + 1).float() * math.pi / size)
    images = torch.randn(batch, 3, size, size, device=device, generator=g) * 0.5 + colours[labels]
    return images + stripes[:, None], labels


def training(
    model_name: str, steps: int, batch: int, size: int, device: str, grad_batch: int, backend: str = "triton"
) -> dict:
    """``steps`` AdamW steps with the kernels' ``backend`` (bf16 autocast on CUDA), with first the first-step
    gradients in fp32 against the torch backend's, from the same weights and batch."""
    torch.manual_seed(0)
    model = timm.create_model(model_name, num_classes=10, drop_path_rate=0.0).to(device)
    initial = copy.deepcopy(model.state_dict())
    grads = first_step_gradients(model, initial, grad_batch, size, device, backend)

    images, labels = class_images(batch, 10, size, device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.05)
    losses = []
    model.load_state_dict(initial)
    model.train()
    with force_backend(backend):
        for _ in range(steps):
            with torch.autocast(device, dtype=torch.bfloat16, enabled=device == "cuda"):
                loss = F.cross_entropy(model(images), labels)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            losses.append(loss.item())
    window = max(1, steps // 5)
    first, last = statistics.mean(losses[:window]), statistics.mean(losses[-window:])
    finite = all(math.isfinite(v) for v in losses)
    passed = finite and last < first and grads["passed"]
    return dict(
        passed=passed,
        model=model_name,
        steps=steps,
        batch=batch,
        losses=losses,
        loss_first=first,
        loss_last=last,
        finite=finite,
        gradients=grads,
    )


def first_step_gradients(
    model, state: dict, batch: int, size: int, device: str, backend: str, tolerance: float = 1e-3
) -> dict:
    """Relative difference ``|g_backend - g_torch| / |g_torch|`` (2-norms) of every parameter's gradient, fp32, one
    batch; parameters whose gradient is under 1e-6 of the largest one are left out (their ratio is rounding)."""
    images, labels = class_images(batch, 10, size, device, seed=1)
    tf32 = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        grads = {}
        for name in (backend, "torch"):
            model.load_state_dict(state)
            model.zero_grad(set_to_none=True)
            with force_backend(name):
                F.cross_entropy(model.train()(images), labels).backward()
            grads[name] = {k: p.grad.detach().clone() for k, p in model.named_parameters() if p.grad is not None}
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = tf32
    norms = {k: g.norm().item() for k, g in grads["torch"].items()}
    floor = 1e-6 * max(norms.values())
    ratios = {
        k: ((grads[backend][k] - g).norm() / norms[k]).item() for k, g in grads["torch"].items() if norms[k] > floor
    }
    missing = sorted(set(grads["torch"]) ^ set(grads[backend]))
    worst = max(ratios, key=ratios.get)
    return dict(
        passed=not missing and ratios[worst] <= tolerance,
        tolerance=tolerance,
        compared=len(ratios),
        worst=worst,
        worst_ratio=ratios[worst],
        median_ratio=statistics.median(ratios.values()),
        missing=missing,
    )


# --------------------------------------------------------------------------------------------------- speed (CUDA)


def kernel_benchmark(out_dir: Path) -> dict:
    path = out_dir / "benchmark_kernels.json"
    code = benchmark_kernels.main(["--quick", "--no-models", "--json", str(path)])
    result = json.loads(path.read_text()) if path.exists() else {}
    return dict(returncode=code, **result)


def model_throughput(repeats: int = 5) -> dict:
    """Inference and training images/s of VMamba-T (s1l8) on both backends and of Swin-T, one process."""
    rows = dict(benchmark_kernels.model_rows(repeats))
    ratios = benchmark_kernels.model_ratios(rows)
    goals = {k: benchmark_kernels.GOALS[k] for k in ratios}
    return dict(batch=benchmark_kernels.BATCH, images_per_s=rows, ratios=ratios, goals=goals)


def block_sparse(batch: int = 64, sparsity: float = 0.5, block: tuple[int, int] = (32, 32)) -> dict:
    """DeiT-S with 50% of its block tiles masked: masked dense, BSR and 2:4 forms, fp16 inference time and error."""
    torch.manual_seed(0)
    masked = timm.create_model("deit_small_patch16_224").cuda().eval()
    calibration = [(torch.randn(8, 3, 224, 224, device="cuda"), torch.randint(0, 1000, (8,), device="cuda"))]
    block_prune(masked, sparsity, calibration, block, structure="block", latency=None)
    masked = masked.half()
    x = torch.randn(batch, 3, 224, 224, device="cuda", dtype=torch.half)
    with torch.inference_mode():
        reference = masked(x).float()
        dense_ms = benchmark_kernels.bench_ms(lambda: masked(x), 20)
    result = dict(batch=batch, sparsity=masked.pruning_report["sparsity"], block=block, dense_fp16_ms=dense_ms)
    for label, semi in (("bsr", False), ("2:4", True)):
        try:
            model = to_block_sparse(copy.deepcopy(masked), block, semi_structured=semi)
            with torch.inference_mode():
                out = model(x).float()
                ms = benchmark_kernels.bench_ms(lambda model=model: model(x), 20)
            result[label] = dict(ms=ms, speedup=dense_ms / ms, max_abs_diff=(out - reference).abs().max().item())
        except Exception as e:  # a form torch cannot run here is a finding, not the end of the section
            result[label] = dict(error=f"{type(e).__name__}: {e}"[:500])
        torch.cuda.empty_cache()
    result["note"] = "2:4 also zeroes 2 of every 4 kept weights, so its output differs from the masked model's"
    return result


def compile_speedup(batch: int = 64) -> dict:
    """Eager against torch.compile (inductor) for vmamba_tiny_s1l8 inference with bf16 autocast."""
    torch.manual_seed(0)
    model = timm.create_model("vmamba_tiny_s1l8").cuda().eval()
    x = torch.randn(batch, 3, 224, 224, device="cuda")

    def infer(m):
        with torch.inference_mode(), torch.autocast("cuda", dtype=torch.bfloat16):
            return m(x)

    eager_out = infer(model).float()
    eager_ms = benchmark_kernels.bench_ms(lambda: infer(model), 20)
    compiled = torch.compile(model)
    start = time.perf_counter()
    compiled_out = infer(compiled).float()
    torch.cuda.synchronize()
    compile_s = time.perf_counter() - start
    compiled_ms = benchmark_kernels.bench_ms(lambda: infer(compiled), 20)
    return dict(
        batch=batch,
        eager_ms=eager_ms,
        compiled_ms=compiled_ms,
        speedup=eager_ms / compiled_ms,
        compile_s=compile_s,
        max_abs_diff=(compiled_out - eager_out).abs().max().item(),
        logit_scale=eager_out.abs().max().item(),
    )


# ------------------------------------------------------------------------------------------------------------ main


def environment() -> dict:
    import triton

    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    return dict(
        device=torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
        torch=torch.__version__,
        triton=triton.__version__,
        timm=timm.__version__,
        cuda=torch.version.cuda,
        python=platform.python_version(),
        commit=commit or None,
    )


def sections(args, out_dir: Path, started: float) -> dict[str, Callable[[], dict]]:
    real = Sizes()
    return {
        "parity": lambda: parity(real, "cuda"),
        "sweep": lambda: overflow_sweep(real, "cuda"),
        "tests": lambda: kernel_tests(out_dir, min(args.tests_timeout_s, _left(args, started)), args.workers),
        "train": lambda: training("vmamba_tiny_s1l8", args.train_steps, 64, 224, "cuda", grad_batch=8),
        "kernels": lambda: kernel_benchmark(out_dir),
        "models": lambda: model_throughput(),
        "sparse": lambda: block_sparse(),
        "compile": lambda: compile_speedup(),
    }


def run_section(fn: Callable[[], dict]) -> dict:
    """{status, seconds, result | error}: "passed" / "failed" for a check, "measured" for figures, "error" if it
    raised."""
    start = time.perf_counter()
    try:
        result = fn()
        status = {True: "passed", False: "failed"}.get(result.get("passed"), "measured")
        entry = dict(status=status, result=result)
    except Exception:
        entry = dict(status="error", error=traceback.format_exc()[-4000:])
    entry["seconds"] = round(time.perf_counter() - start, 1)
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return entry


def summary_lines(report: dict) -> list[str]:
    """One line per section, with its headline figures."""
    lines = []
    for name, entry in report["sections"].items():
        result, note = entry.get("result", {}), entry.get("error", "").strip().splitlines()[-1:] or [""]
        if name == "parity" and result:
            worst = max(result["rows"], key=lambda r: max(r["out"], r["worst_grad_diff"]))
            note = [
                f"worst {worst['case']} {worst['dtype']}: out {worst['out']:.1e}, grad {worst['worst_grad_diff']:.1e}"
            ]
        elif name == "tests" and result:
            note = [f"{result['tests']} tests, {result['failures']} failed, {result['errors']} errors"]
        elif name == "train" and result:
            note = [
                f"loss {result['loss_first']:.3f} -> {result['loss_last']:.3f}; "
                f"grad vs torch {result['gradients']['worst_ratio']:.1e}"
            ]
        elif name == "models" and result:
            note = [", ".join(f"{k} {v:.2f}x (goal {result['goals'][k]})" for k, v in result["ratios"].items())]
        elif name == "compile" and result:
            note = [f"{result['speedup']:.2f}x eager, compiled in {result['compile_s']:.0f} s"]
        elif name == "sparse" and result:
            note = [
                ", ".join(
                    f"{k} {result[k].get('speedup', 0):.2f}x" if "ms" in result[k] else f"{k} error"
                    for k in ("bsr", "2:4")
                )
            ]
        elif name == "kernels" and result.get("goals"):
            note = [", ".join(f"{k} {v:.2f}" for k, v in result["goals"].items())]
        lines.append(f"{name:<9}{entry['status']:<10}{entry.get('seconds', 0):>7.1f} s  {note[0]}")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out_dir", type=Path, help="folder for gpu_check.json (created if missing)")
    parser.add_argument(
        "--sections",
        nargs="+",
        choices=SECTION_ORDER,
        default=list(SECTION_ORDER),
        help="which sections to run (always in the order listed above)",
    )
    parser.add_argument(
        "--budget-s",
        type=float,
        default=480.0,
        help="start no section after this many seconds; the rest are recorded as skipped",
    )
    parser.add_argument("--tests-timeout-s", type=float, default=180.0, help="time limit of the tests section")
    parser.add_argument("--workers", type=int, default=8, help="pytest-xdist workers for the tests section")
    parser.add_argument("--train-steps", type=int, default=50)
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print(
            "gpu_check.py needs a CUDA GPU and none is available here (torch.cuda.is_available() is False). On a CPU, "
            "the kernel tests run the Triton kernels through Triton's interpreter: make test, or pytest tests/kernels",
            file=sys.stderr,
        )
        return 2
    if interpreter_enabled():
        print(
            "gpu_check.py: unset TRITON_INTERPRET, which would run the kernels in Triton's interpreter", file=sys.stderr
        )
        return 2
    args.out_dir.mkdir(parents=True, exist_ok=True)
    path = args.out_dir / "gpu_check.json"
    started = time.perf_counter()
    report = dict(environment=environment(), sections={})
    print(f"{report['environment']}\n", flush=True)
    table = sections(args, args.out_dir, started)
    for name in (s for s in SECTION_ORDER if s in args.sections):
        if time.perf_counter() - started > args.budget_s:
            report["sections"][name] = dict(status="skipped", error=f"time budget of {args.budget_s:.0f} s spent")
        else:
            print(f"== {name}", flush=True)
            report["sections"][name] = run_section(table[name])
        path.write_text(json.dumps(report, indent=1, default=str))
        print(summary_lines(dict(sections={name: report["sections"][name]}))[0], flush=True)
    report["seconds"] = round(time.perf_counter() - started, 1)
    path.write_text(json.dumps(report, indent=1, default=str))
    print("\n" + "\n".join(summary_lines(report)) + f"\n\nwrote {path}")
    return 1 if any(e["status"] in ("failed", "error") for e in report["sections"].values()) else 0


def _left(args, started: float) -> float:
    return max(30.0, args.budget_s - (time.perf_counter() - started))


def _empty_cache(device: str) -> None:
    if device == "cuda":
        torch.cuda.empty_cache()


def _text(output) -> str:
    return output.decode(errors="replace") if isinstance(output, bytes) else output or ""


if __name__ == "__main__":
    sys.exit(main())
