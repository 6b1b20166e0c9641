"""dcm4che-style path templates, rendered safely from DICOM attributes.

A template such as ``{00100020}/{0020000D}/{0020000E}/{00080018}.dcm`` (the
upstream default) names attributes by hex tag; Niffler also accepts keywords
(``{PatientID}``). Values come from data that Niffler does not control (a
PatientID of ``../../etc`` is legal DICOM), so every rendered component is made
safe: empty values become ``UNKNOWN``, path separators, control characters and
anything outside a portable set become ``_``, leading dots are escaped, and
over-long values are shortened with a digest suffix so distinct values stay
distinct. A component holding several values (``{PatientID}_{SOPInstanceUID}.dcm``)
is capped as a whole at :data:`NAME_MAX` bytes of UTF-8, the same way: a
prefix, a digest of the whole component, and its extension. (The atomic
writer's temp name is bounded on its own: see :mod:`niffler.common.atomic`.)
A template holding a control character (a NUL no path can hold) is refused
when parsed. :meth:`FileTemplate.path_in` then checks that the result stays
inside the storage folder, whatever the template or the data.
"""

from __future__ import annotations

import hashlib
import os
import re
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from pydicom.datadict import tag_for_keyword
from pydicom.tag import BaseTag, Tag

from niffler.common.errors import TemplateError

__all__ = [
    "DEFAULT_FILE_PATH",
    "FileTemplate",
    "fit_component",
    "safe_component",
]

#: Upstream Niffler's default (the storescp pattern of dcm4che).
DEFAULT_FILE_PATH = "{00100020}/{0020000D}/{0020000E}/{00080018}.dcm"
#: Longest value (in characters) one placeholder renders to: LO and UI values hold 64.
MAX_COMPONENT = 64
#: Longest path component (in bytes) Niffler writes: most filesystems' NAME_MAX.
NAME_MAX = 255
#: Longest extension :func:`fit_component` keeps when it shortens a component.
_MAX_EXTENSION = 16
EMPTY_VALUE = "UNKNOWN"

_PLACEHOLDER = re.compile(r"\{([^{}]*)\}")
_UNSAFE = re.compile(r"[^A-Za-z0-9._+=@,^-]")


def safe_component(value: Any) -> str:
    """Return *value* as one path component that cannot escape its folder."""
    if value is None:
        return EMPTY_VALUE
    if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
        text = "_".join(str(v) for v in value)
    elif isinstance(value, bytes):
        text = value.decode("ascii", "replace")
    else:
        text = str(value)
    original = text
    text = _UNSAFE.sub("_", text.strip().replace(" ", "_"))
    if text.startswith("."):
        # ".", "..", and hidden names: keep them visible and never a traversal.
        text = "_" + text[1:]
    if not text.strip("_"):
        return EMPTY_VALUE if not original.strip() else "_" * min(len(text), 8)
    if len(text) > MAX_COMPONENT:
        digest = hashlib.sha256(original.encode("utf-8", "replace")).hexdigest()[:10]
        text = f"{text[: MAX_COMPONENT - 11]}-{digest}"
    return text


def fit_component(component: str, limit: int = NAME_MAX) -> str:
    """Return *component* if its UTF-8 form fits in *limit* bytes, else a shortened one that does.

    The short form keeps a prefix, then ``-`` and a digest of the whole
    component (two long names differing only past the prefix stay distinct),
    then the component's extension (``.dcm``) if it has a short one.
    """
    data = component.encode("utf-8")  # no lone surrogate: parse refuses them, values are ASCII
    if len(data) <= limit:
        return component
    digest = hashlib.sha256(data).hexdigest()[:16]
    stem, dot, extension = component.rpartition(".")
    suffix = f".{extension}" if dot and stem and len(extension.encode("utf-8")) <= _MAX_EXTENSION else ""
    room = limit - len(f"-{digest}{suffix}".encode())
    prefix = data[:room].decode("utf-8", "ignore")  # a character cut in two is dropped
    return f"{prefix}-{digest}{suffix}"


def _control_character(template: str) -> int | None:
    """The position (1-based) of the first control character or lone surrogate in *template*."""
    for position, char in enumerate(template, start=1):
        if unicodedata.category(char) in ("Cc", "Cs"):
            return position
    return None


def _parse_tag(name: str, template: str) -> BaseTag:
    key = name.strip()
    if re.fullmatch(r"[0-9A-Fa-f]{8}", key):
        return Tag(int(key, 16))
    found = tag_for_keyword(key)
    if found is None:
        raise TemplateError(
            f"FilePath template {template!r}: {{{name}}} is neither an 8-digit hex tag nor a DICOM keyword"
        )
    return Tag(found)


@dataclass(frozen=True)
class FileTemplate:
    """A parsed FilePath template; render it with :meth:`render` or :meth:`path_in`."""

    template: str
    parts: tuple[str, ...]
    tags: tuple[BaseTag, ...]

    @classmethod
    def parse(cls, template: str) -> FileTemplate:
        """Return the parsed *template*, or raise TemplateError saying what is wrong."""
        if not template or not template.strip():
            raise TemplateError("FilePath template is empty")
        position = _control_character(template)
        if position is not None:
            raise TemplateError(
                f"FilePath template {template!r} holds a control character (character {position}): "
                "no file name can hold it"
            )
        if template.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", template):
            raise TemplateError(f"FilePath template {template!r} must be relative")
        literal = _PLACEHOLDER.sub("x", template)
        if "{" in literal or "}" in literal:
            raise TemplateError(f"FilePath template {template!r} has an unbalanced brace")
        if any(part in ("..", ".") for part in re.split(r"[/\\]", literal)):
            raise TemplateError(f"FilePath template {template!r} must not contain '.' or '..'")
        parts = tuple(_PLACEHOLDER.split(template))
        tags = tuple(_parse_tag(name, template) for name in parts[1::2])
        return cls(template=template, parts=parts, tags=tags)

    @property
    def keywords(self) -> tuple[str, ...]:
        """Return the placeholders as written, in order."""
        return tuple(self.parts[1::2])

    def render(self, values: Any) -> PurePosixPath:
        """Return the relative path for a dataset (or any mapping of tag -> value)."""
        out: list[str] = []
        for i, part in enumerate(self.parts):
            if i % 2 == 0:
                out.append(part)
                continue
            tag = self.tags[i // 2]
            out.append(safe_component(_value_of(values, tag)))
        components = "".join(out).replace("\\", "/").split("/")
        return PurePosixPath(*(fit_component(c) for c in components if c))

    def path_in(self, root: str | Path, values: Any) -> Path:
        """Return the absolute path of the rendered template under *root*.

        Raises TemplateError if the result would leave *root*; with the
        sanitising above this cannot happen, and the check keeps it so.
        """
        base = os.path.abspath(root)
        rendered = self.render(values)
        target = os.path.normpath(os.path.join(base, *rendered.parts))
        if os.path.commonpath([base, target]) != base or target == base:
            raise TemplateError(f"FilePath {self.template!r} rendered outside the storage folder")
        return Path(target)


def _value_of(values: Any, tag: BaseTag) -> Any:
    """Return the value of *tag* from a pydicom Dataset or a plain mapping."""
    try:
        element = values[tag]
    except (KeyError, TypeError):
        return None
    value = getattr(element, "value", element)
    if isinstance(value, Iterable) and not isinstance(value, (str, bytes)):
        value = list(value)
        return value or None
    return value if value != "" else None
