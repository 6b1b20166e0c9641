"""A streaming reader of ``multipart/related`` bodies (RFC 2046 5.1, RFC 2387), as WADO-RS sends them.

Bytes go in as they arrive (:meth:`MultipartReader.feed`); events come out:
:class:`PartStart` with the part's headers, :class:`PartData` pieces of its
body, :class:`PartEnd`. Nothing holds a part whole: the reader keeps at most
one fed piece plus a delimiter's length, so memory stays flat whatever the
size of an instance. :meth:`MultipartReader.close` says whether the body was
whole: a body that ends before its close delimiter (``--boundary--``) was cut
short, which is how a dropped connection shows when the server frames its
answer by closing the connection (Orthanc does: no Content-Length, no
chunked encoding). Messages name counts, never content.
"""

from __future__ import annotations

import email.message
from collections.abc import Iterator
from dataclasses import dataclass, field

__all__ = [
    "MultipartError",
    "MultipartReader",
    "PartData",
    "PartEnd",
    "PartStart",
    "TruncatedBody",
    "boundary_of",
]

#: Longest header block a part may have; a longer one is not a DICOMweb part.
_HEADER_LIMIT = 16 * 1024
#: Longest line after a delimiter (transport padding, RFC 2046 5.1.1).
_PADDING_LIMIT = 1024


class MultipartError(ValueError):
    """The body is not the multipart/related message it claims to be."""


class TruncatedBody(MultipartError):
    """The body ended before its close delimiter: the transfer was cut short."""


@dataclass(frozen=True)
class PartStart:
    """A part begins; *headers* by lower-case name."""

    headers: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class PartData:
    """A piece of the current part's body."""

    data: bytes


@dataclass(frozen=True)
class PartEnd:
    """The current part is complete (its delimiter arrived)."""


Event = PartStart | PartData | PartEnd


def boundary_of(content_type: str) -> str | None:
    """The boundary parameter of a ``multipart/...`` Content-Type, or None when it is not one."""
    message = email.message.Message()
    message["content-type"] = content_type
    if message.get_content_maintype() != "multipart":
        return None
    boundary = message.get_param("boundary")
    return boundary if isinstance(boundary, str) and 0 < len(boundary) <= 70 else None


class MultipartReader:
    """Turns the bytes of one multipart body into part events (see the module's docstring)."""

    def __init__(self, boundary: str) -> None:
        self._dash_boundary = b"--" + boundary.encode("latin-1")
        self._delimiter = b"\r\n" + self._dash_boundary
        self._buffer = bytearray()
        self._state = "preamble"
        #: Parts complete so far.
        self.parts = 0

    @property
    def complete(self) -> bool:
        """Whether the close delimiter arrived."""
        return self._state == "epilogue"

    @property
    def in_part(self) -> bool:
        """Whether a part has started and not ended."""
        return self._state in ("headers", "body")

    def feed(self, data: bytes) -> Iterator[Event]:
        """The events *data* completes, in order."""
        if self._state == "epilogue":
            return  # what follows the close delimiter is ignored (RFC 2046)
        self._buffer += data
        while True:
            step = getattr(self, f"_{self._state}")()
            if step is None:
                return
            yield from step

    def close(self) -> None:
        """Raise :class:`TruncatedBody` unless the close delimiter arrived."""
        if self._state != "epilogue":
            where = "in a part" if self.in_part else "between parts"
            raise TruncatedBody(
                f"the multipart body ended before its closing boundary, {where}, "
                f"after {self.parts} complete part(s)"
            )

    # Each state consumes what it can and returns the events it made, or None to wait for more bytes.

    def _preamble(self) -> list[Event] | None:
        buffer = self._buffer
        if buffer.startswith(self._dash_boundary):
            del buffer[: len(self._dash_boundary)]
            self._state = "after_delimiter"
            return []
        if len(buffer) < len(self._dash_boundary) and self._dash_boundary.startswith(buffer):
            return None
        found = buffer.find(self._delimiter)
        if found < 0:
            # A preamble is ignored; keep what may be the start of the first delimiter.
            del buffer[: max(0, len(buffer) - len(self._delimiter) + 1)]
            return None
        del buffer[: found + len(self._delimiter)]
        self._state = "after_delimiter"
        return []

    def _after_delimiter(self) -> list[Event] | None:
        buffer = self._buffer
        if len(buffer) < 2:
            return None
        if buffer.startswith(b"--"):
            buffer.clear()
            self._state = "epilogue"
            return []
        end = buffer.find(b"\r\n")
        if end < 0:
            if len(buffer) > _PADDING_LIMIT:
                raise MultipartError("a multipart delimiter is followed by something other than a line end")
            return None
        if buffer[:end].strip(b" \t"):
            raise MultipartError("a multipart delimiter is followed by something other than a line end")
        del buffer[: end + 2]
        self._state = "headers"
        return []

    def _headers(self) -> list[Event] | None:
        buffer = self._buffer
        if buffer.startswith(b"\r\n"):  # a part without headers
            del buffer[:2]
            self._state = "body"
            return [PartStart({})]
        end = buffer.find(b"\r\n\r\n")
        if end < 0:
            if len(buffer) > _HEADER_LIMIT:
                raise MultipartError(f"a part's headers run past {_HEADER_LIMIT} bytes")
            return None
        headers: dict[str, str] = {}
        for line in bytes(buffer[:end]).split(b"\r\n"):
            name, colon, value = line.partition(b":")
            if not colon:
                raise MultipartError("a part's header line has no colon")
            headers[name.strip().decode("latin-1").lower()] = value.strip().decode("latin-1")
        del buffer[: end + 4]
        self._state = "body"
        return [PartStart(headers)]

    def _body(self) -> list[Event] | None:
        buffer = self._buffer
        found = buffer.find(self._delimiter)
        if found >= 0:
            events: list[Event] = [PartData(bytes(buffer[:found]))] if found else []
            del buffer[: found + len(self._delimiter)]
            self._state = "after_delimiter"
            self.parts += 1
            return [*events, PartEnd()]
        # Hand on all but what may be the start of the delimiter.
        keep = len(self._delimiter) - 1
        if len(buffer) <= keep:
            return None
        data = bytes(buffer[: len(buffer) - keep])
        del buffer[: len(buffer) - keep]
        return [PartData(data)]

    def _epilogue(self) -> list[Event] | None:
        self._buffer.clear()
        return None
