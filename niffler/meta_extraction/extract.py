"""Featuresets and documents: one header read -> one de-identified document per featureset.

A featureset (see :mod:`niffler.common.featureset`) is a ``*.txt`` file;
its name (without ``.txt``) is the collection.

Documents are built from the de-identified flat record of the header (see
:mod:`niffler.common.deid`): a featureset line selects its attribute and, for
a Sequence, the flattened items (``<Keyword>_<n>_...``). What the policy
removes is absent, so no document can hold it; a final PHI check guards the
write all the same.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pydicom

from niffler.common.deid import Policy, deidentify_to_dict, phi_check, tag_of_key
from niffler.common.errors import DeidError, InputError
from niffler.common.featureset import Featureset, load_featuresets, parse_line

__all__ = [
    "Featureset",
    "build_documents",
    "header_tags",
    "load_featuresets",
    "parse_line",
    "read_header",
    "report_removed",
]

log = logging.getLogger(__name__)


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


def header_tags(featuresets: Iterable[Featureset]) -> list[int]:
    """The top-level tags the featuresets can select, with the creators of the private ones.

    A document only ever holds top-level attributes a featureset names (and
    their items), and the policy decides each tag on its own, so reading only
    these gives the same documents as reading the whole header, at a fraction
    of the cost on headers with large sequences and private blocks.
    pydicom adds SpecificCharacterSet itself.
    """
    tags: set[int] = set()
    for fs in featuresets:
        for key in fs.keys:
            tag = tag_of_key(key)
            if tag is None:
                continue
            tags.add(tag)
            group, element = tag >> 16, tag & 0xFFFF
            if group % 2 and element > 0xFF:  # a private element: its block's creator types it
                tags.add((group << 16) | (element >> 8))
    return sorted(tags)


def read_header(path: Path, tags: list[int] | None = None) -> pydicom.Dataset:
    """Read a stored file's header (no pixel data), only *tags* if given; raise InputError if it can't.

    The message names the error's type only: the file's name comes from
    identifiers, so the caller names the instance by its keyed name.
    """
    try:
        return pydicom.dcmread(path, stop_before_pixels=True, specific_tags=tags)  # type: ignore[arg-type]
    except Exception as exc:
        raise InputError(f"cannot read the DICOM header ({type(exc).__name__})") from exc


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
