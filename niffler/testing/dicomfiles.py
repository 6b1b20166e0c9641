"""Helpers to compare DICOM files at the byte level in tests."""

from __future__ import annotations

from pathlib import Path

__all__ = ["dataset_bytes"]

_LONG_VRS = {b"OB", b"OW", b"OF", b"OD", b"OL", b"OV", b"SQ", b"UC", b"UR", b"UT", b"UN", b"SV", b"UV"}


def dataset_bytes(path: str | Path) -> bytes:
    """Return the encoded dataset of a Part 10 file: everything after its File Meta group."""
    data = Path(path).read_bytes()
    if data[128:132] != b"DICM":
        raise ValueError(f"{path} is not a DICOM Part 10 file")
    pos = 132
    # The File Meta group is always Explicit VR Little Endian (PS3.10 7.1).
    while int.from_bytes(data[pos : pos + 2], "little") == 0x0002:
        vr = data[pos + 4 : pos + 6]
        if vr in _LONG_VRS:
            pos += 12 + int.from_bytes(data[pos + 8 : pos + 12], "little")
        else:
            pos += 8 + int.from_bytes(data[pos + 6 : pos + 8], "little")
    return data[pos:]
