"""Griffe extension for the API reference: Sphinx cross-reference roles in docstrings become links.

vizoo's docstrings name other objects Sphinx-style (``:func:`compact```, ``:class:`vizoo.heads.Detector```), which
the Google-style parser leaves as literal text. Each role is rewritten to an optional autorefs reference: a link when
the target is rendered somewhere on the site, plain code otherwise (no warning, so strict builds are unaffected).
mkdocs.yml loads this file by path; ``exclude_docs`` keeps it out of the built site.
"""

from __future__ import annotations

import html
import re

import griffe

# :func:`name`, :py:class:`~pkg.Name`, ...: the role's target, with Sphinx's "~" (show the last component only).
_ROLE = re.compile(r":(?:py:)?(?:func|class|meth|mod|attr|data|obj|exc|const):`(?P<tilde>~?)(?P<target>[\w.]+)`")


def _resolve(obj: griffe.Object, target: str) -> str:
    """The full path ``target`` names from ``obj``'s scope, or ``target`` itself when it cannot be resolved."""
    first, dot, rest = target.partition(".")
    scope = obj if obj.is_module or obj.is_class else obj.parent
    try:
        path = scope.resolve(first) if scope is not None else target
    except griffe.NameResolutionError:
        return target
    return path + dot + rest


class SphinxRoles(griffe.Extension):
    """Rewrite Sphinx roles in every docstring of the loaded package once its object tree is complete."""

    def on_object(self, *, obj: griffe.Object, **kwargs) -> None:
        if obj.docstring is None or ":`" not in obj.docstring.value:
            return

        def link(match: re.Match) -> str:
            target = match["target"]
            title = target.rsplit(".", 1)[-1] if match["tilde"] else target
            identifier = html.escape(_resolve(obj, target), quote=True)
            return f'<autoref identifier="{identifier}" optional><code>{html.escape(title)}</code></autoref>'

        obj.docstring.value = _ROLE.sub(link, obj.docstring.value)
