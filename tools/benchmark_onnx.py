"""onnxruntime (CPU) latency against PyTorch eager (CPU) for the same model, side by side in one run, with the
fp32 parity of the export on real images (max abs difference of the outputs, scikit-image photos).

python tools/benchmark_onnx.py                       # vmamba_tiny_s1l8 and test_vmamba at their cfg sizes
python tools/benchmark_onnx.py vanilla_vmamba_tiny   # any vizoo/timm model names
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import timm
import torch

import vizoo  # noqa: F401
from vizoo.benchmark import measure_latency
from vizoo.export import export_onnx, input_shape, onnx_latency_ms


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("models", nargs="*", default=["vmamba_tiny_s1l8", "test_vmamba"])
    parser.add_argument("--runs", type=int, default=20)
    args = parser.parse_args(argv)
    print(f"CPU, batch 1, {torch.get_num_threads()} torch threads; median latency", flush=True)
    header = f"{'model':<22} {'input':>11} {'nodes':>6} {'parity':>8} {'eager ms':>9} {'ORT ms':>8} {'ORT / eager':>11}"
    print(header, flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models:
            model = timm.create_model(name).eval()
            shape = input_shape(model, None)
            result = export_onnx(model, Path(tmp) / f"{name}.onnx", dynamic_batch=False, check=True)
            eager_ms = measure_latency(model, shape, min_time_s=2.0)["latency_ms"]
            ort_ms = onnx_latency_ms(result.path, torch.randn(1, *shape), runs=args.runs)
            size = "x".join(map(str, shape))
            print(
                f"{name:<22} {size:>11} {result.nodes:>6} {result.max_abs_diff:>8.1e} {eager_ms:>9.1f} {ort_ms:>8.1f} "
                f"{ort_ms / eager_ms:>10.2f}x",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
