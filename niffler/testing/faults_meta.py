"""niffler-meta under faults and load: the real daemon, DCMTK senders that account for every instance.

For the fault and load tests (``tests/integration/test_faults_meta.py``,
``test_load_meta.py``) and runs by hand:

- :class:`MetaDaemon` runs the ``niffler-meta`` console script as its own
  process, as systemd would, and stops it by its PID;
- :func:`send_files` sends with DCMTK's ``/usr/bin/storescu -v`` and reads
  back the status the receiver gave each file (or that it never answered),
  so a test counts what was sent, refused and acknowledged, file by file;
  :class:`SeriesStream` is a sender thread doing so series after series;
- :class:`SeriesCloner` turns a few generated realistic instances into
  thousands of distinct ones in a second (new Study, Series and SOP Instance
  UIDs written into the encoded bytes): generating each with pydicom takes
  about 8 ms, too slow for a load test's senders;
- :func:`tmpfs` mounts a small RAM disk (root only) that a test can fill.

Nothing here is used by Niffler's modules at run time.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import re
import shutil
import signal
import sqlite3
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from niffler.meta_extraction.service import INDEX_FILE
from niffler.testing.corpus import Instance
from niffler.testing.peers import LOOPBACK, dcmtk_env, free_port, wait_for_port
from niffler.testing.receiver import FEATURESETS

__all__ = [
    "NIFFLER_META",
    "STORESCU",
    "SUCCESS",
    "ClonedInstance",
    "MetaDaemon",
    "MountFailed",
    "SendReport",
    "SeriesCloner",
    "SeriesStream",
    "clone_corpus",
    "fill_disk",
    "index_rows",
    "send_files",
    "tmpfs",
    "write_meta_config",
]

#: DCMTK's storescu by absolute path: pynetdicom installs a ``storescu`` of its own into the venv.
STORESCU = "/usr/bin/storescu"
NIFFLER_META = Path(sys.executable).with_name("niffler-meta")
#: The status storescu prints for an instance the receiver stored.
SUCCESS = "Success"

_SENDING = re.compile(r"^I: Sending file: (?P<path>.+)$")
_RESPONSE = re.compile(r"^I: Received Store Response \((?P<status>.+)\)$")
_PYDICOM_ROOT = "1.2.826.0.1.3680043.8.498."
_SOP_INSTANCE_UID, _MEDIA_SOP_INSTANCE_UID = 0x00080018, 0x00020003
_STUDY_UID, _SERIES_UID = 0x0020000D, 0x0020000E


# --- the daemon -------------------------------------------------------------------------------


def write_meta_config(
    folder: Path,
    *,
    storage: Path,
    state: Path,
    mongo_uri: str,
    database: str,
    port: int | None = None,
    **extra: Any,
) -> Path:
    """Write a niffler-meta config listening as NIFFLER on 127.0.0.1 into *folder*; return its path."""
    config = {
        "QueryAet": f"NIFFLER:{port or free_port()}",
        "BindAddress": LOOPBACK,
        "StorageFolder": str(storage),
        "StateFolder": str(state),
        "FeaturesetFolder": str(FEATURESETS),
        "MongoURI": mongo_uri,
        "DatabaseName": database,
        **extra,
    }
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "meta.json"
    path.write_text(json.dumps(config, indent=2))
    return path


@dataclass
class MetaDaemon:
    """The ``niffler-meta`` console script in its own process, its output appended to *log*."""

    config: Path
    log: Path
    env: Mapping[str, str]
    proc: subprocess.Popen[bytes] | None = None

    @property
    def port(self) -> int:
        return int(json.loads(self.config.read_text())["QueryAet"].rsplit(":", 1)[1])

    def start(self, timeout: float = 30.0) -> MetaDaemon:
        """Start the daemon and return once its Storage SCP listens."""
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(
                [str(NIFFLER_META), "--config", str(self.config)],
                env=dict(self.env),
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        wait_for_port(self.port, timeout=timeout, proc=self.proc)
        return self

    def terminate(self, timeout: float = 60.0) -> int:
        """Send SIGTERM (as ``systemctl stop`` does) and return the exit code."""
        assert self.proc is not None, "the daemon is not running"
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        finally:
            if self.proc.poll() is not None:
                self.proc = None

    def kill(self) -> None:
        """Kill -9 the daemon, as a crash or the OOM killer would."""
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(10)
            self.proc = None

    def stop(self) -> None:
        """Stop the daemon if it still runs (teardown): SIGTERM, then SIGKILL after a minute."""
        if self.proc is None or self.proc.poll() is not None:
            self.proc = None
            return
        try:
            self.terminate()
        except subprocess.TimeoutExpired:
            self.kill()

    def text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


def index_rows(state_folder: Path) -> dict[str, tuple[str, str]]:
    """Return the receiver's index as {pseudonymised SOP Instance UID: (state, path)}."""
    db = sqlite3.connect(f"file:{state_folder / INDEX_FILE}?mode=ro", uri=True, timeout=10)
    try:
        rows = db.execute("SELECT sop_key, state, path FROM instances")
        return {key: (state, path) for key, state, path in rows}
    finally:
        db.close()


# --- senders ----------------------------------------------------------------------------------


@dataclass
class SendReport:
    """What one storescu run did: the status the receiver answered for each file, if it answered."""

    files: list[Path]
    #: File -> storescu's name of the receiver's status ("Success", "Refused: OutOfResources", ...).
    statuses: dict[Path, str] = field(default_factory=dict)
    returncode: int = 0
    output: str = ""
    seconds: float = 0.0

    @property
    def stored(self) -> list[Path]:
        """Files the receiver acknowledged with Success."""
        return [f for f in self.files if self.statuses.get(f) == SUCCESS]

    @property
    def refused(self) -> list[Path]:
        """Files the receiver answered with a status other than Success."""
        return [f for f in self.files if f in self.statuses and self.statuses[f] != SUCCESS]

    @property
    def unanswered(self) -> list[Path]:
        """Files never answered: not sent, or the association ended before the response."""
        return [f for f in self.files if f not in self.statuses]

    @property
    def association_rejected(self) -> bool:
        return "Association Rejected" in self.output


def send_files(
    port: int,
    files: Sequence[Path],
    *,
    aec: str = "NIFFLER",
    aet: str = "MODALITY",
    timeout: float = 300.0,
) -> SendReport:
    """Send *files* to 127.0.0.1:*port* in one association with DCMTK storescu; report each file's status.

    storescu goes on after a refused file, so every file gets a status
    unless the association is rejected, aborted or cut.
    """
    args = [STORESCU, "-v", "-aet", aet, "-aec", aec, LOOPBACK, str(port), *map(str, files)]
    started = time.monotonic()
    result = subprocess.run(
        args, env=dcmtk_env(), capture_output=True, text=True, timeout=timeout, check=False
    )
    report = SendReport(
        list(files), returncode=result.returncode, output=result.stdout + result.stderr,
        seconds=time.monotonic() - started,
    )  # fmt: skip
    by_name = {str(f): f for f in files}
    current: Path | None = None
    for line in report.output.splitlines():
        sending = _SENDING.match(line)
        if sending is not None:
            current = by_name.get(sending["path"])
            continue
        response = _RESPONSE.match(line)
        if response is not None and current is not None:
            report.statuses[current] = response["status"]
            current = None
    return report


class SeriesStream(threading.Thread):
    """A sender streaming series after series to 127.0.0.1:*port*, one storescu association each.

    *next_series* gives the next series to send, or None when there is no
    more. The stream stops at that, at *until* (a ``time.monotonic()``
    deadline: the association under way still finishes), at :meth:`halt`, or
    after a send left files unanswered when *stop_when_cut* (the receiver
    went away). :attr:`sent` keeps every series with the report of its send.
    """

    def __init__(
        self,
        port: int,
        next_series: Callable[[], list[ClonedInstance] | None],
        *,
        until: float | None = None,
        pause: float = 0.0,
        stop_when_cut: bool = False,
        aet: str = "MODALITY",
    ) -> None:
        super().__init__(name=f"stream-{aet}", daemon=True)
        self.port = port
        self.next_series = next_series
        self.until = until
        self.pause = pause
        self.stop_when_cut = stop_when_cut
        self.aet = aet
        self.sent: list[tuple[list[ClonedInstance], SendReport]] = []
        self.error: BaseException | None = None
        self._halt = threading.Event()

    def run(self) -> None:
        try:
            while not self._halt.is_set() and (self.until is None or time.monotonic() < self.until):
                series = self.next_series()
                if series is None:
                    return
                report = send_files(self.port, [inst.path for inst in series], aet=self.aet)
                self.sent.append((series, report))
                if self.stop_when_cut and report.unanswered:
                    return
                if self.pause:
                    self._halt.wait(self.pause)
        except BaseException as exc:  # the test asserts there was none
            self.error = exc

    def halt(self) -> None:
        self._halt.set()

    def instances(self, status: str | None = SUCCESS) -> list[ClonedInstance]:
        """Return the instances sent whose status was *status* (None: every one sent or tried)."""
        return [
            inst
            for series, report in self.sent
            for inst in series
            if status is None or report.statuses.get(inst.path) == status
        ]


# --- corpus -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class ClonedInstance:
    """A copy of a generated instance under new Study, Series and SOP Instance UIDs."""

    path: Path
    study_uid: str
    series_uid: str
    sop_uid: str
    #: The generated instance it copies (patient, scanner, dates and pixels are its).
    template: Instance


def _element(tag: int, uid: str) -> bytes:
    raw = uid.encode("ascii")
    raw += b"\0" * (len(raw) % 2)
    return struct.pack("<HH2sH", tag >> 16, tag & 0xFFFF, b"UI", len(raw)) + raw


def _swap_uid(data: bytes, tags: Sequence[int], old: str, new: str) -> bytes:
    for tag in tags:
        before, after = _element(tag, old), _element(tag, new)
        if before not in data:
            raise ValueError(f"({tag >> 16:04X},{tag & 0xFFFF:04X}) {old} is not in the template")
        data = data.replace(before, after)
    return data


def _uid_like(old: str, rng: random.Random, taken: set[str]) -> str:
    """Return a new UID as long as *old* (so the element keeps its length), never one in *taken*."""
    digits = len(old) - len(_PYDICOM_ROOT)
    if digits < 20:
        raise ValueError(f"template UID {old} is too short to replace in place")
    while True:
        uid = _PYDICOM_ROOT + str(rng.randrange(10 ** (digits - 1), 10**digits))
        if uid not in taken:
            taken.add(uid)
            return uid


class SeriesCloner:
    """Writes new series copied from the series of a few generated instances, one series per call.

    Each new series copies one template series (round robin) instance by
    instance, under a new StudyInstanceUID, SeriesInstanceUID and
    SOPInstanceUID (and MediaStorageSOPInstanceUID) of the same length,
    replaced in the encoded bytes: every other byte is the template's. The
    templates must be Explicit VR Little Endian files from
    :func:`~niffler.testing.corpus.generate_corpus`. One cloner per thread.
    """

    def __init__(self, templates: Sequence[Instance], out_dir: Path, seed: int = 0) -> None:
        by_series: dict[str, list[Instance]] = {}
        for inst in templates:
            by_series.setdefault(inst.series_uid, []).append(inst)
        self._groups = list(by_series.values())
        self._encoded = {inst.path: inst.path.read_bytes() for inst in templates}
        self._rng = random.Random(seed)
        self._taken = {uid for inst in templates for uid in (inst.study_uid, inst.series_uid, inst.sop_uid)}
        self._out_dir = out_dir
        self._made = 0
        out_dir.mkdir(parents=True, exist_ok=True)

    def next_series(self) -> list[ClonedInstance]:
        """Write the next new series; return its instances."""
        group = self._groups[self._made % len(self._groups)]
        study_uid = _uid_like(group[0].study_uid, self._rng, self._taken)
        series_uid = _uid_like(group[0].series_uid, self._rng, self._taken)
        copies = []
        for i, inst in enumerate(group):
            sop_uid = _uid_like(inst.sop_uid, self._rng, self._taken)
            data = _swap_uid(self._encoded[inst.path], (_STUDY_UID,), inst.study_uid, study_uid)
            data = _swap_uid(data, (_SERIES_UID,), inst.series_uid, series_uid)
            data = _swap_uid(data, (_MEDIA_SOP_INSTANCE_UID, _SOP_INSTANCE_UID), inst.sop_uid, sop_uid)
            path = self._out_dir / f"s{self._made:05d}_i{i:04d}.dcm"
            path.write_bytes(data)
            copies.append(ClonedInstance(path, study_uid, series_uid, sop_uid, inst))
        self._made += 1
        return copies


def clone_corpus(
    templates: Sequence[Instance], out_dir: Path, series: int, seed: int = 0
) -> list[list[ClonedInstance]]:
    """Write *series* new series copied from the *templates* (see :class:`SeriesCloner`), series by series."""
    cloner = SeriesCloner(templates, out_dir, seed)
    return [cloner.next_series() for _ in range(series)]


# --- a disk that fills ------------------------------------------------------------------------


class MountFailed(RuntimeError):
    """mount refused (not root, or no tmpfs in this container): the caller skips, saying why."""


def _tool(name: str) -> str:
    return shutil.which(name) or f"/usr/bin/{name}"


@contextlib.contextmanager
def tmpfs(folder: Path, size_mb: int) -> Iterator[Path]:
    """Mount a tmpfs of *size_mb* MiB on *folder* for the block; unmount it after, even if busy."""
    folder.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(
        [_tool("mount"), "-t", "tmpfs", "-o", f"size={size_mb}m,mode=0700", "tmpfs", str(folder)],
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    if mounted.returncode != 0:
        raise MountFailed(mounted.stderr.strip() or f"mount exited {mounted.returncode}")
    try:
        yield folder
    finally:
        for _ in range(50):
            unmounted = subprocess.run([_tool("umount"), str(folder)], capture_output=True, check=False)
            if unmounted.returncode == 0:
                break
            time.sleep(0.1)
        else:
            subprocess.run([_tool("umount"), "-l", str(folder)], capture_output=True, check=False)


def fill_disk(filler: Path, leave_bytes: int = 0) -> int:
    """Grow *filler* until its filesystem has at most *leave_bytes* free; return the bytes written."""
    chunk = b"\0" * (1 << 20)
    written = 0
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        while True:
            room = shutil.disk_usage(filler.parent).free - leave_bytes
            if room <= 0:
                break
            try:
                written += os.write(fd, chunk[: min(len(chunk), room)])
            except OSError:  # full before the estimate said so
                break
    finally:
        os.close(fd)
    return written
