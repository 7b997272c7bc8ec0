"""Image-encoder throughput of CLIP image towers (img/s, CPU, PyTorch eager and onnxruntime), vizoo's linear-cost
towers against timm's ViTs, at several input sizes, in one run, with the tokens per image each tower gives.

What is timed is the image encoder as open_clip builds it, ``model.encode_image(x, normalize=True)``: the trunk, the
projection to the joint embedding (linear, 512 wide, no bias) and the L2 normalisation. A vizoo tower is built by
``vizoo.multimodal.create_clip(name, image_size=size)``; a timm baseline is open_clip's own ``CLIP`` with the same
``vision_cfg`` (``timm_model_name``, the model's own pooling, the linear projection), sized for the input as open_clip's
``force_image_size`` does it (``visual.set_input_size``: a ViT's position embedding resampled, ``img_size`` in timm).
The text tower (``"tiny"``) is built but never timed. The onnxruntime graph is ``export_image_encoder``'s, and its
parity with eager on four photographs is the ``parity`` column. Models have random weights; nothing is downloaded.

Tokens per image are the patch tokens of the trunk's final features at that size (a hierarchical tower's last map,
h x w; a ViT's patch tokens without its class token): what a vision-language model would be handed.

At each size every tower and runtime is timed in turn, round after round (``vizoo.export.timing``'s alternating
blocks), so that load on a shared machine falls on a tower and its baselines alike; the figures are medians. Ratios
are img/s over a baseline's img/s at the same size in the same run (> 1: the tower is faster), one pair of columns
per baseline (``eager_vs_<baseline>``, ``ort_vs_<baseline>``).

python tools/benchmark_clip_towers.py                              # the four towers and ViT-S/16, ViT-B/16, 224 and 448
python tools/benchmark_clip_towers.py --models vmamba_tiny_s1l8 --sizes 224 --rounds 2
python tools/benchmark_clip_towers.py --no-onnx --batch 4          # eager only, four images per pass

Rows are appended to results/clip_towers_<machine>.csv (``--out`` to write elsewhere), which
tools/benchmark_docs.py renders into docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import tempfile
from functools import partial
from pathlib import Path

import numpy as np
import timm
import torch

import vizoo
from vizoo.export.onnx import onnx_runner
from vizoo.export.timing import interleaved_times_ms
from vizoo.multimodal import TEXT_PRESETS, create_clip, export_image_encoder, native_features_fmt
from vizoo.utils.results import ResultsWriter, command_line, results_path

DEFAULT_MODELS = ("vmamba_tiny_s1l8", "mlla_tiny", "cas_vit_xs", "mobilemamba_t2")
DEFAULT_BASELINES = ("vit_small_patch16_224", "vit_base_patch16_224")
EMBED_DIM = 512
PASSES = 4  # passes per runner and round, the first untimed (vizoo.export.timing)

COLUMNS = (
    "model",
    "role",
    "size",
    "batch",
    "tokens",
    "params_m",
    "eager_ms",
    "ort_ms",
    "eager_img_s",
    "ort_img_s",
    "ort_over_eager",
    "parity",
    "rounds",
    "error",
)


def ratio_columns(baselines: list[str]) -> list[str]:
    """The ratio columns of ``baselines``: eager and onnxruntime img/s over the baseline's, per baseline."""
    return [f"{runtime}_vs_{b}" for b in baselines for runtime in ("eager", "ort")]


def build_clip(name: str, size: int) -> torch.nn.Module:
    """An open_clip CLIP (eval mode, random weights) whose image tower is ``name`` at ``size`` x ``size``."""
    if name in vizoo.list_models():
        return create_clip(name, text="tiny", embed_dim=EMBED_DIM, image_size=size)[0].eval()
    import open_clip

    vision_cfg = dict(
        timm_model_name=name,
        timm_model_pretrained=False,
        timm_pool="",
        timm_proj="linear",
        timm_proj_bias=False,
        image_size=size,
    )
    model = open_clip.CLIP(EMBED_DIM, vision_cfg, dict(TEXT_PRESETS["tiny"])).eval()
    if size != model.visual.trunk.pretrained_cfg["input_size"][-1]:
        model.visual.set_input_size(size)
    return model


def tokens_per_image(trunk: torch.nn.Module, size: int) -> int:
    """Patch tokens of ``trunk``'s final features for one ``size`` x ``size`` image (prefix tokens left out)."""
    with torch.inference_mode():
        features = trunk.forward_features(torch.zeros(1, 3, size, size))
    if features.dim() == 3:  # (1, prefix + N, C): a ViT's class token, Vim's middle class token
        return features.shape[1] - getattr(trunk, "num_prefix_tokens", 1 if native_features_fmt(trunk) == "NLC" else 0)
    fmt = getattr(trunk, "features_fmt", None) or native_features_fmt(trunk)
    h, w = features.shape[1:3] if fmt == "NHWC" else features.shape[2:4]
    return int(h * w)


def measure_size(
    names: dict[str, str], size: int, batch: int, rounds: int, onnx: bool, tmp: Path
) -> list[dict[str, object]]:
    """One row per tower at ``size`` (``names``: model -> role), all timed in turn; ratios are the caller's."""
    rows, runners, owners = [], [], []
    x = torch.randn(batch, 3, size, size)
    for name, role in names.items():
        row = dict(model=name, role=role, size=size, batch=batch, rounds=rounds)
        rows.append(row)
        print(f"  building {name} at {size}", flush=True)
        try:
            model = build_clip(name, size)
            row["params_m"] = sum(p.numel() for p in model.visual.parameters()) / 1e6
            row["tokens"] = tokens_per_image(model.visual.trunk, size)
            runners.append(partial(model.encode_image, x, normalize=True))
            owners.append((row, "eager"))
            if onnx:
                result = export_image_encoder(model, tmp / f"{name}_{size}.onnx", image_size=size)
                row["parity"] = result.max_abs_diff
                runners.append(onnx_runner(result.path, x, torch.get_num_threads()))
                owners.append((row, "ort"))
        except Exception as error:  # a tower that cannot take this size is recorded, not fatal
            row["error"] = f"{type(error).__name__}: {str(error).strip().splitlines()[0][:200]}"
            print(f"  {name} at {size}: {row['error']}", flush=True)
            while owners and owners[-1][0] is row:
                owners.pop(), runners.pop()
    print(f"  timing {len(runners)} runners x {rounds} rounds at {size}", flush=True)
    with torch.inference_mode():
        times = interleaved_times_ms(runners, rounds, PASSES)
    for (row, runtime), series in zip(owners, times):
        ms = float(np.median(series))
        row[f"{runtime}_ms"] = ms
        row[f"{runtime}_img_s"] = batch * 1e3 / ms
    for row in rows:
        if "eager_ms" in row and "ort_ms" in row:
            row["ort_over_eager"] = row["ort_ms"] / row["eager_ms"]
    return rows


def add_ratios(rows: list[dict[str, object]], baselines: list[str]) -> None:
    """Fill each row's ``<runtime>_vs_<baseline>``: its img/s over the baseline's at the same size (same run)."""
    by_model = {row["model"]: row for row in rows}
    for baseline in baselines:
        base = by_model.get(baseline, {})
        for row in rows:
            for runtime in ("eager", "ort"):
                mine, theirs = row.get(f"{runtime}_img_s"), base.get(f"{runtime}_img_s")
                if mine is not None and theirs is not None:
                    row[f"{runtime}_vs_{baseline}"] = mine / theirs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=list(DEFAULT_MODELS), help="vizoo models (image towers)")
    parser.add_argument("--baselines", nargs="+", default=list(DEFAULT_BASELINES), help="timm (or vizoo) baselines")
    parser.add_argument("--sizes", nargs="+", type=int, default=[224, 448], help="square input sizes")
    parser.add_argument("--batch", type=int, default=1, help="images per pass")
    parser.add_argument("--threads", type=int, help="torch and onnxruntime CPU threads (default: torch's)")
    parser.add_argument("--rounds", type=int, default=3, help=f"rounds of {PASSES} passes of every tower and runtime")
    parser.add_argument("--no-onnx", action="store_true", help="eager only: no export, no onnxruntime")
    parser.add_argument("--out", type=Path, help="results CSV to append to (default results/clip_towers_<machine>.csv)")
    args = parser.parse_args(argv)
    known = set(vizoo.list_models())
    for name in [*args.models, *args.baselines]:
        if name not in known and not timm.is_model(name):
            parser.error(f"unknown model {name!r}: give vizoo model names (`vizoo list`) or timm model names")
    for name in args.models:
        if name not in known:
            parser.error(f"{name!r} is not a vizoo model; timm models go in --baselines")
    if args.batch < 1 or args.rounds < 1 or any(s < 1 for s in args.sizes):
        parser.error("--batch, --rounds and --sizes must be positive")
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    baselines = list(dict.fromkeys(args.baselines))
    names = {b: "baseline" for b in baselines} | {m: "model" for m in args.models if m not in baselines}
    command = command_line(argv, "python tools/benchmark_clip_towers.py")
    writer = ResultsWriter(
        args.out or results_path("clip_towers"), [*COLUMNS, *ratio_columns(baselines)], command=command
    )
    print(
        f"CPU, batch {args.batch}, {torch.get_num_threads()} threads; median pass, towers and runtimes in turn",
        flush=True,
    )
    table = []
    with tempfile.TemporaryDirectory() as tmp:
        for size in dict.fromkeys(args.sizes):
            rows = measure_size(names, size, args.batch, args.rounds, not args.no_onnx, Path(tmp))
            add_ratios(rows, baselines)
            writer.write_many(rows)
            table += rows
    print_table(table, baselines)
    print(f"wrote {writer.rows_written} rows to {writer.path}", flush=True)
    return 0


def print_table(rows: list[dict[str, object]], baselines: list[str]) -> None:
    """The rows as an aligned table: tokens, img/s of each runtime and the ratios against each baseline."""
    from vizoo.benchmark import text_table

    def cell(value, spec: str) -> str:
        return "-" if value is None else format(value, spec)

    header = ["model", "size", "tokens", "eager img/s", "ORT img/s"]
    header += [f"{rt} vs {b}" for b in baselines for rt in ("eager", "ORT")]
    lines = [header]
    for row in rows:
        line = [str(row["model"]), str(row["size"]), cell(row.get("tokens"), "d")]
        line += [cell(row.get("eager_img_s"), ".2f"), cell(row.get("ort_img_s"), ".2f")]
        line += [cell(row.get(c), ".2f") for c in ratio_columns(baselines)]
        lines.append(line)
    print(text_table(lines, right=[False] + [True] * (len(header) - 1)), flush=True)
    for row in rows:
        if row.get("error"):
            print(f"unavailable: {row['model']} at {row['size']}: {row['error']}", flush=True)


if __name__ == "__main__":
    raise SystemExit(main())
