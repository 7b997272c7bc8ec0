"""EcoFormer on PVTv2: timm's Pyramid Vision Transformer v2 with EcoFormer's hashed attention in stages 1-3.

Liu et al., "EcoFormer: Energy-Saving Attention with Linear Complexity", NeurIPS 2022 (arXiv 2209.09004). Official
code: https://github.com/ziplab/EcoFormer (``pvt/pvt_v2.py``, ``pvt/performer.py``, ``pvt/hashing/ksh.py``).

As released (``configs/pvt_v2/pvt_v2_b*_ecoformer.py``):
- stages 1-3 replace PVTv2's spatial-reduction attention by ``EcoFormerAttention``: shared l2-normalised q/k,
  16-bit kernelised hashing with 25 anchors fitted on top-10 similarities, at full resolution (no reduction);
- stage 4 keeps softmax attention (sr ratio 1, as in PVTv2);
- patch embeddings, depthwise-conv MLPs and norms are timm's PVTv2 unchanged, and so are timm's model API,
  ``features_only`` and ``forward_intermediates``.
The recipe fine-tunes a PVTv2 trained with shared-qk softmax attention for 30 epochs; the hashing is fitted on the
first training batch (see ``vizoo.layers.ecoformer``), or on demand with ``model.fit_hashing(images)``.
``bias_form="paper"`` switches to the paper's attention equation, which the released weights were not trained with.

The paper reports multiplications and additions instead of MACs (``ecoformer_mul_add``): 0.54 B / 0.56 B for B0.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Iterator

import torch
import torch.nn as nn
from timm.models import generate_default_cfgs, register_model
from timm.models.pvt_v2 import PyramidVisionTransformerV2
from timm.models.pvt_v2 import checkpoint_filter_fn as pvt_v2_filter_fn

from vizoo.backbones._base import check_image_input
from vizoo.backbones._builder import PaperCfg, build_vizoo_model, check_converted, imagenet_cfg
from vizoo.layers.ecoformer import EcoFormerAttention

__all__ = ["EcoFormerPVTv2", "ecoformer_mul_add"]


class EcoFormerPVTv2(PyramidVisionTransformerV2):
    """timm's PVTv2 whose stages before the last use ``EcoFormerAttention``; NCHW features at strides 4-32.

    Args (beyond timm's PVTv2): ``hash_bits`` b (16), ``hash_anchors`` m (25), ``hash_topk`` (10), ``hash_seed``
    (each block's hashing is seeded with ``hash_seed`` + its index, so fits are deterministic) and ``bias_form``.
    Inputs must have H and W divisible by 32.
    """

    input_multiple = 32

    def __init__(
        self,
        hash_bits: int = 16,
        hash_anchors: int = 25,
        hash_topk: int = 10,
        hash_seed: int = 0,
        bias_form: str = "released",
        **kwargs,
    ):
        super().__init__(**kwargs)
        index = 0
        for stage in self.stages[:-1]:
            for block in stage.blocks:
                attn = EcoFormerAttention(
                    block.attn.dim,
                    block.attn.num_heads,
                    qkv_bias=block.attn.q.bias is not None,
                    num_bits=hash_bits,
                    num_anchors=hash_anchors,
                    topk=hash_topk,
                    seed=hash_seed + index,
                    bias_form=bias_form,
                    proj_drop=block.attn.proj_drop.p,
                )
                attn.apply(self._init_weights)
                block.attn = attn
                index += 1

    def hashed_attentions(self) -> Iterator[EcoFormerAttention]:
        return (m for m in self.modules() if isinstance(m, EcoFormerAttention))

    @torch.no_grad()
    def fit_hashing(self, images: torch.Tensor) -> EcoFormerPVTv2:
        """(Re)fit every block's hashing on ``images`` (B, in_chans, H, W), each on the tokens that reach it, in the
        model's current mode. Returns the model. Training fits on its first batch without this call."""
        for attn in self.hashed_attentions():
            attn.fit_on_next_forward = True
        self.forward_features(images)
        return self

    @property
    def hashing_fitted(self) -> bool:
        return all(attn.hashing.is_fitted for attn in self.hashed_attentions())

    def _check_input(self, x: torch.Tensor) -> None:
        name = getattr(self, "pretrained_cfg", {}).get("architecture", type(self).__name__)
        check_image_input(x, self.in_chans, self.input_multiple, name)

    def set_features_fmt(self, features_fmt: str) -> None:
        """PVTv2's features are NCHW: "NCHW" is accepted as it is, anything else refused."""
        if features_fmt != "NCHW":
            raise ValueError(
                f"features_fmt: EcoFormer's features are NCHW and only 'NCHW' applies, got {features_fmt!r}"
            )

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        self._check_input(x)
        return super().forward_features(x)

    def forward_intermediates(
        self,
        x: torch.Tensor,
        indices: int | list[int] | None = None,
        norm: bool = False,
        stop_early: bool = False,
        output_fmt: str = "NCHW",
        intermediates_only: bool = False,
    ):
        """timm's PVTv2 ``forward_intermediates`` with the input check and NHWC output added (every stage output
        is already normed, so ``norm`` changes nothing)."""
        if output_fmt not in ("NCHW", "NHWC"):
            raise ValueError(f"output_fmt must be 'NCHW' or 'NHWC', got {output_fmt!r}")
        self._check_input(x)
        out = super().forward_intermediates(x, indices, norm, stop_early, "NCHW", intermediates_only)
        if output_fmt == "NHWC":
            permute = [t.permute(0, 2, 3, 1) for t in (out if intermediates_only else out[1])]
            out = permute if intermediates_only else (out[0], permute)
        return out


def ecoformer_mul_add(model: EcoFormerPVTv2, img_size: int = 224) -> tuple[int, int]:
    """Multiplications and additions for one image, counted as the paper's ``get_energy.py`` counts them.

    - Layers, as mmcv's complexity counter: a conv or linear layer's MACs (plus one per output for a bias), and 2 per
      element for a LayerNorm. Each of these counts once as a multiplication and once as an addition.
    - EcoFormer attention, per head and token (m anchors, b bits, C channels): the anchor distances (2·m·C adds,
      2·m muls), the hash projection (m·b of each), then the products with the ±1 codes as additions only
      (b for Σh, b for h·Σh, 2·b·C for the key-value sum and its product, C for the bias) and the division
      (b + 1 + C muls).
    - Softmax attention (stage 4): 2·N²·C of each, plus heads·N² muls for the scale.
    The paper's energy is 3.7 pJ per multiplication plus 0.9 pJ per addition.
    """
    layer_macs = 0

    def count(module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
        nonlocal layer_macs
        if isinstance(module, nn.Conv2d):
            per_output = module.kernel_size[0] * module.kernel_size[1] * module.in_channels // module.groups
            layer_macs += output.numel() * (per_output + (module.bias is not None))
        elif isinstance(module, nn.Linear):
            layer_macs += inputs[0].numel() * module.out_features + (
                module.out_features if module.bias is not None else 0
            )
        elif isinstance(module, nn.LayerNorm):
            layer_macs += 2 * inputs[0].numel()

    handles = [
        m.register_forward_hook(count) for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear, nn.LayerNorm))
    ]
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # an unfitted model's codes cost the same
            model(torch.zeros(1, model.in_chans, img_size, img_size, device=next(model.parameters()).device))
    finally:
        model.train(was_training)
        for handle in handles:
            handle.remove()

    muls = adds = layer_macs
    for i, stage in enumerate(model.stages):
        side = img_size // (4 * 2**i)
        n = side * side
        for block in stage.blocks:
            attn = block.attn
            if isinstance(attn, EcoFormerAttention):
                h, c = attn.num_heads, attn.to_qk.out_features // attn.num_heads
                m, b = attn.hashing.num_anchors, attn.hashing.num_bits
                adds += 2 * h * n * m * c + h * n * m * b + h * n * b + h * n * b + 2 * h * n * b * c + h * n * c
                muls += 2 * h * n * m + h * n * m * b + h * n * b + h * n + h * n * c
            else:
                dim = attn.dim
                adds += 2 * n * n * dim
                muls += 2 * n * n * dim + attn.num_heads * n * n
    return muls, adds


def checkpoint_filter_fn(state_dict: dict[str, torch.Tensor], model: EcoFormerPVTv2) -> dict[str, torch.Tensor]:
    """Map a checkpoint to vizoo's keys: an official EcoFormer one (``pvtv2_b*_ecoformer.pth``), or a softmax PVTv2
    to start EcoFormer's fine-tuning from (timm's ``pvt_v2_b*``, the official PVTv2 release, or the official
    ``*_msa`` step of the EcoFormer recipe).

    - Official key names get timm's PVTv2 renaming (``patch_embed{i}``, ``block{i}.{j}``, ``norm{i}``,
      ``dwconv.dwconv``).
    - EcoFormer's ``attn.fast_attention.ksh.{A, mvec, anchor}`` become ``attn.hashing.{projection, kernel_mean,
      anchors}``, marked fitted; the unused Performer ``projection_matrix`` is dropped.
    - Fused ``qkv`` weights are split: into timm's ``q`` and ``kv`` in softmax blocks, into ``to_qk`` (the query
      part) and ``to_v`` in hashed blocks, as the official fine-tuning initialises them.
    - A softmax PVTv2's hashed blocks take ``to_qk`` from ``q`` and ``to_v`` from the value half of ``kv``; its
      spatial reduction is dropped, and the hashing keeps the model's unfitted buffers (it is fitted on the first
      training batch).
    Raises ``CheckpointError`` listing the keys if the result does not fit ``model``.
    """
    state_dict = {k.removeprefix("module."): v for k, v in state_dict.items()}
    if "patch_embed.proj.weight" not in state_dict:
        state_dict = pvt_v2_filter_fn(state_dict, model)
    out = {}
    for key, value in state_dict.items():
        if key.endswith("fast_attention.projection_matrix"):
            continue
        if m := re.match(r"^(.*\.attn)\.fast_attention\.ksh\.(A|mvec|anchor)$", key):
            prefix, name = m[1], m[2]
            if name == "A":
                out[f"{prefix}.hashing.projection"] = value
            elif name == "mvec":
                out[f"{prefix}.hashing.kernel_mean"] = value.reshape(value.shape[1], value.shape[-1])
            else:
                out[f"{prefix}.hashing.anchors"] = value.reshape(value.shape[1:])
                out[f"{prefix}.hashing.fitted"] = torch.ones((), dtype=torch.bool)
            continue
        out[key] = value
    hashed = {name for name, module in model.named_modules() if isinstance(module, EcoFormerAttention)}
    for key in [k for k in out if re.match(r"^.*\.attn\.qkv\.(weight|bias)$", k)]:
        prefix, kind = key.rsplit(".qkv.", 1)
        q, k, v = out.pop(key).chunk(3)
        if prefix in hashed:
            out[f"{prefix}.to_qk.{kind}"], out[f"{prefix}.to_v.{kind}"] = q, v
        else:
            out[f"{prefix}.q.{kind}"], out[f"{prefix}.kv.{kind}"] = q, torch.cat([k, v])
    model_state = model.state_dict()
    for prefix in hashed:
        for kind in ("weight", "bias"):
            if f"{prefix}.q.{kind}" in out:
                out[f"{prefix}.to_qk.{kind}"] = out.pop(f"{prefix}.q.{kind}")
                out[f"{prefix}.to_v.{kind}"] = out.pop(f"{prefix}.kv.{kind}").chunk(2)[1]
        for name in [k for k in out if k.startswith((f"{prefix}.sr.", f"{prefix}.norm."))]:
            del out[name]
        if f"{prefix}.hashing.projection" not in out and f"{prefix}.to_qk.weight" in out:
            out.update({k: v for k, v in model_state.items() if k.startswith(f"{prefix}.hashing.")})
    return check_converted(out, model)


def _create(variant: str, pretrained: bool = False, **kwargs) -> EcoFormerPVTv2:
    return build_vizoo_model(EcoFormerPVTv2, variant, pretrained, checkpoint_filter_fn, **kwargs)


def _cfg(**kwargs) -> PaperCfg:
    return imagenet_cfg(
        "patch_embed.proj",
        "arXiv:2209.09004",
        "https://github.com/ziplab/EcoFormer",
        **dict(dict(classifier="head", crop_pct=0.9, license="apache-2.0"), **kwargs),
    )


def _released(variant: str, **kwargs) -> PaperCfg:
    url = f"https://github.com/ziplab/EcoFormer/releases/download/v1.0/pvtv2_{variant}_ecoformer.pth"
    return _cfg(url=url, **kwargs)


# Official weights: the ``v1.0`` release assets of ziplab/EcoFormer that the README's model zoo links, one per
# variant. pretrained=True downloads them into the torch hub cache.
# paper_*: the EcoFormer README's #Mul, #Add (B), energy (B pJ) at 224² and top-1 (it gives no params or MACs).
default_cfgs = generate_default_cfgs(
    {
        "pvt_v2_b0_ecoformer.in1k": _released(
            "b0", paper_mul_b=0.54, paper_add_b=0.56, paper_energy_bpj=2.5, paper_top1=70.44
        ),
        "pvt_v2_b1_ecoformer.in1k": _released(
            "b1", paper_mul_b=2.03, paper_add_b=2.09, paper_energy_bpj=9.4, paper_top1=78.38
        ),
        "pvt_v2_b2_ecoformer.in1k": _released(
            "b2", paper_mul_b=3.85, paper_add_b=3.97, paper_energy_bpj=17.8, paper_top1=81.28
        ),
        "pvt_v2_b3_ecoformer.in1k": _released(
            "b3", paper_mul_b=6.54, paper_add_b=6.75, paper_energy_bpj=30.25, paper_top1=81.96
        ),
        "pvt_v2_b4_ecoformer.in1k": _released(
            "b4", paper_mul_b=9.57, paper_add_b=9.82, paper_energy_bpj=44.25, paper_top1=81.90
        ),
        "test_pvt_v2_ecoformer.untrained": _cfg(input_size=(3, 64, 64), pool_size=(2, 2), crop_pct=1.0),
    }
)

# PVTv2 widths; depths and drop_path 0.1 from the official configs (configs/pvt_v2/pvt_v2_b*_ecoformer.py).
_B0 = dict(embed_dims=(32, 64, 160, 256), num_heads=(1, 2, 5, 8), depths=(2, 2, 2, 2), drop_path_rate=0.1)
_WIDE = dict(embed_dims=(64, 128, 320, 512), num_heads=(1, 2, 5, 8), drop_path_rate=0.1)


@register_model
def pvt_v2_b0_ecoformer(pretrained: bool = False, **kwargs) -> EcoFormerPVTv2:
    return _create("pvt_v2_b0_ecoformer", pretrained, **dict(_B0, **kwargs))


@register_model
def pvt_v2_b1_ecoformer(pretrained: bool = False, **kwargs) -> EcoFormerPVTv2:
    return _create("pvt_v2_b1_ecoformer", pretrained, **dict(_WIDE, depths=(2, 2, 2, 2), **kwargs))


@register_model
def pvt_v2_b2_ecoformer(pretrained: bool = False, **kwargs) -> EcoFormerPVTv2:
    return _create("pvt_v2_b2_ecoformer", pretrained, **dict(_WIDE, depths=(3, 4, 6, 3), **kwargs))


@register_model
def pvt_v2_b3_ecoformer(pretrained: bool = False, **kwargs) -> EcoFormerPVTv2:
    return _create("pvt_v2_b3_ecoformer", pretrained, **dict(_WIDE, depths=(3, 4, 18, 3), **kwargs))


@register_model
def pvt_v2_b4_ecoformer(pretrained: bool = False, **kwargs) -> EcoFormerPVTv2:
    return _create("pvt_v2_b4_ecoformer", pretrained, **dict(_WIDE, depths=(3, 8, 27, 3), **kwargs))


@register_model
def test_pvt_v2_ecoformer(pretrained: bool = False, **kwargs) -> EcoFormerPVTv2:
    """A tiny EcoFormer PVTv2 for tests."""
    model_args = dict(embed_dims=(16, 32, 48, 64), num_heads=(1, 2, 3, 4), depths=(1, 1, 1, 1), mlp_ratios=(2, 2, 2, 2))
    return _create("test_pvt_v2_ecoformer", pretrained, **dict(model_args, **kwargs))
