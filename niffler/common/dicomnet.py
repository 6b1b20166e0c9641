"""DICOM networking shared by cold and meta: AE addresses, associations, the Storage SCP.

The Storage SCP is the one receiver of Niffler: ``niffler-cold`` runs it as its
C-MOVE destination, ``niffler-meta`` as its long-running listener. For speed it
never decodes a received dataset: it reads only the few attributes the FilePath
template and the hand-off need (header-only, stopping after the largest tag it
wants), then writes preamble + File Meta Information + the bytes exactly as
received to a temporary name inside the storage folder and renames it into
place, so a reader never sees half a file. A failed write answers 0xA700 (out
of resources) and an unparseable dataset 0xC210 (cannot understand); neither
raises across the network (PS3.4 Annex B.2.3).
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import socket
import struct
import threading
import time
import uuid
import zlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path
from typing import Any, cast

from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.filereader import read_dataset
from pydicom.tag import BaseTag, Tag
from pydicom.uid import UID, DeflatedExplicitVRLittleEndian
from pynetdicom import (
    AE,
    ALL_TRANSFER_SYNTAXES,
    PYNETDICOM_IMPLEMENTATION_UID,
    PYNETDICOM_IMPLEMENTATION_VERSION,
    evt,
)
from pynetdicom.association import Association
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.presentation import AllStoragePresentationContexts, PresentationContext
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]
from pynetdicom.transport import AssociationSocket, ThreadedAssociationServer

from niffler.common.dcmscan import decode_uid, plain_values, raw_dataset, scan_raw
from niffler.common.errors import AssociationError, ConfigError, InputError
from niffler.common.filepath import DEFAULT_FILE_PATH, FileTemplate
from niffler.common.reactor import (
    StoreHandler,
    StoreRequest,
    make_event_driven,
    make_requestor_event_driven,
    quiet_standard_logging,
    set_store_handler,
)

__all__ = [
    "STATUS_CANNOT_UNDERSTAND",
    "STATUS_OUT_OF_RESOURCES",
    "STATUS_SUCCESS",
    "AEAddress",
    "InstanceWriter",
    "NifflerAE",
    "StorageSCP",
    "StoredInstance",
    "associate",
    "no_delay",
    "open_association",
    "validate_ae_title",
]

log = logging.getLogger(__name__)

STATUS_SUCCESS = 0x0000
#: PS3.4 B.2.3 "Refused: Out of Resources".
STATUS_OUT_OF_RESOURCES = 0xA700
#: PS3.4 B.2.3 "Error: Cannot understand".
STATUS_CANNOT_UNDERSTAND = 0xC210

#: Default maximum PDU Niffler offers: large PDUs cut per-PDU overhead, which
#: dominates pynetdicom's receive path at the 16 KiB default (see bench/).
DEFAULT_MAX_PDU = 4 * 1024 * 1024
INCOMING_DIR = ".niffler-incoming"
#: Bytes of a received dataset parsed first for the attributes Niffler needs.
_HEADER_PREFIX = 64 * 1024
#: How often the listening loop looks for a stop request (seconds).
_SERVER_POLL = 0.05

_SOP_CLASS_UID, _SOP_INSTANCE_UID, _STUDY_UID, _SERIES_UID = 0x00080016, 0x00080018, 0x0020000D, 0x0020000E
_REQUIRED_UIDS = {
    _STUDY_UID: "StudyInstanceUID",
    _SERIES_UID: "SeriesInstanceUID",
    _SOP_INSTANCE_UID: "SOPInstanceUID",
}
_HANDOFF_UIDS = frozenset({_SOP_CLASS_UID, *_REQUIRED_UIDS})
_HANDOFF_TAGS = (
    Tag(0x00080005),  # SpecificCharacterSet, to decode names in templates
    Tag(_SOP_CLASS_UID),
    Tag(_SOP_INSTANCE_UID),
    Tag(_STUDY_UID),
    Tag(_SERIES_UID),
)
_UNCOMPRESSED = (
    "1.2.840.10008.1.2.1",  # Explicit VR Little Endian
    "1.2.840.10008.1.2",  # Implicit VR Little Endian
    "1.2.840.10008.1.2.1.99",  # Deflated Explicit VR Little Endian
    "1.2.840.10008.1.2.2",  # Explicit VR Big Endian (retired)
)
#: pynetdicom accepts the first of *our* transfer syntaxes that the sender
#: proposes. Compressed ones come first so that a sender offering its native
#: compression and a decompressed fallback keeps its original bytes: nothing
#: is decoded on the network thread and the disk holds what was acquired.
ACCEPTED_TRANSFER_SYNTAXES = [
    *(ts for ts in ALL_TRANSFER_SYNTAXES if ts not in _UNCOMPRESSED),
    *_UNCOMPRESSED,
]
# PS3.5 8.1: AE titles are 16 characters of the default repertoire, no
# backslash or control characters; leading and trailing spaces are not significant.
_AE_TITLE = re.compile(r"[\x20-\x5B\x5D-\x7E]{1,16}")


def validate_ae_title(title: str, what: str = "AE title") -> str:
    """Return *title* stripped, or raise ConfigError explaining what is wrong."""
    stripped = title.strip()
    if not stripped:
        raise ConfigError(f"{what} is empty")
    if len(stripped) > 16:
        raise ConfigError(f"{what} {stripped!r} is longer than 16 characters")
    if not _AE_TITLE.fullmatch(stripped):
        raise ConfigError(f"{what} {stripped!r} contains a backslash or control character")
    return stripped


@dataclass(frozen=True)
class AEAddress:
    """A DICOM application entity: title, host and port."""

    title: str
    host: str
    port: int

    @classmethod
    def parse(cls, text: str, what: str = "AE address", default_host: str = "127.0.0.1") -> AEAddress:
        """Return the address in ``AET@host:port`` or ``AET:port`` form.

        Upstream writes ``SrcAet`` as ``AET@host:port`` and ``QueryAet`` as
        ``AET:port`` (the port Niffler listens on); the latter gets *default_host*.
        """
        if not isinstance(text, str) or not text.strip():
            raise ConfigError(f"{what} is empty; expected AET@host:port or AET:port")
        title, sep, rest = text.strip().rpartition("@")
        if not sep:
            title, sep, port_text = text.strip().rpartition(":")
            host = default_host
            if not sep:
                raise ConfigError(f"{what} {text!r} has no port; expected AET@host:port or AET:port")
        else:
            host, sep, port_text = rest.rpartition(":")
            if not sep or not host:
                raise ConfigError(f"{what} {text!r}: expected AET@host:port")
        if not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
            raise ConfigError(f"{what} {text!r}: port must be a number from 1 to 65535")
        return cls(validate_ae_title(title, f"{what} title"), host.strip("[]"), int(port_text))

    def __str__(self) -> str:
        return f"{self.title}@{self.host}:{self.port}"


def no_delay(event: evt.Event) -> None:
    """EVT_CONN_OPEN handler: turn off Nagle's algorithm on the association's socket.

    pynetdicom sends a DIMSE message as several PDUs (command, then dataset),
    each its own ``send``; with Nagle on, the second waits for the peer's
    delayed ACK of the first, about 40 ms per request or response. DCMTK
    offers the same switch as ``TCP_NODELAY=1``.
    """
    transport = getattr(event.assoc.dul, "socket", None)
    sock = getattr(transport, "socket", None)
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def _accepted(event: evt.Event, store: StoreHandler | None = None) -> None:
    """EVT_CONN_OPEN handler of the Storage SCP: no Nagle, and the event-driven reactors (see reactor.py)."""
    no_delay(event)
    quiet_standard_logging(event.assoc)
    if make_event_driven(event.assoc) and store is not None:
        set_store_handler(event.assoc, store)


class NifflerAE(AE):
    """pynetdicom's AE, whose requested associations wait instead of polling (see reactor.py).

    Every AE Niffler makes is one of these; the Storage SCP's accepted
    associations get the same through :func:`_accepted`.
    """

    def _create_socket(self, assoc: Association, address: Any, tls_args: Any) -> AssociationSocket:
        sock = super()._create_socket(assoc, address, tls_args)
        quiet_standard_logging(assoc)
        make_requestor_event_driven(assoc, sock)
        return sock


def _rejection_reason(assoc: Association) -> str:
    primitive = getattr(assoc.acceptor, "primitive", None)
    reason = getattr(primitive, "reason_str", "") if primitive is not None else ""
    return f": {reason}" if reason else ""


def open_association(
    ae: AE,
    peer: AEAddress,
    *,
    ext_neg: Sequence[Any] | None = None,
    evt_handlers: Sequence[Any] | None = None,
) -> Association:
    """Return an established association to *peer*, which the caller must release or abort.

    Raises AssociationError saying why when it cannot be established: the
    peer's rejection reason (e.g. "Called AE title not recognised"), nothing
    listening, no answer within the ACSE timeout, or an abort right after
    connecting (what a PACS does to a calling AE title it does not know).
    """
    started = time.monotonic()
    assoc = ae.associate(
        peer.host,
        peer.port,
        ae_title=peer.title,
        ext_neg=list(ext_neg) if ext_neg else None,
        evt_handlers=[(evt.EVT_CONN_OPEN, no_delay), *(evt_handlers or ())],
    )
    if assoc.is_established:
        return assoc
    if assoc.is_rejected:
        raise AssociationError(
            f"{peer} rejected the association{_rejection_reason(assoc)} "
            f"(is its AE title {peer.title!r} right, and is our AE title {ae.ae_title!r} known to it?)"
        )
    reachable = _tcp_reachable(peer, min(5.0, float(ae.acse_timeout or 5.0)))
    if reachable is not None:
        reason = f"could not be reached ({reachable})"
    elif time.monotonic() - started >= float(ae.acse_timeout or 30.0) * 0.9:
        reason = f"did not answer the association request within {ae.acse_timeout} s"
    else:
        reason = f"aborted the association (does it know our AE title {ae.ae_title!r}?)"
    raise AssociationError(f"{peer} {reason}")


def _tcp_reachable(peer: AEAddress, timeout: float) -> str | None:
    """Return why a TCP connection to *peer* fails, or None when it succeeds."""
    try:
        with socket.create_connection((peer.host, peer.port), timeout=timeout):
            return None
    except ConnectionRefusedError:
        return "connection refused: nothing listens on that port"
    except TimeoutError:
        return f"no TCP answer within {timeout:g} s: wrong host, or a firewall"
    except OSError as exc:
        return exc.strerror or str(exc)


@contextlib.contextmanager
def associate(
    ae: AE,
    peer: AEAddress,
    *,
    ext_neg: Sequence[Any] | None = None,
    evt_handlers: Sequence[Any] | None = None,
) -> Iterator[Association]:
    """Yield an established association to *peer*; always release or abort it.

    Raises AssociationError as :func:`open_association` does.
    """
    assoc = open_association(ae, peer, ext_neg=ext_neg, evt_handlers=evt_handlers)
    try:
        yield assoc
    except BaseException:
        if assoc.is_established:
            assoc.abort()
        raise
    else:
        if assoc.is_established:
            assoc.release()


@dataclass(frozen=True)
class StoredInstance:
    """What the Storage SCP hands on for each file it has stored."""

    path: Path
    study_uid: str
    series_uid: str
    sop_uid: str
    sop_class_uid: str
    transfer_syntax: str
    calling_aet: str
    size: int


def _read_header(raw: bytes | memoryview, transfer_syntax: UID, tags: Sequence[BaseTag]) -> Dataset:
    """Return a dataset holding only *tags*, parsed by pydicom from the encoded *raw* bytes.

    For what dcmscan cannot walk (see :func:`_header`). The wanted tags sit
    in the first few kilobytes of any real header, so a prefix is parsed
    first (copying a whole image into a BytesIO was a measurable share of
    the receive time); only if parsing runs off the end of
    the prefix before passing the last wanted tag is the whole dataset read.
    """
    if transfer_syntax == DeflatedExplicitVRLittleEndian:
        raw = zlib.decompressobj(-zlib.MAX_WBITS).decompress(bytes(raw), 1 << 20)
    last = max(tags)
    passed_last = False

    def stop_when(tag: BaseTag, vr: str | None, length: int) -> bool:
        nonlocal passed_last
        passed_last = bool(tag > last)
        return passed_last

    def parse(data: bytes | memoryview) -> Dataset:
        return read_dataset(
            BytesIO(data),
            transfer_syntax.is_implicit_VR,
            transfer_syntax.is_little_endian,
            stop_when=stop_when,
            specific_tags=list(tags),
        )

    if len(raw) > _HEADER_PREFIX:
        try:
            header = parse(raw[:_HEADER_PREFIX])
        except Exception:
            header = None
        if header is not None and passed_last:
            return header
    return parse(raw)


def _header(
    raw: bytes | memoryview, transfer_syntax: UID, tags: Sequence[BaseTag], wanted: frozenset[int]
) -> dict[int, Any]:
    """Return {tag: value} of the wanted *tags* of an encoded dataset, as pydicom would read them.

    The usual case (little endian, the tags single-valued strings in a
    simple character set) is read by dcmscan alone. Elements dcmscan found
    but cannot convert are converted by pydicom; a dataset it cannot walk is
    read by pydicom (:func:`_read_header`).
    """
    if transfer_syntax.is_little_endian and transfer_syntax != DeflatedExplicitVRLittleEndian:
        implicit = transfer_syntax.is_implicit_VR
        found = scan_raw(raw, implicit, wanted)
        if found is not None:
            values = plain_values(found, implicit)
            return values if values is not None else _header_values(raw_dataset(found, implicit))
    return _header_values(_read_header(raw, transfer_syntax, tags))


def _header_values(header: Dataset) -> dict[int, Any]:
    """Return {tag: value} of a parsed header, UIDs decoded directly and the rest by pydicom.

    A UID is ASCII with an optional trailing NUL or space (PS3.5 9.1), which
    is all pydicom's conversion does for one; going through its element
    machinery for the four UIDs of every received instance cost as much as
    finding them.
    """
    values: dict[int, Any] = {}
    for tag in list(header.keys()):
        raw = header.get_item(tag)
        data = getattr(raw, "value", None)
        vr = getattr(raw, "VR", "")
        is_ui = vr == "UI" or (vr is None and tag in _HANDOFF_UIDS)  # implicit VR: by the tag
        uid = (
            decode_uid(data)
            if isinstance(raw, RawDataElement) and is_ui and isinstance(data, bytes)
            else None
        )
        values[tag] = uid if uid is not None else header[tag].value
    return values


def _element(tag: int, vr: bytes, value: bytes) -> bytes:
    """Return one Explicit VR Little Endian element (PS3.5 7.1.2)."""
    group, elem = tag >> 16, tag & 0xFFFF
    if vr == b"OB":
        return struct.pack("<HH2sHI", group, elem, vr, 0, len(value)) + value
    return struct.pack("<HH2sH", group, elem, vr, len(value)) + value


def _padded(text: str, pad: bytes) -> bytes:
    data = text.encode("ascii")
    return data + pad if len(data) % 2 else data


def encode_part10_header(
    sop_class_uid: str, sop_uid: str, transfer_syntax: str, source_aet: str = ""
) -> bytes:
    """Return the preamble, ``DICM`` prefix and File Meta Information of a Part 10 file.

    Hand-encoded (PS3.10 7.1): it is a handful of fixed elements, and building
    them through pydicom's Dataset machinery cost more than the disk write.
    """
    body = b"".join(
        (
            _element(0x00020001, b"OB", b"\x00\x01"),
            _element(0x00020002, b"UI", _padded(sop_class_uid, b"\x00")),
            _element(0x00020003, b"UI", _padded(sop_uid, b"\x00")),
            _element(0x00020010, b"UI", _padded(transfer_syntax, b"\x00")),
            _element(0x00020012, b"UI", _padded(PYNETDICOM_IMPLEMENTATION_UID, b"\x00")),
            _element(0x00020013, b"SH", _padded(PYNETDICOM_IMPLEMENTATION_VERSION, b" ")),
            _element(0x00020016, b"AE", _padded(source_aet, b" ")) if source_aet else b"",
        )
    )
    group_length = _element(0x00020000, b"UL", struct.pack("<I", len(body)))
    return b"\x00" * 128 + b"DICM" + group_length + body


class InstanceWriter:
    """Writes received datasets as Part 10 files under a storage folder by template."""

    def __init__(
        self, storage_folder: str | Path, file_path: str = DEFAULT_FILE_PATH, *, fsync: bool = False
    ) -> None:
        self.storage_folder = Path(storage_folder).absolute()
        self.template = FileTemplate.parse(file_path)
        self.incoming = self.storage_folder / INCOMING_DIR
        self.fsync = fsync
        self._tags = sorted(set(_HANDOFF_TAGS) | set(self.template.tags))
        self._wanted = frozenset(int(tag) for tag in self._tags)

    def prepare(self) -> None:
        """Create the folders and drop temp files of writes a crash interrupted.

        Such a file was never acknowledged (the response follows the rename),
        so the sender still holds it as unsent.
        """
        self.incoming.mkdir(parents=True, exist_ok=True)
        for leftover in self.incoming.glob("*.part"):
            leftover.unlink(missing_ok=True)

    def write(
        self,
        raw: bytes | memoryview,
        transfer_syntax: str,
        sop_class_uid: str,
        sop_uid: str,
        calling_aet: str = "",
    ) -> StoredInstance:
        """Return where the encoded dataset *raw* was stored.

        Raises InputError when the dataset cannot be parsed or lacks its
        identifying UIDs, TemplateError (an InputError) when the template
        cannot place it, OSError when the disk write fails; a partial file is
        never left in place.
        """
        ts = UID(transfer_syntax)
        try:
            header = _header(raw, ts, self._tags, self._wanted)
            missing = [keyword for tag, keyword in _REQUIRED_UIDS.items() if not header.get(tag)]
        except Exception as exc:
            raise InputError(f"received dataset cannot be parsed: {type(exc).__name__}") from exc
        if missing:
            # Every storage IOD requires them; without them the file cannot be
            # placed or extracted, and the sender must learn it was not stored.
            raise InputError(f"received dataset lacks {', '.join(missing)}")
        sop_uid = str(header.get(_SOP_INSTANCE_UID) or sop_uid)
        sop_class_uid = str(header.get(_SOP_CLASS_UID) or sop_class_uid)
        target = self.template.path_in(self.storage_folder, header)

        preamble = encode_part10_header(sop_class_uid, sop_uid, str(ts), calling_aet)

        tmp = self.incoming / f"{uuid.uuid4().hex}.part"
        try:
            with open(tmp, "wb") as handle:
                handle.write(preamble)
                handle.write(raw)
                if self.fsync:
                    handle.flush()
                    os.fsync(handle.fileno())
            try:
                os.replace(tmp, target)
            except FileNotFoundError:
                # First instance of a series (or its folder was purged): a
                # mkdir per file was a measurable share of the receive time.
                os.makedirs(target.parent, exist_ok=True)
                os.replace(tmp, target)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        return StoredInstance(
            path=target,
            study_uid=str(header.get(_STUDY_UID, "")),
            series_uid=str(header.get(_SERIES_UID, "")),
            sop_uid=sop_uid,
            sop_class_uid=sop_class_uid,
            transfer_syntax=str(ts),
            calling_aet=calling_aet,
            size=len(preamble) + len(raw),
        )

    def handle_c_store(
        self,
        event: evt.Event,
        on_stored: Callable[[StoredInstance], None] | None = None,
        admit: Callable[[], int] | None = None,
        on_failed: Callable[[OSError], None] | None = None,
    ) -> int:
        """Return the C-STORE status for an EVT_C_STORE *event* after storing it; never raises."""
        request = cast(C_STORE, event.request)
        return self.store(
            cast(BytesIO, request.DataSet).getbuffer(),
            event.context.transfer_syntax,
            str(request.AffectedSOPClassUID),
            str(request.AffectedSOPInstanceUID),
            _peer_title(event.assoc),
            on_stored,
            admit,
            on_failed,
        )

    def store(
        self,
        raw: bytes | memoryview,
        transfer_syntax: str,
        sop_class_uid: str,
        sop_uid: str,
        calling: str,
        on_stored: Callable[[StoredInstance], None] | None = None,
        admit: Callable[[], int] | None = None,
        on_failed: Callable[[OSError], None] | None = None,
    ) -> int:
        """Store one received dataset and hand it on; return the C-STORE status. Never raises.

        *on_failed* hears of each write the disk refused (full, read-only...),
        so a caller can stop asking for more.
        """
        if admit is not None:
            refusal = admit()
            if refusal:
                return refusal
        try:
            stored = self.write(raw, transfer_syntax, sop_class_uid, sop_uid, calling)
        except OSError as exc:
            # strerror only: str(exc) names the file, whose path comes from identifiers.
            reason = exc.strerror or type(exc).__name__
            log.error("cannot write a received instance from %s: %s", calling, reason)
            if on_failed is not None:
                with contextlib.suppress(Exception):
                    on_failed(exc)
            return STATUS_OUT_OF_RESOURCES
        except InputError as exc:
            log.error("refused an instance from %s: %s", calling, exc)
            return STATUS_CANNOT_UNDERSTAND
        except Exception as exc:  # whatever else, never raise across the network
            log.error("unexpected %s storing an instance from %s", type(exc).__name__, calling)
            return STATUS_OUT_OF_RESOURCES
        if on_stored is not None:
            try:
                on_stored(stored)
            except Exception as exc:
                # The file is safely on disk; consumers rescan the folder on start.
                log.error("hand-off of a stored instance failed: %s", type(exc).__name__)
        return STATUS_SUCCESS

    def store_handler(
        self,
        on_stored: Callable[[StoredInstance], None] | None = None,
        admit: Callable[[], int] | None = None,
        on_failed: Callable[[OSError], None] | None = None,
    ) -> StoreHandler:
        """Return a handler for :func:`~niffler.common.reactor.set_store_handler` that stores here."""

        def serve(assoc: Association, request: StoreRequest) -> int:
            transfer_syntax = str(assoc._accepted_cx[request.context_id].transfer_syntax[0])
            return self.store(
                request.dataset,
                transfer_syntax,
                request.sop_class_uid,
                request.sop_instance_uid,
                _peer_title(assoc),
                on_stored,
                admit,
                on_failed,
            )

        return serve


def _peer_title(assoc: Association | None) -> str:
    """The AE title of the peer that sent an instance: a C-MOVE's storer, or the PACS of a C-GET."""
    if assoc is None:
        return ""
    peer = assoc.acceptor if assoc.is_requestor else assoc.requestor
    return str(peer.ae_title).strip()


class _SharedContext(PresentationContext):
    """A supported presentation context that associations share instead of deep-copying.

    pynetdicom deep-copies the server's supported contexts for every incoming
    association: 46 ms for the 171 storage classes, most of an association's
    set-up and, for C-MOVE (one association per move), of a small study's
    retrieval. Negotiation only reads them (``negotiate_as_acceptor``), so one
    shared, never-modified set is safe.
    """

    def __deepcopy__(self, memo: dict[int, Any]) -> _SharedContext:
        return self


class StorageSCP:
    """Niffler's Storage SCP: non-blocking start/stop, every storage SOP class.

    Parameters
    ----------
    storage_folder
        Root folder for received files.
    ae_title, port, host
        What to listen as. *port* 0 picks a free port (see :attr:`port`).
    file_path
        dcm4che-style FilePath template for where each instance lands.
    on_stored
        Called on the association's thread with each :class:`StoredInstance`
        after its file is in place; keep it quick (put it on a queue).
    allowed_calling_aets
        If given, associations from any other calling AE title are rejected.
    admit
        Called before each store; a non-zero return is sent as the status
        instead of storing (e.g. 0xA700 when the disk passes a watermark).
    on_failed
        Called with the OSError of each write the disk refused (answered 0xA700).
    """

    def __init__(
        self,
        storage_folder: str | Path,
        *,
        ae_title: str = "NIFFLER",
        port: int = 0,
        host: str = "0.0.0.0",  # noqa: S104 - a PACS sends from another host
        file_path: str = DEFAULT_FILE_PATH,
        on_stored: Callable[[StoredInstance], None] | None = None,
        allowed_calling_aets: Sequence[str] | None = None,
        admit: Callable[[], int] | None = None,
        on_failed: Callable[[OSError], None] | None = None,
        maximum_pdu_size: int = DEFAULT_MAX_PDU,
        maximum_associations: int = 16,
        fsync: bool = False,
    ) -> None:
        self.ae_title = validate_ae_title(ae_title, "QueryAet title")
        self.host = host
        self._requested_port = port
        self.writer = InstanceWriter(storage_folder, file_path, fsync=fsync)
        self.on_stored = on_stored
        self.admit = admit
        self.on_failed = on_failed
        self.allowed_calling_aets = (
            [validate_ae_title(t, "allowed calling AE title") for t in allowed_calling_aets]
            if allowed_calling_aets
            else None
        )
        self.maximum_pdu_size = maximum_pdu_size
        self.maximum_associations = maximum_associations
        self._server: Any = None
        self._lock = threading.Lock()

    @property
    def port(self) -> int:
        """Return the port actually listened on (useful when asked for port 0)."""
        if self._server is None:
            return self._requested_port
        return int(self._server.server_address[1])

    @property
    def storage_folder(self) -> Path:
        return self.writer.storage_folder

    def _build_ae(self) -> AE:
        ae = NifflerAE(ae_title=self.ae_title)
        ae.maximum_pdu_size = self.maximum_pdu_size
        ae.maximum_associations = self.maximum_associations
        if self.allowed_calling_aets:
            ae.require_calling_aet = self.allowed_calling_aets
        return ae

    @staticmethod
    def _contexts() -> list[PresentationContext]:
        """Every storage SOP class with every transfer syntax, plus Verification."""
        syntaxes = [
            *((c.abstract_syntax, ACCEPTED_TRANSFER_SYNTAXES) for c in AllStoragePresentationContexts),
            (Verification, [str(ts) for ts in _UNCOMPRESSED[:2]]),
        ]
        contexts: list[PresentationContext] = []
        for abstract, transfer in syntaxes:
            if abstract is None:
                continue
            context = _SharedContext()
            context.abstract_syntax = abstract
            for ts in transfer:
                context.add_transfer_syntax(ts)
            contexts.append(context)
        return contexts

    def _on_c_store(self, event: evt.Event) -> int:
        return self.writer.handle_c_store(event, self.on_stored, self.admit, self.on_failed)

    def start(self) -> StorageSCP:
        """Start listening in background threads and return self."""
        with self._lock:
            if self._server is not None:
                return self
            self.writer.prepare()
            ae = self._build_ae()
            store = self.writer.store_handler(self.on_stored, self.admit, self.on_failed)
            try:
                server = ae.make_server(
                    (self.host, self._requested_port),
                    contexts=self._contexts(),
                    evt_handlers=[
                        (evt.EVT_C_STORE, self._on_c_store),
                        (evt.EVT_CONN_OPEN, _accepted, [store]),
                    ],
                    server_class=ThreadedAssociationServer,
                )
            except OSError as exc:
                raise ConfigError(
                    f"cannot listen on {self.host}:{self._requested_port} as {self.ae_title}: "
                    f"{exc.strerror or exc}"
                ) from None
            # As AE.start_server(block=False) does, but looking for a stop every
            # 50 ms instead of 0.5 s: every run of niffler-cold ends with one.
            ae._servers.append(server)
            threading.Thread(
                target=server.serve_forever,
                args=(_SERVER_POLL,),
                name=f"StorageSCP-{self.ae_title}",
                daemon=True,
            ).start()
            self._server = server
        log.info("Storage SCP %s listening on %s:%d", self.ae_title, self.host, self.port)
        return self

    def stop(self, grace: float = 5.0) -> None:
        """Stop listening; give associations in flight *grace* seconds to finish, then abort them.

        pynetdicom's shutdown only closes the listening socket: an association
        left open (a peer that hangs) would keep its non-daemon thread, and so
        the process, alive.
        """
        with self._lock:
            server, self._server = self._server, None
        if server is None:
            return
        server.shutdown()
        deadline = time.monotonic() + grace
        active = server.active_associations
        while active and time.monotonic() < deadline:
            time.sleep(0.05)
            active = server.active_associations
        for assoc in active:
            assoc.abort()
        if active:
            log.warning("Storage SCP %s aborted %d association(s) still open", self.ae_title, len(active))
        log.info("Storage SCP %s stopped", self.ae_title)

    def __enter__(self) -> StorageSCP:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
