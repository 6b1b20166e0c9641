"""MongoDB aggregation pipelines over niffler-meta's series documents, and their results as DataFrames.

Filtering (study dates, modalities, ORIGINAL images, a scanner subset) and
the per-study grouping run in the database, so what crosses the wire is one
row per study (or per scanner), not one per series, and memory is bounded by
the period asked for, not by the store. The pipelines use only stages and
operators MongoDB has had since 4.x ($match, $project, $group with
$min/$max/$first/$sum/$addToSet, $concat, $ifNull) and SecantusDB serves.

Acquisition date-times are compared as ``AcquisitionDate + AcquisitionTime``
strings (``YYYYMMDDHHMMSS.ffffff``), which sort as time does when scanners
write full ``HHMMSS`` times, as they do.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any

import pandas as pd
from pymongo.collection import Collection

from niffler.app_layer.utilization import parse_acquisition
from niffler.common.errors import InputError
from niffler.common.summary import has_documents, summary_collection, summary_from_series_pipeline

__all__ = [
    "fetch_clock_studies",
    "fetch_scanners",
    "fetch_studies",
    "scanners_pipeline",
    "series_filter",
    "study_pipeline",
    "summary_filter",
    "validate_day",
]

_DAY = re.compile(r"^\d{8}$")
_ACQ: dict[str, Any] = {
    "$concat": [{"$ifNull": ["$AcquisitionDate", ""]}, {"$ifNull": ["$AcquisitionTime", ""]}]
}
#: What identifies a scanner in the scanners report (InstitutionName only if the policy retains it).
_IDENTITY = ("DeviceSerialNumber", "StationName", "InstitutionName", "Manufacturer", "ManufacturerModelName",
             "Modality")  # fmt: skip
_SCANNER: dict[str, Any] = {"$ifNull": ["$DeviceSerialNumber", {"$ifNull": ["$StationName", "unknown"]}]}


def validate_day(text: str, name: str) -> str:
    """Return a YYYYMMDD day, or raise InputError naming the option."""
    if not _DAY.match(text or ""):
        raise InputError(f"{name}: expected a date as YYYYMMDD, got {text!r}")
    try:
        datetime.strptime(text, "%Y%m%d")
    except ValueError:
        raise InputError(f"{name}: {text!r} is not a calendar date") from None
    return text


def series_filter(
    date_from: str | None,
    date_to: str | None,
    modalities: Sequence[str] = (),
    scanners: Iterable[str] = (),
    original_only: bool = False,
) -> dict[str, Any]:
    """Return the $match of series documents: study dates, modalities, scanners, ORIGINAL images."""
    match: dict[str, Any] = {"AcquisitionDate": {"$type": "string"}, "AcquisitionTime": {"$type": "string"}}
    match.update(_date_range(date_from, date_to))
    if modalities:
        match["Modality"] = {"$in": list(modalities)}
    match.update(_scanner_subset(scanners))
    if original_only:
        match["ImageType"] = "ORIGINAL"  # matches the value or an array holding it
    return match


def _date_range(date_from: str | None, date_to: str | None) -> dict[str, Any]:
    dates: dict[str, str] = {}
    if date_from:
        dates["$gte"] = date_from
    if date_to:
        dates["$lte"] = date_to
    return {"StudyDate": dates} if dates else {}


def _scanner_subset(scanners: Iterable[str]) -> dict[str, Any]:
    wanted = sorted(set(scanners))
    return {"DeviceSerialNumber": {"$in": wanted}} if wanted else {}


def study_pipeline(match: dict[str, Any]) -> list[dict[str, Any]]:
    """Series -> one row per study interval (study, patient, scanner, description, modality)."""
    return [
        {"$match": match},
        {"$group": {
            "_id": {
                "study": "$StudyInstanceUID",
                "patient": "$PatientID",
                "scanner": _SCANNER,
                "description": {"$ifNull": ["$StudyDescription", ""]},
                "modality": "$Modality",
            },
            "day": {"$min": "$StudyDate"},
            "start": {"$min": _ACQ},
            "end": {"$max": _ACQ},
            "series": {"$sum": 1},
        }},
    ]  # fmt: skip


def scanners_pipeline(match: dict[str, Any]) -> list[dict[str, Any]]:
    """Series -> one row per scanner identity, with first and last acquisition and arrival."""
    return [
        {"$match": match},
        {"$group": {
            "_id": {name: {"$ifNull": [f"${name}", ""]} for name in _IDENTITY},
            "first_acquisition": {"$min": _ACQ},
            "last_acquisition": {"$max": _ACQ},
            "first_received": {"$min": "$received_at.first"},
            "last_received": {"$max": "$received_at.last"},
            "series": {"$sum": 1},
        }},
    ]  # fmt: skip


def fetch_studies(collection: Collection[dict[str, Any]], match: dict[str, Any]) -> pd.DataFrame:
    """Return the study intervals under *match*, with real start/end Timestamps (bad ones dropped)."""
    rows = [_flatten(doc) for doc in collection.aggregate(study_pipeline(match), allowDiskUse=True)]
    columns = ["scanner", "day", "patient", "study", "description", "modality", "start", "end", "series"]
    if not rows:
        return pd.DataFrame(columns=columns)
    df = pd.DataFrame(rows)
    df["start"] = parse_acquisition(df["start"]).to_numpy()
    df["end"] = parse_acquisition(df["end"]).to_numpy()
    df = df.dropna(subset=["start", "end"])
    return df[columns].sort_values(["scanner", "day", "start"], kind="stable").reset_index(drop=True)


def summary_filter(
    date_from: str | None, date_to: str | None, scanners: Iterable[str] = ()
) -> dict[str, Any]:
    """Return the filter of study summary documents: study dates and scanners."""
    match: dict[str, Any] = {"last.received": {"$type": "date"}}
    match.update(_date_range(date_from, date_to))
    match.update(_scanner_subset(scanners))
    return match


def fetch_clock_studies(
    collection: Collection[dict[str, Any]],
    date_from: str | None,
    date_to: str | None,
    scanners: Iterable[str] = (),
) -> tuple[pd.DataFrame, str]:
    """Return per study: scanner, manufacturer, model, acquisition (last series) and received (UTC).

    Reads niffler-meta's per-study summaries (see :mod:`niffler.common.summary`)
    when the store has them; a store written by an older niffler-meta has
    only series documents, which are grouped per study instead, slower.
    The second value names the source read.
    """
    wanted = list(scanners)
    summary = summary_collection(collection)
    if has_documents(summary):
        docs: Iterable[dict[str, Any]] = summary.find(
            summary_filter(date_from, date_to, wanted), batch_size=10_000
        )
        source = f"study summaries ({summary.name})"
    else:
        pipeline = summary_from_series_pipeline(series_filter(date_from, date_to, (), wanted))
        docs = collection.aggregate(pipeline, allowDiskUse=True)
        source = f"series documents ({collection.name}; no study summary yet, so slower)"
    rows = [
        {
            "study": doc["_id"],
            "scanner": doc.get("DeviceSerialNumber") or doc.get("StationName") or "unknown",
            "manufacturer": doc.get("Manufacturer") or "",
            "model": doc.get("ManufacturerModelName") or "",
            "acquisition": doc["last"].get("acquisition"),
            "received": doc["last"].get("received"),
        }
        for doc in docs
    ]
    columns = ["study", "scanner", "manufacturer", "model", "acquisition", "received"]
    if not rows:
        return pd.DataFrame(columns=columns), source
    df = pd.DataFrame(rows, columns=columns)
    df["acquisition"] = parse_acquisition(df["acquisition"]).to_numpy()
    return df.dropna(subset=["acquisition", "received"]).reset_index(drop=True), source


def fetch_scanners(collection: Collection[dict[str, Any]], match: dict[str, Any]) -> pd.DataFrame:
    """Return the unique scanners seen, one row each, sorted by serial number and station."""
    rows = [_flatten(doc) for doc in collection.aggregate(scanners_pipeline(match), allowDiskUse=True)]
    columns = [
        *_IDENTITY,
        "first_acquisition",
        "last_acquisition",
        "first_received",
        "last_received",
        "series",
    ]
    if not rows:
        return pd.DataFrame(columns=columns)
    df = pd.DataFrame(rows, columns=columns)
    for column in ("first_acquisition", "last_acquisition"):
        df[column] = parse_acquisition(df[column]).to_numpy()
    df = df.sort_values(["DeviceSerialNumber", "StationName", "Modality"], kind="stable")
    return pd.DataFrame(df.reset_index(drop=True))


def _flatten(doc: dict[str, Any]) -> dict[str, Any]:
    """Return a $group result with its compound _id's fields lifted to the top level."""
    return {**doc["_id"], **{k: v for k, v in doc.items() if k != "_id"}}
