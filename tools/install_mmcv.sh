#!/usr/bin/env bash
# Install mmcv 2.1.0 (the newest that mmdet 3.3 / mmseg 1.2 accept) with its compiled ops, for the installed torch.
#
#   tools/install_mmcv.sh                  install into $PYTHON's environment (default .venv/bin/python)
#   tools/install_mmcv.sh --patch-only DIR only rewrite DIR/setup.py's C++ standard (what the build step does)
#
# Order of preference:
#   1. mmcv 2.1.0 with ops already installed: nothing to do.
#   2. a wheel in ../shared/wheels (when that folder exists, as on CI) or in the wheel cache: install it.
#   3. otherwise build one from PyPI's sdist into the wheel cache, then install it (about 25 minutes on 2 cores).
#
# Why the build needs a patch: mmcv 2.1.0's setup.py forces -std=c++14 / -std=c++17, and torch >= 2.10's headers need
# C++20. Its setup.py also imports pkg_resources, which setuptools >= 81 no longer ships, so the build runs with
# setuptools<70 on PYTHONPATH (in a temporary folder; the environment's own setuptools is left as it is).
#
# Environment: PYTHON (interpreter), VIZOO_WHEEL_DIR (wheel cache, default .cache/wheels), MAX_JOBS (default 2).
set -euo pipefail

MMCV_VERSION=2.1.0
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
SHARED_WHEELS="$ROOT/../shared/wheels"

patch_setup() {
    local setup="$1/setup.py"
    if [[ ! -f "$setup" ]]; then
        echo "install_mmcv: no setup.py in $1" >&2
        return 1
    fi
    sed -i -E 's/-std=c\+\+1[47]/-std=c++20/g' "$setup"
    if grep -qE -- '-std=c\+\+1[47]' "$setup"; then
        echo "install_mmcv: $setup still sets C++14/17 after patching" >&2
        return 1
    fi
    echo "install_mmcv: patched $setup to -std=c++20"
}

if [[ "${1:-}" == "--patch-only" ]]; then
    if [[ $# -ne 2 ]]; then
        echo "usage: $0 --patch-only DIR" >&2
        exit 2
    fi
    patch_setup "$2"
    exit 0
fi
if [[ $# -ne 0 ]]; then
    echo "usage: $0 [--patch-only DIR]" >&2
    exit 2
fi

PYTHON=${PYTHON:-$ROOT/.venv/bin/python}
WHEEL_DIR=${VIZOO_WHEEL_DIR:-$ROOT/.cache/wheels}
mkdir -p "$WHEEL_DIR"

if "$PYTHON" -c "import mmcv, mmcv.ops; assert mmcv.__version__ == '$MMCV_VERSION'" 2>/dev/null; then
    echo "install_mmcv: mmcv $MMCV_VERSION with ops is already installed"
    exit 0
fi

FIND_LINKS=(--find-links "$WHEEL_DIR")
if [[ -d "$SHARED_WHEELS" ]]; then
    FIND_LINKS=(--find-links "$SHARED_WHEELS" "${FIND_LINKS[@]}")
fi

have_wheel() {
    "$PYTHON" -m pip download --quiet --no-deps --no-index "${FIND_LINKS[@]}" --only-binary :all: \
        -d "$(mktemp -d)" "mmcv==$MMCV_VERSION" >/dev/null 2>&1
}

if ! have_wheel; then
    echo "install_mmcv: no mmcv $MMCV_VERSION wheel in ${FIND_LINKS[*]}; building one (about 25 minutes on 2 cores)"
    work=$(mktemp -d)
    trap 'rm -rf "$work"' EXIT
    "$PYTHON" -m pip install --quiet --target "$work/buildtools" "setuptools<70" wheel ninja
    export PYTHONPATH="$work/buildtools${PYTHONPATH:+:$PYTHONPATH}"
    export PATH="$work/buildtools/bin:$PATH"
    "$PYTHON" -m pip download --no-deps --no-binary :all: --no-build-isolation -d "$work/sdist" "mmcv==$MMCV_VERSION"
    tar -xzf "$work"/sdist/mmcv-"$MMCV_VERSION".tar.gz -C "$work"
    patch_setup "$work/mmcv-$MMCV_VERSION"
    MMCV_WITH_OPS=1 FORCE_CUDA=${FORCE_CUDA:-0} MAX_JOBS=${MAX_JOBS:-2} \
        "$PYTHON" -m pip wheel --no-deps --no-build-isolation -w "$WHEEL_DIR" "$work/mmcv-$MMCV_VERSION"
fi

"$PYTHON" -m pip install "${FIND_LINKS[@]}" --only-binary mmcv "mmcv==$MMCV_VERSION"
"$PYTHON" -c "import mmcv, mmcv.ops; print('install_mmcv: mmcv', mmcv.__version__, 'with ops installed')"
