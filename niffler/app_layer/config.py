"""The config of niffler-scanner-util: where the metadata store is and how the reports are computed."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from niffler.common.config import setting
from niffler.common.store import DEFAULT_DATABASE

__all__ = ["DEFAULT_MODALITIES", "AppConfig"]

#: Upstream's utilization modalities.
DEFAULT_MODALITIES = ["XR", "DX", "CR", "DR", "MR", "CT"]


@dataclass(frozen=True)
class AppConfig:
    """Settings of the scanner reports."""

    MongoURI: str = setting(
        "", "mongodb:// URI of the store; empty: $NIFFLER_MONGO_URI, $MONGO_URI, else embedded", secret=True
    )
    DatabaseName: str = setting(DEFAULT_DATABASE, "database holding the featureset collections")
    Collection: str = setting("featureset", "featureset collection the reports read (niffler-meta's)")
    EmbeddedStoreFolder: Path = setting(
        Path("niffler-meta-state/store"), "folder of the embedded store (niffler-meta's StateFolder/store)"
    )
    EncounterGapMinutes: float = setting(
        20.0, "studies of one patient on one scanner closer than this merge into one encounter", minimum=0
    )
    Modalities: list[str] = setting(DEFAULT_MODALITIES, "modalities the utilization report counts")
    ScannerSubsetFile: str = setting(
        "", "file of DeviceSerialNumbers (one per line, or a CSV's first column) to limit reports to"
    )
    SkewThresholdHours: float = setting(
        1.0, "flag scanners whose median clock skew exceeds this many hours", minimum=0
    )
    SiteTimezone: str = setting(
        "", "IANA time zone scanners stamp local times in (empty: $TZ, else this machine's)"
    )
