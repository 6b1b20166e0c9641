"""niffler-cold over DICOMweb against a real Orthanc with Debian's DICOMweb plugin, side by side with DIMSE.

Both transports retrieve from the same Orthanc: the same SOP instances land
at the same paths with byte-identical datasets (so pixel data), and the
report counts agree. Authentication is Orthanc's own (registered users, a
Lua filter checking a bearer token), TLS is a real handshake with a
certificate made here, and the failures are real: a study deleted between
QIDO-RS and WADO-RS, Orthanc killed in the middle of a multipart answer.
What Orthanc cannot be made to do (a 503, a count it does not report, a body
cut at a chosen byte) comes from a small HTTP server of our own that serves
real DICOM files.
"""

from __future__ import annotations

import csv
import dataclasses
import errno
import http.server
import json
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result
from pydicom import dcmread

from niffler.cold_extraction.cli import main
from niffler.cold_extraction.config import ColdConfig
from niffler.cold_extraction.dicomweb import DicomWebSession, HttpSettings
from niffler.cold_extraction.retrieve import RESOLVE_KEYS, Receipts, RetrievalFailed
from niffler.cold_extraction.verdict import Target
from niffler.net.writer import INCOMING_DIR, InstanceStream, InstanceWriter
from niffler.testing.corpus import (
    MIXED_PATIENT,
    CorpusSpec,
    Instance,
    generate_corpus,
    mixed_study,
)
from niffler.testing.dicomfiles import dataset_bytes
from niffler.testing.peers import DICOMWEB_PLUGIN, OrthancPACS, TlsRelay, free_port, self_signed_certificate

LOOPBACK = "127.0.0.1"
# Study i is on 2020-01-06 + 20*i days: Jan 6, Jan 26, Feb 15, Mar 6, Mar 26, Apr 15.
SPEC = CorpusSpec(patients=3, studies_per_patient=2, study_spacing_minutes=20 * 24 * 60)
PASSWORD = "wonderland-7-Hatter"
TOKEN = "s3cret-bearer-token-42"
BEARER_FILTER = f"""
function IncomingHttpRequestFilter(method, uri, ip, username, httpHeaders)
  return httpHeaders['authorization'] == 'Bearer {TOKEN}'
end
"""


@pytest.fixture(scope="module", autouse=True)
def _dicomweb_plugin_installed() -> None:
    """Fail loudly, never skip, when Orthanc's DICOMweb plugin is missing: CI must have it."""
    if not Path(DICOMWEB_PLUGIN).is_file():
        pytest.fail(f"{DICOMWEB_PLUGIN} missing (Debian's orthanc-dicomweb): run scripts/install.sh", False)


@dataclasses.dataclass
class Archive:
    """A real Orthanc speaking DIMSE and DICOMweb, and what it holds."""

    orthanc: OrthancPACS
    manifest: list[Instance]
    scp_port: int

    def config(self, storage: Path, transport: str, **keys: Any) -> dict[str, Any]:
        return {
            "Transport": transport,
            "SrcAet": f"{self.orthanc.aet}@{LOOPBACK}:{self.orthanc.dicom_port}",
            "QueryAet": f"NIFFLER:{self.scp_port}",
            "DicomWebUrl": self.orthanc.dicomweb_url,
            "StorageFolder": str(storage),
            "Retries": 1,
            "RetryDelaySeconds": 0.05,
            "TimeoutSeconds": 20,
            **keys,
        }

    def sops(self, keep: Callable[[Instance], bool]) -> set[str]:
        found = {i.sop_uid for i in self.manifest if keep(i)}
        assert found, "the test's expectation selects nothing"
        return found


def start_archive(workdir: Path, manifest: list[Instance], **options: Any) -> Archive:
    scp_port = free_port()
    orthanc = OrthancPACS(
        workdir, modalities={"niffler": ("NIFFLER", LOOPBACK, scp_port)}, dicomweb=True, **options
    ).start()
    orthanc.upload([i.path for i in manifest])
    return Archive(orthanc, manifest, scp_port)


@pytest.fixture(scope="module")
def archive(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Archive]:
    root = tmp_path_factory.mktemp("dicomweb-pacs")
    manifest = generate_corpus(root / "corpus", SPEC)
    # One StudyDescription for the whole study: each transport reports the study-level value it keeps.
    manifest += mixed_study(root / "corpus", manifest[0], "CT AND MR")
    served = start_archive(root / "orthanc", manifest)
    yield served
    served.orthanc.stop()


@pytest.fixture
def archives(tmp_path: Path) -> Iterator[Callable[..., Archive]]:
    """Start Orthancs of one patient's two studies (options: users, extra...); stopped after the test."""
    started: list[Archive] = []

    def start(manifest: list[Instance] | None = None, **options: Any) -> Archive:
        if manifest is None:
            manifest = generate_corpus(tmp_path / f"corpus{len(started)}", CorpusSpec(patients=1, seed=3))
        served = start_archive(tmp_path / f"orthanc{len(started)}", manifest, **options)
        started.append(served)
        return served

    yield start
    for served in started:
        served.orthanc.stop()


def run_cold(
    config: dict[str, Any], folder: Path, rows: str, *args: str, env: dict[str, str] | None = None
) -> tuple[Result, Path]:
    storage = Path(config["StorageFolder"])
    folder.mkdir(parents=True, exist_ok=True)
    config_file = folder / "cold.json"
    config_file.write_text(json.dumps(config))
    table = folder / "rows.csv"
    table.write_text(rows, encoding="utf-8")
    result = CliRunner().invoke(main, ["--config", str(config_file), "--csv", str(table), *args], env=env)
    return result, storage


def run_both(
    archive: Archive, tmp_path: Path, rows: str, *args: str, **keys: Any
) -> dict[str, tuple[Result, Path]]:
    """Run the same CSV over DIMSE (C-MOVE) and over DICOMweb, each into its own storage folder."""
    runs = {}
    for transport in ("dimse", "dicomweb"):
        config = archive.config(tmp_path / transport / "storage", transport, **keys)
        runs[transport] = run_cold(config, tmp_path / transport, rows, *args)
    return runs


def files_by_sop(storage: Path) -> dict[str, Path]:
    """Every retrieved DICOM file under *storage* by its SOPInstanceUID (read back from disk)."""
    files = [p for p in storage.rglob("*.dcm") if p.is_file() and INCOMING_DIR not in p.parts]
    found = {str(dcmread(p, stop_before_pixels=True).SOPInstanceUID): p for p in files}
    assert len(found) == len(files), "an instance was stored twice"
    return found


def report(storage: Path) -> list[dict[str, str]]:
    with open(storage / "retrieval-report.csv", newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def counts(row: dict[str, str]) -> tuple[str, ...]:
    keys = ("status", "level", "studies", "series", "instances_expected", "instances_received", "error")
    return tuple(row[k] for k in keys)


def assert_no_identifiers(output: str, manifest: list[Instance], *secrets: str) -> None:
    """The log names no UID, accession, patient name and no secret."""
    for inst in manifest:
        for value in (inst.study_uid, inst.series_uid, inst.sop_uid, inst.accession, inst.patient_name):
            assert value not in output
    for secret in secrets:
        assert secret not in output


ROWS: list[tuple[str, str, dict[str, Any], Callable[[Instance], bool]]] = [
    (
        "patient-id+accession",
        "PatientID,AccessionNumber\n000001,ACC000000001\n",
        {},
        lambda i: i.accession == "ACC000000001",
    ),
    ("patient-id", "PatientID\n000002\n", {}, lambda i: i.patient_id == "000002"),
    (
        "patient-id+study-date-day-first",
        "PatientID,StudyDate\n000002,15.02.2020\n",
        {"DateFormat": "%d.%m.%Y"},
        lambda i: i.patient_id == "000002" and i.study_date == "20200215",
    ),
    ("study-month", "StudyMonth\n202003\n", {}, lambda i: i.study_date[:6] == "202003"),
    (
        "legacy-three-columns",
        "EMPI,Acc,When\n000003,ACC000002001,20200415\n",
        {"NumberOfQueryAttributes": 3},
        lambda i: i.accession == "ACC000002001",
    ),
    (
        "series-level-patient+modality",
        f"PatientID,Modality\n{MIXED_PATIENT},MR\n",
        {},
        lambda i: i.patient_id == MIXED_PATIENT and i.scanner.modality == "MR",
    ),
]


@pytest.mark.parametrize(("rows", "keys", "expected"), [r[1:] for r in ROWS], ids=[r[0] for r in ROWS])
def test_both_transports_retrieve_the_same_instances_byte_for_byte(
    archive: Archive,
    tmp_path: Path,
    rows: str,
    keys: dict[str, Any],
    expected: Callable[[Instance], bool],
) -> None:
    runs = run_both(archive, tmp_path, rows, **keys)
    want = archive.sops(expected)
    stored = {}
    for transport, (result, storage) in runs.items():
        assert result.exit_code == 0, (transport, result.output)
        stored[transport] = files_by_sop(storage)
        assert set(stored[transport]) == want, transport
    dimse_root, web_root = runs["dimse"][1], runs["dicomweb"][1]
    for sop, dimse_file in stored["dimse"].items():
        web_file = stored["dicomweb"][sop]
        assert web_file.relative_to(web_root) == dimse_file.relative_to(dimse_root)  # the same FilePath
        assert dataset_bytes(web_file) == dataset_bytes(dimse_file)
        assert dcmread(web_file).PixelData == dcmread(dimse_file).PixelData
    [dimse_row] = report(dimse_root)
    [web_row] = report(web_root)
    assert counts(web_row) == counts(dimse_row)
    assert web_row["status"] == "done" and int(web_row["instances_received"]) == len(want)
    web_output = runs["dicomweb"][0].output
    assert "WADO-RS request(s)" in web_output
    assert_no_identifiers(web_output, archive.manifest)
    assert not list((web_root / INCOMING_DIR).iterdir())


def test_a_rerun_over_dicomweb_fetches_nothing_again(archive: Archive, tmp_path: Path) -> None:
    config = archive.config(tmp_path / "storage", "dicomweb")
    result, storage = run_cold(config, tmp_path, "PatientID\n000001\n")
    assert result.exit_code == 0, result.output
    inodes = {p: p.stat().st_ino for p in storage.rglob("*.dcm")}
    assert len(inodes) == 8
    result, storage = run_cold(config, tmp_path, "PatientID\n000001\n000003\n")
    assert result.exit_code == 0, result.output
    assert "1 done earlier" in result.output
    assert "2 stud(ies) in 2 WADO-RS request(s), 8 instance(s)" in result.output
    after = {p: p.stat().st_ino for p in storage.rglob("*.dcm")}
    assert {p: after[p] for p in inodes} == inodes
    assert set(files_by_sop(storage)) == archive.sops(lambda i: i.patient_id in ("000001", "000003"))


@pytest.mark.parametrize("mode", ["cfind-only", "cfind-detailed"])
def test_query_only_output_is_the_same_over_both_transports(
    archive: Archive, tmp_path: Path, mode: str
) -> None:
    rows = f"PatientID\n000001\n000002\n000003\n000001\n{MIXED_PATIENT}\n"
    runs = run_both(archive, tmp_path, rows, "--mode", mode)
    outputs = {}
    for transport, (result, storage) in runs.items():
        assert result.exit_code == 0, (transport, result.output)
        with open(storage / "cfind-output.csv", newline="", encoding="utf-8") as handle:
            outputs[transport] = list(csv.reader(handle))
        assert files_by_sop(storage) == {}
        assert [r["status"] for r in report(storage)] == ["done", "done", "done", "duplicate", "done"]
    header = outputs["dimse"][0]
    assert outputs["dicomweb"][0] == header
    assert sorted(outputs["dicomweb"][1:]) == sorted(outputs["dimse"][1:])
    assert len(outputs["dicomweb"]) == 1 + 7  # 3 patients x 2 studies, and the mixed study
    uid = header.index("StudyInstanceUID")
    assert {r[uid] for r in outputs["dicomweb"][1:]} == {i.study_uid for i in archive.manifest}


def test_dry_run_shows_qido_searches(tmp_path: Path) -> None:
    config = tmp_path / "cold.json"
    config.write_text(json.dumps({"Transport": "dicomweb", "DicomWebUrl": f"http://{LOOPBACK}:9/dicom-web"}))
    table = tmp_path / "rows.csv"
    table.write_text("PatientID,StudyMonth\n000001,202002\n")
    result = CliRunner().invoke(main, ["--config", str(config), "--csv", str(table), "--dry-run"])
    assert result.exit_code == 0, result.output
    assert "line 2: QIDO-RS STUDY PatientID=000001 StudyDate=20200201-20200229 -> wado-rs" in result.output


# --- authentication and TLS ------------------------------------------------------------------------


def test_basic_auth_with_a_registered_user_and_a_wrong_password(
    archives: Callable[..., Archive], tmp_path: Path
) -> None:
    served = archives(users={"alice": PASSWORD})
    keys = {"DicomWebAuth": "basic", "DicomWebUser": "alice"}
    config = served.config(tmp_path / "ok" / "storage", "dicomweb", **keys)
    rows = f"PatientID\n{served.manifest[0].patient_id}\n"

    result, storage = run_cold(config, tmp_path / "ok", rows, env={"NIFFLER_DICOMWEB_PASSWORD": PASSWORD})
    assert result.exit_code == 0, result.output
    assert set(files_by_sop(storage)) == {i.sop_uid for i in served.manifest}
    assert "sends the password unencrypted" in result.output  # http:// on loopback: said, not refused
    assert_no_identifiers(result.output, served.manifest, PASSWORD)

    config = served.config(tmp_path / "bad" / "storage", "dicomweb", **keys)
    result, storage = run_cold(config, tmp_path / "bad", rows, env={"NIFFLER_DICOMWEB_PASSWORD": "guess"})
    assert result.exit_code == 2, result.output
    [row] = report(storage)
    assert row["status"] == "failed"
    assert row["error"] == (
        "QIDO-RS: HTTP 401 Unauthorized: the archive refused our credentials "
        "(check DicomWebUser and the password in $NIFFLER_DICOMWEB_PASSWORD)"
    )  # and not retried: no "(after 2 attempts)"
    assert "guess" not in result.output and "retry" not in result.output

    result, _ = run_cold(config, tmp_path / "unset", rows, env={"NIFFLER_DICOMWEB_PASSWORD": ""})
    assert result.exit_code == 1
    assert "environment variable NIFFLER_DICOMWEB_PASSWORD, which is not set" in result.output

    echo = tmp_path / "echo.json"
    echo.write_text(json.dumps(config))
    answered = CliRunner().invoke(
        main, ["--config", str(echo), "echo"], env={"NIFFLER_DICOMWEB_PASSWORD": PASSWORD}
    )
    assert answered.exit_code == 0 and "QIDO-RS http://127.0.0.1:" in answered.output
    assert "HTTP 200 OK" in answered.output
    refused = CliRunner().invoke(
        main, ["--config", str(echo), "echo"], env={"NIFFLER_DICOMWEB_PASSWORD": "x"}
    )
    assert refused.exit_code == 1 and "HTTP 401 Unauthorized" in refused.output


def test_a_password_in_the_config_file_or_the_url_is_refused(tmp_path: Path) -> None:
    base = {"Transport": "dicomweb", "DicomWebAuth": "basic", "DicomWebUser": "alice"}
    for keys in (
        {"DicomWebUrl": f"http://alice:{PASSWORD}@{LOOPBACK}:9/dicom-web"},
        {"DicomWebUrl": f"http://{LOOPBACK}:9/dicom-web", "DicomWebPassword": PASSWORD},
    ):
        config = tmp_path / "cold.json"
        config.write_text(json.dumps({**base, **keys}))
        table = tmp_path / "rows.csv"
        table.write_text("PatientID\n000001\n")
        result = CliRunner().invoke(main, ["--config", str(config), "--csv", str(table)])
        assert result.exit_code == 1, result.output
        assert PASSWORD not in result.output
        assert (
            "DicomWebPassword" in result.output or "must not carry a user name or password" in result.output
        )


def test_bearer_token_checked_by_the_archive(archives: Callable[..., Archive], tmp_path: Path) -> None:
    script = tmp_path / "bearer.lua"
    script.write_text(BEARER_FILTER)
    served = archives(extra={"LuaScripts": [str(script)]}, rest_headers={"Authorization": f"Bearer {TOKEN}"})
    rows = f"PatientID\n{served.manifest[0].patient_id}\n"
    config = served.config(tmp_path / "ok" / "storage", "dicomweb", DicomWebAuth="bearer")
    result, storage = run_cold(config, tmp_path / "ok", rows, env={"NIFFLER_DICOMWEB_TOKEN": TOKEN})
    assert result.exit_code == 0, result.output
    assert set(files_by_sop(storage)) == {i.sop_uid for i in served.manifest}
    assert_no_identifiers(result.output, served.manifest, TOKEN)

    config = served.config(tmp_path / "bad" / "storage", "dicomweb", DicomWebAuth="bearer")
    result, storage = run_cold(config, tmp_path / "bad", rows, env={"NIFFLER_DICOMWEB_TOKEN": "stale"})
    assert result.exit_code == 2, result.output
    [row] = report(storage)
    assert row["error"] == "QIDO-RS: HTTP 403 Forbidden: the archive does not let these credentials read this"


def test_tls_is_verified_by_default_and_a_ca_bundle_makes_the_archive_trusted(
    archive: Archive, tmp_path: Path
) -> None:
    cert, key = self_signed_certificate(tmp_path / "tls")
    rows = "PatientID,AccessionNumber\n000001,ACC000000000\n"
    with TlsRelay(archive.orthanc.http_port, cert, key) as relay:
        url = f"https://{LOOPBACK}:{relay.port}/dicom-web"
        config = archive.config(tmp_path / "untrusted" / "storage", "dicomweb", DicomWebUrl=url)
        result, storage = run_cold(config, tmp_path / "untrusted", rows)
        assert result.exit_code == 2, result.output
        [row] = report(storage)
        assert row["error"].startswith("QIDO-RS: the archive's TLS certificate did not verify (")
        assert row["error"].endswith("set DicomWebCaBundle to the PEM file of the CA that signed it")
        assert files_by_sop(storage) == {}

        config = archive.config(
            tmp_path / "trusted" / "storage", "dicomweb", DicomWebUrl=url, DicomWebCaBundle=str(cert)
        )
        result, storage = run_cold(config, tmp_path / "trusted", rows)
    assert result.exit_code == 0, result.output
    assert set(files_by_sop(storage)) == archive.sops(lambda i: i.accession == "ACC000000000")


# --- the archive changes or fails under us ---------------------------------------------------------


def test_a_study_deleted_between_qido_and_wado_is_reported_not_found_and_not_retried(
    archives: Callable[..., Archive], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    served = archives()
    doomed, kept = sorted({i.study_uid for i in served.manifest})
    real_transfer = DicomWebSession.transfer
    requests: list[str] = []

    def delete_first(self: DicomWebSession, targets: Any) -> Any:
        requests.append(targets[0].uid)
        if targets[0].uid == doomed and requests.count(doomed) == 1:
            [hit] = served.orthanc.rest("/tools/lookup", body=doomed.encode(), method="POST")
            served.orthanc.rest(f"/studies/{hit['ID']}", method="DELETE")
        return real_transfer(self, targets)

    monkeypatch.setattr(DicomWebSession, "transfer", delete_first)
    config = served.config(tmp_path / "storage", "dicomweb")
    result, storage = run_cold(config, tmp_path, f"PatientID\n{served.manifest[0].patient_id}\n")
    assert result.exit_code == 2, result.output
    [row] = report(storage)
    assert (row["status"], row["studies"], row["instances_expected"], row["instances_received"]) == (
        "failed", "2", "8", "4",
    )  # fmt: skip
    assert row["error"] == (
        "1 of 2 stud(ies) not retrieved; first: WADO-RS: HTTP 404 Not Found: the archive has no such "
        "study or series (deleted since QIDO-RS matched it?)"
    )
    assert requests.count(doomed) == 1  # a 404 is not retried
    assert set(files_by_sop(storage)) == {i.sop_uid for i in served.manifest if i.study_uid == kept}
    assert_no_identifiers(result.output, served.manifest)


def test_the_archive_killed_mid_transfer_fails_the_row_and_a_rerun_completes(
    archives: Callable[..., Archive], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The big study's multipart answer (16 MB) is cut when Orthanc dies after its first instance."""
    small = generate_corpus(
        tmp_path / "small", CorpusSpec(patients=1, studies_per_patient=1, series_per_study=1, seed=5)
    )
    big = generate_corpus(
        tmp_path / "big",
        CorpusSpec(patients=1, studies_per_patient=1, series_per_study=1, instances_per_series=32,
                   rows=512, columns=512, seed=6, distinct_uids=True),
    )  # fmt: skip
    big = [dataclasses.replace(i, patient_id="000777") for i in big]
    for inst in big:
        ds = dcmread(inst.path)
        ds.PatientID = "000777"
        ds.save_as(inst.path)
    served = archives(small + big)
    real_finish = InstanceStream.finish
    killed: list[int] = []

    def die_after_first(self: InstanceStream) -> Any:
        stored = real_finish(self)
        if stored.study_uid == big[0].study_uid and not killed:
            killed.append(served.orthanc.proc.pid)  # type: ignore[union-attr]
            served.orthanc.kill()
        return stored

    monkeypatch.setattr(InstanceStream, "finish", die_after_first)
    rows = f"PatientID\n{small[0].patient_id}\n000777\n"
    config = served.config(tmp_path / "storage", "dicomweb")
    result, storage = run_cold(config, tmp_path, rows)
    assert result.exit_code == 2, result.output
    assert killed
    done, failed = report(storage)
    assert (done["status"], done["instances_received"]) == ("done", "2")
    assert (failed["status"], failed["instances_expected"]) == ("failed", "32")
    assert 1 <= int(failed["instances_received"]) < 32
    # The cut answer was retried; by then the archive refused connections.
    [cut] = [line for line in result.output.splitlines() if "retry 1 of 1" in line]
    assert "WADO-RS: the multipart body ended before its closing boundary" in cut or "broke" in cut
    assert failed["error"] == (
        "1 of 1 stud(ies) not retrieved; first: WADO-RS: cannot connect to the archive (connection refused) "
        "(after 2 attempts)"
    )
    # What is on disk is whole: every file reads to its last pixel; nothing half-written is left.
    for path in files_by_sop(storage).values():
        assert len(dcmread(path).PixelData) == dcmread(path, stop_before_pixels=True).Rows ** 2 * 2
    assert not list((storage / INCOMING_DIR).iterdir())
    first = {p: p.stat().st_ino for p in storage.rglob("*.dcm")}

    monkeypatch.setattr(InstanceStream, "finish", real_finish)
    served.orthanc.start()  # same ports, same database
    result, storage = run_cold(config, tmp_path, rows)
    assert result.exit_code == 0, result.output
    assert "1 done earlier" in result.output
    assert [r["status"] for r in report(storage)] == ["done", "done"]
    assert set(files_by_sop(storage)) == {i.sop_uid for i in small + big}
    small_files = [p for p in first if small[0].study_uid in p.parts]
    assert small_files and all(p.stat().st_ino == first[p] for p in small_files)


def test_a_full_disk_stops_the_run_with_rows_pending_and_a_rerun_completes(
    archive: Archive, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    table = "PatientID\n000001\n000002\n000003\n"
    want = archive.sops(lambda i: i.patient_id in ("000001", "000002", "000003"))
    real_finish = InstanceStream.finish
    finished = {"count": 0}

    def finish_until_full(self: InstanceStream) -> Any:
        if finished["count"] >= 5:
            self.discard()
            raise OSError(errno.ENOSPC, "No space left on device")
        finished["count"] += 1
        return real_finish(self)

    monkeypatch.setattr(InstanceStream, "finish", finish_until_full)
    config = archive.config(tmp_path / "storage", "dicomweb")
    result, storage = run_cold(config, tmp_path, table)
    assert result.exit_code == 1, result.output
    assert "stopped: the storage disk is full" in result.output
    assert "retry" not in result.output  # no retry storm
    assert len(files_by_sop(storage)) == 5
    statuses = [r["status"] for r in report(storage)]
    assert "failed" not in statuses and statuses != ["done"] * 3  # pending, for the rerun
    assert not list((storage / INCOMING_DIR).iterdir())

    monkeypatch.setattr(InstanceStream, "finish", real_finish)
    result, storage = run_cold(config, tmp_path, table)
    assert result.exit_code == 0, result.output
    assert set(files_by_sop(storage)) == want
    assert [r["status"] for r in report(storage)] == ["done"] * 3


# --- faults Orthanc does not make: a small archive of our own ------------------------------------


class ScriptedArchive(http.server.ThreadingHTTPServer):
    """QIDO-RS and WADO-RS over real DICOM files, with faults on cue.

    *faults* is consumed one per WADO-RS request: ``503``, ``415``, ``cut``
    (close the connection after half the body; framed by the close, as
    Orthanc frames it), ``short`` (a Content-Length the body falls short
    of) or ``stall`` (half the body, then nothing until :attr:`release`).
    *counts* says whether QIDO-RS reports NumberOfStudyRelatedInstances;
    WADO-RS leaves out the last *withheld* instances.
    """

    def __init__(self, files: list[Instance], faults: list[str], counts: bool = True) -> None:
        super().__init__((LOOPBACK, 0), _ScriptedHandler)
        self.daemon_threads, self.block_on_close = True, False
        self.release = threading.Event()
        self.files = files
        self.faults = faults
        self.counts = counts
        self.withheld = 0
        self.requests: list[str] = []

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.server_address[1]}/dicom-web"


class _ScriptedHandler(http.server.BaseHTTPRequestHandler):
    server: ScriptedArchive

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _send(self, status: int, body: bytes, content_type: str, length: int | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        if length is not None:
            self.send_header("Content-Length", str(length))
        else:
            self.close_connection = True
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        archive = self.server
        path = self.path.split("?")[0].removeprefix("/dicom-web/")
        archive.requests.append(path)
        study = archive.files[0]
        if path == "studies":
            dataset = {
                "00100020": {"vr": "LO", "Value": [study.patient_id]},
                "0020000D": {"vr": "UI", "Value": [study.study_uid]},
            }
            if archive.counts:
                dataset["00201208"] = {"vr": "IS", "Value": [len(archive.files)]}
            body = json.dumps([dataset]).encode()
            self._send(200, body, "application/dicom+json", len(body))
        elif path == f"studies/{study.study_uid}/instances":
            body = json.dumps(
                [{"00080018": {"vr": "UI", "Value": [i.sop_uid]}} for i in archive.files]
            ).encode()
            self._send(200, body, "application/dicom+json", len(body))
        elif path == f"studies/{study.study_uid}":
            fault = archive.faults.pop(0) if archive.faults else ""
            if fault in ("503", "415"):
                self._send(int(fault), b"", "text/plain", 0)
                return
            boundary = uuid.uuid4().hex
            parts = [
                f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode()
                + i.path.read_bytes()
                + b"\r\n"
                for i in archive.files[: len(archive.files) - archive.withheld]
            ]
            body = b"".join(parts) + f"--{boundary}--\r\n".encode()
            content_type = f'multipart/related; type="application/dicom"; boundary={boundary}'
            if fault == "cut":
                self._send(200, body[: len(body) // 2], content_type)
            elif fault == "stall":
                self._send(200, body[: len(body) // 2], content_type)
                self.wfile.flush()
                archive.release.wait(30)
            elif fault == "short":
                self._send(200, body[: len(body) // 2], content_type, len(body))
            else:
                self._send(200, body, content_type)
        else:
            self._send(404, b"", "text/plain", 0)


@pytest.fixture
def scripted(corpus: list[Instance]) -> Iterator[Callable[..., ScriptedArchive]]:
    servers: list[ScriptedArchive] = []

    def start(faults: list[str], counts: bool = True) -> ScriptedArchive:
        study = [i for i in corpus if i.study_uid == corpus[0].study_uid]
        server = ScriptedArchive(study, list(faults), counts)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.release.set()
        server.shutdown()
        server.server_close()


def scripted_run(server: ScriptedArchive, tmp_path: Path, **keys: Any) -> tuple[Result, Path]:
    config = {
        "Transport": "dicomweb",
        "DicomWebUrl": server.url,
        "StorageFolder": str(tmp_path / "storage"),
        "Retries": 2,
        "RetryDelaySeconds": 0.01,
        "TimeoutSeconds": 10,
        **keys,
    }
    return run_cold(config, tmp_path, f"PatientID\n{server.files[0].patient_id}\n")


@pytest.mark.parametrize("faults", [["503"], ["cut"], ["short"], ["stall"], ["503", "cut"]])
def test_server_errors_timeouts_and_cut_bodies_are_retried_until_the_study_is_whole(
    scripted: Callable[..., ScriptedArchive], tmp_path: Path, faults: list[str]
) -> None:
    server = scripted(faults)
    result, storage = scripted_run(server, tmp_path, TimeoutSeconds=1)
    assert result.exit_code == 0, result.output
    assert server.requests.count(f"studies/{server.files[0].study_uid}") == len(faults) + 1
    assert set(files_by_sop(storage)) == {i.sop_uid for i in server.files}
    [row] = report(storage)
    assert (row["status"], row["instances_expected"], row["instances_received"]) == ("done", "4", "4")
    assert not list((storage / INCOMING_DIR).iterdir())
    retried = [line for line in result.output.splitlines() if "retry 1 of 2" in line]
    assert len(retried) == 1
    if faults[0] == "503":
        assert "WADO-RS: HTTP 503 Service Unavailable from the archive" in retried[0]
    elif faults[0] == "cut":
        assert "the multipart body ended before its closing boundary, in a part" in retried[0]
    elif faults[0] == "stall":
        assert "WADO-RS: the archive sent nothing for 1 s after " in retried[0]
    else:
        assert "the connection broke" in retried[0]


def test_a_study_that_stays_cut_short_fails_after_the_retries(
    scripted: Callable[..., ScriptedArchive], tmp_path: Path
) -> None:
    server = scripted(["cut", "cut", "cut"])
    result, storage = scripted_run(server, tmp_path)
    assert result.exit_code == 2, result.output
    [row] = report(storage)
    assert row["status"] == "failed" and row["error"].endswith("(after 3 attempts)")
    assert int(row["instances_received"]) < 4
    assert not list((storage / INCOMING_DIR).iterdir())


def test_an_unsupported_media_type_is_reported_at_once(
    scripted: Callable[..., ScriptedArchive], tmp_path: Path
) -> None:
    server = scripted(["415"])
    result, storage = scripted_run(server, tmp_path)
    assert result.exit_code == 2, result.output
    [row] = report(storage)
    assert row["error"] == (
        "1 of 1 stud(ies) not retrieved; first: WADO-RS: HTTP 415 Unsupported Media Type: the archive does "
        "not support the media type asked for (multipart/related application/dicom; try "
        "TransferSyntaxPolicy uncompressed)"
    )
    assert server.requests.count(f"studies/{server.files[0].study_uid}") == 1


def test_without_a_reported_count_the_instance_level_search_is_the_count(
    scripted: Callable[..., ScriptedArchive], tmp_path: Path
) -> None:
    server = scripted([], counts=False)
    result, storage = scripted_run(server, tmp_path)
    assert result.exit_code == 0, result.output
    study = server.files[0].study_uid
    assert server.requests == ["studies", f"studies/{study}/instances", f"studies/{study}"]
    [row] = report(storage)
    assert (row["instances_expected"], row["instances_received"]) == ("4", "4")

    # An archive that sends fewer instances than its instance-level search lists fails the study.
    server.withheld = 1
    result, storage = scripted_run(server, tmp_path / "short", StorageFolder=str(tmp_path / "short" / "s"))
    assert result.exit_code == 2, result.output
    [row] = report(storage)
    assert (row["status"], row["instances_expected"], row["instances_received"]) == ("failed", "4", "3")
    assert row["error"] == (
        "1 of 1 stud(ies) not retrieved; first: retrieved 3 instance(s) but QIDO-RS reported "
        "NumberOfStudyRelatedInstances 4 (after 3 attempts)"
    )


def test_dropping_the_session_cuts_a_stalled_transfer_at_once(
    scripted: Callable[..., ScriptedArchive], tmp_path: Path
) -> None:
    """What Ctrl-C does to a worker blocked reading a WADO-RS answer: no wait for TimeoutSeconds."""
    server = scripted(["stall"])
    settings = HttpSettings.from_config(
        ColdConfig(Transport="dicomweb", DicomWebUrl=server.url, TimeoutSeconds=30), {}
    )
    writer = InstanceWriter(tmp_path)
    writer.prepare()
    session = DicomWebSession(settings, mode="move", receipts=Receipts(), writer=writer)
    [match] = session.find_distinct({"PatientID": server.files[0].patient_id}, RESOLVE_KEYS)
    target = Target.from_match("STUDY", match)
    threading.Timer(0.5, session.drop).start()
    started = time.monotonic()
    with pytest.raises(RetrievalFailed, match=r"^WADO-RS: interrupted$"):
        session.transfer([target])
    assert time.monotonic() - started < 5
    with pytest.raises(RetrievalFailed, match="interrupted"):  # and it takes no further request
        session.find_distinct({"PatientID": "x"}, RESOLVE_KEYS)
    session.close()
    assert not list((tmp_path / INCOMING_DIR).iterdir())
