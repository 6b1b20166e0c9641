"""niffler-scanner-util on a real MongoDB-wire server (SecantusDB): hand-built documents and a real stream."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from pymongo import MongoClient

from niffler.common.deid import KEY_ENV
from niffler.common.summary import (
    backfill_summary,
    summary_collection,
    summary_from_series_pipeline,
    summary_update,
)
from niffler.meta_extraction.service import open_service
from niffler.testing.corpus import CorpusSpec, Scanner, generate_corpus
from niffler.testing.peers import SecantusServer, free_port, storescu
from niffler.testing.receiver import loopback_meta_config

NEW_YORK_WINTER = timezone(timedelta(hours=-5))


def series(
    serial: str,
    patient: str,
    study: str,
    acquired: str,
    *,
    day: str = "20200106",
    image_type: str = "ORIGINAL",
    modality: str = "CT",
    delay_minutes: float = 2.0,
    description: str = "",
) -> dict[str, Any]:
    """A series document as niffler-meta writes it; arrival = acquisition (New York time) + delay, in UTC."""
    when = datetime.strptime(acquired, "%Y%m%d %H:%M")
    arrived = (when.replace(tzinfo=NEW_YORK_WINTER) + timedelta(minutes=delay_minutes)).astimezone(
        timezone.utc
    )
    doc = {
        "_id": f"{study}-{acquired}",
        "series_key": f"{study}-{acquired}",
        "PatientID": patient,
        "StudyInstanceUID": study,
        "StudyDate": day,
        "SeriesInstanceUID": f"{study}.{acquired}",
        "AcquisitionDate": when.strftime("%Y%m%d"),
        "AcquisitionTime": when.strftime("%H%M%S.000000"),
        "ImageType": [image_type, "PRIMARY"],
        "Modality": modality,
        "DeviceSerialNumber": serial,
        "StationName": f"ST-{serial}",
        "Manufacturer": "ACME",
        "ManufacturerModelName": f"M-{serial}",
        "instance_count": 10,
        "received_at": {"first": arrived.replace(tzinfo=None), "last": arrived.replace(tzinfo=None)},
    }
    if description:
        doc["StudyDescription"] = description
    return doc


def hand_built() -> list[dict[str, Any]]:
    return [
        # Scanner A: P1's two studies 10 minutes apart (one encounter); P2's 30 minutes apart (two);
        # P3 overlapping P2. Expected: busy 65 of 120 minutes.
        series("A", "P1", "S1", "20200106 08:00", description="HEAD"),
        series("A", "P1", "S1", "20200106 08:10", description="HEAD"),
        series("A", "P1", "S2", "20200106 08:20", description="NECK"),
        series("A", "P1", "S2", "20200106 08:30", description="NECK"),
        series("A", "P2", "S3", "20200106 09:00"),
        series("A", "P2", "S3", "20200106 09:15"),
        series("A", "P3", "S5", "20200106 09:05"),
        series("A", "P3", "S5", "20200106 09:20"),
        series("A", "P2", "S4", "20200106 09:45"),
        series("A", "P2", "S4", "20200106 10:00"),
        # Ignored: a DERIVED series, a PR object, another day.
        series("A", "P2", "S4", "20200106 12:00", image_type="DERIVED"),
        series("A", "P9", "S9", "20200106 13:00", modality="PR"),
        series("A", "P8", "S8", "20200107 08:00", day="20200107"),
        # Scanner B: 23:00-23:30, then 23:50 to 00:10 the next calendar day. Busy 50 of 70 minutes.
        series("B", "P4", "S6", "20200106 23:00"),
        series("B", "P4", "S6", "20200106 23:30"),
        series("B", "P5", "S7", "20200106 23:50"),
        series("B", "P5", "S7", "20200107 00:10"),
        # Scanner C: a clock 5 hours behind (images arrive 5 h after they say they were made).
        series("C", "P6", "S10", "20200106 10:00", delay_minutes=300),
        series("C", "P6", "S10", "20200106 10:05", delay_minutes=300),
        series("C", "P7", "S11", "20200106 11:00", delay_minutes=301),
    ]


def run_cli(
    uri: str, database: str, tmp: Path, *args: str, check: bool = True
) -> subprocess.CompletedProcess[str]:
    config = tmp / "app.json"
    config.write_text(f'{{"DatabaseName": "{database}", "SiteTimezone": "America/New_York"}}')
    proc = subprocess.run(
        [sys.executable, "-m", "niffler.app_layer", "--config", str(config), "--mongo-uri", uri, *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp,
    )
    if check:
        assert proc.returncode == 0, proc.stderr
    return proc


def rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


@pytest.fixture
def loaded(secantus: SecantusServer, mongo_db_name: str) -> str:
    with MongoClient(secantus.uri) as client:
        client[mongo_db_name]["featureset"].insert_many(hand_built())
    return mongo_db_name


def test_utilization_on_hand_built_documents(secantus: SecantusServer, loaded: str, tmp_path: Path) -> None:
    proc = run_cli(
        secantus.uri,
        loaded,
        tmp_path,
        "utilization",
        "--date",
        "20200106",
        "--out",
        "u.csv",
        "--plot",
        "u.png",
    )
    days = {r["scanner"]: r for r in rows(tmp_path / "u.csv")}
    assert set(days) == {"A", "B", "C"}
    assert float(days["A"]["utilization_pct"]) == round(100 * 65 / 120, 2)
    assert (days["A"]["busy_min"], days["A"]["span_min"], days["A"]["idle_min"]) == ("65.0", "120.0", "55.0")
    assert (days["A"]["patients"], days["A"]["encounters"], days["A"]["studies"], days["A"]["series"]) == (
        "3",
        "4",
        "5",
        "10",
    )
    assert days["A"]["idle_gaps"] == "08:30-09:00;09:20-09:45"
    assert float(days["B"]["utilization_pct"]) == round(100 * 50 / 70, 2)
    assert days["B"]["idle_gaps"] == "23:30-23:50"
    encounters = [r for r in rows(tmp_path / "u-encounters.csv") if r["scanner"] == "A"]
    assert [
        (r["patient"], r["start"][11:16], r["end"][11:16], r["studies"], r["descriptions"])
        for r in encounters
    ] == [
        ("P1", "08:00", "08:30", "2", "HEAD::NECK"),
        ("P2", "09:00", "09:15", "1", ""),
        ("P3", "09:05", "09:20", "1", ""),
        ("P2", "09:45", "10:00", "1", ""),
    ]
    night = [r for r in rows(tmp_path / "u-encounters.csv") if r["scanner"] == "B"]
    assert night[-1]["end"] == "2020-01-07 00:10:00" and night[-1]["duration_min"] == "20.0"
    gaps = [(r["scanner"], r["minutes"]) for r in rows(tmp_path / "u-idle-gaps.csv")]
    assert gaps == [("A", "30.0"), ("A", "25.0"), ("B", "20.0"), ("C", "55.0")]
    assert (tmp_path / "u.png").stat().st_size > 10_000
    assert "54.17" in proc.stdout  # the terminal table


@pytest.mark.parametrize("source", ["series documents", "study summaries"])
def test_clock_skew_flags_the_five_hour_scanner_only(
    secantus: SecantusServer, loaded: str, tmp_path: Path, source: str
) -> None:
    """The same answer from the per-study summaries niffler-meta keeps and from an older store's series."""
    if source == "study summaries":
        with MongoClient(secantus.uri) as client:
            assert backfill_summary(client[loaded]["featureset"]) == 11  # studies S1 to S11
    proc = run_cli(
        secantus.uri,
        loaded,
        tmp_path,
        "clock-skew",
        "--from",
        "20200101",
        "--to",
        "20200131",
        "--out",
        "c.csv",
        "--plot",
        "c.html",
    )
    assert f"read from {source}" in proc.stderr + proc.stdout
    skew = {r["scanner"]: r for r in rows(tmp_path / "c.csv")}
    assert skew["C"]["misconfigured"] == "True" and skew["C"]["studies"] == "2"
    assert float(skew["C"]["median_hours"]) == round((5 + 5 + 1 / 60) / 2, 3)
    for healthy in ("A", "B"):
        assert skew[healthy]["misconfigured"] == "False"
        assert float(skew[healthy]["median_hours"]) == round(2 / 60, 3)
    page = (tmp_path / "c.html").read_text()
    assert page.count("data:image/png;base64,") == 1 and "<table" in page


def test_scanners_and_study_times(secantus: SecantusServer, loaded: str, tmp_path: Path) -> None:
    run_cli(secantus.uri, loaded, tmp_path, "scanners", "--out", "s.csv")
    seen = {(r["DeviceSerialNumber"], r["Modality"]): r for r in rows(tmp_path / "s.csv")}
    assert set(seen) == {("A", "CT"), ("A", "PR"), ("B", "CT"), ("C", "CT")}
    assert seen[("A", "CT")]["series"] == "12" and seen[("A", "CT")]["StationName"] == "ST-A"
    assert seen[("B", "CT")]["last_acquisition"] == "2020-01-07 00:10:00"
    run_cli(
        secantus.uri,
        loaded,
        tmp_path,
        "study-times",
        "--from",
        "20200106",
        "--to",
        "20200106",
        "--out",
        "t.csv",
    )
    times = {r["study"]: r for r in rows(tmp_path / "t.csv")}
    assert (times["S7"]["earliest_acquisition"], times["S7"]["latest_acquisition"]) == (
        "2020-01-06 23:50:00",
        "2020-01-07 00:10:00",
    )
    assert "S8" not in times


def test_scanner_subset_and_bad_input(secantus: SecantusServer, loaded: str, tmp_path: Path) -> None:
    (tmp_path / "subset.csv").write_text("DeviceSerialNumber\nB\n")
    run_cli(
        secantus.uri,
        loaded,
        tmp_path,
        "utilization",
        "--date",
        "20200106",
        "--scanners",
        "subset.csv",
        "--out",
        "b.csv",
    )
    assert [r["scanner"] for r in rows(tmp_path / "b.csv")] == ["B"]
    proc = run_cli(secantus.uri, loaded, tmp_path, "utilization", "--date", "2020-01-06", check=False)
    assert proc.returncode != 0 and "--date" in proc.stderr and "Traceback" not in proc.stderr


def test_study_summary_keeps_the_latest_series_whatever_the_order(
    secantus: SecantusServer, mongo_db_name: str
) -> None:
    s6 = [doc for doc in hand_built() if doc["StudyInstanceUID"] == "S6"]  # series at 23:00 and 23:30
    no_time = {k: v for k, v in s6[0].items() if k != "AcquisitionTime"}
    assert summary_update(no_time, datetime(2020, 1, 6)) is None
    with MongoClient(secantus.uri) as client:
        for name, order in (("forward", s6), ("reverse", s6[::-1])):
            summary = summary_collection(client[mongo_db_name][name])
            folds = [summary_update(doc, doc["received_at"]["first"]) for doc in order]
            for _ in range(2):  # the second time is a re-extraction: it changes nothing
                summary.bulk_write([fold for fold in folds if fold is not None])
            assert list(summary.find()) == [{
                "_id": "S6", "StudyDate": "20200106", "DeviceSerialNumber": "B", "StationName": "ST-B",
                "Manufacturer": "ACME", "ManufacturerModelName": "M-B",
                "last": {"acquisition": "20200106233000.000000", "received": datetime(2020, 1, 7, 4, 32)},
            }], name  # fmt: skip


def test_niffler_meta_summarises_an_older_store_when_it_starts(
    secantus: SecantusServer, loaded: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A store written before summaries existed gets them at the receiver's start, without any arrival."""
    monkeypatch.setenv(KEY_ENV, "scanner-util-e2e-secret-0123")
    config = loopback_meta_config(
        tmp_path / "store", tmp_path / "state", MongoURI=secantus.uri, DatabaseName=loaded
    )
    with MongoClient(secantus.uri) as client:
        summary = summary_collection(client[loaded]["featureset"])
        service = open_service(config).start()
        try:
            assert service.wait_idle(60)
        finally:
            service.stop()
        docs = {doc["_id"]: doc for doc in summary.find()}
    assert len(docs) == 11
    assert docs["S10"]["last"] == {
        "acquisition": "20200106100500.000000",
        "received": datetime(2020, 1, 6, 20, 5),
    }
    assert docs["S7"]["last"]["acquisition"] == "20200107001000.000000"
    assert docs["S7"]["StudyDate"] == "20200106"


def test_store_down_is_a_clear_error(tmp_path: Path) -> None:
    proc = run_cli(f"mongodb://127.0.0.1:{free_port()}", "x", tmp_path, "scanners", check=False)
    assert proc.returncode != 0 and "unreachable" in proc.stderr and "Traceback" not in proc.stderr


def test_a_streamed_day_gives_the_utilization_the_generator_implies(
    secantus: SecantusServer, mongo_db_name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """DCMTK -> niffler-meta -> store -> niffler-scanner-util, for two scanners' day."""
    monkeypatch.setenv(KEY_ENV, "scanner-util-e2e-secret-0123")
    scanners = (Scanner(serial="SN-CT1", station="CT1"), Scanner(serial="SN-CT2", station="CT2"))
    spec = CorpusSpec(
        patients=4,
        studies_per_patient=2,
        series_per_study=2,
        instances_per_series=1,
        scanners=scanners,
        study_spacing_minutes=45,
        series_spacing_minutes=5,
    )
    generate_corpus(tmp_path / "corpus", spec)
    config = loopback_meta_config(
        tmp_path / "store", tmp_path / "state", MongoURI=secantus.uri, DatabaseName=mongo_db_name
    )
    service = open_service(config).start()
    try:
        storescu(service.port, tmp_path / "corpus", aec="NIFFLER", aet="CT")
        assert service.wait_idle(60)
    finally:
        service.stop()
    run_cli(
        secantus.uri,
        mongo_db_name,
        tmp_path,
        "utilization",
        "--date",
        "20200106",
        "--out",
        "e2e.csv",
        "--plot",
        "e2e.png",
    )
    with MongoClient(secantus.uri) as client:
        collection = client[mongo_db_name]["featureset"]
        live = {doc["_id"]: doc for doc in summary_collection(collection).find()}
        derived = {
            doc["_id"]: {k: v for k, v in doc.items() if v is not None}
            for doc in collection.aggregate(summary_from_series_pipeline({}))
        }
    # The summaries niffler-meta kept while extracting equal a regrouping of its series documents.
    assert len(live) == 8 and live == derived
    proc = run_cli(secantus.uri, mongo_db_name, tmp_path, "clock-skew", "--out", "skew.csv")
    assert "read from study summaries" in proc.stderr + proc.stdout
    assert sorted((r["scanner"], r["studies"]) for r in rows(tmp_path / "skew.csv")) == [
        ("SN-CT1", "4"),
        ("SN-CT2", "4"),
    ]
    days = {r["scanner"]: r for r in rows(tmp_path / "e2e.csv")}
    # 8 studies alternate between the scanners: each runs 4 studies 45 minutes apart, each 5 minutes long
    # (two series 5 minutes apart), of 4 different patients: busy 20 of (3 x 45 + 5) = 140 minutes.
    assert set(days) == {"SN-CT1", "SN-CT2"}
    for day in days.values():
        assert (day["encounters"], day["studies"], day["series"], day["patients"]) == ("4", "4", "8", "4")
        assert (day["busy_min"], day["span_min"]) == ("20.0", "140.0")
        assert float(day["utilization_pct"]) == round(100 * 20 / 140, 2)
    assert os.path.getsize(tmp_path / "e2e.png") > 10_000
