"""niffler-cold against a real Orthanc on loopback: exactly the asked-for instances, verified, resumable."""

from __future__ import annotations

import csv
import dataclasses
import errno
import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result
from pydicom import dcmread

from niffler.cold_extraction.cli import main
from niffler.cold_extraction.retrieve import RESOLVE_KEYS, PacsSession, RetrievalFailed
from niffler.cold_extraction.run import LEDGER_NAME
from niffler.net import accel
from niffler.net.address import AEAddress
from niffler.net.writer import InstanceWriter
from niffler.testing.corpus import (
    MIXED_PATIENT,
    CorpusSpec,
    Instance,
    generate_corpus,
    make_instance,
    mixed_study,
)
from niffler.testing.dicomfiles import dataset_bytes
from niffler.testing.peers import (
    DcmqrscpPACS,
    DcmtkStoreSCP,
    OrthancPACS,
    PynetdicomQRSCP,
    free_port,
    run_dcmtk,
)

LOOPBACK = "127.0.0.1"
HOSTILE_ID = "../../x;$(touch PWNED)|`id`'"
# Study i of the corpus is on 2020-01-06 + 20*i days: Jan 6, Jan 26, Feb 15, Mar 6, Mar 26, Apr 15.
SPEC = CorpusSpec(patients=3, studies_per_patient=2, study_spacing_minutes=20 * 24 * 60)


@dataclasses.dataclass
class Pacs:
    orthanc: OrthancPACS | DcmqrscpPACS | PynetdicomQRSCP  # named for the usual PACS of these tests
    manifest: list[Instance]
    scp_port: int
    external_port: int

    def config(self, storage: Path, **keys: Any) -> dict[str, Any]:
        return {
            "SrcAet": f"{self.orthanc.aet}@{LOOPBACK}:{self.orthanc.dicom_port}",
            "QueryAet": f"NIFFLER:{self.scp_port}",
            "StorageFolder": str(storage),
            "Retries": 1,
            "RetryDelaySeconds": 0.05,
            "TimeoutSeconds": 20,
            **keys,
        }


def hostile_instances(out: Path, template: Instance) -> list[Instance]:
    """One study whose PatientID is shell metacharacters and a path escape."""
    made = []
    for i in range(2):
        inst = dataclasses.replace(
            template,
            path=out / f"hostile{i}.dcm",
            patient_id=HOSTILE_ID,
            accession="ACCHOSTILE",
            study_uid="1.2.826.0.1.3680043.8.498.999",
            series_uid="1.2.826.0.1.3680043.8.498.999.1",
            sop_uid=f"1.2.826.0.1.3680043.8.498.999.1.{i + 1}",
        )
        ds = make_instance(inst, study_time=inst.acquisition, series_number=1, instance_number=i + 1)
        ds.save_as(inst.path, enforce_file_format=True)
        made.append(inst)
    return made


def modality_of(instance: Instance) -> str:
    return instance.scanner.modality


@pytest.fixture(scope="module")
def pacs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pacs]:
    root = tmp_path_factory.mktemp("cold-pacs")
    manifest = generate_corpus(root / "corpus", SPEC)
    manifest += hostile_instances(root / "corpus", manifest[0])
    manifest += mixed_study(root / "corpus", manifest[0])
    scp_port, external_port = free_port(), free_port()
    orthanc = OrthancPACS(
        root / "orthanc",
        modalities={
            "niffler": ("NIFFLER", LOOPBACK, scp_port),
            "external": ("EXTERNAL", LOOPBACK, external_port),
        },
    ).start()
    orthanc.upload([i.path for i in manifest])
    yield Pacs(orthanc, manifest, scp_port, external_port)
    orthanc.stop()


def run_cold(
    pacs: Pacs, tmp_path: Path, rows: str, *args: str, name: str = "run", **keys: Any
) -> tuple[Result, Path]:
    storage = tmp_path / name / "storage"
    storage.parent.mkdir(parents=True, exist_ok=True)
    config = tmp_path / name / "cold.json"
    config.write_text(json.dumps(pacs.config(storage, **keys)))
    table = tmp_path / name / "rows.csv"
    table.write_text(rows, encoding="utf-8")
    result = CliRunner().invoke(main, ["--config", str(config), "--csv", str(table), *args])
    return result, storage


def retrieved(storage: Path, pattern: str = "*.dcm") -> set[str]:
    """SOPInstanceUIDs of every DICOM file under *storage* (each read back from disk)."""
    files = [p for p in storage.rglob(pattern) if p.is_file() and ".niffler-incoming" not in p.parts]
    uids = [str(dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in files]
    assert len(uids) == len(set(uids)), "an instance was stored twice"
    return set(uids)


def sops(pacs: Pacs, keep: Callable[[Instance], bool]) -> set[str]:
    found = {i.sop_uid for i in pacs.manifest if keep(i)}
    assert found, "the test's expectation selects nothing"
    return found


def study_of(pacs: Pacs, accession: str) -> str:
    return next(i.study_uid for i in pacs.manifest if i.accession == accession)


def report(storage: Path) -> list[dict[str, str]]:
    with open(storage / "retrieval-report.csv", newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


ROW_TYPES: list[tuple[str, Callable[[Pacs], str], dict[str, Any], Callable[[Instance], bool]]] = [
    ("patient-id", lambda p: "PatientID\n000002\n", {}, lambda i: i.patient_id == "000002"),
    (
        "patient-id-leading-zeros",
        lambda p: "PatientID\n000001\n",
        {},
        lambda i: i.patient_id == "000001",
    ),
    (
        "patient-id+accession",
        lambda p: "PatientID,AccessionNumber\n000001,ACC000000001\n",
        {},
        lambda i: i.accession == "ACC000000001",
    ),
    (
        "study-uid+patient-id",
        lambda p: f"StudyInstanceUID,PatientID\n{study_of(p, 'ACC000002001')},000003\n",
        {},
        lambda i: i.accession == "ACC000002001",
    ),
    (
        "accession-alone",
        lambda p: "AccessionNumber\nACC000001001\n",
        {},
        lambda i: i.accession == "ACC000001001",
    ),
    (
        "study-date-in-day-first-format",
        lambda p: "StudyDate\n15.02.2020\n",
        {"DateFormat": "%d.%m.%Y"},
        lambda i: i.study_date == "20200215",
    ),
    ("study-month", lambda p: "StudyMonth\n202003\n", {}, lambda i: i.study_date[:6] == "202003"),
    (
        "three-keys-legacy-columns",
        lambda p: "EMPI,Acc,When\n000003,ACC000002001,20200415\n",
        {"NumberOfQueryAttributes": 3},
        lambda i: i.accession == "ACC000002001",
    ),
]


@pytest.mark.parametrize(
    ("rows", "keys", "expected"), [r[1:] for r in ROW_TYPES], ids=[r[0] for r in ROW_TYPES]
)
def test_each_row_type_retrieves_exactly_its_instances(
    pacs: Pacs,
    tmp_path: Path,
    rows: Callable[[Pacs], str],
    keys: dict[str, Any],
    expected: Callable[[Instance], bool],
) -> None:
    result, storage = run_cold(pacs, tmp_path, rows(pacs), **keys)
    assert result.exit_code == 0, result.output
    want = sops(pacs, expected)
    assert retrieved(storage) == want
    [row] = report(storage)
    assert row["status"] == "done"
    assert int(row["instances_received"]) == int(row["instances_expected"]) == len(want)


@pytest.mark.parametrize("mode", ["move", "get"])
def test_studies_of_several_rows_come_in_one_list_transfer_each_checked_whole(
    pacs: Pacs, tmp_path: Path, mode: str
) -> None:
    """Three PatientID rows resolve to six studies; StudiesPerMove=1 asks for each on its own."""
    table = "PatientID\n000001\n000002\n000003\n"
    verb = "C-GET" if mode == "get" else "C-MOVE"
    listed, storage = run_cold(pacs, tmp_path / "listed", table, Mode=mode, StudiesPerMove=10)
    single, single_storage = run_cold(pacs, tmp_path / "single", table, Mode=mode, StudiesPerMove=1)
    for result, where in ((listed, storage), (single, single_storage)):
        assert result.exit_code == 0, result.output
        assert retrieved(where) == sops(pacs, lambda i: i.patient_id in ("000001", "000002", "000003"))
        assert [r["status"] for r in report(where)] == ["done"] * 3
    assert f"6 stud(ies) in 6 {verb}(s)" in single.output
    moves = int(re.search(rf"6 stud\(ies\) in (\d+) {verb}", listed.output).group(1))  # type: ignore[union-attr]
    assert moves <= 3  # at most one list per row, usually one for all
    studies = sqlite3.connect(storage / LEDGER_NAME).execute(
        "SELECT count(*) FROM entries WHERE namespace = 'cold.studies' AND state = 'done'"
    )
    assert studies.fetchone()[0] == 6


def test_every_one_of_many_c_finds_on_one_association_gets_its_match(pacs: Pacs) -> None:
    """pynetdicom's requestor loop could take a C-FIND's response first (its issue #875); ours leaves it.

    Without the accelerator the race is pynetdicom's own: a C-FIND that lost a
    response must fail (the run retries it), never return fewer matches.
    """
    studies = sorted({(i.patient_id, i.accession, i.study_uid) for i in pacs.manifest})
    peer = AEAddress.parse(f"ORTHANC@{LOOPBACK}:{pacs.orthanc.dicom_port}", "SrcAet")
    session = PacsSession(peer=peer, calling_aet="NIFFLER", mode="move", timeout=20)

    def find(identifiers: dict[str, str]) -> list[dict[str, str]]:
        for _ in range(3):
            try:
                return session.find(identifiers, RESOLVE_KEYS)
            except RetrievalFailed as exc:
                if accel.ENABLED or "issue #875" not in str(exc):
                    raise
        raise AssertionError("three C-FINDs in a row lost a response")

    try:
        found = []
        for k in range(300):
            patient, accession, _ = studies[k % len(studies)]
            matches = find({"PatientID": patient, "AccessionNumber": accession})
            found.append([m["StudyInstanceUID"] for m in matches])
        assert session._assoc is not None
        if accel.ENABLED:
            assert session._assoc._run_reactor.__name__ == "_run_requestor"
    finally:
        session.close()
    assert found == [[studies[k % len(studies)][2]] for k in range(300)]


def test_c_get_retrieves_the_same_instances_without_an_inbound_port(pacs: Pacs, tmp_path: Path) -> None:
    result, storage = run_cold(pacs, tmp_path, "StudyMonth\n202003\n", "--mode", "get")
    assert result.exit_code == 0, result.output
    assert retrieved(storage) == sops(pacs, lambda i: i.study_date[:6] == "202003")
    # Each file is stored byte for byte, and its File Meta names the PACS that sent it.
    by_sop = {i.sop_uid: i for i in pacs.manifest}
    files = [p for p in storage.rglob("*.dcm") if not p.name.startswith(".")]
    assert files
    for path in files:
        stored = dcmread(path)
        assert stored.file_meta.SourceApplicationEntityTitle == "ORTHANC"
        assert dataset_bytes(path) == dataset_bytes(by_sop[stored.SOPInstanceUID].path)


def test_external_destination_is_verified_by_the_pacs_counts(pacs: Pacs, tmp_path: Path) -> None:
    with DcmtkStoreSCP(tmp_path / "external", aet="EXTERNAL", port=pacs.external_port):
        result, storage = run_cold(pacs, tmp_path, "PatientID\n000002\n", DestAet="EXTERNAL")
    assert result.exit_code == 0, result.output
    assert retrieved(storage) == set()
    assert retrieved(tmp_path / "external", "*") == sops(pacs, lambda i: i.patient_id == "000002")
    assert report(storage)[0]["instances_received"] == "8"


def cfind_rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def expected_studies(pacs: Pacs, detailed: bool) -> list[dict[str, str]]:
    studies: dict[str, dict[str, str]] = {}
    for i in pacs.manifest:
        if i.patient_id in (HOSTILE_ID, MIXED_PATIENT):
            continue
        row = {
            "PatientID": i.patient_id,
            "StudyInstanceUID": i.study_uid,
            "AccessionNumber": i.accession,
            "StudyDescription": "CT CHEST",
        }
        if detailed:
            row |= {
                "StudyDate": i.study_date,
                "StudyTime": "080000",
                "DeviceSerialNumber": "SN0001",
                "ProtocolName": "ROUTINE CHEST",
                "PerformedProcedureStepDescription": "",
                "NumberOfStudyRelatedSeries": "2",
                "NumberOfStudyRelatedInstances": "4",
                "AcquisitionDate": i.study_date,
            }
        studies[i.study_uid] = row
    return list(studies.values())


@pytest.mark.parametrize("how", ["FilePath", "--mode"])
@pytest.mark.parametrize("detailed", [False, True], ids=["cfind-only", "cfind-detailed"])
def test_cfind_outputs_match_the_pacs(pacs: Pacs, tmp_path: Path, detailed: bool, how: str) -> None:
    mode = "cfind-detailed" if detailed else "cfind-only"
    args, keys = (("--mode", mode), {}) if how == "--mode" else ((), {"FilePath": mode.upper()})
    rows = "PatientID\n000001\n000002\n000003\n000001\n"
    result, storage = run_cold(pacs, tmp_path, rows, *args, **keys)
    assert result.exit_code == 0, result.output
    got = cfind_rows(storage / "cfind-output.csv")
    assert list(got[0]) == list(expected_studies(pacs, detailed)[0])  # the header is right
    key = lambda r: r["StudyInstanceUID"]  # noqa: E731
    assert sorted(got, key=key) == sorted(expected_studies(pacs, detailed), key=key)
    assert retrieved(storage) == set()
    assert [r["status"] for r in report(storage)] == ["done", "done", "done", "duplicate"]


def orthanc_file_of(orthanc: OrthancPACS, sop_uid: str) -> Path:
    [hit] = orthanc.rest("/tools/lookup", body=sop_uid.encode(), method="POST")
    uuid = orthanc.rest(f"/instances/{hit['ID']}/attachments/dicom/info")["Uuid"]
    return orthanc.workdir / "db" / uuid[:2] / uuid[2:4] / uuid


def test_a_broken_study_is_retried_then_failed_reporting_what_arrived_and_a_rerun_resumes(
    orthanc_factory: Callable[..., OrthancPACS], pacs: Pacs, tmp_path: Path
) -> None:
    scp_port = free_port()
    # No storage cache, so the PACS really reads the files it sends.
    orthanc = orthanc_factory({"niffler": ("NIFFLER", LOOPBACK, scp_port)}, MaximumStorageCacheSize=0)
    mine = [i for i in pacs.manifest if i.patient_id in ("000001", "000002")]
    orthanc.upload([i.path for i in mine])
    broken_study = [i for i in mine if i.accession == "ACC000000001"]
    # The PACS still lists its last instance but cannot read it: its C-MOVE sends the others, then
    # stops there (0xC000).
    [hit] = orthanc.rest("/tools/lookup", body=broken_study[0].study_uid.encode(), method="POST")
    last = orthanc.rest(f"/studies/{hit['ID']}/instances")[-1]["MainDicomTags"]["SOPInstanceUID"]
    lost = next(i for i in broken_study if i.sop_uid == last)
    orthanc_file_of(orthanc, lost.sop_uid).unlink()
    local = Pacs(orthanc, mine, scp_port, 0)
    rows = "PatientID\n000001\n000002\n"

    result, storage = run_cold(local, tmp_path, rows)
    assert result.exit_code == 2, result.output
    # The broken study came in a list move with others, which were kept; it then went alone, twice.
    assert "arrived whole, the rest go one by one" in result.output
    first, second = report(storage)
    assert first["status"] == "failed" and first["attempts"] == "1"
    assert "1 of 2 stud(ies) not retrieved" in first["error"]
    assert first["error"].endswith("(after 2 attempts)")  # 1 + Retries
    got = retrieved(storage)
    assert lost.sop_uid not in got and got <= {i.sop_uid for i in mine}
    partial = len(got & {i.sop_uid for i in broken_study})
    assert 1 <= partial <= 3, "the PACS sends some of the broken study's readable instances"
    # The failed row reports what arrived: its whole study and part of the broken one.
    assert (first["studies"], first["instances_expected"]) == ("2", "8")
    assert first["instances_received"] == str(4 + partial)
    assert (second["status"], second["instances_expected"], second["instances_received"]) == (
        "done",
        "8",
        "8",
    )
    assert len(got) == 12 + partial
    # The broken study's readable instances came in 3 transfers (the list move, then 2 alone):
    # the summary counts distinct instances, not deliveries.
    assert f", {12 + partial} instance(s)," in result.output
    inodes = {p: p.stat().st_ino for p in storage.rglob("*.dcm")}

    # Re-running the same command: done rows and done studies are not fetched again.
    result, storage = run_cold(local, tmp_path, rows)
    assert result.exit_code == 2, result.output
    assert "1 done earlier" in result.output
    assert f"in 2 C-MOVE(s), {partial} instance(s)," in result.output  # only the broken study, twice
    first, _ = report(storage)
    assert (first["status"], first["instances_received"]) == ("failed", str(4 + partial))
    broken_folder = broken_study[0].study_uid
    after = {p: p.stat().st_ino for p in storage.rglob("*.dcm")}
    assert {p: i for p, i in after.items() if broken_folder not in p.parts} == {
        p: i for p, i in inodes.items() if broken_folder not in p.parts
    }


@pytest.mark.parametrize("mode", ["move", "get"])
def test_a_full_disk_stops_the_run_with_rows_pending_and_a_rerun_completes(
    pacs: Pacs, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, mode: str
) -> None:
    """After a few files the disk is full: no retry storm, nothing marked done that is not on disk."""
    table = "PatientID\n000001\n000002\n000003\n"
    want = sops(pacs, lambda i: i.patient_id in ("000001", "000002", "000003"))
    real_write = InstanceWriter.write
    calls = {"written": 0, "refused": 0}

    def write_until_full(self: InstanceWriter, *args: Any, **kwargs: Any) -> Any:
        if calls["written"] >= 5:
            calls["refused"] += 1
            raise OSError(errno.ENOSPC, "No space left on device")
        calls["written"] += 1
        return real_write(self, *args, **kwargs)

    monkeypatch.setattr(InstanceWriter, "write", write_until_full)
    result, storage = run_cold(pacs, tmp_path, table, "--mode", mode)
    assert result.exit_code == 1, result.output
    assert "stopped: the storage disk is full" in result.output
    assert "Free space and run the same command again" in result.output
    assert 0 < calls["refused"] <= len(want) - 5  # one transfer's worth, not retried
    assert retrieved(storage) <= want and len(retrieved(storage)) == 5
    rows = report(storage)
    assert "failed" not in {r["status"] for r in rows}  # pending, to be served by the rerun
    assert "done" not in {r["status"] for r in rows} or all(
        int(r["instances_received"]) == int(r["instances_expected"]) for r in rows if r["status"] == "done"
    )

    monkeypatch.setattr(InstanceWriter, "write", real_write)
    result, storage = run_cold(pacs, tmp_path, table, "--mode", mode)
    assert result.exit_code == 0, result.output
    assert retrieved(storage) == want
    assert [r["status"] for r in report(storage)] == ["done"] * 3


def test_a_stopped_pacs_fails_the_rows_and_a_rerun_after_it_returns_fetches_them(
    orthanc_factory: Callable[..., OrthancPACS], pacs: Pacs, tmp_path: Path
) -> None:
    scp_port = free_port()
    orthanc = orthanc_factory({"niffler": ("NIFFLER", LOOPBACK, scp_port)})
    mine = [i for i in pacs.manifest if i.patient_id == "000003"]
    orthanc.upload([i.path for i in mine])
    local = Pacs(orthanc, mine, scp_port, 0)
    orthanc.stop()
    result, storage = run_cold(local, tmp_path, "PatientID\n000003\n")
    assert result.exit_code == 2, result.output
    [row] = report(storage)
    assert row["status"] == "failed"
    assert "connection refused" in row["error"] and row["error"].endswith("(after 2 attempts)")
    assert retrieved(storage) == set()

    orthanc.start()  # same ports, same database
    result, storage = run_cold(local, tmp_path, "PatientID\n000003\n")
    assert result.exit_code == 0, result.output
    assert retrieved(storage) == {i.sop_uid for i in mine}


def ledger_done(storage: Path) -> int:
    try:
        with sqlite3.connect(f"file:{storage / LEDGER_NAME}?mode=ro", uri=True) as db:
            return int(db.execute(
                "SELECT COUNT(*) FROM entries WHERE namespace = 'cold.rows' AND state = 'done'"
            ).fetchone()[0])  # fmt: skip
    except sqlite3.Error:
        return 0


@dataclasses.dataclass
class Background:
    """niffler-cold running as its own process against a PACS frozen (SIGSTOP) after two rows."""

    cold: subprocess.Popen[bytes]
    orthanc: OrthancPACS
    manifest: list[Instance]
    config: Path
    table: Path
    storage: Path


@pytest.fixture
def frozen_mid_run(orthanc_factory: Callable[..., OrthancPACS], tmp_path: Path) -> Iterator[Background]:
    manifest = generate_corpus(
        tmp_path / "corpus", CorpusSpec(patients=24, studies_per_patient=1, series_per_study=1, seed=7)
    )
    scp_port = free_port()
    orthanc = orthanc_factory({"niffler": ("NIFFLER", LOOPBACK, scp_port)})
    orthanc.upload([i.path for i in manifest])
    storage = tmp_path / "storage"
    config = tmp_path / "cold.json"
    config.write_text(json.dumps(Pacs(orthanc, manifest, scp_port, 0).config(storage, TimeoutSeconds=60)))
    table = tmp_path / "rows.csv"
    table.write_text("PatientID\n" + "".join(f"{p}\n" for p in sorted({i.patient_id for i in manifest})))
    cold = subprocess.Popen(
        [sys.executable, "-m", "niffler.cold_extraction", "--config", str(config), "--csv", str(table)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    assert orthanc.proc is not None
    pid = orthanc.proc.pid
    try:
        deadline = time.monotonic() + 60
        while ledger_done(storage) < 2 and time.monotonic() < deadline and cold.poll() is None:
            time.sleep(0.01)
        os.kill(pid, signal.SIGSTOP)  # freeze the PACS mid-run
        time.sleep(0.3)
        yield Background(cold, orthanc, manifest, config, table, storage)
    finally:
        os.kill(pid, signal.SIGCONT)
        if cold.poll() is None:
            cold.kill()
            cold.wait(10)


def test_kill_9_mid_run_then_rerun_fetches_only_what_is_not_done(frozen_mid_run: Background) -> None:
    run = frozen_mid_run
    run.cold.kill()
    run.cold.wait(10)
    os.kill(run.orthanc.proc.pid, signal.SIGCONT)  # type: ignore[union-attr]
    done = ledger_done(run.storage)
    assert 2 <= done < 24, "the run must be killed part-way"
    before = {p: p.stat().st_ino for p in run.storage.rglob("*.dcm")}

    result = CliRunner().invoke(main, ["--config", str(run.config), "--csv", str(run.table)])
    assert result.exit_code == 0, result.output
    assert f"{done} done earlier" in result.output
    assert retrieved(run.storage) == {i.sop_uid for i in run.manifest}
    assert [r["status"] for r in report(run.storage)] == ["done"] * 24
    # Files of rows done before the kill were not fetched again (a re-fetch replaces the inode).
    after = {p: p.stat().st_ino for p in run.storage.rglob("*.dcm")}
    kept = [p for p in before if after.get(p) == before[p]]
    assert len(kept) >= 2 * done  # two instances per done row


def test_sigterm_stops_cleanly_with_a_report_and_exit_130(frozen_mid_run: Background) -> None:
    run = frozen_mid_run
    run.cold.send_signal(signal.SIGTERM)
    assert run.cold.wait(10) == 130
    statuses = [r["status"] for r in report(run.storage)]
    assert len(statuses) == 24 and statuses.count("done") == ledger_done(run.storage) >= 2
    assert set(statuses) <= {"done", "not-finished", "not-attempted"} and "done" in statuses
    assert not set(statuses) <= {"done"}, "rows in flight must not be reported done"


def test_a_calling_ae_the_pacs_does_not_know_is_reported(pacs: Pacs, tmp_path: Path) -> None:
    result, storage = run_cold(pacs, tmp_path, "PatientID\n000001\n", QueryAet=f"STRANGER:{free_port()}")
    assert result.exit_code == 2, result.output
    [row] = report(storage)
    assert "aborted the association" in row["error"] and "STRANGER" in row["error"]


def test_hostile_cells_are_data_not_commands_or_paths(pacs: Pacs, tmp_path: Path) -> None:
    rows = f'PatientID\n"{HOSTILE_ID}"\n000001*\n'
    result, storage = run_cold(pacs, tmp_path, rows)
    assert result.exit_code == 2, result.output  # the wildcard row is refused
    hostile, wildcard = report(storage)
    assert hostile["status"] == "done" and json.loads(hostile["query"]) == {"PatientID": HOSTILE_ID}
    assert wildcard["status"] == "invalid" and "wildcard" in wildcard["error"]
    assert retrieved(storage) == sops(pacs, lambda i: i.patient_id == HOSTILE_ID)
    root = storage.resolve()
    for path in tmp_path.rglob("*"):
        assert path.name != "PWNED"  # what `touch PWNED` would have made
        if path.suffix == ".dcm":
            assert root in path.resolve().parents
    assert not Path("PWNED").exists()


def test_malformed_rows_are_reported_by_line_and_the_rest_retrieved(pacs: Pacs, tmp_path: Path) -> None:
    rows = "PatientID,StudyDate\n000001,2020-13-45\n,\n000002,20200215\n000003\n"
    result, storage = run_cold(pacs, tmp_path, rows)
    assert result.exit_code == 2, result.output
    lines = {r["line"]: r for r in report(storage)}
    assert lines["2"]["status"] == "invalid" and "DateFormat" in lines["2"]["error"]
    assert lines["3"]["status"] == "invalid" and "blank" in lines["3"]["error"]
    assert lines["4"]["status"] == "done"
    assert lines["5"]["status"] == "invalid" and "column" in lines["5"]["error"]
    assert retrieved(storage) == sops(pacs, lambda i: i.accession == "ACC000001000")


def test_a_missing_csv_is_a_clear_error(pacs: Pacs, tmp_path: Path) -> None:
    config = tmp_path / "cold.json"
    config.write_text(json.dumps(pacs.config(tmp_path / "s")))
    result = CliRunner().invoke(main, ["--config", str(config), "--csv", str(tmp_path / "nope.csv")])
    assert result.exit_code == 1
    assert "nope.csv does not exist" in result.output


def test_dry_run_prints_the_plan_and_sends_nothing(tmp_path: Path) -> None:
    config = tmp_path / "cold.json"
    config.write_text(
        json.dumps({"SrcAet": f"ORTHANC@{LOOPBACK}:{free_port()}", "StorageFolder": str(tmp_path / "s")})
    )
    table = tmp_path / "rows.csv"
    table.write_text("PatientID,StudyMonth\n000001,202002\n,x\n")
    result = CliRunner().invoke(main, ["--config", str(config), "--csv", str(table), "--dry-run"])
    assert result.exit_code == 2, result.output  # an invalid row: the verdict a real run would give
    assert "line 2: C-FIND STUDY PatientID=000001 StudyDate=20200201-20200229 -> move" in result.output
    assert "line 3: invalid: StudyMonth must be YYYYMM" in result.output
    assert not (tmp_path / "s").exists()


def test_completion_mail_carries_counts_not_identifiers(
    pacs: Pacs, tmp_path: Path, smtp_sink: tuple[int, list[str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    port, messages = smtp_sink
    monkeypatch.setenv("NIFFLER_SMTP_HOST", LOOPBACK)
    monkeypatch.setenv("NIFFLER_SMTP_PORT", str(port))
    result, _ = run_cold(
        pacs, tmp_path, "AccessionNumber\nACC000000000\n", SendEmail="true", YourEmail="team@example.org"
    )
    assert result.exit_code == 0, result.output
    [message] = messages
    assert "To: team@example.org" in message and "completed" in message
    assert "1 row(s): 1 retrieved" in message and "4 instance(s)" in message
    assert "ACC000000000" not in message and "000001" not in message


def test_echo_succeeds_and_diagnoses_failures(pacs: Pacs, tmp_path: Path) -> None:
    def echo(src: str) -> Result:
        config = tmp_path / "cold.json"
        config.write_text(json.dumps({"SrcAet": src, "TimeoutSeconds": 5}))
        return CliRunner().invoke(main, ["--config", str(config), "echo"])

    ok = echo(f"ORTHANC@{LOOPBACK}:{pacs.orthanc.dicom_port}")
    assert ok.exit_code == 0 and "0x0000 (Success)" in ok.output
    wrong_title = echo(f"NOTORTHANC@{LOOPBACK}:{pacs.orthanc.dicom_port}")
    assert wrong_title.exit_code == 1
    assert "rejected the association: Called AE title not recognised" in wrong_title.output
    closed = echo(f"ORTHANC@{LOOPBACK}:{free_port()}")
    assert closed.exit_code == 1 and "connection refused" in closed.output


# --- SERIES-level rows -------------------------------------------------------------------------


MIXED_MR_SERIES = "1.2.826.0.1.3680043.8.498.777.2"


def series_done(storage: Path) -> int:
    with sqlite3.connect(f"file:{storage / LEDGER_NAME}?mode=ro", uri=True) as db:
        return int(db.execute(
            "SELECT COUNT(*) FROM entries WHERE namespace = 'cold.series' AND state = 'done'"
        ).fetchone()[0])  # fmt: skip


def counts(row: dict[str, str]) -> tuple[str, ...]:
    keys = ("status", "level", "studies", "series", "instances_expected", "instances_received")
    return tuple(row[k] for k in keys)


@pytest.mark.parametrize("mode", ["move", "get"])
def test_a_series_uid_row_retrieves_exactly_its_series_and_a_rerun_fetches_nothing(
    pacs: Pacs, tmp_path: Path, mode: str
) -> None:
    want = sops(pacs, lambda i: i.series_uid == MIXED_MR_SERIES)
    table = f"SeriesInstanceUID\n{MIXED_MR_SERIES}\n"
    result, storage = run_cold(pacs, tmp_path, table, "--mode", mode)
    assert result.exit_code == 0, result.output
    assert retrieved(storage) == want
    [row] = report(storage)
    assert counts(row) == ("done", "SERIES", "1", "1", "2", "2")
    assert series_done(storage) == 1
    inodes = {p: p.stat().st_ino for p in storage.rglob("*.dcm")}

    result, storage = run_cold(pacs, tmp_path, table, "--mode", mode)
    assert result.exit_code == 0, result.output
    assert "1 done earlier" in result.output
    assert {p: p.stat().st_ino for p in storage.rglob("*.dcm")} == inodes


@pytest.mark.parametrize(
    ("table", "modality"),
    [
        (f"PatientID,Modality\n{MIXED_PATIENT},MR\n", "MR"),
        (f"PatientID,Modality\n{MIXED_PATIENT},CT\n", "CT"),
        ("Modality\nMR\n", "MR"),  # no study key: one SERIES-level C-FIND over every study
        ("AccessionNumber,SeriesNumber\nACCMIXED,2\n", "MR"),
    ],
    ids=["patient+MR", "patient+CT", "MR-alone", "accession+series-number"],
)
def test_a_row_with_series_keys_retrieves_exactly_the_matching_series(
    pacs: Pacs, tmp_path: Path, table: str, modality: str
) -> None:
    result, storage = run_cold(pacs, tmp_path, table)
    assert result.exit_code == 0, result.output
    assert retrieved(storage) == sops(
        pacs, lambda i: i.patient_id == MIXED_PATIENT and modality_of(i) == modality
    )
    [row] = report(storage)
    assert counts(row) == ("done", "SERIES", "1", "1", "2", "2")


@pytest.mark.parametrize("mode", ["move", "get"])
def test_series_of_one_study_come_in_one_series_level_list_transfer(
    pacs: Pacs, tmp_path: Path, mode: str
) -> None:
    """000001's CT series: 4 series in 2 studies, so 2 list transfers (4 if StudiesPerMove=1)."""
    table = "PatientID,Modality\n000001,CT\n"
    verb = "C-GET" if mode == "get" else "C-MOVE"
    listed, storage = run_cold(pacs, tmp_path / "listed", table, Mode=mode)
    single, single_storage = run_cold(pacs, tmp_path / "single", table, Mode=mode, StudiesPerMove=1)
    want = sops(pacs, lambda i: i.patient_id == "000001")
    for result, where in ((listed, storage), (single, single_storage)):
        assert result.exit_code == 0, result.output
        assert retrieved(where) == want
        [row] = report(where)
        assert counts(row) == ("done", "SERIES", "2", "4", "8", "8")
        assert series_done(where) == 4
    assert f"2 stud(ies), 4 series in 2 {verb}(s), 8 instance(s)" in listed.output
    assert f"2 stud(ies), 4 series in 4 {verb}(s), 8 instance(s)" in single.output


def test_a_series_row_in_cfind_only_mode_lists_the_studies_of_its_series(pacs: Pacs, tmp_path: Path) -> None:
    result, storage = run_cold(pacs, tmp_path, "Modality\nMR\n", "--mode", "cfind-only")
    assert result.exit_code == 0, result.output
    assert cfind_rows(storage / "cfind-output.csv") == [
        {
            "PatientID": MIXED_PATIENT,
            "StudyInstanceUID": "1.2.826.0.1.3680043.8.498.777",
            "AccessionNumber": "ACCMIXED",
            "StudyDescription": "CT CHEST",
        }
    ]
    [row] = report(storage)
    assert (row["status"], row["level"], row["studies"], row["series"]) == ("done", "SERIES", "1", "1")
    assert retrieved(storage) == set()


def test_dry_run_shows_series_level_queries(tmp_path: Path) -> None:
    config = tmp_path / "cold.json"
    config.write_text(
        json.dumps({"SrcAet": f"ORTHANC@{LOOPBACK}:{free_port()}", "StorageFolder": str(tmp_path)})
    )
    table = tmp_path / "rows.csv"
    table.write_text("PatientID,Modality,SeriesInstanceUID\n000001,MR,\n,,1.2.3\n")
    result = CliRunner().invoke(main, ["--config", str(config), "--csv", str(table), "--dry-run"])
    assert result.exit_code == 0, result.output
    assert (
        "line 2: C-FIND STUDY PatientID=000001, then SERIES Modality=MR in each study -> move"
        in result.output
    )
    assert "line 3: C-FIND SERIES SeriesInstanceUID=1.2.3 -> move" in result.output


# --- PACS that count differently: DCMTK's dcmqrscp, pynetdicom's qrscp ------------------------------


@pytest.fixture(scope="module", params=["dcmqrscp", "qrscp"])
def other_pacs(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pacs]:
    """A PACS that reports no NumberOf*RelatedInstances; qrscp also answers C-FIND once per instance."""
    root = tmp_path_factory.mktemp(request.param)
    manifest = generate_corpus(root / "corpus", CorpusSpec(patients=2, seed=4))
    scp_port = free_port()
    destinations = {"niffler": ("NIFFLER", LOOPBACK, scp_port)}
    server: DcmqrscpPACS | PynetdicomQRSCP
    if request.param == "dcmqrscp":
        server = DcmqrscpPACS(root / "pacs", destinations=destinations)
    else:
        server = PynetdicomQRSCP(root / "pacs", destinations=destinations)
    server.start()
    try:
        server.upload([i.path for i in manifest])
        yield Pacs(server, manifest, scp_port, 0)
    finally:
        server.stop()


@pytest.mark.parametrize("mode", ["move", "get"])
def test_a_pacs_without_counts_gives_exact_counts_and_a_blank_expected_count(
    other_pacs: Pacs, tmp_path: Path, mode: str
) -> None:
    patients = sorted({i.patient_id for i in other_pacs.manifest})
    series = other_pacs.manifest[0].series_uid
    table = "PatientID,SeriesInstanceUID\n" + "".join(f"{p},\n" for p in patients) + f",{series}\n"
    result, storage = run_cold(other_pacs, tmp_path, table, "--mode", mode)
    assert result.exit_code == 0, result.output
    assert retrieved(storage) == {i.sop_uid for i in other_pacs.manifest}
    first, second, by_series = report(storage)
    # 2 studies of 4 instances each, whatever number of matches the PACS sent for them.
    assert counts(first) == counts(second) == ("done", "PATIENT", "2", "", "", "8")
    assert counts(by_series) == ("done", "SERIES", "1", "1", "", "2")
    [summary] = [line for line in result.output.splitlines() if " row(s): " in line]
    verb = "C-GET" if mode == "get" else "C-MOVE"
    # dcmqrscp serves a list of StudyInstanceUIDs: its final status and sub-operations vouch for
    # all 4 studies at once. qrscp does not, so its studies go one by one after a first try.
    transfers = 2 if isinstance(other_pacs.orthanc, DcmqrscpPACS) else 6
    # Distinct instances: 16, and the series' 2 retrieved again for its own row.
    assert f"; 5 stud(ies), 1 series in {transfers} {verb}(s), 18 instance(s)," in summary, summary


# --- the receiver ------------------------------------------------------------------------------


def test_the_receiver_refuses_other_calling_aes_and_takes_the_pacs_and_listed_ones(
    pacs: Pacs, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """While the run retrieves from Orthanc, DCMTK storescu sends to our receiver as OTHER and as LISTED."""
    intruder = next(i for i in pacs.manifest if i.patient_id == "000002")
    listed = next(i for i in pacs.manifest if i.patient_id == "000003")
    sent: dict[str, Any] = {}
    real_transfer = PacsSession.transfer

    def send_first(self: PacsSession, targets: Any) -> Any:
        if not sent:
            for aet, inst in (("OTHER", intruder), ("LISTED", listed)):
                args = [
                    "/usr/bin/storescu",
                    "-v",
                    "-aet",
                    aet,
                    "-aec",
                    "NIFFLER",
                    LOOPBACK,
                    str(pacs.scp_port),
                ]
                sent[aet] = run_dcmtk([*args, str(inst.path)], timeout=60, check=False)
        return real_transfer(self, targets)

    monkeypatch.setattr(PacsSession, "transfer", send_first)
    result, storage = run_cold(pacs, tmp_path, "PatientID\n000001\n", AllowedCallingAets=["LISTED"])
    assert result.exit_code == 0, result.output
    assert "Storage SCP NIFFLER listening on 127.0.0.1:" in result.output  # not 0.0.0.0
    assert "receiver accepts ORTHANC, LISTED" in result.output
    refused = sent["OTHER"]
    assert refused.returncode != 0
    assert "Association Rejected" in refused.stdout + refused.stderr
    assert sent["LISTED"].returncode == 0, sent["LISTED"].stdout + sent["LISTED"].stderr
    assert retrieved(storage) == sops(pacs, lambda i: i.patient_id == "000001") | {listed.sop_uid}
    [row] = report(storage)
    assert counts(row) == ("done", "PATIENT", "2", "", "8", "8")
