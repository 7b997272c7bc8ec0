"""LPViT-style block-structured pruning of timm ViTs/DeiTs, and compaction into smaller dense layers.

LPViT: Xu et al., "LPViT: Low-Power Semi-structured Pruning for Vision Transformers", ECCV 2024
(https://arxiv.org/abs/2407.02068). The linear layers of every block (``attn.qkv``, ``attn.proj``, ``mlp.fc1``,
``mlp.fc2``) are cut into ``block`` = (rows, cols) tiles of their (out, in) weights and tiles are masked to zero.

Importance is a second-order Taylor estimate of the loss change with the empirical Fisher as the Hessian:
removing weights ``w`` costs about ``0.5 * sum(F * w**2)`` with ``F = E[grad**2]`` accumulated on calibration data
(labels when the calibration gives them, the model's own argmax predictions otherwise). A tile's score is the sum
over its weights.

Structure that :func:`compact` can remove. With ``structure="group"`` (the default) tiles are not scored one by one
but in the groups that a smaller dense layer can drop while the residual width stays:

- an MLP group is ``g = lcm(rows, cols)`` hidden units: ``g`` rows of fc1 (whole tile rows, every input column)
  together with the matching ``g`` columns of fc2 (whole tile columns, every output row);
- a head group is one attention head: its q, k and v rows of qkv together with its columns of proj.

Each group is a union of whole tiles, so masks stay block-aligned, and the group's score is the sum of its tiles'
scores. Groups are removed greedily under a global budget (``sparsity`` of all prunable linear weights), each step
removing the group with the smallest ``score / benefit``, where the benefit mixes the weights it frees and the
latency it saves: ``params**(1 - latency_weight) * (kappa * saved_ms)**latency_weight``. ``saved_ms`` comes from a
:class:`~vizoo.pruning.latency.LatencyModel` timed at the layer shapes on the machine that prunes (hardware-aware, not
FLOPs) and is re-read at the layer's current width after every removal. At least one head and one MLP group stay per
block.

``structure="block"`` scores every tile on its own and masks the globally lowest ones (LPViT's unstructured tile
masks). Those masks give no speedup on CPU or in ONNX; they are for the CUDA block-sparse path
(:func:`to_block_sparse`), which needs a GPU: ``tools/gpu_check.py`` times it against the masked dense model.

Masks live in ``torch.nn.utils.parametrize`` parametrizations (:class:`BlockMask`, a ``mask`` buffer), so a
fine-tune (:func:`finetune`) keeps pruned weights at zero.
"""

from __future__ import annotations

import heapq
import logging
import math
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import Mlp
from timm.models.vision_transformer import Attention, VisionTransformer
from torch.nn.utils import parametrize

from .latency import LatencyModel

_logger = logging.getLogger(__name__)

__all__ = [
    "PRUNABLE",
    "BlockMask",
    "block_prune",
    "compact",
    "fisher_importance",
    "finetune",
    "prunable_linears",
    "sparsity_of",
    "to_block_sparse",
]

#: Linear layers of each ViT block that are pruned, by their name inside the block.
PRUNABLE = ("attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2")


class BlockMask(nn.Module):
    """Parametrization ``weight -> weight * mask``; ``mask`` (out, in) is a buffer saved in the state dict."""

    def __init__(self, mask: torch.Tensor):
        super().__init__()
        self.register_buffer("mask", mask)

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return weight * self.mask


def check_vit(model: nn.Module) -> VisionTransformer:
    """Raise unless ``model`` is a timm VisionTransformer whose blocks have timm's Attention and Mlp."""
    if not isinstance(model, VisionTransformer):
        raise TypeError(
            f"block pruning and token merging take a timm VisionTransformer (ViT/DeiT), got {type(model).__name__}; "
            "build one with timm.create_model('deit_small_patch16_224') or similar"
        )
    for i, blk in enumerate(model.blocks):
        if not isinstance(getattr(blk, "attn", None), Attention) or not isinstance(getattr(blk, "mlp", None), Mlp):
            raise TypeError(
                f"block {i} of this VisionTransformer is {type(blk).__name__} with attn/mlp of other types; only "
                "timm's Block with Attention and Mlp (plain ViT/DeiT) is supported"
            )
    return model


def prunable_linears(model: nn.Module) -> dict[str, nn.Linear]:
    """``{"blocks.3.mlp.fc1": Linear, ...}`` for every prunable linear layer of a ViT, in block order."""
    check_vit(model)
    return {f"blocks.{i}.{name}": blk.get_submodule(name) for i, blk in enumerate(model.blocks) for name in PRUNABLE}


def _mask(linear: nn.Linear) -> torch.Tensor | None:
    if parametrize.is_parametrized(linear, "weight"):
        for p in linear.parametrizations.weight:
            if isinstance(p, BlockMask):
                return p.mask
    return None


def _set_mask(linear: nn.Linear, mask: torch.Tensor) -> None:
    current = _mask(linear)
    if current is not None:
        current.copy_(mask)
    else:
        parametrize.register_parametrization(linear, "weight", BlockMask(mask.to(linear.weight)))


def _raw_weight(linear: nn.Linear) -> nn.Parameter:
    if parametrize.is_parametrized(linear, "weight"):
        return linear.parametrizations.weight.original
    return linear.weight


def sparsity_of(model: nn.Module) -> float:
    """Fraction of zero weights over the prunable linear layers (masks applied)."""
    zeros = total = 0
    for linear in prunable_linears(model).values():
        w = linear.weight.detach()
        zeros += int((w == 0).sum())
        total += w.numel()
    return zeros / max(total, 1)


def _batches(calibration: Iterable) -> Iterator[tuple[torch.Tensor, torch.Tensor | None]]:
    for item in calibration:
        if isinstance(item, torch.Tensor):
            yield item, None
        elif isinstance(item, (tuple, list)) and item and isinstance(item[0], torch.Tensor):
            y = item[1] if len(item) > 1 and isinstance(item[1], torch.Tensor) else None
            yield item[0], y
        else:
            raise TypeError(
                f"calibration must yield image tensors (B, C, H, W) or (images, labels) pairs, got {type(item)}"
            )


def fisher_importance(
    model: nn.Module,
    calibration: Iterable,
    micro_batch: int = 8,
    max_batches: int | None = None,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
) -> dict[str, torch.Tensor]:
    """Per-weight second-order Taylor scores ``0.5 * E[grad**2] * w**2`` (empirical Fisher) of each prunable layer.

    ``calibration`` yields images (B, C, H, W) or (images, labels); without labels the model's argmax predictions
    are the targets. Gradients are taken per ``micro_batch`` images (summed loss) and their squares accumulated in
    fp32. Returns ``{layer name: scores (out, in)}``. The model is run in eval mode (no dropout) and left unchanged.
    """
    linears = prunable_linears(model)
    if getattr(model, "num_classes", 0) <= 0 and loss_fn is None:
        raise ValueError("Fisher importance needs class logits: give the model a head (num_classes > 0) or a loss_fn")
    params = [_raw_weight(m) for m in linears.values()]
    fisher = [torch.zeros_like(p, dtype=torch.float32) for p in params]
    was_training = model.training
    model.eval()
    seen = 0
    try:
        for b, (x, y) in enumerate(_batches(calibration)):
            if max_batches is not None and b >= max_batches:
                break
            device = params[0].device
            for i in range(0, len(x), micro_batch):
                xs = x[i : i + micro_batch].to(device)
                logits = model(xs)
                if y is not None:
                    target = y[i : i + micro_batch].to(device)
                else:
                    target = logits.detach().argmax(-1)
                loss = (loss_fn or (lambda o, t: F.cross_entropy(o, t, reduction="sum")))(logits, target)
                grads = torch.autograd.grad(loss, params, allow_unused=True)
                for f, g in zip(fisher, grads):
                    if g is not None:
                        f.add_(g.detach().float().square())
                seen += len(xs)
    finally:
        model.train(was_training)
    if seen == 0:
        raise ValueError("calibration is empty: pass at least one batch of images (a tensor or a DataLoader)")
    return {
        name: 0.5 * (f / seen) * _raw_weight(m).detach().float().square() * _effective_mask(m)
        for (name, m), f in zip(linears.items(), fisher)
    }


def _effective_mask(linear: nn.Linear) -> torch.Tensor:
    mask = _mask(linear)
    return torch.ones_like(linear.weight, dtype=torch.float32) if mask is None else mask.float()


def _tile_sums(scores: torch.Tensor, block: tuple[int, int]) -> torch.Tensor:
    r, c = block
    out, inp = scores.shape
    return scores.reshape(out // r, r, inp // c, c).sum((1, 3))


def _check_blocks(model: VisionTransformer, block: tuple[int, int], structure: str) -> None:
    r, c = block
    if r < 1 or c < 1:
        raise ValueError(f"block must be two positive sizes (rows, cols), got {block}")
    for name, linear in prunable_linears(model).items():
        out, inp = linear.weight.shape
        if out % r or inp % c:
            raise ValueError(
                f"block {block} does not divide {name} of shape (out={out}, in={inp}); pick a block whose rows "
                f"divide {out} and whose cols divide {inp} (e.g. (16, 16))"
            )
    if structure == "group":
        hd = model.blocks[0].attn.head_dim
        if hd % r or hd % c:
            raise ValueError(
                f"head_dim {hd} is not a multiple of block {block}, so heads are not whole tiles; use a block that "
                "divides the head dim or structure='block'"
            )


@dataclass
class _Width:
    heads: int
    hidden: int


def _group_scores(model: VisionTransformer, scores: dict[str, torch.Tensor], g: int) -> list[dict[str, torch.Tensor]]:
    """Per block: {"head": (num_heads,), "mlp": (hidden // g,)} summed Taylor scores of the removable groups."""
    out = []
    for i, blk in enumerate(model.blocks):
        k, hd = blk.attn.num_heads, blk.attn.head_dim
        qkv = scores[f"blocks.{i}.attn.qkv"].reshape(3, k, hd, -1).sum((0, 2, 3))
        proj = scores[f"blocks.{i}.attn.proj"].reshape(-1, k, hd).sum((0, 2))
        fc1 = scores[f"blocks.{i}.mlp.fc1"].reshape(-1, g, scores[f"blocks.{i}.mlp.fc1"].shape[1]).sum((1, 2))
        fc2 = scores[f"blocks.{i}.mlp.fc2"].reshape(scores[f"blocks.{i}.mlp.fc2"].shape[0], -1, g).sum((0, 2))
        out.append({"head": qkv + proj, "mlp": fc1 + fc2})
    return out


def _allocate_groups(
    model: VisionTransformer,
    group_scores: list[dict[str, torch.Tensor]],
    g: int,
    target: float,
    latency: LatencyModel,
    latency_weight: float,
) -> list[dict[str, list[int]]]:
    """Greedy global allocation; returns per block the removed head indices and MLP group indices."""
    dim = model.embed_dim
    blocks = model.blocks
    head_params = [4 * dim * b.attn.head_dim for b in blocks]
    mlp_params = 2 * dim * g
    total = sum(linear.weight.numel() for linear in prunable_linears(model).values())
    dense_ms = sum(latency.attention(b.attn.num_heads) + latency.mlp(b.mlp.fc1.out_features) for b in blocks)
    kappa = total / max(dense_ms, 1e-9)  # converts ms into "weights" so the two benefits share units

    widths = [_Width(b.attn.num_heads, b.mlp.fc1.out_features) for b in blocks]
    order = [{k: sorted(range(len(s[k])), key=lambda j, s=s, k=k: float(s[k][j])) for k in s} for s in group_scores]
    removed: list[dict[str, list[int]]] = [{"head": [], "mlp": []} for _ in blocks]

    def priority(i: int, kind: str) -> float | None:
        w = widths[i]
        if kind == "head":
            if w.heads <= 1:
                return None
            saved, params = latency.attention(w.heads) - latency.attention(w.heads - 1), head_params[i]
        else:
            if w.hidden <= g:
                return None
            saved, params = latency.mlp(w.hidden) - latency.mlp(w.hidden - g), mlp_params
        saved = max(saved, 1e-3 * dense_ms / max(len(blocks), 1) / 64)  # a width step never counts as free
        benefit = params ** (1 - latency_weight) * (kappa * saved) ** latency_weight
        j = order[i][kind][len(removed[i][kind])]
        return float(group_scores[i][kind][j]) / benefit

    heap = [(p, i, k) for i in range(len(blocks)) for k in ("head", "mlp") if (p := priority(i, k)) is not None]
    heapq.heapify(heap)
    pruned = 0.0
    while pruned < target and heap:
        _, i, kind = heapq.heappop(heap)
        j = order[i][kind][len(removed[i][kind])]
        removed[i][kind].append(j)
        if kind == "head":
            widths[i].heads -= 1
            pruned += head_params[i]
        else:
            widths[i].hidden -= g
            pruned += mlp_params
        if (p := priority(i, kind)) is not None:
            heapq.heappush(heap, (p, i, kind))
    if pruned < target:
        _logger.warning(
            "could only reach %.3f of the requested %.3f sparsity (one head and one MLP group kept per block)",
            pruned / total,
            target / total,
        )
    return removed


def block_prune(
    model: nn.Module,
    sparsity: float,
    calibration: Iterable,
    block: tuple[int, int] = (32, 32),
    *,
    structure: str = "group",
    latency: LatencyModel | str | None = "measure",
    latency_weight: float = 1.0,
    latency_batch: int = 1,
    micro_batch: int = 8,
    max_batches: int | None = None,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
) -> nn.Module:
    """Mask ``sparsity`` of the prunable linear weights of a timm ViT in ``block`` tiles; returns the model (in place).

    Args:
        model: a timm ``VisionTransformer`` (ViT, DeiT) with a classifier head.
        sparsity: fraction in [0, 1) of qkv/proj/fc1/fc2 weights to zero. ``structure="group"`` removes whole groups,
            so the result is the smallest achievable fraction >= ``sparsity`` (within one group).
        calibration: iterable of image batches (B, C, H, W) or of (images, labels), e.g. a DataLoader.
        block: tile (rows, cols) of a weight (out, in); must divide every prunable layer.
        structure: "group" (compactable: MLP hidden groups and heads, see the module docstring) or "block" (tiles).
        latency: a :class:`LatencyModel`, "measure" to time this model's shapes on the current machine at
            ``latency_batch`` images, or None for a parameter-proportional model.
        latency_weight: 0 ranks groups by score per weight removed, 1 by score per millisecond saved.
        latency_batch: images per timed batch when ``latency="measure"``.
        micro_batch: passed to :func:`fisher_importance`.
        max_batches: passed to :func:`fisher_importance`.
        loss_fn: passed to :func:`fisher_importance`.

    The result has ``model.pruning_report`` (achieved sparsity, heads and hidden widths kept per block).
    """
    if not 0.0 <= sparsity < 1.0:
        raise ValueError(f"sparsity must be in [0, 1), got {sparsity}")
    if structure not in ("group", "block"):
        raise ValueError(f"structure must be 'group' or 'block', got {structure!r}")
    block = (int(block[0]), int(block[1]))
    vit = check_vit(model)
    _check_blocks(vit, block, structure)
    scores = fisher_importance(vit, calibration, micro_batch=micro_batch, max_batches=max_batches, loss_fn=loss_fn)
    linears = prunable_linears(vit)
    total = sum(m.weight.numel() for m in linears.values())
    masks = {name: torch.ones_like(m.weight, dtype=torch.bool) for name, m in linears.items()}

    if structure == "block":
        tiles = {name: _tile_sums(s, block) for name, s in scores.items()}
        flat = torch.cat([t.flatten() for t in tiles.values()])
        n_prune = math.ceil(sparsity * flat.numel())
        if n_prune:
            drop = torch.zeros(flat.numel(), dtype=torch.bool)
            drop[torch.argsort(flat, stable=True)[:n_prune]] = True
            offset = 0
            for name, t in tiles.items():
                keep = ~drop[offset : offset + t.numel()].reshape(t.shape)
                offset += t.numel()
                masks[name] = keep.repeat_interleave(block[0], 0).repeat_interleave(block[1], 1)
    else:
        g = math.lcm(*block)
        for name in (f"blocks.{i}.mlp.fc1" for i in range(len(vit.blocks))):
            if linears[name].out_features % g:
                raise ValueError(
                    f"MLP hidden width of {name} ({linears[name].out_features}) is not a multiple of "
                    f"lcm{block} = {g}; pick another block"
                )
        if isinstance(latency, str):
            if latency != "measure":
                raise ValueError(f"latency must be a LatencyModel, 'measure' or None, got {latency!r}")
            a = vit.blocks[0].attn
            seq = vit.patch_embed.num_patches + vit.num_prefix_tokens
            latency = LatencyModel.measure(
                vit.embed_dim,
                vit.blocks[0].mlp.fc1.out_features,
                a.num_heads,
                a.head_dim,
                seq,
                batch=latency_batch,
                step=g,
            )
        elif latency is None:
            a = vit.blocks[0].attn
            latency = LatencyModel.flat(vit.embed_dim, vit.blocks[0].mlp.fc1.out_features, a.num_heads, a.head_dim)
        removed = _allocate_groups(vit, _group_scores(vit, scores, g), g, sparsity * total, latency, latency_weight)
        for i, (blk, rem) in enumerate(zip(vit.blocks, removed)):
            k, hd = blk.attn.num_heads, blk.attn.head_dim
            heads = torch.ones(k, dtype=torch.bool)
            heads[rem["head"]] = False
            head_rows = heads.repeat_interleave(hd)
            masks[f"blocks.{i}.attn.qkv"] &= head_rows.repeat(3)[:, None]
            masks[f"blocks.{i}.attn.proj"] &= head_rows[None, :]
            units = torch.ones(blk.mlp.fc1.out_features // g, dtype=torch.bool)
            units[rem["mlp"]] = False
            unit_rows = units.repeat_interleave(g)
            masks[f"blocks.{i}.mlp.fc1"] &= unit_rows[:, None]
            masks[f"blocks.{i}.mlp.fc2"] &= unit_rows[None, :]

    with torch.no_grad():
        for name, m in linears.items():
            _set_mask(m, masks[name].to(m.weight.device))
    achieved = sum(int((~mk).sum()) for mk in masks.values()) / total
    model.pruning_report = {
        "requested_sparsity": sparsity,
        "sparsity": achieved,
        "block": block,
        "structure": structure,
        "heads": [
            int(masks[f"blocks.{i}.attn.proj"].any(0).reshape(b.attn.num_heads, -1).any(1).sum())
            for i, b in enumerate(vit.blocks)
        ],
        "hidden": [int(masks[f"blocks.{i}.mlp.fc2"].any(0).sum()) for i in range(len(vit.blocks))],
    }
    _logger.info("block-pruned to %.3f sparsity (requested %.3f)", achieved, sparsity)
    return model


def _bake(linear: nn.Linear) -> None:
    if parametrize.is_parametrized(linear, "weight"):
        parametrize.remove_parametrizations(linear, "weight", leave_parametrized=True)


def _new_linear(weight: torch.Tensor, bias: torch.Tensor | None) -> nn.Linear:
    out = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None, device=weight.device, dtype=weight.dtype)
    with torch.no_grad():
        out.weight.copy_(weight)
        if bias is not None:
            out.bias.copy_(bias)
    return out


@torch.no_grad()
def _compact_mlp(mlp: Mlp) -> tuple[int, int]:
    w1, b1, w2 = mlp.fc1.weight, mlp.fc1.bias, mlp.fc2.weight
    dead = (w2 == 0).all(0)  # hidden units whose fc2 column is zero contribute nothing
    const = (w1 == 0).all(1) & ~dead  # units whose fc1 row is zero output the constant act(b1)
    foldable = isinstance(mlp.norm, nn.Identity) and isinstance(mlp.drop1, nn.Dropout | nn.Identity)
    if const.any() and foldable and mlp.fc2.bias is not None:
        b = b1[const] if b1 is not None else w1.new_zeros(int(const.sum()))
        mlp.fc2.bias.add_(w2[:, const] @ mlp.act(b))
    else:
        const = torch.zeros_like(const)
    keep = ~(dead | const)
    if not keep.any():
        keep[0] = True  # one all-zero unit keeps the layers non-empty
    before = w1.shape[0]
    mlp.fc1 = _new_linear(w1[keep], b1[keep] if b1 is not None else None)
    mlp.fc2 = _new_linear(w2[:, keep], mlp.fc2.bias)
    return before, int(keep.sum())


@torch.no_grad()
def _compact_attention(attn: Attention) -> tuple[int, int]:
    k, hd, dim = attn.num_heads, attn.head_dim, attn.qkv.in_features
    wqkv = attn.qkv.weight.reshape(3, k, hd, dim)
    bqkv = attn.qkv.bias.reshape(3, k, hd) if attn.qkv.bias is not None else None
    wproj = attn.proj.weight.reshape(-1, k, hd)
    dead = (wproj == 0).all(0).all(-1)  # heads whose proj columns are zero
    # Heads whose v rows are zero output their v bias (attention rows sum to 1): fold it into proj's bias.
    const = (wqkv[2] == 0).all(-1).all(-1) & ~dead
    foldable = isinstance(attn.norm, nn.Identity) and attn.gate is None and attn.proj.bias is not None
    if const.any() and foldable:
        if bqkv is not None:
            attn.proj.bias.add_(torch.einsum("ckd,kd->c", wproj[:, const], bqkv[2, const]))
    else:
        const = torch.zeros_like(const)
    keep = ~(dead | const)
    if not keep.any():
        keep[0] = True
    kept = int(keep.sum())
    attn.qkv = _new_linear(
        wqkv[:, keep].reshape(3 * kept * hd, dim), bqkv[:, keep].reshape(-1) if bqkv is not None else None
    )
    attn.proj = _new_linear(wproj[:, keep].reshape(-1, kept * hd), attn.proj.bias)
    attn.num_heads = kept
    attn.attn_dim = kept * hd
    return k, kept


@torch.no_grad()
def compact(model: nn.Module) -> nn.Module:
    """Turn masked heads and MLP hidden groups into smaller dense layers (in place); the residual width stays.

    Removes hidden units whose fc2 column is zero (fc1 row and fc2 column go together) and heads whose proj
    columns are zero (q, k, v rows and proj columns go together); units or heads that only output a constant (zero
    fc1 row, zero v rows) are folded into the next bias and removed as well. Masks are baked into the weights first;
    zero tiles that no group covers (``structure="block"``) stay as zeros in the dense layers. Outputs equal the
    masked model's up to float rounding. ``head_dim`` is kept, so each block may end with its own head count and
    hidden width; :func:`vizoo.pruning.save_pruned` records them.
    """
    vit = check_vit(model)
    for linear in prunable_linears(vit).values():
        _bake(linear)
    for i, blk in enumerate(vit.blocks):
        h0, h1 = _compact_attention(blk.attn)
        u0, u1 = _compact_mlp(blk.mlp)
        _logger.debug("block %d: heads %d -> %d, hidden %d -> %d", i, h0, h1, u0, u1)
    return model


def finetune(
    model: nn.Module,
    data: Iterable,
    epochs: int = 1,
    lr: float = 1e-4,
    weight_decay: float = 0.05,
    teacher: nn.Module | None = None,
    log_every: int = 0,
) -> nn.Module:
    """A short AdamW fine-tune of a masked or compacted model on (images, labels) batches; masks stay applied.

    Without labels (image tensors only) a ``teacher`` (e.g. the dense model) gives soft targets (KL divergence).
    Returns the model in eval mode.
    """
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    model.train()
    step = 0
    for _ in range(epochs):
        for x, y in _batches(data):
            logits = model(x)
            if y is not None:
                loss = F.cross_entropy(logits, y)
            elif teacher is not None:
                with torch.no_grad():
                    soft = teacher(x).softmax(-1)
                loss = F.kl_div(logits.log_softmax(-1), soft, reduction="batchmean")
            else:
                raise ValueError("finetune needs (images, labels) batches or a teacher model for unlabeled images")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
            if log_every and step % log_every == 0:
                _logger.info("finetune step %d: loss %.4f", step, float(loss))
    return model.eval()


def to_block_sparse(model: nn.Module, block: tuple[int, int] = (32, 32), semi_structured: bool = False) -> nn.Module:
    """CUDA only: store masked prunable weights as BSR tensors (``block`` tiles) or 2:4 semi-structured tensors.

    BSR linear layers use torch's Triton block-sparse kernels; 2:4 additionally zeroes 2 of every 4 weights per row by
    magnitude (extra sparsity, fp16/bf16, sm80+) and uses ``torch.sparse.to_sparse_semi_structured``. The test suite
    runs on CPU, where this raises; ``tools/gpu_check.py`` (section ``sparse``) runs and times both forms on a GPU.
    """
    if not torch.cuda.is_available():
        raise RuntimeError("the block-sparse path needs CUDA; on CPU use compact(model) for a real speedup")
    for linear in prunable_linears(model).values():
        _bake(linear)
        w = linear.weight.detach()
        if semi_structured:
            from torch.sparse import to_sparse_semi_structured

            groups = w.reshape(w.shape[0], -1, 4)
            keep = groups.abs().topk(2, dim=-1).indices
            mask = torch.zeros_like(groups, dtype=torch.bool).scatter_(-1, keep, True).reshape(w.shape)
            linear.weight = nn.Parameter(to_sparse_semi_structured(w * mask), requires_grad=False)
        else:
            linear.weight = nn.Parameter(w.to_sparse_bsr(block), requires_grad=False)
    return model
