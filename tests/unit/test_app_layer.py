"""Utilization and clock-skew logic on hand-built tables with answers worked out by hand."""

from __future__ import annotations

from datetime import datetime
from zoneinfo import ZoneInfo

import pandas as pd
import pytest

from niffler.app_layer.clock import scanner_skew, site_timezone, study_skews
from niffler.app_layer.pipelines import series_filter, validate_day
from niffler.app_layer.utilization import encounters, idle_gaps, parse_acquisition, scanner_days
from niffler.common.errors import ConfigError, InputError


def t(text: str) -> pd.Timestamp:
    return pd.Timestamp(datetime.strptime(text, "%Y%m%d %H:%M"))


def study(
    scanner: str,
    patient: str,
    name: str,
    start: str,
    end: str,
    series: int = 2,
    day: str = "20200106",
    description: str = "",
) -> dict[str, object]:
    return {
        "scanner": scanner,
        "day": day,
        "patient": patient,
        "study": name,
        "description": description,
        "modality": "CT",
        "start": t(start),
        "end": t(end),
        "series": series,
    }


def test_parse_acquisition_handles_fractions_short_times_and_garbage() -> None:
    parsed = parse_acquisition(
        ["20200106080000.123", "202001060800", "20200106", "garbage", None, "20201301080000"]
    )
    assert parsed[0] == pd.Timestamp("2020-01-06 08:00:00.123")
    assert parsed[1] == pd.Timestamp("2020-01-06 08:00:00")
    assert parsed[2] == pd.Timestamp("2020-01-06 00:00:00")
    assert parsed[3:].isna().all()


def test_ten_minutes_apart_merge_thirty_do_not() -> None:
    table = encounters(
        pd.DataFrame(
            [
                study("A", "P1", "S1", "20200106 08:00", "20200106 08:10", description="HEAD"),
                study("A", "P1", "S2", "20200106 08:20", "20200106 08:30", description="CHEST"),
                study("A", "P2", "S3", "20200106 09:00", "20200106 09:15"),
                study("A", "P2", "S4", "20200106 09:45", "20200106 10:00"),
            ]
        )
    )
    assert table[["patient", "start", "end", "studies", "series"]].values.tolist() == [
        ["P1", t("20200106 08:00"), t("20200106 08:30"), 2, 4],
        ["P2", t("20200106 09:00"), t("20200106 09:15"), 1, 2],
        ["P2", t("20200106 09:45"), t("20200106 10:00"), 1, 2],
    ]
    assert table["descriptions"].tolist() == ["HEAD::CHEST", "", ""]
    assert table["duration_min"].tolist() == [30, 15, 15]
    assert table["encounter"].tolist() == [1, 2, 3]


def test_gap_is_configurable_and_exactly_the_gap_does_not_merge() -> None:
    rows = pd.DataFrame(
        [
            study("A", "P1", "S1", "20200106 08:00", "20200106 08:10"),
            study("A", "P1", "S2", "20200106 08:30", "20200106 08:40"),
        ]
    )
    assert len(encounters(rows, gap_minutes=20)) == 2
    assert len(encounters(rows, gap_minutes=21)) == 1


def test_overlapping_encounters_of_different_patients_count_once() -> None:
    table = encounters(
        pd.DataFrame(
            [
                study("A", "P1", "S1", "20200106 08:00", "20200106 08:30"),
                study("A", "P2", "S3", "20200106 09:00", "20200106 09:15"),
                study("A", "P3", "S5", "20200106 09:05", "20200106 09:20"),
                study("A", "P2", "S4", "20200106 09:45", "20200106 10:00"),
            ]
        )
    )
    day = scanner_days(table).iloc[0]
    # busy: 08:00-08:30, 09:00-09:20, 09:45-10:00 = 65 of the 120 minutes from 08:00 to 10:00
    assert (day["busy_min"], day["span_min"], day["idle_min"]) == (65, 120, 55)
    assert day["utilization_pct"] == round(100 * 65 / 120, 2)
    assert (day["patients"], day["encounters"], day["studies"], day["series"]) == (3, 4, 4, 8)
    assert day["idle_gaps"] == "08:30-09:00;09:20-09:45"
    gaps = idle_gaps(table)
    assert gaps["minutes"].tolist() == [30, 25]


def test_full_overlap_never_exceeds_100_percent() -> None:
    table = encounters(
        pd.DataFrame(
            [
                study("A", "P1", "S1", "20200106 08:00", "20200106 09:00"),
                study("A", "P2", "S2", "20200106 08:00", "20200106 09:00"),
            ]
        )
    )
    assert scanner_days(table).iloc[0]["utilization_pct"] == 100.0


def test_acquisition_past_midnight_stays_on_its_study_day() -> None:
    table = encounters(
        pd.DataFrame(
            [
                study("B", "P1", "S1", "20200106 23:00", "20200106 23:30"),
                study("B", "P2", "S2", "20200106 23:50", "20200107 00:10"),
            ]
        )
    )
    day = scanner_days(table).iloc[0]
    assert day["day"] == "20200106"
    assert (day["busy_min"], day["span_min"]) == (50, 70)
    assert day["utilization_pct"] == round(100 * 50 / 70, 2)
    assert table["duration_min"].tolist() == [30, 20]


def test_a_single_instant_has_undefined_utilization() -> None:
    table = encounters(pd.DataFrame([study("A", "P1", "S1", "20200106 08:00", "20200106 08:00", series=1)]))
    assert pd.isna(scanner_days(table).iloc[0]["utilization_pct"])
    assert scanner_days(encounters(pd.DataFrame(columns=list(table.columns)))).empty


def test_skew_uses_the_site_zone_and_flags_by_median() -> None:
    zone = ZoneInfo("America/New_York")  # UTC-5 in January
    rows = []
    for i, minutes in enumerate([2, 3, 2, 1800]):  # one re-send days later must not flag it
        acquisition = pd.Timestamp(f"2020-01-0{i + 1} 10:00")
        received = acquisition + pd.Timedelta(hours=5, minutes=minutes)  # local -> UTC, plus the delay
        rows.append(
            {
                "study": f"H{i}",
                "scanner": "HEALTHY",
                "manufacturer": "ACME",
                "model": "X",
                "acquisition": acquisition,
                "received": received.to_pydatetime(),
            }
        )
    for i in range(3):
        acquisition = pd.Timestamp(f"2020-01-0{i + 1} 10:00")
        rows.append(
            {
                "study": f"W{i}",
                "scanner": "WRONG",
                "manufacturer": "ACME",
                "model": "Y",
                "acquisition": acquisition,
                "received": (acquisition + pd.Timedelta(hours=10)).to_pydatetime(),
            }
        )
    per_scanner = scanner_skew(study_skews(pd.DataFrame(rows), zone), threshold_hours=1.0).set_index(
        "scanner"
    )
    assert per_scanner.loc["HEALTHY", "misconfigured"] == False  # noqa: E712
    assert per_scanner.loc["WRONG", "misconfigured"] == True  # noqa: E712
    assert per_scanner.loc["WRONG", "median_hours"] == 5.0
    assert per_scanner.loc["WRONG", "std_hours"] == 0.0
    assert per_scanner.loc["HEALTHY", "max_hours"] == 30.0
    assert per_scanner.loc["HEALTHY", "median_hours"] == round(2.5 / 60, 3)
    assert per_scanner.loc["HEALTHY", "studies"] == 4


def test_bad_dates_and_zones_are_named() -> None:
    with pytest.raises(InputError, match="--date"):
        validate_day("2020-01-06", "--date")
    with pytest.raises(InputError, match="calendar"):
        validate_day("20200231", "--from")
    with pytest.raises(ConfigError, match="Mars/Olympus"):
        site_timezone("Mars/Olympus")


def test_filter_is_pushed_to_the_store() -> None:
    match = series_filter("20200101", "20200131", ["CT", "MR"], ["SN2", "SN1"], original_only=True)
    assert match["StudyDate"] == {"$gte": "20200101", "$lte": "20200131"}
    assert match["Modality"] == {"$in": ["CT", "MR"]}
    assert match["DeviceSerialNumber"] == {"$in": ["SN1", "SN2"]}
    assert match["ImageType"] == "ORIGINAL"
