"""One receiving port, several Storage SCP processes: a C-MOVE destination that uses more than one core.

Receiving is Python work per instance (reading PDUs, walking the header,
writing the file), and in one process it all runs under one interpreter
lock: with two C-MOVEs in flight, niffler-cold's receiver was the bound,
not the PACS. A :class:`ReceiverPool` listens on the one port the PACS
knows, and hands each accepted connection (``socket.send_fds``) to the
child process with the fewest associations handed to it so far still open. Each
child is forked before any thread starts and serves its connections with
an ordinary :class:`~niffler.net.scp.StorageSCP` (``start(listen=False)``),
so the calling-AE check, the transfer-syntax policy, the disk checks and the
writer are the same code as in one process.

A child reports each stored instance, and each write the disk refused, back
over its socket *before* it answers the C-STORE. So when the PACS's final
C-MOVE response reaches the parent, every report of that move is already
readable, and :meth:`ReceiverPool.sync` (which reads whatever is waiting)
makes the counts exact before a transfer is judged.

Children stop when told (:meth:`ReceiverPool.stop`), when their parent's
socket closes (the parent died) or on SIGINT/SIGTERM; each then stops its SCP
with the grace it was given and exits without running the parent's cleanup.
A child that dies is noticed: its connections are not handed out again, and
the moves it was serving fail and are retried like any failed move.
Linux and other POSIX systems only (fork, SCM_RIGHTS); elsewhere, and when a
thread already runs, the caller gets one in-process SCP instead.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import select
import signal
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from niffler.common.atomic import remove_temp_files
from niffler.common.errors import ConfigError
from niffler.net.scp import StorageSCP
from niffler.net.writer import StoredInstance

__all__ = ["ReceiverPool", "can_fork_receivers"]

log = logging.getLogger(__name__)

#: Messages (one SOCK_SEQPACKET record each). Parent to child: a connection (with its descriptor), stop.
_CONNECTION, _STOP = b"C", b"S"
#: Child to parent: an instance stored, a write the disk refused, an association handed over ended.
_STORED, _FAILED, _ENDED = b"I", b"F", b"E"
_RECORD = 64 * 1024
#: How often the acceptor looks for a stop, and the reader for dead children.
_POLL = 0.2


def can_fork_receivers() -> bool:
    """Whether receiver processes can be forked here and now: POSIX with SCM_RIGHTS, one thread running."""
    return hasattr(os, "fork") and hasattr(socket, "send_fds") and threading.active_count() == 1


@dataclass
class _Child:
    pid: int
    channel: socket.socket
    #: Connections handed to it and not yet reported ended.
    open: int = 0
    alive: bool = True


class ReceiverPool:
    """*processes* Storage SCP processes behind one listening socket (see the module docstring).

    *make_scp* builds the SCP inside each child, given the hooks it must
    call: ``make_scp(on_stored, on_failed)``. *on_stored* and *on_failed*
    are called in this process, from a reader thread or from :meth:`sync`.
    """

    def __init__(
        self,
        processes: int,
        make_scp: Callable[[Callable[[StoredInstance], None], Callable[[OSError], None]], StorageSCP],
        *,
        ae_title: str,
        host: str,
        port: int,
        on_stored: Callable[[StoredInstance], None] | None = None,
        on_failed: Callable[[OSError], None] | None = None,
        incoming: Path | None = None,
    ) -> None:
        if processes < 1:
            raise ValueError("a receiver pool needs at least one process")
        self.processes = processes
        self.make_scp = make_scp
        self.ae_title = ae_title
        self.host = host
        self._requested_port = port
        self.on_stored = on_stored
        self.on_failed = on_failed
        #: Where the children's temp files are: a child that dies mid-write leaves one there.
        self.incoming = incoming
        self._children: list[_Child] = []
        self._listener: socket.socket | None = None
        self._stopping = threading.Event()
        self._threads: list[threading.Thread] = []
        #: Held while reading and dispatching reports, so they are handled once and in order.
        self._reading = threading.Lock()
        self._handing = threading.Lock()

    @property
    def port(self) -> int:
        if self._listener is None:
            return self._requested_port
        return int(self._listener.getsockname()[1])

    def start(self) -> ReceiverPool:
        """Listen, fork the children, start handing out connections; return self."""
        if not can_fork_receivers():
            raise RuntimeError("receiver processes must be forked before any other thread starts")
        try:
            listener = socket.create_server((self.host, self._requested_port), backlog=64)
        except OSError as exc:
            where = f"{self.host}:{self._requested_port}"
            raise ConfigError(f"cannot listen on {where} as {self.ae_title}: {exc.strerror or exc}") from None
        self._listener = listener
        try:
            for _ in range(self.processes):
                ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
                pid = os.fork()
                if pid == 0:  # the child: never returns
                    ours.close()
                    _child_main(theirs, listener, self.make_scp, [c.channel for c in self._children])
                theirs.close()
                self._children.append(_Child(pid, ours))
        except OSError as exc:  # out of processes or descriptors: the children made so far see EOF and exit
            listener.close()
            for child in self._children:
                child.channel.close()
                _exited(child.pid)
            raise ConfigError(f"cannot start receiver processes: {exc.strerror or exc}") from None
        for name, target in (("accept", self._accept), ("reports", self._read)):
            thread = threading.Thread(target=target, name=f"receivers-{name}", daemon=True)
            thread.start()
            self._threads.append(thread)
        log.info(
            "Storage SCP %s listening on %s:%d; %d receiver processes",
            self.ae_title, self.host, self.port, self.processes,
        )  # fmt: skip
        return self

    def sync(self) -> None:
        """Handle every report the children have sent so far."""
        with self._reading:
            for child in self._children:
                self._drain(child)

    def stop(self, grace: float = 5.0) -> None:
        """Stop accepting; let each child stop its SCP within *grace*; wait; handle the last reports.

        Reports are read while the children stop (a child blocked on a full
        channel could not finish its last associations); one that outlives
        *grace* by 5 s is killed.
        """
        if self._stopping.is_set():
            return
        self._stopping.set()
        for thread in self._threads:
            thread.join(2 * _POLL + 1)
        if self._listener is not None:
            self._listener.close()
        for child in self._children:
            if child.alive:
                with contextlib.suppress(OSError):
                    child.channel.send(_STOP + json.dumps({"grace": grace}).encode())
        deadline = time.monotonic() + grace + 5.0
        waiting = {child.pid for child in self._children}
        while waiting and time.monotonic() < deadline:
            self.sync()
            waiting = {pid for pid in waiting if not _exited(pid)}
            if waiting:
                time.sleep(0.02)
        for pid in waiting:
            log.warning("receiver process %d did not stop in time; killed", pid)
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, 0)
        self.sync()
        for child in self._children:
            child.channel.close()
        log.info("Storage SCP %s stopped", self.ae_title)

    def __enter__(self) -> ReceiverPool:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- the parent's threads -------------------------------------------------------------------

    def _accept(self) -> None:
        listener = self._listener
        assert listener is not None
        while not self._stopping.is_set():
            try:
                ready, _, _ = select.select([listener], [], [], _POLL)
                if not ready:
                    continue
                connection, address = listener.accept()
            except OSError:
                if self._stopping.is_set():
                    return
                time.sleep(_POLL)
                continue
            with connection:
                self._hand_over(connection, address)

    def _hand_over(self, connection: socket.socket, address: tuple[str, int]) -> None:
        """Give *connection* to the living child with the fewest open; drop it if none is left."""
        record = _CONNECTION + json.dumps(list(address[:2])).encode()
        while True:
            with self._handing:
                living = [c for c in self._children if c.alive]
                if not living:
                    log.error("no receiver process is left: a connection was refused")
                    return
                child = min(living, key=lambda c: c.open)
                child.open += 1
            try:
                socket.send_fds(child.channel, [record], [connection.fileno()])
                log.debug("connection handed to receiver process %d (%d open)", child.pid, child.open)
                return
            except OSError:
                self._lost(child)

    def _read(self) -> None:
        while not self._stopping.is_set():
            channels = {c.channel: c for c in self._children if c.alive}
            if not channels:
                return
            try:
                ready, _, _ = select.select(list(channels), [], [], _POLL)
            except (OSError, ValueError):
                continue
            with self._reading:
                for channel in ready:
                    self._drain(channels[channel])

    def _drain(self, child: _Child) -> None:
        """Handle every record *child* has sent (hold ``_reading``)."""
        if child.channel.fileno() < 0:
            return
        while True:
            try:
                record = child.channel.recv(_RECORD, socket.MSG_DONTWAIT)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                record = b""
            if not record:
                if child.alive:
                    self._lost(child)
                return
            self._dispatch(child, record)

    def _dispatch(self, child: _Child, record: bytes) -> None:
        kind, body = record[:1], record[1:]
        try:
            if kind == _STORED:
                fields = json.loads(body)
                fields["path"] = Path(fields["path"])
                if self.on_stored is not None:
                    self.on_stored(StoredInstance(**fields))
            elif kind == _FAILED:
                code, reason = json.loads(body)
                if self.on_failed is not None:
                    self.on_failed(OSError(code, reason))
            elif kind == _ENDED:
                with self._handing:
                    child.open = max(0, child.open - 1)
        except Exception as exc:  # a report must never stop the reader
            log.error("a receiver process's report could not be handled: %s", type(exc).__name__)

    def _lost(self, child: _Child) -> None:
        with self._handing:
            was_alive, child.alive = child.alive, False
        if was_alive and not self._stopping.is_set():
            log.error("receiver process %d ended unexpectedly; the others go on", child.pid)
        if was_alive and self.incoming is not None:
            with contextlib.suppress(OSError):
                remove_temp_files(self.incoming, child.pid)


def _exited(pid: int) -> bool:
    """Whether child *pid* has exited (and is reaped now)."""
    try:
        done, _ = os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        return True
    return bool(done)


# --- the child ---------------------------------------------------------------------------------


def _child_main(
    channel: socket.socket,
    listener: socket.socket,
    make_scp: Callable[[Callable[[StoredInstance], None], Callable[[OSError], None]], StorageSCP],
    siblings: list[socket.socket],
) -> None:
    """Serve the connections the parent hands over until told to stop; then exit the process."""
    code = 1
    try:
        listener.close()
        for sibling in siblings:  # the parent's ends of earlier children's channels
            sibling.close()
        code = _serve_handed_over(channel, make_scp)
    except BaseException as exc:  # the child must reach os._exit whatever happens
        # The type only: an OSError's message names a file, and a received file's path holds identifiers.
        log.error("receiver process %d failed: %s", os.getpid(), type(exc).__name__)
    finally:
        logging.shutdown()
        os._exit(code)


def _serve_handed_over(
    channel: socket.socket,
    make_scp: Callable[[Callable[[StoredInstance], None], Callable[[OSError], None]], StorageSCP],
) -> int:
    def report(record: bytes) -> None:
        with contextlib.suppress(OSError):  # the parent is gone: the file is on disk all the same
            channel.send(record)

    def on_stored(stored: StoredInstance) -> None:
        fields = asdict(stored)
        fields["path"] = str(stored.path)
        report(_STORED + json.dumps(fields).encode())

    def on_failed(error: OSError) -> None:
        report(_FAILED + json.dumps([error.errno, error.strerror or type(error).__name__]).encode())

    scp = make_scp(on_stored, on_failed)
    scp.on_association_end = lambda: report(_ENDED)
    scp.start(listen=False)
    grace = 1.0
    try:
        while True:
            record, fds, _, _ = socket.recv_fds(channel, _RECORD, 1)
            if not record:  # the parent is gone
                grace = 0.0
                break
            if record[:1] == _STOP:
                grace = float(json.loads(record[1:]).get("grace", grace))
                break
            if record[:1] == _CONNECTION and fds:
                host, port = json.loads(record[1:])
                scp.serve_connection(socket.socket(fileno=fds[0]), (host, port))
            else:
                for fd in fds:
                    os.close(fd)
    except KeyboardInterrupt:  # SIGINT to the process group, or SIGTERM through niffler's handler
        grace = 1.0
    for signum in (signal.SIGINT, signal.SIGTERM):  # one stop is enough
        signal.signal(signum, signal.SIG_IGN)
    scp.stop(grace=grace)
    return 0
