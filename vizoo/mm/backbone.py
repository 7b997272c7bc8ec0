"""``VizooBackbone``: any vizoo (or timm) model as an mmdet / mmseg backbone, through timm's features API."""

from __future__ import annotations

import logging
from collections.abc import Sequence

import timm
import torch
import torch.nn as nn
from mmengine.model import BaseModule

import vizoo  # registers vizoo's models in timm
from vizoo.heads.features import last_levels
from vizoo.mm.pretrained import is_remote, official_checkpoint, read_checkpoint
from vizoo.utils.checkpoint import CheckpointError

__all__ = ["VizooBackbone"]

_logger = logging.getLogger(__name__)


class VizooBackbone(BaseModule):
    """A timm ``features_only`` model wrapped for OpenMMLab: ``forward`` returns a tuple of NCHW feature maps.

    The model is built with ``timm.create_model(model_name, features_only=True, feature_cls="getter")``, so NHWC
    families (VMamba, ...) come out NCHW, and layers after the last requested level are pruned.

    Args:
        model_name: a vizoo model name (``vmamba_tiny_s1l8``) or any timm model that supports ``features_only``.
        out_indices: which feature levels to return, as indices into the model's ``feature_info``
            (for vizoo's four-stage models, 0..3 at strides 4, 8, 16, 32); None (the default): its last four levels,
            which are every stage of a vizoo model (MobileMamba has three).
        frozen_stages: freeze the stem and the first ``frozen_stages`` feature levels (parameters get
            ``requires_grad=False`` and those modules stay in eval mode); -1 freezes nothing, 0 only the stem.
        norm_eval: keep every batch-norm layer in eval mode (frozen running statistics) while training.
        with_cp: gradient (activation) checkpointing through the model's ``set_grad_checkpointing``.
        init_cfg: mmengine init config. A ``dict(type="Pretrained", checkpoint=address, prefix=...)`` entry is loaded
            here, strictly, through the family's ``checkpoint_filter_fn`` (official checkpoints are converted); any
            missing, unexpected or mis-shaped key raises ``CheckpointError`` naming them. The address is a local
            file, an ``http(s)://`` URL or ``hf-hub:ORG/REPO/FILENAME``, downloaded once into the cache
            (:mod:`vizoo.mm.pretrained`); the shipped configs give the official ImageNet weights' address.
        pretrained: a checkpoint address; shorthand for ``init_cfg=dict(type="Pretrained", checkpoint=...)``.
        **model_kwargs: passed to ``timm.create_model`` (``drop_path_rate``, ``scan_backend``, ...).
    """

    def __init__(
        self,
        model_name: str,
        out_indices: Sequence[int] | None = None,
        frozen_stages: int = -1,
        norm_eval: bool = False,
        with_cp: bool = False,
        init_cfg: dict | list[dict] | None = None,
        pretrained: str | None = None,
        **model_kwargs,
    ):
        checkpoint, prefix, init_cfg = _split_pretrained(init_cfg, pretrained)
        super().__init__(init_cfg=init_cfg)
        if not timm.is_model(model_name):
            raise ValueError(
                f"unknown model {model_name!r}; list vizoo's models with vizoo.list_models() or timm's with "
                f"timm.list_models('*{model_name.split('_')[0]}*')"
            )
        self.model_name = model_name
        self.out_indices = last_levels(model_name, 4) if out_indices is None else tuple(out_indices)
        self.frozen_stages = frozen_stages
        self.norm_eval = norm_eval
        if checkpoint is not None:
            model_kwargs["pretrained_cfg_overlay"] = dict(
                state_dict=_read_backbone_weights(checkpoint, prefix, model_name)
            )
        try:
            self.body = _create_features_model(
                model_name, self.out_indices, pretrained=checkpoint is not None, **model_kwargs
            )
        except CheckpointError as e:
            owner = _official_owner(checkpoint) if checkpoint is not None else None
            if owner is None or owner == model_name:
                raise
            raise CheckpointError(f"{e}\n{checkpoint} holds the official weights of {owner}, not {model_name}.") from e
        if checkpoint is not None:
            _logger.info("VizooBackbone(%s): loaded %s (all keys matched)", model_name, checkpoint)
        self.feature_info = self.body.feature_info
        self.out_channels = tuple(self.feature_info.channels())
        self.strides = tuple(self.feature_info.reduction())
        if with_cp:
            if not hasattr(self.model, "set_grad_checkpointing"):
                raise ValueError(f"{model_name} has no set_grad_checkpointing; use with_cp=False")
            self.model.set_grad_checkpointing(True)
        self._frozen_modules = self._freeze_stages()

    @property
    def model(self) -> nn.Module:
        """The timm model inside the getter wrapper (its parameters are named ``body.model.*``)."""
        return self.body.model

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """(B, C, H, W) images -> one (B, C_i, H / stride_i, W / stride_i) map per ``out_indices`` entry."""
        return tuple(self.body(x))

    def train(self, mode: bool = True) -> VizooBackbone:
        super().train(mode)
        if mode:
            for module in self._frozen_modules:
                module.eval()
            if self.norm_eval:
                for module in self.modules():
                    if isinstance(module, nn.modules.batchnorm._BatchNorm):
                        module.eval()
        return self

    def _freeze_stages(self) -> list[nn.Module]:
        """Freeze parameters registered before the first parameter of feature level ``frozen_stages``."""
        if self.frozen_stages < 0:
            return []
        names = [n for n, _ in self.model.named_parameters()]
        stage_modules = [info["module"] for info in self.model.feature_info]
        boundary = len(names)
        for module_name in stage_modules[self.frozen_stages :]:
            hits = [i for i, n in enumerate(names) if n.startswith(module_name + ".")]
            if hits:
                boundary = hits[0]
                break
        frozen = set(names[:boundary])
        for name, param in self.model.named_parameters():
            if name in frozen:
                param.requires_grad_(False)
        # Modules whose parameters are all frozen stay in eval mode (batch-norm statistics, dropout, drop-path).
        modules = []
        for name, module in self.model.named_modules():
            params = [f"{name}.{n}" if name else n for n, _ in module.named_parameters()]
            if params and all(p in frozen for p in params):
                modules.append(module)
        for module in modules:
            module.eval()
        return modules


def _split_pretrained(
    init_cfg: dict | list[dict] | None, pretrained: str | None
) -> tuple[str | None, str | None, dict | list[dict] | None]:
    """Take the ``Pretrained`` entry out of ``init_cfg`` (vizoo loads it strictly itself): (file, prefix, rest)."""
    cfgs = [] if init_cfg is None else [init_cfg] if isinstance(init_cfg, dict) else list(init_cfg)
    pretrained_cfgs = [c for c in cfgs if c.get("type") == "Pretrained"]
    rest = [c for c in cfgs if c.get("type") != "Pretrained"]
    if pretrained and pretrained_cfgs:
        raise ValueError(
            "give the checkpoint either as pretrained=... or as init_cfg=dict(type='Pretrained'), not both"
        )
    if len(pretrained_cfgs) > 1:
        raise ValueError(f"init_cfg has {len(pretrained_cfgs)} 'Pretrained' entries; give one")
    if pretrained is not None and not isinstance(pretrained, str):
        raise TypeError(f"pretrained must be a checkpoint path or None, got {type(pretrained).__name__}")
    checkpoint, prefix = pretrained or None, None
    if pretrained_cfgs:
        checkpoint, prefix = pretrained_cfgs[0].get("checkpoint"), pretrained_cfgs[0].get("prefix")
        if not checkpoint:
            raise ValueError("init_cfg=dict(type='Pretrained') needs checkpoint=<local file, URL or hf-hub:...>")
    return checkpoint, prefix, (rest or None)


def _read_backbone_weights(address: str, prefix: str | None, model_name: str) -> dict[str, torch.Tensor]:
    state_dict = read_checkpoint(address, model_name)
    if prefix:
        prefix = prefix if prefix.endswith(".") else prefix + "."
        selected = {k[len(prefix) :]: v for k, v in state_dict.items() if k.startswith(prefix)}
        if not selected:
            raise CheckpointError(f"no key of {address!r} starts with prefix {prefix!r}; check init_cfg's prefix")
        state_dict = selected
    # A VizooBackbone's own state dict (``body.model.stages...``) loads too.
    if all(k.startswith("body.model.") for k in state_dict):
        state_dict = {k.removeprefix("body.model."): v for k, v in state_dict.items()}
    return state_dict


def _official_owner(address: str) -> str | None:
    """The vizoo model whose official weights are at ``address`` in the registry, if any."""
    if not is_remote(address):
        return None
    return next((name for name in vizoo.list_models() if official_checkpoint(name) == address), None)


def _create_features_model(model_name: str, out_indices: tuple[int, ...], **kwargs) -> nn.Module:
    try:
        body = timm.create_model(
            model_name, features_only=True, out_indices=out_indices, feature_cls="getter", **kwargs
        )
    except (AssertionError, IndexError) as e:
        raise ValueError(
            f"out_indices {out_indices} do not fit {model_name}: {e}; pick indices of its feature levels "
            "(vizoo's hierarchical models have four: 0, 1, 2, 3)"
        ) from e
    except CheckpointError:
        raise
    except (RuntimeError, TypeError, AttributeError) as e:
        if "feature" in str(e).lower() or "intermediate" in str(e).lower():
            raise ValueError(_no_features_message(model_name, str(e))) from e
        raise
    # An entrypoint that ignores features_only returns a plain model; it would give logits, not feature maps.
    if not hasattr(body, "feature_info") or not hasattr(body, "model"):
        raise ValueError(_no_features_message(model_name, f"it built a {type(body).__name__} without feature_info"))
    return body


def _no_features_message(model_name: str, reason: str) -> str:
    return (
        f"{model_name} cannot give feature maps through timm's features API ({reason}); pick a model that supports "
        "timm.create_model(..., features_only=True), e.g. a vizoo backbone from vizoo.list_models()"
    )
