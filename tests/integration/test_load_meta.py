"""Load: sixteen senders stream into niffler-meta for a bounded time; every instance is counted.

Sixteen DCMTK ``/usr/bin/storescu`` processes at once, each sending a new
series of realistic instances (UTF-8 names, nested sequences, private
blocks, 256 x 256 pixels, about 150 kB) per association, back to back, for
``NIFFLER_LOAD_SECONDS`` (15 by default), into the ``niffler-meta`` console
script with its default config (embedded store, series documents, 16
associations). Every instance sent is counted by the status the receiver
answered, and found again on disk, in the index and in every featureset's
documents: zero lost, zero duplicated. The throughput is printed.
"""

from __future__ import annotations

import os
import random
import shutil
import time
from collections import Counter
from pathlib import Path

import pydicom
import pytest

from niffler.common.deid import KEY_ENV, Pseudonymizer
from niffler.common.store import URI_ENV_VARS, attach_store
from niffler.testing.corpus import CorpusSpec, Scanner, generate_corpus
from niffler.testing.faults_meta import MetaDaemon, SeriesCloner, SeriesStream, index_rows, write_meta_config

SECRET = "load-test-secret-0123456789abcdef"
SENDERS = 16
SECONDS = float(os.environ.get("NIFFLER_LOAD_SECONDS", "15"))
UPSTREAM_FEATURESETS = ("featureset", "featureset1", "featureset2", "featureset3")
SCANNERS = (Scanner(), Scanner(serial="SN0002", station="MR01", modality="MR", model="Magnet 3T"))


def test_sixteen_concurrent_senders_for_a_bounded_time_lose_and_duplicate_nothing(
    tmp_path: Path, mongo_db_name: str, capsys: pytest.CaptureFixture[str], record_property
) -> None:
    spec = CorpusSpec.realistic(
        patients=2, studies_per_patient=1, series_per_study=1, rows=256, columns=256, scanners=SCANNERS
    )
    templates = generate_corpus(tmp_path / "templates", spec)
    storage, state = tmp_path / "data", tmp_path / "state"
    config = write_meta_config(tmp_path, storage=storage, state=state, mongo_uri="", database=mongo_db_name)
    env = {k: v for k, v in os.environ.items() if k not in URI_ENV_VARS}  # the embedded store
    daemon = MetaDaemon(config, tmp_path / "daemon.log", {**env, KEY_ENV: SECRET}).start()
    try:
        cloners = [SeriesCloner(templates, tmp_path / f"corpus{n:02d}", seed=n) for n in range(SENDERS)]
        began = time.monotonic()
        streams = [
            SeriesStream(daemon.port, cloner.next_series, until=began + SECONDS, aet=f"MODALITY{n:02d}")
            for n, cloner in enumerate(cloners)
        ]
        for stream in streams:
            stream.start()
        for stream in streams:
            stream.join(SECONDS + 120)
        sending = time.monotonic() - began
        assert all(s.error is None and not s.is_alive() for s in streams)

        sent = [inst for s in streams for inst in s.instances(status=None)]
        acknowledged = [inst for s in streams for inst in s.instances()]
        statuses = Counter(
            status for s in streams for _, report in s.sent for status in report.statuses.values()
        )
        assert statuses == {"Success": len(sent)}  # no refusal, no rejected association, nothing unanswered
        assert acknowledged == sent
        sop_uids = {inst.sop_uid for inst in sent}
        assert len(sop_uids) == len(sent)  # every instance sent is a distinct one
        pseudo = Pseudonymizer(SECRET.encode())
        want = {pseudo.uid(uid) for uid in sop_uids}

        def extracted() -> bool:
            rows = index_rows(state)
            return set(rows) >= want and all(rows[k][0] == "extracted" for k in want)

        deadline = time.monotonic() + 120
        while not extracted():
            assert time.monotonic() < deadline, "not every instance was extracted within 120 s"
            time.sleep(0.2)
        lag = time.monotonic() - began - sending

        # Stored: one file per instance (named by its SOP Instance UID by the default FilePath), no other.
        files = [p for p in storage.rglob("*.dcm") if not p.relative_to(storage).parts[0].startswith(".")]
        assert Counter(p.stem for p in files) == Counter(sop_uids)
        assert list((storage / ".niffler-incoming").iterdir()) == []
        by_sop = {inst.sop_uid: inst for inst in sent}
        for path in random.Random(0).sample(files, min(48, len(files))):  # whole and equal to the source
            ds = pydicom.dcmread(path)
            source = pydicom.dcmread(by_sop[path.stem].path)
            assert ds == source and (ds.pixel_array == source.pixel_array).all()
        # Indexed: one row per instance, every one extracted.
        rows = index_rows(state)
        assert set(rows) == want and {s for s, _ in rows.values()} == {"extracted"}
        # Documented: one document per series in every featureset, counting each instance once.
        series = Counter(inst.series_uid for inst in sent)
        store = attach_store(None, database=mongo_db_name, data_dir=state / "store")
        assert store is not None, "the daemon's embedded store is not running"
        try:
            for name in UPSTREAM_FEATURESETS:
                counts = {
                    d["_id"]: d["instance_count"] for d in store.db[name].find({}, {"instance_count": 1})
                }
                assert counts == {pseudo.uid(uid): n for uid, n in series.items()}, name
            assert sum(series.values()) == len(sent)
        finally:
            store.close()

        megabytes = sum(inst.path.stat().st_size for inst in sent) / 1e6
        figures = {
            "senders": SENDERS,
            "seconds": round(sending, 1),
            "instances": len(sent),
            "series": len(series),
            "instances_per_s": round(len(sent) / sending, 1),
            "mb_per_s": round(megabytes / sending, 1),
            "last_document_lag_s": round(lag, 2),
        }
        for key, value in figures.items():
            record_property(key, value)
        with capsys.disabled():
            print(
                f"\nniffler-meta load: {SENDERS} senders x {sending:.1f} s: {len(sent)} instances "
                f"({len(series)} series, {megabytes:.0f} MB) sent, stored, indexed and documented, "
                f"0 lost, 0 duplicated; {len(sent) / sending:.0f} instances/s, "
                f"{megabytes / sending:.1f} MB/s; all extracted {lag:.1f} s after the last response"
            )
        assert daemon.terminate() == 0
        assert "Traceback" not in daemon.text()
    finally:
        daemon.stop()
    for folder in [*tmp_path.glob("corpus*"), storage]:  # a few hundred MB: not kept for later runs
        shutil.rmtree(folder)
