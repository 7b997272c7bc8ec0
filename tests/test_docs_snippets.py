"""Every code block of README.md and docs/ is tested: python blocks run, shell commands are parsed and checked.

One test per block, with the id ``PAGE:LINE`` (the line of the opening fence). How blocks are found, how python
blocks are rewritten to tiny test models, how shell commands are checked and the skip marker
(``<!-- snippet: skip: REASON -->`` on the line before the fence) are described in ``tests/doc_snippets.py``.
"""

from __future__ import annotations

import pytest
from doc_snippets import (
    Block,
    PageSession,
    all_pages,
    check_shell,
    model_swaps,
    parse_page,
    rewrite_python,
    run_python,
)

PAGES = all_pages()
PYTHON = [(p.name, i, b) for p in PAGES for i, b in enumerate(b for b in p.blocks if b.kind == "python")]
# Under xdist, a page's blocks run wherever their tests land: a worker runs the blocks before a block first (see
# PageSession). With ``--dist loadgroup`` the xdist_group mark keeps a page on one worker, so each block runs once.
PYTHON_PARAMS = [pytest.param(page, i, b, id=b.id, marks=pytest.mark.xdist_group(page)) for page, i, b in PYTHON]
SHELL = [b for p in PAGES for b in p.blocks if b.kind == "shell"]


@pytest.fixture(scope="module")
def session_for(tmp_path_factory):
    """The PageSession of a page (one per page and process), with its own scratch folder."""
    sessions: dict[str, PageSession] = {}

    def get(page: str) -> PageSession:
        if page not in sessions:
            blocks = [b for p in PAGES if p.name == page for b in p.blocks if b.kind == "python"]
            sessions[page] = PageSession(blocks, tmp_path_factory.mktemp(page.replace("/", "_")))
        return sessions[page]

    return get


@pytest.mark.parametrize("page", [p.name for p in PAGES])
def test_markers(page):
    """Snippet markers are well formed and sit on the line right before a code fence."""
    errors = next(p.errors for p in PAGES if p.name == page)
    assert not errors, "\n".join(errors)


@pytest.mark.parametrize(("page", "index", "block"), PYTHON_PARAMS)
def test_python_block(page: str, index: int, block: Block, session_for, monkeypatch):
    if block.skip:
        pytest.skip(f"{block.id}: {block.skip}")
    session = session_for(page)
    monkeypatch.chdir(session.workdir)
    message = session.outcome(index)
    if message is not None:
        pytest.fail(message, pytrace=False)


@pytest.mark.parametrize("block", SHELL, ids=[b.id for b in SHELL])
def test_shell_block(block: Block):
    if block.skip:
        pytest.skip(f"{block.id}: {block.skip}")
    problems = check_shell(block)
    if problems:
        pytest.fail("\n".join(problems), pytrace=False)


def test_swaps_cover_every_family():
    """Every full-size vizoo model has a test model to stand in for it, and the test models are real."""
    import timm

    from vizoo import model_table

    swaps = model_swaps()
    full = [name for name in model_table.families() if not name.startswith("test_")]
    assert full and all(name in swaps for name in full)
    assert all(timm.is_model(test) for test in set(swaps.values()))


def test_rewrite_is_explicit():
    r = rewrite_python('m = timm.create_model("vmamba_tiny_s1l8")\nx = torch.randn(2, 3, 224, 224)\n')
    assert r.source == 'm = timm.create_model("test_vmamba")\nx = torch.randn(2, 3, 64, 64)\n'
    assert r.changes == ("vmamba_tiny_s1l8 -> test_vmamba", "224, 224 -> 64, 64")
    # a size in a block without a model follows the page's last swapped model; 224 alone is not a size pair
    assert rewrite_python("f(img_size=(640, 640), n=224)\n", page_size=64).source == "f(img_size=(64, 64), n=224)\n"
    assert rewrite_python("x = 224, 224\n").source == "x = 224, 224\n"  # no model swapped: nothing decides


def test_collector_bites(tmp_path, monkeypatch):
    """A broken python block, a bad vizoo option, a network call and a bad marker are all reported."""
    (tmp_path / "docs").mkdir()
    page = tmp_path / "docs" / "broken.md"
    page.write_text(
        "# broken\n"
        "\n"
        "```python\n"
        "import timm\n"
        'model = timm.create_model("vmamba_tiny_s1l8")\n'
        "model(undefined_input)\n"
        "```\n"
        "\n"
        "```bash\n"
        "vizoo list --no-such-option   # a comment\n"
        "vizoo info not_a_model\n"
        "python tools/benchmark_memory.py --no-such-flag\n"
        "make no-such-target\n"
        'pip install -e ".[onnx,no_such_extra]"\n'
        "frobnicate --all\n"
        "```\n"
        "\n"
        "```python\n"
        "import urllib.request\n"
        'urllib.request.urlopen("https://example.com", timeout=1)\n'
        "```\n"
        "\n"
        "<!-- snippet: skip: needs a CUDA GPU -->\n"
        "```python\n"
        "raise AssertionError\n"
        "```\n"
        "<!-- snippet: skipp: typo -->\n"
        "text\n"
    )
    parsed = parse_page(page, root=tmp_path)
    assert [(b.line, b.kind) for b in parsed.blocks] == [(3, "python"), (9, "shell"), (18, "python"), (24, "python")]
    assert parsed.blocks[3].skip == "needs a CUDA GPU"
    assert len(parsed.errors) == 1 and "docs/broken.md:27" in parsed.errors[0]

    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    message, rewrite = run_python(parsed.blocks[0], namespace)
    assert message is not None and message.startswith("docs/broken.md:3: NameError")
    assert "vmamba_tiny_s1l8 -> test_vmamba" in message and "> 6 | model(undefined_input)" in message
    assert 'timm.create_model("test_vmamba")' in rewrite.source

    message, _ = run_python(parsed.blocks[2], namespace)
    assert message is not None and "network" in message

    problems = check_shell(parsed.blocks[1])
    assert len(problems) == 6, problems
    assert "docs/broken.md:10:" in problems[0] and "--no-such-option" in problems[0]
    assert "docs/broken.md:11:" in problems[1] and "not_a_model" in problems[1]
    assert "--no-such-flag" in problems[2]
    assert "no-such-target" in problems[3]
    assert "no_such_extra" in problems[4]
    assert "frobnicate" in problems[5]


def test_shell_splitting():
    """Comments, continuations, prompts, VAR=value prefixes and command separators, as the checks see them."""
    from doc_snippets import shell_commands

    block = Block(
        "x.md",
        1,
        "bash",
        "PYTHONPATH=. python tools/gpu_check.py out/gpu   # a comment, not a continuation \\\n"
        "torchrun --nproc_per_node 2 -m vizoo train \\\n"
        "    --model 'vmamba*' && vizoo list  # trailing\n"
        "             # a comment line\n",
    )
    assert [(c.line, c.argv) for c in shell_commands(block)] == [
        (2, ("python", "tools/gpu_check.py", "out/gpu")),
        (3, ("torchrun", "--nproc_per_node", "2", "-m", "vizoo", "train", "--model", "vmamba*")),
        (3, ("vizoo", "list")),
    ]
    console = Block("x.md", 1, "console", "$ vizoo list\nmodel  family\n$ vizoo info test_vmamba\n")
    assert [c.argv for c in shell_commands(console)] == [("vizoo", "list"), ("vizoo", "info", "test_vmamba")]
