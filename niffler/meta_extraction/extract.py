"""Featuresets and documents: one header read -> one de-identified document per featureset.

A featureset is a ``*.txt`` file; its name (without ``.txt``) is the
collection; each line is a DICOM keyword or a tag in hex (``0x0051100F``,
``0x0051,0x100F`` or ``(0051,100F)``), private tags included. Blank lines
and ``#`` comments are skipped. A name that is neither (upstream's files
carry a few vendor names such as ``ScanPitchRatio``) is reported once and
skipped, as upstream silently did.

Documents are built from the de-identified flat record of the header (see
:mod:`niffler.common.deid`): a featureset line selects its attribute and, for
a Sequence, the flattened items (``<Keyword>_<n>_...``). What the policy
removes is absent, so no document can hold it; a final PHI check guards the
write all the same.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pydicom
from pydicom.datadict import keyword_for_tag, tag_for_keyword

from niffler.common.deid import Policy, deidentify_to_dict, phi_check, tag_of_key
from niffler.common.errors import ConfigError, DeidError, InputError

__all__ = ["Featureset", "build_documents", "load_featuresets", "read_header"]

log = logging.getLogger(__name__)

_HEX_FORMS = (
    re.compile(r"^0x([0-9A-Fa-f]{4}),?\s*0x([0-9A-Fa-f]{4})$"),
    re.compile(r"^\(?([0-9A-Fa-f]{4}),([0-9A-Fa-f]{4})\)?$"),
    re.compile(r"^(?:0x)?([0-9A-Fa-f]{4})([0-9A-Fa-f]{4})$"),
)
_COLLECTION = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,100}$")


@dataclass(frozen=True)
class Featureset:
    """One featureset file: the collection name and the record keys it selects."""

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
            tag = int(match.group(1) + match.group(2), 16)
            return keyword_for_tag(tag) or f"{tag:08X}"
    return text if tag_for_keyword(text) is not None else None


def load_featuresets(folder: Path) -> list[Featureset]:
    """Read every ``*.txt`` in *folder*; raise ConfigError if there is none or a name is unusable."""
    if not folder.is_dir():
        raise ConfigError(f"FeaturesetFolder {str(folder)!r} is not a folder")
    sets: list[Featureset] = []
    for path in sorted(folder.glob("*.txt")):
        name = path.stem
        if not _COLLECTION.match(name):
            raise ConfigError(f"featureset {path}: {name!r} cannot name a collection")
        keys: list[str] = []
        for number, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
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
        sets.append(Featureset(name=name, keys=tuple(keys), path=path))
    if not sets:
        raise ConfigError(f"FeaturesetFolder {str(folder)!r} holds no *.txt featureset")
    return sets


def report_removed(featuresets: Iterable[Featureset], policy: Policy) -> None:
    """Log, once at start, the featureset attributes the de-identification policy removes."""
    for fs in featuresets:
        removed = []
        for key in fs.keys:
            tag = tag_of_key(key)
            if tag is not None and not policy.rule(tag).keeps_value:
                removed.append(key)
        if removed:
            log.info("featureset %s: the de-identification policy removes %s", fs.name, ", ".join(removed))


def read_header(path: Path) -> pydicom.Dataset:
    """Read a stored file's header (no pixel data); raise InputError naming the file if it can't."""
    try:
        return pydicom.dcmread(path, stop_before_pixels=True)
    except Exception as exc:
        raise InputError(f"{path.name}: cannot read the DICOM header ({type(exc).__name__})") from exc


def build_documents(
    dataset: pydicom.Dataset, featuresets: Iterable[Featureset], policy: Policy
) -> dict[str, dict[str, Any]]:
    """Return collection name -> de-identified fields for *dataset* (no bookkeeping fields)."""
    record = deidentify_to_dict(dataset, policy)
    documents: dict[str, dict[str, Any]] = {}
    for fs in featuresets:
        fields = fs.select(record.values)
        problems = phi_check(fields, policy)
        if problems:  # cannot happen by construction; never write it if it does
            raise DeidError(f"featureset {fs.name}: refusing a document the policy forbids: {problems}")
        documents[fs.name] = fields
    return documents
