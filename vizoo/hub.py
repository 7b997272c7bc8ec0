"""Hub-ready folders of vizoo models: convert a checkpoint into what timm's ``save_for_hf`` writes, with a model card
from the registry, and upload such a folder to the Hugging Face Hub.

A folder holds ``config.json`` and ``model.safetensors`` (timm's ``save_for_hf``) and ``README.md``, a model card in
the layout of timm's own Hub cards (``timm.models._hub.generate_readme``): the paper, the params and MACs counted on
the converted model, the file it came from, the licence, and the paper's top-1 that the weights should reproduce.
Every figure comes from the registry (the variant's ``PaperCfg``) or is counted; none is typed. After
``import vizoo`` the folder loads with ``timm.create_model("local-dir:DIR", pretrained=True)``, and with
``transformers.TimmWrapperModel.from_pretrained(DIR)``, whose ``last_hidden_state`` is then an NCHW map.

Why ``config.json`` is rewritten after ``save_for_hf``: timm records ``num_classes`` in ``model_args``, while
transformers passes its own (0 for ``TimmWrapperModel``, ``num_labels`` for the classifier), so the folder would not
load there; and vizoo's map models are channel-last inside, so ``features_fmt="NCHW"`` is recorded for consumers
that read the features as maps (FastVLM, see ``vizoo.multimodal.hf``). For the same reason :func:`push_to_hub`
uploads the folder as written rather than through timm's ``push_to_hf_hub``, which saves the model again with
``save_for_hf``; it makes the same ``HfApi`` calls.
"""

from __future__ import annotations

import importlib
import json
import logging
import os
import tempfile
from pathlib import Path
from typing import Any

import timm
import torch.nn as nn
from timm.models import split_model_name_tag

import vizoo
from vizoo import model_table
from vizoo.backbones._base import check_fmt
from vizoo.backbones._pretrained import weights_address
from vizoo.backbones.vim import Vim
from vizoo.utils.checkpoint import CheckpointError, sha256_file
from vizoo.utils.complexity import count_params

__all__ = [
    "HUB_FILES",
    "check_folder",
    "check_model_name",
    "convert",
    "load_checkpoint",
    "model_card",
    "native_features_fmt",
    "push_to_hub",
    "save_for_transformers",
]

_logger = logging.getLogger(__name__)

# What a hub-ready folder holds: timm's save_for_hf files and the model card.
HUB_FILES = ("config.json", "model.safetensors", "README.md")


def native_features_fmt(model: nn.Module) -> str:
    """The layout of ``model.forward_features`` as built: "NHWC" or "NCHW" for map models, "NLC" for Vim."""
    if isinstance(model, Vim):
        return "NLC"
    return getattr(model, "output_fmt", "NCHW")


def save_for_transformers(
    model: nn.Module | str, folder: str | os.PathLike, features_fmt: str | None = "NCHW", **create_kwargs
) -> Path:
    """Save a vizoo model as a timm-style folder (``config.json`` + ``model.safetensors``, timm's ``save_for_hf``)
    that ``transformers.TimmWrapperModel.from_pretrained(folder)`` loads after ``import vizoo``.

    Args:
        model: a vizoo timm model, or a name (built with ``create_kwargs``).
        folder: where to write; created if missing, files of the same names replaced.
        features_fmt: "NCHW" (default) is recorded in ``model_args`` for map models so ``last_hidden_state`` is
            (B, C, h, w), as FastVLM-style consumers read it; None keeps the model's own layout. Vim folders carry
            no ``features_fmt``.
        **create_kwargs: ``timm.create_model`` arguments when ``model`` is a name.

    ``num_classes`` is left out of ``model_args``: transformers passes its own (0 for ``TimmWrapperModel``,
    ``num_labels`` for ``TimmWrapperForImageClassification``), taken from the config's root ``num_classes``.
    """
    from timm.models import save_for_hf

    if isinstance(model, str):
        model = timm.create_model(model, **create_kwargs)
    folder = Path(folder)
    save_for_hf(model, str(folder), safe_serialization=True)
    config_path = folder / "config.json"
    config = json.loads(config_path.read_text())
    model_args = {k: v for k, v in config.get("model_args", {}).items() if k not in ("num_classes", "features_fmt")}
    if features_fmt is not None and native_features_fmt(model) != "NLC":
        check_fmt("features_fmt", features_fmt)
        model_args["features_fmt"] = features_fmt
    config["model_args"] = model_args
    config_path.write_text(json.dumps(config, indent=2))
    return folder


def check_model_name(name: str) -> None:
    """Raise ValueError unless ``name`` (optionally ``name.tag``) is a registered vizoo model."""
    if split_model_name_tag(name)[0] not in vizoo.list_models():
        what = "a timm model, not a vizoo one" if timm.is_model(name) else "not a registered model"
        raise ValueError(f"{name!r} is {what}; `vizoo list` shows the vizoo models")


def load_checkpoint(name: str, checkpoint: str | os.PathLike, num_classes: int | None = None, **kwargs) -> nn.Module:
    """Build vizoo model ``name`` (eval mode) with the weights of ``checkpoint``, loaded strictly.

    Args:
        name: a vizoo model name, e.g. ``vmamba_tiny_s1l8``.
        checkpoint: an official checkpoint (converted by the family's ``checkpoint_filter_fn``), a vizoo/timm state
            dict, or a training checkpoint that nests one; ``.pth``/``.pt``/``.bin`` or ``.safetensors``.
        num_classes: the classifier size of the checkpoint (default: the variant's, 1000 for ImageNet-1k). The
            classifier is loaded too, never re-initialised.
        **kwargs: further ``timm.create_model`` arguments.

    Raises:
        CheckpointError: the file is missing or unreadable, or its keys or shapes do not fit the model (the message
            lists them; a classifier of another size names ``num_classes``).
        ValueError: ``name`` is not a vizoo model.
    """
    check_model_name(name)
    if num_classes is None:
        num_classes = timm.get_pretrained_cfg(name).num_classes
    overlay = dict(file=os.fspath(checkpoint), num_classes=num_classes)  # equal counts: timm keeps the classifier
    try:
        model = timm.create_model(
            name, pretrained=True, num_classes=num_classes, pretrained_cfg_overlay=overlay, **kwargs
        )
    except RuntimeError as e:  # torch's strict load_state_dict: what the families' key check leaves (the classifier)
        raise CheckpointError(
            f"checkpoint {os.fspath(checkpoint)!r} does not fit {name} with {num_classes} classes: {e}\n"
            "A checkpoint fine-tuned to another number of classes loads with that number: --num-classes N "
            "(num_classes=N)."
        ) from e
    return model.eval()


def _paper(name: str) -> tuple[str, dict[str, str]]:
    """(title, {paper id: link}) of a registered model: the cfg's ``paper_name``, else the summary line of its family
    module's docstring, which names the paper."""
    cfg = timm.get_pretrained_cfg(name)
    title = cfg.paper_name
    if not title:
        family = model_table.families()[split_model_name_tag(name)[0]]
        doc = importlib.import_module(f"vizoo.backbones.{family}").__doc__ or family
        title = doc.strip().splitlines()[0].rstrip(".")
    ids = cfg.paper_ids or ()
    ids = (ids,) if isinstance(ids, str) else tuple(ids)
    links = {i: f"https://arxiv.org/abs/{i.removeprefix('arXiv:')}" if i.startswith("arXiv:") else i for i in ids}
    return title, links


def model_card(
    name: str,
    *,
    params: int,
    macs: int | None,
    input_size: tuple[int, int, int],
    num_classes: int,
    source: str,
) -> dict[str, Any]:
    """The model card of a converted ``name`` as timm's ``generate_readme`` takes it (``license``, ``description``,
    ``details``, ``usage``, ``comparison``).

    Args:
        name: the registered model (``name`` or ``name.tag``); the paper, licence, official addresses and the
            paper's figures are read from its pretrained cfg.
        params: parameters counted on the converted model.
        macs: MACs counted at ``input_size`` (None where they could not be counted).
        input_size: (C, H, W) of the model's eval input.
        num_classes: the classifier size; the paper's top-1 is given as expected only for the variant's own
            classifier (ImageNet-1k), not for a checkpoint fine-tuned to other classes.
        source: where the weights came from (file name and digest).
    """
    cfg = timm.get_pretrained_cfg(name)
    figures = model_table.paper_figures(name)
    title, papers = _paper(name)
    own_head = num_classes == cfg.num_classes
    stats = {
        "Params (M)": model_table.format_params(params),
        "GMACs": model_table.format_gmacs(macs),
        "Image size": f"{input_size[1]} x {input_size[2]}",
    }
    details: dict[str, Any] = {
        "Model Type": "Image classification / feature backbone",
        "Model Stats": stats,
        "Papers": {title: ", ".join(papers.values())} if papers else title,
    }
    if own_head and cfg.num_classes == 1000:
        details["Dataset"] = "ImageNet-1k"
    if cfg.origin_url:
        details["Original"] = cfg.origin_url
    release = weights_address(cfg)
    if release:
        details["Official weights"] = release
    details["Converted from"] = source
    rows = [
        ("Params (M)", stats["Params (M)"], figures.get("paper_params_m")),
        ("GMACs", stats["GMACs"], figures.get("paper_gmacs")),
    ]
    if own_head:
        rows.append(("ImageNet-1k top-1 (%)", "-", figures.get("paper_top1")))
    table = "| | this model | paper |\n|---|---|---|\n"
    table += "".join(f"| {what} | {here} | {'-' if paper is None else paper} |\n" for what, here, paper in rows)
    arch = split_model_name_tag(name)[0]
    return {
        "license": cfg.license or "unknown",
        "description": f"`{name}`, the vizoo build of {title}, with weights converted by `vizoo convert`.",
        "details": details,
        "usage": (
            f"```python\nimport timm\nimport vizoo  # registers {arch} in timm\n\n"
            "# a local copy of this folder: local-dir:PATH; on the Hub: hf-hub:ORG/NAME\n"
            'model = timm.create_model("hf-hub:ORG/NAME", pretrained=True).eval()\n```\n'
        ),
        "comparison": table
        + (
            "\nThe paper column is the published table; the top-1 is what these weights should reproduce "
            f"(`vizoo validate {arch} --data-dir IMAGENET --checkpoint model.safetensors`).\n"
            if own_head and figures.get("paper_top1") is not None
            else ""
        ),
    }


def _check_output(output: Path, force: bool) -> None:
    if output.exists() and not output.is_dir():
        raise ValueError(f"--output {str(output)!r} is a file; name a folder to write the converted model into")
    if output.is_dir() and any(output.iterdir()) and not force:
        raise ValueError(
            f"--output folder {str(output)!r} is not empty; pick a new folder, or pass --force to replace "
            f"{', '.join(HUB_FILES)} there (other files are left alone)"
        )


def convert(
    checkpoint: str | os.PathLike,
    name: str,
    output: str | os.PathLike,
    *,
    num_classes: int | None = None,
    force: bool = False,
) -> Path:
    """Convert ``checkpoint`` into a hub-ready folder ``output`` for vizoo model ``name`` (module docstring).

    Args:
        checkpoint: an official or vizoo checkpoint of ``name`` (:func:`load_checkpoint`).
        name: the vizoo model, optionally with a tag (``vmamba_tiny_s1l8.in1k``).
        output: the folder to write ``config.json``, ``model.safetensors`` and ``README.md`` into.
        num_classes: the checkpoint's classifier size, when it is not the variant's.
        force: write into a non-empty ``output`` (only the three files are replaced).

    Nothing is written until the checkpoint has loaded and the model has been counted; the files are written
    beside ``output`` first and then moved in, so a failure leaves ``output`` as it was.

    Raises:
        ValueError: unknown model, an output that is a file or a non-empty folder without ``force``.
        CheckpointError: the checkpoint is unreadable or does not fit (missing, unexpected or mis-shaped keys).
    """
    from timm.models._hub import generate_readme

    output = Path(output)
    check_model_name(name)
    _check_output(output, force)
    model = load_checkpoint(name, checkpoint, num_classes)
    size = model_table.default_input_size(model)
    card = model_card(
        name,
        params=count_params(model),
        macs=model_table.macs_or_none(model, name, size),
        input_size=size,
        num_classes=model.num_classes,
        source=f"`{Path(checkpoint).name}` (SHA-256 {sha256_file(checkpoint)})",
    )
    output.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=output.parent, prefix=f".{output.name}-") as tmp:
        save_for_transformers(model, tmp)
        (Path(tmp) / "README.md").write_text(generate_readme(card, split_model_name_tag(name)[0]), encoding="utf-8")
        output.mkdir(exist_ok=True)
        for file in HUB_FILES:
            os.replace(Path(tmp) / file, output / file)
    _logger.info("wrote %s", output)
    return output


def check_folder(folder: str | os.PathLike) -> nn.Module:
    """Load a hub-ready folder as timm will (``local-dir:``, strictly) and return the model; ValueError naming the
    missing files or CheckpointError when it does not load."""
    folder = Path(folder)
    missing = [f for f in HUB_FILES if not (folder / f).is_file()]
    if missing:
        raise ValueError(
            f"{str(folder)!r} is not a hub-ready folder: {', '.join(missing)} missing; write one with "
            "`vizoo convert CHECKPOINT --model NAME --output DIR`"
        )
    try:
        return timm.create_model(f"local-dir:{folder}", pretrained=True).eval()
    except RuntimeError as e:
        raise CheckpointError(f"{str(folder)!r} does not load with timm: {e}") from e


def push_to_hub(
    source: str | os.PathLike,
    repo_id: str,
    *,
    checkpoint: str | os.PathLike | None = None,
    num_classes: int | None = None,
    private: bool = False,
    revision: str | None = None,
    create_pr: bool = False,
    commit_message: str = "Add model",
    token: str | None = None,
):
    """Upload a hub-ready folder to the Hugging Face Hub repository ``repo_id`` (created if missing).

    Args:
        source: a folder written by :func:`convert`, or a vizoo model name, converted from ``checkpoint`` first.
        repo_id: ``ORG/NAME`` (or ``NAME`` under the token's user).
        checkpoint: the weights to convert when ``source`` is a model name.
        num_classes: the checkpoint's classifier size, when it is not the variant's.
        private: create the repository private.
        revision: the branch to upload to (created from the default branch if missing).
        create_pr: open a pull request instead of committing to the branch.
        commit_message: the commit's message.
        token: a Hub token (default: the logged-in one).

    The folder is loaded with timm first, so a folder that would not load is never uploaded. Returns what
    ``HfApi.upload_folder`` returns (the commit info).
    """
    if Path(source).is_dir():
        if checkpoint is not None:
            raise ValueError(f"{os.fspath(source)!r} is a folder, which holds its weights: drop --checkpoint")
        return _upload(source, repo_id, private, revision, create_pr, commit_message, token)
    check_model_name(os.fspath(source))
    if checkpoint is None:
        raise ValueError(
            f"pushing model {os.fspath(source)!r} needs its weights: pass --checkpoint FILE, or push a folder "
            "written by `vizoo convert`"
        )
    with tempfile.TemporaryDirectory(prefix="vizoo-hub-") as tmp:
        folder = convert(checkpoint, os.fspath(source), Path(tmp) / "model", num_classes=num_classes)
        return _upload(folder, repo_id, private, revision, create_pr, commit_message, token)


def _upload(folder, repo_id, private, revision, create_pr, commit_message, token):
    from huggingface_hub import HfApi

    check_folder(folder)
    api = HfApi(token=token, library_name="timm", library_version=timm.__version__)
    repo_id = api.create_repo(repo_id, private=private, exist_ok=True).repo_id
    if revision is not None:
        api.create_branch(repo_id, branch=revision, exist_ok=True)
    extra = sorted(p.name for p in Path(folder).iterdir() if p.name not in HUB_FILES)
    if extra:
        _logger.warning("uploading only %s; left out: %s", ", ".join(HUB_FILES), ", ".join(extra))
    return api.upload_folder(
        repo_id=repo_id,
        folder_path=os.fspath(folder),
        allow_patterns=list(HUB_FILES),
        revision=revision,
        create_pr=create_pr,
        commit_message=commit_message,
    )
