"""Training configuration: defaults, YAML recipes (``configs/cls/*.yaml``) and command-line flags.

Precedence: :class:`TrainConfig` defaults < the ``--config`` YAML file < flags given on the command line. YAML keys
are the field names below (the flags with ``_`` for ``-``); an unknown key is an error.

Learning rate: ``--lr`` sets it directly. Without ``--lr`` it is ``lr_base * global_batch / lr_base_size`` (and
``warmup_lr`` and ``min_lr`` scale by the same factor), the linear rule of the Swin/VMamba code; recipes give
``lr_base`` at the paper's global batch.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["TrainConfig", "add_train_arguments", "config_from_args", "load_yaml_config"]


@dataclass
class TrainConfig:
    # data and model
    model: str = "test_vmamba"
    data_dir: str = ""
    train_split: str = "train"
    val_split: str = "val"
    img_size: int | None = None  # None: the model's pretrained_cfg input size
    in_chans: int = 3
    output: str = "outputs/train"
    resume: str | None = None  # a checkpoint path, or "auto"
    initial_checkpoint: str | None = None  # weights to fine-tune from (loaded through the model's checkpoint filter)
    # schedule
    epochs: int = 300
    batch_size: int = 128  # per process
    lr: float | None = None
    lr_base: float = 1e-3
    lr_base_size: int = 1024
    warmup_lr: float = 1e-6
    min_lr: float = 1e-5
    warmup_epochs: float = 20
    sched: str = "cosine"
    sched_on_updates: bool = True  # step the schedule every iteration (True) or every epoch (False)
    # optimiser
    opt: str = "adamw"
    weight_decay: float = 0.05
    opt_eps: float = 1e-8
    opt_betas: tuple[float, float] = (0.9, 0.999)
    clip_grad: float | None = 5.0
    # regularisation
    drop: float = 0.0
    drop_path: float | None = None  # None: the variant's registered drop_path_rate
    mixup: float = 0.8
    cutmix: float = 1.0
    mixup_prob: float = 1.0
    mixup_switch_prob: float = 0.5
    mixup_mode: str = "batch"
    smoothing: float = 0.1
    model_ema: bool = True
    model_ema_decay: float = 0.9999
    # augmentation
    scale: tuple[float, float] = (0.08, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    hflip: float = 0.5
    color_jitter: float = 0.4
    aa: str | None = "rand-m9-mstd0.5-inc1"
    reprob: float = 0.25
    crop_pct: float | None = None  # None: the model's pretrained_cfg crop_pct
    # performance
    amp: str | None = None  # "bf16" or "fp16"
    grad_checkpointing: bool = False
    channels_last: bool = False
    sync_bn: bool = False
    workers: int = 4
    device: str | None = None  # None: cuda:LOCAL_RANK when CUDA is available, else cpu
    # bookkeeping
    seed: int = 0
    checkpoint_every: int = 0  # also checkpoint every N steps (0: at the end of each epoch only)
    checkpoint_keep: int = 3
    eval_every: int = 1  # epochs
    log_every: int = 1  # steps between lines of steps.jsonl
    tensorboard: bool = False
    progress: bool = True
    extra: dict[str, Any] = field(default_factory=dict)  # free-form notes kept with the run (e.g. recipe source)

    def global_batch(self, world_size: int) -> int:
        return self.batch_size * world_size

    def resolved_lrs(self, world_size: int) -> tuple[float, float, float]:
        """``(lr, warmup_lr, min_lr)`` for ``world_size`` processes (see the module docstring)."""
        if self.lr is not None:
            factor = self.lr / self.lr_base if self.lr_base else 1.0
            return self.lr, self.warmup_lr * factor, self.min_lr * factor
        factor = self.global_batch(world_size) / self.lr_base_size
        return self.lr_base * factor, self.warmup_lr * factor, self.min_lr * factor

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


_FIELDS = {f.name: f for f in dataclasses.fields(TrainConfig)}


def load_yaml_config(path: str | os.PathLike) -> dict[str, Any]:
    """Read a recipe; raises ValueError for a missing file, non-mapping content or unknown keys."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise ValueError(f"config file {str(path)!r} does not exist; recipes live in configs/cls/")
    with open(path) as f:
        data = yaml.safe_load(f) or {}
    if not isinstance(data, dict):
        raise ValueError(f"config file {str(path)!r} must be a mapping of option: value")
    unknown = sorted(set(data) - set(_FIELDS))
    if unknown:
        raise ValueError(
            f"unknown key(s) in {str(path)!r}: {', '.join(unknown)}; valid keys: {', '.join(sorted(_FIELDS))}"
        )
    for key in ("scale", "ratio", "opt_betas"):
        if key in data and data[key] is not None:
            data[key] = tuple(float(v) for v in data[key])
    return data


def _bool(text: str) -> bool:
    if text.lower() in ("1", "true", "yes", "on"):
        return True
    if text.lower() in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true/false, got {text!r}")


def add_train_arguments(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The training flags (named as timm's train.py where it has them). Unset flags do not override the recipe."""
    s = argparse.SUPPRESS
    p.add_argument("--config", "-c", default=None, help="YAML recipe (configs/cls/*.yaml); flags override it")
    g = p.add_argument_group("data and model")
    g.add_argument("--model", default=s, help="timm/vizoo model name (default test_vmamba)")
    g.add_argument("--data-dir", default=s, help="folder with train/ and val/, one sub-folder per class")
    g.add_argument("--train-split", default=s, help="training folder name (default train)")
    g.add_argument("--val-split", default=s, help="validation folder name (default val)")
    g.add_argument("--img-size", type=int, default=s, help="input size (default: the model's)")
    g.add_argument("--in-chans", type=int, default=s)
    g.add_argument("--output", default=s, help="run folder: checkpoints/, metrics.jsonl, ... (default outputs/train)")
    g.add_argument("--resume", default=s, help="checkpoint folder to resume from, or 'auto' (newest in --output)")
    g.add_argument("--initial-checkpoint", default=s, help="weights file to fine-tune from (official layouts map)")
    g = p.add_argument_group("schedule and optimiser")
    g.add_argument("--epochs", type=int, default=s)
    g.add_argument("--batch-size", "-b", type=int, default=s, help="batch size per process")
    g.add_argument("--lr", type=float, default=s, help="learning rate (default: lr_base x global batch / lr_base_size)")
    g.add_argument("--lr-base", type=float, default=s)
    g.add_argument("--lr-base-size", type=int, default=s)
    g.add_argument("--warmup-lr", type=float, default=s)
    g.add_argument("--min-lr", type=float, default=s)
    g.add_argument("--warmup-epochs", type=float, default=s)
    g.add_argument("--sched", default=s, help="timm scheduler name (default cosine)")
    g.add_argument("--sched-on-updates", type=_bool, default=s, help="step the LR every iteration (default true)")
    g.add_argument("--opt", default=s, help="timm optimiser name (default adamw)")
    g.add_argument("--weight-decay", type=float, default=s)
    g.add_argument("--opt-eps", type=float, default=s)
    g.add_argument("--clip-grad", type=float, default=s, help="max gradient norm (0 or less: off)")
    g = p.add_argument_group("regularisation and augmentation")
    g.add_argument("--drop", type=float, default=s, help="classifier dropout")
    g.add_argument("--drop-path", type=float, default=s, help="stochastic depth (default: the variant's)")
    g.add_argument("--mixup", type=float, default=s, help="mixup alpha (0: off)")
    g.add_argument("--cutmix", type=float, default=s, help="cutmix alpha (0: off)")
    g.add_argument("--mixup-prob", type=float, default=s)
    g.add_argument("--mixup-switch-prob", type=float, default=s)
    g.add_argument("--mixup-mode", default=s)
    g.add_argument("--smoothing", type=float, default=s, help="label smoothing")
    g.add_argument("--model-ema", type=_bool, nargs="?", const=True, default=s, help="keep an EMA of the weights")
    g.add_argument("--model-ema-decay", type=float, default=s)
    g.add_argument("--scale", type=float, nargs=2, default=s, help="RandomResizedCrop area range")
    g.add_argument("--ratio", type=float, nargs=2, default=s, help="RandomResizedCrop aspect range")
    g.add_argument("--hflip", type=float, default=s)
    g.add_argument("--color-jitter", type=float, default=s)
    g.add_argument("--aa", default=s, help="RandAugment-like policy, e.g. rand-m9-mstd0.5-inc1; 'none' for jitter")
    g.add_argument("--reprob", type=float, default=s, help="random erasing probability")
    g.add_argument("--crop-pct", type=float, default=s, help="eval centre-crop fraction (default: the model's)")
    g = p.add_argument_group("performance and bookkeeping")
    g.add_argument("--amp", choices=["bf16", "fp16", "none"], default=s, help="mixed precision (fp16 uses a scaler)")
    g.add_argument("--grad-checkpointing", type=_bool, nargs="?", const=True, default=s)
    g.add_argument("--channels-last", type=_bool, nargs="?", const=True, default=s)
    g.add_argument("--sync-bn", type=_bool, nargs="?", const=True, default=s)
    g.add_argument("--workers", "-j", type=int, default=s, help="data loader processes per training process")
    g.add_argument("--device", default=s, help="cpu, cuda, cuda:1 ... (default: cuda:LOCAL_RANK if available)")
    g.add_argument("--seed", type=int, default=s)
    g.add_argument("--checkpoint-every", type=int, default=s, help="also checkpoint every N steps (default 0: epochs)")
    g.add_argument("--checkpoint-keep", type=int, default=s, help="keep the newest N checkpoints (default 3)")
    g.add_argument("--eval-every", type=int, default=s, help="validate every N epochs (default 1)")
    g.add_argument("--log-every", type=int, default=s)
    g.add_argument("--tensorboard", type=_bool, nargs="?", const=True, default=s)
    g.add_argument("--no-progress", dest="progress", action="store_false", default=s)
    return p


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """Defaults, then the ``--config`` file, then the flags that were given."""
    values: dict[str, Any] = {}
    if getattr(args, "config", None):
        values.update(load_yaml_config(args.config))
    given = {k: v for k, v in vars(args).items() if k in _FIELDS}
    for key in ("scale", "ratio"):
        if key in given:
            given[key] = tuple(given[key])
    values.update(given)
    if values.get("amp") == "none":
        values["amp"] = None
    if isinstance(values.get("aa"), str) and values["aa"].lower() in ("none", ""):
        values["aa"] = None
    cfg = TrainConfig(**values)
    if getattr(args, "config", None):
        cfg.extra = dict(cfg.extra, recipe=str(args.config))
    return cfg
