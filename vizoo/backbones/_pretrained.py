"""Official weights for ``pretrained=True``: where a variant's weights are, fetching them once into the torch hub or
Hugging Face cache, and errors that say what to do when they cannot be had.

A family's pretrained cfg names its weights the timm way: ``url`` (fetched by ``timm.models.download_cached_file`` into
``torch.hub.get_dir()/checkpoints``, with torch.hub's hash check where the file name carries a SHA-256 prefix) or
``hf_hub_id`` + ``hf_hub_filename`` (fetched by ``huggingface_hub.hf_hub_download`` into the HF cache). Both show a
progress bar. Weights that no URL can fetch (Google Drive, Baidu pan) are named by ``manual_url`` instead. vizoo then
reads the cached file itself (``vizoo.utils.checkpoint.read_state_dict``: no pickled code runs, and the non-tensor
objects of official training checkpoints are tolerated) rather than through timm's ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import logging
import os
import re
from urllib.parse import urlparse

import timm
from timm.models import PretrainedCfg
from torch.hub import HASH_REGEX

from vizoo.utils.checkpoint import CheckpointError, sha256_file

__all__ = [
    "WeightsDownloadError",
    "cached_weights_file",
    "explain_cached_file",
    "models_with_weights",
    "weights_address",
    "weights_kind",
]

_logger = logging.getLogger(__name__)

# Pretrained cfg sources timm loads itself: folders written by ``save_for_hf`` (``hf-hub:``, ``local-dir:`` names).
TIMM_SOURCES = ("hf-hub", "local-dir")


class WeightsDownloadError(OSError):
    """Official weights could not be downloaded (no network, a moved file, a refused request)."""


def weights_kind(cfg: PretrainedCfg) -> str:
    """How a pretrained cfg's weights are had: "url", "hf-hub" (a named file of a Hub repo), "manual" (an address
    that needs a browser), or "" (none released)."""
    if cfg.url:
        return "url"
    if cfg.hf_hub_id and cfg.hf_hub_filename:
        return "hf-hub"
    if getattr(cfg, "manual_url", None):
        return "manual"
    return ""


def weights_address(cfg: PretrainedCfg) -> str:
    """The address a person can open to get the weights of ``cfg`` ("" when none are released)."""
    kind = weights_kind(cfg)
    if kind == "url":
        return cfg.url
    if kind == "hf-hub":
        repo, _, revision = cfg.hf_hub_id.partition("@")
        return f"https://huggingface.co/{repo}/blob/{revision or 'main'}/{cfg.hf_hub_filename}"
    return getattr(cfg, "manual_url", None) or ""


def models_with_weights(architecture: str = "") -> list[str]:
    """``name.tag`` of every vizoo model with released weights (downloadable or not); only those of
    ``architecture``'s family (its module in ``vizoo.backbones``) when given."""
    from vizoo.backbones import FAMILIES

    families = [f for f in FAMILIES if timm.models.is_model_in_modules(architecture, [f])] if architecture else []
    found = []
    for name in timm.list_models(module=families or list(FAMILIES)):
        found += [tagged for tagged, cfg in timm.models.get_arch_pretrained_cfgs(name).items() if weights_kind(cfg)]
    return found


def _pretrained_name(cfg: PretrainedCfg) -> str:
    return f"{cfg.architecture}.{cfg.tag}" if cfg.tag else str(cfg.architecture)


def _load_by_hand(cfg: PretrainedCfg) -> str:
    return f"timm.create_model({_pretrained_name(cfg)!r}, pretrained=True, pretrained_cfg_overlay=dict(file=PATH))"


def cached_weights_file(cfg: PretrainedCfg, cache_dir: str | os.PathLike | None = None) -> str | None:
    """The local path of ``cfg``'s official weights, downloaded on first use; None when timm loads them itself.

    Raises:
        CheckpointError: the variant has no released weights (naming those that have), or its weights cannot be
            fetched by URL (naming where to get them and how to load the file), or a cached file fails its hash.
        WeightsDownloadError: the download failed (naming the address and how to load a file fetched by hand).
    """
    if cfg.source in TIMM_SOURCES or (cfg.hf_hub_id and not cfg.hf_hub_filename):
        return None  # a save_for_hf folder: timm reads its model.safetensors
    name = _pretrained_name(cfg)
    kind = weights_kind(cfg)
    if kind == "manual":
        raise CheckpointError(
            f"the weights of {name} cannot be downloaded by URL: get them from {weights_address(cfg)} and load the "
            f"file with {_load_by_hand(cfg)}"
        )
    if not kind:
        available = models_with_weights(str(cfg.architecture))
        raise CheckpointError(
            f"{name} has no released ImageNet weights; "
            + (
                f"its family has released weights for: {', '.join(available)}. "
                if available
                else "no variant of its family has. "
            )
            + "Pass pretrained=False, or a file of your own with pretrained_cfg_overlay=dict(file=...)."
        )
    try:
        path = _download_url(cfg, cache_dir) if kind == "url" else _download_hf(cfg, cache_dir)
    except (OSError, RuntimeError, ValueError) as e:
        raise WeightsDownloadError(
            f"could not download the weights of {name} from {weights_address(cfg)} ({type(e).__name__}: {e}). "
            f"Download the file by hand and load it with {_load_by_hand(cfg)}"
        ) from e
    _logger.info("weights of %s: %s", name, path)
    expected = _expected_sha256(cfg, path)
    if expected and not sha256_file(path).startswith(expected):
        raise explain_cached_file(
            CheckpointError(f"the SHA-256 of {path} does not start with {expected}, the one recorded for it"), path, cfg
        )
    return path


def _cache_filename(cfg: PretrainedCfg) -> str:
    """The file name the URL ends in, or ``<name>.<tag>.pth`` for addresses without one (``.../f/<id>/?dl=1``)."""
    filename = os.path.basename(urlparse(cfg.url).path)
    return filename if "." in filename else f"{_pretrained_name(cfg)}.pth"


def _download_url(cfg: PretrainedCfg, cache_dir: str | os.PathLike | None) -> str:
    from timm.models._hub import download_cached_file

    source = (cfg.url, _cache_filename(cfg))
    return download_cached_file(source, check_hash=bool(_hash_prefix(cfg)), progress=True, cache_dir=cache_dir)


def _download_hf(cfg: PretrainedCfg, cache_dir: str | os.PathLike | None) -> str:
    import huggingface_hub

    repo, _, revision = cfg.hf_hub_id.partition("@")
    try:
        return huggingface_hub.hf_hub_download(
            repo, cfg.hf_hub_filename, revision=revision or None, cache_dir=cache_dir and str(cache_dir)
        )
    except huggingface_hub.errors.EntryNotFoundError as e:  # not an OSError when the Hub answers "no such file"
        raise FileNotFoundError(str(e)) from e


def _expected_sha256(cfg: PretrainedCfg, path: str) -> str:
    """The SHA-256 (or its prefix) the file must have: a URL file name's ``-<hex>.`` part (torch.hub's convention),
    or the name of the HF cache blob (the Hub stores LFS files under their SHA-256)."""
    if weights_kind(cfg) == "url":
        return _hash_prefix(cfg)
    blob = os.path.basename(os.path.realpath(path))
    return blob if re.fullmatch(r"[0-9a-f]{64}", blob) else ""


def _hash_prefix(cfg: PretrainedCfg) -> str:
    """The SHA-256 prefix in the URL's file name (``name-<hex>.pth``, torch.hub's convention); "" when it has none.
    Fewer than 8 hex digits are taken for a word of the name (``pvt-b0.pth``), not a hash."""
    match = HASH_REGEX.search(_cache_filename(cfg))
    return match.group(1) if match and len(match.group(1)) >= 8 else ""


def explain_cached_file(error: CheckpointError, path: str, cfg: PretrainedCfg) -> CheckpointError:
    """``error`` (checking, reading or loading the downloaded ``path``) with what to do: the file is corrupt,
    truncated or not the variant's, and deleting it makes the next ``pretrained=True`` download it again."""
    real = os.path.realpath(path)
    delete = real if real == path else f"{real} (the file {path} links to)"
    return CheckpointError(
        f"{error}\nThe downloaded weights of {_pretrained_name(cfg)} are corrupt, truncated or not this variant's: "
        f"delete {delete} and call timm.create_model again to download them from {weights_address(cfg)}."
    )


WEIGHTS_TABLE_MARKERS = ("<!-- weights-table:begin -->", "<!-- weights-table:end -->")
_HOSTS = {
    "github.com": "GitHub",
    "huggingface.co": "Hugging Face Hub",
    "drive.google.com": "Google Drive",
    "cloud.tsinghua.edu.cn": "TsinghuaCloud",
}


def _where(address: str) -> str:
    """Where a weights address points, for a reader: "GitHub release", "Hugging Face Hub", "Google Drive", ..."""
    url = urlparse(address)
    if url.hostname == "github.com" and "/releases/download/" in url.path:
        return "GitHub release"
    return _HOSTS.get(url.hostname, url.hostname or "")


def render_weights_table() -> str:
    """The Markdown table of every vizoo ``name.tag`` with released weights, read from the registry: the paper's
    top-1, the licence, where the file is, and whether ``pretrained=True`` downloads it or names it (docs/weights.md,
    kept current by ``tools/weights_table.py``)."""
    lines = [
        "| Model | Paper top-1 | Licence | Weights | `pretrained=True` |",
        "| --- | --- | --- | --- | --- |",
    ]
    for tagged in models_with_weights():
        cfg = timm.get_pretrained_cfg(tagged)
        address = weights_address(cfg)
        how = "downloads" if weights_kind(cfg) in ("url", "hf-hub") else "names the page (download by hand)"
        top1 = "-" if getattr(cfg, "paper_top1", None) is None else str(cfg.paper_top1)
        lines.append(f"| `{tagged}` | {top1} | {cfg.license or '-'} | [{_where(address)}]({address}) | {how} |")
    return "\n".join(lines)
