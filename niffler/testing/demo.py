"""Quick start: all four Niffler commands, end to end, on a generated stretch of a department's day.

Everything runs on 127.0.0.1 with synthetic patients, in a few tens of seconds:

1. A real Orthanc PACS is started and seeded with the last hour and a half
   of a small department, dated today (:mod:`niffler.testing.department`):
   a CT, an MR, an X-ray room and an ultrasound, the X-ray room's clock
   three hours behind.
2. ``niffler-meta`` runs as a daemon with its embedded store; Orthanc
   C-STOREs the studies to it in the order they were completed, as a PACS
   forwards a scanner's images.
3. ``niffler-cold`` retrieves the studies the shipped sample CSV
   (``configs/sample-studies.csv``) names from the Orthanc.
4. ``niffler-png`` converts what niffler-cold retrieved.
5. ``niffler-scanner-util`` writes the utilization and clock-skew reports,
   with plots, from niffler-meta's store.

Each command is the installed console script with a config written under
the work folder, run as its own process, so what the demo prints is what a
user types. The demo stops every process it started (also on Ctrl-C and
SIGTERM), then prints where the outputs are and the next commands to try.

It never deletes a folder it did not create: it works in an empty or new
folder, or in one holding its marker file (:data:`MARKER`) from an earlier
run, whose contents it then replaces; any other folder is refused (exit 2).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, TextIO

from niffler.testing.department import MISCONFIGURED, SCANNERS, Department, generate_department
from niffler.testing.peers import LOOPBACK, OrthancPACS, free_port, wait_for_port
from niffler.testing.receiver import FEATURESETS

__all__ = ["MARKER", "SAMPLE_CSV", "Layout", "WorkdirRefused", "check_workdir", "main", "prepare_workdir"]

#: The file that says a folder is the quick start's own, so a later run may empty it.
MARKER = ".niffler-quickstart"
REPO = Path(__file__).resolve().parents[2]
#: The shipped sample CSV: studies of the generated department, by PatientID and AccessionNumber.
SAMPLE_CSV = REPO / "configs" / "sample-studies.csv"
SHIPPED_CONFIGS = REPO / "configs"
#: Exit code when the work folder is not the quick start's to use.
EXIT_REFUSED = 2
#: How the daemon and the PACS are known to each other.
PACS_AET, META_AET, COLD_AET = "ORTHANC", "NIFFLERMETA", "NIFFLER"
_LOG_RECORD = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} (DEBUG|INFO) ")


class WorkdirRefused(Exception):
    """The work folder exists, is not empty and was not made by the quick start."""


class DemoFailed(Exception):
    """A step of the demo failed; the message says which and where its log is."""


def check_workdir(path: Path) -> bool:
    """Return whether *path* holds an earlier run (True) or is new or empty (False); else refuse.

    Raise WorkdirRefused when it is a file, or a folder that is not empty and
    has no :data:`MARKER`. Nothing is touched.
    """
    work = path.absolute()
    if work.exists() and not work.is_dir():
        raise WorkdirRefused(f"{work} exists and is not a folder; give the quick start a new or empty folder")
    try:
        if not (work.is_dir() and any(work.iterdir())):
            return False
    except OSError as exc:
        raise WorkdirRefused(f"cannot read {work}: {exc.strerror}") from None
    if not (work / MARKER).is_file():
        raise WorkdirRefused(
            f"{work} is not empty and was not made by the quick start (it has no {MARKER} file), "
            "so it is left alone. Give a new or empty folder instead, e.g. "
            f"scripts/quickstart.sh {shlex.quote(str(work.parent / 'niffler-quickstart'))}"
        )
    return True


def prepare_workdir(path: Path) -> Path:
    """Return *path*, made empty and marked as the quick start's; refuse a folder that is not ours.

    A missing or empty folder is used. A folder holding :data:`MARKER` was
    made by an earlier run: its contents are deleted (the folder itself and
    a symbolic link to it stay). Anything else raises WorkdirRefused, and
    nothing is touched.
    """
    work = path.absolute()
    if check_workdir(work):
        for child in work.iterdir():
            if child.is_dir() and not child.is_symlink():
                shutil.rmtree(child)
            else:
                child.unlink()
    work.mkdir(parents=True, exist_ok=True)
    (work / MARKER).write_text(
        "This folder was made by Niffler's quick start (scripts/quickstart.sh) on "
        f"{datetime.now():%Y-%m-%d %H:%M}.\nRunning the quick start on it again deletes everything in it.\n",
        encoding="utf-8",
    )
    return work


@dataclass(frozen=True)
class Layout:
    """Where everything goes under the work folder."""

    root: Path

    @property
    def configs(self) -> Path:
        return self.root / "configs"

    @property
    def department(self) -> Path:
        return self.root / "department"

    @property
    def pacs(self) -> Path:
        return self.root / "pacs"

    @property
    def meta_received(self) -> Path:
        return self.root / "meta" / "received"

    @property
    def meta_state(self) -> Path:
        return self.root / "meta" / "state"

    @property
    def cold(self) -> Path:
        return self.root / "cold"

    @property
    def png(self) -> Path:
        return self.root / "png"

    @property
    def png_state(self) -> Path:
        return self.root / "png-state"

    @property
    def reports(self) -> Path:
        return self.root / "reports"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    def config(self, command: str) -> Path:
        return self.configs / f"{command}.json"


def _write_config(layout: Layout, command: str, shipped: str, overrides: Mapping[str, Any]) -> Path:
    """Write the shipped config *shipped* with *overrides* as the demo's config of *command*."""
    keys: dict[str, Any] = {}
    source = SHIPPED_CONFIGS / shipped
    if source.is_file():
        keys.update(json.loads(source.read_text(encoding="utf-8")))
    keys.update(overrides)
    path = layout.config(command)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(keys, indent=2) + "\n", encoding="utf-8")
    return path


def write_configs(layout: Layout, *, pacs_port: int, meta_port: int, cold_port: int) -> None:
    """Write the four commands' configs: the shipped ones, pointed at this folder and the local PACS."""
    _write_config(
        layout,
        "niffler-meta",
        "meta_extraction.json",
        {
            "QueryAet": f"{META_AET}:{meta_port}",
            "BindAddress": LOOPBACK,
            "AllowedCallingAets": [PACS_AET],
            "StorageFolder": str(layout.meta_received),
            "StateFolder": str(layout.meta_state),
            "FeaturesetFolder": str(FEATURESETS),
            "MongoURI": "",
            "DiskWatermarkPercent": 99,
        },
    )
    _write_config(
        layout,
        "niffler-cold",
        "cold_extraction.json",
        {
            "SrcAet": f"{PACS_AET}@{LOOPBACK}:{pacs_port}",
            "QueryAet": f"{COLD_AET}:{cold_port}",
            "DestAet": "",
            "BindAddress": LOOPBACK,
            "StorageFolder": str(layout.cold),
            "CsvFile": "",
            "NightlyOnly": False,
            "Mode": "move",
        },
    )
    _write_config(
        layout,
        "niffler-png",
        "png_extraction.json",
        {
            "DICOMHome": str(layout.cold),
            "OutputDirectory": str(layout.png),
            "StateFolder": str(layout.png_state),
            "FeaturesetFile": str(FEATURESETS / "featureset.txt"),
            # niffler-meta's secret: the same keyed pseudonyms in metadata.csv as in the store.
            "DeidKeyFile": str(layout.meta_state / "deid.key"),
            "UseProcesses": 2,
        },
    )
    _write_config(
        layout,
        "niffler-scanner-util",
        "app_layer.json",
        {
            "MongoURI": "",
            "EmbeddedStoreFolder": str(layout.meta_state / "store"),
            # The shipped list is upstream's; the department has an ultrasound too.
            "Modalities": ["XR", "DX", "CR", "DR", "MR", "CT", "US"],
        },
    )


class Console:
    """What the demo prints: steps, the commands it runs (as a user would type them), and results."""

    def __init__(self, out: TextIO, layout: Layout, bin_dir: Path) -> None:
        self.out = out
        self.layout = layout
        self.bin_dir = bin_dir

    def say(self, text: str = "") -> None:
        print(text, file=self.out, flush=True)

    def step(self, number: int, title: str) -> None:
        self.say(f"\n[{number}/5] {title}")

    def command(self, args: Sequence[str], background: bool = False) -> None:
        self.say("    $ " + self.show(args) + (" &" if background else ""))

    def show(self, args: Sequence[str]) -> str:
        """A command line as typed in the work folder with the venv activated: short, copy-pasteable."""
        shown = []
        for arg in args:
            text = str(arg)
            if text.startswith(str(self.bin_dir) + os.sep):
                text = text[len(str(self.bin_dir)) + 1 :]
            elif text.startswith(str(self.layout.root) + os.sep):
                text = os.path.relpath(text, self.layout.root)
            shown.append(shlex.quote(text))
        return " ".join(shown)


@dataclass
class Runner:
    """Runs the console scripts in the work folder, each with its own log under logs/."""

    layout: Layout
    console: Console
    bin_dir: Path

    def exe(self, name: str) -> str:
        path = self.bin_dir / name
        if not path.exists():
            raise DemoFailed(f"{path} is missing: install Niffler first (scripts/install.sh)")
        return str(path)

    def log_path(self, name: str) -> Path:
        self.layout.logs.mkdir(parents=True, exist_ok=True)
        return self.layout.logs / f"{name}.log"

    def run(self, name: str, args: Sequence[str], log_name: str, ok: Sequence[int] = (0,)) -> str:
        """Run *name* *args*; print the command and what it says besides INFO log lines; return stdout."""
        argv = [self.exe(name), *args]
        self.console.command(argv)
        log = self.log_path(log_name)
        with open(log, "w", encoding="utf-8") as handle:
            result = subprocess.run(
                argv,
                cwd=self.layout.root,
                stdout=subprocess.PIPE,
                stderr=handle,
                text=True,
                timeout=600,
                check=False,
            )
        for line in log.read_text(encoding="utf-8").splitlines():
            if not _LOG_RECORD.match(line) and line.strip():
                self.console.say("      " + line)
        if result.stdout:
            with open(log, "a", encoding="utf-8") as handle:
                handle.write(f"---- {name}'s standard output ----\n{result.stdout}")
        if result.returncode not in ok:
            raise DemoFailed(f"{name} exited {result.returncode}; its log is {log}")
        return result.stdout

    def start(self, name: str, args: Sequence[str], log_name: str) -> subprocess.Popen[bytes]:
        argv = [self.exe(name), *args]
        self.console.command(argv, background=True)
        with open(self.log_path(log_name), "wb") as handle:
            return subprocess.Popen(argv, cwd=self.layout.root, stdout=handle, stderr=subprocess.STDOUT)


def _stop(proc: subprocess.Popen[bytes] | None, timeout: float = 40.0) -> int | None:
    if proc is None:
        return None
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
    return proc.returncode


@contextmanager
def _terminate_as_interrupt() -> Iterator[None]:
    """Let SIGTERM and SIGHUP unwind like Ctrl-C, so every ``finally`` stops what was started."""

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    previous = {s: signal.signal(s, interrupt) for s in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def _lookup_study(pacs: OrthancPACS, study_uid: str) -> str:
    answer = pacs.rest("/tools/lookup", body=study_uid.encode("ascii"), method="POST")
    ids = [a["ID"] for a in answer if a.get("Type") == "Study"]
    if len(ids) != 1:
        raise DemoFailed(f"Orthanc does not hold study {study_uid} once: {answer}")
    return str(ids[0])


#: Attempts at forwarding one study: a PACS retries a forward that failed.
FORWARD_ATTEMPTS = 3


def _store_study(pacs: OrthancPACS, orthanc_id: str, modality: str, instances: int) -> str:
    """Have Orthanc C-STORE one study to *modality*; return "" or why it failed."""
    body = json.dumps({"Resources": [orthanc_id], "Synchronous": True}).encode()
    try:
        answer = pacs.rest(f"/modalities/{modality}/store", body=body, method="POST")
    except urllib.error.HTTPError as exc:  # Orthanc answers 500 when the C-STORE failed
        return f"HTTP {exc.code} (see pacs/orthanc.log)"
    if answer.get("FailedInstancesCount", 0) or answer.get("InstancesCount") != instances:
        return f"{answer.get('FailedInstancesCount')} of {answer.get('InstancesCount')} instances failed"
    return ""


def forward(pacs: OrthancPACS, department: Department, modality: str, console: Console) -> tuple[int, int]:
    """Have Orthanc C-STORE each study to *modality* in the order they were completed.

    A failed forward is retried, as a PACS does, and said so. Return the
    numbers of studies and instances sent.
    """
    sent = 0
    for study in department.forwarding_order():
        orthanc_id = _lookup_study(pacs, study.study_uid)
        for attempt in range(1, FORWARD_ATTEMPTS + 1):
            failure = _store_study(pacs, orthanc_id, modality, len(study.instances))
            if not failure:
                break
            console.say(
                f"    forwarding study {study.exam.accession} failed ({failure}); attempt {attempt} "
                f"of {FORWARD_ATTEMPTS}"
            )
        else:
            raise DemoFailed(f"Orthanc could not forward study {study.exam.accession}: {failure}")
        sent += len(study.instances)
    return len(department.studies), sent


def _meta_status(runner: Runner) -> dict[str, Any]:
    argv = [
        runner.exe("niffler-meta"),
        "--config",
        str(runner.layout.config("niffler-meta")),
        "-q",
        "status",
        "--json",
    ]
    result = subprocess.run(argv, cwd=runner.layout.root, capture_output=True, text=True, timeout=60)
    if result.returncode != 0:
        raise DemoFailed(f"niffler-meta status exited {result.returncode}: {result.stderr.strip()[-500:]}")
    return dict(json.loads(result.stdout))


def wait_for_extraction(
    runner: Runner, proc: subprocess.Popen[bytes], series: int, timeout: float = 120
) -> dict[str, Any]:
    """Poll ``niffler-meta status`` until every series is documented; return the last status."""
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            raise DemoFailed(f"niffler-meta exited {proc.returncode}; see {runner.log_path('niffler-meta')}")
        status = _meta_status(runner)
        if status.get("series_extracted", 0) >= series and not status.get("waiting_for_extraction"):
            return status
        if time.monotonic() > deadline:
            raise DemoFailed(
                f"niffler-meta documented {status.get('series_extracted')} of {series} series "
                f"in {timeout:.0f} s; see {runner.log_path('niffler-meta')}"
            )
        time.sleep(0.5)


def _stretch(first: datetime, end: datetime) -> str:
    if first.date() == end.date():
        return f"from {first:%H:%M} to {end:%H:%M} on {end:%Y-%m-%d}"
    return f"from {first:%Y-%m-%d %H:%M} to {end:%Y-%m-%d %H:%M}"


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def _hhmm(stamp: str) -> str:
    return stamp[11:16] if len(stamp) >= 16 else stamp


def _show_utilization(console: Console, path: Path) -> None:
    console.say(
        "      scanner    modality  day       utilization  encounters  studies  active       idle gaps"
    )
    for row in _rows(path):
        pct = f"{float(row['utilization_pct']):.0f}%" if row["utilization_pct"] else "n/a"
        active = f"{_hhmm(row['first_start'])}-{_hhmm(row['last_end'])}"
        gaps = row["idle_gaps"].split(";") if row["idle_gaps"] else []
        shown = "; ".join(gaps[:3]) + (f" (+{len(gaps) - 3} more)" if len(gaps) > 3 else "")
        console.say(
            f"      {row['scanner']:<10} {row['modality']:<9} {row['day']:<9} {pct:>11}  "
            f"{row['encounters']:>10}  {row['studies']:>7}  {active:<12} {shown}"
        )


def _show_skew(console: Console, path: Path) -> list[str]:
    flagged = []
    console.say("      scanner    manufacturer / model           studies  median skew  verdict")
    for row in _rows(path):
        bad = row["misconfigured"].lower() == "true"
        if bad:
            flagged.append(row["scanner"])
        model = f"{row['manufacturer']} {row['model']}"
        median = f"{float(row['median_hours']):+.2f} h"
        verdict = "MISCONFIGURED CLOCK" if bad else "ok"
        console.say(f"      {row['scanner']:<10} {model:<30} {row['studies']:>7}  {median:>11}  {verdict}")
    return flagged


def run_demo(work: Path, csv_path: Path, out: TextIO, bin_dir: Path) -> dict[str, Any]:
    """Run the five steps in *work* (already prepared); return the summary written to quickstart.json."""
    layout = Layout(work)
    console = Console(out, layout, bin_dir)
    runner = Runner(layout, console, bin_dir)
    pacs_port, meta_port, cold_port = free_port(), free_port(), free_port()
    write_configs(layout, pacs_port=pacs_port, meta_port=meta_port, cold_port=cold_port)
    console.say(f"Niffler quick start in {work}")
    console.say(
        "Synthetic patients only; every connection is on 127.0.0.1. Commands below run in that folder."
    )

    console.step(1, "A local PACS (Orthanc) holding a generated stretch of a small department's day")
    department = generate_department(layout.department)
    department.write_schedule(layout.department / "schedule.csv")
    first = min(s.started for s in department.studies)
    off = next(s for s in SCANNERS if s.serial == MISCONFIGURED)
    console.say(
        f"    {len(department.studies)} studies, {len(department.series)} series, "
        f"{len(department.instances)} instances of {len(department.patients)} patients "
        f"on {len(SCANNERS)} scanners, {_stretch(first, department.end)}"
    )
    for s in SCANNERS:
        clock = (
            f"clock {abs(s.clock_offset_hours):g} h {'behind' if s.clock_offset_hours < 0 else 'ahead'}"
            if s.clock_offset_hours
            else "clock right"
        )
        console.say(
            f"      {s.scanner.station:<6} {s.scanner.modality:<3} {s.scanner.manufacturer} "
            f"{s.scanner.model} (DeviceSerialNumber {s.serial}), {clock}"
        )
    pacs = OrthancPACS(
        layout.pacs,
        aet=PACS_AET,
        modalities={
            "niffler-meta": (META_AET, LOOPBACK, meta_port),
            "niffler-cold": (COLD_AET, LOOPBACK, cold_port),
        },
        dicom_port=pacs_port,
    )
    meta: subprocess.Popen[bytes] | None = None
    summary: dict[str, Any] = {}
    try:
        pacs.start()
        pacs.upload([i.path for i in department.instances])
        console.say(
            f"    Orthanc {PACS_AET} on {LOOPBACK}:{pacs.dicom_port} holds them "
            f"(web UI while the quick start runs: http://{LOOPBACK}:{pacs.http_port}/)"
        )

        console.step(2, "niffler-meta receives the day as a stream into its embedded store")
        meta = runner.start("niffler-meta", ["--config", str(layout.config("niffler-meta"))], "niffler-meta")
        wait_for_port(meta_port, timeout=60, proc=meta)
        studies, sent = forward(pacs, department, "niffler-meta", console)
        console.say(
            f"    Orthanc forwarded the {studies} studies ({sent} instances) to {META_AET} by C-STORE, "
            "in the order they were completed"
        )
        status = wait_for_extraction(runner, meta, len(department.series))
        console.say(
            f"    niffler-meta received {status['instances_received']} instances and keeps "
            f"{status['series_extracted']} PHI-free series documents (status: niffler-meta --config "
            f"configs/niffler-meta.json status)"
        )

        console.step(3, f"niffler-cold retrieves the studies {csv_path.name} names from the PACS")
        runner.run(
            "niffler-cold",
            ["--config", str(layout.config("niffler-cold")), "--csv", str(csv_path)],
            "niffler-cold",
        )
        report = _rows(layout.cold / "retrieval-report.csv")

        console.step(4, "niffler-png converts what niffler-cold retrieved")
        runner.run("niffler-png", ["--config", str(layout.config("niffler-png"))], "niffler-png")
        pngs = sorted((layout.png / "extracted-images").rglob("*.png"))

        console.step(5, "niffler-scanner-util: utilization and clock skew, from niffler-meta's store")
        app = ["--config", str(layout.config("niffler-scanner-util"))]
        days = department.study_dates
        span = ["--date", days[0]] if len(days) == 1 else ["--from", days[0], "--to", days[-1]]
        utilization = layout.reports / "utilization.csv"
        runner.run(
            "niffler-scanner-util",
            [
                *app,
                "-q",
                "utilization",
                *span,
                "--out",
                str(utilization),
                "--plot",
                str(layout.reports / "utilization.png"),
            ],
            "utilization",
        )
        _show_utilization(console, utilization)
        skew = layout.reports / "clock-skew.csv"
        runner.run(
            "niffler-scanner-util",
            [*app, "-q", "clock-skew", "--out", str(skew), "--plot", str(layout.reports / "clock-skew.png")],
            "clock-skew",
        )
        flagged = _show_skew(console, skew)
        console.say(
            "      skew = arrival at niffler-meta - acquisition time as stamped by the scanner. A healthy\n"
            "      scanner's is how long its studies waited to be forwarded (the stream began just now);\n"
            f"      {MISCONFIGURED}'s clock is {abs(off.clock_offset_hours):g} h "
            f"{'behind' if off.clock_offset_hours < 0 else 'ahead'}, so it is flagged."
        )
        summary = {
            "workdir": str(work),
            "department_end": department.end.isoformat(timespec="minutes"),
            "study_dates": days,
            "studies": len(department.studies),
            "series": len(department.series),
            "instances": len(department.instances),
            "misconfigured_scanner": MISCONFIGURED,
            "misconfigured_offset_hours": off.clock_offset_hours,
            "meta_status": status,
            "cold_rows": [
                {k: r.get(k, "") for k in ("line", "status", "studies", "instances_received")} for r in report
            ],
            "pngs": len(pngs),
            "flagged_scanners": flagged,
        }
    finally:
        _stop(meta)
        pacs.stop()
    console.say("\nStopped niffler-meta and Orthanc: nothing the quick start started is still running.")
    return summary


def _count(folder: Path, pattern: str) -> int:
    return sum(1 for _ in folder.rglob(pattern)) if folder.is_dir() else 0


def print_outputs(console: Console, summary: Mapping[str, Any], csv_path: Path) -> None:
    """Print where each output is and the next commands to try, in the form a user can paste."""
    layout = console.layout
    rows = summary["cold_rows"]
    done = sum(1 for r in rows if r["status"] == "done")
    entries = [
        (
            "department/",
            "the generated DICOM, a folder per scanner; schedule.csv lists every exam "
            "with its real and its stamped times",
        ),
        ("pacs/", "the Orthanc PACS: its database, orthanc.json and orthanc.log"),
        (
            "meta/state/store/",
            f"niffler-meta's embedded store: {summary['meta_status']['series_extracted']} "
            "PHI-free series documents (database ScannersInfo, collection featureset)",
        ),
        ("meta/state/", "its index and de-identification secret deid.key (keep private)"),
        ("meta/received/", "the images it received, deleted by its nightly purge once extracted"),
        (
            "cold/",
            f"niffler-cold's retrieval: {done} of {len(rows)} CSV rows done, "
            f"{_count(layout.cold, '*.dcm')} DICOM files; retrieval-report.csv (private: identifiers)",
        ),
        (
            "png/",
            f"niffler-png's output: {summary['pngs']} PNGs in extracted-images/, metadata.csv "
            "(de-identified, shareable), mapping.csv (private)",
        ),
        (
            "reports/",
            "utilization.csv (+ -encounters.csv, -idle-gaps.csv), utilization.png, "
            "clock-skew.csv (+ -studies.csv), clock-skew.png",
        ),
        ("configs/", "the config each command ran with"),
        ("quickstart.json", "this run's figures, for scripts"),
        ("logs/", "each command's full log"),
    ]
    console.say(f"\nOutputs, under {layout.root}:")
    for name, what in entries:
        console.say(f"  {name:<19} {what}")

    app = "niffler-scanner-util --config configs/niffler-scanner-util.json"
    days = summary["study_dates"]
    span = f"--date {days[-1]}" if len(days) == 1 else f"--from {days[0]} --to {days[-1]}"
    sample = shlex.quote(str(csv_path))
    commands = [
        (
            "what niffler-meta received and extracted",
            "niffler-meta --config configs/niffler-meta.json status",
        ),
        (
            "the clock-skew report as a page with the chart and its table",
            f"{app} clock-skew --out reports/clock-skew.csv --plot reports/clock-skew.html",
        ),
        (
            "utilization with encounters merged only under 5 minutes apart",
            f"{app} utilization {span} --gap 5 --out reports/utilization-gap5.csv "
            "--plot reports/utilization-gap5.png",
        ),
        (
            "every scanner seen, with its first and last acquisition and arrival",
            f"{app} scanners --out reports/scanners.csv",
        ),
        (
            "the C-FINDs niffler-cold sends for the sample CSV (nothing is sent)",
            f"niffler-cold --config configs/niffler-cold.json --csv {sample} --dry-run",
        ),
        (
            "the retrieved studies again, as 8-bit PNGs",
            "niffler-png --config configs/niffler-png.json --8-bit --output-directory png-8bit",
        ),
        (
            "a few columns of the de-identified metadata (PatientID is a keyed pseudonym)",
            "python -c \"import pandas as p; print(p.read_csv('png/metadata.csv', dtype=str)[['PatientID', "
            "'Modality', 'StudyDate', 'AcquisitionTime', 'DeviceSerialNumber']].head(8))\"",
        ),
    ]
    console.say("\nNext, try these (copy and paste; niffler-meta's store opens without the daemon):")
    console.say(f"  cd {shlex.quote(str(layout.root))}")
    console.say(f"  source {shlex.quote(str(console.bin_dir / 'activate'))}")
    for why, command in commands:
        console.say(f"  # {why}")
        console.say(f"  {command}")
    console.say(
        f"\nRun the quick start again with: {shlex.quote(str(REPO / 'scripts' / 'quickstart.sh'))} "
        f"{shlex.quote(str(layout.root))}   (it replaces this folder's contents)"
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Run the quick start in the work folder and return the exit code."""
    parser = argparse.ArgumentParser(
        prog="python -m niffler.testing.demo",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "workdir",
        type=Path,
        nargs="?",
        default=Path("demo"),
        help="new, empty, or made by an earlier quick start (default: ./demo)",
    )
    parser.add_argument("--csv", type=Path, default=SAMPLE_CSV, help="the studies niffler-cold retrieves")
    args = parser.parse_args(argv)
    out = sys.stdout
    with _terminate_as_interrupt():
        try:
            work = prepare_workdir(args.workdir)
        except WorkdirRefused as exc:
            print(f"quickstart: {exc}", file=sys.stderr)
            return EXIT_REFUSED
        csv_path = args.csv.absolute()
        bin_dir = Path(sys.executable).parent
        started = time.monotonic()
        try:
            summary = run_demo(work, csv_path, out, bin_dir)
        except DemoFailed as exc:
            print(f"\nquickstart failed: {exc}", file=sys.stderr)
            return 1
        except KeyboardInterrupt:
            print("\nquickstart interrupted; every process it started is stopped", file=sys.stderr)
            return 130
        summary["seconds"] = round(time.monotonic() - started, 1)
        (work / "quickstart.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
        print_outputs(Console(out, Layout(work), bin_dir), summary, csv_path)
        ok = summary["flagged_scanners"] == [MISCONFIGURED] and all(
            r["status"] == "done" for r in summary["cold_rows"]
        )
        print(
            f"\nDone in {summary['seconds']:.0f} s." if ok else "\nDone, but not as expected: see above.",
            file=out,
        )
        return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
