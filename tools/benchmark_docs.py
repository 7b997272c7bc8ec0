"""Render docs/benchmarks.md and its plots (docs/img/*.png) from the benchmark results in results/*.csv.

No figure in docs/benchmarks.md is typed by hand: every number comes from a results file written by a benchmark tool
(``vizoo.utils.results``). Each table names its file, machine and run and the command that measured it. Ratios are
taken against a baseline of the same run only, since absolute times move with the machine's load.

python tools/benchmark_docs.py            # write docs/benchmarks.md and docs/img/*.png
python tools/benchmark_docs.py --check    # exit 1 when docs/benchmarks.md differs from what results/ renders

A table shows, per model (or case), the latest run that measured it; where earlier runs measured the same thing, the
spread of the ratio over all runs is shown next to it. ``--check`` compares the markdown only: the plots are drawn
deterministically, but PNG bytes may differ across matplotlib versions.
"""

from __future__ import annotations

import argparse
import difflib
import math
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from vizoo.utils.results import read_rows, split_name

REGENERATE = "python tools/benchmark_docs.py"
REFERENCE = "deit_small_patch16_224"  # the latency-against-resolution baseline
SHORT = {
    "deit_small_patch16_224": "DeiT-S",
    "swin_tiny_patch4_window7_224": "Swin-T",
    "convnext_tiny": "ConvNeXt-T",
    "deit_tiny_patch16_224": "DeiT-Ti",
    "vit_small_patch16_224": "ViT-S/16",
    "vit_base_patch16_224": "ViT-B/16",
}
FIGSIZE, DPI = (9.0, 4.0), 100

Row = dict[str, str]


# --------------------------------------------------------------------------------------------------------- helpers


@dataclass
class Section:
    """A part of the page: its markdown and the plots it links (file name in the image folder -> draw function)."""

    title: str
    lines: list[str]
    plots: dict[str, Callable] = field(default_factory=dict)
    what: str = ""  # the <what> of the results file it renders


def num(row: Row, key: str) -> float | None:
    """The cell as a float; None when empty or not a number."""
    try:
        value = float(row.get(key) or "nan")
    except ValueError:
        return None
    return None if math.isnan(value) else value


def fmt(value: float | None, digits: int = 2, suffix: str = "") -> str:
    if value is None:
        return "n/a"
    return f"{value:.{digits}f}{suffix}"


def fmt_ms(value: float | None) -> str:
    if value is None:
        return "n/a"
    return f"{value:.1f}" if value >= 10 else f"{value:.2f}"


def short(name: str) -> str:
    return SHORT.get(name, name)


def table(
    header: Sequence[str], rows: Iterable[Sequence[str]], right: Sequence[bool], drop_empty: bool = False
) -> list[str]:
    """A markdown table; ``right[i]`` right-aligns column i; ``drop_empty`` leaves out the columns where every cell
    is "n/a" or empty."""
    rows = [list(r) for r in rows]
    if drop_empty:
        keep = [i for i in range(len(header)) if any(r[i] not in ("", "n/a") for r in rows)]
        header, right = [header[i] for i in keep], [right[i] for i in keep]
        rows = [[r[i] for i in keep] for r in rows]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---:" if r else ":---" for r in right) + "|"]
    lines += ["| " + " | ".join(cells) + " |" for cells in rows]
    return lines


def runs_of(rows: list[Row]) -> list[str]:
    """The run ids in ``rows``, oldest first."""
    return sorted({r["run"] for r in rows})


def latest_by(rows: list[Row], key: Callable[[Row], object]) -> dict[object, list[Row]]:
    """For each key, its rows from the latest run that has it (keys in the order of the file)."""
    latest: dict[object, str] = {}
    for r in rows:
        k = key(r)
        latest[k] = max(latest.get(k, ""), r["run"])
    return {k: [r for r in rows if key(r) == k and r["run"] == run] for k, run in latest.items()}


def provenance(path: Path, rows: list[Row], runs: Iterable[str]) -> list[str]:
    """Where a table comes from: the file, the machine, and per run (and command within it) torch, threads and the
    command."""
    runs = set(runs)
    by_command: dict[tuple[str, str], Row] = {}
    for r in sorted(rows, key=lambda r: r["run"]):
        if r["run"] in runs:
            by_command.setdefault((r["run"], r.get("command") or "?"), r)
    machine = rows[0]["machine"] if rows else split_name(path)[1]
    head = f"From `results/{path.name}`, machine `{machine}`"
    details = [
        f"run {run} (torch {r.get('torch') or '?'}, {threads(r.get('threads'))}): `{command}`"
        for (run, command), r in by_command.items()
    ]
    if len(details) == 1:
        return [f"{head}, {details[0]}."]
    return [f"{head}:", "", *[f"- {d}" for d in details]]


def threads(count: str | None) -> str:
    return "1 thread" if count == "1" else f"{count or '?'} threads"


def spread(values: list[float], digits: int = 2) -> str:
    """``min-max over n runs`` of a ratio measured in several runs, empty for one run."""
    if len(values) < 2:
        return ""
    return f"{min(values):.{digits}f}-{max(values):.{digits}f} over {len(values)} runs"


def new_figure(ncols: int = 2):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=FIGSIZE, dpi=DPI)
    FigureCanvasAgg(fig)
    return fig, [fig.add_subplot(1, ncols, i + 1) for i in range(ncols)]


def save(fig, path: Path) -> None:
    fig.tight_layout()
    fig.savefig(path, format="png", metadata={"Software": None})


# ------------------------------------------------------------------------------------------ latency vs resolution


def latency_section(path: Path, rows: list[Row]) -> Section:
    """Per model (its latest run): the reference baseline's latency over the model's at each size, the absolute
    milliseconds, and the log-log slope of latency against pixels."""
    from vizoo.benchmark import latency_slope

    where = split_name(path)[1]
    by_model = latest_by(rows, lambda r: r["model"])
    sizes = sorted({int(r["size"]) for r in rows})
    lat = {(r["run"], r["model"], int(r["size"])): num(r, "latency_ms") for r in rows}
    reference = REFERENCE if any(r["model"] == REFERENCE for r in rows) else None
    if reference is None:
        reference = next((r["model"] for r in rows if r["role"] == "baseline"), rows[0]["model"])

    def ratio(run: str, model: str, size: int) -> float | None:
        base, own = lat.get((run, reference, size)), lat.get((run, model, size))
        return base / own if base and own else None

    header = ["model", *[f"{s}²" for s in sizes], *[f"ms {s}²" for s in sizes], "slope"]
    body, errors, used_runs, spreads = [], [], set(), []
    ordered = sorted(by_model, key=lambda m: (by_model[m][0]["role"] != "baseline", m != reference))
    for model in ordered:
        mrows = {int(r["size"]): r for r in by_model[model]}
        run = by_model[model][0]["run"]
        used_runs.add(run)
        ratios = [ratio(run, model, s) if s in mrows else None for s in sizes]
        ms = [num(mrows[s], "latency_ms") if s in mrows else None for s in sizes]
        points = [(s * s, m) for s, m in zip(sizes, ms, strict=True) if m]
        slope = latency_slope(*zip(*points)) if len({p for p, _ in points}) >= 2 else None
        label = f"{short(model)} (baseline)" if by_model[model][0]["role"] == "baseline" else model
        body.append([label, *[fmt(v, suffix="x") for v in ratios], *map(fmt_ms, ms), fmt(slope)])
        errors += [r["error"] for r in by_model[model] if r.get("error")]
        if model != reference:
            for s in sizes:
                values = [v for run_ in runs_of(rows) if (v := ratio(run_, model, s)) is not None]
                if len(values) > 1:
                    spreads.append(f"{model} at {s}²: {spread(values)}")
    image = f"latency_resolution_{where}.png"
    lines = [
        f"![Latency against input size, and the {short(reference)} ratio](img/{image})",
        "",
        f"{short(reference)} latency / model latency at the same size and run (> 1: faster than {short(reference)}), "
        "then the median milliseconds of a pass at batch 1; slope: of log latency against log pixels (1 linear, "
        "2 quadratic).",
        "",
        *table(header, body, [False, *[True] * (2 * len(sizes) + 1)]),
        "",
    ]
    if spreads:
        lines += ["Spread of the ratio over the runs in the file: " + "; ".join(spreads) + ".", ""]
    if errors:
        lines += ["Not measured: " + "; ".join(f"`{e}`" for e in dict.fromkeys(errors)) + ".", ""]
    lines += provenance(path, rows, used_runs)

    def draw(out: Path) -> None:
        fig, (ax_ms, ax_ratio) = new_figure()
        ratios = []
        for i, model in enumerate(ordered):
            mrows = sorted(by_model[model], key=lambda r: int(r["size"]))
            pts = [(int(r["size"]), num(r, "latency_ms")) for r in mrows if num(r, "latency_ms")]
            if not pts:
                continue
            baseline = mrows[0]["role"] == "baseline"
            style = dict(linestyle="--" if baseline else "-", marker="s" if baseline else "o", color=f"C{i % 10}")
            ax_ms.plot([s * s for s, _ in pts], [m for _, m in pts], label=short(model), **style)
            if model != reference:
                rpts = [(s, v) for s, _ in pts if (v := ratio(mrows[0]["run"], model, s)) is not None]
                ratios += [v for _, v in rpts]
                ax_ratio.plot([s * s for s, _ in rpts], [v for _, v in rpts], label=short(model), **style)
        for ax in (ax_ms, ax_ratio):
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.set_xticks([s * s for s in sizes], [f"{s}²" for s in sizes])
            ax.minorticks_off()
            ax.set_xlabel("input size (pixels, log)")
            ax.grid(True, which="both", alpha=0.3)
        ax_ms.set_ylabel("latency, ms (log)")
        ax_ms.set_title("latency at batch 1")
        ax_ratio.axhline(1.0, color="black", linewidth=0.8)
        if ratios:  # powers of two as ticks, read as "x times as fast"
            lo, hi = math.floor(math.log2(min(ratios))), math.ceil(math.log2(max(ratios)))
            ticks = [2.0**k for k in range(min(lo, -1), max(hi, 1) + 1)]
            ax_ratio.set_yticks(ticks, [f"{t:g}x" for t in ticks])
        ax_ratio.set_ylabel(f"{short(reference)} latency / model latency (log)")
        ax_ratio.set_title(f"speed against {short(reference)}, same run")
        ax_ms.legend(fontsize="small")
        save(fig, out)

    return Section(f"Latency against resolution ({where})", lines, {image: draw})


# ------------------------------------------------------------------------------------------ onnxruntime vs eager


def onnx_section(path: Path, rows: list[Row]) -> Section:
    where = split_name(path)[1]
    by_model = latest_by(rows, lambda r: r["model"])
    body, used_runs, plotted = [], set(), []
    for model, mrows in by_model.items():
        r = mrows[-1]
        used_runs.add(r["run"])
        ratio = num(r, "ort_over_eager")
        earlier = [v for x in rows if x["model"] == model and (v := num(x, "ort_over_eager")) is not None]
        rounds = f"{fmt(num(r, 'round_min'))}-{fmt(num(r, 'round_max'))}" if ratio is not None else "n/a"
        parity = num(r, "parity")
        body.append(
            [
                model,
                r["input"],
                fmt(ratio, suffix="x"),
                rounds,
                spread(earlier),
                fmt_ms(num(r, "eager_ms")),
                fmt_ms(num(r, "ort_ms")),
                f"{parity:.1e}" if parity is not None else "n/a",
                r.get("nodes") or "n/a",
            ]
        )
        if ratio is not None:
            plotted.append((model, ratio, num(r, "round_min"), num(r, "round_max")))
    header = ["model", "input", "ORT / eager", "per round", "over runs", "eager ms", "ORT ms", "parity", "nodes"]
    image = f"onnx_{where}.png"
    lines = []
    if plotted:
        lines += [f"![onnxruntime latency over eager PyTorch latency per model](img/{image})", ""]
    lines += [
        "onnxruntime (CPU) latency / PyTorch eager latency of the same model, batch 1, in alternating blocks of the "
        "same run (< 1: onnxruntime is faster); per round: lowest and highest ratio of single rounds; parity: max "
        "abs difference of the fp32 export's outputs on real images (weights perturbed so that every block counts).",
        "",
        *table(header, body, [False, True, True, True, True, True, True, True, True]),
        "",
        *provenance(path, rows, used_runs),
    ]

    def draw(out: Path) -> None:
        fig, (ax,) = new_figure(1)
        fig.set_size_inches(FIGSIZE[0], 0.5 * len(plotted) + 1.5)
        ys = list(range(len(plotted)))[::-1]
        ratios = [p[1] for p in plotted]
        low = [p[1] - (p[2] if p[2] is not None else p[1]) for p in plotted]
        high = [(p[3] if p[3] is not None else p[1]) - p[1] for p in plotted]
        colors = ["tab:green" if v < 1 else "tab:red" for v in ratios]
        ax.barh(ys, ratios, color=colors, alpha=0.7, xerr=[low, high], capsize=3)
        ax.set_yticks(ys, [p[0] for p in plotted])
        ax.axvline(1.0, color="black", linewidth=0.8)
        ax.set_xlabel("onnxruntime latency / eager latency (< 1: onnxruntime faster); bars: range over rounds")
        ax.grid(True, axis="x", alpha=0.3)
        save(fig, out)

    return Section(f"onnxruntime against eager PyTorch ({where})", lines, {image: draw} if plotted else {})


# ------------------------------------------------------------------------------------------------ CLIP image towers

RUNTIMES = {"eager": "eager", "ort": "ORT"}


def clip_towers_section(path: Path, rows: list[Row]) -> Section:
    """Per tower (its latest run) and size: tokens per image, img/s of eager PyTorch and onnxruntime, and each
    runtime's img/s over each baseline's at the same size in the same run (the ``<runtime>_vs_<baseline>`` columns)."""
    where = split_name(path)[1]
    by_model = latest_by(rows, lambda r: r["model"])
    ordered = sorted(by_model, key=lambda m: by_model[m][0]["role"] != "baseline")
    baselines = [c.removeprefix("eager_vs_") for c in rows[0] if c.startswith("eager_vs_")]
    baselines = [b for b in baselines if any(r.get(f"eager_vs_{b}") or r.get(f"ort_vs_{b}") for r in rows)]
    sizes = sorted({int(r["size"]) for r in rows})
    header = ["model", "size", "tokens", "params M", "eager img/s", "ORT img/s"]
    header += [f"{label} vs {short(b)}" for b in baselines for label in RUNTIMES.values()]
    header += ["parity"]
    body, errors, used_runs, spreads = [], [], set(), []
    for size in sizes:  # the towers at one size together, baselines first
        for model in ordered:
            r = next((r for r in by_model[model] if int(r["size"]) == size), None)
            if r is None:
                continue
            used_runs.add(r["run"])
            if r.get("error"):
                errors.append(f"{model} at {size}²: {r['error']}")
                continue
            parity = num(r, "parity")
            label = f"{short(model)} (baseline)" if r["role"] == "baseline" else model
            cells = [label, f"{size}²", r.get("tokens") or "n/a", fmt(num(r, "params_m"), 1)]
            cells += [fmt(num(r, "eager_img_s"), 1), fmt(num(r, "ort_img_s"), 1)]
            cells += [fmt(num(r, f"{rt}_vs_{b}"), suffix="x") for b in baselines for rt in RUNTIMES]
            body.append([*cells, f"{parity:.1e}" if parity is not None else "n/a"])
            if r["role"] != "baseline" and baselines:
                column = f"eager_vs_{baselines[0]}"
                values = [v for x in rows if x["model"] == model and int(x["size"]) == size and (v := num(x, column))]
                if len(values) > 1:
                    spreads.append(f"{model} at {size}²: {spread(values)}")
    image = f"clip_towers_{where}.png"
    batch = rows[-1].get("batch") or "?"
    lines = [
        f"![Image-encoder throughput against input size, eager and onnxruntime](img/{image})",
        "",
        "Image encoders of CLIP models as open_clip builds them (`encode_image`: the trunk, a linear projection to "
        f"512, L2 normalisation; random weights), on the CPU at batch {batch}: images per second of PyTorch eager and "
        "of onnxruntime (the `export_image_encoder` graph), all towers timed in turn in the same run. A ratio is a "
        "tower's img/s over the baseline's at the same size, same runtime and same run (> 1: faster than the "
        "baseline). Tokens: the patch tokens of the trunk's final features at that size (a ViT's without its class "
        "token). Parity: max abs difference of the ONNX embedding from eager on four photographs.",
        "",
        *table(header, body, [False, *[True] * (len(header) - 1)], drop_empty=True),
        "",
    ]
    if spreads:
        lines += [f"Spread of the eager ratio against {short(baselines[0])} over the runs in the file: "]
        lines[-1] += "; ".join(spreads) + "."
        lines += [""]
    if errors:
        lines += ["Not measured: " + "; ".join(f"`{e}`" for e in errors) + ".", ""]
    lines += provenance(path, rows, used_runs)

    def draw(out: Path) -> None:
        fig, axes = new_figure()
        for ax, (runtime, title) in zip(axes, (("eager", "PyTorch eager"), ("ort", "onnxruntime")), strict=True):
            for i, model in enumerate(ordered):
                mrows = sorted(by_model[model], key=lambda r: int(r["size"]))
                pts = [(int(r["size"]), v) for r in mrows if (v := num(r, f"{runtime}_img_s"))]
                if not pts:
                    continue
                baseline = mrows[0]["role"] == "baseline"
                style = dict(linestyle="--" if baseline else "-", marker="s" if baseline else "o", color=f"C{i % 10}")
                ax.plot([s * s for s, _ in pts], [v for _, v in pts], label=short(model), **style)
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.set_xticks([s * s for s in sizes], [f"{s}²" for s in sizes])
            ax.minorticks_off()
            ax.set_xlabel("input size (pixels, log)")
            ax.set_ylabel("images per second (log)")
            ax.set_title(f"{title}, batch {batch}")
            ax.grid(True, which="both", alpha=0.3)
        axes[0].legend(fontsize="small")
        save(fig, out)

    plotted = any(num(r, "eager_img_s") or num(r, "ort_img_s") for r in rows)
    return Section(f"CLIP image towers ({where})", lines, {image: draw} if plotted else {})


# ---------------------------------------------------------------------------------------------------------- pruning

METHOD_LABELS = {
    "dense": "dense",
    "block": "block pruning",
    "tome": "ToMe",
    "vim-aligned": "Vim token pruning, aligned",
    "vim-packed": "Vim token pruning, packed",
}
SETTING_LABELS = {"block": "sparsity {}", "tome": "r = {}", "vim-aligned": "keep {}", "vim-packed": "keep {}"}
SPEED_TITLES = {
    "deit": "DeiT-S (random init), 50% block sparsity in 32x32 tiles, compacted",
    "tome": "DeiT-S (random init), ToMe token merging",
    "vim": "Vim-S, token pruning at blocks 5/10/15 (ToP-ViM schedule)",
}
ACCURACY_TITLES = {
    "digits": "ViT of DeiT-Ti shape on scikit-learn digits (32x32, 64 tokens): block pruning",
    "digits_tome": "ViT of DeiT-Ti shape on scikit-learn digits (32x32, 64 tokens): ToMe",
    "vim_digits": "small Vim on scikit-learn digits (32x32, 64 tokens): token pruning, aligned or packed",
}


def variant(r: Row) -> str:
    method = r["method"]
    label = METHOD_LABELS.get(method, method)
    if r.get("setting") and method in SETTING_LABELS:
        label += ", " + SETTING_LABELS[method].format(r["setting"])
    if r.get("finetune_epochs") not in (None, "", "0"):
        label += f" + {r['finetune_epochs']} ep fine-tune"
    return label


def pruning_section(path: Path, rows: list[Row]) -> Section:
    """Per pruning section (its latest run): params, MACs and latency as ratios against the dense model of the same
    run, and accuracy on digits against the dense model's."""
    where = split_name(path)[1]
    by_section = latest_by(rows, lambda r: r["section"])
    lines: list[str] = []
    accuracy_points: dict[str, list[tuple[Row, Row]]] = {}
    for section in [s for s in (*SPEED_TITLES, *ACCURACY_TITLES) if s in by_section] + [
        s for s in by_section if s not in SPEED_TITLES and s not in ACCURACY_TITLES
    ]:
        srows = by_section[section]
        accuracy = section in ACCURACY_TITLES or any(r.get("accuracy") for r in srows)
        dense = {r["batch"]: r for r in srows if r["method"] == "dense"}

        def ratio(r: Row, key: str, invert: bool = False, dense: dict = dense) -> float | None:
            base, own = num(dense.get(r["batch"], {}), key), num(r, key)
            if base is None or own is None or not own:
                return None
            return base / own if invert else own / base

        title = ACCURACY_TITLES.get(section) or SPEED_TITLES.get(section) or section
        lines += [f"### {title}", ""]
        if accuracy:
            pruned_params = any(num(r, "params") is not None for r in srows if r["method"] != "dense")
            header = ["variant", "accuracy", "vs dense", "MACs / dense", "speed-up", "ms", "params / dense"]
            body = []
            for r in srows:
                acc, base_acc = num(r, "accuracy"), num(dense.get(r["batch"], {}), "accuracy")
                delta = f"{100 * (acc - base_acc):+.1f} pt" if acc is not None and base_acc is not None else "n/a"
                body.append(
                    [
                        variant(r),
                        fmt(100 * acc if acc is not None else None, 1, "%"),
                        delta if r["method"] != "dense" else "",
                        fmt(ratio(r, "macs")),
                        fmt(ratio(r, "latency_ms", invert=True), suffix="x"),
                        fmt_ms(num(r, "latency_ms")),
                        fmt(ratio(r, "params")) if pruned_params else "n/a",
                    ]
                )
                if r["method"] != "dense" and r["batch"] in dense:
                    accuracy_points.setdefault(section, []).append((r, dense[r["batch"]]))
            batch = srows[0]["batch"]
            epochs = srows[0].get("train_epochs") or "?"
            lines += [
                f"Validation accuracy after {epochs} training epochs; MACs per image and the speed-up (dense latency / "
                f"pruned latency, batch {batch}) against the dense model of the same run.",
                "",
                *table(header, body, [False, True, True, True, True, True, True], drop_empty=True),
                "",
            ]
        else:
            header = ["variant", "batch", "params / dense", "MACs / dense", "speed-up", "ms", "dense ms"]
            body = [
                [
                    variant(r),
                    r["batch"],
                    fmt(ratio(r, "params")),
                    fmt(ratio(r, "macs")),
                    fmt(ratio(r, "latency_ms", invert=True), suffix="x"),
                    fmt_ms(num(r, "latency_ms")),
                    fmt_ms(num(dense.get(r["batch"], {}), "latency_ms")),
                ]
                for r in srows
                if r["method"] != "dense"
            ]
            lines += [
                "Speed-up: dense latency / pruned latency (median ms, timed in turn in the same run).",
                "",
                *table(header, body, [False, True, True, True, True, True, True], drop_empty=True),
                "",
            ]
        lines += [*provenance(path, srows, {srows[0]["run"]}), ""]

    image = f"pruning_accuracy_{where}.png"
    plots = {}
    if accuracy_points:
        lines = [f"![Accuracy against MACs and latency for pruning on digits](img/{image})", "", *lines]

        def draw(out: Path) -> None:
            fig, axes = new_figure()
            for ax, key, xlabel in zip(axes, ("macs", "latency_ms"), ("MACs / dense", "latency / dense (same run)")):
                dense_shown = set()
                for i, (section, points) in enumerate(accuracy_points.items()):
                    base = points[0][1]
                    if (base["model"], base["accuracy"]) not in dense_shown:  # one star per dense model
                        dense_shown.add((base["model"], base["accuracy"]))
                        ax.scatter([1.0], [100 * num(base, "accuracy")], marker="*", s=120, color="black")
                        ax.annotate(f"dense {base['model']}", (1.0, 100 * num(base, "accuracy")), fontsize="x-small",
                                    xytext=(-4, 4), textcoords="offset points", ha="right")  # fmt: skip
                    for method in dict.fromkeys(r["method"] for r, _ in points):
                        color = f"C{list(METHOD_LABELS).index(method) if method in METHOD_LABELS else 9}"
                        marker = "os"[i % 2]
                        for tuned in (False, True):
                            xy = [
                                (num(r, key) / num(d, key), 100 * num(r, "accuracy"), r.get("setting") or "")
                                for r, d in points
                                if r["method"] == method
                                and (r.get("finetune_epochs") not in ("", "0")) == tuned
                                and num(r, key)
                                and num(d, key)
                                and num(r, "accuracy") is not None
                            ]
                            if not xy:
                                continue
                            label = f"{METHOD_LABELS.get(method, method)} ({section})" if not tuned else None
                            ax.scatter([x for x, _, _ in xy], [y for _, y, _ in xy], marker=marker, color=color,
                                       facecolors=color if tuned else "none", label=label)  # fmt: skip
                            for x, y, setting in xy:
                                ax.annotate(setting, (x, y), fontsize="x-small", xytext=(3, 3),
                                            textcoords="offset points")  # fmt: skip
                ax.set_xlabel(xlabel)
                ax.set_ylabel("validation accuracy, %")
                ax.grid(True, alpha=0.3)
            axes[0].set_title("accuracy against MACs (hollow: before fine-tuning)", fontsize="medium")
            axes[1].set_title("accuracy against latency", fontsize="medium")
            axes[0].legend(fontsize="x-small")
            save(fig, out)

        plots[image] = draw
    return Section(f"Pruning ({where})", lines[:-1], plots)


# ---------------------------------------------------------------------------------------------------------- kernels


def kernels_cpu_section(path: Path, rows: list[Row]) -> Section:
    where = split_name(path)[1]
    by_case = latest_by(rows, lambda r: (r["kernel"], r["shape"]))
    body, used_runs = [], set()
    for (kernel, shape), crows in by_case.items():
        r = crows[-1]
        used_runs.add(r["run"])
        earlier = [v for x in rows if (x["kernel"], x["shape"]) == (kernel, shape) and (v := num(x, "speedup"))]
        body.append(
            [
                kernel,
                shape,
                fmt(num(r, "speedup"), 1, "x"),
                spread(earlier, 1),
                fmt_ms(num(r, "reference_ms")),
                fmt_ms(num(r, "torch_ms")),
            ]
        )
    lines = [
        "Speed-up of the torch path over the reference implementation (reference ms / torch ms, same run, median).",
        "",
        *table(
            ["kernel", "shape", "speed-up", "over runs", "reference ms", "torch ms"],
            body,
            [False, False, True, True, True, True],
        ),
        "",
        *provenance(path, rows, used_runs),
    ]
    return Section(f"Kernels on CPU ({where})", lines)


def gpu_kernels_section(path: Path, rows: list[Row]) -> Section:
    where = split_name(path)[1]
    run = runs_of(rows)[-1]
    rows_run = [r for r in rows if r["run"] == run]
    torch_ms = {(r["op"], r["n"]): num(r, "fwdbwd_ms") for r in rows_run if r["backend"] == "torch"}
    body = []
    for r in rows_run:
        copy = num(r, "copy_gbps")
        pct = [num(r, f"{p}_gbps") / copy if num(r, f"{p}_gbps") and copy else None for p in ("fwd", "fwdbwd")]
        own, ref = num(r, "fwdbwd_ms"), torch_ms.get((r["op"], r["n"]))
        body.append(
            [
                r["op"],
                r["n"],
                r["backend"],
                fmt(ref / own, 1, "x") if own and ref and r["backend"] != "torch" else "",
                *[fmt(100 * p if p is not None else None, 0, "%") for p in pct],
                *[fmt_ms(num(r, f"{p}_ms")) for p in ("fwd", "bwd", "fwdbwd")],
                r.get("error") or "",
            ]
        )
    header = ["op", "n", "backend", "vs torch", "fwd % copy", "fwd+bwd % copy", "fwd ms", "bwd ms", "fwd+bwd ms"]
    header.append("note")
    lines = [
        "Speed-up: the torch path's forward+backward time / this backend's, same run; % copy: achieved bandwidth "
        "over a device-to-device copy's measured in the same run.",
        "",
        *table(header, body, [False, True, False, True, True, True, True, True, True, False]),
        "",
        *provenance(path, rows, {run}),
    ]
    return Section(f"GPU kernels ({where})", lines)


def gpu_models_section(path: Path, rows: list[Row]) -> Section:
    where = split_name(path)[1]
    run = runs_of(rows)[-1]
    rows_run = [r for r in rows if r["run"] == run]
    swin = next((r for r in rows_run if r["model"].startswith("swin_tiny")), {})
    body = []
    for r in rows_run:
        cells = [r["model"]]
        for mode in ("inference", "training"):
            own, base = num(r, mode), num(swin, mode)
            cells += [fmt(own / base if own and base else None, suffix="x"), fmt(own, 0)]
        cells.append(fmt(num(r, "training_peak_mb"), 0))
        body.append(cells)
    header = ["model", "inference vs Swin-T", "img/s", "training vs Swin-T", "img/s", "training peak MB"]
    lines = [
        "Images per second over Swin-T's in the same run (bf16 autocast, 224²).",
        "",
        *table(header, body, [False, True, True, True, True, True]),
        "",
        *provenance(path, rows, {run}),
    ]
    return Section(f"Models on GPU ({where})", lines)


# ----------------------------------------------------------------------------------------------------------- memory


def memory_section(path: Path, rows: list[Row]) -> Section:
    where = split_name(path)[1]
    by_case = latest_by(rows, lambda r: (r["model"], r["mode"], r["batch"], r["img_size"]))
    body, used_runs = [], set()
    for (model, mode, batch, size), crows in by_case.items():
        paths = {r["path"]: r for r in crows}
        used_runs.add(crows[0]["run"])
        for name in ("plain", "recompute", "cpu"):
            r = paths.get(name)
            if r is None:
                continue
            plain = paths.get("plain") if name != "plain" else None

            def rel(key: str, r: Row = r, plain: Row | None = plain) -> str:
                own, base = num(r, key), num(plain or {}, key)
                return fmt(own / base, suffix="x") if own and base else ""

            body.append(
                [
                    model,
                    mode,
                    batch,
                    f"{size}²",
                    name,
                    r["status"],
                    rel("peak_rss_mb"),
                    rel("saved_mb"),
                    rel("step_ms"),
                    fmt(num(r, "peak_rss_mb"), 0),
                    fmt(num(r, "saved_mb"), 0),
                    fmt(num(r, "step_ms"), 0),
                ]
            )
    header = ["model", "mode", "batch", "input", "path", "status", "peak / plain", "saved / plain", "step / plain"]
    header += ["peak RSS MB", "saved MB", "step ms"]
    lines = [
        "Training memory of the selective scans: the torch path's recompute form and the compiled CPU loops (`cpu`, "
        "the default for eager CPU training) against the torch path's plain form in the same run (peak resident "
        "memory of a fresh process, bytes autograd saves in one forward, time of a step).",
        "",
        *table(header, body, [False, False, True, True, False, False, *[True] * 6]),
        "",
        *provenance(path, rows, used_runs),
    ]
    return Section(f"Training memory ({where})", lines)


# -------------------------------------------------------------------------------------------------------- CPU speed

CPU_MODES = {
    "eager_b1": "eager b1",
    "eager_b8": "eager b8",
    "train_b2": "train step b2",
    "compiled_b1": "compiled b1",
    "ort_b1": "ORT b1",
}


def cpu_speed_section(path: Path, rows: list[Row]) -> Section:
    """Per model and mode, the latest run that timed it: milliseconds, and the ratio to each baseline's milliseconds
    in that mode and run (``<mode>_vs_<baseline>``)."""
    where = split_name(path)[1]
    baselines = list(dict.fromkeys(c.split("_vs_", 1)[1] for c in rows[0] if "_vs_" in c))
    models = list(dict.fromkeys(r["model"] for r in sorted(rows, key=lambda r: r["role"] != "baseline")))
    latest: dict[tuple[str, str], Row] = {}
    for r in rows:  # rows are in run order: later runs win
        for mode in CPU_MODES:
            if num(r, f"{mode}_ms") is not None:
                latest[(r["model"], mode)] = r
    modes = [m for m in CPU_MODES if any((model, m) in latest for model in models)]
    used_runs = {r["run"] for r in latest.values()}
    ratios, times, errors = [], [], []
    for model in models:
        cells = {m: latest.get((model, m)) for m in modes}
        first = next((r for r in cells.values() if r), None)
        last = [r for r in rows if r["model"] == model][-1]
        if last.get("error"):
            errors.append(f"{model}: {last['error']}")
        if first is None:
            continue
        label = f"{short(model)} (baseline)" if first["role"] == "baseline" else model
        ratio_cells = [
            fmt(num(cells[m], f"{m}_vs_{b}"), suffix="x") if cells[m] else "" for b in baselines for m in modes
        ]
        ratios.append([label, first["family"], f"{first['size']}²", *ratio_cells])
        compiled = cells.get("compiled_b1")
        ort = cells.get("ort_b1")
        parity = num(ort, "parity") if ort else None
        speedup = ""  # eager over compiled milliseconds, both from the compiled run
        if compiled and num(compiled, "eager_b1_ms") and num(compiled, "compiled_b1_ms"):
            speedup = fmt(num(compiled, "eager_b1_ms") / num(compiled, "compiled_b1_ms"), suffix="x")
        times.append(
            [
                label,
                *[fmt_ms(num(cells[m], f"{m}_ms")) if cells[m] else "" for m in modes],
                fmt(num(compiled, "compile_s"), 0) if compiled else "",
                speedup,
                f"{parity:.1e}" if parity is not None else "",
            ]
        )
    ratio_header = ["model", "family", "input", *[f"{CPU_MODES[m]} vs {short(b)}" for b in baselines for m in modes]]
    time_header = ["model", *[f"{CPU_MODES[m]} ms" for m in modes], "compile s", "compile speed-up", "ORT parity"]
    lines = [
        "CPU latency as a user meets it, every model at its own default input size with random weights: eager "
        "inference at batch 1 and 8, a training step at batch 2 (forward, cross-entropy, backward, AdamW step), "
        "`torch.compile` (inductor) at batch 1 and onnxruntime at batch 1. Each mode times all models in turn, "
        "round after round; a ratio is the model's milliseconds over the baseline's in the same mode and run "
        "(< 1: faster than the baseline).",
        "",
        *table(ratio_header, ratios, [False, False, True, *[True] * (len(ratio_header) - 3)], drop_empty=True),
        "",
        "Milliseconds (median pass). For the compiled mode: the seconds of the first call (compilation included) "
        "and the speed-up, eager over compiled milliseconds at batch 1 in the same run. ORT parity: the max abs "
        "difference of the exported logits from eager on photographs.",
        "",
        *table(time_header, times, [False, *[True] * (len(time_header) - 1)], drop_empty=True),
        "",
        *([f"- not measured: {e}" for e in errors] + [""] if errors else []),
        *provenance(path, rows, used_runs),
    ]
    return Section(f"CPU speed: eager, training, compiled, onnxruntime ({where})", lines)


# --------------------------------------------------------------------------------------------- onnxruntime floor

FLOOR_VARIANTS = {
    "exported": "as exported",
    "core_floor": "SS2D core at its floor",
    "no_core": "no SS2D core",
}


def onnx_scan_floor_section(path: Path, rows: list[Row]) -> Section:
    """Per model, its latest run: the exported graph, the graph with its SS2D cores at their floor and without them,
    each against the baselines exported and timed in the same run (``vs_<baseline>``)."""
    where = split_name(path)[1]
    baselines = [c.split("_", 1)[1] for c in rows[0] if c.startswith("vs_")]
    by_model = latest_by(rows, lambda r: r["model"])
    body, used_runs = [], set()
    for model, mrows in by_model.items():
        used_runs.add(mrows[0]["run"])
        label = model if any(r["variant"] != "exported" for r in mrows) else f"{short(model)} (baseline)"
        for r in mrows:
            ratios = [fmt(num(r, f"vs_{b}"), suffix="x") for b in baselines]
            body.append(
                [label, FLOOR_VARIANTS.get(r["variant"], r["variant"]), r["nodes"], fmt_ms(num(r, "ms")), *ratios]
            )
    header = ["model", "graph", "nodes", "ms", *[f"vs {short(b)}" for b in baselines]]
    lines = [
        "How fast the d_state-1 SS2D core could run in onnxruntime with standard ONNX ops. The floor keeps only the "
        "passes over the route tensors that any such graph of the scan makes (the projections, softplus, the decays "
        "and inputs, one multiply-add per element of the recurrence with its steps cut out and put back, the "
        "read-out and the sum of the routes) and drops the rest, so its values are not the scan's: its latency "
        "bounds from below what a rewrite of the exported graph can reach. Batch 1, every graph timed in turn with "
        "the baselines exported the same way.",
        "",
        *table(header, body, [False, False, True, True, *[True] * len(baselines)]),
        "",
        *provenance(path, rows, used_runs),
    ]
    return Section(f"onnxruntime floor of the SS2D core ({where})", lines)


# ------------------------------------------------------------------------------------------------------------ page

RENDERERS = {  # results file <what> -> section, in page order
    "latency_resolution": latency_section,
    "onnx": onnx_section,
    "clip_towers": clip_towers_section,
    "pruning": pruning_section,
    "kernels_cpu": kernels_cpu_section,
    "gpu_kernels": gpu_kernels_section,
    "gpu_models": gpu_models_section,
    "memory": memory_section,
    "cpu_speed": cpu_speed_section,
    "onnx_scan_floor": onnx_scan_floor_section,
}
MEASURED_BY = {
    "latency_resolution": "`vizoo bench MODEL ... --results`",
    "onnx": "`python tools/benchmark_onnx.py`",
    "clip_towers": "`python tools/benchmark_clip_towers.py`",
    "pruning": "`python tools/benchmark_pruning.py`",
    "kernels_cpu": "`python tools/benchmark.py`",
    "gpu_kernels": "`python tools/benchmark_kernels.py`",
    "gpu_models": "`python tools/benchmark_kernels.py`",
    "memory": "`python tools/benchmark_memory.py`",
    "cpu_speed": "`python tools/benchmark_cpu_speed.py`",
    "onnx_scan_floor": "`python tools/benchmark_onnx_scan_floor.py`",
}


def sections(results: Path) -> list[Section]:
    """One section per non-empty results file that has a renderer, in the order of RENDERERS then by machine."""
    order = list(RENDERERS)
    files = {path: split_name(path)[0] for path in results.glob("*.csv")}
    out = []
    for path in sorted((p for p in files if files[p] in RENDERERS), key=lambda p: (order.index(files[p]), p.name)):
        rows = read_rows(path)
        if rows:
            out.append(RENDERERS[files[path]](path, rows))
            out[-1].what = files[path]
    return out


def render(results: Path) -> tuple[str, dict[str, Callable]]:
    """The page's markdown and its plots (file name -> draw function)."""
    parts = sections(results)
    lines = [
        "# Benchmarks",
        "",
        "<!-- Generated by tools/benchmark_docs.py from results/*.csv: rerun the tools, do not edit this page. -->",
        "",
        "Every figure on this page comes from a results file in `results/`, named `<benchmark>_<machine>.csv` "
        "(`cpu2`: a machine with 2 CPUs; a GPU run adds the GPU, as in `cpu16-h100`). The benchmark tools append "
        "one row per measurement, so runs accumulate; each table shows the latest run of each model or case and "
        "names its file, machine, run and the command that measured it. Rerun that command, then "
        f"`{REGENERATE}`, to regenerate a table and its plot.",
        "",
        "Absolute times depend on the machine and its load: the figures to compare are the ratios, each taken "
        "against a baseline measured in the same run.",
        "",
        "| benchmark | measured by |",
        "|:---|:---|",
        *[f"| [{s.title}](#{anchor(s.title)}) | {MEASURED_BY[s.what]} |" for s in parts],
        "",
    ]
    plots: dict[str, Callable] = {}
    for s in parts:
        lines += [f"## {s.title}", "", *s.lines, ""]
        plots.update(s.plots)
    return "\n".join(lines).rstrip("\n") + "\n", plots


def anchor(title: str) -> str:
    """GitHub's and mkdocs' heading anchor: lowercase, punctuation dropped, spaces to hyphens."""
    text = "".join(c for c in title.lower() if c.isalnum() or c in " -_")
    return text.replace(" ", "-")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--results", type=Path, default=Path("results"), help="folder of the results CSVs")
    parser.add_argument("--docs", type=Path, default=Path("docs/benchmarks.md"), help="page to write or check")
    parser.add_argument("--check", action="store_true", help="exit 1 when the page differs from what results render")
    args = parser.parse_args(argv)
    text, plots = render(args.results)
    if args.check:
        current = args.docs.read_text() if args.docs.exists() else ""
        if current == text:
            print(f"{args.docs} is up to date with {args.results}/")
            return 0
        diff = difflib.unified_diff(
            current.splitlines(), text.splitlines(), str(args.docs), "rendered from results", lineterm="", n=1
        )
        print("\n".join(list(diff)[:60]))
        print(f"{args.docs} is out of date: run {REGENERATE}", file=sys.stderr)
        return 1
    args.docs.parent.mkdir(parents=True, exist_ok=True)
    args.docs.write_text(text)
    images = args.docs.parent / "img"
    images.mkdir(exist_ok=True)
    for name, draw in plots.items():
        draw(images / name)
        print(f"wrote {images / name}")
    print(f"wrote {args.docs}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
