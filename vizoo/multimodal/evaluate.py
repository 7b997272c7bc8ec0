"""Zero-shot classification and image-text retrieval metrics for open_clip models (vizoo towers or any other).

- ``evaluate_zero_shot``: class embeddings from open_clip's own ``build_zero_shot_classifier`` (each class name put in
  every template, text embeddings normalised, averaged over templates, renormalised), then top-1 / top-5 accuracy of
  the images' normalised embeddings against them.
- ``evaluate_retrieval``: recall@1 / recall@5 both ways on a paired image-caption set, with one caption per image or
  several (COCO and Flickr30k have five): an image counts as retrieved-correctly at ``k`` when any of its captions is
  among the top ``k`` captions, and a caption when its own image is among the top ``k`` images.

Ties are split evenly: a score is the expected hit rate when tied candidates are put in a random order. Without that
a model whose embeddings collapsed to one vector would score 1.0 (ties broken in favour of the right answer) or 0.0
(against it) instead of chance. ``k`` is ``min(5, number of candidates)``, so the "top5" / "r5" keys of a set with
fewer than five classes or candidates are recall over all of them (1.0).

Both run under ``torch.no_grad`` with the model in eval mode, and put back every submodule's train/eval mode
afterwards (a LiT run may keep a frozen tower in eval mode while the text side trains).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterable, Iterator, Sequence

import torch
import torch.nn as nn
from open_clip import build_zero_shot_classifier

__all__ = ["evaluate_retrieval", "evaluate_zero_shot", "recall_at_k"]

TOP_K = 5
# Rows of the similarity matrix ranked at once (bounds memory for COCO-size sets: 5k images x 25k captions).
_CHUNK = 1024


@contextlib.contextmanager
def _eval_mode(model: nn.Module) -> Iterator[None]:
    """Eval mode and no gradients inside; afterwards every submodule's own ``training`` flag as it was before."""
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        for m, training in modes:
            m.training = training


def _device(model: nn.Module, device) -> torch.device:
    if device is not None:
        return torch.device(device)
    param = next(iter(model.parameters()), None)
    return param.device if param is not None else torch.device("cpu")


def recall_at_k(scores: torch.Tensor, positives: torch.Tensor, k: int) -> torch.Tensor:
    """Per-row hit rate at ``k`` of ``scores`` (Q, M) with a boolean mask ``positives`` (Q, M), ties split evenly.

    A row is a hit when any positive is among its ``k`` best candidates. With ``g`` candidates scoring above the best
    positive and ``t`` candidates (``p`` of them positive) tied with it, the tied block fills places ``g+1 .. g+t`` in
    a random order, so the hit rate is ``1 - C(t-p, m) / C(t, m)`` with ``m = clamp(k - g, 0, t)`` free places (for a
    single positive, ``m / t``). Every row needs at least one positive. Returns (Q,) floats in [0, 1].
    """
    if scores.shape != positives.shape or scores.dim() != 2:
        raise ValueError(
            f"scores and positives must both be (Q, M), got {tuple(scores.shape)} and {tuple(positives.shape)}"
        )
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    if not bool(positives.any(dim=1).all()):
        raise ValueError("every row needs at least one positive candidate")
    scores = scores.float()
    best = scores.masked_fill(~positives, -math.inf).amax(dim=1, keepdim=True)
    above = (scores > best).sum(dim=1)
    tied = scores == best
    t = tied.sum(dim=1).double()
    p = (tied & positives).sum(dim=1).double()
    free = (k - above).clamp(min=0).double().minimum(t)
    # C(t-p, m) / C(t, m) = prod_{j<m} (t-p-j) / (t-j): the chance that m random tied places hold no positive.
    miss = torch.ones_like(t)
    for j in range(k):
        factor = ((t - p - j) / (t - j).clamp(min=1)).clamp(min=0)
        miss = torch.where(free > j, miss * factor, miss)
    return (1 - miss).float()


def _check_templates(classnames: Sequence[str], templates: Sequence[str | Callable[[str], str]]) -> tuple[list, list]:
    """The class names and templates as lists (open_clip's builder takes sequences), or a ValueError saying what to do.

    Repeated class names are allowed (open_clip's ImageNet list names two classes "missile"): they tie."""
    if isinstance(classnames, str) or len(classnames) == 0:
        raise ValueError(
            "classnames must be a non-empty list of class names, one per label index (label i: classnames[i])"
        )
    if isinstance(templates, str) or len(templates) == 0:
        raise ValueError(
            "templates must be a non-empty list of format strings with a {} for the class name "
            "(e.g. ['a photo of a {}.']) or of callables taking the class name"
        )
    kinds = {isinstance(t, str) for t in templates}
    if len(kinds) > 1 or (False in kinds and not all(callable(t) for t in templates)):
        raise ValueError("templates must be all format strings or all callables (open_clip applies one kind to all)")
    for template in templates:
        if isinstance(template, str) and template.format("a") == template.format("b"):
            raise ValueError(f"template {template!r} has no {{}} for the class name; write e.g. 'a photo of a {{}}.'")
    return list(classnames), list(templates)


def _batches(images, labels, batch_size: int) -> Iterable[tuple[torch.Tensor, torch.Tensor | None]]:
    """(images, labels) batches from a tensor (with labels, or None) or from an iterable of batches."""
    if isinstance(images, torch.Tensor):
        for start in range(0, len(images), batch_size):
            yield images[start : start + batch_size], None if labels is None else labels[start : start + batch_size]
        return
    for batch in images:
        if isinstance(batch, torch.Tensor):
            yield batch, None
        else:
            yield batch[0], (torch.as_tensor(batch[1]) if len(batch) > 1 else None)


def _encode_images(model, images, labels, batch_size: int, device) -> tuple[torch.Tensor, torch.Tensor | None]:
    features, targets = [], []
    for x, y in _batches(images, labels, batch_size):
        features.append(model.encode_image(x.to(device), normalize=True).float())
        if y is not None:
            targets.append(y.reshape(-1).to(torch.long))
    if not features:
        raise ValueError("no images: images is empty (pass an (N, 3, H, W) tensor or a non-empty DataLoader)")
    return torch.cat(features), (torch.cat(targets).to(device) if targets else None)


def _check_batch_size(batch_size: int) -> None:
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")


def evaluate_zero_shot(
    model: nn.Module,
    tokenizer: Callable,
    classnames: Sequence[str],
    templates: Sequence[str | Callable[[str], str]],
    images: torch.Tensor | Iterable,
    labels: torch.Tensor | Sequence[int] | None = None,
    batch_size: int = 64,
    device: str | torch.device | None = None,
    num_classes_per_batch: int | None = 10,
) -> dict[str, float]:
    """Zero-shot top-1 / top-5 accuracy of an open_clip model: ``{"top1": ..., "top5": ...}``.

    Args:
        model: an open_clip CLIP (``encode_image`` and ``encode_text`` with ``normalize=``), e.g. from ``create_clip``.
        tokenizer: its tokenizer (a callable from a list of strings to token ids), e.g. ``create_clip``'s.
        classnames: one name per class; label ``i`` is ``classnames[i]``.
        templates: prompts with a ``{}`` for the class name (``"a photo of the digit {}."``), or callables. The class
            embedding is the renormalised mean over templates (open_clip's ``build_zero_shot_classifier``).
        images: an ``(N, 3, H, W)`` tensor already transformed for the tower (with ``labels``), or an iterable of
            ``(images, labels)`` batches such as a ``DataLoader`` (``labels`` None).
        labels: ``(N,)`` class indices for an image tensor.
        batch_size: images per forward for an image tensor.
        device: where to run; the model's device if None (the model is not moved).
        num_classes_per_batch: classes per text forward when building the class embeddings (None: all at once).

    ``top5`` is top-``min(5, len(classnames))``. Ties are split evenly (module docstring). The model runs in eval
    mode under ``torch.no_grad``; each submodule's train/eval mode is restored afterwards.
    """
    classnames, templates = _check_templates(classnames, templates)
    _check_batch_size(batch_size)
    if isinstance(images, torch.Tensor):
        if labels is None:
            raise ValueError(
                "labels is None: pass labels=(N,) class indices with an image tensor, or images as a DataLoader of "
                "(images, labels) batches"
            )
        labels = torch.as_tensor(labels).reshape(-1)
        if len(labels) != len(images):
            raise ValueError(f"got {len(images)} images but {len(labels)} labels; pass one label per image")
    elif labels is not None:
        raise ValueError("labels are given but images is not a tensor: with a DataLoader, labels come from its batches")
    device = _device(model, device)
    num_classes = len(classnames)
    with _eval_mode(model):
        classifier = build_zero_shot_classifier(
            model, tokenizer, classnames, templates, num_classes_per_batch=num_classes_per_batch, device=device
        ).float()  # (D, C)
        features, targets = _encode_images(model, images, labels, batch_size, device)
    if targets is None or len(targets) != len(features):
        got = 0 if targets is None else len(targets)
        raise ValueError(
            f"got {len(features)} images but {got} labels from the batches; each batch must be (images, labels)"
        )
    if len(targets) and (targets.min() < 0 or targets.max() >= num_classes):
        raise ValueError(
            f"labels must be class indices in [0, {num_classes}) (one class name each), "
            f"got values from {int(targets.min())} to {int(targets.max())}"
        )
    logits = features @ classifier  # (N, C)
    positives = torch.zeros_like(logits, dtype=torch.bool)
    positives[torch.arange(len(targets), device=logits.device), targets] = True
    top1 = recall_at_k(logits, positives, 1)
    topk = recall_at_k(logits, positives, min(TOP_K, num_classes))
    return dict(top1=top1.mean().item(), top5=topk.mean().item())


def _flatten_captions(captions: Sequence[str | Sequence[str]], num_images: int) -> tuple[list[str], torch.Tensor]:
    """All captions in order and the index of each caption's image (one caption or a list of them per image)."""
    if isinstance(captions, str):
        raise ValueError("captions must be a list with one caption (or one list of captions) per image, not a string")
    if len(captions) != num_images:
        raise ValueError(
            f"got {num_images} images but {len(captions)} caption entries; pass one caption, or one list of "
            "captions, per image, in the images' order"
        )
    texts, owners = [], []
    for i, entry in enumerate(captions):
        group = [entry] if isinstance(entry, str) else list(entry)
        if not group or not all(isinstance(c, str) for c in group):
            raise ValueError(f"image {i} has captions {entry!r}; each image needs one or more caption strings")
        texts.extend(group)
        owners.extend([i] * len(group))
    return texts, torch.tensor(owners, dtype=torch.long)


def _mean_recall(queries: torch.Tensor, keys: torch.Tensor, positive_fn, k: int) -> float:
    hits = []
    for start in range(0, len(queries), _CHUNK):
        scores = queries[start : start + _CHUNK] @ keys.T
        hits.append(recall_at_k(scores, positive_fn(start, len(scores)), k))
    return torch.cat(hits).mean().item()


def evaluate_retrieval(
    model: nn.Module,
    tokenizer: Callable,
    images: torch.Tensor | Iterable,
    captions: Sequence[str | Sequence[str]],
    batch_size: int = 64,
    device: str | torch.device | None = None,
) -> dict[str, float]:
    """Image-text retrieval recall@1 / recall@5 of an open_clip model on a paired set.

    Args:
        model: an open_clip CLIP (``encode_image`` and ``encode_text`` with ``normalize=``).
        tokenizer: its tokenizer (list of strings to token ids).
        images: an ``(N, 3, H, W)`` tensor transformed for the tower, or an iterable of image batches (tensors, or
            tuples whose first item is the images) in the captions' order.
        captions: ``N`` entries, each a caption string or a list of caption strings of that image (COCO: five).
        batch_size: images per forward for an image tensor, and captions per text forward.
        device: where to run; the model's device if None.

    Returns ``image_to_text_r1``, ``image_to_text_r5`` (averaged over images: a hit when any of the image's captions
    is in the top ``k``) and ``text_to_image_r1``, ``text_to_image_r5`` (averaged over all captions: a hit when the
    caption's image is in the top ``k``). ``k`` for "r5" is ``min(5, number of candidates)``; ties are split evenly.
    """
    _check_batch_size(batch_size)
    if isinstance(images, torch.Tensor):
        texts, owners = _flatten_captions(captions, len(images))
    device = _device(model, device)
    with _eval_mode(model):
        image_features, _ = _encode_images(model, images, None, batch_size, device)
        if not isinstance(images, torch.Tensor):
            texts, owners = _flatten_captions(captions, len(image_features))
        text_features = torch.cat(
            [
                model.encode_text(tokenizer(texts[s : s + batch_size]).to(device), normalize=True).float()
                for s in range(0, len(texts), batch_size)
            ]
        )
    owners = owners.to(image_features.device)
    num_images, num_texts = len(image_features), len(text_features)
    image_ids = torch.arange(num_images, device=owners.device)

    def image_rows(start, n):  # (n, T): caption t belongs to image start + row
        return owners[None, :] == image_ids[start : start + n, None]

    def text_rows(start, n):  # (n, N): image j is caption start + row's image
        return image_ids[None, :] == owners[start : start + n, None]

    out = {}
    for k in (1, TOP_K):
        key = f"r{k}"
        out[f"image_to_text_{key}"] = _mean_recall(image_features, text_features, image_rows, min(k, num_texts))
        out[f"text_to_image_{key}"] = _mean_recall(text_features, image_features, text_rows, min(k, num_images))
    return dict(sorted(out.items()))
