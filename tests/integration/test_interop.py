"""niffler-cold and niffler-meta against more PACS than Orthanc, with transfer syntaxes mixed.

Peers, each a real program on 127.0.0.1 (see niffler/testing/peers.py):

- Orthanc, loaded over REST with the mixed corpus (nine syntaxes in every
  study, see niffler/testing/interop.py);
- pynetdicom's ``qrscp``, loaded with dcmsend with the same corpus (it keeps
  the compressed syntaxes and holds the uncompressed ones as Implicit VR LE);
- DCMTK's ``dcmqrscp``, loaded with dcmsend with an uncompressed corpus
  (Explicit/Implicit VR Little Endian, Explicit VR Big Endian, deflated):
  by default it accepts nothing else, it cannot transcode, and it sends every
  instance of a SOP class on one context, so no dcmqrscp can serve a study
  stored in several compressed syntaxes;
- the same dcmqrscp run with ``-xy``: every context it proposes for a C-MOVE
  lists JPEG Baseline (lossy) first, then the uncompressed syntaxes.

Niffler is driven only through its console commands, as an operator would.
Every run must give back exactly the instances its CSV row names, each
decoding to the pixels that were sent (a lossless original in a lossless
syntax, whatever syntax it travelled in), and a retrieval report whose
counts are the truth: ``instances_expected`` is what the PACS reported, blank
when it reports nothing (dcmqrscp and qrscp never send NumberOf*Related*).

niffler-meta receives the mixed corpus from DCMTK senders: storescu offering
JPEG Baseline first in every SOP class, and dcmsend offering each file's own
syntax. Everything must be stored, and nothing as lossy unless it was.
"""

from __future__ import annotations

import csv
import json
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from pydicom import dcmread
from pydicom.uid import (
    UID,
    CTImageStorage,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGLosslessSV1,
    JPEGLSLossless,
    RLELossless,
    SecondaryCaptureImageStorage,
)

from niffler.testing.interop import (
    LOSSLESS_SYNTAXES,
    MIXED_SYNTAXES,
    InteropInstance,
    InteropSpec,
    decoded,
    generate_interop_corpus,
)
from niffler.testing.peers import (
    DcmqrscpPACS,
    OrthancPACS,
    PynetdicomQRSCP,
    free_port,
    run_dcmtk,
    wait_for_port,
)

LOOPBACK = "127.0.0.1"
NIFFLER_COLD = Path(sys.executable).with_name("niffler-cold")
NIFFLER_META = Path(sys.executable).with_name("niffler-meta")
FEATURESETS = Path(__file__).resolve().parents[2] / "configs" / "featuresets"
STORESCU = "/usr/bin/storescu"  # DCMTK's, not pynetdicom's console script of the same name
UNCOMPRESSED = (
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    ExplicitVRBigEndian,
    DeflatedExplicitVRLittleEndian,
)
#: A lossy original may arrive decoded by another JPEG decoder than ours: allow its rounding.
LOSSY_TOLERANCE = 4

Server = OrthancPACS | DcmqrscpPACS | PynetdicomQRSCP


@dataclass
class Peer:
    name: str
    server: Server
    manifest: list[InteropInstance]
    #: The NIFFLER port this PACS knows as its C-MOVE destination.
    scp_port: int
    #: Whether its C-FIND answers NumberOfStudyRelatedInstances (and ...SeriesRelated...).
    reports_counts: bool


@dataclass(frozen=True)
class Corpora:
    mixed: list[InteropInstance]
    uncompressed: list[InteropInstance]


@pytest.fixture(scope="module")
def corpora(tmp_path_factory: pytest.TempPathFactory) -> Corpora:
    root = tmp_path_factory.mktemp("interop-corpus")
    return Corpora(
        mixed=generate_interop_corpus(root / "mixed"),
        uncompressed=generate_interop_corpus(
            root / "uncompressed", InteropSpec(syntaxes=UNCOMPRESSED, seed=12)
        ),
    )


@pytest.fixture(scope="module")
def peers(tmp_path_factory: pytest.TempPathFactory, corpora: Corpora) -> Iterator[Callable[[str], Peer]]:
    """Start each PACS the first time a test asks for it; all are stopped after the module."""
    root = tmp_path_factory.mktemp("interop-peers")
    started: dict[str, Peer] = {}
    servers: list[Server] = []
    broken: dict[str, str] = {}

    def get(name: str) -> Peer:
        if name in broken:
            pytest.fail(f"{name} could not be started and loaded: {broken[name]}")
        if name in started:
            return started[name]
        scp_port = free_port()
        dest = {"niffler": ("NIFFLER", LOOPBACK, scp_port)}
        server: Server
        if name == "orthanc":
            server = OrthancPACS(root / name, modalities=dest)
        elif name == "qrscp":
            server = PynetdicomQRSCP(root / name, destinations=dest)
        elif name in ("dcmqrscp", "dcmqrscp-xy"):
            extra = ["-xy"] if name.endswith("-xy") else []
            server = DcmqrscpPACS(root / name, destinations=dest, extra_args=extra)
        else:
            raise ValueError(name)
        manifest = corpora.uncompressed if name.startswith("dcmqrscp") else corpora.mixed
        counts = name == "orthanc"
        servers.append(server)
        try:
            server.start()
            server.upload([i.path for i in manifest])
        except Exception as exc:
            broken[name] = str(exc)[-2000:]
            raise
        started[name] = Peer(name, server, manifest, scp_port, counts)
        return started[name]

    yield get
    for server in servers:
        server.stop()


# --- what arrived -----------------------------------------------------------------------------


def dicom_files(storage: Path) -> list[Path]:
    """Every stored DICOM file under *storage*, leaving out files still being written (dot names)."""
    return sorted(
        p
        for p in storage.rglob("*.dcm")
        if p.is_file()
        and not p.name.startswith(".")
        and not any(part.startswith(".niffler-incoming") for part in p.parts)
    )


def syntax_name(uid: str) -> str:
    return UID(uid).name or uid


def arrival_problems(files: Sequence[Path], want: set[str], by_sop: dict[str, InteropInstance]) -> list[str]:
    """Everything wrong with what is on disk: missing, extra, doubled, lossy or changed pixels."""
    problems: list[str] = []
    seen: Counter[str] = Counter()
    for path in files:
        try:
            ds = dcmread(path)
        except Exception as exc:  # an unreadable file is a finding
            problems.append(f"{path.name}: unreadable ({exc})")
            continue
        sop = str(ds.SOPInstanceUID)
        seen[sop] += 1
        original = by_sop.get(sop)
        if original is None:
            continue
        ts = str(ds.file_meta.TransferSyntaxUID)
        sent = syntax_name(original.transfer_syntax)
        if original.lossy:
            if ts not in LOSSLESS_SYNTAXES and ts != original.transfer_syntax:
                problems.append(f"lossy original ({sent}) recompressed as {syntax_name(ts)}")
            if ds.get("LossyImageCompression") != "01":
                problems.append(f"lossy original ({sent}) arrived without LossyImageCompression 01")
        else:
            if ts not in LOSSLESS_SYNTAXES:
                problems.append(f"lossless original ({sent}) arrived in lossy {syntax_name(ts)}")
            if ds.get("LossyImageCompression") == "01":
                problems.append(f"lossless original ({sent}) arrived marked LossyImageCompression 01")
        try:
            pixels = decoded(ds)
        except Exception as exc:  # an undecodable arrival is a finding
            problems.append(f"{sent} original arrived as {syntax_name(ts)} and does not decode: {exc}")
            continue
        if pixels.shape != original.pixels.shape:
            problems.append(f"{sent} original: pixel shape {pixels.shape} != {original.pixels.shape}")
        elif original.lossy:
            diff = np.abs(pixels.astype(np.int32) - original.pixels.astype(np.int32))
            if int(diff.max()) > LOSSY_TOLERANCE:
                problems.append(f"lossy original ({sent}) decodes to other pixels (max diff {diff.max()})")
        elif not np.array_equal(pixels, original.pixels):
            problems.append(f"lossless original ({sent}) arrived as {syntax_name(ts)} with other pixels")
    got = set(seen)
    missing = want - got
    if missing:
        lost = Counter(syntax_name(by_sop[s].transfer_syntax) for s in missing)
        problems.insert(0, f"{len(missing)} of {len(want)} instances missing; originals lost: {dict(lost)}")
    extra = got - want
    if extra:
        problems.insert(0, f"{len(extra)} instances arrived that were not asked for (want {len(want)})")
    doubled = [s for s, n in seen.items() if n > 1]
    if doubled:
        problems.append(f"{len(doubled)} instances stored more than once")
    return problems


# --- niffler-cold ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Row:
    """A CSV row type: its text, the SOPInstanceUIDs it names and how many studies they are in."""

    csv: Callable[[list[InteropInstance]], str]
    wants: Callable[[list[InteropInstance]], set[str]]
    studies: int


def _series_of(manifest: list[InteropInstance]) -> str:
    """The second series of patient 000102's second study."""
    return list(dict.fromkeys(i.series_uid for i in manifest if i.accession == "IOP00101"))[1]


def _sops(manifest: list[InteropInstance], keep: Callable[[InteropInstance], bool]) -> set[str]:
    return {i.sop_uid for i in manifest if keep(i)}


ROWS = {
    "patient-id": Row(
        lambda m: "PatientID\n000101\n",
        lambda m: _sops(m, lambda i: i.patient_id == "000101"),
        2,
    ),
    "patient-id+accession": Row(
        lambda m: "PatientID,AccessionNumber\n000101,IOP00001\n",
        lambda m: _sops(m, lambda i: i.accession == "IOP00001"),
        1,
    ),
    "patient-id+study-date": Row(  # both patients have a study that day
        lambda m: "PatientID,StudyDate\n000102,20210304\n",
        lambda m: _sops(m, lambda i: i.patient_id == "000102" and i.study_date == "20210304"),
        1,
    ),
    "series-uid": Row(
        lambda m: f"SeriesInstanceUID\n{_series_of(m)}\n",
        lambda m: _sops(m, lambda i: i.series_uid == _series_of(m)),
        1,
    ),
}
#: (peer, mode) pairs. dcmqrscp -xy changes only what it proposes when it opens the C-MOVE
#: association; for C-GET Niffler proposes and the result is the plain dcmqrscp's.
#: "move-x2": C-MOVE with two workers, so two receiver processes share the destination port.
PEER_MODES = [
    ("orthanc", "move"),
    ("orthanc", "move-x2"),
    ("orthanc", "get"),
    ("dcmqrscp", "move"),
    ("dcmqrscp", "move-x2"),
    ("dcmqrscp", "get"),
    ("dcmqrscp-xy", "move"),
    ("qrscp", "move"),
    ("qrscp", "move-x2"),
    ("qrscp", "get"),
]


def run_cold(
    peer: Peer, workdir: Path, rows: str, mode: str
) -> tuple[subprocess.CompletedProcess[str], Path]:
    workdir.mkdir(parents=True, exist_ok=True)
    storage = workdir / "storage"
    config = workdir / "cold.json"
    config.write_text(
        json.dumps(
            {
                "SrcAet": f"{peer.server.aet}@{LOOPBACK}:{peer.server.dicom_port}",
                "QueryAet": f"NIFFLER:{peer.scp_port}",
                "StorageFolder": str(storage),
                "Retries": 1,
                "RetryDelaySeconds": 0.05,
                "TimeoutSeconds": 20,
                "MaxNifflerProcesses": 2 if mode == "move-x2" else 1,
            }
        )
    )
    table = workdir / "rows.csv"
    table.write_text(rows, encoding="utf-8")
    args = [str(NIFFLER_COLD), "--config", str(config), "--csv", str(table), "--mode", mode.split("-")[0]]
    result = subprocess.run(args, capture_output=True, text=True, timeout=180, check=False)
    return result, storage


def report_rows(storage: Path) -> list[dict[str, str]]:
    path = storage / "retrieval-report.csv"
    if not path.exists():
        return []
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def cold_log(result: subprocess.CompletedProcess[str]) -> str:
    lines = (result.stdout + result.stderr).splitlines()
    kept = [line for line in lines if "WARNING" in line or "ERROR" in line or "row(s):" in line]
    return "\n".join((kept or lines)[-12:])


@pytest.mark.parametrize("row_name", list(ROWS))
@pytest.mark.parametrize(("peer_name", "mode"), PEER_MODES, ids=[f"{p}-{m}" for p, m in PEER_MODES])
def test_cold_row_retrieves_exactly_its_instances_losslessly_and_reports_true_counts(
    peers: Callable[[str], Peer], tmp_path: Path, peer_name: str, mode: str, row_name: str
) -> None:
    peer = peers(peer_name)
    row = ROWS[row_name]
    result, storage = run_cold(peer, tmp_path, row.csv(peer.manifest), mode)

    by_sop = {i.sop_uid: i for i in peer.manifest}
    want = row.wants(peer.manifest)
    assert want, "the row selects nothing in the corpus"
    problems = arrival_problems(dicom_files(storage), want, by_sop)
    if result.returncode != 0:
        problems.insert(0, f"niffler-cold exited {result.returncode}")
    if mode == "move-x2" and "2 receiver processes" not in result.stderr:
        problems.append("niffler-cold did not receive in two processes")
    expected = {
        "status": "done",
        "studies": str(row.studies),
        "instances_expected": str(len(want)) if peer.reports_counts else "",
        "instances_received": str(len(want)),
    }
    reported = report_rows(storage)
    if len(reported) != 1:
        problems.append(f"retrieval-report.csv has {len(reported)} rows, not 1")
    else:
        got = {k: reported[0].get(k, "<missing>") for k in expected}
        if got != expected:
            problems.append(f"report {got} (error: {reported[0].get('error', '')!r}), expected {expected}")
    if problems:
        pytest.fail("\n".join([*problems, "--- niffler-cold:", cold_log(result)]), pytrace=False)


# --- niffler-meta ------------------------------------------------------------------------------


@dataclass
class Meta:
    port: int
    storage: Path
    proc: subprocess.Popen[bytes]


@pytest.fixture(scope="module")
def meta(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Meta]:
    """The real niffler-meta daemon (embedded store) listening as NIFFLER on loopback."""
    root = tmp_path_factory.mktemp("interop-meta")
    port = free_port()
    config = root / "meta.json"
    config.write_text(
        json.dumps(
            {
                "QueryAet": f"NIFFLER:{port}",
                "BindAddress": LOOPBACK,
                "StorageFolder": str(root / "data"),
                "StateFolder": str(root / "state"),
                "FeaturesetFolder": str(FEATURESETS),
                "MongoURI": "",
            }
        )
    )
    with open(root / "meta.log", "wb") as log:
        proc = subprocess.Popen(
            [str(NIFFLER_META), "--config", str(config)], stdout=log, stderr=subprocess.STDOUT
        )
    try:
        wait_for_port(port, timeout=60, proc=proc)
        yield Meta(port, root / "data", proc)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


def stored_in(meta: Meta, want: set[str], settle: float = 5.0) -> list[Path]:
    """The files niffler-meta stored for *want*, once all are there or nothing came for *settle* s."""
    deadline = time.monotonic() + settle
    files: list[Path] = []
    while time.monotonic() < deadline:
        files = []
        for path in dicom_files(meta.storage):
            try:
                if str(dcmread(path, stop_before_pixels=True).SOPInstanceUID) in want:
                    files.append(path)
            except Exception:  # a file being renamed into place
                continue
        if len(files) >= len(want):
            break
        time.sleep(0.2)
    return files


def jpeg_first_profile(sop_classes: Sequence[str]) -> str:
    """A DCMTK association profile offering JPEG Baseline (lossy) first, then uncompressed.

    Each SOP class also gets one context per compressed syntax of the corpus,
    so the sender has a context in each file's own syntax: DCMTK's storescu
    (built without codecs on Debian) cannot transcode, and takes a context in
    the file's syntax when one was accepted, else one with an uncompressed
    syntax it can convert to, else the first one of the SOP class.
    """
    syntaxes = {
        "JPEGFirst": [JPEGBaseline8Bit, ExplicitVRLittleEndian, ExplicitVRBigEndian, ImplicitVRLittleEndian],
        "Deflated": [DeflatedExplicitVRLittleEndian],
        "J2KLossless": [JPEG2000Lossless],
        "JLSLossless": [JPEGLSLossless],
        "JPEGLosslessSV1": [JPEGLosslessSV1],
        "RLE": [RLELossless],
        "JPEGBaseline": [JPEGBaseline8Bit],
    }
    lines = ["[[TransferSyntaxes]]"]
    for name, uids in syntaxes.items():
        lines.append(f"[{name}]")
        lines += [f"TransferSyntax{n} = {uid}" for n, uid in enumerate(uids, 1)]
    lines += ["", "[[PresentationContexts]]", "[JPEGFirstContexts]"]
    n = 0
    for sop_class in sop_classes:
        for name in syntaxes:
            n += 1
            lines.append(f"PresentationContext{n} = {sop_class}\\{name}")
    lines += ["", "[[Profiles]]", "[JPEGFirst]", "PresentationContexts = JPEGFirstContexts", ""]
    return "\n".join(lines)


def test_meta_offered_jpeg_baseline_first_stores_everything_and_nothing_lossy(
    meta: Meta, tmp_path: Path
) -> None:
    """DCMTK storescu proposes [JPEG Baseline, Explicit LE, Explicit BE, Implicit LE] first in each class."""
    corpus = generate_interop_corpus(
        tmp_path / "corpus", InteropSpec(patients=1, studies_per_patient=2, seed=21)
    )
    assert {i.transfer_syntax for i in corpus} == set(MIXED_SYNTAXES)
    profile = tmp_path / "jpeg-first.cfg"
    profile.write_text(jpeg_first_profile([CTImageStorage, SecondaryCaptureImageStorage]))
    sent = run_dcmtk(
        [
            STORESCU, "-v", "-xf", str(profile), "JPEGFirst", "--no-halt",
            "-aet", "MODALITY", "-aec", "NIFFLER", LOOPBACK, str(meta.port), *(str(i.path) for i in corpus),
        ],
        check=False,
    )  # fmt: skip
    want = {i.sop_uid for i in corpus}
    problems = arrival_problems(stored_in(meta, want), want, {i.sop_uid: i for i in corpus})
    log = [line for line in (sent.stdout + sent.stderr).splitlines() if line.startswith(("E:", "W:", "F:"))]
    if problems:
        problems += [f"--- storescu exited {sent.returncode}:", *log[-12:]]
        pytest.fail("\n".join(problems), pytrace=False)


def test_meta_stores_what_dcmsend_sends_in_each_files_own_syntax(meta: Meta, tmp_path: Path) -> None:
    """dcmsend proposes each file's own syntax (and an uncompressed fallback when it can decode)."""
    corpus = generate_interop_corpus(
        tmp_path / "corpus", InteropSpec(patients=1, studies_per_patient=2, seed=22)
    )
    args = ["/usr/bin/dcmsend", "-aet", "MODALITY", "-aec", "NIFFLER", LOOPBACK, str(meta.port)]
    sent = run_dcmtk([*args, *(str(i.path) for i in corpus)], check=False)
    want = {i.sop_uid for i in corpus}
    problems = arrival_problems(stored_in(meta, want), want, {i.sop_uid: i for i in corpus})
    if sent.returncode != 0:
        problems.insert(0, f"dcmsend exited {sent.returncode}: {sent.stderr[-1500:]}")
    if problems:
        pytest.fail("\n".join(problems), pytrace=False)
