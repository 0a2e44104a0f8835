"""Docstrings are written for ``help()``: reST roles (``:class:`Token```) and ``::``
literal blocks. This griffe extension turns them into Markdown for the site: a role
naming a public name becomes a cross-reference (a broken one fails the strict build),
any other a code span, and ``::`` the colon it stands for."""

from __future__ import annotations

import re
from typing import Any

import griffe

import llamacpp_adapter
import llamacpp_adapter.bench

_ROLE = re.compile(r":(?:func|class|meth|attr|data|mod|exc|obj):`~?\.?([^`]+)`")
_PUBLIC = {name: f"llamacpp_adapter.{name}" for name in llamacpp_adapter.__all__} | {
    name: f"llamacpp_adapter.bench.{name}" for name in llamacpp_adapter.bench.__all__
}


def _markdown(match: re.Match[str]) -> str:
    target = match.group(1).removesuffix("()")
    head, _, rest = target.partition(".")
    if head in _PUBLIC and not rest:
        return f"[`{target}`][{_PUBLIC[head]}]"
    return f"`{target}`"


def _literal_blocks(text: str) -> str:
    # "Text::" is "Text:", a lone "::" nothing; the indented block after it is code.
    text = re.sub(r"(?m)^[ \t]*::[ \t]*$", "", text)
    return re.sub(r"(?m)(\S)::[ \t]*$", r"\1:", text)


class SphinxRoles(griffe.Extension):
    def on_object(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        if obj.docstring is not None:
            obj.docstring.value = _literal_blocks(_ROLE.sub(_markdown, obj.docstring.value))
