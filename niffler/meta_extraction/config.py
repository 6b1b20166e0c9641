"""The config of niffler-meta: upstream's keys plus the receiver's own."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from niffler.common.config import setting
from niffler.common.deid import DeidSettings
from niffler.common.errors import ConfigError
from niffler.common.filepath import DEFAULT_FILE_PATH, FileTemplate
from niffler.common.store import DEFAULT_DATABASE
from niffler.net.address import AEAddress, validate_ae_title
from niffler.net.syntaxes import POLICIES

__all__ = ["GRANULARITIES", "MetaConfig"]

#: ExtractionGranularity values: one document per series from its first
#: instance (upstream), or one document per instance.
GRANULARITIES = ("series", "instance")
_HHMM = re.compile(r"^([01]\d|2[0-3]):[0-5]\d$")


@dataclass(frozen=True)
class MetaConfig(DeidSettings):
    """Settings of the real-time receiver (upstream key names where upstream had them)."""

    QueryAet: str = setting("NIFFLER:4243", "our AE title and the port we listen on, AET:port")
    BindAddress: str = setting("0.0.0.0", "interface to listen on (0.0.0.0: all)")  # noqa: S104
    StorageFolder: Path = setting(
        Path("niffler-meta-data"), "folder received images are kept in until purged"
    )
    FilePath: str = setting(DEFAULT_FILE_PATH, "dcm4che-style path template of received files")
    StateFolder: Path = setting(
        Path("niffler-meta-state"),
        "folder for the receiver's index, the generated secret and the embedded store (keep it private)",
    )
    FeaturesetFolder: Path = setting(
        Path("featuresets"), "folder of featureset *.txt files (relative: to the config file's folder)"
    )
    MongoURI: str = setting(
        "", "mongodb:// URI of the store; empty: $NIFFLER_MONGO_URI, $MONGO_URI, else embedded", secret=True
    )
    DatabaseName: str = setting(DEFAULT_DATABASE, "database holding the featureset collections")
    ExtractionGranularity: str = setting(
        "series", "series: a document per series from its first instance; instance: one per instance",
        choices=GRANULARITIES,
    )  # fmt: skip
    PurgeTime: str = setting("23:59", "daily time (HH:MM, local) the extracted images are deleted")
    QuietPeriodMinutes: int = setting(
        60, "a series is purged only when nothing arrived for it for this long", minimum=0
    )
    DiskWatermarkPercent: float = setting(
        90.0, "refuse new images (status 0xA700) when the disk is fuller than this", minimum=1, maximum=100
    )
    AllowedCallingAets: list[str] = setting([], "calling AE titles allowed to send; empty: any")
    TransferSyntaxPolicy: str = setting(
        "lossless", "lossless: lossless syntaxes first, lossy only if nothing else is offered; "
        "uncompressed: uncompressed first; never-lossy: refuse lossy syntaxes", choices=POLICIES,
    )  # fmt: skip
    MaxAssociations: int = setting(16, "concurrent associations accepted", minimum=1, maximum=256)
    ExtractionBatch: int = setting(500, "instances extracted per store round trip", minimum=1, maximum=100000)

    def __post_init__(self) -> None:
        super().__post_init__()
        AEAddress.parse(self.QueryAet, "QueryAet")
        FileTemplate.parse(self.FilePath)
        if not _HHMM.match(self.PurgeTime):
            raise ConfigError(f"PurgeTime must be HH:MM (24-hour), got {self.PurgeTime!r}")
        for title in self.AllowedCallingAets:
            validate_ae_title(title, "AllowedCallingAets entry")
