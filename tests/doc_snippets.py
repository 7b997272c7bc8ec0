"""Find the code blocks of the project's Markdown pages, and run or check them (used by ``test_docs_snippets.py``).

Pages: ``README.md`` and every ``docs/**/*.md`` except the generated API reference under ``docs/api/``.

Python blocks (```` ```python ````, ```` ```py ````) run: the blocks of one page run in order in one namespace, like
a doctest session, in a scratch working directory shared by the page's blocks (with links to the checkout's
``configs/`` and ``tools/``: ``CHECKOUT_LINKS``), with the network blocked (``no_network``). Before a block runs,
its source is rewritten by two explicit tables, and the rewritten source is what a failure shows:

- model names (``model_swaps``): every full-size vizoo model becomes the tiny ``test_`` model of its family (the
  families of the model table, ``vizoo.model_table.families()``: each family has one ``test_`` model), and the timm
  models named in ``TIMM_SWAPS`` become timm's tiny test models. A name is swapped wherever it appears as a whole word.
- square input sizes (``SIZE_PATTERNS``): a pair ``N, N`` of a full-size input size (``torch.randn(1, 3, 224,
  224)``, ``img_size=(640, 640)``, ``input_size=(3, 224, 224)``) and ``img_size=N`` become the default input size of
  the test model swapped in, the size of the block's swapped models (or, in a block that swaps none, of the page's
  last block that did). A block whose swapped models differ in size keeps its sizes.

Shell blocks (```` ```bash ````, ```` ```sh ````, ```` ```shell ````, ```` ```console ````, where only ``$ ``
lines are commands when any line has that prompt) are checked without running anything long: comments are dropped,
``\\`` continuations joined, lines split at ``;``, ``&&``, ``||`` and ``|``, leading ``VAR=value`` assignments
dropped, and each command is checked by its program (``check_command``):

- ``vizoo ...``, ``python -m vizoo ...`` and ``torchrun ... -m vizoo ...``: parsed by vizoo's own argparse parser
  (``vizoo.cli.build_parser``) without running the command; an argument ``...`` is an elision and is dropped; the
  model names given (positional models, ``--model``, ``--baselines``) must be registered in timm, and paths under
  ``configs/`` or ``tools/`` must exist.
- ``python tools/X.py ...`` and ``python -m MODULE ...``: ``--help`` exits 0 (run once per tool and cached), and
  every option used appears in that help text. ``torchrun``'s own options are checked against ``torchrun --help``.
- ``make TARGET``: the Makefile defines the target. ``pip install``: requirement files exist and the extras named
  in ``.[extra,...]`` are optional dependencies in ``pyproject.toml``. ``bash SCRIPT``: the script exists.
- ``PROGRAMS_ON_PATH`` (``git``, ``mkdocs``, ``pytest``, ...): found on PATH or in the venv. Any other program is
  reported, so a new kind of command gets a check (or a place in that table) on purpose.

Markers: an HTML comment on the line right before a block's opening fence.

- ``<!-- snippet: skip: REASON -->``: the block is not run or checked and its test is skipped with REASON (for
  blocks that truly cannot run here: a CUDA GPU, ImageNet, hours of training). Keep REASON one a reviewer accepts.

A comment starting ``<!-- snippet`` that is not a well-formed marker, or one not followed by a fence, is reported as
an error of the page. Blocks in other languages (``text``, ``yaml``, none) are not collected.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import linecache
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
import traceback
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

PYTHON_LANGS = {"python", "py", "python3"}
SHELL_LANGS = {"bash", "sh", "shell", "console"}

# timm models the pages use, with the timm test model that stands in for each (same architecture, tiny).
TIMM_SWAPS = {
    "deit_tiny_patch16_224": "test_vit",
    "deit_small_patch16_224": "test_vit",
    "deit_base_patch16_224": "test_vit",
    "vit_tiny_patch16_224": "test_vit",
    "vit_small_patch16_224": "test_vit",
    "vit_base_patch16_224": "test_vit",
}

# Square input sizes of full-size models, rewritten to the test model's size where SIZE_PATTERNS match.
FULL_SIZES = (192, 224, 256, 288, 320, 384, 448, 512, 640, 768, 800, 1024)
_SIZES = "|".join(map(str, FULL_SIZES))
SIZE_PATTERNS = (
    # "N, N": the last two numbers of (B, C, N, N) and (C, N, N), or an (N, N) pair
    re.compile(rf"(?<![\w.])({_SIZES})(\s*,\s*)\1(?![\w.])"),
    # img_size=N
    re.compile(rf"(?<=\bimg_size=)({_SIZES})(?![\w.])"),
)

# Environment of python blocks: albumentations asks PyPI for a newer version when imported, which the network guard
# would report as the snippet's own network access.
SNIPPET_ENV = {"NO_ALBUMENTATIONS_UPDATE": "1"}
# Folders of the checkout linked into a page's scratch folder: snippets read them by relative path, as a user does
# from the root of a checkout (e.g. Config.fromfile("configs/mmdet/...")).
CHECKOUT_LINKS = ("configs", "tools")

# Programs whose commands are only checked for being installed (on PATH or in the venv).
PROGRAMS_ON_PATH = {"git", "mkdocs", "pytest", "ruff"}
# Shell builtins accepted as they are.
BUILTINS = {"cd", "export", "source", "echo", "mkdir"}

_MARKER = re.compile(r"^\s*<!--\s*snippet\s*:\s*(?P<body>.*?)\s*-->\s*$")
_FENCE = re.compile(r"^(?P<indent>\s*)(?P<fence>`{3,}|~{3,})\s*(?P<lang>[\w+-]*)")


# ---------------------------------------------------------------------------------------------------------------
# pages and blocks


@dataclass(frozen=True)
class Block:
    """One fenced code block. ``line`` is the opening fence's line (1-based), ``code_line`` the first code line."""

    page: str  # the page as shown in test ids, relative to the root, e.g. "README.md" or "docs/training.md"
    line: int
    lang: str
    source: str
    skip: str | None = None  # the reason of a skip marker

    @property
    def id(self) -> str:
        return f"{self.page}:{self.line}"

    @property
    def code_line(self) -> int:
        return self.line + 1

    @property
    def kind(self) -> str | None:
        if self.lang in PYTHON_LANGS:
            return "python"
        if self.lang in SHELL_LANGS:
            return "shell"
        return None


@dataclass
class Page:
    """The collected blocks of one page, and its marker errors ("page:line: message")."""

    name: str
    blocks: list[Block] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


def pages(root: Path = ROOT) -> list[Path]:
    """README.md and docs/**/*.md, without docs/api/ (rendered from docstrings)."""
    docs = root / "docs"
    found = [root / "README.md"] if (root / "README.md").exists() else []
    found += sorted(p for p in docs.rglob("*.md") if "api" not in p.relative_to(docs).parts[:1])
    return found


def parse_page(path: Path, root: Path = ROOT) -> Page:
    """The python and shell blocks of a Markdown page, with their skip markers."""
    name = path.relative_to(root).as_posix() if path.is_relative_to(root) else path.name
    page = Page(name)
    lines = path.read_text().splitlines()
    i = 0
    marker: tuple[int, str] | None = None  # (line, reason) of a skip marker waiting for its fence
    while i < len(lines):
        text = lines[i]
        m = _FENCE.match(text)
        if m is None:
            if marker is not None:
                page.errors.append(f"{name}:{marker[0]}: snippet marker not on the line right before a code fence")
                marker = None
            if "<!--" in text and re.search(r"<!--\s*snippet", text):
                mm = _MARKER.match(text)
                kind, _, reason = (mm.group("body") if mm else "").partition(":")
                if mm is None or kind.strip() != "skip" or not reason.strip():
                    page.errors.append(
                        f"{name}:{i + 1}: malformed snippet marker {text.strip()!r}; "
                        "the one marker is <!-- snippet: skip: REASON -->"
                    )
                else:
                    marker = (i + 1, reason.strip())
            i += 1
            continue
        indent, fence, lang = len(m.group("indent")), m.group("fence"), m.group("lang").lower()
        start = i
        body: list[str] = []
        i += 1
        closing = re.compile(rf"^\s*{re.escape(fence[0])}{{{len(fence)},}}\s*$")
        while i < len(lines) and not closing.match(lines[i]):
            body.append(lines[i][indent:] if lines[i][:indent].strip() == "" else lines[i].lstrip())
            i += 1
        i += 1  # the closing fence
        block = Block(name, start + 1, lang, "\n".join(body) + "\n", marker[1] if marker else None)
        if block.kind is not None:
            page.blocks.append(block)
        elif marker is not None:
            page.errors.append(f"{name}:{marker[0]}: skip marker on a {lang or 'plain'} block, which is not checked")
        marker = None
    if marker is not None:
        page.errors.append(f"{name}:{marker[0]}: snippet marker not on the line right before a code fence")
    return page


def all_pages(root: Path = ROOT) -> list[Page]:
    return [parse_page(p, root) for p in pages(root)]


# ---------------------------------------------------------------------------------------------------------------
# python blocks: the rewrite


@cache
def model_swaps() -> dict[str, str]:
    """Full-size model name -> the test model standing in for it.

    vizoo's models map to the ``test_`` model of their family (``vizoo.model_table.families()``: the family of every
    registered model, read from the timm registry, as the model table is); timm's follow TIMM_SWAPS.
    """
    from vizoo import model_table

    family = model_table.families()
    tests: dict[str, str] = {}
    for name in sorted(family):
        if name.startswith("test_"):
            tests.setdefault(family[name], name)
    swaps = {name: tests[fam] for name, fam in family.items() if not name.startswith("test_") and fam in tests}
    return {**swaps, **TIMM_SWAPS}


@cache
def input_size_of(name: str) -> int:
    """The square default input size of a test model (its pretrained cfg's, as the model table records it)."""
    import timm

    import vizoo  # noqa: F401  (registers the models)

    return timm.get_pretrained_cfg(name).input_size[-1]


@dataclass(frozen=True)
class Rewrite:
    source: str
    changes: tuple[str, ...]  # "old -> new" for each kind of substitution made
    size: int | None  # the input size the block's sizes were rewritten to (None: not decided)


def rewrite_python(source: str, page_size: int | None = None) -> Rewrite:
    """Swap full-size model names for test models and full-size square inputs for the test models' size."""
    swaps = model_swaps()
    changes: list[str] = []
    used: set[str] = set()

    def swap(m: re.Match) -> str:
        new = swaps[m.group(0)]
        used.add(new)
        change = f"{m.group(0)} -> {new}"
        if change not in changes:
            changes.append(change)
        return new

    names = sorted(swaps, key=len, reverse=True)
    out = re.sub(r"\b(?:" + "|".join(map(re.escape, names)) + r")\b", swap, source) if names else source
    sizes = sorted({input_size_of(n) for n in used})
    if len(sizes) > 1:
        changes.append(f"input sizes kept: the swapped models take different sizes {sizes}")
    size = sizes[0] if len(sizes) == 1 else (page_size if not sizes else None)

    def resize(m: re.Match) -> str:
        new = m.group(0).replace(m.group(1), str(size))
        change = f"{m.group(0)} -> {new}"
        if change not in changes:
            changes.append(change)
        return new

    if size is not None:
        for pattern in SIZE_PATTERNS:
            out = pattern.sub(resize, out)
    return Rewrite(out, tuple(changes), size)


# ---------------------------------------------------------------------------------------------------------------
# python blocks: running


class NetworkBlocked(RuntimeError):
    """Raised by the socket guard; not an OSError, so that libraries do not take it for a network outage."""


@contextlib.contextmanager
def no_network() -> Iterator[list[str]]:
    """Block every socket connection and name lookup, and set SNIPPET_ENV.

    Yields the list of attempts, which keeps them even where a library caught the error and carried on.
    """
    import pytest

    attempts: list[str] = []

    def refuse(what: str):
        def blocked(*args, **kwargs):
            target = args[1] if what.startswith("socket.") and len(args) > 1 else (args[0] if args else "")
            attempts.append(f"{what}({target!r})")
            raise NetworkBlocked(f"network access during a doc snippet: {what}({target!r})")

        return blocked

    with pytest.MonkeyPatch.context() as mp:
        for name, value in SNIPPET_ENV.items():
            mp.setenv(name, value)
        mp.setattr(socket.socket, "connect", refuse("socket.connect"))
        mp.setattr(socket.socket, "connect_ex", refuse("socket.connect_ex"))
        mp.setattr(socket, "create_connection", refuse("create_connection"))
        mp.setattr(socket, "getaddrinfo", refuse("getaddrinfo"))
        yield attempts


def _listing(block: Block, rewrite: Rewrite, bad_line: int | None = None) -> str:
    lines = rewrite.source.rstrip("\n").splitlines()
    width = len(str(block.code_line + len(lines)))
    out = []
    for k, text in enumerate(lines):
        n = block.code_line + k
        out.append(f"{'>' if n == bad_line else ' '} {n:>{width}} | {text}")
    return "\n".join(out)


def run_python(block: Block, namespace: dict, page_size: int | None = None) -> tuple[str | None, Rewrite]:
    """Run one python block (rewritten) in ``namespace`` with the network blocked, in the current directory.

    Returns (None, rewrite) on success, else (message, rewrite) where the message gives the error, the rewritten
    source with the markdown page's line numbers and the traceback into it.
    """
    rewrite = rewrite_python(block.source, page_size)
    filename = f"<{block.id} rewritten>"
    padded = "\n" * (block.code_line - 1) + rewrite.source
    linecache.cache[filename] = (len(padded), None, padded.splitlines(keepends=True), filename)
    stdout, stderr = io.StringIO(), io.StringIO()
    error: BaseException | None = None
    with no_network() as attempts:
        try:
            code = compile(padded, filename, "exec")
            with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
                exec(code, namespace)
        except (Exception, SystemExit) as e:  # a SystemExit from a snippet is a failure too
            error = e
    if error is None and not attempts:
        return None, rewrite
    bad_line = None
    if error is not None:
        frames = traceback.extract_tb(error.__traceback__)
        snippet_frames = [f for f in frames if f.filename == filename]
        bad_line = snippet_frames[-1].lineno if snippet_frames else getattr(error, "lineno", None)
        # drop this function's own frame: the traceback starts in the snippet
        tb = error.__traceback__.tb_next if error.__traceback__ is not None else None
        tb_text = "".join(traceback.format_exception(type(error), error, tb))
        head = f"{block.id}: {type(error).__name__}: {error}"
    else:
        tb_text = ""
        head = f"{block.id}: the block tried to reach the network"
    parts = [head]
    if attempts:
        parts.append("network access attempted (blocked): " + ", ".join(attempts[:5]))
    parts.append("rewrites: " + ("; ".join(rewrite.changes) if rewrite.changes else "none"))
    parts.append("source as run (line numbers of the page):\n" + _listing(block, rewrite, bad_line))
    if tb_text:
        parts.append("traceback:\n" + tb_text.rstrip())
    for label, buf in (("stdout", stdout), ("stderr", stderr)):
        if buf.getvalue().strip():
            parts.append(f"{label}:\n" + buf.getvalue().rstrip()[-3000:])
    return "\n\n".join(parts), rewrite


class PageSession:
    """The python blocks of one page, run in order in one namespace (each block at most once per process).

    ``outcome(i)`` runs the blocks up to ``i`` that have not run yet, so a block's test gets the namespace of the
    blocks before it even when a test runner hands out tests in another order or splits them across processes.
    """

    def __init__(self, blocks: list[Block], workdir: Path):
        self.blocks = blocks
        self.workdir = workdir
        for name in CHECKOUT_LINKS:
            if (ROOT / name).exists() and not (workdir / name).exists():
                (workdir / name).symlink_to(ROOT / name, target_is_directory=True)
        self.namespace: dict = {"__name__": "__main__"}
        self.results: list[str | None] = []  # failure message (or None) of each block run so far
        self.size: int | None = None

    def outcome(self, index: int) -> str | None:
        while len(self.results) <= index:
            block = self.blocks[len(self.results)]
            if block.skip is not None:
                self.results.append(None)
                continue
            message, rewrite = run_python(block, self.namespace, self.size)
            if rewrite.size is not None:
                self.size = rewrite.size
            if message is not None:
                earlier = [b for b, r in zip(self.blocks, self.results, strict=False) if r is not None or b.skip]
                if earlier:
                    why = ", ".join(f"{b.id} ({'skipped' if b.skip else 'failed'})" for b in earlier)
                    message += f"\n\nnote: earlier blocks of this page did not run to the end: {why}"
            self.results.append(message)
        return self.results[index]


# ---------------------------------------------------------------------------------------------------------------
# shell blocks


@dataclass(frozen=True)
class Command:
    line: int  # line in the page
    argv: tuple[str, ...]
    text: str


def _lexer(text: str) -> shlex.shlex:
    lexer = shlex.shlex(text, posix=True, punctuation_chars=";&|")
    lexer.whitespace_split = True
    lexer.commenters = "#"
    return lexer


def _continues(text: str) -> bool:
    """The line ends in a backslash that escapes the newline (not one inside a comment or quotes)."""
    if not text.rstrip().endswith("\\"):
        return False
    try:
        list(_lexer(text.rstrip()))
    except ValueError as e:  # "No escaped character": the backslash is the last thing on the line
        return "escaped" in str(e)
    return False


def shell_commands(block: Block) -> list[Command]:
    """The commands of a shell block: comments dropped, continuations joined, split at ; && || |."""
    raw = block.source.splitlines()
    prompt = any(s.startswith("$ ") for s in raw)
    logical: list[tuple[int, str]] = []
    k = 0
    while k < len(raw):
        start, text = k, raw[k]
        if prompt:
            if not text.startswith("$ "):
                k += 1
                continue
            text = text[2:]
        while _continues(text) and k + 1 < len(raw):
            k += 1
            text = text.rstrip()[:-1] + " " + raw[k]
        logical.append((block.code_line + start, text))
        k += 1
    commands = []
    for line, text in logical:
        try:
            tokens = list(_lexer(text))
        except ValueError as e:
            tokens = ["<unparsable>", text, str(e)]
        current: list[str] = []
        for tok in [*tokens, ";"]:
            if tok and set(tok) <= set(";&|"):
                while current and re.fullmatch(r"[A-Za-z_]\w*=.*", current[0]):
                    current.pop(0)  # VAR=value before the program
                if current:
                    commands.append(Command(line, tuple(current), shlex.join(current)))
                current = []
            else:
                current.append(tok)
    return commands


@cache
def help_text(argv: tuple[str, ...]) -> tuple[int, str]:
    """(exit code, stdout + stderr) of ``argv + --help``, run once per argv."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    p = subprocess.run([*argv, "--help"], cwd=ROOT, capture_output=True, text=True, timeout=300, env=env)
    return p.returncode, p.stdout + p.stderr


def _is_option(tok: str) -> bool:
    return tok.startswith("-") and tok not in ("-", "--") and not re.fullmatch(r"-[\d.]+(e-?\d+)?", tok)


def check_help(prefix: tuple[str, ...], args: list[str], shown: str) -> list[str]:
    """``prefix --help`` exits 0 and names every option in ``args``."""
    rc, text = help_text(prefix)
    if rc != 0:
        return [f"`{shown} --help` exited {rc}: {text.strip()[-500:]}"]
    missing = [
        tok.split("=", 1)[0]
        for tok in args
        if _is_option(tok) and not re.search(rf"(?<![\w-]){re.escape(tok.split('=', 1)[0])}(?![\w-])", text)
    ]
    return [f"{shown}: option {opt} is not in its --help" for opt in dict.fromkeys(missing)]


@cache
def _vizoo_parser() -> argparse.ArgumentParser:
    from vizoo.cli import build_parser

    return build_parser()


def _looks_like_path(value: str) -> bool:
    return "/" in value or os.sep in value or any(c in value for c in "*?[") or Path(value).suffix != ""


def check_vizoo(args: list[str]) -> list[str]:
    """Parse a ``vizoo`` argument list with vizoo's parser (nothing runs) and check the model names and paths."""
    import timm

    import vizoo  # noqa: F401  (registers the models)

    args = [a for a in args if a != "..."]
    out, err = io.StringIO(), io.StringIO()
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            ns = _vizoo_parser().parse_args(args)
    except SystemExit as e:
        if e.code in (0, None):  # --help
            return []
        return [f"`vizoo {shlex.join(args)}` does not parse: {err.getvalue().strip().splitlines()[-1]}"]
    problems = []
    names: list[str] = []
    for attr in ("model", "models", "baselines"):
        value = getattr(ns, attr, None)
        if isinstance(value, str):
            names.append(value)
        elif isinstance(value, list):
            names += [v for v in value if isinstance(v, str)]
    for name in names:
        if not _looks_like_path(name) and not timm.is_model(name):
            problems.append(f"`vizoo {shlex.join(args)}`: {name!r} is not a registered model")
    for a in args:
        value = a.split("=", 1)[-1]
        if value.startswith(("configs/", "tools/")) and not (ROOT / value).exists():
            problems.append(f"`vizoo {shlex.join(args)}`: {value} does not exist")
    return problems


@cache
def optional_dependencies() -> frozenset[str]:
    """The extras of pyproject.toml (the keys of [project.optional-dependencies]; no tomllib on Python 3.10)."""
    text = (ROOT / "pyproject.toml").read_text()
    m = re.search(r"^\[project\.optional-dependencies\]\n(.*?)(?=^\[)", text + "\n[", re.M | re.S)
    return frozenset(re.findall(r"^([A-Za-z0-9][\w.-]*)\s*=", m.group(1), re.M)) if m else frozenset()


def check_pip(args: list[str]) -> list[str]:
    if not args or args[0] != "install":
        return [f"pip {' '.join(args[:1])}: only `pip install` is checked"]
    problems = []
    take_file = False
    for tok in args[1:]:
        if take_file:
            if not (ROOT / tok).exists():
                problems.append(f"pip install: {tok} does not exist")
            take_file = False
            continue
        if tok in ("-r", "--requirement", "-c", "--constraint"):
            take_file = True
            continue
        if tok.startswith("-"):
            continue
        m = re.fullmatch(r"(?P<path>\.{1,2}(?:/[^\[]*)?)(?:\[(?P<extras>[^\]]*)\])?", tok)
        if m is None:
            continue  # a package from the index: its name is not checked here
        if not (ROOT / m.group("path")).exists():
            problems.append(f"pip install: {m.group('path')} does not exist")
        extras = [e.strip() for e in (m.group("extras") or "").split(",") if e.strip()]
        unknown = [e for e in extras if e not in optional_dependencies()]
        if unknown:
            problems.append(
                f"pip install {tok}: no extra {', '.join(unknown)} in pyproject.toml "
                f"(extras: {', '.join(sorted(optional_dependencies()))})"
            )
    return problems


@cache
def makefile_targets() -> frozenset[str]:
    from test_makefile import makefile_targets as targets  # the rule tests/test_makefile.py checks with

    return frozenset(targets())


def _python_invocation(args: list[str], shown: str) -> list[str]:
    """Checks of ``python ARGS``: ``-m MODULE ...``, ``SCRIPT.py ...`` or ``-c CODE``."""
    if not args:
        return []
    if args[0] == "-m" and len(args) > 1:
        module, rest = args[1], args[2:]
        if module == "vizoo":
            return check_vizoo(rest)
        if module == "pip":
            return check_pip(rest)
        return check_help((sys.executable, "-m", module), rest, f"python -m {module}")
    if args[0] == "-c":
        return []
    script = args[0]
    if not (ROOT / script).is_file():
        return [f"{shown}: {script} does not exist"]
    return check_help((sys.executable, str(ROOT / script)), args[1:], f"python {script}")


def which(program: str) -> str | None:
    venv_bin = Path(sys.executable).parent
    return shutil.which(program) or shutil.which(program, path=str(venv_bin))


def check_command(cmd: Command) -> list[str]:
    """Problems of one shell command (empty: fine)."""
    if cmd.argv[0] == "<unparsable>":
        return [f"the shell line {cmd.argv[1]!r} does not split into words: {cmd.argv[2]}"]
    program, args = Path(cmd.argv[0]).name, list(cmd.argv[1:])
    if program in BUILTINS:
        return []
    if program == "vizoo":
        return check_vizoo(args)
    if program in ("python", "python3"):
        return _python_invocation(args, cmd.text)
    if program in ("pip", "pip3"):
        return check_pip(args)
    if program == "make":
        missing = [t for t in args if not t.startswith("-") and "=" not in t and t not in makefile_targets()]
        return [f"make: no target {t} in the Makefile" for t in missing]
    if program in ("bash", "sh"):
        scripts = [a for a in args if not a.startswith("-")]
        return [f"{cmd.text}: {s} does not exist" for s in scripts[:1] if not (ROOT / s).is_file()]
    if program == "torchrun":
        if "-m" in args:
            k = args.index("-m")
            own, rest = args[:k], args[k:]
        else:
            k = next((i for i, a in enumerate(args) if a.endswith(".py")), len(args))
            own, rest = args[:k], args[k:]
        torchrun = which("torchrun")
        if torchrun is None:
            return ["torchrun is not installed"]
        return check_help((torchrun,), own, "torchrun") + _python_invocation(rest, cmd.text)
    if program in PROGRAMS_ON_PATH:
        return [] if which(program) else [f"{program} is not installed (not on PATH, not in the venv)"]
    return [f"{cmd.text}: no check for the program {program!r}; add a check or list it in PROGRAMS_ON_PATH or BUILTINS"]


def check_shell(block: Block) -> list[str]:
    """Problems of every command of a shell block, each prefixed with the page line."""
    problems = []
    for cmd in shell_commands(block):
        problems += [f"{block.page}:{cmd.line}: {p}" for p in check_command(cmd)]
    return problems
