"""EfficientViM: Vision Mamba with a hidden-state mixer (HSM-SSD) and multi-stage hidden-state fusion.

Lee, Choi and Kim, "EfficientViM: Efficient Vision Mamba with Hidden State Mixer based State Space Duality", CVPR 2025.
https://arxiv.org/abs/2411.15241. Official code: https://github.com/mlvlab/EfficientViM
(``classification/models/EfficientViM.py`` and ``utils.py``; weights load through ``checkpoint_filter_fn``).

Layout: EfficientViT's stem (four conv3x3/s2 + BatchNorm, ReLU between, stride 16), then three stages at strides 16,
32 and 64; stages 2 and 3 open with a patch merging (residual DW3x3-BN, 1x1 to 4·out + ReLU, DW3x3/s2 + ReLU,
squeeze-excite, 1x1 to out, residual DW3x3-BN). A block is DW3x3-BN -> HSM-SSD (after a channel LayerNorm) ->
DW3x3-BN -> FFN (1x1-BN-ReLU, 1x1-BN), each step a convex mix ``x <- (1 - a)·x + a·f(x)`` with ``a = sigmoid(α)``,
α per step and channel (initialised at 1e-4, so a starts near 0.5); no stochastic depth.

HSM-SSD (single head, N states, ``HSMSSD``) works in the hidden space: a 1x1 projection and a DW3x3 give B, C and Δ
(N x L each); ``Â = softmax over L of (Δ + A_n)``; the state ``h = (Â ⊙ B)·x`` (N x C); the channel mixing (a gated
linear pair and a skip D) runs on those N tokens instead of the L pixels; the output is ``y = Cᵀ·h`` (L x C).

The classifier fuses every stage (``EfficientViMHead``): per stage, the last block's state h -> LayerNorm -> mean over
the N states -> linear, plus LayerNorm -> global pool -> linear on the final map, the four logits mixed by the softmax
of four learned weights. The official distilled models (``.dist_in1k``) add a second such head whose output is averaged
with the first at eval; ``checkpoint_filter_fn`` folds the two into one head, so all tags load into the same model.

Valid inputs: (B, in_chans, H, W) with H and W positive multiples of ``input_multiple``: 32 for the paper variants
(whose 224² training size is 3.5 times the total stride: stages 1 and 2 are then exactly at strides 16 and 32 and the
last stage rounds up, 7x7 -> 4x4, as in the official model), 64 by default (every stage exactly at its stride). Other
sizes are refused with a ValueError (resize or pad). The official classification code reshapes with ``H = √L`` and so
takes square inputs only; here H and W are passed on, as the official detection/segmentation copies do, and any
valid H x W works (the square logits are the official ones: tools/check_official_efficient_vim.py).

timm ships its own port of the family as ``efficientvim_m*`` (module ``efficientvim``, forward_features returning a
list of per-stage tensors); vizoo's models are ``efficient_vim_m*`` so that both stay registered side by side, and
``checkpoint_filter_fn`` also loads that port's state dicts (the official names, LayerNorm affines as (C,)).
"""

from __future__ import annotations

import re
import weakref

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import ClassifierHead, LayerNorm2d, SqueezeExcite
from timm.models import generate_default_cfgs, register_model
from timm.models._features import feature_take_indices
from timm.models.efficientvit_msra import ConvMlp, ConvNorm, PatchEmbedding
from torch.utils.checkpoint import checkpoint

from vizoo.backbones._base import Stage, StagedBackbone, check_fmt, permute_fmt, place_like
from vizoo.backbones._builder import PaperCfg, build_vizoo_model, check_converted, imagenet_cfg, init_trunc_normal
from vizoo.layers.fusion import fuse_conv_norms
from vizoo.utils.checkpoint import CheckpointError

__all__ = ["EfficientViM"]


class HSMSSD(nn.Module):
    """Hidden-state-mixer SSD, (B, L, C) normalised tokens of an H x W map -> (y (B, C, H, W), h (B, N, C)).

    ``B, C, Δ = DW3x3(x·W_BCΔ)`` (N channels each; no bias, no norm), ``Â = softmax_L(Δ + A)`` (A (N,), initialised
    U(1, 16)), ``h = (Â ⊙ B)·x`` (N x C), ``h <- out_proj(h ⊙ SiLU(z) + D·h)`` with ``h, z = hz_proj(h)`` (D a scalar),
    and ``y = Cᵀ·h`` read back to the map (channels first). h is returned too: the classifier fuses the last block's h
    of every stage.

    The two products are plain matmuls, not the shared kernels: ``vizoo.kernels.linear_attention`` with
    ``normalize=False`` computes ``q·(Σ_j k_jᵀ v_j)`` in one call without exposing the state, but here the state is
    transformed (the gated projections) between the state and the read-out, and the state itself is an output; the
    per-token weights of that kernel are one scalar per token, while Â weights each (state, token) pair (it would be
    folded into k). ``vizoo.kernels.selective_scan.states`` is a decaying recurrence over the sequence, which a softmax
    over all L tokens is not. So: one batched matmul for the state, one for the read-out, each reading its strided
    operands (the token-major x, the transposed h and C) in place, with no permute copies.

    The official 1x1 ``Conv1d`` projections are ``nn.Linear`` here (same weights, squeezed), acting on token-major
    tensors without permutes; ``ssd_expand`` is 1 in every released model and is not a parameter here.
    """

    def __init__(self, dim: int, state_dim: int):
        super().__init__()
        self.state_dim = state_dim
        self.BCdt_proj = nn.Linear(dim, 3 * state_dim, bias=False)
        self.dw = nn.Conv2d(3 * state_dim, 3 * state_dim, 3, padding=1, groups=3 * state_dim, bias=False)
        self.hz_proj = nn.Linear(dim, 2 * dim, bias=False)
        self.out_proj = nn.Linear(dim, dim, bias=False)
        self.A = nn.Parameter(torch.empty(state_dim).uniform_(1, 16))
        self.D = nn.Parameter(torch.ones(1))

    def forward(self, x: torch.Tensor, height: int, width: int) -> tuple[torch.Tensor, torch.Tensor]:
        # (B, L, 3N) token-major viewed as the (B, 3N, H, W) map (channels-last strides), no permute copy
        bcdt = self.dw(self.BCdt_proj(x).transpose(1, 2).unflatten(2, (height, width))).flatten(2)
        b, c, dt = bcdt.split(self.state_dim, dim=1)  # (B, N, L) each
        weights = (dt + self.A[:, None]).softmax(dim=-1)
        h = (weights * b) @ x  # (B, N, C)
        h, z = self.hz_proj(h).chunk(2, dim=-1)
        h = self.out_proj(h * (F.silu(z) + self.D))
        y = h.transpose(1, 2) @ c  # (B, C, L)
        return y.unflatten(2, (height, width)), h


class EfficientViMBlock(nn.Module):
    """DW3x3-BN, HSM-SSD (after LayerNorm over channels), DW3x3-BN, FFN, each as ``x + a·(f(x) - x)`` with
    ``a = sigmoid(alpha)`` per step and channel. (B, C, H, W) -> ((B, C, H, W), h (B, N, C))."""

    def __init__(self, dim: int, state_dim: int, mlp_ratio: float = 4.0):
        super().__init__()
        self.dwconv1 = ConvNorm(dim, dim, 3, 1, 1, groups=dim)
        self.norm = nn.LayerNorm(dim)
        self.mixer = HSMSSD(dim, state_dim)
        self.dwconv2 = ConvNorm(dim, dim, 3, 1, 1, groups=dim)
        self.ffn = ConvMlp(dim, int(dim * mlp_ratio))
        self.alpha = nn.Parameter(torch.full((4, dim), 1e-4))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        a = self.alpha.sigmoid()[:, :, None, None]
        x = x + a[0] * (self.dwconv1(x) - x)
        y, h = self.mixer(self.norm(x.flatten(2).transpose(1, 2)), x.shape[2], x.shape[3])
        x = x + a[1] * (y - x)
        x = x + a[2] * (self.dwconv2(x) - x)
        return x + a[3] * (self.ffn(x) - x), h


class PatchMerging(nn.Module):
    """(B, in_dim, H, W) -> (B, out_dim, ⌈H/2⌉, ⌈W/2⌉): ``x + DW3x3-BN(x)``, 1x1-BN-ReLU to 4·out_dim, DW3x3/s2-BN-ReLU,
    squeeze-excite (timm's, reduction 0.25), 1x1-BN to out_dim, ``x + DW3x3-BN(x)``. Unlike EfficientViT's merging
    (timm ``efficientvit_msra.PatchMerging``) the hidden width is 4x the output width, and the residual DW convs are
    inside."""

    def __init__(self, in_dim: int, out_dim: int, ratio: float = 4.0):
        super().__init__()
        hidden = int(out_dim * ratio)
        self.dwconv1 = ConvNorm(in_dim, in_dim, 3, 1, 1, groups=in_dim)
        self.conv1 = ConvNorm(in_dim, hidden)
        self.act = nn.ReLU()
        self.conv2 = ConvNorm(hidden, hidden, 3, 2, 1, groups=hidden)
        self.se = SqueezeExcite(hidden, 0.25)
        self.conv3 = ConvNorm(hidden, out_dim)
        self.dwconv2 = ConvNorm(out_dim, out_dim, 3, 1, 1, groups=out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.dwconv1(x)
        x = self.conv3(self.se(self.act(self.conv2(self.act(self.conv1(x))))))
        return x + self.dwconv2(x)


class EfficientViMStage(Stage):
    """An optional patch merging, then blocks; ``forward`` gives the map (for timm's feature wrappers),
    ``forward_with_state`` the map and the last block's hidden state (B, N, C)."""

    def forward_with_state(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.downsample(x)
        for block in self.blocks:
            if self.grad_checkpointing and not torch.jit.is_scripting():
                x, h = checkpoint(block, x, use_reentrant=False)
            else:
                x, h = block(x)
        return x, h

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_with_state(x)[0]


class EfficientViMHead(ClassifierHead):
    """Multi-stage hidden-state fusion: ``Σ_i softmax(weights)_i · logits_i`` over four branches.

    Branches 0-2: stage i's last hidden state (B, N_i, C_i) -> LayerNorm (``state_norm``) -> mean over the N_i states
    -> dropout -> linear (``state_fc``); branch 3: the final map (already LayerNorm-ed by the model) -> global pool ->
    dropout -> linear (``fc``, timm's ``ClassifierHead``). ``pre_logits`` and ``num_classes=0`` give the pooled final
    map (B, in_features): the image features; the states feed the classifier only, so the state branch (norms,
    linears, weights) exists only with a classifier. Pooling can be switched off (``pool_type=""``) only without one:
    building so raises, as in timm; ``reset(num_classes)`` keeps the pooling as timm does, and such a head refuses to
    classify until it is given a pooling.
    """

    def __init__(
        self,
        state_dims: tuple[int, ...],
        num_classes: int,
        pool_type: str = "avg",
        drop_rate: float = 0.0,
    ):
        if num_classes > 0 and not pool_type:
            raise ValueError(
                "EfficientViM's classifier pools every branch: global_pool='' needs num_classes=0 (features only)"
            )
        super().__init__(state_dims[-1], num_classes, pool_type=pool_type, drop_rate=drop_rate)
        self.state_dims = tuple(state_dims)
        self._build_state_branch(num_classes)

    def _build_state_branch(self, num_classes: int) -> None:
        if num_classes > 0:
            self.state_norm = nn.ModuleList(nn.LayerNorm(d) for d in self.state_dims)
            self.state_fc = nn.ModuleList(nn.Linear(d, num_classes) for d in self.state_dims)
            self.weights = nn.Parameter(torch.ones(len(self.state_dims) + 1))
            self.state_fc.apply(init_trunc_normal)
        else:
            self.state_norm = self.state_fc = self.weights = None

    def reset(self, num_classes: int, pool_type: str | None = None) -> None:
        super().reset(num_classes, pool_type)
        self.fc.apply(init_trunc_normal)
        self._build_state_branch(num_classes)

    def forward(
        self, x: torch.Tensor, states: list[torch.Tensor] | None = None, pre_logits: bool = False
    ) -> torch.Tensor:
        x = self.drop(self.global_pool(x))
        if pre_logits or self.weights is None:
            return self.flatten(x)
        if not self.global_pool.pool_type:
            raise ValueError(
                "EfficientViM's classifier pools every branch, but global_pool is '' (kept by reset_classifier): "
                "call reset_classifier(num_classes, 'avg'), or reset_classifier(0, '') for the unpooled map"
            )
        if states is None:
            raise ValueError(
                "EfficientViM's classifier fuses the hidden states of every stage with the pooled map, which the "
                "map alone does not hold: pass forward_head the very tensor that this model's last forward_features "
                "or forward_intermediates call returned, or call model(x) for logits"
            )
        weights = self.weights.softmax(dim=0)
        logits = weights[-1] * self.fc(x)
        for w, norm, fc, h in zip(weights, self.state_norm, self.state_fc, states):
            logits = logits + w * fc(self.drop(norm(h).mean(dim=1)))
        return logits


class _LastStates:
    """The hidden states of a model's last ``forward_features`` / ``forward_intermediates`` call, keyed by a weak
    reference to the features it returned, for ``forward_head``. Neither copied nor pickled with the model (a copy or
    a loaded model starts empty), so EMA copies and saved models never carry autograd graphs."""

    def __init__(self):
        self.features = None
        self.states = None

    def record(self, features: torch.Tensor, states: list[torch.Tensor]) -> None:
        self.features, self.states = weakref.ref(features), states

    def get(self, features: torch.Tensor) -> list[torch.Tensor] | None:
        return self.states if self.features is not None and self.features() is features else None

    def __deepcopy__(self, memo) -> _LastStates:
        return _LastStates()

    def __getstate__(self) -> dict:
        return {}

    def __setstate__(self, state: dict) -> None:
        self.__init__()


class EfficientViM(StagedBackbone):
    """EfficientViM backbone and classifier, (B, in_chans, H, W) -> (B, num_classes); NCHW throughout.

    ``forward_features`` returns the final map after its LayerNorm, (B, dims[-1], ⌈H/64⌉, ⌈W/64⌉) (NHWC with
    ``features_fmt="NHWC"``), and keeps the last block's hidden state of every stage, (B, N_i, dims[i]), for
    ``forward_head``: ``forward_head(forward_features(x))`` is ``model(x)``. ``forward_head`` reads those states only
    for the tensor the last ``forward_features`` (or ``forward_intermediates``) call returned, held by a weak
    reference: given any other map it can still pool (``pre_logits``, ``num_classes=0``) but refuses to classify.
    ``model(x)`` passes the states directly and stores nothing (so ``torch.export`` / ONNX see a pure function).

    Args:
        dims: channels of the three stages.
        depths: blocks per stage (at least 1: the classifier reads each stage's last block).
        state_dims: HSM-SSD states N per stage.
        mlp_ratio: FFN width as a multiple of the channels.
        in_chans, num_classes, global_pool, drop_rate: as in timm (dropout before every classifier branch).
        input_multiple: H and W must be multiples of it (see the module docstring).

    The official optimizer decays all parameters except 1-D ones and biases, which is timm's default grouping
    (A and D are 1-D); the official block LayerNorm stores its affine as (1, C, 1), so it was decayed, while the
    (C,) affine here is not.
    """

    output_fmt = "NCHW"

    def __init__(
        self,
        dims: tuple[int, ...] = (128, 256, 512),
        depths: tuple[int, ...] = (2, 2, 2),
        state_dims: tuple[int, ...] = (49, 25, 9),
        mlp_ratio: float = 4.0,
        in_chans: int = 3,
        num_classes: int = 1000,
        global_pool: str = "avg",
        drop_rate: float = 0.0,
        input_multiple: int = 64,
    ):
        super().__init__()
        if not len(dims) == len(depths) == len(state_dims) or min(depths) < 1:
            raise ValueError(
                "EfficientViM needs one entry per stage in dims, depths and state_dims and at least one block per "
                f"stage (the classifier reads each stage's last block); got dims={dims}, depths={depths}, "
                f"state_dims={state_dims}"
            )
        self.in_chans = in_chans
        self.num_classes = num_classes
        self.num_features = self.head_hidden_size = dims[-1]
        self.input_multiple = input_multiple
        self.stem = PatchEmbedding(in_chans, dims[0])
        self.stages = nn.Sequential()
        self.feature_info = []
        for i, (dim, depth, state_dim) in enumerate(zip(dims, depths, state_dims)):
            blocks = [EfficientViMBlock(dim, state_dim, mlp_ratio) for _ in range(depth)]
            self.stages.append(EfficientViMStage(PatchMerging(dims[i - 1], dim) if i else None, blocks))
            self.feature_info.append(dict(num_chs=dim, reduction=16 * 2**i, module=f"stages.{i}"))
        self.norm = LayerNorm2d(dims[-1], eps=1e-5)
        self.head = EfficientViMHead(dims, num_classes, global_pool, drop_rate)
        # The official model-level init runs last: every BatchNorm at weight 1 (overriding the zero init that its
        # conv layers ask for, as timm's ConvMlp does here) and truncated-normal linears in the head.
        for m in self.modules():
            if isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
        self.head.apply(init_trunc_normal)
        self._last_states = _LastStates()

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        self.num_classes = num_classes
        self.head.reset(num_classes, global_pool)
        place_like(self.head, self)

    def _features_and_states(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        self.check_input(x)
        x = self.stem(x)
        states = []
        for stage in self.stages:
            x, h = stage.forward_with_state(x)
            states.append(h)
        return self.norm(x), states

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C_in, H, W) -> the LayerNorm-ed final map (B, dims[-1], ⌈H/64⌉, ⌈W/64⌉), or NHWC with
        ``features_fmt="NHWC"``; the stages' hidden states are kept for ``forward_head`` (see the class docstring)."""
        x, states = self._features_and_states(x)
        x = self._to_fmt(x, self.features_fmt or self.output_fmt)
        self._last_states.record(x, states)
        return x

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """``forward_features``' output -> logits (fusing the states that call kept), or the pooled map with
        ``pre_logits`` or ``num_classes=0``."""
        states = self._last_states.get(x)
        return self.head(permute_fmt(x, self.features_fmt or self.output_fmt, self.output_fmt), states, pre_logits)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x, states = self._features_and_states(x)
        return self.head(x, states)

    def forward_intermediates(
        self,
        x: torch.Tensor,
        indices: int | list[int] | None = None,
        norm: bool = False,
        stop_early: bool = False,
        output_fmt: str = "NCHW",
        intermediates_only: bool = False,
    ) -> list[torch.Tensor] | tuple[torch.Tensor, list[torch.Tensor]]:
        """As ``StagedBackbone.forward_intermediates``; when every stage ran, the final features it returns also
        classify through ``forward_head`` (their hidden states are kept as by ``forward_features``)."""
        check_fmt("output_fmt", output_fmt)
        take_indices, max_index = feature_take_indices(len(self.stages), indices)
        self.check_input(x)
        x = self.stem(x)
        last = len(self.stages) - 1
        stages = self.stages if not stop_early else self.stages[: max_index + 1]
        intermediates, states = [], []
        for i, stage in enumerate(stages):
            x, h = stage.forward_with_state(x)
            states.append(h)
            if i in take_indices:
                intermediates.append(self._to_fmt(self.norm(x) if norm and i == last else x, output_fmt))
        if intermediates_only:
            return intermediates
        final = self._to_fmt(self.norm(x), self.features_fmt or self.output_fmt)
        if len(states) == len(self.stages):
            self._last_states.record(final, states)
        return final, intermediates

    @torch.no_grad()
    def fuse(self) -> EfficientViM:
        """Fold every BatchNorm into its conv, in place, for deployment (eval outputs unchanged); returns the model
        in eval mode."""
        self.eval()
        fuse_conv_norms(self)
        return self


# Official module path -> vizoo's, after the downsample is moved to the next stage.
_RENAMES = [
    (r"^patch_embed\.conv\.(\d)\.", lambda m: f"stem.conv{int(m[1]) + 1}."),
    (r"\.ffn\.fc1\.", ".ffn.pw1."),
    (r"\.ffn\.fc2\.", ".ffn.pw2."),
    (r"\.downsample\.conv\.0\.", ".downsample.conv1."),
    (r"\.downsample\.conv\.1\.", ".downsample.conv2."),
    (r"\.downsample\.conv\.2\.", ".downsample.se."),
    (r"\.downsample\.conv\.3\.", ".downsample.conv3."),
    (r"\.mixer\.(BCdt_proj|hz_proj|out_proj|dw)\.conv\.weight$", r".mixer.\1.weight"),
    (r"\.(conv\d|dwconv\d|pw\d)\.norm\.", r".\1.bn."),  # ConvLayer2D's BatchNorm (``norm`` there, ``bn`` in ConvNorm)
    (r"^weights$", "head.weights"),
]


def _official_key(key: str, num_stages: int) -> str:
    if m := re.match(r"^stages\.(\d+)\.downsample\.(.*)$", key):
        key = f"stages.{int(m[1]) + 1}.downsample.{m[2]}"
    elif m := re.match(r"^heads\.(\d+)\.(.*)$", key):  # one per stage's state, then the final map's
        key = f"head.fc.{m[2]}" if int(m[1]) == num_stages else f"head.state_fc.{m[1]}.{m[2]}"
    elif m := re.match(r"^norm\.(\d+)\.(.*)$", key):  # likewise: the state norms, then the final map's
        key = f"norm.{m[2]}" if int(m[1]) == num_stages else f"head.state_norm.{m[1]}.{m[2]}"
    for pattern, repl in _RENAMES:
        key = re.sub(pattern, repl, key)
    return key


def _fold_distillation_head(state_dict: dict[str, torch.Tensor], num_branches: int) -> dict[str, torch.Tensor]:
    """Replace ``heads``/``weights`` and ``heads_dist``/``weights_dist`` by one head with the eval output of the
    official distilled model, ``(Σ a_i·head_i + Σ c_i·head_dist_i) / 2`` (a, c the two softmaxed weight vectors):
    with n branches, branch i gets ``(n/2)·(a_i·W_i + c_i·V_i)`` (weights and biases) and the mixing weights become 0,
    whose softmax is 1/n on every branch."""
    out = dict(state_dict)
    a = out.pop("weights").softmax(dim=0)
    c = out.pop("weights_dist").softmax(dim=0)
    if len(a) != num_branches or len(c) != num_branches:
        raise CheckpointError(
            f"the checkpoint mixes {len(a)} and {len(c)} classifier branches, the model has {num_branches}; it is not "
            "a checkpoint of this EfficientViM variant"
        )
    for i in range(num_branches):
        for name in ("weight", "bias"):
            out[f"heads.{i}.{name}"] = (
                num_branches / 2 * (a[i] * out[f"heads.{i}.{name}"] + c[i] * out.pop(f"heads_dist.{i}.{name}"))
            )
    out["weights"] = torch.zeros(num_branches)
    return out


def checkpoint_filter_fn(state_dict: dict[str, torch.Tensor], model: EfficientViM) -> dict[str, torch.Tensor]:
    """Map an official EfficientViM checkpoint (``classification/models/EfficientViM.py`` layout, the Drive files
    ``EfficientViM_M*_{e300,e450,dist}.pth``, read by ``vizoo.utils.checkpoint.read_state_dict``) to vizoo's keys.

    The official stages end with their patch merging (``stages.i.downsample``), vizoo's stages 2-3 start with it.
    Official 1x1 ``Conv1d`` weights (out, in, 1) become ``nn.Linear`` (out, in); LayerNorm affines stored as
    (1, C, 1[, 1]) become (C,). ``norm.0-2`` and ``heads.0-2`` are the head's state branch, ``norm.3`` the final
    LayerNorm, ``heads.3`` the map classifier. A distilled checkpoint's two heads are folded into one
    (``_fold_distillation_head``). When the model's classifier has another size (or none) the classifier weights are
    left out for timm to skip. Raises ``CheckpointError`` listing missing and unexpected keys if the result does not
    fit ``model``.
    """
    state_dict = {k.removeprefix("backbone."): v for k, v in state_dict.items()}
    if any(k.startswith("stem.") for k in state_dict):
        return check_converted(state_dict, model)
    num_stages = len(model.stages)
    if "weights_dist" in state_dict:
        state_dict = _fold_distillation_head(state_dict, num_stages + 1)
    out = {}
    for key, value in state_dict.items():
        key = _official_key(key, num_stages)
        if re.search(r"\.mixer\.(BCdt_proj|hz_proj|out_proj)\.weight$", key) and value.dim() == 3:
            value = value.squeeze(-1)
        elif re.search(r"(^|\.)norm\.(weight|bias)$|^head\.state_norm\.\d+\.(weight|bias)$", key):
            value = value.flatten()
        out[key] = value
    classes = out.get("head.fc.weight", torch.empty(0, 0)).shape[0]
    if classes != model.num_classes:  # timm drops ``head.fc`` and loads the rest non-strictly
        out = {k: v for k, v in out.items() if not k.startswith(("head.state_fc.", "head.state_norm.", "head.weights"))}
    return check_converted(out, model)


def _create_efficient_vim(variant: str, pretrained: bool = False, **kwargs) -> EfficientViM:
    return build_vizoo_model(
        EfficientViM,
        variant,
        pretrained,
        checkpoint_filter_fn,
        feature_cfg=dict(out_indices=(0, 1, 2), flatten_sequential=True),
        **kwargs,
    )


def _cfg(size: int = 224, timm_tag: str = "", multiple: int = 32, **kwargs) -> PaperCfg:
    """The official test transform (Swin's): resize to size·256/224 (bicubic), centre crop ``size``. ``timm_tag``:
    the timm Hub repo holding the weights (``timm/<timm_tag>``); ``multiple``: the model's ``input_multiple``, the
    smallest input it takes."""
    pool = -(-size // 64)
    hub = dict(hf_hub_id=f"timm/{timm_tag}", hf_hub_filename="model.safetensors") if timm_tag else {}
    return imagenet_cfg(
        "stem.conv1.conv",
        "arXiv:2411.15241",
        "https://github.com/mlvlab/EfficientViM",
        license="mit",
        input_size=(3, size, size),
        min_input_size=(3, multiple, multiple),
        pool_size=(pool, pool),
        **hub,
        **kwargs,
    )


# Official weights: released on Google Drive (the README's two tables), which no URL can fetch, and re-hosted on the
# Hugging Face Hub by timm (``timm/efficientvim_m*``, MIT) in the official module names with flat LayerNorm
# parameters; ``checkpoint_filter_fn`` reads both layouts, so a Drive file loads with ``pretrained_cfg_overlay=
# dict(file=path)``. ``.in1k``: 300 epochs (``EfficientViM_M*_e300.pth``, the paper's figures); ``.e450_in1k``: 450
# epochs; ``.dist_in1k``: 300 epochs with DeiT-style hard distillation (``_dist.pth``; the two heads are folded into
# one on loading, as the official model averages them at eval).
# paper_*: the README's table (params, FLOPs in MFLOPs: fvcore counts at the variant's resolution, top-1).
_M1, _M2 = dict(paper_params_m=6.7, paper_gmacs=0.239), dict(paper_params_m=13.9, paper_gmacs=0.355)
_M3, _M4 = dict(paper_params_m=16.6, paper_gmacs=0.656), dict(paper_params_m=19.6, paper_gmacs=1.111)
default_cfgs = generate_default_cfgs(
    {
        "efficient_vim_m1.in1k": _cfg(224, "efficientvim_m1.e300_in1k", **_M1, paper_top1=72.9),
        "efficient_vim_m1.e450_in1k": _cfg(224, "efficientvim_m1.e450_in1k", **_M1, paper_top1=73.5),
        "efficient_vim_m1.dist_in1k": _cfg(224, "efficientvim_m1_dist.in1k", **_M1, paper_top1=74.6),
        "efficient_vim_m2.in1k": _cfg(224, "efficientvim_m2.e300_in1k", **_M2, paper_top1=75.4),
        "efficient_vim_m2.e450_in1k": _cfg(224, "efficientvim_m2.e450_in1k", **_M2, paper_top1=75.8),
        "efficient_vim_m2.dist_in1k": _cfg(224, "efficientvim_m2_dist.in1k", **_M2, paper_top1=76.7),
        "efficient_vim_m3.in1k": _cfg(224, "efficientvim_m3.e300_in1k", **_M3, paper_top1=77.6),
        "efficient_vim_m3.e450_in1k": _cfg(224, "efficientvim_m3.e450_in1k", **_M3, paper_top1=77.9),
        "efficient_vim_m3.dist_in1k": _cfg(224, "efficientvim_m3_dist.in1k", **_M3, paper_top1=79.1),
        "efficient_vim_m4.in1k": _cfg(256, "efficientvim_m4.e300_in1k", **_M4, paper_top1=79.4),
        "efficient_vim_m4.e450_in1k": _cfg(256, "efficientvim_m4.e450_in1k", **_M4, paper_top1=79.6),
        "efficient_vim_m4.dist_in1k": _cfg(256, "efficientvim_m4_dist.in1k", **_M4, paper_top1=80.7),
        "test_efficient_vim.untrained": _cfg(64, multiple=64, crop_pct=1.0),
    }
)


# The official factories (``EfficientViM_M1`` .. ``_M4``): mlp_ratio 4 and ssd_expand 1 everywhere.
@register_model
def efficient_vim_m1(pretrained: bool = False, **kwargs) -> EfficientViM:
    model_args = dict(dims=(128, 192, 320), depths=(2, 2, 2), state_dims=(49, 25, 9), input_multiple=32)
    return _create_efficient_vim("efficient_vim_m1", pretrained, **dict(model_args, **kwargs))


@register_model
def efficient_vim_m2(pretrained: bool = False, **kwargs) -> EfficientViM:
    model_args = dict(dims=(128, 256, 512), depths=(2, 2, 2), state_dims=(49, 25, 9), input_multiple=32)
    return _create_efficient_vim("efficient_vim_m2", pretrained, **dict(model_args, **kwargs))


@register_model
def efficient_vim_m3(pretrained: bool = False, **kwargs) -> EfficientViM:
    model_args = dict(dims=(224, 320, 512), depths=(2, 2, 2), state_dims=(49, 25, 9), input_multiple=32)
    return _create_efficient_vim("efficient_vim_m3", pretrained, **dict(model_args, **kwargs))


@register_model
def efficient_vim_m4(pretrained: bool = False, **kwargs) -> EfficientViM:
    """Trained and evaluated at 256² (the official ``main.py`` sets it for M4)."""
    model_args = dict(dims=(224, 320, 512), depths=(3, 4, 2), state_dims=(64, 32, 16), input_multiple=32)
    return _create_efficient_vim("efficient_vim_m4", pretrained, **dict(model_args, **kwargs))


@register_model
def test_efficient_vim(pretrained: bool = False, **kwargs) -> EfficientViM:
    """A tiny EfficientViM for tests: two blocks in the last stage, every stage exact at 64² (4x4, 2x2, 1x1)."""
    model_args = dict(dims=(32, 48, 64), depths=(1, 1, 2), state_dims=(8, 4, 4), mlp_ratio=2.0)
    return _create_efficient_vim("test_efficient_vim", pretrained, **dict(model_args, **kwargs))
