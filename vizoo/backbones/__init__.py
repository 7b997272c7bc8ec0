"""vizoo's backbone families, one file each; importing this package registers every model in timm."""

from vizoo.backbones import vmamba

# Module short names, as timm records them for ``timm.list_models(module=...)``.
FAMILIES = (vmamba.__name__.rsplit(".", 1)[-1],)
