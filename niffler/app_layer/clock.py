"""Scanner clock skew: when images say they were made vs when the store received them.

For each study take its last series (latest acquisition date-time) and
compute ``skew = received - acquisition`` in hours, where *received* is the
``received_at.first`` niffler-meta stored on that series' document (UTC),
converted to the site's time zone, because scanners stamp local wall-clock
time. A healthy scanner shows its forwarding delay (minutes); a wrong clock
shows hours, or a time zone's worth. Upstream read arrival times from the
MongoDB oplog (a replica set only); here they are on every document.

Scanners are flagged when the absolute *median* skew exceeds the threshold:
the median, not the mean, so one study re-sent days later does not flag a
healthy scanner.
"""

from __future__ import annotations

import os
from datetime import tzinfo
from pathlib import Path
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import numpy as np
import pandas as pd

from niffler.common.errors import ConfigError

__all__ = ["scanner_skew", "site_timezone", "study_skews"]

_LOCALTIME = Path("/etc/localtime")


def site_timezone(name: str = "") -> tzinfo:
    """Return the named IANA zone; with no name, ``$TZ``, else the machine's zone, else UTC."""
    candidate = name or os.environ.get("TZ", "").lstrip(":")
    if candidate:
        try:
            return ZoneInfo(candidate)
        except (ZoneInfoNotFoundError, ValueError):
            raise ConfigError(f"SiteTimezone {candidate!r} is not an IANA time zone name") from None
    if _LOCALTIME.exists():
        with open(_LOCALTIME, "rb") as handle:
            return ZoneInfo.from_file(handle, key="localtime")
    return ZoneInfo("UTC")


def study_skews(studies: pd.DataFrame, zone: tzinfo) -> pd.DataFrame:
    """Add ``skew_hours`` to a table with ``acquisition`` (local, naive) and ``received`` (UTC) columns."""
    out = studies.copy()
    received = pd.to_datetime(out["received"], utc=True).dt.tz_convert(zone).dt.tz_localize(None)
    out["skew_hours"] = (received - pd.to_datetime(out["acquisition"])).dt.total_seconds() / 3600.0
    return pd.DataFrame(out)


def scanner_skew(skews: pd.DataFrame, threshold_hours: float = 1.0) -> pd.DataFrame:
    """Return per scanner: studies, mean / median / min / max / population std-dev of skew, and the flag."""
    keys = ["scanner", "manufacturer", "model"]
    columns = [
        *keys,
        "studies",
        "mean_hours",
        "median_hours",
        "min_hours",
        "max_hours",
        "std_hours",
        "misconfigured",
    ]
    valid = skews.dropna(subset=["skew_hours"])
    if valid.empty:
        return pd.DataFrame(columns=columns)
    valid = valid.assign(**{k: valid[k].fillna("") for k in keys})
    out = (
        valid.groupby(keys, sort=True)["skew_hours"]
        .agg(
            studies="count",
            mean_hours="mean",
            median_hours="median",
            min_hours="min",
            max_hours="max",
            std_hours=lambda s: float(np.std(s.to_numpy(), ddof=0)),
        )
        .reset_index()
    )
    out["misconfigured"] = out["median_hours"].abs() > threshold_hours
    for column in ("mean_hours", "median_hours", "min_hours", "max_hours", "std_hours"):
        out[column] = out[column].round(3)
    return pd.DataFrame(out[columns])
