"""vizoo backbones as image towers of image-text models (open_clip) and vision-language models (transformers).

``import vizoo.multimodal`` (it needs the ``vl`` extra: ``open_clip_torch`` and ``transformers``):

- registers an open_clip config ``vizoo-<model>`` per vizoo model (in memory), so ``open_clip.create_model`` and
  ``local-dir:`` folders know them; ``create_clip`` builds one with a download-free tokenizer (``clip``);
- ``save_for_transformers`` writes a timm-style folder that records ``features_fmt="NCHW"`` (an argument every vizoo
  map model takes in ``timm.create_model``), so ``transformers.TimmWrapperModel`` hands consumers NCHW maps (``hf``);
- evaluates zero-shot classification and image-text retrieval (``evaluate``) and builds an offline image-text set
  from scikit-learn's digits, in memory or as PNG files with CSVs (``data``);
- trains a CLIP / SigLIP, or a LiT text side against a locked pretrained tower, on a CSV of image paths and captions,
  with DDP, AMP, exact resume and a progress bar (``train``; the ``vizoo clip-train`` command is ``train_cli``);
- exports the image encoder, the text encoder and a zero-shot classifier to ONNX (``export``);
- offers ``VisionTower`` (pooled embedding, row-major patch tokens with their grid, stage maps) and the LLaVA-style
  ``MLPProjector`` (``tokens``).

transformers itself is imported only by the caller; nothing here imports it.
"""

from vizoo.multimodal.clip import (
    CONFIG_PREFIX,
    TEXT_PRESETS,
    clip_config,
    create_clip,
    create_loss,
    load_backbone,
    lock_image_tower,
    prepare_clip,
    register_configs,
    resolve_model,
    save_clip,
    save_trunk,
    trunk_state_dict,
    vizoo_config_names,
)
from vizoo.multimodal.data import (
    DIGIT_NAMES,
    HELDOUT_TEMPLATES,
    TRAIN_TEMPLATES,
    ImageTextSet,
    digits_image_text,
    write_digits_csv,
)
from vizoo.multimodal.evaluate import evaluate_retrieval, evaluate_zero_shot, recall_at_k
from vizoo.multimodal.export import (
    SAMPLE_CAPTIONS,
    export_image_encoder,
    export_text_encoder,
    export_zero_shot_classifier,
)
from vizoo.multimodal.hf import native_features_fmt, save_for_transformers
from vizoo.multimodal.tokens import (
    MLPProjector,
    TowerOutput,
    VisionTower,
    map_to_tokens,
    pixel_shuffle,
    pixel_unshuffle_to,
    tokens_to_map,
)
from vizoo.multimodal.train import (
    ClipTrainConfig,
    ClipTrainResult,
    ImageTextCsv,
    ImageTextCsvDataset,
    read_image_text_csv,
    train_clip,
)

register_configs()

__all__ = [
    "DIGIT_NAMES",
    "HELDOUT_TEMPLATES",
    "ImageTextSet",
    "TRAIN_TEMPLATES",
    "digits_image_text",
    "write_digits_csv",
    "ClipTrainConfig",
    "ClipTrainResult",
    "ImageTextCsv",
    "ImageTextCsvDataset",
    "read_image_text_csv",
    "train_clip",
    "evaluate_retrieval",
    "evaluate_zero_shot",
    "recall_at_k",
    "CONFIG_PREFIX",
    "MLPProjector",
    "SAMPLE_CAPTIONS",
    "TEXT_PRESETS",
    "TowerOutput",
    "VisionTower",
    "clip_config",
    "create_clip",
    "create_loss",
    "export_image_encoder",
    "export_text_encoder",
    "export_zero_shot_classifier",
    "load_backbone",
    "lock_image_tower",
    "map_to_tokens",
    "native_features_fmt",
    "pixel_shuffle",
    "pixel_unshuffle_to",
    "prepare_clip",
    "register_configs",
    "resolve_model",
    "save_clip",
    "save_for_transformers",
    "save_trunk",
    "tokens_to_map",
    "trunk_state_dict",
    "vizoo_config_names",
]
