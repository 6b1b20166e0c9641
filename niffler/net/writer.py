"""The instance writer: where a received dataset lands, written exactly as received.

The Storage SCP is the one receiver of Niffler: ``niffler-cold`` runs it as its
C-MOVE destination, ``niffler-meta`` as its long-running listener. For speed it
never decodes a received dataset: it reads only the few attributes the FilePath
template and the hand-off need (header-only, stopping after the largest tag it
wants), then writes preamble + File Meta Information + the bytes exactly as
received to a temporary name inside the storage folder and renames it into
place, so a reader never sees half a file. A failed write answers 0xA700 (out
of resources) and an unparseable dataset 0xC210 (cannot understand); neither
raises across the network (PS3.4 Annex B.2.3). A dataset whose bytes arrive in
pieces (a WADO-RS part of niffler-cold over DICOMweb) goes through
:class:`InstanceStream`: straight to the temp file as it arrives, then the same
checks and the same placement.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import mmap
import os
import re
import struct
import uuid
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.filereader import read_dataset
from pydicom.tag import BaseTag, Tag
from pydicom.uid import UID, DeflatedExplicitVRLittleEndian
from pynetdicom import PYNETDICOM_IMPLEMENTATION_UID, PYNETDICOM_IMPLEMENTATION_VERSION, evt

from niffler.common.atomic import atomic_write, temp_name, write_bytes_atomic
from niffler.common.errors import InputError
from niffler.common.filepath import DEFAULT_FILE_PATH, FileTemplate
from niffler.net import accel
from niffler.net.messages import StoreHandler, StoreRequest
from niffler.net.scan import decode_uid, plain_values, raw_dataset, scan_raw, truncation

if TYPE_CHECKING:  # annotations only: pynetdicom's own classes, named by its one seam
    from niffler.net._pynetdicom30 import C_STORE, Association

__all__ = [
    "INCOMING_DIR",
    "QUARANTINE_DIR",
    "STATUS_CANNOT_UNDERSTAND",
    "STATUS_OUT_OF_RESOURCES",
    "STATUS_SUCCESS",
    "InstanceStream",
    "InstanceWriter",
    "StoredInstance",
    "TruncatedDataset",
    "encode_part10_header",
    "peer_title",
]

log = logging.getLogger(__name__)

STATUS_SUCCESS = 0x0000
#: PS3.4 B.2.3 "Refused: Out of Resources".
STATUS_OUT_OF_RESOURCES = 0xA700
#: PS3.4 B.2.3 "Error: Cannot understand".
STATUS_CANNOT_UNDERSTAND = 0xC210

INCOMING_DIR = ".niffler-incoming"
#: Folder under the storage folder for received bytes that were refused (kept for inspection).
QUARANTINE_DIR = ".quarantine"
#: What a UID written into a file's meta header may hold: PS3.5 9.1 asks digits and dots; real
#: senders break that (letters, leading zeros), which is tolerated, but not non-ASCII or a backslash.
_UID_TEXT = re.compile(r"[\x21-\x5B\x5D-\x7E]{1,64}")
#: Bytes of a received dataset parsed first for the attributes Niffler needs.
_HEADER_PREFIX = 64 * 1024

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
    finding them. A value pydicom cannot decode (a name in ISO 2022 IR 87 that
    trips its decoder) is None: the template renders it as missing, and the
    instance is stored rather than refused.
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
        if uid is not None:
            values[tag] = uid
            continue
        try:
            values[tag] = header[tag].value
        except Exception:  # a value pydicom cannot decode is missing, not a reason to lose the file
            values[tag] = None
    return values


def _element(tag: int, vr: bytes, value: bytes) -> bytes:
    """Return one Explicit VR Little Endian element (PS3.5 7.1.2)."""
    group, elem = tag >> 16, tag & 0xFFFF
    if vr == b"OB":
        return struct.pack("<HH2sHI", group, elem, vr, 0, len(value)) + value
    return struct.pack("<HH2sH", group, elem, vr, len(value)) + value


def _padded(text: str, pad: bytes) -> bytes:
    data = text.encode("ascii", "replace")  # write() refuses non-ASCII UIDs; quarantine keeps the bytes
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


class TruncatedDataset(InputError):
    """A received dataset whose element structure runs past its end; its bytes were quarantined."""

    def __init__(self, message: str, kept: StoredInstance) -> None:
        super().__init__(message)
        self.kept = kept


class InstanceWriter:
    """Writes received datasets as Part 10 files under a storage folder by template."""

    def __init__(
        self,
        storage_folder: str | Path,
        file_path: str = DEFAULT_FILE_PATH,
        *,
        fsync: bool = False,
        on_quarantined: Callable[[StoredInstance], None] | None = None,
    ) -> None:
        self.storage_folder = Path(storage_folder).absolute()
        #: Hears of each refused dataset kept under QUARANTINE_DIR (niffler-meta counts it failed).
        self.on_quarantined = on_quarantined
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
        for leftover in {*self.incoming.glob("*.part"), *self.incoming.glob(".*.part")}:
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
        placed = self._place(raw, ts, sop_class_uid, sop_uid, calling_aet)
        preamble = encode_part10_header(placed.sop_class_uid, placed.sop_uid, str(ts), calling_aet)

        # The temp file goes to the incoming folder, so prepare() can drop what a crash left.
        write_bytes_atomic(placed.path, (preamble, raw), fsync=self.fsync, temp_dir=self.incoming)
        return dataclasses.replace(placed, size=len(preamble) + len(raw))

    def _place(
        self, raw: bytes | memoryview, ts: UID, sop_class_uid: str, sop_uid: str, calling_aet: str
    ) -> StoredInstance:
        """Return where the encoded dataset *raw* belongs (``size`` 0), after :meth:`write`'s checks."""
        if not ts.is_deflated:  # a deflated stream would have to be inflated to be walked
            problem = truncation(raw, ts.is_implicit_VR, ts.is_little_endian)
            if problem is not None:
                kept = self._quarantine(raw, str(ts), sop_class_uid, sop_uid, calling_aet)
                raise TruncatedDataset(f"truncated: {problem}", kept)
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
        for keyword, uid in (("SOPInstanceUID", sop_uid), ("SOPClassUID", sop_class_uid)):
            if not _UID_TEXT.fullmatch(uid):
                raise InputError(f"received dataset's {keyword} is not a UID (64 ASCII characters at most)")
        return StoredInstance(
            path=self.template.path_in(self.storage_folder, header),
            study_uid=str(header.get(_STUDY_UID, "")),
            series_uid=str(header.get(_SERIES_UID, "")),
            sop_uid=sop_uid,
            sop_class_uid=sop_class_uid,
            transfer_syntax=str(ts),
            calling_aet=calling_aet,
            size=0,
        )

    def stream(
        self, transfer_syntax: str, sop_class_uid: str, sop_uid: str, calling_aet: str = ""
    ) -> InstanceStream:
        """Return a writer for one dataset whose bytes arrive in pieces (a WADO-RS part).

        Its bytes go straight to a temp file in the incoming folder, never
        whole into memory; :meth:`InstanceStream.finish` makes the checks of
        :meth:`write` on the file and renames it into place.
        """
        return InstanceStream(self, transfer_syntax, sop_class_uid, sop_uid, calling_aet)

    def _quarantine(
        self, raw: bytes | memoryview, transfer_syntax: str, sop_class_uid: str, sop_uid: str, calling: str
    ) -> StoredInstance:
        """Keep refused bytes as a Part 10 file under QUARANTINE_DIR, named by a random name."""
        target = self.storage_folder / QUARANTINE_DIR / f"refused-{uuid.uuid4().hex}.dcm"
        preamble = encode_part10_header(sop_class_uid, sop_uid, transfer_syntax, calling)
        with atomic_write(target, "wb", temp_dir=self.incoming) as handle:
            handle.write(preamble)
            handle.write(raw)
        return StoredInstance(
            path=target, study_uid="", series_uid="", sop_uid=sop_uid, sop_class_uid=sop_class_uid,
            transfer_syntax=transfer_syntax, calling_aet=calling, size=len(preamble) + len(raw),
        )  # fmt: skip

    def handle_c_store(
        self,
        event: evt.Event,
        on_stored: Callable[[StoredInstance], None] | None = None,
        admit: Callable[[], int] | None = None,
        on_failed: Callable[[OSError], None] | None = None,
    ) -> int:
        """Return the C-STORE status for an EVT_C_STORE *event* after storing it; never raises."""
        request = cast("C_STORE", event.request)
        return self.store(
            cast(BytesIO, request.DataSet).getbuffer(),
            event.context.transfer_syntax,
            str(request.AffectedSOPClassUID),
            str(request.AffectedSOPInstanceUID),
            peer_title(event.assoc),
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
        except TruncatedDataset as exc:
            log.error("refused an instance from %s: %s; kept in %s", calling, exc, QUARANTINE_DIR)
            if self.on_quarantined is not None:
                with contextlib.suppress(Exception):
                    self.on_quarantined(exc.kept)
            return STATUS_CANNOT_UNDERSTAND
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
        """Return a handler for :func:`~niffler.net.accel.set_store_handler` that stores here."""

        def serve(assoc: Association, request: StoreRequest) -> int:
            transfer_syntax = accel.accepted_transfer_syntax(assoc, request.context_id)
            return self.store(
                request.dataset,
                transfer_syntax,
                request.sop_class_uid,
                request.sop_instance_uid,
                peer_title(assoc),
                on_stored,
                admit,
                on_failed,
            )

        return serve


class InstanceStream:
    """One dataset written as its bytes arrive: :meth:`write` each piece, then :meth:`finish`.

    The preamble and File Meta Information go first, from the UIDs the
    sender announced (a WADO-RS part's own meta header), then the dataset's
    bytes exactly as received, into a temp file in the incoming folder. At
    :meth:`finish` the file is mapped (the page cache, not a copy in memory)
    and checked as :meth:`InstanceWriter.write` checks a received dataset; it
    is then renamed into place, or rewritten when the dataset names another
    SOP Instance or Class UID than was announced. Any error removes the temp file.
    """

    def __init__(
        self, writer: InstanceWriter, transfer_syntax: str, sop_class_uid: str, sop_uid: str, calling_aet: str
    ) -> None:
        self._writer = writer
        self._ts = UID(transfer_syntax)
        self._sop_class_uid = sop_class_uid
        self._sop_uid = sop_uid
        self._calling_aet = calling_aet
        self._preamble = encode_part10_header(sop_class_uid, sop_uid, str(self._ts), calling_aet)
        self._temp = writer.incoming / temp_name(f"{uuid.uuid4().hex}.dcm")
        try:
            self._handle = open(self._temp, "wb")  # noqa: SIM115 - closed by finish() or discard()
        except FileNotFoundError:
            writer.incoming.mkdir(parents=True, exist_ok=True)
            self._handle = open(self._temp, "wb")  # noqa: SIM115
        try:
            self._handle.write(self._preamble)
        except BaseException:
            self.discard()
            raise
        #: Bytes of the dataset written so far.
        self.size = 0

    def write(self, data: bytes | memoryview) -> None:
        """Append received dataset bytes; on an error the temp file is removed."""
        try:
            self._handle.write(data)
        except BaseException:
            self.discard()
            raise
        self.size += len(data)

    def discard(self) -> None:
        """Drop what was written (a part cut short)."""
        self._handle.close()
        self._temp.unlink(missing_ok=True)

    def finish(self) -> StoredInstance:
        """Return where the dataset was stored; raise as :meth:`InstanceWriter.write` does."""
        writer = self._writer
        try:
            if writer.fsync:
                self._handle.flush()
                os.fsync(self._handle.fileno())
            self._handle.close()
            with open(self._temp, "rb") as handle:
                mapped = mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ)
            try:
                with memoryview(mapped) as whole, whole[len(self._preamble) :] as raw:
                    sop_class_uid, sop_uid, calling = self._sop_class_uid, self._sop_uid, self._calling_aet
                    placed = writer._place(raw, self._ts, sop_class_uid, sop_uid, calling)
                    announced = (placed.sop_uid, placed.sop_class_uid) == (sop_uid, sop_class_uid)
                    if not announced:  # the meta header written first names other UIDs: write it again
                        preamble = encode_part10_header(
                            placed.sop_class_uid, placed.sop_uid, str(self._ts), calling
                        )
                        temp_dir = writer.incoming
                        with atomic_write(placed.path, "wb", fsync=writer.fsync, temp_dir=temp_dir) as out:
                            out.write(preamble)
                            out.write(raw)
            finally:
                mapped.close()
            if announced:
                try:
                    os.replace(self._temp, placed.path)
                except FileNotFoundError:
                    placed.path.parent.mkdir(parents=True, exist_ok=True)
                    os.replace(self._temp, placed.path)
            else:
                self._temp.unlink(missing_ok=True)
        except BaseException:
            self.discard()
            raise
        return dataclasses.replace(placed, size=len(self._preamble) + self.size)


def peer_title(assoc: Association | None) -> str:
    """The AE title of the peer that sent an instance: a C-MOVE's storer, or the PACS of a C-GET."""
    if assoc is None:
        return ""
    peer = assoc.acceptor if assoc.is_requestor else assoc.requestor
    return str(peer.ae_title).strip()


