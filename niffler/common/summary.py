"""One summary document per study, beside each featureset collection, for the clock-skew report.

The clock-skew report needs, per study, the acquisition date-time of its
last series and when that series first arrived. Grouping the series
documents for it reads every series of the period; over a year of a
department (1,000,000 series) that read alone took longer than the
report's budget on the embedded store. So niffler-meta keeps one document
per study in ``<collection>.studies``, written with idempotent upserts as
series are extracted, and the report reads a quarter as many documents.

A summary document::

    {"_id": <pseudonymous StudyInstanceUID>, "StudyDate": "20230615",
     "DeviceSerialNumber": ..., "StationName": ..., "Manufacturer": ...,
     "ManufacturerModelName": ...,
     "last": {"acquisition": "20230615101500.000000", "received": <UTC datetime>}}

``last`` is kept with ``$max``: embedded documents compare field by field,
so the series with the latest acquisition wins, whatever order series
arrive or are re-extracted in. Every value is copied from the series
document, which the de-identification policy already vetted, so a summary
can hold nothing the series documents don't.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any

from pymongo import UpdateOne
from pymongo.collection import Collection
from pymongo.database import Database

__all__ = [
    "SCANNER_FIELDS",
    "backfill_summary",
    "has_documents",
    "summarisable",
    "summary_collection",
    "summary_from_series_pipeline",
    "summary_update",
]

#: The scanner's identity as the summary keeps it (absent when the policy removed it).
SCANNER_FIELDS = ("DeviceSerialNumber", "StationName", "Manufacturer", "ManufacturerModelName")
_NEEDED = ("StudyInstanceUID", "AcquisitionDate", "AcquisitionTime")
_KEPT = ("StudyDate", *SCANNER_FIELDS)
_ACQUISITION: dict[str, Any] = {"$concat": ["$AcquisitionDate", "$AcquisitionTime"]}
_BACKFILL_BATCH = 5000


def summary_collection(series: Collection[dict[str, Any]]) -> Collection[dict[str, Any]]:
    """Return the study summary collection that belongs to a featureset collection."""
    database: Database[dict[str, Any]] = series.database
    return database[f"{series.name}.studies"]


def has_documents(collection: Collection[dict[str, Any]]) -> bool:
    """Whether *collection* holds any document (one indexed read, not a count)."""
    return collection.find_one({}, {"_id": 1}) is not None


def summarisable(keys: Iterable[str]) -> bool:
    """Whether a featureset selecting *keys* has what a study summary needs."""
    return set(_NEEDED) <= set(keys)


def summary_update(fields: Mapping[str, Any], first_received: datetime) -> UpdateOne | None:
    """Return the upsert that folds one series (or instance) document into its study's summary.

    None when the document lacks what the report needs: a StudyInstanceUID
    and an acquisition date and time.
    """
    study, date, time = (fields.get(k) for k in _NEEDED)
    if not (isinstance(study, str) and isinstance(date, str) and isinstance(time, str)):
        return None
    return _fold(study, {"acquisition": date + time, "received": first_received}, fields)


def _fold(study: str, last: dict[str, Any], source: Mapping[str, Any]) -> UpdateOne:
    update: dict[str, Any] = {"$max": {"last": last}}
    kept = {k: source[k] for k in _KEPT if source.get(k) is not None}
    if kept:
        update["$set"] = kept
    return UpdateOne({"_id": study}, update, upsert=True)


def summary_from_series_pipeline(match: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Series documents under *match* -> summary-shaped documents (missing fields as null)."""
    return [
        {"$match": {
            **match,
            "StudyInstanceUID": {"$type": "string"},
            "AcquisitionDate": {"$type": "string"},
            "AcquisitionTime": {"$type": "string"},
            "received_at.first": {"$type": "date"},
        }},
        {"$group": {
            "_id": "$StudyInstanceUID",
            **{k: {"$first": f"${k}"} for k in _KEPT},
            "last": {"$max": {"acquisition": _ACQUISITION, "received": "$received_at.first"}},
        }},
    ]  # fmt: skip


def backfill_summary(series: Collection[dict[str, Any]]) -> int:
    """Build the summary of a collection written before summaries existed; return the studies folded in.

    Upserts with the same ``$max`` as live extraction, so it is idempotent
    and safe beside a receiver writing summaries of new series.
    """
    summary = summary_collection(series)
    done, batch = 0, []
    for doc in series.aggregate(summary_from_series_pipeline({}), allowDiskUse=True):
        batch.append(_fold(doc["_id"], doc["last"], doc))
        if len(batch) >= _BACKFILL_BATCH:
            summary.bulk_write(batch, ordered=False)
            done, batch = done + len(batch), []
    if batch:
        summary.bulk_write(batch, ordered=False)
        done += len(batch)
    return done
