"""Block-prune a timm ViT, compact and save it: ``python tools/prune.py deit_small_patch16_224 --output out/deit_s``.

A thin entry point over :mod:`vizoo.pruning.cli` (the same as ``vizoo prune``).
"""

import argparse
import sys

from vizoo.pruning import add_prune_parser


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="prune")
    sub = parser.add_subparsers(dest="command")
    add_prune_parser(sub)
    args = parser.parse_args(["prune", *(sys.argv[1:] if argv is None else argv)])
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
