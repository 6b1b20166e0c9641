"""A hostile corpus through the real niffler-meta and niffler-png commands: no identifier may come out.

Markers (``MRK0042QXZTA``), raw UIDs, MRNs, PatientIDs, AccessionNumbers and
birth dates are hidden in every place the corpus generator
(:mod:`niffler.testing.hostile`) knows. What is shareable must hold none of
them: niffler-meta's documents (every collection, keys and values) and its
logs; niffler-png's metadata.csv, PNG files, folder and file names, and its
logs. Private outputs (the storage folder, the StateFolder, mapping.csv,
failures.csv, failed-dicom/, the progress ledger) are excluded by design, as
are the device identity values kept by RetainDeviceIdentity.

A failure lists each leaked needle with where the corpus put it and where
it came out; the full list is also written to ``leaks-*.json`` in the
test's tmp folder.
"""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import warnings
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pydicom._dicom_dict import DicomDictionary

from niffler.common.deid import KEY_ENV, DeidSettings, Policy, Pseudonymizer, deidentify_to_dict
from niffler.common.store import attach_store
from niffler.meta_extraction.cli import load_meta_config
from niffler.meta_extraction.service import read_status
from niffler.testing.corpus import CorpusSpec, generate_corpus
from niffler.testing.hostile import (
    FORBIDDEN_KEYS,
    MARKER_PATTERN,
    PRIVATE_TAGS,
    REPEATING_TAGS,
    HostileCorpus,
    deep_sequence_file,
    write_hostile_corpus,
)
from niffler.testing.peers import dcmtk_env, free_port

LOOPBACK = "127.0.0.1"
SECRET = "hostile-phi-test-secret-0123456789"
#: DCMTK's tools by absolute path: the venv has pynetdicom's storescu and echoscu of the same names.
STORESCU = "/usr/bin/storescu"
ECHOSCU = "/usr/bin/echoscu"
BIN = Path(sys.executable).parent
PNG_CONFIG = Path(__file__).resolve().parents[2] / "configs" / "png_extraction.json"
DATABASE = "hostile"
_ITEM_INDEX = re.compile(r"_\d+_")
#: Numbers, UIDs and the like in a log line: blanked to group lines by their shape.
_NUMBERS = re.compile(r"[0-9][0-9.]*")
_MARKERS = re.compile(MARKER_PATTERN.pattern + "[A-Z]*")


@pytest.fixture(scope="module")
def hostile(tmp_path_factory: pytest.TempPathFactory) -> HostileCorpus:
    return write_hostile_corpus(tmp_path_factory.mktemp("hostile") / "corpus")


def test_corpus_is_as_hostile_as_promised(hostile: HostileCorpus) -> None:
    assert len(hostile.files) == 40 and len(hostile.failing) == 1
    assert len(hostile.markers) >= 80
    assert len({e.series_uid for e in hostile.entries}) == len(hostile.entries)
    assert {e.charset for e in hostile.entries} == {"ISO_IR 100", "ISO_IR 192", "ISO 2022 IR 87"}
    assert {e.transfer_syntax for e in hostile.entries} == {"1.2.840.10008.1.2", "1.2.840.10008.1.2.1"}
    malformed = [e for e in hostile.entries if e.mrn in e.study_uid + e.series_uid + e.sop_uid]
    assert malformed and len(malformed) < len(hostile.entries)


# --- finding and reporting leaks ------------------------------------------------------------------


class LeakReport:
    """Needles found in outputs, by where they came out."""

    def __init__(self, corpus: HostileCorpus) -> None:
        self.corpus = corpus
        self.found: dict[str, set[str]] = {}  # location -> needles
        self.forbidden: dict[str, int] = {}  # forbidden key or column -> how often

    def scan(self, location: str, text: str) -> None:
        hits = self.corpus.leaks(text)
        if hits:
            self.found.setdefault(location, set()).update(hits)

    def scan_log(self, name: str, text: str) -> None:
        for line in text.splitlines():
            hits = self.corpus.leaks(line)
            if hits:
                # The line's shape (needles blanked) is the location: one entry per kind of line.
                shape = line[24:] if re.match(r"\d{4}-\d\d-\d\d ", line) else line
                shape = _NUMBERS.sub("<n>", _MARKERS.sub("<marker>", shape))
                self.found.setdefault(f"{name}: {shape[:200]}", set()).update(hits)

    def key(self, location: str, key: str) -> None:
        last = _ITEM_INDEX.split(key)[-1]
        if last in FORBIDDEN_KEYS:
            self.forbidden[f"{location} {key}"] = self.forbidden.get(f"{location} {key}", 0) + 1

    def summary(self) -> str:
        """One line per (where it came out, what attribute it was put in), with counts."""
        groups: Counter[tuple[str, str]] = Counter()
        for location, needles in self.found.items():
            for needle in needles:
                placed = self.corpus.where.get(needle, "unknown placement")
                placed = re.sub(r"^h\d\d\.dcm ", "", placed)
                placed = re.sub(r"^patient \d ", "", placed)
                groups[(location, placed)] += 1
        lines = [f"{n:4d} x {placed}  ->  {where}" for (where, placed), n in sorted(groups.items())]
        lines += [f"forbidden key: {k} x{n}" for k, n in sorted(self.forbidden.items())]
        return "\n".join(lines)

    def dump(self, path: Path) -> None:
        path.write_text(
            json.dumps(
                {
                    "leaks": {k: self.corpus.explain(v) for k, v in sorted(self.found.items())},
                    "forbidden_keys": self.forbidden,
                },
                indent=1,
                ensure_ascii=False,
            )
        )

    def assert_clean(self, path: Path) -> None:
        self.dump(path)
        total = sum(len(v) for v in self.found.values())
        assert not self.found and not self.forbidden, (
            f"{total} leaked needle(s) in {len(self.found)} place(s), "
            f"{len(self.forbidden)} forbidden key(s); full list in {path}\n{self.summary()}"
        )


def test_engine_record_of_every_hostile_file_is_clean(hostile: HostileCorpus, tmp_path: Path) -> None:
    """The engine itself, with no featureset or column filter between it and the check.

    niffler-meta only sees what a featureset line selects (a repeating-group
    attribute, keyed by its 8-hex tag, has no line that selects it) and
    niffler-png drops private columns: this sees every key of every record.
    """
    policy = Policy(DeidSettings(), SECRET.encode())
    report = LeakReport(hostile)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom quotes malformed UIDs in its warnings
        for entry in hostile.good:
            record = deidentify_to_dict(pydicom.dcmread(entry.path), policy).values
            for key, value in record.items():
                report.scan(f"record key {key}", key + "=" + json.dumps(value, ensure_ascii=False))
                report.key("record", key)
    report.assert_clean(tmp_path / "leaks-engine.json")


# --- niffler-meta as a real daemon ------------------------------------------------------------


def everything_featureset(folder: Path) -> Path:
    """One featureset: every keyword of pydicom's dictionary, and our private and 50xx/60xx tags in hex.

    (A repeating-group keyword such as OverlayDescription is not a featureset
    line; its hex tag is, though it reads back as that keyword.)
    """
    folder.mkdir(parents=True, exist_ok=True)
    keywords = sorted({entry[4] for entry in DicomDictionary.values() if entry[4]})
    hexes = [f"0x{tag:08X}" for tag in (*PRIVATE_TAGS, *REPEATING_TAGS)]
    (folder / "everything.txt").write_text("\n".join([*keywords, *hexes]) + "\n")
    return folder


def meta_config(tmp_path: Path, featuresets: Path) -> Path:
    config = {
        "QueryAet": f"NIFFLER:{free_port()}",
        "BindAddress": LOOPBACK,
        "StorageFolder": str(tmp_path / "data"),
        "StateFolder": str(tmp_path / "state"),
        "FeaturesetFolder": str(featuresets),
        "MongoURI": "",
        "DatabaseName": DATABASE,
    }
    path = tmp_path / "meta.json"
    path.write_text(json.dumps(config))
    return path


def daemon_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("NIFFLER_MONGO_URI", "MONGO_URI")}
    env[KEY_ENV] = SECRET
    return env


class Daemon:
    """The niffler-meta console script, its stdout and stderr in files."""

    def __init__(self, config: Path, logs: Path, *args: str) -> None:
        self.config = config
        self.port = int(json.loads(config.read_text())["QueryAet"].split(":")[1])
        self.stdout = logs.with_suffix(".out")
        self.stderr = logs.with_suffix(".err")
        with open(self.stdout, "ab") as out, open(self.stderr, "ab") as err:
            self.proc = subprocess.Popen(
                [str(BIN / "niffler-meta"), "--config", str(config), *args],
                env=daemon_env(), stdout=out, stderr=err,
            )  # fmt: skip
        self._wait_ready(60)

    def _wait_ready(self, timeout: float) -> None:
        """Wait until a C-ECHO succeeds (a bare TCP probe would hold the SCP's stop for seconds)."""
        deadline = time.monotonic() + timeout
        echo = [ECHOSCU, "-aet", "HOSTILE", "-aec", "NIFFLER", "-to", "5", LOOPBACK, str(self.port)]
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, f"niffler-meta exited {self.proc.returncode}"
            if subprocess.run(echo, env=dcmtk_env(), capture_output=True, timeout=30).returncode == 0:
                return
            time.sleep(0.1)
        raise TimeoutError(f"niffler-meta did not answer C-ECHO within {timeout} s")

    def send(self, *files: Path) -> subprocess.CompletedProcess[str]:
        """C-STORE *files*, in this order, on one association from DCMTK's storescu."""
        args = [STORESCU, "-aet", "HOSTILE", "-aec", "NIFFLER", LOOPBACK, str(self.port), *map(str, files)]
        return subprocess.run(args, env=dcmtk_env(), capture_output=True, text=True, timeout=120)

    def figures(self) -> dict[str, Any]:
        return read_status(load_meta_config(self.config), None)

    def wait_handled(self, sent: int, timeout: float = 60.0) -> dict[str, Any]:
        """Wait until every sent instance is extracted or failed; return the figures."""
        deadline = time.monotonic() + timeout
        figures: dict[str, Any] = {}
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, f"niffler-meta exited {self.proc.returncode}"
            figures = self.figures()
            handled = figures.get("instances_extracted", 0) + figures.get("instances_failed", 0)
            if figures.get("instances_received") == sent and handled == sent:
                return figures
            time.sleep(0.2)
        raise AssertionError(f"not all {sent} instances handled in {timeout} s: {figures}")

    def status_json(self) -> dict[str, Any]:
        out = subprocess.run(
            [str(BIN / "niffler-meta"), "--config", str(self.config), "status", "--json"],
            env=daemon_env(), capture_output=True, text=True, timeout=60, check=True,
        )  # fmt: skip
        result: dict[str, Any] = json.loads(out.stdout)
        return result

    def documents(self) -> dict[str, list[dict[str, Any]]]:
        """Every document of every collection, read with pymongo from the running daemon's store."""
        store = attach_store(None, database=DATABASE, data_dir=self.config.parent / "state" / "store")
        assert store is not None, "the embedded store of the running daemon is not reachable"
        try:
            return {name: list(store.db[name].find()) for name in store.db.list_collection_names()}
        finally:
            store.close()

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
            raise

    def logs(self) -> str:
        return self.stdout.read_text(errors="replace") + self.stderr.read_text(errors="replace")


@pytest.fixture
def daemons() -> Iterator[list[Daemon]]:
    started: list[Daemon] = []
    yield started
    for daemon in started:
        if daemon.proc.poll() is None:
            daemon.proc.kill()
            daemon.proc.wait(10)


def scan_documents(report: LeakReport, collections: dict[str, list[dict[str, Any]]]) -> None:
    for name, docs in collections.items():
        for doc in docs:
            for key, value in doc.items():
                text = key + "=" + json.dumps(value, ensure_ascii=False, default=str)
                report.scan(f"store {name} key {key}", text)
                report.key(f"store {name}", key)


def test_niffler_meta_stores_and_logs_no_identifier(
    hostile: HostileCorpus, tmp_path: Path, daemons: list[Daemon]
) -> None:
    config = meta_config(tmp_path, everything_featureset(tmp_path / "featuresets"))
    daemon = Daemon(config, tmp_path / "meta")
    daemons.append(daemon)
    sent = daemon.send(*hostile.files)
    figures = daemon.wait_handled(len(hostile.files))
    status = daemon.status_json()
    collections = daemon.documents()
    assert daemon.proc.poll() is None, "niffler-meta died"
    assert daemon.stop() == 0
    logs = daemon.logs()
    assert "niffler-meta stopped" in logs

    report = LeakReport(hostile)
    scan_documents(report, collections)
    report.scan_log("niffler-meta log", logs)
    report.assert_clean(tmp_path / "leaks-meta.json")

    assert sent.returncode == 0, sent.stdout + sent.stderr  # every file accepted, the deep one too
    good, bad = len(hostile.good), len(hostile.bad)
    for counts in (figures, status):
        assert counts["instances_received"] == len(hostile.files), counts
        assert counts["instances_extracted"] == good, counts
        assert counts["instances_failed"] == bad, counts
        assert counts["series_extracted"] == good, counts
    pseudo = Pseudonymizer(SECRET.encode())
    docs = {d["_id"]: d for d in collections["everything"]}
    assert set(docs) == {pseudo.uid(e.series_uid) for e in hostile.good}
    assert all(d["instance_count"] == 1 for d in docs.values())
    for entry in hostile.good:
        doc = docs[pseudo.uid(entry.series_uid)]
        assert doc["Modality"] == entry.modality
        assert doc["PatientID"] == pseudo.identifier("PatientID", entry.patient_id)
        assert doc["AccessionNumber"] == pseudo.identifier("AccessionNumber", entry.accession)


def test_niffler_meta_verbose_logs_no_identifier(
    hostile: HostileCorpus, tmp_path: Path, daemons: list[Daemon]
) -> None:
    config = meta_config(tmp_path, everything_featureset(tmp_path / "featuresets"))
    daemon = Daemon(config, tmp_path / "meta", "-v")
    daemons.append(daemon)
    daemon.send(*hostile.files)
    daemon.wait_handled(len(hostile.files))
    assert daemon.stop() == 0
    report = LeakReport(hostile)
    report.scan_log("niffler-meta -v log", daemon.logs())
    report.assert_clean(tmp_path / "leaks-meta-verbose.json")


# --- niffler-png as a real command ------------------------------------------------------------


def png_home(hostile: HostileCorpus, home: Path) -> Path:
    """Copy the corpus into folders named by raw PatientID, as a PACS export names them."""
    for entry in hostile.entries:
        target = home / entry.patient_id / entry.path.name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(entry.path, target)
    return home


def run_png(home: Path, out: Path, cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    command = [str(BIN / "niffler-png"), "--config", str(PNG_CONFIG), "--dicom-home", str(home)]
    return subprocess.run(
        [*command, "--output-directory", str(out), *args],
        env=daemon_env(), capture_output=True, text=True, timeout=300, cwd=cwd,
    )  # fmt: skip


def scan_png_output(report: LeakReport, out: Path, run: str) -> list[dict[str, str]]:
    with open(out / "metadata.csv", newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    header = (out / "metadata.csv").read_text(encoding="utf-8").split("\n", 1)[0]
    report.scan(f"{run} metadata.csv header", header)
    for column in rows[0] if rows else ():
        report.key(f"{run} metadata.csv column", column)
        report.scan(f"{run} metadata.csv column {column}", "\n".join(r[column] or "" for r in rows))
    images = out / "extracted-images"
    for path in sorted(images.rglob("*")):
        report.scan(f"{run} extracted-images name", str(path.relative_to(out)))
        if path.is_file():
            report.scan(f"{run} PNG bytes", path.read_bytes().decode("latin-1"))
    return rows


def test_niffler_png_writes_and_logs_no_identifier(hostile: HostileCorpus, tmp_path: Path) -> None:
    home = png_home(hostile, tmp_path / "home")
    report = LeakReport(hostile)
    for run, args in (("png", ()), ("png -v", ("-v", "--fresh"))):
        out = tmp_path / run.replace(" ", "")
        proc = run_png(home, out, tmp_path, *args)
        assert proc.returncode == 2, proc.stderr[-3000:]  # the deep file fails, the rest converts
        assert "1 DICOM file(s) failed" in proc.stderr
        rows = scan_png_output(report, out, run)
        assert len(rows) == len(hostile.good)
        assert len(list((out / "extracted-images").rglob("*.png"))) == len(hostile.good)
        with open(out / "failures.csv", newline="", encoding="utf-8") as handle:
            failures = list(csv.DictReader(handle))
        assert [Path(f["file"]).name for f in failures] == [p.name for p in hostile.failing]
        report.scan_log(f"{run} stdout", proc.stdout)
        report.scan_log(f"{run} stderr", proc.stderr)
    report.assert_clean(tmp_path / "leaks-png.json")


# --- a sequence too deep to parse --------------------------------------------------------------


def test_too_deep_sequence_fails_alone_and_the_daemon_survives_a_restart(
    tmp_path: Path, daemons: list[Daemon]
) -> None:
    deep = deep_sequence_file(tmp_path / "send" / "deep.dcm", 1500)
    good = generate_corpus(
        tmp_path / "send" / "good", CorpusSpec(patients=1, studies_per_patient=1, series_per_study=1,
                                               instances_per_series=1, rows=8, columns=8)
    )[0]  # fmt: skip
    (tmp_path / "featuresets").mkdir()
    # Extraction reads only the attributes featuresets select: select the deep one.
    (tmp_path / "featuresets" / "featureset.txt").write_text(
        "Modality\nSeriesInstanceUID\nPatientID\nAnatomicRegionSequence\n"
    )
    config = meta_config(tmp_path, tmp_path / "featuresets")
    daemon = Daemon(config, tmp_path / "meta")
    daemons.append(daemon)
    sent = daemon.send(deep, good.path)
    figures = daemon.wait_handled(2)
    assert daemon.proc.poll() is None, "niffler-meta died on the deep file"
    assert figures["instances_failed"] == 1 and figures["instances_extracted"] == 1, figures
    pseudo = Pseudonymizer(SECRET.encode())
    docs = daemon.documents()["featureset"]
    assert [d["_id"] for d in docs] == [pseudo.uid(good.series_uid)]
    assert docs[0]["Modality"] == "CT" and docs[0]["SeriesInstanceUID"] == pseudo.uid(good.series_uid)
    assert daemon.status_json()["instances_failed"] == 1
    assert daemon.stop() == 0, daemon.logs()[-3000:]
    first_run = daemon.logs()

    again = Daemon(config, tmp_path / "meta-restart")
    daemons.append(again)
    time.sleep(3)  # a crash loop, or a worker dying on the deep file again, would show by now
    assert again.proc.poll() is None, again.logs()[-3000:]
    figures = again.figures()
    assert figures["instances_failed"] == 1 and figures["instances_extracted"] == 1, figures
    assert figures["waiting_for_extraction"] == 0, figures
    assert again.stop() == 0
    restart_log = again.logs()
    assert "extraction failed" not in restart_log and "Traceback" not in restart_log, restart_log[-3000:]
    assert "RecursionError" not in first_run + sent.stdout + sent.stderr
