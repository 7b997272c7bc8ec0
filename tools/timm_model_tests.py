"""Run timm's own model tests (``tests/test_models.py`` of timm's source release) on vizoo's registry.

timm's wheel has no tests; its source distribution on PyPI does. This tool fetches the sdist of the installed timm
version once with pip (``pip download --no-binary :all:``) into ``.cache/timm-tests/`` and unpacks its tests there,
then runs pytest on its ``test_models.py`` with this file as a plugin (``-p timm_model_tests``), which:

- restricts timm's model lists to the selected vizoo models: ``test_models.py`` builds its parametrizations at import
  time with ``timm.list_models(...)``; the plugin wraps that function so every call returns only vizoo models (its
  filters still apply, except ``module=``, which names the timm modules that implement ``forward_intermediates``:
  every vizoo family does);
- deselects tests that are not parametrized by a selected model (checks of particular timm models such as
  ``resnet18``), and the tests that need the network (``test_model_inference`` reads reference tensors from the
  ``timm/<name>`` Hub repos; ``test_model_load_pretrained*`` downloads weights);
- refuses any socket connection, so nothing is downloaded while the tests run;
- marks the known failures below as strict xfails: each names the model, the test and the reason; a fix turns it
  into an XPASS failure, so the entry is removed with the fix.

python tools/timm_model_tests.py                      # the test_ models plus SMALL_REAL_MODELS
python tools/timm_model_tests.py --models 'vmamba*'   # other vizoo models (fnmatch patterns)
python tools/timm_model_tests.py -- -k forward -x     # extra pytest arguments after --
"""

from __future__ import annotations

import argparse
import fnmatch
import functools
import os
import socket
import subprocess
import sys
import tarfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CACHE_DIR = ROOT / ".cache" / "timm-tests"
MODELS_ENV = "VIZOO_TIMM_TEST_MODELS"  # comma-separated model names, read by the plugin (also in xdist workers)
DEFAULT_PATTERNS = ("test_*",)
# Real variants beside the test_ models: the smallest of two families, to catch what only a full-size config shows.
SMALL_REAL_MODELS = ("cas_vit_xs", "mobilemamba_t2")
# Tests that need the network; never run here.
NETWORK_TESTS = ("test_model_inference", "test_model_load_pretrained", "test_model_features_pretrained")
# (test function, model pattern) -> why it fails. Strict xfails: a fix makes the run fail until the entry goes.
_FX = (
    "torch.fx cannot trace vizoo's models: the input checks (vizoo.backbones._base.check_image_input) and the kernels' "
    "entry points (cross-scan routes, selective scan, linear attention) branch on tensor shapes and are not "
    "registered with timm.layers.register_notrace_function"
)
# The test_ models' first stage is 16 wide at 64², so its NHWC map (B, 16, 16, 16) has the shape of the NCHW tap, and
# timm's test, which permutes only when the shapes differ, compares NHWC against NCHW; the values match once permuted.
_NHWC_SHAPE = "forward_features is NHWC (B, 16, 16, 16), shaped like the NCHW tap, so timm's test does not permute"
KNOWN_FAILURES: dict[tuple[str, str], str] = {
    **{
        ("test_model_default_cfgs", pattern): "Vim's forward_features is a token sequence (B, N + 1, C); timm's "
        "standard cfg test checks 2-D maps only (timm sends its own ViTs to test_model_default_cfgs_non_std, by name)"
        for pattern in ("vim_*", "test_vim")
    },
    **{
        ("test_model_default_cfgs", pattern): "Vision-RWKV's forward_features is a token sequence (B, N, C), as "
        "timm's ViTs give; timm's standard cfg test checks 2-D maps only"
        for pattern in ("vrwkv_*", "test_vrwkv")
    },
    ("test_model_forward_torchscript", "*"): "timm's TorchScript check: vizoo's models are not scriptable (exported "
    "through ONNX instead, vizoo.export)",
    ("test_model_forward_fx", "*"): _FX,
    ("test_model_backward_fx", "*"): _FX,
    ("test_model_forward_fx_torchscript", "*"): _FX,
    **{
        ("test_prune_intermediate_layers_contract", name): _NHWC_SHAPE
        for name in (
            "test_efficient_vmamba",
            "test_groupmamba",
            "test_mlla",
            "test_msvmamba",
            "test_spatial_mamba",
            "test_vssd",
        )
    },
}


# ------------------------------------------------------------------------------------------------- fetching


def fetch_timm_tests(version: str | None = None, cache_dir: Path = CACHE_DIR) -> Path:
    """The ``tests/`` folder of timm's sdist for ``version`` (the installed one by default), fetched once.

    The sdist stays in ``cache_dir``; only ``tests/*.py`` and ``pyproject.toml`` are unpacked.
    """
    if version is None:
        import timm

        version = timm.__version__
    tests_dir = cache_dir / f"timm-{version}" / "tests"
    if (tests_dir / "test_models.py").is_file() and (tests_dir.parent / "pyproject.toml").is_file():
        return tests_dir
    cache_dir.mkdir(parents=True, exist_ok=True)
    sdist = cache_dir / f"timm-{version}.tar.gz"
    if not sdist.is_file():
        command = [sys.executable, "-m", "pip", "download", f"timm=={version}"]
        command += ["--no-binary", ":all:", "--no-deps", "-d", str(cache_dir)]
        result = subprocess.run(command, capture_output=True, text=True)
        if result.returncode != 0 or not sdist.is_file():
            raise RuntimeError(
                f"could not download timm {version}'s source release with {' '.join(command)!r}:\n"
                f"{result.stderr.strip()}\nDownload timm-{version}.tar.gz from "
                f"https://pypi.org/project/timm/{version}/#files into {cache_dir}"
            )
    extract_tests(sdist, cache_dir)
    if not (tests_dir / "test_models.py").is_file():
        raise RuntimeError(f"{sdist} has no tests/test_models.py; this tool needs a timm release whose sdist ships it")
    return tests_dir


def extract_tests(sdist: Path, dest: Path) -> None:
    """Unpack the top-level ``tests/*.py`` files of a timm sdist, and its ``pyproject.toml`` (pytest's settings:
    timm's markers), into ``dest`` (paths kept, nothing outside it)."""

    def wanted(parts: list[str]) -> bool:
        return parts[1:] == ["pyproject.toml"] or (len(parts) == 3 and parts[1] == "tests" and parts[2].endswith(".py"))

    with tarfile.open(sdist) as tar:
        members = [m for m in tar.getmembers() if m.isfile() and wanted(m.name.split("/"))]
        tar.extractall(dest, members=members, filter="data")


# ------------------------------------------------------------------------------------------------- selection


def select_models(patterns: list[str] | tuple[str, ...], extra: tuple[str, ...] = ()) -> list[str]:
    """vizoo models matching any ``fnmatch`` pattern, plus ``extra``; an unknown name or empty pattern is an error."""
    import vizoo

    registered = vizoo.list_models()
    selected = [m for m in registered if any(fnmatch.fnmatch(m, p) for p in patterns)]
    for pattern in patterns:
        if not any(fnmatch.fnmatch(m, pattern) for m in registered):
            raise ValueError(f"no vizoo model matches {pattern!r}; see vizoo.list_models()")
    unknown = [m for m in extra if m not in registered]
    if unknown:
        raise ValueError(f"unknown vizoo models {unknown}; see vizoo.list_models()")
    return sorted(set(selected) | set(extra))


def restrict_list_models(models: set[str]) -> None:
    """Wrap ``timm.list_models`` / ``timm.list_pretrained`` so that they only return ``models`` (tags kept)."""
    import timm

    original = timm.list_models

    @functools.wraps(original)
    def list_models(filter="", module="", *args, **kwargs):
        # module= names timm's modules with forward_intermediates; vizoo's families all have it.
        names = original(filter, "", *args, **kwargs)
        return [n for n in names if n.split(".")[0] in models]

    def list_pretrained(filter="", exclude_filters=""):
        return list_models(filter, pretrained=True, exclude_filters=exclude_filters, include_tags=True)

    timm.list_models = list_models
    timm.list_pretrained = list_pretrained
    timm.models.list_models = list_models
    timm.models.list_pretrained = list_pretrained


def _refuse_connections(self, address):
    raise OSError(f"timm's model tests run offline: a test tried to connect to {address}")


def _refuse_lookups(host, *args, **kwargs):
    raise OSError(f"timm's model tests run offline: a test tried to look up {host}")


def known_failure(test: str, model: str) -> str | None:
    for (name, pattern), reason in KNOWN_FAILURES.items():
        if name == test and fnmatch.fnmatch(model, pattern):
            return reason
    return None


# ------------------------------------------------------------------------------------------------- pytest plugin
# Loaded with ``-p timm_model_tests`` (tools/ on PYTHONPATH): the import happens before test_models.py is collected.

if os.environ.get(MODELS_ENV):
    import vizoo  # noqa: F401  (registers vizoo's models in timm)

    restrict_list_models(set(os.environ[MODELS_ENV].split(",")))
    socket.socket.connect = _refuse_connections
    socket.getaddrinfo = _refuse_lookups


def pytest_configure(config):
    config.addinivalue_line("markers", "timeout(seconds): pytest-timeout's marker, used by timm's tests")


def pytest_collection_modifyitems(config, items):
    import pytest

    models = set(os.environ.get(MODELS_ENV, "").split(","))
    kept, dropped = [], []
    for item in items:
        params = getattr(getattr(item, "callspec", None), "params", {})
        model = str(params.get("model_name", "")).split(".")[0]
        if model not in models or item.originalname in NETWORK_TESTS:
            dropped.append(item)
            continue
        reason = known_failure(item.originalname, model)
        if reason:
            item.add_marker(pytest.mark.xfail(reason=reason, strict=True))
        kept.append(item)
    if dropped:
        config.hook.pytest_deselected(items=dropped)
    items[:] = kept


# ------------------------------------------------------------------------------------------------- command line


def run(models: list[str], pytest_args: list[str], cache_dir: Path = CACHE_DIR) -> int:
    """Run timm's ``test_models.py`` on ``models``; returns pytest's exit code."""
    tests_dir = fetch_timm_tests(cache_dir=cache_dir)
    env = dict(os.environ, **{MODELS_ENV: ",".join(models)})
    env["PYTHONPATH"] = os.pathsep.join([str(Path(__file__).parent), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    command = [sys.executable, "-m", "pytest", str(tests_dir / "test_models.py"), "-p", "timm_model_tests"]
    # timm's own pytest settings (markers) apply; vizoo's (xdist's --dist loadgroup) do not.
    command += ["--rootdir", str(tests_dir.parent), "-p", "no:cacheprovider", "-q", *pytest_args]
    print(f"timm's model tests on {len(models)} vizoo models: {' '.join(models)}", flush=True)
    return subprocess.run(command, env=env, cwd=tests_dir.parent).returncode


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    pytest_args = argv[argv.index("--") + 1 :] if "--" in argv else []
    argv = argv[: argv.index("--")] if "--" in argv else argv
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--models",
        nargs="+",
        default=None,
        help="fnmatch patterns of vizoo models (default: the test_ models and SMALL_REAL_MODELS)",
    )
    parser.add_argument("--cache-dir", type=Path, default=CACHE_DIR, help="where timm's sdist is unpacked")
    args = parser.parse_args(argv)
    if args.models is None:
        models = select_models(DEFAULT_PATTERNS, SMALL_REAL_MODELS)
    else:
        models = select_models(args.models)
    return run(models, pytest_args, cache_dir=args.cache_dir)


if __name__ == "__main__":
    sys.exit(main())
