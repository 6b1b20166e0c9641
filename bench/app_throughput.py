"""niffler-scanner-util on a year of a mid-size department: 1,000,000 series documents in a real store.

Generates a year of series documents as niffler-meta writes them (20
scanners, about 34 studies a day each, 4 series a study) into SecantusDB (a
real MongoDB-wire server, its own process), then times the reports
in-process: ``utilization`` for one day and for one month, ``clock-skew``
for the whole year (median of the repeats). Peak memory is measured as the
peak RSS of the real command (``python -m niffler.app_layer``) per period,
so it shows whether memory follows the period or the store. Goals: a day
under 2 s, a year of clock skew under 60 s.

    .venv/bin/python bench/app_throughput.py --series 1000000 --repeats 3 [--workdir DIR]

With --workdir the generated store is kept and reused by the next run.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import tempfile
import time
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from benchlib import run_measuring_rss
from pymongo import MongoClient

from niffler.app_layer.reports import clock_report, ensure_indexes, utilization_report
from niffler.common.summary import backfill_summary, has_documents, summary_collection
from niffler.testing.peers import SecantusServer

DATABASE = "ScannersInfo"
SCANNERS = 20
SERIES_PER_STUDY = 4


def documents(total: int, seed: int = 0) -> Any:
    """Yield about *total* series documents over 2023, a few scanners with wrong clocks."""
    rnd = random.Random(seed)
    studies_per_day = max(1, total // (365 * SCANNERS * SERIES_PER_STUDY))
    skewed = {f"SN{n:03d}" for n in range(0, SCANNERS, 7)}
    made = 0
    for day in range(365):
        date = datetime(2023, 1, 1) + timedelta(days=day)
        for scanner in range(SCANNERS):
            serial = f"SN{scanner:03d}"
            clock = timedelta(hours=5) if serial in skewed else timedelta(0)
            when = date + timedelta(hours=7, minutes=rnd.randint(0, 30))
            for study in range(studies_per_day):
                uid = f"2.25.{seed}{day:03d}{scanner:03d}{study:04d}"
                patient = f"{rnd.getrandbits(64):016X}"
                for index in range(SERIES_PER_STUDY):
                    acquired = when + timedelta(minutes=4 * index)
                    arrived = acquired + clock + timedelta(seconds=rnd.randint(60, 300))
                    made += 1
                    yield {
                        "_id": f"{uid}.{index}", "series_key": f"{uid}.{index}", "PatientID": patient,
                        "StudyInstanceUID": uid, "StudyDate": date.strftime("%Y%m%d"),
                        "SeriesInstanceUID": f"{uid}.{index}", "AcquisitionDate": acquired.strftime("%Y%m%d"),
                        "AcquisitionTime": acquired.strftime("%H%M%S.000000"),
                        "ImageType": ["ORIGINAL", "PRIMARY"], "Modality": "CT" if scanner % 2 else "MR",
                        "DeviceSerialNumber": serial, "StationName": f"ST{scanner:03d}",
                        "Manufacturer": "ACME", "ManufacturerModelName": "Imager 9000",
                        "instance_count": 100, "received_at": {"first": arrived, "last": arrived},
                    }  # fmt: skip
                when += timedelta(minutes=4 * SERIES_PER_STUDY + rnd.randint(2, 25))
    print(f"generated {made} series documents ({studies_per_day} studies per scanner per day)")


def fill(uri: str, total: int) -> None:
    with MongoClient(uri) as client:
        collection = client[DATABASE]["featureset"]
        if collection.estimated_document_count() >= total * 0.9:
            print(f"store already holds {collection.estimated_document_count()} documents; reused")
            summarise(collection)
            return
        collection.drop()
        start = time.perf_counter()
        batch: list[dict[str, Any]] = []
        for doc in documents(total):
            batch.append(doc)
            if len(batch) == 10_000:
                collection.insert_many(batch, ordered=False)
                batch = []
        if batch:
            collection.insert_many(batch, ordered=False)
        print(f"inserted in {time.perf_counter() - start:.0f} s")
        summarise(collection)


def summarise(collection: Any) -> None:
    """Build the per-study summaries niffler-meta keeps while it extracts, as it does for an older store."""
    if not has_documents(summary_collection(collection)):
        start = time.perf_counter()
        studies = backfill_summary(collection)
        print(
            f"summarised {studies} studies in {time.perf_counter() - start:.0f} s (niffler-meta's one-time "
            "backfill of a store written before summaries)"
        )
    ensure_indexes(collection)


def timed(repeats: int, call: Any) -> tuple[float, Any]:
    times, result = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        result = call()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def peak_rss_mb(uri: str, work: Path, *args: str) -> int:
    config = work / "app.json"
    config.write_text('{"SiteTimezone": "UTC"}')
    cmd = [
        sys.executable,
        "-m",
        "niffler.app_layer",
        "--config",
        str(config),
        "--mongo-uri",
        uri,
        "-q",
        *args,
    ]
    return run_measuring_rss(cmd, cwd=work)[1]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--series", type=int, default=1_000_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workdir", type=Path, default=None)
    args = parser.parse_args()
    work = Path(args.workdir or tempfile.mkdtemp(prefix="niffler-app-bench-"))
    server = SecantusServer(work / "store").start()
    try:
        fill(server.uri, args.series)
        with MongoClient(server.uri) as client:
            collection = client[DATABASE]["featureset"]
            day_s, day = timed(args.repeats, lambda: utilization_report(collection, "20230615", "20230615"))
            month_s, month = timed(
                args.repeats, lambda: utilization_report(collection, "20230601", "20230630")
            )
            year_s, year = timed(
                max(1, args.repeats - 2),
                lambda: clock_report(collection, "20230101", "20231231", timezone="UTC"),
            )
        print(f"\n{'report':28s} {'median s':>9s} {'rows':>7s} {'goal':>8s}")
        print(f"{'utilization, one day':28s} {day_s:9.2f} {len(day.main):7d} {'< 2 s':>8s}")
        print(f"{'utilization, one month':28s} {month_s:9.2f} {len(month.main):7d} {'':>8s}")
        print(f"{'clock-skew, one year':28s} {year_s:9.2f} {len(year.main):7d} {'< 60 s':>8s}")
        flagged = sorted(year.main.loc[year.main["misconfigured"], "scanner"])
        print(f"flagged scanners: {', '.join(flagged)}")
        print("\npeak RSS of the command (MB):")
        for label, report_args in (
            ("utilization, one day", ("utilization", "--date", "20230615")),
            ("utilization, one month", ("utilization", "--from", "20230601", "--to", "20230630")),
            ("clock-skew, one year", ("clock-skew", "--from", "20230101", "--to", "20231231")),
        ):
            print(f"  {label:26s} {peak_rss_mb(server.uri, work, *report_args):6d}")
    finally:
        server.stop()


if __name__ == "__main__":
    main()
