"""Real DICOM and MongoDB-wire peers on loopback, for tests, benchmarks and the demo.

Each peer is a real program (Orthanc, DCMTK, SecantusDB) started as its own
process on a free 127.0.0.1 port and stopped by its PID. Nothing here is used
by Niffler's modules at run time.
"""

from __future__ import annotations

import base64
import json
import os
import select
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "DICOMWEB_PLUGIN",
    "DcmqrscpPACS",
    "DcmtkStoreSCP",
    "OrthancPACS",
    "PynetdicomQRSCP",
    "SecantusServer",
    "TlsRelay",
    "dcmsend",
    "dcmtk_env",
    "free_port",
    "run_dcmtk",
    "self_signed_certificate",
    "wait_for_port",
]

LOOPBACK = "127.0.0.1"
ORTHANC_BIN = shutil.which("Orthanc") or "/usr/sbin/Orthanc"
#: Debian's orthanc-dicomweb plugin (QIDO-RS, WADO-RS, STOW-RS).
DICOMWEB_PLUGIN = "/usr/share/orthanc/plugins/libOrthancDicomWeb.so"


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        return int(sock.getsockname()[1])


def wait_for_port(port: int, timeout: float = 15.0, proc: subprocess.Popen[Any] | None = None) -> None:
    """Return once 127.0.0.1:*port* accepts connections, or raise TimeoutError."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process {proc.args!r} exited with {proc.returncode} before listening")
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.settimeout(0.2)
            if sock.connect_ex((LOOPBACK, port)) == 0:
                return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listened on {LOOPBACK}:{port} within {timeout} s")


def _stop(proc: subprocess.Popen[Any] | None, timeout: float = 10.0) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=5)


def dcmtk_env() -> dict[str, str]:
    """Return the environment for DCMTK tools: TCP_NODELAY=1 avoids Nagle stalls on loopback."""
    env = dict(os.environ)
    env["TCP_NODELAY"] = "1"
    return env


def run_dcmtk(
    args: Sequence[str], timeout: float = 300.0, check: bool = True
) -> subprocess.CompletedProcess[str]:
    """Run a DCMTK tool (argument list, no shell) and return its completed process."""
    result = subprocess.run(
        list(args), env=dcmtk_env(), capture_output=True, text=True, timeout=timeout, check=False
    )
    if check and result.returncode != 0:
        raise RuntimeError(
            f"{args[0]} exited {result.returncode}:\n{result.stdout[-2000:]}\n{result.stderr[-2000:]}"
        )
    return result


def storescu(
    port: int,
    *paths: str | Path,
    aec: str = "NIFFLER",
    aet: str = "MODALITY",
    check: bool = True,
    verbose: bool = False,
    timeout: float = 300.0,
) -> subprocess.CompletedProcess[str]:
    """Send files or folders (recursively) to 127.0.0.1:*port* with DCMTK storescu.

    *verbose* (``-v``) makes storescu print a refusal's status name, such as
    "Refused: OutOfResources"; leave it off when timing.
    """
    args = ["storescu", *(["-v"] if verbose else []), "-aet", aet, "-aec", aec, "+sd", "+r"]
    return run_dcmtk([*args, LOOPBACK, str(port), *map(str, paths)], timeout=timeout, check=check)


@dataclass
class OrthancPACS:
    """A real Orthanc PACS in its own process, on free loopback ports.

    *modalities* maps a name to (AE title, host, port): the AEs Orthanc will
    answer C-FIND/C-MOVE/C-GET for and send C-MOVE results to. Calling AEs not
    listed are refused, as in a real hospital PACS.

    *dicomweb* loads Debian's DICOMweb plugin (:data:`DICOMWEB_PLUGIN`), its
    root at :attr:`dicomweb_url`. *users* turns on HTTP basic authentication
    with these registered users (the first one is what :meth:`rest` logs in
    as); *rest_headers* go with every :meth:`rest` call (a bearer token a Lua
    ``IncomingHttpRequestFilter`` checks).
    """

    workdir: Path
    aet: str = "ORTHANC"
    modalities: Mapping[str, tuple[str, str, int]] = field(default_factory=dict)
    #: Further Orthanc configuration keys (e.g. ``MaximumStorageCacheSize``).
    extra: Mapping[str, Any] = field(default_factory=dict)
    dicomweb: bool = False
    users: Mapping[str, str] = field(default_factory=dict)
    rest_headers: Mapping[str, str] = field(default_factory=dict)
    dicom_port: int = 0
    http_port: int = 0
    proc: subprocess.Popen[bytes] | None = None

    @property
    def dicomweb_url(self) -> str:
        """The DICOMweb root (QIDO-RS, WADO-RS) of the plugin, when *dicomweb* is set."""
        return f"http://{LOOPBACK}:{self.http_port}/dicom-web"

    def start(self) -> OrthancPACS:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.dicom_port = self.dicom_port or free_port()
        self.http_port = self.http_port or free_port()
        config = {
            "Name": "NifflerTestPACS",
            "StorageDirectory": str(self.workdir / "db"),
            "IndexDirectory": str(self.workdir / "db"),
            "Plugins": [DICOMWEB_PLUGIN] if self.dicomweb else [],
            "DicomWeb": {"Enable": self.dicomweb, "Root": "/dicom-web/"},
            "HttpPort": self.http_port,
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": bool(self.users),
            "RegisteredUsers": dict(self.users),
            "DicomAet": self.aet,
            "DicomPort": self.dicom_port,
            "DicomCheckCalledAet": True,
            "DicomCheckModalityHost": False,
            "DicomAlwaysAllowEcho": True,
            "DicomAlwaysAllowStore": True,
            "DicomAlwaysAllowFind": False,
            "DicomAlwaysAllowGet": False,
            "DicomAlwaysAllowMove": False,
            "DicomModalities": {k: list(v) for k, v in self.modalities.items()},
            "SaveJobs": False,
            "StableAge": 5,
            "ConcurrentJobs": 2,
            **self.extra,
        }
        cfg = self.workdir / "orthanc.json"
        cfg.write_text(json.dumps(config, indent=2))
        log = open(self.workdir / "orthanc.log", "wb")  # noqa: SIM115 - lives with the process
        # Orthanc's DICOM layer is DCMTK: without TCP_NODELAY, Nagle's algorithm
        # holds each C-STORE of a C-MOVE about 40 ms on loopback.
        self.proc = subprocess.Popen(
            [ORTHANC_BIN, "--no-jobs", str(cfg)], stdout=log, stderr=subprocess.STDOUT, env=dcmtk_env()
        )
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"Orthanc exited {self.proc.returncode}; see {self.workdir}/orthanc.log")
            try:
                self.rest("/system")
                break
            except OSError:
                time.sleep(0.05)
        else:
            raise TimeoutError("Orthanc did not answer on its HTTP port")
        wait_for_port(self.dicom_port, proc=self.proc)
        return self

    def rest(self, path: str, body: bytes | None = None, method: str | None = None) -> Any:
        """Return the decoded JSON answer of Orthanc's REST API on loopback."""
        headers = dict(self.rest_headers)
        if self.users:
            user, password = next(iter(self.users.items()))
            login = base64.b64encode(f"{user}:{password}".encode()).decode()
            headers["Authorization"] = f"Basic {login}"
        req = urllib.request.Request(
            f"http://{LOOPBACK}:{self.http_port}{path}", data=body, method=method, headers=headers
        )
        with urllib.request.urlopen(req, timeout=30) as resp:  # noqa: S310
            payload = resp.read()
        return json.loads(payload) if payload else None

    def upload(self, files: Sequence[Path]) -> None:
        """Store *files* in the PACS through its REST API."""
        for path in files:
            answer = self.rest("/instances", body=Path(path).read_bytes(), method="POST")
            if answer.get("Status") not in ("Success", "AlreadyStored"):
                raise RuntimeError(f"Orthanc refused {path}: {answer}")

    def movescu_study(self, study_uid: str, calling_aet: str, destination_aet: str) -> None:
        """Ask the PACS, through DCMTK movescu, to C-MOVE one study to *destination_aet*."""
        query = ["-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={study_uid}"]
        run_dcmtk(
            [
                "movescu",
                "-aet",
                calling_aet,
                "-aec",
                self.aet,
                "-aem",
                destination_aet,
                "-S",
                *query,
                LOOPBACK,
                str(self.dicom_port),
            ]
        )

    def stop(self) -> None:
        _stop(self.proc)
        self.proc = None

    def kill(self) -> None:
        """Kill -9 the PACS, as a crash or a pulled plug would: connections break mid-answer."""
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(timeout=10)
            self.proc = None

    def __enter__(self) -> OrthancPACS:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


@dataclass
class SecantusServer:
    """A real MongoDB-wire server (SecantusDB) in its own process on loopback."""

    storage_path: Path
    port: int = 0
    proc: subprocess.Popen[bytes] | None = None

    @property
    def uri(self) -> str:
        return f"mongodb://{LOOPBACK}:{self.port}/?directConnection=true"

    def start(self) -> SecantusServer:
        self.storage_path.mkdir(parents=True, exist_ok=True)
        self.port = self.port or free_port()
        exe = Path(sys.executable).with_name("secantusd-py")
        cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "secantus"]
        log = open(self.storage_path.parent / f"secantus-{self.port}.log", "wb")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [
                *cmd,
                "--host",
                LOOPBACK,
                "--port",
                str(self.port),
                "--storage-path",
                str(self.storage_path),
                "--log-level",
                "WARNING",
                "--standalone",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        wait_for_port(self.port, timeout=30, proc=self.proc)
        return self

    def stop(self) -> None:
        _stop(self.proc, timeout=20)
        self.proc = None

    def kill(self) -> None:
        """Kill -9 the server, as a crash would."""
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(timeout=10)
            self.proc = None

    def __enter__(self) -> SecantusServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


@dataclass
class DcmtkStoreSCP:
    """DCMTK's own ``storescp`` as a reference receiver (benchmarks)."""

    output_dir: Path
    aet: str = "DCMTKSCP"
    port: int = 0
    #: ``+B`` (bit-preserving) writes datasets exactly as received.
    extra_args: Sequence[str] = ()
    proc: subprocess.Popen[bytes] | None = None

    def start(self) -> DcmtkStoreSCP:
        self.output_dir.mkdir(parents=True, exist_ok=True)
        self.port = self.port or free_port()
        self.proc = subprocess.Popen(
            [
                "storescp",
                "-aet",
                self.aet,
                "-od",
                str(self.output_dir),
                "-uf",
                *self.extra_args,
                str(self.port),
            ],
            env=dcmtk_env(),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_for_port(self.port, proc=self.proc)
        return self

    def stop(self) -> None:
        _stop(self.proc)
        self.proc = None

    def __enter__(self) -> DcmtkStoreSCP:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


DCMQRSCP_BIN = "/usr/bin/dcmqrscp"
DCMSEND_BIN = "/usr/bin/dcmsend"


def _loopback_destinations(destinations: Mapping[str, tuple[str, str, int]]) -> None:
    for name, (aet, host, port) in destinations.items():
        if host != LOOPBACK:
            raise ValueError(f"move destination {name} ({aet}) must be on {LOOPBACK}, not {host}")
        if not 0 < port < 65536:
            raise ValueError(f"move destination {name} ({aet}) has no valid port: {port}")


def dcmsend(
    port: int,
    files: Sequence[str | Path],
    aec: str,
    aet: str = "UPLOADER",
    timeout: float = 300.0,
    extra_args: Sequence[str] = (),
) -> subprocess.CompletedProcess[str]:
    """Send *files* in whatever transfer syntax they have to 127.0.0.1:*port* with DCMTK dcmsend.

    dcmsend proposes each file's own transfer syntax (plus an uncompressed
    fallback for lossless ones), so the peer receives the original encoding.
    It exits non-zero when any file was not stored.
    """
    args = [DCMSEND_BIN, "-aet", aet, "-aec", aec, *extra_args, LOOPBACK, str(port)]
    return run_dcmtk([*args, *map(str, files)], timeout=timeout)


@dataclass
class DcmqrscpPACS:
    """DCMTK's ``dcmqrscp`` archive (C-FIND, C-MOVE, C-GET, C-STORE) in its own process on loopback.

    *destinations* maps a symbolic name to (AE title, host, port): the
    HostTable of the config, i.e. the C-MOVE destinations it knows. It never
    reports NumberOf*Related* counts and cannot transcode a compressed
    instance. By default it accepts and proposes only the uncompressed
    syntaxes (Explicit VR Little/Big Endian, Implicit VR Little Endian, one
    context per storage SOP class), so only uncompressed (or deflated, which
    dcmsend inflates) instances can be loaded into it. On C-MOVE and C-GET
    it sends every instance on the first accepted context of its SOP class.
    Its C-FIND ignores a key below the query level: a STUDY-level query for
    a SeriesInstanceUID matches every study.
    *extra_args* are added to its command line (``-xy``: propose JPEG
    Baseline first in every outgoing context). *association_profiles*, when
    given, is the text of an ``-xf`` association configuration file;
    *profile_in* and *profile_out* name its profiles for incoming and
    outgoing associations.
    """

    workdir: Path
    aet: str = "DCMQR"
    destinations: Mapping[str, tuple[str, str, int]] = field(default_factory=dict)
    extra_args: Sequence[str] = ()
    association_profiles: str | None = None
    profile_in: str = ""
    profile_out: str = ""
    max_pdu: int = 16384
    dicom_port: int = 0
    proc: subprocess.Popen[bytes] | None = None

    @property
    def storage(self) -> Path:
        """The folder dcmqrscp keeps its instances and ``index.dat`` in."""
        return self.workdir / "db" / self.aet

    def config_text(self) -> str:
        """Return the dcmqrscp.cfg for this archive."""
        hosts = "".join(
            f"{name} = ({aet}, {host}, {port})\n" for name, (aet, host, port) in self.destinations.items()
        )
        return (
            f"NetworkTCPPort  = {self.dicom_port}\n"
            f"MaxPDUSize      = {self.max_pdu}\n"
            "MaxAssociations = 16\n"
            "HostTable BEGIN\n"
            f"{hosts}"
            "HostTable END\n"
            "VendorTable BEGIN\n"
            "VendorTable END\n"
            "AETable BEGIN\n"
            f"{self.aet}   {self.storage}   RW   (200, 1024mb)   ANY\n"
            "AETable END\n"
        )

    def start(self) -> DcmqrscpPACS:
        _loopback_destinations(self.destinations)
        if not 0 < len(self.aet) <= 16:
            raise ValueError(f"AE title {self.aet!r} must be 1 to 16 characters")
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.storage.mkdir(parents=True, exist_ok=True)
        self.dicom_port = self.dicom_port or free_port()
        cfg = self.workdir / "dcmqrscp.cfg"
        cfg.write_text(self.config_text())
        args = [DCMQRSCP_BIN, "-ll", "info", "-c", str(cfg), *self.extra_args]
        if self.association_profiles is not None:
            profiles = self.workdir / "assoc.cfg"
            profiles.write_text(self.association_profiles)
            args += ["-xf", str(profiles), self.profile_in, self.profile_out]
        log = open(self.workdir / "dcmqrscp.log", "wb")  # noqa: SIM115 - lives with the process
        self.proc = subprocess.Popen(
            [*args, str(self.dicom_port)], stdout=log, stderr=subprocess.STDOUT, env=dcmtk_env()
        )
        wait_for_port(self.dicom_port, proc=self.proc)
        return self

    def upload(self, files: Sequence[Path]) -> None:
        """Store *files*, each in its own transfer syntax, in the archive with dcmsend."""
        dcmsend(self.dicom_port, files, aec=self.aet)

    def stop(self) -> None:
        _stop(self.proc)
        self.proc = None

    def __enter__(self) -> DcmqrscpPACS:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


@dataclass
class PynetdicomQRSCP:
    """pynetdicom's own ``qrscp`` application (C-FIND, C-MOVE, C-GET, C-STORE) on loopback.

    It needs ``sqlalchemy``. *destinations* maps a symbolic name to (AE title,
    host, port), written as one ini section per C-MOVE destination. It keeps
    every instance in the transfer syntax it was stored in and, on C-MOVE,
    proposes one context per (SOP class, stored syntax) with that one syntax.
    On C-GET it accepts, in each context the requestor proposes, the first
    syntax of *its* list (Implicit VR Little Endian first). Its C-FIND answers
    one match per instance at every level (PATIENT, STUDY, SERIES), never
    returns NumberOf*Related* counts, and refuses (0xA900) an identifier with
    a key below the query level.
    """

    workdir: Path
    aet: str = "QRSCP"
    destinations: Mapping[str, tuple[str, str, int]] = field(default_factory=dict)
    max_pdu: int = 16382
    timeout: float = 30.0
    dicom_port: int = 0
    proc: subprocess.Popen[bytes] | None = None

    @property
    def storage(self) -> Path:
        """The folder qrscp stores its instances in (one file per SOPInstanceUID)."""
        return self.workdir / "instances"

    def config_text(self) -> str:
        """Return the qrscp.ini for this archive."""
        lines = [
            "[DEFAULT]",
            f"ae_title: {self.aet}",
            f"port: {self.dicom_port}",
            f"max_pdu: {self.max_pdu}",
            f"acse_timeout: {self.timeout}",
            f"dimse_timeout: {self.timeout}",
            f"network_timeout: {self.timeout}",
            f"bind_address: {LOOPBACK}",
            f"instance_location: {self.storage}",
            f"database_location: {self.workdir / 'instances.sqlite'}",
            "log_identifier: False",
            "",
        ]
        for aet, host, port in self.destinations.values():
            lines += [f"[{aet}]", f"address: {host}", f"port: {port}", ""]
        return "\n".join(lines)

    def start(self) -> PynetdicomQRSCP:
        _loopback_destinations(self.destinations)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.dicom_port = self.dicom_port or free_port()
        ini = self.workdir / "qrscp.ini"
        ini.write_text(self.config_text())
        log = open(self.workdir / "qrscp.log", "wb")  # noqa: SIM115 - lives with the process
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "pynetdicom", "qrscp", "-ll", "info", "-c", str(ini)],
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=self.workdir,
        )
        wait_for_port(self.dicom_port, timeout=30, proc=self.proc)
        return self

    def upload(self, files: Sequence[Path]) -> None:
        """Store *files* in the archive with dcmsend, compressed ones in their own transfer syntax.

        ``--decompress-never`` keeps dcmsend from offering a decompressed
        fallback, which qrscp (accepting the first syntax of *its* list,
        Implicit VR Little Endian) would otherwise take. Uncompressed files
        are still stored as Implicit VR Little Endian, deflated ones as deflated.
        """
        dcmsend(self.dicom_port, files, aec=self.aet, extra_args=["--decompress-never"])

    def stop(self) -> None:
        _stop(self.proc)
        self.proc = None

    def __enter__(self) -> PynetdicomQRSCP:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def self_signed_certificate(folder: Path, host: str = LOOPBACK) -> tuple[Path, Path]:
    """Make a self-signed certificate for *host* with openssl; return (certificate PEM, key PEM)."""
    folder.mkdir(parents=True, exist_ok=True)
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-keyout", str(key),
         "-out", str(cert), "-subj", f"/CN={host}", "-addext", f"subjectAltName=IP:{host}"],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    return cert, key


@dataclass
class TlsRelay:
    """HTTPS on a free loopback port in front of a plain HTTP one, as a TLS front end (nginx) is.

    Each connection's TLS is terminated here and its bytes relayed to
    127.0.0.1:*backend_port* by one thread (select over both sockets: an SSL
    socket must not be read and written from two threads at once).
    """

    backend_port: int
    certificate: Path
    key: Path
    port: int = 0
    _server: socket.socket | None = None
    _stop: threading.Event = field(default_factory=threading.Event)

    def start(self) -> TlsRelay:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(self.certificate, self.key)
        self._server = socket.create_server((LOOPBACK, self.port))
        self._server.settimeout(0.2)
        self.port = int(self._server.getsockname()[1])
        threading.Thread(target=self._accept, args=(context,), daemon=True, name="tls-relay").start()
        return self

    def _accept(self, context: ssl.SSLContext) -> None:
        assert self._server is not None
        while not self._stop.is_set():
            try:
                conn, _ = self._server.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            threading.Thread(target=self._relay, args=(context, conn), daemon=True).start()

    def _relay(self, context: ssl.SSLContext, conn: socket.socket) -> None:
        try:
            conn.settimeout(10)
            tls = context.wrap_socket(conn, server_side=True)
        except (OSError, ssl.SSLError):  # a client that does not trust us hangs up in the handshake
            conn.close()
            return
        with tls, socket.create_connection((LOOPBACK, self.backend_port)) as backend:
            tls.settimeout(None)
            while not self._stop.is_set():
                ready = [tls] if tls.pending() else select.select([tls, backend], [], [], 0.5)[0]
                try:
                    for sock in ready:
                        data = sock.recv(1 << 16)
                        if not data:
                            return
                        (backend if sock is tls else tls).sendall(data)
                except ssl.SSLWantReadError:
                    continue
                except OSError:
                    return

    def stop(self) -> None:
        self._stop.set()
        if self._server is not None:
            self._server.close()
            self._server = None

    def __enter__(self) -> TlsRelay:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
