"""Fault tests: the PACS restarts under niffler-cold; SIGTERM reaches niffler-cold, niffler-png and
niffler-scanner-util. Every peer is real (Orthanc, DCMTK, SecantusDB) on 127.0.0.1, every command a
real process; each run is checked for exactly the seeded content, no duplicate, and an exact report.
"""

from __future__ import annotations

import contextlib
import csv
import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from pydicom import dcmread
from pymongo import MongoClient

from niffler.cold_extraction.run import LEDGER_NAME, REPORT_NAME
from niffler.testing.corpus import CorpusSpec, Instance, generate_corpus
from niffler.testing.faults import child_pids, crash, freeze, pid_alive, temp_files, wait_until
from niffler.testing.peers import OrthancPACS, SecantusServer, free_port, run_dcmtk

LOOPBACK = "127.0.0.1"
BIN = Path(sys.executable).parent
STORESCU = "/usr/bin/storescu"

# --- niffler-cold and a PACS that goes away ------------------------------------------------------

#: Six patients, one study each, of 2 x 40 instances of 256 x 256 x 16 bits (128 KB): 480 instances,
#: 63 MB, enough for a C-MOVE that a crash can land in the middle of.
COLD_SPEC = CorpusSpec(
    patients=6,
    studies_per_patient=1,
    series_per_study=2,
    instances_per_series=40,
    rows=256,
    columns=256,
    distinct_uids=True,
    seed=18,
)
PER_STUDY = COLD_SPEC.series_per_study * COLD_SPEC.instances_per_series
PIXEL_BYTES = COLD_SPEC.rows * COLD_SPEC.columns * 2
#: Stop the fault once this many instances are on disk: 2.5 studies, inside a study.
MID_RUN = PER_STUDY * 5 // 2


@pytest.fixture(scope="module")
def seeded(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[Instance]]:
    """The corpus every cold test seeds its own Orthanc with (read only)."""
    folder = tmp_path_factory.mktemp("faults-cold") / "corpus"
    return folder, generate_corpus(folder, COLD_SPEC)


@dataclass
class ColdRun:
    """A PACS seeded with the corpus, and a niffler-cold command against it (a real process)."""

    pacs: OrthancPACS
    manifest: list[Instance]
    scp_port: int
    folder: Path

    @property
    def storage(self) -> Path:
        return self.folder / "storage"

    @property
    def config(self) -> Path:
        return self.folder / "cold.json"

    @property
    def table(self) -> Path:
        return self.folder / "rows.csv"

    @property
    def patients(self) -> list[str]:
        return sorted({i.patient_id for i in self.manifest})

    def configure(self, **keys: Any) -> None:
        self.config.write_text(
            json.dumps({
                "SrcAet": f"{self.pacs.aet}@{LOOPBACK}:{self.pacs.dicom_port}",
                "QueryAet": f"NIFFLER:{self.scp_port}",
                "StorageFolder": str(self.storage),
                "TimeoutSeconds": 20,
                **keys,
            })
        )  # fmt: skip
        self.table.write_text("PatientID\n" + "".join(f"{p}\n" for p in self.patients))

    def command(self) -> list[str]:
        return [str(BIN / "niffler-cold"), "--config", str(self.config), "--csv", str(self.table)]

    def start(self, log: str = "cold.log") -> subprocess.Popen[bytes]:
        with open(self.folder / log, "wb") as handle:
            return subprocess.Popen(self.command(), stdout=handle, stderr=subprocess.STDOUT)

    @contextlib.contextmanager
    def running(self) -> Iterator[subprocess.Popen[bytes]]:
        """:meth:`start` it; kill it on the way out if it is still running."""
        cold = self.start()
        try:
            yield cold
        finally:
            if cold.poll() is None:
                cold.kill()
                cold.wait()

    def log(self, name: str = "cold.log") -> str:
        return (self.folder / name).read_text(errors="replace")

    def rerun(self) -> subprocess.CompletedProcess[str]:
        return subprocess.run(self.command(), capture_output=True, text=True, timeout=120)

    def instances_on_disk(self) -> int:
        """Instances at their final place (StorageFolder/PatientID/Study/Series/SOP.dcm), while a run goes."""
        return sum(1 for _ in self.storage.glob("*/*/*/*.dcm"))

    def crash_pacs(self) -> Counter[str]:
        """Crash the PACS mid-run; return the instances of each patient on disk when it stopped sending.

        (A graceful stop, SIGTERM, is no fault here: Orthanc then serves the association niffler-cold
        holds open until the run has all it asked for, and only then exits.)
        """
        assert self.pacs.proc is not None
        freeze(self.pacs.proc)  # what is on disk now is what the crash leaves
        time.sleep(0.2)  # an instance already on the wire is written
        on_disk = Counter(path.parts[-4] for path in self.storage.glob("*/*/*/*.dcm"))
        crash(self.pacs.proc)
        self.pacs.proc = None
        return on_disk


@pytest.fixture
def cold_run(
    orthanc_factory: Callable[..., OrthancPACS], seeded: tuple[Path, list[Instance]], tmp_path: Path
) -> Iterator[ColdRun]:
    corpus, manifest = seeded
    scp_port = free_port()
    pacs = orthanc_factory({"niffler": ("NIFFLER", LOOPBACK, scp_port)})
    seeder = [STORESCU, "-aet", "SEEDER", "-aec", pacs.aet, "+sd", "+r"]
    run_dcmtk([*seeder, LOOPBACK, str(pacs.dicom_port), str(corpus)])
    assert len(pacs.rest("/instances")) == len(manifest)
    yield ColdRun(pacs, manifest, scp_port, tmp_path)


@dataclass(frozen=True)
class Stored:
    path: Path
    sop_uid: str
    patient_id: str
    study_uid: str
    inode: int


def stored(storage: Path) -> list[Stored]:
    """Every DICOM file under *storage* but the receiver's own folders, each read back whole.

    A file at its final name is complete: its pixel data has every byte.
    """
    found = []
    for path in sorted(storage.rglob("*.dcm")):
        if any(part.startswith(".") for part in path.relative_to(storage).parts):
            continue
        ds = dcmread(path)
        assert len(ds.PixelData) == PIXEL_BYTES, f"{path} is not whole"
        found.append(Stored(path, ds.SOPInstanceUID, ds.PatientID, ds.StudyInstanceUID, path.stat().st_ino))
    return found


def assert_exactly_the_seeded_set(storage: Path, manifest: list[Instance]) -> list[Stored]:
    files = stored(storage)
    sops = Counter(f.sop_uid for f in files)
    assert [sop for sop, n in sops.items() if n > 1] == [], "an instance is on disk twice"
    assert set(sops) == {i.sop_uid for i in manifest}
    assert len(files) == len(manifest)
    assert temp_files([storage]) == [], "a temp file of an interrupted write is left"
    return files


def report(storage: Path) -> dict[str, dict[str, str]]:
    """retrieval-report.csv, keyed by the row's PatientID."""
    with open(storage / REPORT_NAME, newline="", encoding="utf-8") as handle:
        return {json.loads(row["query"])["PatientID"]: row for row in csv.DictReader(handle)}


def ledger_done(storage: Path, namespace: str) -> set[str]:
    with sqlite3.connect(f"file:{storage / LEDGER_NAME}?mode=ro", uri=True) as db:
        rows = db.execute("SELECT key FROM entries WHERE namespace = ? AND state = 'done'", (namespace,))
        return {key for (key,) in rows}


def assert_all_done_exactly(run: ColdRun) -> None:
    rows = report(run.storage)
    assert sorted(rows) == run.patients
    for row in rows.values():
        counts = (row["status"], row["level"], row["studies"], row["instances_expected"], row["error"])
        assert counts == ("done", "PATIENT", "1", str(PER_STUDY), ""), row
        assert row["instances_received"] == str(PER_STUDY), row


def summary_line(output: str) -> str:
    [line] = [line for line in output.splitlines() if " row(s): " in line]
    return line


@pytest.mark.parametrize("per_move", [10, 1], ids=["in-a-list-move", "in-a-study-move"])
def test_a_pacs_crashing_and_restarting_mid_extraction_is_ridden_through_with_nothing_duplicated(
    cold_run: ColdRun, per_move: int
) -> None:
    """The PACS goes away mid-run and is back within the retries: the running command finishes."""
    run = cold_run
    run.configure(Retries=5, RetryDelaySeconds=0.4, StudiesPerMove=per_move)
    cold = run.start()
    try:
        assert wait_until(lambda: run.instances_on_disk() >= MID_RUN, 60, proc=cold), run.log()
        on_disk = run.crash_pacs()
        down_for = time.monotonic()
        # Down long enough for the run's next requests to find no PACS.
        assert wait_until(lambda: "connection refused" in run.log(), 20, proc=cold), run.log()
        run.pacs.start()  # the same ports, the same database
        down_for = time.monotonic() - down_for
        rc = cold.wait(60)
    finally:
        if cold.poll() is None:
            cold.kill()
            cold.wait()
    output = run.log()
    assert rc == 0, output
    assert MID_RUN <= on_disk.total() < len(run.manifest), "the PACS must go away mid-run"
    assert any(0 < n < PER_STUDY for n in on_disk.values()), "the crash must cut a study short"
    assert down_for < 5, "the PACS was down longer than the retries wait"
    assert "retry 1 of 5" in output and "Traceback" not in output
    # The log says what happened, and does not send the operator to check our AE title.
    assert "aborted an association it had answered on (did it stop or restart?)" in output
    assert "configured on it" not in output
    assert_exactly_the_seeded_set(run.storage, run.manifest)
    assert_all_done_exactly(run)
    line = summary_line(output)
    assert line.startswith("6 row(s): 6 retrieved, 0 failed, 0 invalid, 0 duplicate, 0 done earlier; ")
    # Distinct instances, however often the PACS sent a study's first ones.
    assert f", {len(run.manifest)} instance(s), " in line
    assert ledger_done(run.storage, "cold.studies") == {i.study_uid for i in run.manifest}


def test_a_pacs_down_past_the_retries_fails_rows_exactly_and_a_rerun_resumes(cold_run: ColdRun) -> None:
    """A crash the retries do not outlast: exit 2, the report says what arrived; a rerun completes."""
    run = cold_run
    run.configure(Retries=1, RetryDelaySeconds=0.2)
    cold = run.start()
    try:
        assert wait_until(lambda: run.instances_on_disk() >= MID_RUN, 60, proc=cold), run.log()
        on_disk = run.crash_pacs()
        rc = cold.wait(60)
    finally:
        if cold.poll() is None:
            cold.kill()
            cold.wait()
    output = run.log()
    assert rc == 2, output
    assert "Traceback" not in output
    files = stored(run.storage)
    per_patient = Counter(f.patient_id for f in files)
    assert per_patient == on_disk and len({f.sop_uid for f in files}) == len(files)
    assert MID_RUN <= len(files) < len(run.manifest)
    assert any(0 < n < PER_STUDY for n in per_patient.values()), "the crash must cut a study short"
    done_rows = set()
    rows = report(run.storage)
    assert sorted(rows) == run.patients
    for patient, row in rows.items():
        arrived = per_patient.get(patient, 0)
        if row["status"] == "done":
            done_rows.add(patient)
            assert arrived == PER_STUDY
            assert (row["instances_expected"], row["instances_received"]) == (str(PER_STUDY), str(PER_STUDY))
            continue
        assert row["status"] == "failed", row
        assert "connection refused" in row["error"] and row["error"].endswith("(after 2 attempts)"), row
        if row["studies"]:  # resolved before the crash: the row says what of its study arrived
            assert (row["studies"], row["instances_expected"]) == ("1", str(PER_STUDY)), row
            assert row["instances_received"] == str(arrived), row
        else:  # its C-FIND found no PACS
            assert (row["instances_expected"], row["instances_received"], arrived) == ("", "", 0), row
    assert done_rows, "studies whole before the crash are done"
    assert done_rows == {p for p, n in per_patient.items() if n == PER_STUDY}
    assert summary_line(output).startswith(
        f"6 row(s): {len(done_rows)} retrieved, {6 - len(done_rows)} failed, 0 invalid"
    )
    kept = {f.path: f.inode for f in files if f.patient_id in done_rows}

    run.pacs.start()  # the same ports, the same database
    rerun = run.rerun()
    assert rerun.returncode == 0, rerun.stderr
    assert f"{len(done_rows)} done earlier" in summary_line(rerun.stderr)
    files = assert_exactly_the_seeded_set(run.storage, run.manifest)
    assert_all_done_exactly(run)
    attempts = {p: row["attempts"] for p, row in report(run.storage).items()}
    assert attempts == {p: "1" if p in done_rows else "2" for p in run.patients}
    # What was done before the crash was not fetched again (a new copy would be a new inode).
    assert {f.path: f.inode for f in files if f.path in kept} == kept


@pytest.mark.parametrize(
    ("per_move", "workers"), [(1, 1), (10, 1), (1, 2)], ids=["study-moves", "list-move", "two-receivers"]
)
def test_sigterm_mid_transfer_stops_cleanly_and_a_rerun_fetches_only_the_rest(
    cold_run: ColdRun, per_move: int, workers: int
) -> None:
    run = cold_run
    run.configure(StudiesPerMove=per_move, MaxNifflerProcesses=workers)
    with run.running() as cold:
        assert wait_until(lambda: run.instances_on_disk() >= MID_RUN, 60, proc=cold), run.log()
        receivers = child_pids(cold.pid)
        cold.send_signal(signal.SIGTERM)
        rc = cold.wait(15)
    output = run.log()
    assert rc == 130, output
    assert len(receivers) == (workers if workers > 1 else 0)
    assert wait_until(lambda: not any(pid_alive(pid) for pid in receivers), 5), "a receiver outlived the run"
    assert "interrupted" in output and "Traceback" not in output
    assert temp_files([run.storage]) == [], "an interrupted write left its temp file"
    # The state it left is consistent: every study the ledger calls done is whole on disk, every
    # file on disk is whole, and no row is reported done that is not.
    files = stored(run.storage)
    assert MID_RUN <= len(files) < len(run.manifest) and len({f.sop_uid for f in files}) == len(files)
    per_study = Counter(f.study_uid for f in files)
    done_studies = ledger_done(run.storage, "cold.studies")
    assert all(per_study[uid] == PER_STUDY for uid in done_studies)
    rows = report(run.storage)
    assert sorted(rows) == run.patients
    assert {r["status"] for r in rows.values()} <= {"done", "not-finished", "not-attempted"}
    done_rows = {p for p, r in rows.items() if r["status"] == "done"}
    if per_move == 1:  # each study is moved, verified and its row marked before the next starts
        assert len(done_rows) >= MID_RUN // PER_STUDY
    per_patient = Counter(f.patient_id for f in files)
    for patient in done_rows:
        assert per_patient[patient] == PER_STUDY
        assert (rows[patient]["instances_expected"], rows[patient]["instances_received"]) == (
            str(PER_STUDY),
            str(PER_STUDY),
        )
    assert "0 failed, 0 invalid, 0 duplicate, 0 done earlier (interrupted)" in summary_line(output)
    kept = {f.path: f.inode for f in files if f.study_uid in done_studies}

    rerun = run.rerun()
    assert rerun.returncode == 0, rerun.stderr
    assert f"{len(done_rows)} done earlier" in summary_line(rerun.stderr)
    files = assert_exactly_the_seeded_set(run.storage, run.manifest)
    assert_all_done_exactly(run)
    assert {f.path: f.inode for f in files if f.path in kept} == kept


def test_two_workers_receive_in_two_processes_exactly_and_leave_none_behind(cold_run: ColdRun) -> None:
    run = cold_run
    run.configure(MaxNifflerProcesses=2, StudiesPerMove=1)
    with run.running() as cold:
        assert wait_until(lambda: len(child_pids(cold.pid)) == 2, 20, proc=cold), run.log()
        receivers = child_pids(cold.pid)
        rc = cold.wait(60)
    output = run.log()
    assert rc == 0, output
    assert "2 receiver processes" in output and "Traceback" not in output
    assert_exactly_the_seeded_set(run.storage, run.manifest)
    assert_all_done_exactly(run)
    assert f", {len(run.manifest)} instance(s), " in summary_line(output)
    assert not any(pid_alive(pid) for pid in receivers)


def test_a_receiver_process_killed_mid_move_costs_a_retry_not_an_instance(cold_run: ColdRun) -> None:
    """One of two receiver processes dies (-9) with a move in flight; the other serves the retries."""
    run = cold_run
    run.configure(MaxNifflerProcesses=2, StudiesPerMove=1, Retries=5, RetryDelaySeconds=0.2)
    with run.running() as cold:
        assert wait_until(lambda: run.instances_on_disk() >= PER_STUDY // 2, 60, proc=cold), run.log()
        victim, survivor = sorted(child_pids(cold.pid), key=lambda pid: _open_sockets(pid), reverse=True)
        os.kill(victim, signal.SIGKILL)
        rc = cold.wait(90)
    output = run.log()
    assert rc == 0, output
    assert f"receiver process {victim} ended unexpectedly" in output
    assert "C-MOVE ended with status 0xC000" in output and "retry 1 of 5" in output  # the move it served
    assert "6 stud(ies) in 7 C-MOVE(s)" in summary_line(output)
    assert_exactly_the_seeded_set(run.storage, run.manifest)
    assert_all_done_exactly(run)
    assert not pid_alive(survivor)


def test_receivers_end_when_niffler_cold_is_killed_and_a_rerun_completes(cold_run: ColdRun) -> None:
    """kill -9 of niffler-cold: its receivers see their channel close and exit; nothing half-written.

    A receiver killed with a write in flight can leave a temp file under .niffler-incoming (never
    at a final name); the next run sweeps them before it listens.
    """
    run = cold_run
    run.configure(MaxNifflerProcesses=2)
    with run.running() as cold:
        assert wait_until(lambda: run.instances_on_disk() >= MID_RUN, 60, proc=cold), run.log()
        receivers = child_pids(cold.pid)
        assert len(receivers) == 2
        cold.kill()
        cold.wait(10)
        assert wait_until(lambda: not any(pid_alive(pid) for pid in receivers), 10), "orphaned receivers"
    assert MID_RUN <= len(stored(run.storage)) < len(run.manifest)  # each file at its final name is whole
    rerun = run.rerun()
    assert rerun.returncode == 0, rerun.stderr
    assert_exactly_the_seeded_set(run.storage, run.manifest)  # no temp file left either
    assert_all_done_exactly(run)


@pytest.mark.parametrize("workers", [1, 2])
def test_a_receiver_port_already_taken_fails_at_once_naming_it(cold_run: ColdRun, workers: int) -> None:
    run = cold_run
    run.configure(MaxNifflerProcesses=workers)
    with socket.create_server((LOOPBACK, run.scp_port)):
        result = run.rerun()
    assert result.returncode == 1, result.stderr
    assert f"cannot listen on {LOOPBACK}:{run.scp_port} as NIFFLER" in result.stderr
    assert "Traceback" not in result.stderr
    assert not run.storage.exists() or stored(run.storage) == []


def _open_sockets(pid: int) -> int:
    """How many sockets process *pid* holds (a receiver serving a move holds one more)."""
    count = 0
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            count += os.readlink(fd).startswith("socket:")
        except OSError:
            continue
    return count


# --- niffler-png -------------------------------------------------------------------------------------

PNG_SECRET = "faults-png-secret-0123456789"
PNG_CONFIG = Path(__file__).resolve().parents[2] / "configs" / "png_extraction.json"
#: 300 single-frame 512 x 512 instances: a few seconds of conversion.
PNG_SPEC = CorpusSpec(
    patients=10,
    studies_per_patient=3,
    series_per_study=2,
    instances_per_series=5,
    rows=512,
    columns=512,
    distinct_uids=True,
    seed=19,
)
PNG_LEDGER = ".niffler-png-progress.sqlite"


@pytest.fixture(scope="module")
def png_home(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[Instance]]:
    """A DICOMHome every png test converts (read only)."""
    folder = tmp_path_factory.mktemp("faults-png") / "home"
    return folder, generate_corpus(folder, PNG_SPEC)


def png_done(out: Path) -> int:
    try:
        with sqlite3.connect(f"file:{out / PNG_LEDGER}?mode=ro", uri=True) as db:
            return int(db.execute("SELECT COUNT(*) FROM entries WHERE state = 'done'").fetchone()[0])
    except sqlite3.Error:
        return 0


def read_rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def assert_png_outputs_agree(out: Path, converted: int) -> dict[Path, int]:
    """metadata.csv, mapping.csv and the PNGs they name say the same: *converted* files; PNG -> inode."""
    metadata = read_rows(out / "metadata.csv")
    mapping = read_rows(out / "mapping.csv")
    assert len(metadata) == len(mapping) == converted
    keys = [row["instance_key"] for row in metadata]
    assert len(set(keys)) == converted and sorted(keys) == sorted(row["instance_key"] for row in mapping)
    assert len({row["dicom_path"] for row in mapping}) == converted
    assert read_rows(out / "failures.csv") == []
    pngs = {out / row["png_path"] for row in mapping}
    for path in pngs:
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 100_000, path
    return {path: path.stat().st_ino for path in pngs}


@pytest.mark.parametrize("processes", [1, 2], ids=["in-process", "process-pool"])
def test_png_sigterm_mid_batch_stops_cleanly_and_a_rerun_converts_only_the_rest(
    png_home: tuple[Path, list[Instance]], tmp_path: Path, processes: int
) -> None:
    home, manifest = png_home
    out = tmp_path / "out"
    args = [
        str(BIN / "niffler-png"),
        "--config",
        str(PNG_CONFIG),
        "--dicom-home",
        str(home),
        "--output-directory",
        str(out),
        "--use-processes",
        str(processes),
    ]
    env = {**os.environ, "NIFFLER_DEID_KEY": PNG_SECRET}
    with open(tmp_path / "png.log", "wb") as log:
        proc = subprocess.Popen(args, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        assert wait_until(lambda: png_done(out) >= 48, 60, interval=0.01, proc=proc)
        workers = child_pids(proc.pid)
        proc.send_signal(signal.SIGTERM)
        rc = proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    output = (tmp_path / "png.log").read_text()
    assert rc == 130, output
    assert "interrupted" in output and "Traceback" not in output
    assert len(workers) >= (processes if processes > 1 else 0)
    assert wait_until(lambda: not any(pid_alive(pid) for pid in workers), 10), "a worker outlived the stop"
    assert temp_files([out]) == []
    done = png_done(out)
    assert 48 <= done < len(manifest), "the stop must come mid-batch"
    # The CSVs say what the ledger says: every file converted before the stop, each once.
    kept = assert_png_outputs_agree(out, done)

    rerun = subprocess.run(args, env=env, capture_output=True, text=True, timeout=120)
    assert rerun.returncode == 0, rerun.stderr
    assert f"converted now: {len(manifest) - done} " in rerun.stderr
    assert f"done or failed in an earlier run: {done}\n" in rerun.stderr
    final = assert_png_outputs_agree(out, len(manifest))
    assert sorted(out.glob("extracted-images/*/*.png")) == sorted(final), "a PNG no row names"
    assert temp_files([out]) == []
    sources = {Path(row["dicom_path"]) for row in read_rows(out / "mapping.csv")}
    assert sources == {i.path for i in manifest}
    # PNGs written before the stop were not written again (a rewrite is a new inode).
    assert {path: final[path] for path in kept} == kept


# --- niffler-scanner-util ------------------------------------------------------------------------

SCANNERS = 20
SERIES_PER_SCANNER = 200


def busy_day() -> list[dict[str, Any]]:
    """Series documents as niffler-meta writes them: 20 scanners, each a series every 4 minutes from 06:00.

    Two series per study, two studies per patient: 200 series, 100 studies, 50 patients per scanner.
    """
    docs = []
    for s in range(SCANNERS):
        for j in range(SERIES_PER_SCANNER):
            acquired = datetime(2020, 1, 6, 6) + timedelta(minutes=4 * j)
            arrived = acquired + timedelta(minutes=2)
            key = f"{s}-{j}"
            docs.append({
                "_id": key, "series_key": key, "PatientID": f"P{s}-{j // 4}",
                "StudyInstanceUID": f"S{s}-{j // 2}", "SeriesInstanceUID": f"X{key}", "StudyDate": "20200106",
                "AcquisitionDate": "20200106", "AcquisitionTime": acquired.strftime("%H%M%S.000000"),
                "ImageType": ["ORIGINAL", "PRIMARY"], "Modality": "CT", "DeviceSerialNumber": f"SN{s:02d}",
                "StationName": f"ST{s:02d}", "Manufacturer": "ACME", "ManufacturerModelName": "M",
                "instance_count": 10, "received_at": {"first": arrived, "last": arrived},
            })  # fmt: skip
    return docs


@dataclass
class UtilizationRun:
    """niffler-scanner-util's utilization report of one day, each run a real process in its own folder."""

    uri: str
    database: str
    folder: Path

    def start(self, name: str) -> subprocess.Popen[bytes]:
        where = self.folder / name
        where.mkdir()
        config = self.folder / f"{name}.json"
        config.write_text(json.dumps({"DatabaseName": self.database}))
        args = [str(BIN / "niffler-scanner-util"), "--config", str(config), "--mongo-uri", self.uri]
        args += ["utilization", "--date", "20200106", "--out", "u.csv", "--plot", "u.html"]
        with open(self.folder / f"{name}.log", "wb") as log:
            return subprocess.Popen(args, cwd=where, stdout=log, stderr=subprocess.STDOUT)

    def log(self, name: str) -> str:
        return (self.folder / f"{name}.log").read_text(errors="replace")

    def outputs(self, name: str) -> dict[str, bytes]:
        """Every file the run left in its folder, by name (temp files included)."""
        return {p.name: p.read_bytes() for p in sorted((self.folder / name).iterdir())}

    def interrupted(self, name: str, ready: Callable[[subprocess.Popen[bytes]], bool]) -> int:
        """Start a run, SIGTERM it once *ready* holds; return its exit code."""
        proc = self.start(name)
        try:
            assert wait_until(lambda: ready(proc), 60, interval=0.001, proc=proc), self.log(name)
            proc.send_signal(signal.SIGTERM)
            return proc.wait(30)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def test_scanner_util_sigterm_stops_cleanly_leaving_no_partial_output_and_a_rerun_writes_it_all(
    secantus: SecantusServer, mongo_db_name: str, tmp_path: Path
) -> None:
    with MongoClient(secantus.uri) as client:
        client[mongo_db_name]["featureset"].insert_many(busy_day())
    util = UtilizationRun(secantus.uri, mongo_db_name, tmp_path)

    # The reference: an uninterrupted run.
    reference = util.start("reference")
    assert reference.wait(60) == 0, util.log("reference")
    expected = util.outputs("reference")
    assert sorted(expected) == ["u-encounters.csv", "u-idle-gaps.csv", "u.csv", "u.html"]
    with open(tmp_path / "reference" / "u.csv", newline="") as handle:
        days = {row["scanner"]: row for row in csv.DictReader(handle)}
    assert sorted(days) == [f"SN{s:02d}" for s in range(SCANNERS)]
    for day in days.values():
        assert (day["series"], day["studies"], day["patients"]) == ("200", "100", "50")

    # SIGTERM while it queries the store (it logs the store once connected), then as soon as its first
    # output file appears (a temp file, if it writes atomically): exit 130, and only whole files.
    moments = {
        "querying": lambda proc: "metadata store:" in util.log("querying"),
        "writing": lambda proc: any((tmp_path / "writing").iterdir()),
    }
    for name, ready in moments.items():
        rc = util.interrupted(name, ready)
        output = util.log(name)
        assert rc == 130, output
        assert "interrupted" in output and "Traceback" not in output
        left = util.outputs(name)
        assert [n for n in left if n not in expected] == [], "a temp or partial file is left"
        assert all(left[n] == expected[n] for n in left), "an output file is not whole"
        if name == "querying":
            assert left == {}

    # The same command again writes every output, exactly as the uninterrupted run did.
    rerun = util.start("rerun")
    assert rerun.wait(60) == 0, util.log("rerun")
    assert util.outputs("rerun") == expected
