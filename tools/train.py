"""Train an image classifier (ImageNet recipes in configs/cls/): ``python tools/train.py --help``.

One process: ``python tools/train.py -c configs/cls/vmamba.yaml --model vmamba_tiny_s1l8 --data-dir DATA``.
Several GPUs or nodes: ``torchrun --nproc_per_node N tools/train.py ...`` (see docs/training.md).
"""

from vizoo.train.command import main

if __name__ == "__main__":
    raise SystemExit(main())
