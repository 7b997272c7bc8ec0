"""Where a backbone's ImageNet weights come from in a config: local files, URLs and Hugging Face Hub files.

An ``init_cfg=dict(type="Pretrained", checkpoint=ADDRESS)`` address is one of

- a local file (``.pth``/``.pt``/``.bin`` or ``.safetensors``);
- an ``http(s)://`` URL, downloaded once into torch's hub cache (``torch.hub.get_dir()/checkpoints``);
- ``hf-hub:ORG/REPO/FILENAME`` (``hf-hub:ORG/REPO@REVISION/FILENAME``), a file of a Hugging Face Hub repository,
  downloaded once into the Hugging Face cache.

Downloads go through the same code as ``timm.create_model(name, pretrained=True)`` (``vizoo.backbones._pretrained``:
a progress bar, torch.hub's hash check where the file name carries a SHA-256 prefix, the Hub's blob hash), so a
config and ``pretrained=True`` share one cached copy. The shipped configs give each backbone's official ImageNet
weights, the address :func:`official_checkpoint` reads from vizoo's registry.
"""

from __future__ import annotations

import os

import timm
import torch
from timm.models import PretrainedCfg

from vizoo.backbones._pretrained import WeightsDownloadError, cached_weights_file, weights_kind
from vizoo.utils.checkpoint import CheckpointError, read_state_dict

__all__ = ["HF_HUB_PREFIX", "address_cfg", "fetch_checkpoint", "is_remote", "official_checkpoint", "read_checkpoint"]

HF_HUB_PREFIX = "hf-hub:"
BY_HAND = "download the file by hand and give its path: init_cfg=dict(type='Pretrained', checkpoint='/path/to/file')"


def official_checkpoint(model_name: str) -> str | None:
    """The address of ``model_name``'s official ImageNet weights in vizoo's registry, in the form ``init_cfg`` takes.

    The default cfg's ``url``, or ``hf-hub:ORG/REPO/FILENAME`` for its ``hf_hub_id`` and ``hf_hub_filename``; None
    when no URL fetches them: the authors released none, or only behind a browser (the cfg's ``manual_url``).
    """
    cfg = timm.get_pretrained_cfg(model_name)
    if cfg is None:
        raise ValueError(f"unknown model {model_name!r}; list vizoo's models with vizoo.list_models()")
    kind = weights_kind(cfg)
    if kind == "url":
        return cfg.url
    if kind == "hf-hub":
        return f"{HF_HUB_PREFIX}{cfg.hf_hub_id}/{cfg.hf_hub_filename}"
    return None


def is_remote(address: str) -> bool:
    """Whether ``address`` is downloaded (a URL or an ``hf-hub:`` file) rather than read from disk."""
    return address.startswith(("http://", "https://", HF_HUB_PREFIX))


def address_cfg(address: str, model_name: str) -> PretrainedCfg:
    """A pretrained cfg of ``model_name`` whose weights are at the remote ``address`` (what the downloader takes):
    the registry's own where the address is the official one, so that both share one cached file."""
    if official_checkpoint(model_name) == address:
        return timm.get_pretrained_cfg(model_name)
    if address.startswith(HF_HUB_PREFIX):
        parts = address.removeprefix(HF_HUB_PREFIX).split("/")
        if len(parts) < 3 or not all(parts):
            raise ValueError(f"an hf-hub: checkpoint is hf-hub:ORG/REPO[@REVISION]/FILENAME, got {address!r}")
        return PretrainedCfg(
            architecture=model_name, hf_hub_id="/".join(parts[:2]), hf_hub_filename="/".join(parts[2:])
        )
    return PretrainedCfg(architecture=model_name, url=address)


def fetch_checkpoint(address: str, model_name: str) -> str:
    """The local path of the checkpoint at ``address`` (for ``model_name``), downloaded into the cache on first use.

    Raises:
        CheckpointError: the file fails its hash check.
        WeightsDownloadError: the download failed; the message gives the address and how to proceed by hand.
    """
    if not is_remote(address):
        if "://" in address:
            raise ValueError(
                f"cannot load checkpoint {address!r}: give a local file, an http(s):// URL or hf-hub:ORG/REPO/FILENAME"
            )
        return address
    try:
        return cached_weights_file(address_cfg(address, model_name))
    except WeightsDownloadError as e:  # add the config form of loading a file fetched by hand
        raise WeightsDownloadError(f"{e}\nIn an OpenMMLab config, {BY_HAND}.") from e


def read_checkpoint(address: str, model_name: str) -> dict[str, torch.Tensor]:
    """The state dict at ``address`` (see the module docstring), read without running code from the file.

    Raises:
        CheckpointError: the file is unreadable; for a download, the message says which cached file to delete so
            that the next run downloads it again.
    """
    path = fetch_checkpoint(address, model_name)
    try:
        return read_state_dict(path)
    except CheckpointError as e:
        if not is_remote(address):
            raise
        raise CheckpointError(
            f"{e}\nIt is the cached download of {address}: delete {os.path.realpath(path)} and build the model again "
            "to download it anew."
        ) from e
