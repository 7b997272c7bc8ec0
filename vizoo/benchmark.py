"""Latency benchmarking of backbones against timm baselines.

The timing is deliberately simple: eval mode, ``torch.inference_mode()``, a few warm-up passes, then repeated
forward passes until a minimum wall time has elapsed; the median pass is reported. Every model is built with
``pretrained=False`` so nothing is ever downloaded. ``result_rows`` turns the measured rows into rows of a results
file (``vizoo bench --results``, ``vizoo.utils.results``).
"""

from __future__ import annotations

import logging
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import timm
import torch
from torch import nn

__all__ = [
    "DEFAULT_BASELINES",
    "RESULT_COLUMNS",
    "BenchRow",
    "bench_models",
    "build_model",
    "format_slopes",
    "format_table",
    "latency_slope",
    "measure_latency",
    "model_slopes",
    "plot_latency",
    "result_rows",
    "text_table",
]

_logger = logging.getLogger(__name__)

DEFAULT_BASELINES: tuple[str, ...] = ("deit_small_patch16_224", "swin_tiny_patch4_window7_224")


def _as_input_size(input_size: int | Sequence[int]) -> tuple[int, int, int]:
    if isinstance(input_size, int):
        return (3, input_size, input_size)
    size = tuple(int(s) for s in input_size)
    if len(size) == 2:
        return (3, size[0], size[1])
    if len(size) != 3:
        raise ValueError(f"input_size must be an int, (H, W) or (C, H, W), got {input_size!r}")
    return size  # type: ignore[return-value]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure_latency(
    model: nn.Module,
    input_size: int | Sequence[int],
    batch_size: int = 1,
    device: str | torch.device = "cpu",
    warmup: int = 3,
    min_time_s: float = 1.0,
    dtype: torch.dtype | None = None,
    min_iters: int = 3,
    max_iters: int = 1000,
) -> dict[str, float]:
    """Time forward passes of ``model`` on random input of shape ``(batch_size, *input_size)``.

    The model is put in eval mode and moved (in place) to ``device``/``dtype``. After ``warmup`` untimed passes,
    passes are timed one by one until ``min_time_s`` has elapsed and at least ``min_iters`` were run.

    Returns a dict with ``latency_ms`` (median per batch), ``mean_ms``, ``min_ms``, ``throughput`` (images/s from
    the median), ``iters`` and ``batch_size``.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("CUDA device requested but torch.cuda.is_available() is False")
    c, h, w = _as_input_size(input_size)
    model.eval()
    model.to(device=device, dtype=dtype)
    x = torch.randn(batch_size, c, h, w, device=device, dtype=dtype or torch.float32)

    times: list[float] = []
    with torch.inference_mode():
        for _ in range(max(warmup, 0)):
            model(x)
        _sync(device)
        start = time.perf_counter()
        while len(times) < max_iters and (len(times) < min_iters or time.perf_counter() - start < min_time_s):
            t0 = time.perf_counter()
            model(x)
            _sync(device)
            times.append(time.perf_counter() - t0)

    median_s = statistics.median(times)
    result = {
        "latency_ms": median_s * 1e3,
        "mean_ms": statistics.fmean(times) * 1e3,
        "min_ms": min(times) * 1e3,
        "throughput": batch_size / median_s,
        "iters": float(len(times)),
        "batch_size": float(batch_size),
    }
    _logger.debug("latency %s @ %s: %.3f ms over %d iters", type(model).__name__, (c, h, w), median_s * 1e3, len(times))
    return result


def latency_slope(pixels: Sequence[float], latencies: Sequence[float]) -> float:
    """Least-squares slope of ``log(latency)`` against ``log(pixels)``.

    About 1 means latency grows linearly with the pixel count, about 2 quadratically (e.g. global attention at
    large sizes).
    """
    if len(pixels) != len(latencies):
        raise ValueError(f"got {len(pixels)} pixel counts but {len(latencies)} latencies")
    px = np.asarray(pixels, dtype=np.float64)
    lat = np.asarray(latencies, dtype=np.float64)
    if len(px) < 2 or len(np.unique(px)) < 2:
        raise ValueError("latency_slope needs at least two distinct pixel counts")
    if np.any(px <= 0) or np.any(lat <= 0):
        raise ValueError("pixel counts and latencies must be positive")
    slope, _ = np.polyfit(np.log(px), np.log(lat), 1)
    return float(slope)


def build_model(name: str, img_size: int, **kwargs) -> tuple[nn.Module, bool]:
    """Create timm model ``name`` (never pretrained) for ``img_size``.

    ``img_size`` is passed to the constructor when it accepts it (ViTs, Swin, ...); models that do not take it are
    built at their defaults, which is fine for size-agnostic networks. Returns ``(model, used_img_size)``.
    """
    try:
        return timm.create_model(name, pretrained=False, img_size=img_size, **kwargs), True
    except TypeError as e:
        if "img_size" not in str(e):
            raise
    return timm.create_model(name, pretrained=False, **kwargs), False


@dataclass
class BenchRow:
    """One measured (model, size) point. ``latency_ms`` is None when the model could not run at that size."""

    model: str
    size: int
    role: str = "model"  # "model" or "baseline"
    batch_size: int = 1
    device: str = "cpu"
    latency_ms: float | None = None
    throughput: float | None = None
    iters: int | None = None  # timed passes behind latency_ms
    ratios: dict[str, float | None] = field(default_factory=dict)  # baseline latency / model latency
    error: str | None = None  # why this model could not run at this size
    unavailable: dict[str, str] = field(default_factory=dict)  # baseline -> why its ratio is None

    @property
    def pixels(self) -> int:
        return self.size * self.size


def _short_error(e: BaseException) -> str:
    msg = str(e).strip().splitlines()[0] if str(e).strip() else ""
    msg = f"{type(e).__name__}: {msg}" if msg else type(e).__name__
    return msg if len(msg) <= 160 else msg[:157] + "..."


def bench_models(
    model_names: Sequence[str],
    sizes: Sequence[int],
    baselines: Sequence[str] = DEFAULT_BASELINES,
    device: str | torch.device = "cpu",
    batch_size: int = 1,
    warmup: int = 3,
    min_time_s: float = 1.0,
    dtype: torch.dtype | None = None,
    callback: Callable[[str, int, int], None] | None = None,
    rounds: int = 1,
) -> list[BenchRow]:
    """Measure every model and baseline at every square ``size`` in the same run.

    Returns the baseline rows followed by the model rows (each ordered by size). Model rows carry ``ratios``:
    for each baseline, baseline latency / model latency at the same size (> 1: the model is faster), or None when
    either side could not run at that size, with the reason in ``unavailable[baseline]`` (a row's own failure is
    in ``error``). ``callback(label, index, total)`` is called before each measurement (for progress bars).

    With ``rounds`` > 1 every model at a size is built first and then timed ``rounds`` times in turn, each time for
    ``min_time_s / rounds``; the latency is the median of the rounds' medians. On a shared machine load then falls on
    a model and its baselines alike, so the ratios hold even when the absolute figures drift.
    """
    if rounds < 1:
        raise ValueError(f"rounds must be >= 1, got {rounds}")
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("CUDA device requested but torch.cuda.is_available() is False")
    baselines = [b for b in dict.fromkeys(baselines) if b not in model_names]
    names = list(dict.fromkeys(model_names))
    sizes = list(dict.fromkeys(int(s) for s in sizes))
    for name in [*baselines, *names]:
        if not timm.is_model(name):
            raise ValueError(f"unknown model {name!r}")

    total = len(sizes) * (len(baselines) + len(names)) * rounds
    index = 0
    size_agnostic: dict[str, nn.Module] = {}  # models built without img_size are reused across sizes
    measured: dict[tuple[str, int], BenchRow] = {}

    def run_one(row: BenchRow, model: nn.Module | None, first: bool, round_medians: list[float]) -> nn.Module | None:
        """Time ``model`` (built first when None) once into ``round_medians``; on failure set ``row.error`` and
        return None."""
        nonlocal index
        if callback is not None:
            callback(f"{row.model} @ {row.size}", index, total)
        index += 1
        try:
            if model is None:
                model = size_agnostic.get(row.model)
            if model is None:
                model, used_img_size = build_model(row.model, row.size)
                if not used_img_size:
                    size_agnostic[row.model] = model
            stats = measure_latency(
                model,
                (3, row.size, row.size),
                batch_size,
                device,
                warmup=warmup if first else 1,
                min_time_s=min_time_s / rounds,
                dtype=dtype,
            )
            round_medians.append(stats["latency_ms"])
            row.iters = (row.iters or 0) + int(stats["iters"])
            return model
        except Exception as e:  # a model that cannot run at this size is recorded, not fatal
            if isinstance(e, torch.OutOfMemoryError) and device.type == "cuda":
                torch.cuda.empty_cache()
            row.error = f"{row.model} @ {row.size}: {_short_error(e)}"
            _logger.warning("could not run %s", row.error)
            return None

    for size in sizes:
        roles = [(name, "baseline") for name in baselines] + [(name, "model") for name in names]
        rows = [BenchRow(name, size, role, batch_size, str(device)) for name, role in roles]
        if rounds == 1:  # one model alive at a time
            for row in rows:
                medians: list[float] = []
                run_one(row, None, True, medians)
                row.latency_ms = medians[0] if medians else None
        else:
            models: dict[str, nn.Module | None] = {}
            medians_by_model: dict[str, list[float]] = {row.model: [] for row in rows}
            for r in range(rounds):
                for row in rows:
                    if row.error is None:
                        models[row.model] = run_one(row, models.get(row.model), r == 0, medians_by_model[row.model])
                    else:
                        index += 1
            models.clear()
            for row in rows:
                if row.error is None:
                    row.latency_ms = statistics.median(medians_by_model[row.model])
        for row in rows:
            if row.latency_ms is not None:
                row.throughput = batch_size * 1e3 / row.latency_ms
        for row in rows[: len(baselines)]:
            measured[(row.model, size)] = row
        for row in rows[len(baselines) :]:
            name = row.model
            for b in baselines:
                base = measured[(b, size)]
                if row.latency_ms is not None and base.latency_ms is not None:
                    row.ratios[b] = base.latency_ms / row.latency_ms
                else:
                    row.ratios[b] = None
                    row.unavailable[b] = base.error or row.error or "not measured"
            measured[(name, size)] = row
    if callback is not None:
        callback("done", total, total)

    order = {n: i for i, n in enumerate([*baselines, *names])}
    return sorted(measured.values(), key=lambda r: (r.role != "baseline", order[r.model], r.size))


RESULT_COLUMNS = ("model", "role", "size", "batch", "device", "dtype", "latency_ms", "throughput", "iters", "error")


def result_rows(rows: Sequence[BenchRow], dtype: str = "float32") -> list[dict[str, object]]:
    """``rows`` as rows of a results file (``results/latency_resolution_<where>.csv``, columns
    :data:`RESULT_COLUMNS`); ratios are left to the reader, which takes them against the baseline of the same run."""
    return [
        dict(
            model=r.model,
            role=r.role,
            size=r.size,
            batch=r.batch_size,
            device=r.device,
            dtype=dtype,
            latency_ms=r.latency_ms,
            throughput=r.throughput,
            iters=r.iters,
            error=r.error,
        )
        for r in rows
    ]


def model_slopes(rows: Sequence[BenchRow]) -> dict[str, float | None]:
    """Latency-vs-pixels log-log slope per model (None with fewer than two sizes that ran)."""
    points: dict[str, list[tuple[int, float]]] = {}
    for r in rows:
        points.setdefault(r.model, [])
        if r.latency_ms is not None:
            points[r.model].append((r.pixels, r.latency_ms))
    out: dict[str, float | None] = {}
    for name, pts in points.items():
        try:
            out[name] = latency_slope([p for p, _ in pts], [t for _, t in pts])
        except ValueError:
            out[name] = None
    return out


def text_table(rows: Sequence[Sequence[str]], right: Sequence[bool] | None = None) -> str:
    """Align ``rows`` (the first one is the header) into plain-text columns; ``right[i]`` right-aligns column i."""
    ncols = len(rows[0])
    right = list(right) if right is not None else [False] * ncols
    widths = [max(len(row[i]) for row in rows) for i in range(ncols)]
    lines = []
    for j, row in enumerate(rows):
        cells = [c.rjust(w) if r else c.ljust(w) for c, w, r in zip(row, widths, right, strict=True)]
        lines.append("  ".join(cells).rstrip())
        if j == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def format_table(rows: Sequence[BenchRow]) -> str:
    """Plain-text table: model, size, latency, throughput and one ratio column per baseline."""
    if not rows:
        return "(no results)"
    baselines = list(dict.fromkeys(b for r in rows for b in r.ratios))
    header = ["model", "size", "latency ms", "img/s", *[f"vs {b}" for b in baselines]]
    table = [header]
    for r in rows:
        name = r.model + (" (baseline)" if r.role == "baseline" else "")
        lat = f"{r.latency_ms:.2f}" if r.latency_ms is not None else "n/a"
        thr = f"{r.throughput:.1f}" if r.throughput is not None else "n/a"
        ratios = []
        for b in baselines:
            if r.role == "baseline":
                ratios.append("")
            else:
                v = r.ratios.get(b)
                ratios.append(f"{v:.2f}x" if v is not None else "n/a")
        table.append([name, str(r.size), lat, thr, *ratios])
    text = text_table(table, right=[False, True, True, True, *[True] * len(baselines)])
    notes = []
    if baselines:
        notes.append("ratio = baseline latency / model latency at the same size (> 1: model is faster)")
    seen = set()
    for r in rows:
        if r.error and r.error not in seen:
            seen.add(r.error)
            notes.append(f"unavailable: {r.error}")
    return text + ("\n" + "\n".join(notes) if notes else "")


def format_slopes(rows: Sequence[BenchRow]) -> str:
    """One line per model: log-log slope of latency against pixel count."""
    lines = ["log-log slope of latency vs pixel count (1 = linear, 2 = quadratic):"]
    for name, slope in model_slopes(rows).items():
        lines.append(f"  {name}: {slope:.2f}" if slope is not None else f"  {name}: n/a (needs two or more sizes)")
    return "\n".join(lines)


def plot_latency(rows: Sequence[BenchRow], path: str | Path, title: str | None = None) -> Path:
    """Write a log-log PNG of latency against pixel count, one line per model and baseline."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import NullLocator

    fig = Figure(figsize=(6.4, 4.8), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    series: dict[str, list[BenchRow]] = {}
    for r in rows:
        series.setdefault(r.model, []).append(r)
    for name, rs in series.items():
        pts = sorted((r.pixels, r.latency_ms) for r in rs if r.latency_ms is not None)
        if not pts:
            continue
        baseline = rs[0].role == "baseline"
        ax.plot(
            [p for p, _ in pts],
            [t for _, t in pts],
            linestyle="--" if baseline else "-",
            marker="s" if baseline else "o",
            label=name + (" (baseline)" if baseline else ""),
        )
    ax.set_xscale("log")
    ax.set_yscale("log")
    sizes = sorted({r.size for r in rows if r.latency_ms is not None})
    if sizes:  # label the measured sizes rather than bare powers of ten
        ax.set_xticks([s * s for s in sizes], [f"{s}²" for s in sizes])
        ax.xaxis.set_minor_locator(NullLocator())
    ax.set_xlabel("pixels per image")
    ax.set_ylabel("latency (ms)")
    device = rows[0].device if rows else "?"
    batch = rows[0].batch_size if rows else 1
    ax.set_title(title or f"latency vs input size ({device}, batch {batch})")
    ax.grid(True, which="both", alpha=0.3)
    if ax.lines:
        ax.legend(fontsize="small")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png")
    _logger.info("wrote latency plot to %s", path)
    return path
