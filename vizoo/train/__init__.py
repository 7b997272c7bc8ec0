"""Training: ImageNet-recipe classification (:func:`train`), checkpoints, data pipelines and the ``train`` command.

Detection/segmentation fine-tuning lives beside it in ``finetune.py``, and its ``finetune det|seg`` command in
``finetune_cli.py``. The epoch loop (resume, steps, logs, checkpoints) that classification and CLIP training share is
``loop.TrainingRun``.
"""

from .checkpoint import CheckpointError, find_resume_checkpoint, list_checkpoints, load_checkpoint, save_checkpoint
from .classification import TrainResult, evaluate, train
from .command import add_train_parser, run_train
from .config import TrainConfig, add_train_arguments, config_from_args, load_yaml_config
from .data import ImageFolderDataset, ResumableSampler, build_eval_transform, build_train_transform, scan_dataset
from .finetune_cli import add_finetune_parser, run_finetune

__all__ = [
    "CheckpointError",
    "ImageFolderDataset",
    "ResumableSampler",
    "TrainConfig",
    "TrainResult",
    "add_finetune_parser",
    "add_train_arguments",
    "add_train_parser",
    "build_eval_transform",
    "build_train_transform",
    "config_from_args",
    "evaluate",
    "find_resume_checkpoint",
    "list_checkpoints",
    "load_checkpoint",
    "load_yaml_config",
    "run_finetune",
    "run_train",
    "save_checkpoint",
    "scan_dataset",
    "train",
]
