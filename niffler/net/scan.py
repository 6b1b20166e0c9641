"""Pick a few top-level elements out of an encoded little endian dataset, without pydicom's reader.

The Storage SCP needs five to ten attributes of every received instance
(its UIDs and the FilePath template's tags), all near the start. pydicom's
``read_dataset`` reaches them through its general element generator, which
was the largest share of the receive path's CPU that was Niffler's own.
:func:`scan_elements` walks element headers with ``struct`` instead,
skipping values (and sequences, of defined or undefined length) it does not
want, and returns the wanted ones as pydicom raw elements, which pydicom
converts on access exactly as it would after ``read_dataset``.

It only ever answers when it is sure: anything unusual (a truncated
element, a wanted element of undefined length, a malformed item, the end
of the data before the last wanted tag) returns None, and the caller reads
the dataset with pydicom.
"""

from __future__ import annotations

import re
import struct
from collections.abc import Iterable

from pydicom.datadict import dictionary_VR
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.tag import Tag

__all__ = ["decode_uid", "plain_values", "raw_dataset", "scan_elements", "scan_raw", "truncation"]

#: Explicit VRs whose length field is 4 bytes after 2 reserved ones (PS3.5 7.1.2).
_LONG_VRS = frozenset(
    vr.encode("ascii")
    for vr in ["OB", "OD", "OF", "OL", "OV", "OW", "SQ", "SV", "UC", "UN", "UR", "UT", "UV"]
)
#: The other VRs of PS3.5 6.2, with a 2-byte length. Anything else is not a VR this walker knows.
_SHORT_VRS = frozenset(
    vr.encode("ascii")
    for vr in [
        "AE", "AS", "AT", "CS", "DA", "DS", "DT", "FD", "FL", "IS", "LO", "LT", "PN", "SH", "SL", "SS",
        "ST", "TM", "UI", "UL", "US",
    ]
)  # fmt: skip
_UNDEFINED = 0xFFFFFFFF
_ITEM = 0xFFFEE000
_ITEM_END = 0xFFFEE00D
_SEQUENCE_END = 0xFFFEE0DD
_MAX_DEPTH = 16

_header = struct.Struct("<HHI")  # tag and a 4-byte length (implicit VR, items, delimiters)
_short = struct.Struct("<HH2sH")  # tag, VR, 2-byte length
_long = struct.Struct("<HH2s2xI")  # tag, VR, reserved, 4-byte length


class _Unsure(Exception):
    """The bytes are not what this walker handles with certainty."""


def _element(data: bytes | memoryview, pos: int, implicit: bool) -> tuple[int, str | None, int, int]:
    """Return (tag, VR or None, value length, value offset) of the element header at *pos*."""
    if pos + 8 > len(data):
        raise _Unsure
    if implicit:
        group, elem, length = _header.unpack_from(data, pos)
        return group << 16 | elem, None, length, pos + 8
    group, elem, vr, length = _short.unpack_from(data, pos)
    tag = group << 16 | elem
    if group == 0xFFFE:  # item and delimiters carry no VR
        return tag, None, _header.unpack_from(data, pos)[2], pos + 8
    if vr in _LONG_VRS:
        if pos + 12 > len(data):
            raise _Unsure
        return tag, vr.decode("ascii"), _long.unpack_from(data, pos)[3], pos + 12
    if not _looks_like_vr(vr):
        raise _Unsure
    return tag, vr.decode("ascii"), length, pos + 8


def _looks_like_vr(two: bytes) -> bool:
    return two.isalpha() and two.isupper()


def _skip_sequence(data: bytes | memoryview, pos: int, implicit: bool, depth: int) -> int:
    """Return the offset after an undefined-length sequence whose items start at *pos*."""
    if depth > _MAX_DEPTH:
        raise _Unsure
    while True:
        tag, _, length, pos = _element(data, pos, True)  # items and delimiters: tag and 4-byte length
        if tag == _SEQUENCE_END:
            return pos
        if tag != _ITEM:
            raise _Unsure
        pos = _skip_item(data, pos, implicit, depth) if length == _UNDEFINED else pos + length


def _skip_item(data: bytes | memoryview, pos: int, implicit: bool, depth: int) -> int:
    """Return the offset after an undefined-length item whose elements start at *pos*."""
    while True:
        tag, vr, length, pos = _element(data, pos, implicit)
        if tag == _ITEM_END:
            return pos
        if length == _UNDEFINED:
            pos = _skip_sequence(data, pos, implicit or vr == "UN", depth + 1)
        else:
            pos += length


def scan_raw(
    data: bytes | memoryview, implicit: bool, wanted: frozenset[int]
) -> dict[int, tuple[str | None, bytes]] | None:
    """Return {tag: (VR or None, value bytes)} of the wanted top-level tags in *data*, or None when unsure.

    The walk of :func:`scan_elements`, written out in one loop: it runs for
    every received instance, over every element up to the last wanted tag.
    """
    if not wanted:
        return {}
    if implicit and _looks_like_vr(bytes(data[4:6])):
        return None  # explicit VR sent as implicit: pydicom detects and handles that
    last = max(wanted)
    found: dict[int, tuple[str | None, bytes]] = {}
    end = len(data)
    pos = 0
    header, short, long = _header.unpack_from, _short.unpack_from, _long.unpack_from
    try:
        while True:
            if pos + 8 > end:
                return None
            vr: str | None = None
            if implicit:
                group, elem, length = header(data, pos)
                start = pos + 8
            else:
                group, elem, raw_vr, length = short(data, pos)
                start = pos + 8
                if group == 0xFFFE:  # item and delimiters carry no VR
                    length = header(data, pos)[2]
                elif raw_vr in _LONG_VRS:
                    start = pos + 12
                    if start > end:
                        return None
                    length = long(data, pos)[3]
                    vr = raw_vr.decode("ascii")
                elif raw_vr in _SHORT_VRS:
                    vr = raw_vr.decode("ascii")
                else:
                    return None
            tag = group << 16 | elem
            if tag > last:
                return found
            if length == _UNDEFINED:
                if tag in wanted:
                    return None
                # A sequence sent as UN keeps its implicit VR encoding inside (PS3.5 6.2.2).
                pos = _skip_sequence(data, start, implicit or vr == "UN", 0)
                continue
            pos = start + length
            if pos > end:
                return None
            if tag in wanted:
                found[tag] = (vr, bytes(data[start:pos]))
    except (_Unsure, struct.error):
        return None


def scan_elements(data: bytes | memoryview, implicit: bool, tags: Iterable[int]) -> Dataset | None:
    """Return a dataset of the wanted top-level *tags* found in *data*, or None when unsure.

    *data* is an encoded little endian dataset (no file meta). Tags that
    are absent are simply not in the result, as with ``read_dataset``.
    """
    found = scan_raw(data, implicit, frozenset(int(t) for t in tags))
    return None if found is None else raw_dataset(found, implicit)


def raw_dataset(found: dict[int, tuple[str | None, bytes]], implicit: bool) -> Dataset:
    """Return what :func:`scan_raw` found as a dataset of raw elements, for pydicom to convert."""
    return Dataset(
        {
            Tag(tag): RawDataElement(Tag(tag), vr, len(value), value, 0, implicit, True, True, False)
            for tag, (vr, value) in found.items()
        }
    )


#: SpecificCharacterSet values whose text decodes with one Python codec, as pydicom maps them.
_SIMPLE_CHARSETS = {"": "iso8859", "ISO_IR 6": "iso8859", "ISO_IR 100": "latin_1", "ISO_IR 192": "UTF8"}
_SPECIFIC_CHARACTER_SET = 0x00080005
#: VRs pydicom reads as plain strings with the default encoding, trailing padding dropped
#: (convert_string, convert_UI). Not AE: pydicom drops its leading spaces too.
_DEFAULT_ENCODED_VRS = frozenset({"AS", "CS", "UI"})
#: VRs pydicom reads as text in the dataset's character set (convert_text).
_TEXT_VRS = frozenset({"LO", "SH"})


def plain_values(found: dict[int, tuple[str | None, bytes]], implicit: bool) -> dict[int, str] | None:
    """Return {tag: value} of scanned elements as pydicom reads them, or None if one needs pydicom.

    Only single-valued strings are read here: UIDs, code strings and, in a
    single-byte or UTF-8 character set without escape sequences, short and
    long strings (such as PatientID). Anything else, or an implicit VR
    element whose VR the dictionary gives otherwise, is pydicom's.
    """
    values: dict[int, str] = {}
    encoding = "iso8859"
    charset = found.get(_SPECIFIC_CHARACTER_SET)
    if charset is not None:
        name = charset[1].decode("iso8859").rstrip(" \0")
        if name not in _SIMPLE_CHARSETS:
            return None
        encoding = _SIMPLE_CHARSETS[name]
    for tag, (vr, raw) in found.items():
        if vr is None:
            vr = _dictionary_vr(tag)
        if b"\\" in raw:
            return None
        if vr in _DEFAULT_ENCODED_VRS:
            text = raw.decode("iso8859").rstrip(" \0")
            values[tag] = text.strip() if vr == "UI" else text  # pydicom's UID drops leading spaces too
        elif vr in _TEXT_VRS and b"\x1b" not in raw:
            try:
                values[tag] = raw.decode(encoding).rstrip("\0 ")
            except UnicodeError:
                return None
        else:
            return None
    return values


def _dictionary_vr(tag: int) -> str | None:
    try:
        return dictionary_VR(tag)
    except KeyError:
        return None


def decode_uid(raw: bytes) -> str | None:
    """Return one encoded UID value as pydicom reads it, or None when it holds several.

    A UID is ASCII padded to even length with a NUL (PS3.5 9.1); pydicom
    also drops trailing spaces, and its UID class whitespace on both sides.
    A backslash separates values, which the callers leave to pydicom.
    """
    if b"\\" in raw:
        return None
    return raw.decode("iso8859").rstrip("\0 ").strip()


def truncation(data: bytes | memoryview, implicit: bool, little_endian: bool = True) -> str | None:
    """Return why the element structure of an encoded dataset runs past its end, or None if it is whole.

    Walks every element header (iteratively, at any nesting depth), skipping
    values by their lengths and descending only into undefined-length
    sequences, items and encapsulated pixel data (the contents of an
    undefined-length UN are implicit VR, PS3.5 6.2.2). A dataset cut
    mid-header, mid-value or inside an undefined-length structure is
    truncated; the message gives byte offsets only, never a value. A dataset
    labelled explicit VR but encoded implicit (which pydicom reads) is judged
    as it is encoded.
    """
    if little_endian and _pixel_data_reaches_end(data, implicit):
        return None  # the usual case, in a microsecond instead of a walk of every header
    problem = _walk(data, implicit, little_endian)
    if problem is not None and not implicit and little_endian and _walk(data, True, True) is None:
        return None
    return problem


#: Where the Pixel Data element is looked for: real headers put it within the first few kilobytes.
_PIXEL_SEARCH = 256 * 1024
_PIXEL_EXPLICIT = re.compile(rb"\xe0\x7f\x10\x00(?:OB|OW)\x00\x00", re.DOTALL)
_PIXEL_IMPLICIT = re.compile(rb"\xe0\x7f\x10\x00", re.DOTALL)
_SEQUENCE_END_BYTES = b"\xfe\xff\xdd\xe0\x00\x00\x00\x00"


def _pixel_data_reaches_end(data: bytes | memoryview, implicit: bool) -> bool:
    """True when the first Pixel Data header ends the dataset exactly (little endian).

    A cut removes the end of a dataset, so when Pixel Data and the few
    elements after it (trailing padding) reach the last byte exactly, or its
    encapsulated fragments end with the sequence delimiter, nothing is
    missing. False means "walk it all": no Pixel Data near the start, or a
    lookalike.
    """
    found = (_PIXEL_IMPLICIT if implicit else _PIXEL_EXPLICIT).search(data, 0, _PIXEL_SEARCH)
    if found is None:
        return False
    at = found.end()
    if at + 4 > len(data):
        return False
    length = int.from_bytes(data[at : at + 4], "little")
    if length == _UNDEFINED:
        return bytes(data[-8:]) == _SEQUENCE_END_BYTES
    after = at + 4 + length
    # What follows Pixel Data (trailing padding, a signature) is short: walk it.
    return after <= len(data) and _walk(memoryview(data)[after:], implicit, True) is None


def _walk(data: bytes | memoryview, implicit: bool, little_endian: bool) -> str | None:
    end = len(data)
    order = "<" if little_endian else ">"
    head = struct.Struct(order + "HHI")
    short = struct.Struct(order + "HH2sH")
    long_ = struct.Struct(order + "HH2s2xI")
    pos = 0
    #: One entry per open undefined-length sequence or item: whether its contents are implicit VR.
    modes: list[bool] = []
    mode = implicit
    while pos < end:
        if pos + 8 > end:
            return f"an element header at byte {pos} runs past the end ({end} bytes)"
        group, elem, length = head.unpack_from(data, pos)
        tag = group << 16 | elem
        vr = b""
        if group == 0xFFFE or mode:
            value = pos + 8
        else:
            _, _, vr, short_length = short.unpack_from(data, pos)
            if vr in _LONG_VRS:
                if pos + 12 > end:
                    return f"an element header at byte {pos} runs past the end ({end} bytes)"
                length, value = long_.unpack_from(data, pos)[3], pos + 12
            else:
                length, value = short_length, pos + 8
        if tag in (_ITEM_END, _SEQUENCE_END):
            if not modes:
                return f"a delimiter at byte {pos} closes nothing"
            mode = modes.pop()
            pos = value
            continue
        if length == _UNDEFINED:
            modes.append(mode)  # restored at the matching delimiter
            mode = mode or vr == b"UN"
            pos = value
            continue
        if value + length > end:
            return f"the value at byte {value} needs {length} bytes; {end - value} remain"
        pos = value + length
    if modes:
        return f"{len(modes)} undefined-length sequence(s) or item(s) never closed"
    return None
