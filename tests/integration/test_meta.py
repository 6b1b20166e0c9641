"""niffler-meta against real DCMTK senders and a real MongoDB-wire server (SecantusDB)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from io import BytesIO
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pydicom.data import get_testdata_file
from pymongo import MongoClient
from pynetdicom import AE
from pynetdicom.dimse_primitives import C_STORE

from niffler.common.config import load_config
from niffler.common.deid import KEY_ENV, Pseudonymizer, phi_check
from niffler.common.errors import ServiceError
from niffler.meta_extraction.config import MetaConfig
from niffler.meta_extraction.index import InstanceIndex
from niffler.meta_extraction.service import QUARANTINE_FOLDER, MetaService, open_service, read_status
from niffler.testing.corpus import CorpusSpec, Instance, Scanner, generate_corpus
from niffler.testing.dicomfiles import dataset_bytes
from niffler.testing.peers import SecantusServer, free_port, run_dcmtk, storescu, wait_for_port
from niffler.testing.receiver import FEATURESETS

LOOPBACK = "127.0.0.1"
SECRET = "integration-test-secret-0123456789"
COMPRESSED = [
    "MR_small_jp2klossless.dcm",
    "MR_small_RLE.dcm",
    "MR_small_jpeg_ls_lossless.dcm",
    "JPGExtended.dcm",
]
SCANNERS = (Scanner(), Scanner(serial="SN0002", station="MR01", modality="MR", model="Magnet 3T"))


@pytest.fixture(autouse=True)
def _secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(KEY_ENV, SECRET)


def write_config(tmp_path: Path, mongo_uri: str, database: str, **extra: Any) -> Path:
    config = {
        "QueryAet": f"NIFFLER:{free_port()}",
        "BindAddress": LOOPBACK,
        "StorageFolder": str(tmp_path / "data"),
        "StateFolder": str(tmp_path / "state"),
        "FeaturesetFolder": str(FEATURESETS),
        "MongoURI": mongo_uri,
        "DatabaseName": database,
        **extra,
    }
    path = tmp_path / "meta.json"
    path.write_text(json.dumps(config))
    return path


@pytest.fixture
def meta_factory(
    tmp_path: Path, secantus: SecantusServer, mongo_db_name: str
) -> Iterator[Callable[..., MetaService]]:
    started: list[MetaService] = []

    def start(uri: str | None = None, clock: Callable[[], float] = time.time, **extra: Any) -> MetaService:
        service_kwargs = extra.pop("service_kwargs", {})
        uri = "" if extra.pop("embedded", False) else (uri or secantus.uri)
        config = load_config(MetaConfig, [write_config(tmp_path, uri, mongo_db_name, **extra)])
        service = open_service(config, clock=clock, **service_kwargs).start()
        started.append(service)
        return service

    yield start
    for service in started:
        service.stop(grace=10)


def database(secantus: SecantusServer, name: str) -> Any:
    return MongoClient(secantus.uri, tz_aware=True)[name]


def expected_series(instances: list[Instance]) -> Counter[str]:
    return Counter(i.series_uid for i in instances)


def test_stream_becomes_one_phi_free_document_per_series_and_featureset(
    meta_factory: Callable[..., MetaService], secantus: SecantusServer, mongo_db_name: str, tmp_path: Path
) -> None:
    corpus = generate_corpus(tmp_path / "corpus", CorpusSpec(patients=3, scanners=SCANNERS))
    compressed = [Path(str(get_testdata_file(name))) for name in COMPRESSED]
    service = meta_factory()
    storescu(service.port, tmp_path / "corpus")
    run_dcmtk(["dcmsend", "-aec", "NIFFLER", LOOPBACK, str(service.port), *map(str, compressed)])
    assert service.wait_idle(60)

    db = database(secantus, mongo_db_name)
    pseudo = Pseudonymizer(SECRET.encode())
    series = expected_series(corpus)
    # pydicom's MR_small variants are one SOP instance in several encodings: counted once.
    extra = {(ds.SeriesInstanceUID, ds.SOPInstanceUID) for ds in map(pydicom.dcmread, compressed)}
    series.update(uid for uid, _ in extra)
    collections = sorted(db.list_collection_names())
    # featureset1 and featureset2 lack the acquisition date and time a study summary needs: they have none.
    assert collections == [
        "featureset", "featureset.studies", "featureset1", "featureset2", "featureset3", "featureset3.studies"
    ]  # fmt: skip
    for name in ("featureset", "featureset1", "featureset2", "featureset3"):
        docs = {d["_id"]: d for d in db[name].find()}
        assert set(docs) == {pseudo.uid(uid) for uid in series}, name
        for uid, count in series.items():
            doc = docs[pseudo.uid(uid)]
            assert doc["instance_count"] == count
            assert doc["received_at"]["first"] <= doc["received_at"]["last"]
            assert phi_check(doc, service.policy) == [], (name, doc)
    by_series = {d["_id"]: d for d in db["featureset"].find()}
    for inst in corpus:
        doc = by_series[pseudo.uid(inst.series_uid)]
        assert doc["PatientID"] == pseudo.identifier("PatientID", inst.patient_id)
        assert doc["StudyInstanceUID"] == pseudo.uid(inst.study_uid)
        assert doc["SeriesInstanceUID"] == pseudo.uid(inst.series_uid)
        assert doc["DeviceSerialNumber"] == inst.scanner.serial
        assert doc["StationName"] == inst.scanner.station
        assert doc["Modality"] == inst.scanner.modality
        assert doc["ManufacturerModelName"] == inst.scanner.model
        assert doc["AcquisitionDate"] == inst.acquisition.strftime("%Y%m%d")
        assert doc["ImageType"] == ["ORIGINAL", "PRIMARY", "AXIAL"]
        assert doc["SliceThickness"] == 1.25 and isinstance(doc["SeriesNumber"], int)
        for forbidden in ("PatientName", "PatientBirthDate", "InstitutionName", "StudyDescription"):
            assert forbidden not in doc
    # One study summary per study (see common/summary.py), as free of PHI as the series documents.
    studies = {pseudo.uid(inst.study_uid) for inst in corpus}
    for name in ("featureset.studies",):
        summaries = {d["_id"]: d for d in db[name].find()}
        assert studies <= set(summaries) <= studies | {pseudo.uid(ds.StudyInstanceUID) for ds in map(
            pydicom.dcmread, compressed)}, name  # fmt: skip
        for doc in summaries.values():
            assert phi_check(doc, service.policy) == [], (name, doc)
    # Raw identifiers appear nowhere in the database.
    dumped = json.dumps([d for n in collections for d in db[n].find()], default=str)
    for inst in corpus:
        for raw in (inst.patient_id, inst.patient_name, inst.birth_date, inst.accession, inst.study_uid):
            assert raw not in dumped
        assert inst.patient_name.split("^")[0] not in dumped


def test_purge_deletes_extracted_quiet_series_and_keeps_documents(
    meta_factory: Callable[..., MetaService], secantus: SecantusServer, mongo_db_name: str, tmp_path: Path
) -> None:
    now = [1_000_000.0]
    generate_corpus(tmp_path / "corpus", CorpusSpec(patients=1, studies_per_patient=1))
    service = meta_factory(clock=lambda: now[0], QuietPeriodMinutes=10)
    storescu(service.port, tmp_path / "corpus")
    assert service.wait_idle(30)
    data = tmp_path / "data"
    before = sorted(p for p in data.rglob("*.dcm"))
    assert len(before) == 4

    now[0] += 9 * 60  # not quiet yet
    result = service.purge_now()
    assert result is not None and result.files == 0
    assert sorted(data.rglob("*.dcm")) == before

    now[0] += 2 * 60  # quiet now
    result = service.purge_now()
    assert result is not None and result.files == 4
    assert list(data.rglob("*.dcm")) == []
    assert [p.name for p in data.iterdir()] == [".niffler-incoming"]  # empty folders removed
    assert database(secantus, mongo_db_name)["featureset"].count_documents({}) == 2


def test_store_down_files_wait_and_are_extracted_when_it_returns(
    meta_factory: Callable[..., MetaService], mongo_db_name: str, tmp_path: Path
) -> None:
    server = SecantusServer(tmp_path / "own-store").start()
    try:
        corpus = generate_corpus(tmp_path / "corpus", CorpusSpec(patients=2, studies_per_patient=1))
        service = meta_factory(uri=server.uri, QuietPeriodMinutes=0)
        port = server.port
        server.kill()
        storescu(service.port, tmp_path / "corpus")
        deadline = time.monotonic() + 20
        while service.store_ok and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not service.store_ok
        result = service.purge_now()  # quiet period 0: only "not extracted" protects the files
        assert result is not None and result.files == 0
        assert len(list((tmp_path / "data").rglob("*.dcm"))) == len(corpus)

        server = SecantusServer(tmp_path / "own-store", port=port).start()
        assert service.wait_idle(90)
        db = MongoClient(server.uri, tz_aware=True)[mongo_db_name]
        counts = {d["_id"]: d["instance_count"] for d in db["featureset"].find()}
        pseudo = Pseudonymizer(SECRET.encode())
        assert counts == {pseudo.uid(k): v for k, v in expected_series(corpus).items()}
        assert service.store_ok
    finally:
        server.stop()


def test_eight_concurrent_senders_lose_nothing(
    meta_factory: Callable[..., MetaService], secantus: SecantusServer, mongo_db_name: str, tmp_path: Path
) -> None:
    folders = []
    corpus: list[Instance] = []
    for n in range(8):
        spec = CorpusSpec(
            patients=1, studies_per_patient=1, series_per_study=2, instances_per_series=5, seed=n + 1
        )
        corpus += generate_corpus(tmp_path / f"corpus{n}", spec)
        folders.append(tmp_path / f"corpus{n}")
    service = meta_factory()
    errors: list[BaseException] = []

    def send(folder: Path) -> None:
        try:
            storescu(service.port, folder)
        except BaseException as exc:  # collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=send, args=(f,)) for f in folders]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors
    assert service.wait_idle(60)
    pseudo = Pseudonymizer(SECRET.encode())
    counts = {d["_id"]: d["instance_count"] for d in database(secantus, mongo_db_name)["featureset"].find()}
    assert counts == {pseudo.uid(k): v for k, v in expected_series(corpus).items()}
    assert len(list((tmp_path / "data").rglob("*.dcm"))) == 80


def test_a_file_extraction_cannot_handle_is_quarantined_and_the_next_one_extracted(
    meta_factory: Callable[..., MetaService], secantus: SecantusServer, mongo_db_name: str, tmp_path: Path
) -> None:
    corpus = generate_corpus(tmp_path / "corpus", CorpusSpec(patients=1, studies_per_patient=1))
    bad = tmp_path / "bad"
    bad.mkdir()
    ds = pydicom.dcmread(corpus[0].path)
    ds.SOPInstanceUID = pydicom.uid.generate_uid()
    region = ds  # a kept sequence nested past the engine's limit: refused, not a crash
    for _ in range(100):
        item = pydicom.Dataset()
        region.AnatomicRegionSequence = pydicom.Sequence([item])
        region = item
    ds.save_as(bad / "deep.dcm")
    # Extraction reads only what the featuresets select, so the deep sequence must be selected.
    featuresets = tmp_path / "featuresets"
    featuresets.mkdir()
    text = (FEATURESETS / "featureset.txt").read_text()
    (featuresets / "featureset.txt").write_text(text + "\nAnatomicRegionSequence\n")
    service = meta_factory(FeaturesetFolder=str(featuresets))
    storescu(service.port, bad)
    storescu(service.port, tmp_path / "corpus")
    assert service.wait_idle(60)

    status = read_status(service.config, None)
    assert status["instances_failed"] == 1
    assert status["instances_extracted"] == len(corpus)
    quarantined = list((tmp_path / "data" / QUARANTINE_FOLDER).iterdir())
    assert [p.name for p in quarantined] == [Pseudonymizer(SECRET.encode()).uid(ds.SOPInstanceUID) + ".dcm"]
    assert pydicom.dcmread(quarantined[0], stop_before_pixels=True).SOPInstanceUID == ds.SOPInstanceUID
    assert service.purge_now() is not None
    assert quarantined[0].exists()
    db = database(secantus, mongo_db_name)
    assert db["featureset"].count_documents({}) == len(expected_series(corpus))


def send_raw_c_store(assoc: Any, sop_class: str, sop_uid: str, dataset: bytes) -> int:
    """Send *dataset* bytes as they are in a C-STORE and return the status (a broken sender).

    pynetdicom's send_c_store encodes a Dataset (and reads a file into one
    first), so it cannot send a truncated dataset; this builds the request
    as send_c_store does and hands the bytes over unread.
    """
    context = next(cx for cx in assoc.accepted_contexts if cx.abstract_syntax == sop_class)
    request = C_STORE()
    request.MessageID = 1
    request.AffectedSOPClassUID = sop_class
    request.AffectedSOPInstanceUID = sop_uid
    request.Priority = 2
    request.DataSet = BytesIO(dataset)
    assoc._reactor_checkpoint.clear()
    while not assoc._is_paused:
        time.sleep(0.0001)
    try:
        assoc.dimse.send_msg(request, context.context_id)
        _, response = assoc.dimse.get_msg(True)
    finally:
        assoc._reactor_checkpoint.set()
    return int(response.Status)


def test_truncated_datasets_are_refused_quarantined_and_counted_failed(
    meta_factory: Callable[..., MetaService], secantus: SecantusServer, mongo_db_name: str, tmp_path: Path
) -> None:
    spec = CorpusSpec(patients=1, studies_per_patient=1, series_per_study=1, instances_per_series=1,
                      rows=128, columns=128)  # fmt: skip
    (good,) = generate_corpus(tmp_path / "corpus", spec)
    ds = pydicom.dcmread(good.path)
    whole = dataset_bytes(good.path)
    cuts = {
        "mid-pixels": whole[: len(whole) - 1000],
        "mid-header": whole[: whole.index(b"\x10\x00\x10\x00") + 11],  # inside PatientName's value
    }
    service = meta_factory()
    ae = AE(ae_title="MODALITY")
    ae.add_requested_context(ds.SOPClassUID, pydicom.uid.ExplicitVRLittleEndian)
    assoc = ae.associate(LOOPBACK, service.port, ae_title="NIFFLER")
    try:
        statuses = [
            send_raw_c_store(assoc, ds.SOPClassUID, f"1.2.3.{n}", cut) for n, cut in enumerate(cuts.values())
        ]
        statuses.append(send_raw_c_store(assoc, ds.SOPClassUID, ds.SOPInstanceUID, whole))
    finally:
        assoc.release()
    assert statuses == [0xC210, 0xC210, 0x0000]
    assert service.wait_idle(30)
    status = read_status(service.config, None)
    assert (status["instances_failed"], status["instances_extracted"], status["series_seen"]) == (2, 1, 1)
    kept = sorted((tmp_path / "data" / QUARANTINE_FOLDER).glob("refused-*.dcm"))
    # The bytes are kept exactly as received, behind a file meta header.
    assert {dataset_bytes_after_meta(k) for k in kept} == set(cuts.values())
    db = database(secantus, mongo_db_name)
    assert db["featureset"].count_documents({}) == 1


def dataset_bytes_after_meta(path: Path) -> bytes:
    """The bytes after a Part 10 file's meta information (for files too broken for pydicom)."""
    data = path.read_bytes()
    return data[132 + 12 + int.from_bytes(data[140:144], "little") :]


def test_a_worker_that_dies_stops_the_daemon_with_an_error(
    meta_factory: Callable[..., MetaService], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(self: InstanceIndex, limit: int) -> list[Any]:
        raise sqlite3.DatabaseError("disk I/O error")

    monkeypatch.setattr(InstanceIndex, "pending", broken)
    service = meta_factory()
    stop = threading.Event()
    timer = threading.Timer(20, stop.set)
    timer.start()
    try:
        with pytest.raises(ServiceError, match="worker died"):
            service.run(stop)
    finally:
        timer.cancel()
    assert not stop.is_set()


def test_disk_watermark_refuses_with_a700_and_stores_nothing(
    meta_factory: Callable[..., MetaService], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    generate_corpus(tmp_path / "corpus", CorpusSpec(patients=1, studies_per_patient=1, series_per_study=1))
    service = meta_factory(DiskWatermarkPercent=80, service_kwargs={"disk_percent": lambda _: 95.0})
    result = storescu(service.port, tmp_path / "corpus", check=False, verbose=True)
    assert result.returncode != 0
    assert "Refused: OutOfResources" in result.stdout + result.stderr
    assert list((tmp_path / "data").rglob("*.dcm")) == []
    assert "watermark" in caplog.text


def test_embedded_store_is_shared_with_other_processes_while_the_daemon_runs(
    meta_factory: Callable[..., MetaService],
    mongo_db_name: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("NIFFLER_MONGO_URI", raising=False)
    monkeypatch.delenv("MONGO_URI", raising=False)
    corpus = generate_corpus(tmp_path / "corpus", CorpusSpec(patients=1, studies_per_patient=2))
    service = meta_factory(embedded=True)
    assert service.store.embedded
    storescu(service.port, tmp_path / "corpus")
    assert service.wait_idle(30)
    # Another process (as niffler-scanner-util would) reads the same store while the daemon runs.
    reader = (
        "import sys; from pathlib import Path; from niffler.common.store import attach_store;"
        "s = attach_store(None, database=sys.argv[1], data_dir=Path(sys.argv[2]));"
        "print(s.db['featureset'].count_documents({}))"
    )
    out = subprocess.run(
        [sys.executable, "-c", reader, mongo_db_name, str(tmp_path / "state" / "store")],
        capture_output=True, text=True, check=True, timeout=60,
    )  # fmt: skip
    assert int(out.stdout) == len(expected_series(corpus))


# --- the real command, killed and restarted --------------------------------------------------


def start_daemon(config: Path, env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    exe = Path(sys.executable).with_name("niffler-meta")
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            [str(exe), "--config", str(config)], env=env, stdout=out, stderr=subprocess.STDOUT
        )
    port = json.loads(config.read_text())["QueryAet"].split(":")[1]
    wait_for_port(int(port), timeout=30, proc=proc)
    return proc


def test_an_upstream_system_json_and_conf_folder_start_niffler_meta_unchanged(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Upstream runs from modules/meta-extraction with service/system.json and reads conf/*.txt."""
    module = tmp_path / "Niffler" / "modules" / "meta-extraction"
    (module / "service").mkdir(parents=True)
    shutil.copytree(FEATURESETS, module / "conf")
    port = free_port()
    system = {  # upstream's file, with its folder and port moved to this test's
        "DCM4CHEBin": "/opt/dcm4che-5.22.5/bin",
        "QueryAet": f"RTNIFFLER:{port}",
        "StorageFolder": str(tmp_path / "niffler-dicom-root"),
        "FilePath": "{00100020}/{0020000D}/{0020000E}/{00080018}.dcm",
    }
    (module / "service" / "system.json").write_text(json.dumps(system))
    corpus = generate_corpus(tmp_path / "corpus", CorpusSpec(patients=1, studies_per_patient=1))
    env = {**os.environ, KEY_ENV: SECRET}
    log = tmp_path / "daemon.log"
    exe = Path(sys.executable).with_name("niffler-meta")
    for cwd in (module, Path("/")):  # as upstream runs it, and as systemd does (cwd /)
        state = tmp_path / f"state-{len(cwd.parts)}"
        system["StateFolder"] = str(state)  # a new key; the default would land in the cwd
        (module / "service" / "system.json").write_text(json.dumps(system))
        with open(log, "ab") as out:
            daemon = subprocess.Popen([str(exe), "--config", "service/system.json" if cwd == module
                                       else str(module / "service" / "system.json")],
                                      cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT)  # fmt: skip
        try:
            wait_for_port(port, timeout=30, proc=daemon)
            storescu(port, tmp_path / "corpus", aec="RTNIFFLER")
            deadline = time.monotonic() + 30
            config = load_config(MetaConfig, [module / "service" / "system.json"])
            while time.monotonic() < deadline:
                figures = read_status(config, None)
                if figures.get("instances_extracted") == len(corpus):
                    break
                time.sleep(0.3)
            assert figures.get("instances_extracted") == len(corpus), log.read_text()
        finally:
            daemon.send_signal(signal.SIGTERM)
            assert daemon.wait(30) == 0
    text = log.read_text()
    assert "DCM4CHEBin" in text and "not used by Niffler" in text
    assert "is not a folder" not in text  # found conf/ both times


def test_kill_9_mid_stream_then_restart_and_resend_loses_and_duplicates_nothing(
    secantus: SecantusServer, mongo_db_name: str, tmp_path: Path
) -> None:
    spec = CorpusSpec(
        patients=2, studies_per_patient=2, series_per_study=2, instances_per_series=10, rows=64, columns=64
    )
    corpus = generate_corpus(tmp_path / "corpus", spec)
    files = sorted(i.path for i in corpus)
    config = write_config(tmp_path, secantus.uri, mongo_db_name)
    port = int(json.loads(config.read_text())["QueryAet"].split(":")[1])
    env = {**os.environ, KEY_ENV: SECRET}
    log = tmp_path / "daemon.log"

    daemon = start_daemon(config, env, log)
    sender = subprocess.Popen(
        ["storescu", "-aec", "NIFFLER", "+sd", LOOPBACK, str(port), *map(str, files)],
        env={**env, "TCP_NODELAY": "1"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    data = tmp_path / "data"
    deadline = time.monotonic() + 30
    while len(list(data.rglob("*.dcm"))) < len(files) // 3 and time.monotonic() < deadline:
        time.sleep(0.02)
    daemon.send_signal(signal.SIGKILL)
    daemon.wait(10)
    sender.wait(30)
    stored_before_kill = len(list(data.rglob("*.dcm")))
    assert 0 < stored_before_kill < len(files), "the kill did not land mid-stream"

    daemon = start_daemon(config, env, log)
    try:
        # Resend from a quarter in: overlaps what arrived and completes the stream.
        storescu(port, *files[len(files) // 4 :])
        storescu(port, *files[: len(files) // 4])
        pseudo = Pseudonymizer(SECRET.encode())
        want = {pseudo.uid(k): v for k, v in expected_series(corpus).items()}
        db = database(secantus, mongo_db_name)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            got = {d["_id"]: d.get("instance_count") for d in db["featureset"].find()}
            if got == want:
                break
            time.sleep(0.3)
        assert got == want
        assert db["featureset"].count_documents({}) == len(want)
        exe = str(Path(sys.executable).with_name("niffler-meta"))
        status = subprocess.run(
            [exe, "--config", str(config), "status", "--json"],
            env=env, capture_output=True, text=True, check=True, timeout=60,
        )  # fmt: skip
        figures = json.loads(status.stdout)
        assert figures["instances_received"] == len(files)
        assert figures["series_extracted"] == len(want)
        assert figures["store"].endswith("reachable")
    finally:
        daemon.send_signal(signal.SIGTERM)
        assert daemon.wait(30) == 0
    text = log.read_text()
    assert "niffler-meta stopped" in text
    for inst in corpus:  # no PHI in the log
        assert inst.patient_id not in text and inst.patient_name not in text
