"""WADO-RS parts -> stored instances, through the same instance writer and path template as DIMSE.

Each ``application/dicom`` part is a DICOM Part 10 file (PS3.18 8.6.1.1):
preamble, ``DICM``, File Meta Information, then the dataset. :class:`PartWriter`
reads the meta header from the part's first bytes (:func:`parse_file_meta`),
then streams the dataset's bytes into an
:class:`~niffler.net.writer.InstanceStream`, which checks the dataset and
places it by FilePath exactly as the Storage SCP places a C-STORE's (our own
File Meta Information, the dataset's bytes as sent). A part that is not DICOM,
not whole, or that the writer refuses is counted as failed and logged by its
reason; a write the disk refuses stops the transfer (:class:`DiskRefused`).
Nothing here logs an identifier.
"""

from __future__ import annotations

import contextlib
import logging
import struct
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import NoReturn

from niffler.cold_extraction.dicomweb.multipart import Event, PartData, PartEnd, PartStart
from niffler.common.errors import InputError
from niffler.net.syntaxes import is_lossy
from niffler.net.writer import InstanceStream, InstanceWriter, StoredInstance, TruncatedDataset

__all__ = ["DiskRefused", "FileMeta", "PartWriter", "parse_file_meta"]

log = logging.getLogger(__name__)

#: Explicit VR elements whose length is 4 bytes after 2 reserved ones (PS3.5 7.1.2).
_LONG_VRS = frozenset(
    {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"}
)
#: Longest File Meta Information accepted; real ones are a few hundred bytes.
_META_LIMIT = 64 * 1024
_PREFIX = 132  # preamble + "DICM"


class DiskRefused(Exception):
    """The storage disk refused a write; the transfer stops (the error is in ``__cause__``)."""


@dataclass(frozen=True)
class FileMeta:
    """What a part's File Meta Information announces, and where its dataset starts."""

    dataset_offset: int
    transfer_syntax: str
    sop_class_uid: str
    sop_uid: str
    source_aet: str


def _text(value: bytes) -> str:
    return value.rstrip(b"\x00 ").decode("ascii", "replace")


def parse_file_meta(prefix: bytes) -> FileMeta | None:
    """The File Meta Information at the start of a Part 10 file; None while *prefix* is too short.

    Raise InputError when the bytes are not a Part 10 file. The group is
    read element by element until the first element of another group, so a
    missing or wrong group length (0002,0000) does not matter.
    """
    if len(prefix) < _PREFIX:
        return None
    if prefix[128:132] != b"DICM":
        raise InputError("a WADO-RS part is not a DICOM Part 10 file (no DICM prefix)")
    offset = _PREFIX
    values: dict[int, bytes] = {}
    while True:
        if len(prefix) < offset + 8:
            if len(prefix) >= _META_LIMIT:
                _too_long()
            return None
        group, element = struct.unpack_from("<HH", prefix, offset)
        if group != 0x0002:
            break
        vr = bytes(prefix[offset + 4 : offset + 6])
        if vr in _LONG_VRS:
            if len(prefix) < offset + 12:
                return None
            (length,) = struct.unpack_from("<I", prefix, offset + 8)
            start = offset + 12
        else:
            (length,) = struct.unpack_from("<H", prefix, offset + 6)
            start = offset + 8
        if start + length > _META_LIMIT:
            _too_long()
        if len(prefix) < start + length:
            return None
        values[element] = bytes(prefix[start : start + length])
        offset = start + length
    transfer_syntax = _text(values.get(0x0010, b""))
    if not transfer_syntax:
        raise InputError("a WADO-RS part's File Meta Information names no transfer syntax")
    return FileMeta(
        dataset_offset=offset,
        transfer_syntax=transfer_syntax,
        sop_class_uid=_text(values.get(0x0002, b"")),
        sop_uid=_text(values.get(0x0003, b"")),
        source_aet=_text(values.get(0x0016, b"")).strip(),
    )


def _too_long() -> NoReturn:
    raise InputError(f"a WADO-RS part's File Meta Information runs past {_META_LIMIT} bytes")


class PartWriter:
    """Stores the parts of one WADO-RS answer as they stream in; counts what was stored and what failed.

    *refuse_lossy* (TransferSyntaxPolicy never-lossy) refuses a part in a
    lossy transfer syntax. *on_stored* hears of each stored instance,
    *on_failed* of each write the disk refused.
    """

    def __init__(
        self,
        writer: InstanceWriter,
        *,
        on_stored: Callable[[StoredInstance], None],
        on_failed: Callable[[OSError], None],
        refuse_lossy: bool = False,
    ) -> None:
        self.writer = writer
        self.on_stored = on_stored
        self.on_failed = on_failed
        self.refuse_lossy = refuse_lossy
        #: Parts stored, and parts refused (not DICOM, not whole, refused by the writer).
        self.stored = 0
        self.failed = 0
        self._prefix = bytearray()
        self._stream: InstanceStream | None = None
        self._skipping = False
        self._expected_size: int | None = None
        self._size = 0

    def handle(self, events: Iterable[Event]) -> None:
        """Act on the reader's events; raise DiskRefused when the disk refuses a write."""
        for event in events:
            if isinstance(event, PartData):
                self._data(event.data)
            elif isinstance(event, PartStart):
                self._start(event.headers)
            elif isinstance(event, PartEnd):
                self._end()

    def abort(self) -> None:
        """Drop the part in progress (the body was cut short)."""
        if self._stream is not None:
            self._stream.discard()
            self._stream = None

    def _refuse(self, reason: str) -> None:
        log.error("refused a WADO-RS part: %s", reason)
        self.failed += 1
        self.abort()
        self._skipping = True

    def _start(self, headers: dict[str, str]) -> None:
        self._prefix.clear()
        self._skipping = False
        self._size = 0
        length = headers.get("content-length", "").strip()
        self._expected_size = int(length) if length.isdigit() else None
        media_type = headers.get("content-type", "application/dicom").split(";")[0].strip().lower()
        if media_type != "application/dicom":
            self._refuse(f"its Content-Type is {media_type!r}, not application/dicom")

    def _data(self, data: bytes) -> None:
        self._size += len(data)
        if self._skipping:
            return
        if self._stream is not None:
            self._write(data)
            return
        self._prefix += data
        try:
            meta = parse_file_meta(bytes(self._prefix))
        except InputError as exc:
            self._refuse(str(exc))
            return
        if meta is None:
            return
        if self.refuse_lossy and is_lossy(meta.transfer_syntax):
            self._refuse("it is in a lossy transfer syntax and TransferSyntaxPolicy is never-lossy")
            return
        try:
            self._stream = self.writer.stream(
                meta.transfer_syntax, meta.sop_class_uid, meta.sop_uid, meta.source_aet
            )
        except OSError as exc:
            self._disk_refused(exc)
        rest = memoryview(self._prefix)[meta.dataset_offset :]
        try:
            self._write(rest)
        finally:
            rest.release()
        self._prefix.clear()

    def _write(self, data: bytes | memoryview) -> None:
        assert self._stream is not None
        try:
            self._stream.write(data)
        except OSError as exc:
            self._stream = None  # write() removed its temp file
            self._disk_refused(exc)

    def _disk_refused(self, error: OSError) -> None:
        self.failed += 1
        # strerror only: str(error) names the file, whose path comes from identifiers.
        log.error("cannot write a WADO-RS instance: %s", error.strerror or type(error).__name__)
        with contextlib.suppress(Exception):
            self.on_failed(error)
        raise DiskRefused from error

    def _end(self) -> None:
        stream, self._stream = self._stream, None
        if self._skipping:
            return
        if stream is None:
            self._refuse("it ended inside its File Meta Information")
            return
        if self._expected_size is not None and self._size != self._expected_size:
            stream.discard()
            self._refuse(f"it holds {self._size} bytes, its Content-Length says {self._expected_size}")
            return
        try:
            stored = stream.finish()
        except OSError as exc:
            self._disk_refused(exc)
            return
        except TruncatedDataset as exc:
            self.failed += 1
            log.error("refused a WADO-RS instance: %s; kept in the quarantine folder", exc)
            return
        except InputError as exc:
            self.failed += 1
            log.error("refused a WADO-RS instance: %s", exc)
            return
        self.stored += 1
        try:
            self.on_stored(stored)
        except Exception as exc:  # the file is safely on disk
            log.error("hand-off of a stored instance failed: %s", type(exc).__name__)
