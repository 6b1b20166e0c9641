"""One atomic-write helper for every output: all or nothing, and no temp file left behind."""

from __future__ import annotations

from pathlib import Path

import pytest

from niffler.common.atomic import atomic_write, write_bytes_atomic


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temp(tmp_path: Path) -> None:
    target = tmp_path / "report.csv"
    target.write_text("old\n")
    with pytest.raises(RuntimeError), atomic_write(target) as handle:
        handle.write("half of the new")
        raise RuntimeError("disk went away")
    assert target.read_text() == "old\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.csv"]


def test_a_clean_write_replaces_and_creates_missing_folders(tmp_path: Path) -> None:
    target = tmp_path / "a" / "b" / "image.png"
    write_bytes_atomic(target, b"\x89PNG")
    assert target.read_bytes() == b"\x89PNG"
    with atomic_write(target, "wb", fsync=True) as handle:
        handle.write(b"new")
    assert target.read_bytes() == b"new"
    assert [p.name for p in target.parent.iterdir()] == ["image.png"]


def test_the_temp_file_can_live_in_another_folder(tmp_path: Path) -> None:
    incoming = tmp_path / "incoming"
    target = tmp_path / "store" / "x.dcm"
    with atomic_write(target, "wb", temp_dir=incoming) as handle:
        handle.write(b"DICM")
        assert [p.suffix for p in incoming.iterdir()] == [".part"]
    assert target.read_bytes() == b"DICM" and list(incoming.iterdir()) == []


def test_text_mode_suits_csv(tmp_path: Path) -> None:
    target = tmp_path / "m.csv"
    with atomic_write(target) as handle:
        handle.write("a,b\r\n")
    assert target.read_bytes() == b"a,b\r\n"
    with pytest.raises(ValueError, match="mode"), atomic_write(target, "a"):
        pass


def test_parts_are_written_in_order_through_short_writes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import os

    real_writev = os.writev

    def one_byte_at_a_time(fd: int, buffers: list[memoryview]) -> int:
        return real_writev(fd, [buffers[0][:1]])

    monkeypatch.setattr(os, "writev", one_byte_at_a_time)
    target = tmp_path / "deep" / "file.dcm"
    parts = (b"head", memoryview(b"--body--")[2:6], b"", bytearray(b"tail"))
    write_bytes_atomic(target, parts, temp_dir=tmp_path)
    assert target.read_bytes() == b"headbodytail"
    assert [p.name for p in tmp_path.iterdir()] == ["deep"]


def test_a_full_disk_mid_write_leaves_neither_file_nor_temp(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import errno
    import os

    target = tmp_path / "old.dcm"
    target.write_bytes(b"old")

    def full(fd: int, buffers: list[memoryview]) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "writev", full)
    with pytest.raises(OSError, match="No space"):
        write_bytes_atomic(target, (b"new", b"data"), temp_dir=tmp_path)
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["old.dcm"]
