"""Event-driven reactors for the associations Niffler accepts and requests.

pynetdicom 3.0 runs two polling loops per association. The DUL thread
sleeps 1 ms whenever it finds nothing to do, and the acceptor thread sleeps
1 ms before every look at its message queue. A C-STORE is a ping-pong (the
sender waits for each response), so every instance paid up to three of
those sleeps: about 2 of the 3.3 ms an instance took on loopback, while
DCMTK's storescp needs 1.5 ms in all. Its socket reads came in 4 KiB
pieces, about 130 ``recv`` calls for half a megabyte.

:func:`make_event_driven` is called from the EVT_CONN_OPEN handler of an
acceptor association, before its threads start, and swaps in loops that do
the same work in the same order but *wait* instead of sleeping:

- the DUL waits in ``select`` on the association's socket and on a wake-up
  socket that every put on its outgoing queue writes to, so an arriving PDU
  or a response to send is handled at once;
- the acceptor blocks on its message queue, so a complete C-STORE request
  is served at once;
- PDUs are read with ``recv_into`` straight into one buffer of their size.

Associations Niffler requests (C-FIND, C-MOVE, C-GET, C-STORE) get the
waiting DUL loop too (:func:`make_requestor_event_driven`, from
``dicomnet.NifflerAE``), and an association loop that leaves their
responses to the caller (pynetdicom's could take one first). Both kinds
lose pynetdicom's debug-record handlers while its debug log is off
(:func:`quiet_standard_logging`).

The loops wake at least every tick for their timers and flags, so
release/abort handling is unchanged. They follow pynetdicom 3.0's ``DULServiceProvider.run_reactor`` and
``Association._run_reactor`` (MIT licence); on another pynetdicom version
nothing is swapped and the stock loops run.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import select
import socket
import struct
import threading
import time
from io import BytesIO
from types import MethodType
from typing import Any, cast

import pynetdicom
from pynetdicom import evt
from pynetdicom._handlers import (
    standard_dimse_recv_handler,
    standard_dimse_sent_handler,
    standard_pdu_recv_handler,
    standard_pdu_sent_handler,
)
from pynetdicom.association import Association
from pynetdicom.dimse import DIMSEServiceProvider
from pynetdicom.dimse_messages import _DATASET_KEYWORDS, _MSG_TO_PRIMITVE, DIMSEMessage
from pynetdicom.dimse_primitives import C_CANCEL, C_STORE, N_EVENT_REPORT
from pynetdicom.dul import DULServiceProvider
from pynetdicom.pdu import A_ABORT_RQ
from pynetdicom.pdu_primitives import P_DATA
from pynetdicom.transport import AssociationSocket

from niffler.common.dcmscan import decode_uid

__all__ = [
    "SUPPORTED",
    "command_to_primitive",
    "encode_store_response",
    "make_event_driven",
    "make_requestor_event_driven",
    "quiet_standard_logging",
]

log = logging.getLogger(__name__)

#: The pynetdicom versions whose loops these mirror.
SUPPORTED = pynetdicom.__version__.startswith("3.0.")
#: Longest wait before a loop looks at its timers and flags again. Everything
#: else wakes it, so this bounds only the network-timeout check and how long an
#: ended association's threads linger (pynetdicom polled every millisecond).
_TICK = 0.02
#: What the acceptor's message queue holds when only a wake-up was meant.
_NUDGE = (None, None)


class _WakingQueue(queue.Queue[Any]):
    """A queue that writes a byte to a socket on each put, so a select() on it wakes up."""

    def __init__(self, wake: socket.socket) -> None:
        super().__init__()
        self._wake = wake

    def put(self, item: Any, block: bool = True, timeout: float | None = None) -> None:
        super().put(item, block, timeout)
        # Full: a wake-up is pending anyway. Closed: the reactor has ended.
        with contextlib.suppress(OSError):
            self._wake.send(b"\0")


class _NudgingQueue(queue.Queue[Any]):
    """The DUL's queue to the user: each put (release, abort) also wakes the acceptor's wait."""

    def __init__(self, nudge: queue.Queue[Any]) -> None:
        super().__init__()
        self._nudge = nudge

    def put(self, item: Any, block: bool = True, timeout: float | None = None) -> None:
        super().put(item, block, timeout)
        self._nudge.put(_NUDGE)


#: pynetdicom's notification handlers, bound to every association, that format
#: a debug record of each PDU and DIMSE message whether or not it is logged.
_STANDARD_LOGGING = (
    (evt.EVT_DIMSE_RECV, standard_dimse_recv_handler),
    (evt.EVT_DIMSE_SENT, standard_dimse_sent_handler),
    (evt.EVT_PDU_RECV, standard_pdu_recv_handler),
    (evt.EVT_PDU_SENT, standard_pdu_sent_handler),
)


def quiet_standard_logging(assoc: Association) -> bool:
    """Unbind pynetdicom's debug-record handlers from *assoc* unless its debug log is on.

    They build their records (every presentation context of an association
    request, every field of every message) before the logger drops them:
    a fifth of the CPU of receiving a C-MOVE's small instances, where each
    association arrives with over a hundred proposed contexts.
    """
    if logging.getLogger("pynetdicom").isEnabledFor(logging.DEBUG):
        return False
    for event, handler in _STANDARD_LOGGING:
        assoc.unbind(event, handler)
    return True


def _swap_dul(assoc: Association, sock: Any) -> bool:
    """Give an association that has not started, and its socket, the waiting DUL loop; say if it did."""
    dul = assoc.dul
    if not SUPPORTED or dul.is_alive() or assoc.is_alive():
        return False
    if not (dul.to_provider_queue.empty() and dul.to_user_queue.empty()):
        return False
    if not isinstance(sock, AssociationSocket) or sock.tls_args:
        return False
    listen, wake = socket.socketpair()
    listen.setblocking(False)
    wake.setblocking(False)
    dul.to_provider_queue = _WakingQueue(wake)
    dul._target = lambda: _run_dul(dul, listen, wake)  # type: ignore[attr-defined]
    sock.recv = MethodType(_recv_exact, sock)  # type: ignore[method-assign]
    assoc.dimse.send_msg = MethodType(_send_msg, assoc.dimse)  # type: ignore[method-assign]
    assoc.dimse.receive_primitive = MethodType(_receive_primitive, assoc.dimse)  # type: ignore[method-assign]
    return True


def make_event_driven(assoc: Association) -> bool:
    """Swap the waiting loops into an acceptor association that has not started; return whether it did."""
    if not assoc.is_acceptor or not _swap_dul(assoc, assoc.dul.socket):
        return False
    assoc.dul.to_user_queue = _NudgingQueue(assoc.dimse.msg_queue)
    assoc._run_reactor = MethodType(_run_acceptor, assoc)  # type: ignore[method-assign]
    return True


def make_requestor_event_driven(assoc: Association, sock: AssociationSocket) -> bool:
    """Swap the waiting DUL loop into a requestor association and the socket it is about to get.

    Returns whether it did.

    While a C-FIND or C-MOVE waits for its responses, pynetdicom's DUL
    polled every millisecond, competing for the interpreter with the Storage
    SCP receiving the move. The association's own loop becomes
    :func:`_run_requestor`, which keeps pynetdicom's pausing but never takes
    a message from the queue the caller reads its responses from.
    """
    if not (assoc.is_requestor and assoc.dul.socket is None and _swap_dul(assoc, sock)):
        return False
    assoc._run_reactor = MethodType(_run_requestor, assoc)  # type: ignore[method-assign]
    return True


def _element(tag: int, value: bytes) -> bytes:
    """One implicit VR little endian command element."""
    return struct.pack("<HHI", tag >> 16, tag & 0xFFFF, len(value)) + value


def _uid(value: str) -> bytes:
    raw = value.encode("ascii")
    return raw + b"\0" if len(raw) % 2 else raw


def encode_store_response(message_id: int, status: int, sop_class_uid: str, sop_instance_uid: str) -> bytes:
    """The command set of a C-STORE-RSP (PS3.7 9.3.1.2), implicit VR little endian."""
    body = b"".join([
        _element(0x00000002, _uid(sop_class_uid)),
        _element(0x00000100, struct.pack("<H", 0x8001)),  # CommandField: C-STORE-RSP
        _element(0x00000120, struct.pack("<H", message_id)),  # MessageIDBeingRespondedTo
        _element(0x00000800, struct.pack("<H", 0x0101)),  # CommandDataSetType: no dataset
        _element(0x00000900, struct.pack("<H", status)),
        _element(0x00001000, _uid(sop_instance_uid)),
    ])  # fmt: skip
    return _element(0x00000000, struct.pack("<I", len(body))) + body


#: Command elements read straight into a primitive: tag -> (keyword, VR). Any
#: other element, a value of another shape, or a message type not listed in
#: :data:`_FAST_MESSAGES` goes through pynetdicom's ``message_to_primitive``.
_COMMAND_ELEMENTS = {
    0x00000000: ("CommandGroupLength", "UL"),
    0x00000002: ("AffectedSOPClassUID", "UI"),
    0x00000100: ("CommandField", "US"),
    0x00000110: ("MessageID", "US"),
    0x00000120: ("MessageIDBeingRespondedTo", "US"),
    0x00000700: ("Priority", "US"),
    0x00000800: ("CommandDataSetType", "US"),
    0x00000900: ("Status", "US"),
    0x00001000: ("AffectedSOPInstanceUID", "UI"),
    0x00001020: ("NumberOfRemainingSuboperations", "US"),
    0x00001021: ("NumberOfCompletedSuboperations", "US"),
    0x00001022: ("NumberOfFailedSuboperations", "US"),
    0x00001023: ("NumberOfWarningSuboperations", "US"),
    0x00001030: ("MoveOriginatorApplicationEntityTitle", "AE"),
    0x00001031: ("MoveOriginatorMessageID", "US"),
}
#: The messages Niffler receives in bulk: C-STORE requests, and the responses
#: to its C-FIND, C-MOVE and C-GET.
_FAST_MESSAGES = frozenset({"C_STORE_RQ", "C_FIND_RSP", "C_MOVE_RSP", "C_GET_RSP"})


def _command_values(command: bytes) -> dict[str, Any] | None:
    """Return the command set's elements as {keyword: value}, or None if one is not plain."""
    values: dict[str, Any] = {}
    pos, end = 0, len(command)
    while pos < end:
        if pos + 8 > end:
            return None
        group, element, length = struct.unpack_from("<HHI", command, pos)
        pos += 8
        known = _COMMAND_ELEMENTS.get((group << 16) | element)
        if known is None or pos + length > end:
            return None
        keyword, vr = known
        raw = command[pos : pos + length]
        pos += length
        if vr == "US" and length == 2:
            values[keyword] = struct.unpack("<H", raw)[0]
        elif vr == "UL" and length == 4:
            values[keyword] = struct.unpack("<I", raw)[0]
        elif vr == "UI" and length and (uid := decode_uid(raw)) is not None:
            values[keyword] = uid
        elif vr == "AE" and length and b"\\" not in raw:
            values[keyword] = raw.decode("iso8859").strip()
        else:
            return None
    return values


def command_to_primitive(message: DIMSEMessage) -> Any:
    """Return the DIMSE primitive of a decoded message, as ``message_to_primitive`` would.

    pynetdicom converts every command element through a pydicom Dataset
    (element objects, keyword lookups, value conversion): a third of the CPU
    of receiving a C-MOVE's instances, counting both the C-STORE requests and
    the C-MOVE's pending responses. The command set is a few fixed-size
    elements, read here directly from its encoded bytes into the same
    primitive attributes; anything else takes pynetdicom's path.
    """
    name = type(message).__name__
    values = _command_values(message.encoded_command_set.getvalue()) if name in _FAST_MESSAGES else None
    if values is None:
        return message.message_to_primitive()
    primitive: Any = _MSG_TO_PRIMITVE[name[: name.rfind("_R")]]()
    for keyword, value in values.items():
        if hasattr(primitive, keyword):
            setattr(primitive, keyword, value)
    setattr(primitive, _DATASET_KEYWORDS[name], message.data_set)
    primitive._context_id = message.context_id
    primitive._dataset_path = message._data_set_path
    primitive._dataset_file = message._data_set_file
    return primitive


def _receive_primitive(self: DIMSEServiceProvider, primitive: P_DATA) -> None:
    """pynetdicom's ``receive_primitive``, with :func:`command_to_primitive` for the conversion."""
    if self.message is None:
        self.message = DIMSEMessage()
    if not self.message.decode_msg(primitive, self.assoc):
        return
    evt.trigger(self.assoc, evt.EVT_DIMSE_RECV, {"message": self.message})
    context_id = cast(int, self.message.context_id)
    try:
        d_primitive = command_to_primitive(self.message)
    except Exception:
        log.exception("received an invalid DIMSE message")
        self.dul.event_queue.put("Evt19")
        return
    if isinstance(d_primitive, C_CANCEL) and len(self.cancel_req) < 10:
        self.cancel_req[cast(int, d_primitive.MessageIDBeingRespondedTo)] = d_primitive
    elif isinstance(d_primitive, N_EVENT_REPORT) and d_primitive.is_valid_request:
        # pynetdicom serves these on a thread of their own so the DUL is not blocked.
        threading.Thread(target=self.assoc._serve_request, args=(d_primitive, context_id)).start()
    else:
        self.msg_queue.put((context_id, d_primitive))
    # As pynetdicom does (its issue #41): drop the message's buffers, ready for the next one.
    self.message.encoded_command_set = BytesIO()
    self.message.data_set = BytesIO()
    self.message._data_set_file = None
    self.message._data_set_path = None
    self.message = None


def _only_standard_logging(assoc: Association) -> bool:
    """Whether nothing but pynetdicom's own debug logger listens for EVT_DIMSE_SENT, and it is off."""
    handlers = cast(list[tuple[Any, Any]], assoc.get_handlers(evt.EVT_DIMSE_SENT))
    if any(handler is not standard_dimse_sent_handler for handler, _ in handlers):
        return False
    return not logging.getLogger("pynetdicom").isEnabledFor(logging.DEBUG)


def _send_msg(self: DIMSEServiceProvider, primitive: Any, context_id: int) -> None:
    """Send a plain C-STORE response from bytes built directly; anything else the stock way.

    pynetdicom builds every response as a pydicom Dataset, validates it and
    encodes it twice (once for the group length): a fifth of the receive
    path's CPU. Responses with an error comment or offending element, and
    any message when something other than pynetdicom's (disabled) debug log
    listens for EVT_DIMSE_SENT, take that path.
    """
    plain = (
        type(primitive) is C_STORE
        and primitive.MessageIDBeingRespondedTo is not None
        and primitive.Status is not None
        and primitive.AffectedSOPClassUID
        and primitive.AffectedSOPInstanceUID
        and primitive.ErrorComment is None
        and primitive.OffendingElement is None
        and _only_standard_logging(self.assoc)
    )
    if not plain:
        DIMSEServiceProvider.send_msg(self, primitive, context_id)
        return
    command = encode_store_response(
        int(primitive.MessageIDBeingRespondedTo),
        int(primitive.Status),
        str(primitive.AffectedSOPClassUID),
        str(primitive.AffectedSOPInstanceUID),
    )
    pdata = P_DATA()
    pdata.presentation_data_value_list.append((context_id, b"\x03" + command))  # command, last fragment
    self.dul.send_pdu(pdata)


def _recv_exact(self: AssociationSocket, nr_bytes: int) -> bytearray:
    """Read *nr_bytes* (fewer only if the peer closed) into one buffer, blocking as pynetdicom does."""
    raw = self.socket
    assert raw is not None
    buffer = bytearray(nr_bytes)
    got = 0
    with memoryview(buffer) as view:
        while got < nr_bytes:
            count = raw.recv_into(view[got:], nr_bytes - got)
            if not count:
                break
            got += count
    if got < nr_bytes:
        del buffer[got:]
    return buffer


def _wait(dul: DULServiceProvider, listen: socket.socket) -> None:
    """Wait up to a tick for data from the peer or a primitive to send."""
    # A requestor's socket is watched once it connects (an unconnected one reads as ready).
    transport = dul.socket
    sock = transport.socket if transport is not None and transport._is_connected else None
    watched: list[socket.socket] = [listen]
    if sock is not None and sock.fileno() >= 0:
        watched.append(sock)
    try:
        ready, _, _ = select.select(watched, [], [], _TICK)
    except (OSError, ValueError):  # the socket closed under us: the next pass sees it
        return
    if listen in ready:
        try:
            while listen.recv(4096):
                pass
        except OSError:
            pass


def _run_dul(dul: DULServiceProvider, listen: socket.socket, wake: socket.socket) -> None:
    """The DUL reactor: one outgoing primitive or one incoming PDU, then one state-machine event."""
    dul._idle_timer.start()
    idle = False
    try:
        while True:
            if not dul.assoc._dul_ready.is_set():
                dul.assoc._dul_ready.set()
            if idle:
                _wait(dul, listen)
            if dul._kill_thread:
                break
            if dul.artim_timer.expired:
                dul.event_queue.put("Evt18")
            try:
                if not dul._process_recv_primitive() and dul._is_transport_event():
                    dul._idle_timer.restart()
            except Exception:
                log.exception("DUL reactor failed; aborting the association")
                abort = A_ABORT_RQ()
                abort.source = 0x02
                abort.reason_diagnostic = 0x00
                if dul.socket is not None:
                    dul.socket.send(abort.encode())
                dul.assoc.is_aborted = True
                dul.assoc.is_established = False
                dul.assoc._kill = True
                dul._kill_thread = True
                return
            try:
                event = dul.event_queue.get(block=False)
            except queue.Empty:
                idle = True
                continue
            dul.state_machine.do_action(event)
            idle = False
    finally:
        listen.close()
        wake.close()


def _run_acceptor(self: Association) -> None:
    """The acceptor reactor: serve each DIMSE request as it completes; handle release, abort, timeout."""
    self._is_paused = False
    while not self._kill:
        self._is_paused = True
        self._reactor_checkpoint.wait()
        self._is_paused = False
        try:
            context_id, msg = self.dimse.msg_queue.get(timeout=_TICK)
        except queue.Empty:
            msg = None
        if msg is not None:
            self._serve_request(msg, cast(int, context_id))

        if _ended(self):
            return


def _ended(self: Association) -> bool:
    """Handle a release, an abort, a dead DUL or the network timeout as pynetdicom does; say if it ended."""
    if self.is_established and self.acse.is_release_requested():
        self.acse.send_release(is_response=True)
        log.debug("association released")
        self.is_released = True
        self.is_established = False
        evt.trigger(self, evt.EVT_RELEASED, {})
        self.kill()
        return True

    if self.acse.is_aborted():
        self.dul.receive_pdu(wait=False)  # so EVT_ACSE_RECV fires for subscribers
        self.is_aborted = True
        self.is_established = False
        evt.trigger(self, evt.EVT_ABORTED, {})
        self.kill()
        return True

    if not self.dul.is_alive():
        self.kill()
        return True

    if self.dul.idle_timer_expired():
        log.error("network timeout: no data from the peer")
        if self.network_timeout_response == "A-RELEASE":
            self._is_paused = True
            self._reactor_checkpoint.wait()
            self.release()
            self._is_paused = False
        else:
            self.abort()
        self.kill()
        return True
    return False


def _run_requestor(self: Association) -> None:
    """The requestor's own loop: release, abort and timeouts, never a message.

    pynetdicom's loop also takes any message waiting on the queue. Between
    a caller's pausing it and sending a request it can still do so, and then
    drops the response the caller waits for as unexpected (pynetdicom issue
    #875): here a C-FIND now and then lost its match and its row was reported
    as matching nothing. Niffler's requestors take every response
    themselves and the PACS sends them no requests, so this loop leaves the
    queue alone.
    """
    self._is_paused = False
    while not self._kill:
        time.sleep(0.001)  # pynetdicom's cadence: a caller waits for the pause below
        self._is_paused = True
        self._reactor_checkpoint.wait()
        self._is_paused = False
        if _ended(self):
            return
