"""Benchmark results as data: one CSV file per benchmark and machine, ``results/<what>_<where>.csv``.

Every benchmark tool appends its rows through :class:`ResultsWriter`, so repeated runs accumulate and
``tools/benchmark_docs.py`` can render the latest run (or the spread over runs) into ``docs/benchmarks.md``. Each row
starts with the same columns (:data:`COMMON_COLUMNS`):

- ``run``: the run's id, the UTC time it started (``2026-01-31T12:00:00Z``); every row of one run shares it, so that
  a ratio is only ever taken against a baseline of the same run;
- ``date``: the run's UTC date;
- ``machine``: :func:`machine_tag`, the "where" of the file name;
- ``torch``: the torch version;
- ``threads``: torch's CPU threads;
- ``command``: the command line that measured the row.

``<where>`` is a stable description of the hardware rather than the host name (which is random on cloud machines):
``cpu<N>`` from the CPUs this process may use, and with ``-<gpu>`` appended for rows measured on a CUDA device
(``cpu16-h100``). ``<what>`` may contain underscores, ``<where>`` never does.

Only the standard library and torch are imported, so the GPU tools can use this module on a bare GPU image.
"""

from __future__ import annotations

import csv
import os
import re
import shlex
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import torch

__all__ = [
    "COMMON_COLUMNS",
    "RESULTS_DIR",
    "RESULTS_DIR_ENV",
    "ResultsWriter",
    "command_line",
    "cpu_count",
    "gpu_slug",
    "machine_tag",
    "read_rows",
    "results_path",
    "run_id",
    "split_name",
]

RESULTS_DIR = Path("results")
# Set to send every tool's rows elsewhere; the test suite points it at a scratch folder so tests never add rows here.
RESULTS_DIR_ENV = "VIZOO_RESULTS_DIR"
COMMON_COLUMNS = ("run", "date", "machine", "torch", "threads", "command")

_VENDOR_WORDS = {"nvidia", "geforce", "tesla", "quadro", "amd", "radeon", "instinct"}
_FORM_WORDS = re.compile(r"^(\d+gb|sxm\d*|pcie|hbm\d*e?|nvl|mig.*|\d+g\..*|gb|max-q|laptop|gpu)$")


def cpu_count() -> int:
    """CPUs this process may run on (its affinity mask where the OS has one), not the host's total."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def gpu_slug(name: str) -> str:
    """A short lowercase tag of a GPU name: ``NVIDIA H100 80GB HBM3`` -> ``h100``, ``NVIDIA A100-SXM4-80GB`` ->
    ``a100``, ``NVIDIA GeForce RTX 4090`` -> ``rtx4090``, ``Tesla T4`` -> ``t4``."""
    words = [w for w in re.split(r"[\s\-_/()]+", name.lower()) if w]
    words = [w for w in words if w not in _VENDOR_WORDS and not _FORM_WORDS.match(w)]
    if not words:
        return "gpu"
    slug = words[0]
    if slug.isalpha() and len(words) > 1:  # a series word before the model number: "rtx 4090", "rx 7900"
        slug += words[1]
    return re.sub(r"[^a-z0-9.]", "", slug) or "gpu"


def machine_tag(device: str | torch.device | None = None) -> str:
    """Where rows were measured: ``cpu<N>``, plus ``-<gpu slug>`` when ``device`` is a CUDA device."""
    tag = f"cpu{cpu_count()}"
    if device is not None and torch.device(device).type == "cuda":
        tag += "-" + gpu_slug(torch.cuda.get_device_name(torch.device(device)))
    return tag


def results_path(what: str, where: str | None = None, root: str | Path | None = None) -> Path:
    """``root/<what>_<where>.csv``; ``where`` defaults to this machine's CPU tag, ``root`` to ``$VIZOO_RESULTS_DIR``
    or ``results``."""
    root = root if root is not None else os.environ.get(RESULTS_DIR_ENV) or RESULTS_DIR
    where = where or machine_tag()
    if "_" in where or os.sep in where:
        raise ValueError(f"a machine tag has no '_' or path separator: {where!r}")
    return Path(root) / f"{what}_{where}.csv"


def split_name(path: str | Path) -> tuple[str, str]:
    """(what, where) of a results file name ``<what>_<where>.csv``."""
    stem = Path(path).stem
    what, sep, where = stem.rpartition("_")
    if not sep or not what:
        raise ValueError(f"not a results file name <what>_<where>.csv: {Path(path).name}")
    return what, where


def run_id(seconds: float | None = None) -> str:
    """The id of a run that starts now (or at ``seconds`` since the epoch): its UTC time to the second."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(seconds))


def command_line(argv: Sequence[str] | None = None, program: str | None = None) -> str:
    """The command that ran: ``program`` (default ``python <script>`` as invoked) and ``argv`` (default
    ``sys.argv[1:]``), shell-quoted."""
    if program is None:
        script = Path(sys.argv[0])
        try:
            script = script.resolve().relative_to(Path.cwd())
        except ValueError:
            pass
        program = f"python {script.as_posix()}"
    args = list(sys.argv[1:] if argv is None else argv)
    return " ".join([program, *map(shlex.quote, args)])


def read_rows(path: str | Path) -> list[dict[str, str]]:
    """The rows of a results file as dicts of strings (empty list when it does not exist)."""
    path = Path(path)
    if not path.exists():
        return []
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


class ResultsWriter:
    """Appends rows to one results file, each with the common columns of this run first.

    ``columns`` are the tool's own columns, in order. A file with a header that lacks some of them is rewritten once
    with the union of both headers (the old rows get empty cells), so that a tool may gain columns over time without
    losing earlier runs. Rows are written (and flushed) as they come, so an interrupted run keeps what it measured.
    """

    def __init__(
        self,
        path: str | Path,
        columns: Sequence[str],
        *,
        machine: str | None = None,
        command: str | None = None,
        run: str | None = None,
        threads: int | None = None,
    ) -> None:
        self.path = Path(path)
        self.run = run or run_id()
        self.common = {
            "run": self.run,
            "date": self.run[:10],
            "machine": machine or machine_tag(),
            "torch": torch.__version__.split("+")[0],
            "threads": threads,
            "command": command if command is not None else command_line(),
        }
        self.columns = [*COMMON_COLUMNS, *(c for c in columns if c not in COMMON_COLUMNS)]
        self.rows_written = 0

    def _header(self) -> list[str]:
        """The file's header after making sure it holds ``self.columns``."""
        if not self.path.exists() or self.path.stat().st_size == 0:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.path, "w", newline="") as f:
                csv.writer(f).writerow(self.columns)
            return self.columns
        with open(self.path, newline="") as f:
            reader = csv.DictReader(f)
            header = list(reader.fieldnames or [])
            missing = [c for c in self.columns if c not in header]
            if not missing:
                return header
            old_rows = list(reader)
        header += missing
        with open(self.path, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=header, restval="")
            writer.writeheader()
            writer.writerows(old_rows)
        return header

    def write(self, row: Mapping[str, object]) -> None:
        """Append one row (the tool's columns; unknown keys are an error, missing ones stay empty)."""
        self.write_many([row])

    def write_many(self, rows: Iterable[Mapping[str, object]]) -> None:
        rows = list(rows)
        if not rows:
            return
        header = self._header()
        with open(self.path, "a", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=header, restval="")
            for row in rows:
                unknown = set(row) - set(self.columns)
                if unknown:
                    raise KeyError(f"columns not declared for {self.path.name}: {sorted(unknown)}")
                threads = self.common["threads"] or torch.get_num_threads()
                writer.writerow({**self.common, "threads": threads, **{k: _cell(v) for k, v in row.items()}})
        self.rows_written += len(rows)


def _cell(value: object) -> object:
    """CSV cell text: None empty, floats to 6 significant digits (measurements carry no more)."""
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.6g}"
    return value
