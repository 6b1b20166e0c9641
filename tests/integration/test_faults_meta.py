"""niffler-meta under faults: the store killed mid-stream, a full disk, SIGTERM mid-stream.

Everything real and on 127.0.0.1: the ``niffler-meta`` console script in its
own process, SecantusDB as a MongoDB-wire server in its own process, DCMTK's
``/usr/bin/storescu`` as the senders (each file's status read back), and a
tmpfs for the disk that fills. Each test counts every instance sent,
acknowledged, stored and documented, and reads the stored files and documents.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pymongo import MongoClient

from niffler.common.config import load_config
from niffler.common.deid import KEY_ENV, Policy, Pseudonymizer, phi_check
from niffler.meta_extraction.config import MetaConfig
from niffler.meta_extraction.service import QUARANTINE_FOLDER
from niffler.net.writer import INCOMING_DIR
from niffler.testing.corpus import CorpusSpec, Instance, Scanner, generate_corpus
from niffler.testing.faults_meta import (
    NIFFLER_META,
    ClonedInstance,
    MetaDaemon,
    MountFailed,
    SeriesCloner,
    SeriesStream,
    fill_disk,
    index_rows,
    send_files,
    tmpfs,
    write_meta_config,
)
from niffler.testing.peers import SecantusServer

SECRET = "fault-tests-secret-0123456789abcdef"
PSEUDO = Pseudonymizer(SECRET.encode())
UPSTREAM_FEATURESETS = ("featureset", "featureset1", "featureset2", "featureset3")
SCANNERS = (Scanner(), Scanner(serial="SN0002", station="MR01", modality="MR", model="Magnet 3T"))


@pytest.fixture
def env() -> dict[str, str]:
    return {**os.environ, KEY_ENV: SECRET}


@pytest.fixture
def templates(tmp_path: Path) -> list[Instance]:
    """Two realistic series (a CT and an MR, 12 instances each) that the streams copy."""
    spec = CorpusSpec.realistic(
        patients=2, studies_per_patient=1, series_per_study=1, rows=64, columns=64, scanners=SCANNERS
    )
    return generate_corpus(tmp_path / "templates", spec)


@pytest.fixture
def daemons(tmp_path: Path, env: dict[str, str]) -> Iterator[Callable[[Path], MetaDaemon]]:
    """Start niffler-meta processes (one log for all); each still running is stopped after the test."""
    started: list[MetaDaemon] = []

    def start(config: Path) -> MetaDaemon:
        daemon = MetaDaemon(config, tmp_path / "daemon.log", env).start()
        started.append(daemon)
        return daemon

    yield start
    for daemon in started:
        daemon.stop()


@pytest.fixture
def own_store(tmp_path: Path) -> Iterator[list[SecantusServer]]:
    """A MongoDB-wire server of the test's own (it gets killed); every server in the list is stopped."""
    servers = [SecantusServer(tmp_path / "store").start()]
    yield servers
    for server in servers:
        server.stop()


def queue_of(series: Sequence[list[ClonedInstance]]) -> Callable[[], list[ClonedInstance] | None]:
    """Hand out *series* one by one, then None."""
    pending = list(series)
    return lambda: pending.pop(0) if pending else None


def wait_for(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.2)


def stored_files(storage: Path) -> list[Path]:
    """Every file under the storage folder outside its dot-folders (incoming, quarantine)."""
    found = []
    for root, dirs, files in os.walk(storage):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        found += [Path(root) / name for name in files]
    return found


def assert_stored_exactly(storage: Path, instances: Sequence[ClonedInstance]) -> None:
    """The storage folder holds exactly *instances*, each whole and equal to the file sent.

    Equal element by element, pixels included: storescu re-encodes what it
    sends (sequences of undefined length get a length), so not byte for byte.
    """
    files = stored_files(storage)
    assert len(files) == len(instances)
    by_sop = {inst.sop_uid: inst for inst in instances}
    for path in files:
        ds = pydicom.dcmread(path)  # the whole file: a truncated one fails here or below
        source = by_sop.pop(str(ds.SOPInstanceUID))
        assert ds == pydicom.dcmread(source.path)
        assert (ds.pixel_array == pydicom.dcmread(source.path).pixel_array).all()
    assert by_sop == {}
    assert list((storage / INCOMING_DIR).iterdir()) == []  # no temp file left behind
    quarantine = storage / QUARANTINE_FOLDER
    assert not quarantine.exists() or list(quarantine.iterdir()) == []


def assert_documented_exactly(
    db: Any, instances: Sequence[ClonedInstance], granularity: str, policy: Policy
) -> None:
    """Each featureset holds one document per instance (or per series) sent, with its fields, no other."""
    series = Counter(inst.series_uid for inst in instances)
    assert sum(series.values()) == len({inst.sop_uid for inst in instances})  # sent once each
    first_of_series = {}
    for inst in instances:
        first_of_series.setdefault(inst.series_uid, inst)
    for name in UPSTREAM_FEATURESETS:
        docs = {d["_id"]: d for d in db[name].find()}
        if granularity == "instance":
            assert set(docs) == {PSEUDO.uid(inst.sop_uid) for inst in instances}, name
            owners = [(PSEUDO.uid(inst.sop_uid), inst) for inst in instances]
        else:
            assert set(docs) == {PSEUDO.uid(uid) for uid in series}, name
            owners = [(PSEUDO.uid(uid), inst) for uid, inst in first_of_series.items()]
        for doc_id, inst in owners:
            doc = docs[doc_id]
            assert doc["series_key"] == PSEUDO.uid(inst.series_uid)
            assert doc["instance_count"] == series[inst.series_uid], (name, doc_id)
            assert doc["received_at"]["first"] <= doc["received_at"]["last"]
            assert phi_check(doc, policy) == [], (name, doc)
    for doc_id, inst in owners:
        doc = db["featureset"].find_one({"_id": doc_id})
        template = inst.template
        assert doc["PatientID"] == PSEUDO.identifier("PatientID", template.patient_id)
        assert doc["StudyInstanceUID"] == PSEUDO.uid(inst.study_uid)
        assert doc["SeriesInstanceUID"] == PSEUDO.uid(inst.series_uid)
        if granularity == "instance":
            assert doc["SOPInstanceUID"] == PSEUDO.uid(inst.sop_uid)
        assert (doc["Modality"], doc["DeviceSerialNumber"], doc["StationName"]) == (
            template.scanner.modality, template.scanner.serial, template.scanner.station
        )  # fmt: skip
        assert doc["AcquisitionDate"] == template.acquisition.strftime("%Y%m%d")
        assert "PatientName" not in doc and "PatientBirthDate" not in doc
    studies = {d["_id"] for d in db["featureset.studies"].find()}
    assert studies == {PSEUDO.uid(inst.study_uid) for inst in instances}


def assert_indexed_exactly(state: Path, instances: Sequence[ClonedInstance]) -> None:
    """The receiver's index holds one row per instance, every one extracted."""
    rows = index_rows(state)
    assert set(rows) == {PSEUDO.uid(inst.sop_uid) for inst in instances}
    assert Counter(state for state, _ in rows.values()) == {"extracted": len(instances)}


def all_extracted(state: Path, instances: Sequence[ClonedInstance]) -> bool:
    """Whether the receiver's index marks every one of *instances* extracted (its documents journaled)."""
    try:
        rows = index_rows(state)
    except Exception:  # the index may not exist yet
        return False
    want = {PSEUDO.uid(inst.sop_uid) for inst in instances}
    return set(rows) >= want and all(rows[k][0] == "extracted" for k in want)


def policy_for(config: Path) -> Policy:
    return Policy(load_config(MetaConfig, [config]), SECRET.encode())


def status_of(config: Path, env: dict[str, str]) -> dict[str, Any]:
    out = subprocess.run(
        [str(NIFFLER_META), "--config", str(config), "status", "--json"],
        env=env, capture_output=True, text=True, check=True, timeout=60,
    )  # fmt: skip
    return dict(json.loads(out.stdout))


def log_lines(daemon: MetaDaemon, phrase: str) -> list[str]:
    return [line for line in daemon.text().splitlines() if phrase in line]


# --- the store killed and restarted under a live stream ----------------------------------------


@pytest.mark.parametrize("granularity", ["series", "instance"])
def test_store_killed_and_restarted_under_a_live_stream_loses_nothing(
    granularity: str,
    tmp_path: Path,
    templates: list[Instance],
    own_store: list[SecantusServer],
    daemons: Callable[[Path], MetaDaemon],
    env: dict[str, str],
    mongo_db_name: str,
) -> None:
    store = own_store[0]
    storage, state = tmp_path / "data", tmp_path / "state"
    config = write_meta_config(
        tmp_path, storage=storage, state=state, mongo_uri=store.uri, database=mongo_db_name,
        ExtractionGranularity=granularity,
    )  # fmt: skip
    cloners = [SeriesCloner(templates, tmp_path / f"corpus{n}", seed=n) for n in range(2)]
    daemon = daemons(config)
    db = MongoClient(store.uri, tz_aware=True)[mongo_db_name]
    # Two modalities, each sending a new series (12 instances) per association every 0.2 s.
    streams = [
        SeriesStream(daemon.port, cloner.next_series, pause=0.2, aet=f"MODALITY{n}")
        for n, cloner in enumerate(cloners)
    ]
    for stream in streams:
        stream.start()

    def series_sent() -> int:
        return sum(len(s.sent) for s in streams)

    wait_for(lambda: db["featureset"].count_documents({}) >= 2, 30, "the first documents")
    store.kill()  # kill -9, mid-stream
    killed_at, sent_at_kill = time.monotonic(), series_sent()
    wait_for(lambda: log_lines(daemon, "metadata store unavailable") != [], 30, "the daemon to notice")
    # Files keep arriving and wait on disk, never purged while not extracted.
    wait_for(lambda: series_sent() >= sent_at_kill + 6, 30, "more series during the outage")
    figures = status_of(config, env)
    assert figures["store"].endswith("UNREACHABLE")
    assert figures["waiting_for_extraction"] > 0
    time.sleep(max(0.0, 3.0 - (time.monotonic() - killed_at)))

    own_store.append(SecantusServer(tmp_path / "store", port=store.port).start())  # same port, same data
    sent_at_restart = series_sent()
    wait_for(lambda: series_sent() >= sent_at_restart + 6, 30, "more series after the restart")
    for stream in streams:
        stream.halt()
        stream.join(60)
        assert stream.error is None and not stream.is_alive()
    sent = [inst for stream in streams for inst in stream.instances(status=None)]
    acknowledged = [inst for stream in streams for inst in stream.instances()]
    assert len(sent) >= 12 * (sent_at_restart + 6) and acknowledged == sent  # receiving never stopped
    wait_for(lambda: all_extracted(state, sent), 120, "every instance extracted")

    assert_indexed_exactly(state, sent)
    assert_documented_exactly(db, sent, granularity, policy_for(config))
    assert_stored_exactly(storage, sent)
    assert len(log_lines(daemon, "metadata store unavailable")) == 1
    assert len(log_lines(daemon, "metadata store is back")) == 1
    assert "Traceback" not in daemon.text()
    figures = status_of(config, env)
    assert (figures["instances_received"], figures["waiting_for_extraction"]) == (len(sent), 0)
    assert figures["store"].endswith("reachable")


# --- a full disk -------------------------------------------------------------------------------


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 32 MiB tmpfs (root only; CI runs as root): skipped, saying why, where mount is refused."""
    try:
        with tmpfs(tmp_path / "disk", 32) as folder:
            yield folder
    except MountFailed as exc:
        pytest.skip(f"cannot mount a tmpfs here: {exc}")


def test_a_disk_that_fills_mid_stream_refuses_cleanly_and_receives_again_when_space_returns(
    tmp_path: Path,
    small_disk: Path,
    secantus: SecantusServer,
    daemons: Callable[[Path], MetaDaemon],
    mongo_db_name: str,
) -> None:
    spec = CorpusSpec.realistic(
        patients=2, studies_per_patient=1, series_per_study=1, rows=256, columns=256, scanners=SCANNERS
    )  # about 150 kB an instance
    cloner = SeriesCloner(generate_corpus(tmp_path / "templates", spec), tmp_path / "corpus")
    series = [cloner.next_series() for _ in range(8)]
    instances = [inst for s in series for inst in s]
    storage, state = small_disk / "data", tmp_path / "state"
    # Watermark 100: nothing refuses before the disk itself does (a burst between two checks,
    # another program filling the disk).
    config = write_meta_config(
        tmp_path, storage=storage, state=state, mongo_uri=secantus.uri, database=mongo_db_name,
        DiskWatermarkPercent=100,
    )  # fmt: skip
    daemon = daemons(config)
    filler = small_disk / "filler.bin"
    fill_disk(filler, leave_bytes=4 << 20)  # room for about two series of the eight

    stream = SeriesStream(daemon.port, queue_of(series))
    stream.run()  # in this thread: series after series, one association each
    assert stream.error is None
    stored = stream.instances()
    refused = stream.instances("Refused: OutOfResources")
    rejected = [report for _, report in stream.sent if report.association_rejected]
    assert 0 < len(stored) < len(instances) // 2
    assert refused, "the association the disk filled under answered no 0xA700"
    assert rejected and all(r.statuses == {} for r in rejected)  # later ones: rejected outright
    assert all("Local Limit Exceeded" in r.output for r in rejected)
    # storescu ends an association at its first refused file: the rest of that series is unsent.
    unsent = [inst for s, r in stream.sent for inst in s if inst.path in r.unanswered]
    assert len(stored) + len(refused) + len(unsent) == len(instances)
    # One clear line, no traceback, nothing half-written, nothing but what was acknowledged.
    full = log_lines(daemon, "ERROR")
    assert len(full) == 2, full  # the write that found no room, and what the receiver does about it
    assert "cannot write a received instance from MODALITY: No space left on device" in full[0]
    assert "the storage disk is full (No space left on device" in full[1]
    assert "refusing associations and images (0xA700) until space is freed" in full[1]
    rejections = log_lines(daemon, "rejected")
    assert len(rejections) == len(rejected)
    assert all("rejected (transient): the storage disk is full" in line for line in rejections)
    assert "Traceback" not in daemon.text()
    assert_stored_exactly(storage, stored)
    wait_for(lambda: all_extracted(state, stored), 60, "what was stored to be extracted")

    filler.unlink()  # space returns
    time.sleep(1.2)  # the receiver looks at the disk at most once a second
    again = SeriesStream(daemon.port, queue_of([s for s in series if any(i not in stored for i in s)]))
    again.run()
    assert again.error is None and again.instances(status=None) == again.instances()
    assert len(log_lines(daemon, "the storage disk has room again")) == 1
    assert_stored_exactly(storage, instances)
    wait_for(lambda: all_extracted(state, instances), 60, "every instance extracted")
    assert_indexed_exactly(state, instances)
    db = MongoClient(secantus.uri, tz_aware=True)[mongo_db_name]
    assert_documented_exactly(db, instances, "series", policy_for(config))


def test_a_full_disk_under_the_index_holds_arrivals_and_records_them_when_space_returns(
    tmp_path: Path,
    small_disk: Path,
    secantus: SecantusServer,
    daemons: Callable[[Path], MetaDaemon],
    mongo_db_name: str,
    templates: list[Instance],
) -> None:
    """The index (StateFolder) on a disk that fills while images still land elsewhere: the worker
    must neither die (a restart loop under systemd) nor lose an arrival; it holds them, logs once,
    and records and documents every one when space returns."""
    cloner = SeriesCloner(templates, tmp_path / "corpus")
    series = [cloner.next_series() for _ in range(6)]
    instances = [inst for s in series for inst in s]
    storage, state = tmp_path / "data", small_disk / "state"
    config = write_meta_config(
        tmp_path, storage=storage, state=state, mongo_uri=secantus.uri, database=mongo_db_name
    )
    daemon = daemons(config)
    wait_for(lambda: (state / "meta-index.sqlite").exists(), 30, "the index to be created")
    filler = small_disk / "filler.bin"
    fill_disk(filler)  # not a byte left for the index
    stream = SeriesStream(daemon.port, queue_of(series))
    stream.run()
    assert stream.error is None and stream.instances(status=None) == stream.instances()
    assert len(stream.instances()) == len(instances)  # the images' own disk has room: all accepted
    wait_for(lambda: bool(log_lines(daemon, "the instance index in")), 30, "the index's error")
    time.sleep(2.0)  # several retries against the full disk
    assert daemon.proc.poll() is None, daemon.text()[-3000:]
    errors = log_lines(daemon, "can not be written")
    assert len(errors) == 1 and "database or disk is full" in errors[0], errors
    assert "Traceback" not in daemon.text() and "worker failed" not in daemon.text()

    filler.unlink()
    wait_for(lambda: all_extracted(state, instances), 60, "every held arrival recorded and extracted")
    assert len(log_lines(daemon, "the instance index is writable again")) == 1
    assert_stored_exactly(storage, instances)
    assert_indexed_exactly(state, instances)
    db = MongoClient(secantus.uri, tz_aware=True)[mongo_db_name]
    assert_documented_exactly(db, instances, "series", policy_for(config))


def test_a_disk_filled_by_another_program_is_refused_at_the_watermark_and_taken_again_below_it(
    tmp_path: Path,
    small_disk: Path,
    templates: list[Instance],
    secantus: SecantusServer,
    daemons: Callable[[Path], MetaDaemon],
    mongo_db_name: str,
) -> None:
    series = SeriesCloner(templates, tmp_path / "corpus").next_series()
    storage, state = small_disk / "data", tmp_path / "state"
    config = write_meta_config(
        tmp_path, storage=storage, state=state, mongo_uri=secantus.uri, database=mongo_db_name
    )  # the default watermark, 90%
    daemon = daemons(config)
    filler = small_disk / "filler.bin"
    fill_disk(filler, leave_bytes=1 << 20)  # 97% used
    time.sleep(1.2)

    report = send_files(daemon.port, [inst.path for inst in series])
    # Refused before a byte is written; storescu ends the association at its first refused file.
    assert report.statuses == {series[0].path: "Refused: OutOfResources"}
    assert stored_files(storage) == []
    refusing = log_lines(daemon, "refusing new images with 0xA700")
    assert len(refusing) == 1 and "watermark 90%" in refusing[0]

    filler.unlink()
    time.sleep(1.2)
    report = send_files(daemon.port, [inst.path for inst in series])
    assert report.stored == [inst.path for inst in series]
    assert len(log_lines(daemon, "accepting images again")) == 1
    assert_stored_exactly(storage, series)
    wait_for(lambda: all_extracted(state, series), 60, "every instance extracted")
    db = MongoClient(secantus.uri, tz_aware=True)[mongo_db_name]
    assert_documented_exactly(db, series, "series", policy_for(config))


# --- SIGTERM under a stream --------------------------------------------------------------------


def test_sigterm_mid_stream_stops_cleanly_and_the_rerun_takes_the_rest_without_duplicates(
    tmp_path: Path,
    templates: list[Instance],
    secantus: SecantusServer,
    daemons: Callable[[Path], MetaDaemon],
    mongo_db_name: str,
) -> None:
    storage, state = tmp_path / "data", tmp_path / "state"
    config = write_meta_config(
        tmp_path, storage=storage, state=state, mongo_uri=secantus.uri, database=mongo_db_name
    )
    cloners = [SeriesCloner(templates, tmp_path / f"corpus{n}", seed=n) for n in range(3)]
    # 30 series (360 instances) per sender: enough that a stop after a third lands mid-stream now
    # that receiving is fast (10 each, all 360 were sometimes in before the stop).
    batches = [[cloner.next_series() for _ in range(30)] for cloner in cloners]
    everything = [inst for batch in batches for s in batch for inst in s]
    daemon = daemons(config)
    streams = [
        SeriesStream(daemon.port, queue_of(batch), stop_when_cut=True, aet=f"MODALITY{n}")
        for n, batch in enumerate(batches)
    ]
    for stream in streams:
        stream.start()
    wait_for(lambda: sum(len(s.instances()) for s in streams) >= len(everything) // 3, 60, "a third")

    began = time.monotonic()
    assert daemon.terminate(timeout=60) == 0  # a clean stop of a daemon is a success
    stop_seconds = time.monotonic() - began
    for stream in streams:
        stream.join(60)
        assert stream.error is None
    acknowledged = [inst for s in streams for inst in s.instances()]
    assert 0 < len(acknowledged) < len(everything), "the stop did not land mid-stream"
    text = daemon.text()
    assert "Traceback" not in text and "niffler-meta stopped" in text
    assert stop_seconds < 30
    # Nothing half-written: every file on disk is whole, and was sent; every acknowledged one is there.
    on_disk = {str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in stored_files(storage)}
    assert {inst.sop_uid for inst in acknowledged} <= on_disk <= {inst.sop_uid for inst in everything}
    assert_stored_exactly(storage, [inst for inst in everything if inst.sop_uid in on_disk])
    # The store was up: the stop recorded and extracted everything that had arrived.
    rows = index_rows(state)
    assert set(rows) == {PSEUDO.uid(uid) for uid in on_disk}
    assert {state for state, _ in rows.values()} == {"extracted"}

    # The rerun: the senders send what was not acknowledged, and (as a PACS unsure of a
    # response would) a series that was: nothing is stored or documented twice.
    daemon = daemons(config)
    unacknowledged = [inst for inst in everything if inst not in acknowledged]
    resend = unacknowledged + acknowledged[:12]
    report = send_files(daemon.port, [inst.path for inst in resend])
    assert report.stored == [inst.path for inst in resend]
    wait_for(lambda: all_extracted(state, everything), 60, "every instance extracted")
    assert_indexed_exactly(state, everything)
    assert_stored_exactly(storage, everything)
    db = MongoClient(secantus.uri, tz_aware=True)[mongo_db_name]
    assert_documented_exactly(db, everything, "series", policy_for(config))
    assert daemon.terminate() == 0


def test_sigterm_while_the_store_is_down_stops_at_once_and_the_rerun_documents_what_waited(
    tmp_path: Path,
    templates: list[Instance],
    own_store: list[SecantusServer],
    daemons: Callable[[Path], MetaDaemon],
    env: dict[str, str],
    mongo_db_name: str,
) -> None:
    store = own_store[0]
    storage, state = tmp_path / "data", tmp_path / "state"
    config = write_meta_config(
        tmp_path, storage=storage, state=state, mongo_uri=store.uri, database=mongo_db_name
    )
    cloner = SeriesCloner(templates, tmp_path / "corpus")
    before, during = [cloner.next_series() for _ in range(2)], [cloner.next_series() for _ in range(4)]
    daemon = daemons(config)
    first = [inst for s in before for inst in s]
    assert send_files(daemon.port, [inst.path for inst in first]).stored == [inst.path for inst in first]
    wait_for(lambda: all_extracted(state, first), 60, "the first series extracted")
    store.kill()
    waiting = [inst for s in during for inst in s]
    assert send_files(daemon.port, [inst.path for inst in waiting]).stored == [inst.path for inst in waiting]
    wait_for(lambda: log_lines(daemon, "metadata store unavailable") != [], 30, "the daemon to notice")
    wait_for(lambda: len(index_rows(state)) == len(first) + len(waiting), 30, "the arrivals recorded")

    began = time.monotonic()
    assert daemon.terminate(timeout=60) == 0
    # No last try to extract, no waiting out the grace (pymongo's close still waits out one server
    # selection, 5 s, to end its sessions).
    assert time.monotonic() - began < 15
    rows = index_rows(state)
    assert Counter(s for s, _ in rows.values()) == {"extracted": len(first), "received": len(waiting)}
    assert_stored_exactly(storage, first + waiting)  # kept on disk until documented
    assert status_of(config, env)["waiting_for_extraction"] == len(waiting)

    own_store.append(SecantusServer(tmp_path / "store", port=store.port).start())
    daemon = daemons(config)
    wait_for(lambda: all_extracted(state, first + waiting), 60, "what waited to be extracted")
    assert log_lines(daemon, f"{len(waiting)} instances wait for extraction")
    assert_indexed_exactly(state, first + waiting)
    db = MongoClient(own_store[-1].uri, tz_aware=True)[mongo_db_name]
    assert_documented_exactly(db, first + waiting, "series", policy_for(config))
    assert "Traceback" not in daemon.text()


def test_the_test_tmpfs_is_unmounted_after_its_block(tmp_path: Path) -> None:
    """A failed disk test never leaves a mount behind."""
    try:
        with tmpfs(tmp_path / "disk", 4) as folder:
            (folder / "x").write_bytes(b"x")
    except MountFailed as exc:
        pytest.skip(f"cannot mount a tmpfs here: {exc}")
    assert not (tmp_path / "disk" / "x").exists()
    shutil.rmtree(tmp_path / "disk")
