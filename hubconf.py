"""torch.hub entry points: one per registered vizoo model, generated from the timm registry.

    model = torch.hub.load("<owner>/vizoo", "vmamba_tiny_s1l8", pretrained=True)

Each entry point is ``timm.create_model(name, pretrained=pretrained, **kwargs)`` after ``import vizoo``, so
``pretrained=True`` downloads, converts and strictly loads the variant's official weights as timm does, and every
timm argument works (``num_classes``, ``features_only``, ``pretrained_cfg_overlay=dict(file=...)`` for a local file).
torch.hub lists the public callables of this module, so nothing else public is defined here.
"""

import timm as _timm

import vizoo as _vizoo

dependencies = ["torch", "timm"]


def _entrypoint(name: str):
    cfg = _timm.get_pretrained_cfg(name)

    def entrypoint(pretrained: bool = False, **kwargs):
        return _timm.create_model(name, pretrained=pretrained, **kwargs)

    entrypoint.__name__ = entrypoint.__qualname__ = name
    entrypoint.__doc__ = (
        f"vizoo {name} ({cfg.paper_ids}, code {cfg.origin_url}): timm.create_model({name!r}, pretrained=pretrained, "
        "**kwargs).\n\npretrained=True loads the official ImageNet weights (licence "
        f"{cfg.license or 'unknown'}); kwargs are timm.create_model's."
    )
    return entrypoint


globals().update({_name: _entrypoint(_name) for _name in _vizoo.list_models()})
