"""Compile vizoo's Triton kernels for an NVIDIA architecture without a GPU; report registers and spills (ptxas -v).

Triton's CPU interpreter runs kernels as Python and so cannot catch what only the compiler rejects; this does, and
its register and spill counts are a first check of the block sizes before timing on a GPU.

python tools/compile_kernels.py               # every kernel at the launchers' block sizes, n = 1 and 16, sm_90
python tools/compile_kernels.py --quick       # every option on, every option off, and the cross-scan kernel
python tools/compile_kernels.py --arch 80
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time

os.environ.pop("TRITON_INTERPRET", None)  # compile the kernels, before any of them is defined

import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

from vizoo.kernels.cross_scan import triton as cross  # noqa: E402
from vizoo.kernels.selective_scan import triton as scan  # noqa: E402

HALF = ("u_ptr", "dt_ptr", "B_ptr", "C_ptr", "z_ptr", "y_ptr", "dy_ptr", "du_ptr", "ddt_ptr", "dz_ptr", "map_ptr")
FEATURES = dict(HAS_D=True, HAS_Z=True, HAS_BIAS=True, SOFTPLUS=True)


def compile_kernel(kernel, constexprs: dict, arch: int, num_warps: int = scan._NUM_WARPS):
    signature = {
        name: "constexpr"
        if name in constexprs
        else ("*bf16" if name in HALF else "*fp32")
        if name.endswith("_ptr")
        else "i32"
        for name in kernel.arg_names
    }
    constants = {(kernel.arg_names.index(k),): v for k, v in constexprs.items()}
    source = ASTSource(kernel, signature, constexprs=constants)
    return triton.compile(source, target=GPUTarget("cuda", arch, 32), options=dict(num_warps=num_warps))


def ptxas_report(compiled, arch: int) -> str:
    """'regs R, spills S bytes' from ptxas -v on the kernel's PTX."""
    ptxas = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "ptxas")
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "kernel.ptx")
        with open(path, "w") as f:
            f.write(compiled.asm["ptx"])
        suffix = "a" if arch >= 90 else ""
        out = subprocess.run(
            [ptxas, "-v", f"-arch=sm_{arch}{suffix}", path, "-o", os.path.join(tmp, "k.cubin")],
            capture_output=True,
            text=True,
        )
    regs = re.search(r"Used (\d+) registers", out.stderr)
    spills = re.search(r"(\d+) bytes spill stores", out.stderr)
    return f"regs {regs.group(1) if regs else '?'}, spills {spills.group(1) if spills else '?'} bytes"


def variants(quick: bool):
    """(label, kernel, constexprs): the scan kernels as the launchers configure them, and the cross-scan kernel. Quick:
    every feature on (four routes, n = 16) and every feature off (one route, n = 1), so each branch compiles once."""
    if quick:
        configs = [(16, 4, dict(FEATURES)), (1, 1, {k: False for k in FEATURES})]
    else:
        configs = [(n, routes, dict(FEATURES, HAS_Z=routes == 1)) for n in (1, 16) for routes in (1, 4)]
    for n, routes, features in configs:
        block_l = scan.chunk_length(n)
        for name, tile in (("_scan_fwd_kernel", scan._FWD_TILE), ("_scan_bwd_kernel", scan._BWD_TILE)):
            block_d = scan._block_d(n, block_l, 192, tile)
            constexprs = dict(ROUTES=routes, N_PAD=triton.next_power_of_2(n), BLOCK_D=block_d, BLOCK_L=block_l)
            constexprs.update(features)
            if name == "_scan_fwd_kernel":
                constexprs["SAVE_STATES"] = features["HAS_D"]  # training forward (on) and inference forward (off)
            flags = ",".join(k.lower() for k, v in features.items() if v) or "no options"
            label = f"{name} n={n} routes={routes} BLOCK_D={block_d} BLOCK_L={block_l} ({flags})"
            yield label, getattr(scan, name), constexprs
    for merge in (False, True):
        yield f"_cross_kernel merge={merge}", cross._cross_kernel, dict(MERGE=merge, BLOCK_C=8, TILE=16)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", type=int, default=90, help="compute capability x 10 (90 = H100)")
    parser.add_argument("--quick", action="store_true", help="only the all-features variants")
    args = parser.parse_args(argv)
    print(f"triton {triton.__version__}, target sm_{args.arch}", flush=True)
    for label, kernel, constexprs in variants(args.quick):
        start = time.perf_counter()
        compiled = compile_kernel(kernel, constexprs, args.arch)
        seconds = time.perf_counter() - start
        print(f"{label:<92} {ptxas_report(compiled, args.arch):<28} compiled in {seconds:.1f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
