"""Faults on demand for the fault tests: freeze or crash a real process at a chosen moment, and
find what an interrupted run left behind.

A process to be crashed "mid-transfer" is first frozen (SIGSTOP): what is on
disk at the moment the test decides is then what the crash leaves, however
fast the transfer runs. Killing a frozen process (SIGKILL) needs no
SIGCONT. Nothing here is used by Niffler's modules at run time.
"""

from __future__ import annotations

import signal
import subprocess
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from niffler.net.writer import INCOMING_DIR

__all__ = ["child_pids", "crash", "freeze", "pid_alive", "temp_files", "thaw", "wait_until"]


def wait_until(
    predicate: Callable[[], bool],
    timeout: float,
    *,
    interval: float = 0.002,
    proc: subprocess.Popen[Any] | None = None,
) -> bool:
    """Return True once *predicate* holds; False after *timeout* s or once *proc* has exited."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        if proc is not None and proc.poll() is not None:
            return bool(predicate())
        time.sleep(interval)
    return False


def freeze(proc: subprocess.Popen[Any]) -> None:
    """Stop *proc* where it is (SIGSTOP): its sockets stay open, it sends nothing more."""
    proc.send_signal(signal.SIGSTOP)


def thaw(proc: subprocess.Popen[Any]) -> None:
    """Let a frozen *proc* go on (SIGCONT)."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGCONT)


def crash(proc: subprocess.Popen[Any], timeout: float = 10.0) -> int:
    """Kill *proc* as a power cut or the OOM killer would (SIGKILL, frozen or not); return its exit code."""
    if proc.poll() is None:
        proc.kill()
    return proc.wait(timeout=timeout)


def pid_alive(pid: int) -> bool:
    """Whether a process *pid* exists and is not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def child_pids(pid: int) -> set[int]:
    """The PIDs of the live processes whose parent is *pid* (read from /proc)."""
    children = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid and fields[0] != "Z":
            children.add(int(entry.name))
    return children


def temp_files(folders: Iterable[Path]) -> list[Path]:
    """Every temp file of an atomic write (``*.part``) and anything left in an incoming folder.

    Niffler writes every output to a ``.part`` temp name and renames it into
    place (:mod:`niffler.common.atomic`); the receivers keep their temp files
    in :data:`~niffler.net.writer.INCOMING_DIR`.
    """
    found: list[Path] = []
    for folder in folders:
        if not folder.exists():
            continue
        for path in folder.rglob("*"):
            if path.is_file() and (path.name.endswith(".part") or INCOMING_DIR in path.parts):
                found.append(path)
    return sorted(found)
