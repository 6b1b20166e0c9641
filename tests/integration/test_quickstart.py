"""The quick start, end to end: scripts/quickstart.sh in a fresh folder, judged by what it leaves there.

The install step is skipped (NIFFLER_SKIP_INSTALL=1: this environment is the
installed one). Everything else is the README's command: a real Orthanc, the
four console scripts as their own processes, the embedded store.
"""

from __future__ import annotations

import csv
import json
import os
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest

from niffler.common.store import open_store
from niffler.testing import demo
from niffler.testing.department import EXAMS, MISCONFIGURED, PATIENTS, SCANNERS

REPO = Path(__file__).resolve().parents[2]
QUICKSTART = REPO / "scripts" / "quickstart.sh"
SAMPLE_CSV = REPO / "configs" / "sample-studies.csv"
BIN = Path(sys.executable).parent
SERIES = sum(len(e.series) for e in EXAMS)
INSTANCES = {
    e.accession: len(e.series) * next(s.instances for s in SCANNERS if s.scanner.station == e.station)
    for e in EXAMS
}


def quickstart_env() -> dict[str, str]:
    return {**os.environ, "NIFFLER_SKIP_INSTALL": "1", "NIFFLER_VENV": str(BIN.parent)}


def rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def processes_in(work: Path) -> list[str]:
    """Processes whose command line names *work* or whose working directory is in it."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            cwd = os.readlink(entry / "cwd")
        except OSError:
            continue
        if str(work) in cmdline or cwd == str(work) or cwd.startswith(str(work) + os.sep):
            found.append(f"{entry.name}: {cmdline.strip()}")
    return found


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, subprocess.CompletedProcess[str]]]:
    work = tmp_path_factory.mktemp("quickstart") / "demo"
    started = time.monotonic()
    proc = subprocess.run(
        ["bash", str(QUICKSTART), str(work)],
        env=quickstart_env(),
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert proc.returncode == 0, f"stdout:\n{proc.stdout[-3000:]}\nstderr:\n{proc.stderr[-3000:]}"
    assert time.monotonic() - started < 120
    yield work, proc


def department_studies(work: Path) -> dict[tuple[str, str], str]:
    """(PatientID, AccessionNumber) -> StudyInstanceUID, from the generated files themselves."""
    out = {}
    for path in (work / "department").rglob("*.dcm"):
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        out[(str(ds.PatientID), str(ds.AccessionNumber))] = str(ds.StudyInstanceUID)
    return out


def test_every_process_it_started_is_stopped(run: tuple[Path, subprocess.CompletedProcess[str]]) -> None:
    work, proc = run
    assert processes_in(work) == []
    assert "nothing the quick start started is still running" in proc.stdout


def test_the_store_holds_the_whole_day_phi_free(run: tuple[Path, subprocess.CompletedProcess[str]]) -> None:
    work, _ = run
    store = open_store(None, database="ScannersInfo", data_dir=work / "meta" / "state" / "store")
    try:
        series = list(store.db["featureset"].find({}))
        studies = store.db["featureset.studies"].count_documents({})
    finally:
        store.close()
    assert len(series) == SERIES == 49
    assert studies == len(EXAMS) == 19
    assert sum(doc["instance_count"] for doc in series) == sum(INSTANCES.values()) == 216
    assert {doc["DeviceSerialNumber"] for doc in series} == {s.serial for s in SCANNERS}
    text = repr(series)
    for patient in PATIENTS:
        assert patient.patient_id not in text
        assert patient.name.split("^")[0] not in text
    for exam in EXAMS:
        assert exam.accession not in text


def test_niffler_cold_retrieved_exactly_the_sample_csv_studies(
    run: tuple[Path, subprocess.CompletedProcess[str]],
) -> None:
    work, _ = run
    by_key = department_studies(work)
    wanted: dict[str, str] = {}  # StudyInstanceUID -> accession
    for row in rows(SAMPLE_CSV):
        for (patient, accession), uid in by_key.items():
            if patient == row["PatientID"] and row["AccessionNumber"] in ("", accession):
                wanted[uid] = accession
    # The CSV: one CT of a patient with two CT studies today, an MR, and every study of a patient
    # seen on the CT and on the X-ray room with the wrong clock.
    assert sorted(wanted.values()) == ["RA24071001", "RA24071003", "RA24071008", "RA24071012"]
    retrieved: dict[str, set[str]] = {}
    for path in (work / "cold").rglob("*.dcm"):
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        retrieved.setdefault(str(ds.StudyInstanceUID), set()).add(str(ds.SOPInstanceUID))
    assert set(retrieved) == set(wanted)
    for uid, accession in wanted.items():
        assert len(retrieved[uid]) == INSTANCES[accession]
    report = rows(work / "cold" / "retrieval-report.csv")
    assert [(r["line"], r["status"], r["studies"]) for r in report] == [
        ("2", "done", "1"),
        ("3", "done", "1"),
        ("4", "done", "2"),
    ]


def test_niffler_png_converted_every_retrieved_image(
    run: tuple[Path, subprocess.CompletedProcess[str]],
) -> None:
    work, _ = run
    dicoms = list((work / "cold").rglob("*.dcm"))
    pngs = list((work / "png" / "extracted-images").rglob("*.png"))
    assert len(dicoms) == len(pngs) == 64
    assert all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in pngs)
    metadata = rows(work / "png" / "metadata.csv")
    assert len(metadata) == 64
    assert rows(work / "png" / "failures.csv") == []
    assert {r["Modality"] for r in metadata} == {"CT", "MR", "DX"}
    assert not {r["PatientID"] for r in metadata} & {p.patient_id for p in PATIENTS}


def test_clock_skew_flags_exactly_the_misconfigured_scanner(
    run: tuple[Path, subprocess.CompletedProcess[str]],
) -> None:
    work, proc = run
    table = {r["scanner"]: r for r in rows(work / "reports" / "clock-skew.csv")}
    assert set(table) == {s.serial for s in SCANNERS}
    assert [s for s, r in table.items() if r["misconfigured"] == "True"] == [MISCONFIGURED]
    assert 2.5 < float(table[MISCONFIGURED]["median_hours"]) < 4.5  # a clock 3 h behind
    for serial, row in table.items():
        if serial != MISCONFIGURED:
            assert 0 < float(row["median_hours"]) < 0.85
    assert (work / "reports" / "clock-skew.png").read_bytes()[:4] == b"\x89PNG"
    assert f"{MISCONFIGURED}" in proc.stdout and "MISCONFIGURED CLOCK" in proc.stdout


def test_utilization_has_a_row_per_scanner_and_a_fitted_plot(
    run: tuple[Path, subprocess.CompletedProcess[str]],
) -> None:
    work, _ = run
    days = json.loads((work / "quickstart.json").read_text())["study_dates"]
    table = rows(work / "reports" / "utilization.csv")
    assert {r["scanner"] for r in table} == {s.serial for s in SCANNERS}
    assert {r["day"] for r in table} == set(days)
    encounters = rows(work / "reports" / "utilization-encounters.csv")
    assert sum(int(r["studies"]) for r in encounters) == len(EXAMS)
    if len(days) == 1:  # from about 04:30 (the X-ray room stamps 3 h behind), all on one day
        assert len(table) == len(SCANNERS)
        # Patient 0072302's chest and abdomen CTs, back to back, are one encounter: 19 studies, 18.
        assert len(encounters) == 18
    for row in table:
        assert 0 < float(row["utilization_pct"]) <= 100
    assert (work / "reports" / "utilization.png").stat().st_size > 10_000


def test_it_prints_the_outputs_and_next_commands_that_work(
    run: tuple[Path, subprocess.CompletedProcess[str]],
) -> None:
    work, proc = run
    out = proc.stdout
    for folder in ("department/", "pacs/", "meta/state/store/", "cold/", "png/", "reports/", "logs/"):
        assert f"  {folder}" in out
    assert f"Outputs, under {work}:" in out
    lines = out.split("Next, try these", 1)[1].splitlines()[1:]
    commands = [line.strip() for line in lines if line.startswith("  ") and not line.strip().startswith("#")]
    assert commands[:2] == [f"cd {shlex.quote(str(work))}", f"source {shlex.quote(str(BIN / 'activate'))}"]
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    ran = 0
    for command in commands[2:]:
        result = subprocess.run(
            shlex.split(command), cwd=work, env=env, capture_output=True, text=True, timeout=120
        )
        assert result.returncode == 0, f"{command}\n{result.stderr[-2000:]}"
        ran += 1
    assert ran >= 6
    assert (work / "reports" / "scanners.csv").is_file()
    assert len(list((work / "png-8bit" / "extracted-images").rglob("*.png"))) == 64


def test_it_refuses_a_folder_it_did_not_create(tmp_path: Path) -> None:
    mine = tmp_path / "my-project"
    mine.mkdir()
    (mine / "notes.txt").write_text("do not delete")
    proc = subprocess.run(
        ["bash", str(QUICKSTART), str(mine)], env=quickstart_env(), capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 2
    assert "not made by the quick start" in proc.stderr
    assert sorted(p.name for p in mine.iterdir()) == ["notes.txt"]
    assert (mine / "notes.txt").read_text() == "do not delete"
    # The Python entry point refuses on its own too, and so does a file in the folder's place.
    assert demo.main([str(mine)]) == 2
    assert sorted(p.name for p in mine.iterdir()) == ["notes.txt"]
    a_file = tmp_path / "a-file"
    a_file.write_text("x")
    assert demo.main([str(a_file)]) == 2
    assert a_file.read_text() == "x"


def test_a_folder_of_an_earlier_run_is_emptied_without_following_links(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep.txt").write_text("keep")
    work = demo.prepare_workdir(tmp_path / "work")
    assert (work / demo.MARKER).is_file()
    (work / "reports").mkdir()
    (work / "reports" / "old.csv").write_text("old")
    (work / "link-to-outside").symlink_to(outside, target_is_directory=True)
    again = demo.prepare_workdir(work)
    assert again == work
    assert sorted(p.name for p in work.iterdir()) == [demo.MARKER]
    assert (outside / "keep.txt").read_text() == "keep"
    # An empty folder someone else made is used; it then carries the marker.
    empty = tmp_path / "empty"
    empty.mkdir()
    assert demo.prepare_workdir(empty) == empty and (empty / demo.MARKER).is_file()


def test_sigterm_stops_every_process_it_started(tmp_path: Path) -> None:
    work = tmp_path / "interrupted"
    proc = subprocess.Popen(
        ["bash", str(QUICKSTART), str(work)],
        env=quickstart_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        streaming = False
        for line in proc.stdout:  # wait until Orthanc and niffler-meta both run
            if "Orthanc forwarded" in line:
                streaming = True
                break
        assert streaming, proc.stderr.read() if proc.stderr else ""
        assert len(processes_in(work)) >= 2
        proc.send_signal(signal.SIGTERM)  # the script exec'd the demo: this is its process
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130
    assert processes_in(work) == []
