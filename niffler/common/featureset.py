"""Featureset files: which header attributes a module keeps.

A featureset is a ``*.txt`` file; each line is a DICOM keyword or a tag in
hex (``0x0051100F``, ``0x0051,0x100F`` or ``(0051,100F)``), private tags
included. Blank lines and ``#`` comments are skipped. A name that is neither
(upstream's files carry a few vendor names such as ``ScanPitchRatio``) is
reported once and skipped, as upstream silently did.

niffler-meta makes one collection per featureset file; niffler-png uses one
file for SpecificHeadersOnly. Both select from the de-identified flat record
of :func:`niffler.common.deid.deidentify_to_dict`, so a selected attribute the
policy removes is simply absent.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydicom.datadict import tag_for_keyword

from niffler.common.deid import record_key
from niffler.common.errors import ConfigError

__all__ = ["Featureset", "load_featureset", "load_featuresets", "parse_line"]

log = logging.getLogger(__name__)

_HEX_FORMS = (
    re.compile(r"^0x([0-9A-Fa-f]{4}),?\s*0x([0-9A-Fa-f]{4})$"),
    re.compile(r"^\(?([0-9A-Fa-f]{4}),([0-9A-Fa-f]{4})\)?$"),
    re.compile(r"^(?:0x)?([0-9A-Fa-f]{4})([0-9A-Fa-f]{4})$"),
)
_COLLECTION = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,100}$")


@dataclass(frozen=True)
class Featureset:
    """One featureset file: its name and the record keys it selects."""

    name: str
    keys: tuple[str, ...]
    path: Path

    def select(self, values: Mapping[str, Any]) -> dict[str, Any]:
        """Return the entries of a flat record that this featureset asks for."""
        wanted = set(self.keys)
        out: dict[str, Any] = {}
        for key, value in values.items():
            head = key.split("_", 1)[0]
            if key in wanted or head in wanted:
                out[key] = value
        return out


def parse_line(text: str) -> str | None:
    """Return the record key for one featureset line (keyword, or 8-digit hex tag), or None."""
    for pattern in _HEX_FORMS:
        match = pattern.match(text)
        if match:
            return record_key(int(match.group(1) + match.group(2), 16))
    return text if tag_for_keyword(text) is not None else None


def load_featureset(path: Path) -> Featureset:
    """Read one featureset file; raise ConfigError if it is missing, unusable or names nothing."""
    name = path.stem
    if not _COLLECTION.match(name):
        raise ConfigError(f"featureset {path}: {name!r} cannot name a collection")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read featureset {path}: {exc}") from None
    keys: list[str] = []
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        key = parse_line(line)
        if key is None:
            log.warning("%s line %d: %r is not a DICOM keyword or hex tag; skipped", path, number, line)
        elif key not in keys:
            keys.append(key)
    if not keys:
        raise ConfigError(f"featureset {path} names no attribute")
    return Featureset(name=name, keys=tuple(keys), path=path)


def load_featuresets(folder: Path) -> list[Featureset]:
    """Read every ``*.txt`` in *folder*; raise ConfigError if there is none or a name is unusable."""
    if not folder.is_dir():
        raise ConfigError(f"FeaturesetFolder {str(folder)!r} is not a folder")
    sets = [load_featureset(path) for path in sorted(folder.glob("*.txt"))]
    if not sets:
        raise ConfigError(f"FeaturesetFolder {str(folder)!r} holds no *.txt featureset")
    return sets
