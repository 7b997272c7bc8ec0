"""vizoo's backbone families, one file each; importing this package registers every model in timm.

Every public module here (a name without a leading underscore) is a family and is imported, so a new family is
added by adding its file.
"""

import importlib
import pkgutil

# Module short names, as timm records them for ``timm.list_models(module=...)``.
FAMILIES = tuple(
    sorted(info.name for info in pkgutil.iter_modules(__path__) if not info.name.startswith("_") and not info.ispkg)
)
for _family in FAMILIES:
    importlib.import_module(f"{__name__}.{_family}")
