"""Export a vizoo model to ONNX: the same as ``vizoo export`` (see ``python tools/export_onnx.py --help``)."""

import sys

from vizoo.cli import main

if __name__ == "__main__":
    raise SystemExit(main(["export", *sys.argv[1:]]))
