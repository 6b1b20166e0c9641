"""QIDO-RS and WADO-RS requests from planned identifiers, and DICOM JSON answers as text (pure).

The identifiers are the ones C-FIND sends (:mod:`niffler.cold_extraction.plan`
made them: dates as ``YYYYMMDD`` or a ``A-B`` range, StudyMonth as its range,
leading zeros kept, no wildcards), sent as QIDO-RS query parameters named by
keyword (PS3.18 8.3.4: ``{attributeID}={value}``; a range matches as in
C-FIND). The keys a C-FIND would return are asked for with ``includefield``.
An empty value is a universal match in C-FIND and is not sent. A SERIES-level
query names its study in the path (``/studies/{uid}/series``), or searches
every series (``/series``) when the row names no study, as C-FIND does with an
empty StudyInstanceUID. Answers (PS3.18 F.2, DICOM JSON) are turned into the
same ``{keyword: text}`` matches :meth:`~niffler.net.scu.QueryRetrieveSession.find`
returns: several values joined by a backslash, a person name by its
alphabetic (=ideographic=phonetic) groups, numbers as text.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import quote

from pydicom.datadict import tag_for_keyword

__all__ = ["instances_path", "match_of", "qido_request", "tag_of", "wado_path"]


def _segment(uid: str) -> str:
    return quote(uid, safe="")


def tag_of(keyword: str) -> str:
    """The 8-hex-digit tag DICOM JSON names *keyword* by (``PatientID`` -> ``00100020``)."""
    tag = tag_for_keyword(keyword)
    if tag is None:
        raise ValueError(f"{keyword} is not a DICOM keyword")
    return f"{tag:08X}"


def qido_request(
    identifiers: Mapping[str, str], return_keys: Sequence[str], level: str = "STUDY"
) -> tuple[str, list[tuple[str, str]]]:
    """The QIDO-RS path (below the DICOMweb root) and query parameters of a C-FIND's identifiers."""
    if level not in ("STUDY", "SERIES"):
        raise ValueError(f"QIDO-RS level must be STUDY or SERIES, not {level!r}")
    keys = dict(identifiers)
    if level == "STUDY":
        path = "studies"
    else:
        study = keys.pop("StudyInstanceUID", "")
        path = f"studies/{_segment(study)}/series" if study else "series"
    params = [(keyword, value) for keyword, value in keys.items() if value]
    params += [("includefield", keyword) for keyword in dict.fromkeys(return_keys) if keyword not in keys]
    return path, params


def wado_path(level: str, uid: str, study_uid: str = "") -> str:
    """The WADO-RS path of a study, or of a series of *study_uid*."""
    if level == "STUDY":
        return f"studies/{_segment(uid)}"
    if level == "SERIES":
        return f"studies/{_segment(study_uid)}/series/{_segment(uid)}"
    raise ValueError(f"WADO-RS level must be STUDY or SERIES, not {level!r}")


def instances_path(level: str, uid: str, study_uid: str = "") -> str:
    """The QIDO-RS path listing the instances of a study, or of a series of *study_uid*."""
    return f"{wado_path(level, uid, study_uid)}/instances"


def _value_text(value: Any) -> str:
    if isinstance(value, dict):  # a person name: its component groups (PS3.18 F.2.2)
        groups = [str(value.get(k) or "") for k in ("Alphabetic", "Ideographic", "Phonetic")]
        return "=".join(groups).rstrip("=")
    if value is None:
        return ""
    return str(value)


def element_text(element: Any) -> str:
    """The text a C-FIND would give for one DICOM JSON element (empty when it has no value)."""
    if not isinstance(element, dict):
        return ""
    values = element.get("Value")
    if not isinstance(values, list):
        return ""
    return "\\".join(_value_text(v) for v in values)


def match_of(dataset: Any, return_keys: Sequence[str]) -> dict[str, str]:
    """One DICOM JSON dataset as ``{keyword: text}`` for *return_keys*; raise ValueError if it is not one."""
    if not isinstance(dataset, dict):
        raise ValueError("a QIDO-RS answer holds something other than a DICOM JSON dataset")
    return {keyword: element_text(dataset.get(tag_of(keyword))) for keyword in return_keys}
