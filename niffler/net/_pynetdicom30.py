"""The pynetdicom 3.0 accelerator: event-driven reactors for the associations Niffler accepts and requests.

This is the only module of Niffler that touches pynetdicom internals. Only
:mod:`niffler.net.accel` imports it, inside a guard: on a pynetdicom whose
internals differ, that import fails or :data:`SUPPORTED` is false, and the
public API runs instead.

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
- PDUs are read with ``recv_into`` straight into one buffer of their size;
- in Sta6 a P-DATA-TF skips the state machine both ways (:func:`_read_pdu`,
  :func:`_send_direct`): DT-1 and DT-2 only hand it on, and building,
  queueing and converting its PDU objects cost more per stored instance
  than storing it;
- a peer that stops mid-PDU holds the reader only until the association is
  aborted (pynetdicom's waited for ever on a requested association).

Associations Niffler requests (C-FIND, C-MOVE, C-GET, C-STORE) get the
waiting DUL loop too (:func:`make_requestor_event_driven`, from
``NifflerAE``), and an association loop that leaves their
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
import os
import queue
import select
import socket
import struct
import threading
import time
from collections.abc import Iterable, Iterator
from io import BytesIO
from types import MethodType
from typing import Any, cast

import pynetdicom
from pydicom.dataset import Dataset
from pynetdicom import _config as _pynetdicom_config
from pynetdicom import dsutils, evt
from pynetdicom._handlers import (
    standard_dimse_recv_handler,
    standard_dimse_sent_handler,
    standard_pdu_recv_handler,
    standard_pdu_sent_handler,
)
from pynetdicom.association import Association
from pynetdicom.dimse import DIMSEServiceProvider
from pynetdicom.dimse_messages import _DATASET_KEYWORDS, _MSG_TO_PRIMITVE, DIMSEMessage
from pynetdicom.dimse_primitives import C_CANCEL, C_GET, C_MOVE, C_STORE, N_EVENT_REPORT
from pynetdicom.dul import DULServiceProvider
from pynetdicom.pdu import A_ABORT_RQ
from pynetdicom.pdu_primitives import A_ABORT, A_P_ABORT, P_DATA
from pynetdicom.presentation import PresentationContext
from pynetdicom.transport import AssociationSocket, ThreadedAssociationServer

from niffler.net.messages import PENDING, RetrieveResponse, StoreHandler, StoreRequest
from niffler.net.scan import decode_uid

__all__ = [
    "C_STORE",
    "SUPPORTED",
    "Association",
    "NifflerAE",
    "PresentationContext",
    "SharedContext",
    "accepted_transfer_syntax",
    "command_to_primitive",
    "encode_store_response",
    "make_event_driven",
    "make_requestor_event_driven",
    "on_accepted",
    "quiet_standard_logging",
    "send_retrieve",
    "serve_store",
    "set_store_handler",
    "start_server",
    "withhold_identifiers",
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
        #: The DUL thread's ident once it runs: its own puts need no wake-up.
        self.owner: int | None = None

    def put(self, item: Any, block: bool = True, timeout: float | None = None) -> None:
        super().put(item, block, timeout)
        if threading.get_ident() == self.owner:
            return  # the loop looks at the queue before it next waits
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
    assoc.dimse._niffler_incoming = _Incoming()  # type: ignore[attr-defined]
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
#: :data:`_FAST_COMMANDS` goes through pynetdicom's ``message_to_primitive``.
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


#: CommandField -> message name, for the messages read without pynetdicom (PS3.7 E.1).
_FAST_COMMANDS = {0x0001: "C_STORE_RQ", 0x8020: "C_FIND_RSP", 0x8021: "C_MOVE_RSP", 0x8010: "C_GET_RSP"}
_NO_DATASET = 0x0101


def _primitive(name: str, values: dict[str, Any], context_id: int, dataset: bytes | memoryview | None) -> Any:
    """Return the pynetdicom primitive of a message read by :func:`_command_values`."""
    primitive: Any = _MSG_TO_PRIMITVE[name[: name.rfind("_R")]]()
    for keyword, value in values.items():
        if hasattr(primitive, keyword):
            setattr(primitive, keyword, value)
    # As pynetdicom: a message without a dataset still has an empty one.
    setattr(primitive, _DATASET_KEYWORDS[name], BytesIO(dataset if dataset is not None else b""))
    primitive._context_id = context_id
    return primitive


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
    values = (
        _command_values(message.encoded_command_set.getvalue()) if name in _FAST_COMMANDS.values() else None
    )
    if values is None:
        return message.message_to_primitive()
    primitive = _primitive(name, values, cast(int, message.context_id), None)
    setattr(primitive, _DATASET_KEYWORDS[name], message.data_set)
    primitive._dataset_path = message._data_set_path
    primitive._dataset_file = message._data_set_file
    return primitive


class _Incoming:
    """Assembles DIMSE messages from PDVs, reading the common ones without pynetdicom.

    pynetdicom decodes every command set into a pydicom Dataset before
    converting it (``DIMSEMessage.decode_msg``), and builds a Dataset for
    each new message: with the conversion, most of the CPU of receiving a
    small instance. Here a command set is read with :func:`_command_values`;
    a message it cannot read (other types, error comments, unusual values)
    is handed, from its first byte, to pynetdicom's ``DIMSEMessage``.
    """

    __slots__ = ("command", "context_id", "dataset", "name", "slow", "store", "values")

    def __init__(self) -> None:
        self.store: StoreHandler | None = None
        self.slow: DIMSEMessage | None = None
        self._reset()

    def _reset(self) -> None:
        self.command = bytearray()
        self.values: dict[str, Any] | None = None
        self.name = ""
        self.context_id = 0
        self.dataset: list[bytes | memoryview] = []

    def feed(
        self, context_id: int, data: bytes | memoryview, assoc: Association | None, fast: bool
    ) -> list[Any]:
        """Take one PDV; return the messages it completed, each a primitive, StoreRequest or DIMSEMessage."""
        if self.slow is not None:
            return self._feed_slow(context_id, data, assoc)
        header = data[0]
        if not header & 1:  # a dataset fragment
            if self.values is None:  # before any command: pynetdicom's business
                self.slow = DIMSEMessage()
                return self._feed_slow(context_id, data, assoc)
            self.dataset.append(memoryview(data)[1:])
            return [self._complete()] if header & 2 else []
        self.command += memoryview(data)[1:]
        if not header & 2:
            return []
        command = bytes(self.command)
        values = _command_values(command) if fast else None
        name = _FAST_COMMANDS.get(values.get("CommandField", -1), "") if values else ""
        if not name or values is None or self.values is not None or self.dataset:
            self._reset()
            self.slow = DIMSEMessage()
            return self._feed_slow(context_id, b"\x03" + command, assoc)
        self.values, self.name, self.context_id = values, name, context_id
        return [self._complete()] if values.get("CommandDataSetType") == _NO_DATASET else []

    def _feed_slow(self, context_id: int, data: bytes | memoryview, assoc: Association | None) -> list[Any]:
        assert self.slow is not None
        wrapper = P_DATA()
        wrapper.presentation_data_value_list.append((context_id, bytes(data)))
        if not self.slow.decode_msg(wrapper, assoc):
            return []
        message, self.slow = self.slow, None
        return [message]

    def _complete(self) -> Any:
        values, name, context_id, parts = self.values, self.name, self.context_id, self.dataset
        assert values is not None
        self._reset()
        dataset = None
        if values.get("CommandDataSetType") != _NO_DATASET:
            dataset = parts[0] if len(parts) == 1 else b"".join(parts)
        if name == "C_STORE_RQ" and self.store is not None and dataset is not None:
            message_id = values.get("MessageID")
            sop_class = values.get("AffectedSOPClassUID")
            sop_instance = values.get("AffectedSOPInstanceUID")
            if message_id is not None and sop_class and sop_instance:
                return StoreRequest(context_id, message_id, sop_class, sop_instance, dataset)
        return _primitive(name, values, context_id, dataset)


def set_store_handler(assoc: Association, handler: StoreHandler | None) -> bool:
    """Serve *assoc*'s C-STORE requests with *handler* instead of EVT_C_STORE; say if it will.

    Only an association with the waiting loops (:func:`make_event_driven`,
    :func:`make_requestor_event_driven`) can; requests the fast reader does
    not take still reach the EVT_C_STORE handlers.
    """
    incoming = getattr(assoc.dimse, "_niffler_incoming", None)
    if not isinstance(incoming, _Incoming):
        return False
    incoming.store = handler
    return True


def _receive_primitive(self: DIMSEServiceProvider, primitive: P_DATA) -> None:
    """pynetdicom's ``receive_primitive``, with :class:`_Incoming` assembling the messages."""
    _receive_pdvs(self, primitive.presentation_data_value_list)


def _receive_pdvs(self: DIMSEServiceProvider, pdvs: Iterable[tuple[int, bytes | memoryview]]) -> None:
    """Assemble and deliver the messages completed by *pdvs*, each (context ID, control header + data)."""
    incoming = cast(_Incoming, self._niffler_incoming)  # type: ignore[attr-defined]
    # A subscriber to EVT_DIMSE_RECV gets pynetdicom's messages, as it expects.
    fast = not _pynetdicom_config.STORE_RECV_CHUNKED_DATASET and not self.assoc.get_handlers(
        evt.EVT_DIMSE_RECV
    )
    assoc = self.assoc
    for context_id, data in pdvs:
        for item in incoming.feed(context_id, data, assoc, fast):
            if isinstance(item, DIMSEMessage):
                _deliver_message(self, item)
            elif isinstance(item, StoreRequest) and _serves_here(assoc, item):
                # The acceptor's C-STORE, served on this (the DUL) thread: the
                # sender waits for the response anyway, and handing each request
                # to the association's thread cost two thread switches.
                serve_store(assoc, item)
            else:
                self.msg_queue.put(
                    (item.context_id if isinstance(item, StoreRequest) else item._context_id, item)
                )


def _deliver_message(self: DIMSEServiceProvider, message: DIMSEMessage) -> None:
    """The rest of pynetdicom's ``receive_primitive`` for a message it decoded."""
    evt.trigger(self.assoc, evt.EVT_DIMSE_RECV, {"message": message})
    context_id = cast(int, message.context_id)
    try:
        d_primitive = command_to_primitive(message)
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


def _serves_here(assoc: Association, request: StoreRequest) -> bool:
    """Whether the DUL thread may serve *request* itself: not one it would have to abort for.

    Nor one that arrives before the association is established: pynetdicom's
    acceptor sends the A-ASSOCIATE-AC, then triggers EVT_ACCEPTED, then sets
    ``is_established``, and a peer may answer the AC with a C-STORE while the
    association thread is still between those steps. Served here, its
    response was dropped (:func:`serve_store` answers only an established
    association) and the sender waited for it until it timed out. Queued,
    it is served by :func:`_run_acceptor`, which starts once they are done.
    """
    return (
        assoc.is_acceptor
        and assoc.is_established
        and not assoc._sent_release
        and request.context_id in assoc._accepted_cx
    )


def serve_store(assoc: Association, request: StoreRequest) -> None:
    """Serve a StoreRequest with the association's store handler and answer it, as pynetdicom's SCP would."""
    handler = cast(_Incoming, assoc.dimse._niffler_incoming).store  # type: ignore[attr-defined]
    if assoc._sent_release:
        log.warning("C-STORE request received during association release, ignoring")
        return
    if handler is None or request.context_id not in assoc._accepted_cx:
        log.info("received a C-STORE request on an invalid or rejected presentation context")
        assoc.abort()
        return
    try:
        status = handler(assoc, request)
    except Exception:
        log.exception("the C-STORE handler failed")
        status = 0xC211  # as pynetdicom answers a handler that raised
    if not assoc.is_established:
        return
    if _only_standard_logging(assoc):
        _send_store_response(
            assoc.dul,
            request.context_id,
            request.message_id,
            status,
            request.sop_class_uid,
            request.sop_instance_uid,
        )
        return
    response = C_STORE()
    response.MessageIDBeingRespondedTo = request.message_id
    response.AffectedSOPClassUID = request.sop_class_uid
    response.AffectedSOPInstanceUID = request.sop_instance_uid
    response.Status = status
    DIMSEServiceProvider.send_msg(assoc.dimse, response, request.context_id)


def send_retrieve(
    assoc: Association,
    identifier: Dataset,
    query_model: str,
    move_destination: str | None = None,
    message_id: int = 1,
) -> Iterator[RetrieveResponse]:
    """Send a C-MOVE (to *move_destination*) or, without one, a C-GET; yield each response.

    pynetdicom's ``send_c_move`` / ``send_c_get`` build a status Dataset for
    every response, and a PACS sends one per instance: a tenth of the CPU of
    a C-MOVE. This follows them (pausing the association's loop, serving a
    C-GET's C-STORE requests, the same handling of a missing or unexpected
    message) but yields the counts from the primitive. The identifier of a
    final response (the failed SOP Instance UID list) is not read.
    """
    if not assoc.is_established:
        raise RuntimeError("the association must be established before a C-MOVE or C-GET")
    context = assoc._get_valid_context(query_model, "", "scu")
    request: Any = C_MOVE() if move_destination is not None else C_GET()
    request.MessageID = message_id
    request.AffectedSOPClassUID = query_model
    request.Priority = 2
    if move_destination is not None:
        request.MoveDestination = move_destination
    syntax = context.transfer_syntax[0]
    encoded = dsutils.encode(identifier, syntax.is_implicit_VR, syntax.is_little_endian, syntax.is_deflated)
    if encoded is None:
        raise ValueError("failed to encode the C-MOVE / C-GET identifier")
    request.Identifier = BytesIO(encoded)
    assoc._reactor_checkpoint.clear()
    while not assoc._is_paused:
        time.sleep(0.0001)
    assoc.dimse.send_msg(request, cast(int, context.context_id))
    return _retrieve_responses(assoc)


def _retrieve_responses(assoc: Association) -> Iterator[RetrieveResponse]:
    while True:
        _, response = assoc.dimse.get_msg(block=True)
        if isinstance(response, StoreRequest):
            serve_store(assoc, response)
            continue
        if isinstance(response, C_STORE):
            assoc._c_store_scp(response)
            continue
        if response is None:
            assoc._handle_no_response()
            assoc._reactor_checkpoint.set()
            yield RetrieveResponse(None)
            return
        if not isinstance(response, (C_MOVE, C_GET)) or not response.is_valid_response:
            log.error("received an unexpected or invalid message in reply to a C-MOVE / C-GET")
            assoc.abort()
            assoc._reactor_checkpoint.set()
            yield RetrieveResponse(None)
            return
        status = cast(int, response.Status)
        counts = RetrieveResponse(
            status,
            response.NumberOfRemainingSuboperations,
            response.NumberOfCompletedSuboperations,
            response.NumberOfFailedSuboperations,
            response.NumberOfWarningSuboperations,
        )
        if status in PENDING:
            yield counts
            continue
        assoc._reactor_checkpoint.set()
        yield counts
        return


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
    _send_store_response(
        self.dul,
        context_id,
        int(primitive.MessageIDBeingRespondedTo),
        int(primitive.Status),
        str(primitive.AffectedSOPClassUID),
        str(primitive.AffectedSOPInstanceUID),
    )


def _send_store_response(
    dul: DULServiceProvider, context_id: int, message_id: int, status: int, sop_class: str, sop_instance: str
) -> None:
    """Send a C-STORE-RSP built by :func:`encode_store_response` as one P-DATA."""
    pdv = b"\x03" + encode_store_response(message_id, status, sop_class, sop_instance)  # command, last
    if _send_direct(dul, context_id, pdv):
        return
    pdata = P_DATA()
    pdata.presentation_data_value_list.append((context_id, pdv))
    dul.send_pdu(pdata)


#: Events whose subscribers expect the state machine's objects: while any has one, every PDU takes it.
_STATE_MACHINE_EVENTS = (
    evt.EVT_DATA_RECV,
    evt.EVT_DATA_SENT,
    evt.EVT_PDU_RECV,
    evt.EVT_PDU_SENT,
    evt.EVT_FSM_TRANSITION,
)
_ESTABLISHED = "Sta6"
_PDU_HEAD = struct.Struct(">BxL")  # PDU type, reserved, PDU length (PS3.8 9.3.1)
_PDV_HEAD = struct.Struct(">LB")  # PDV item length, presentation context ID (PS3.8 9.3.5.1)
_P_DATA_TF = 0x04
_PDU_TYPES = frozenset(range(0x01, 0x08))  # A-ASSOCIATE-RQ to A-ABORT (PS3.8 9.3)


def _bypasses_state_machine(dul: DULServiceProvider) -> bool:
    """Whether a P-DATA-TF may skip the state machine: established, nothing pending, nobody listening.

    In Sta6 a P-DATA-TF in either direction is DT-1 / DT-2, which only hand
    it on and stay in Sta6, so doing their work directly changes nothing,
    provided no other event is queued before it and no subscriber waits for
    the PDU objects and transitions it would have made.
    """
    if dul.state_machine.current_state != _ESTABLISHED or not dul.event_queue.empty():
        return False
    assoc = dul.assoc
    return not any(assoc.get_handlers(event) for event in _STATE_MACHINE_EVENTS)


def _send_direct(dul: DULServiceProvider, context_id: int, pdv: bytes) -> bool:
    """Send one PDV as a P-DATA-TF from the DUL thread itself, as DT-1 would; say if it did.

    pynetdicom queues each P-DATA for the DUL, which builds a P_DATA_TF
    object through the state machine and encodes it: per stored instance,
    more CPU than the response is worth. Only the DUL thread may write this
    way, with nothing queued ahead, so PDUs still leave in order.
    """
    queued = dul.to_provider_queue
    transport = dul.socket
    if (
        getattr(queued, "owner", None) != threading.get_ident()
        or not queued.empty()
        or transport is None
        or not _bypasses_state_machine(dul)
    ):
        return False
    item = _PDV_HEAD.pack(len(pdv) + 1, context_id) + pdv
    transport.send(_PDU_HEAD.pack(_P_DATA_TF, len(item)) + item)
    return True


def _read_pdu(dul: DULServiceProvider) -> bool | None:
    """Read the next PDU if one has begun to arrive; say if one was read, or None to leave it to pynetdicom.

    In Sta6, with nothing queued and nobody subscribed to the state
    machine's events, this does what pynetdicom's ``_is_transport_event``
    and ``_read_pdu_data`` do, and for a P-DATA-TF what DT-2 does too,
    without decoding it into a P_DATA_TF, queueing it as Evt10 and
    converting it to a P_DATA primitive: its PDV items go to the DIMSE
    assembler as views of the one buffer they were read into. Other PDUs,
    and a P-DATA-TF whose items do not add up, are decoded by pynetdicom
    and queued for the state machine, as ``_read_pdu_data`` would.

    The first read never waits (pynetdicom's looked with a ``select``
    first); the rest of a PDU that has begun is waited for as in
    :func:`_recv_exact`.
    """
    transport = dul.socket
    if transport is None or not transport._is_connected or not _bypasses_state_machine(dul):
        return None
    raw = transport.socket
    if raw is None:
        return None
    head = bytearray(_PDU_HEAD.size)
    try:
        with memoryview(head) as view:
            got = _read_now(raw, view)
        if got is None:
            return False  # nothing has arrived
        if 0 < got < len(head):
            head[got:] = _recv_exact(transport, len(head) - got)
        if len(head) < _PDU_HEAD.size or not got:  # closed by the peer, as pynetdicom reads it
            dul.event_queue.put("Evt17")
            return True
        pdu_type, length = _PDU_HEAD.unpack(head)
        if pdu_type not in _PDU_TYPES:
            log.error("unknown PDU type received 0x%02X", pdu_type)
            dul.event_queue.put("Evt19")
            return True
        body = _recv_exact(transport, length)
    except _Abandoned:
        return True  # the abort that waits is the state machine's next event
    except OSError:
        log.error("the connection closed before the entire PDU was received")
        dul.event_queue.put("Evt17")
        return True
    if len(body) != length:
        log.error("the received PDU is shorter than expected (%d of %d bytes)", len(body) + 6, length + 6)
        dul.event_queue.put("Evt17")
        return True
    pdvs = _pdv_items(body) if pdu_type == _P_DATA_TF else None
    if pdvs is None:
        _decode_pdu(dul, head + body)
        return True
    _receive_pdvs(dul.assoc.dimse, pdvs)
    return True


def _pdv_items(body: bytearray) -> list[tuple[int, memoryview]] | None:
    """Return a P-DATA-TF body's PDV items as (context ID, view), or None unless they fill it exactly."""
    items: list[tuple[int, memoryview]] = []
    view = memoryview(body)
    pos, end = 0, len(body)
    while pos < end:
        if pos + _PDV_HEAD.size > end:
            return None
        item_length, context_id = _PDV_HEAD.unpack_from(body, pos)
        stop = pos + 4 + item_length
        if item_length < 2 or stop > end:  # an item holds a context ID, a control header and data
            return None
        items.append((context_id, view[pos + _PDV_HEAD.size : stop]))
        pos = stop
    return items or None


def _decode_pdu(dul: DULServiceProvider, pdu_bytes: bytearray) -> None:
    """The end of pynetdicom's ``_read_pdu_data``: decode a whole PDU, queue its event and the PDU."""
    try:
        pdu, event = dul._decode_pdu(pdu_bytes)
    except Exception:
        log.exception("unable to decode the received PDU data")
        dul.event_queue.put("Evt19")
        return
    dul.event_queue.put(event)
    dul._recv_pdu.put(pdu)


#: The most a read allocates before the bytes arrive: a PDU length is the peer's word, and a
#: hostile 4 GiB one must cost memory only as its bytes come in, as with pynetdicom's reads.
_FIRST_ALLOCATION = 4 * 1024 * 1024


class _Abandoned(OSError):
    """A PDU was being read when its association was aborted or killed; the rest will not be read."""


def _read_now(raw: socket.socket, view: memoryview) -> int | None:
    """Read what has arrived into *view* without waiting; None when nothing has.

    A socket with a timeout (pynetdicom gives accepted ones the network
    timeout) is non-blocking at the OS level (see the socket module's notes
    on timeouts), and its ``recv_into`` would first wait up to the timeout,
    so it is read with a plain ``readv``; a blocking one (requested
    associations) with MSG_DONTWAIT.
    """
    try:
        if raw.gettimeout() is None:
            return raw.recv_into(view, len(view), socket.MSG_DONTWAIT)
        return os.readv(raw.fileno(), [view])
    except (BlockingIOError, InterruptedError):
        return None


def _abandoned(dul: DULServiceProvider) -> bool:
    """Whether the association is being aborted or killed, so a PDU being read will never be wanted."""
    if dul._kill_thread:
        return True
    return any(isinstance(item, (A_ABORT, A_P_ABORT)) for item in list(dul.to_provider_queue.queue))


def _recv_exact(self: AssociationSocket, nr_bytes: int) -> bytearray:
    """Read *nr_bytes* (fewer only if the peer closed) into one buffer, as pynetdicom's ``recv`` does.

    Unlike it, a peer that stops mid-PDU does not hold the thread for ever
    (requested associations have no socket timeout) nor past an abort: the
    wait looks every tick for an abort or kill of the association (then
    stops reading the connection and raises :class:`_Abandoned`) and for the
    socket's own timeout (then raises TimeoutError, as the socket would).
    """
    raw = self.socket
    assert raw is not None
    limit = raw.gettimeout()
    buffer = bytearray(min(nr_bytes, _FIRST_ALLOCATION))
    got = 0
    stalled: float | None = None
    while got < nr_bytes:
        if got == len(buffer):  # the peer kept its word so far: double the buffer
            buffer.extend(bytes(min(nr_bytes - got, len(buffer))))
        with memoryview(buffer) as view:
            count = _read_now(raw, view[got:])
        if count is None:
            now = time.monotonic()
            stalled = now if stalled is None else stalled
            if _abandoned(self.assoc.dul):
                with contextlib.suppress(OSError):
                    raw.shutdown(socket.SHUT_RD)  # the stream is cut mid-PDU: later reads see its end
                raise _Abandoned("the association was aborted while a PDU was being read")
            if limit is not None and now - stalled >= limit:
                raise TimeoutError("timed out")
            with contextlib.suppress(OSError, ValueError):
                select.select([raw], [], [], _TICK)
            continue
        if not count:
            break
        got += count
        stalled = None
    if got < len(buffer):
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
    cast(_WakingQueue, dul.to_provider_queue).owner = threading.get_ident()
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
            read: bool | None = False
            try:
                if not dul._process_recv_primitive():
                    read = _read_pdu(dul)
                    if read is None:
                        read = dul._is_transport_event()
                    if read:
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
                idle = not read  # after a PDU, look for the next before waiting
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
        if isinstance(msg, StoreRequest):
            serve_store(self, msg)
        elif msg is not None:
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


# --- what niffler.net.accel calls: the AE, contexts and server hooks --------------------------------


class NifflerAE(pynetdicom.AE):
    """pynetdicom's AE, whose requested associations wait instead of polling.

    The Storage SCP's accepted associations get the same through :func:`on_accepted`.
    """

    def _create_socket(self, assoc: Association, address: Any, tls_args: Any) -> AssociationSocket:
        sock = super()._create_socket(assoc, address, tls_args)
        quiet_standard_logging(assoc)
        make_requestor_event_driven(assoc, sock)
        return sock


class SharedContext(PresentationContext):
    """A supported presentation context that associations share instead of deep-copying.

    pynetdicom deep-copies the server's supported contexts for every incoming
    association: 46 ms for the 171 storage classes, most of an association's
    set-up and, for C-MOVE (one association per move), of a small study's
    retrieval. Negotiation only reads them (``negotiate_as_acceptor``), so one
    shared, never-modified set is safe.
    """

    def __deepcopy__(self, memo: dict[int, Any]) -> SharedContext:
        return self


def on_accepted(assoc: Association, store: StoreHandler | None) -> bool:
    """For an accepted association about to start: quiet logging, waiting loops, the store handler.

    Returns whether *store* will serve its C-STORE requests.
    """
    quiet_standard_logging(assoc)
    return make_event_driven(assoc) and store is not None and set_store_handler(assoc, store)


def start_server(
    ae: pynetdicom.AE, address: tuple[str, int], contexts: list[Any], evt_handlers: list[Any], poll: float
) -> ThreadedAssociationServer:
    """As ``AE.start_server(block=False)``, but looking for a stop every *poll* s instead of 0.5 s."""
    server = ae.make_server(
        address, contexts=contexts, evt_handlers=evt_handlers, server_class=ThreadedAssociationServer
    )
    ae._servers.append(server)
    threading.Thread(
        target=server.serve_forever, args=(poll,), name=f"StorageSCP-{ae.ae_title}", daemon=True
    ).start()
    return server


def accepted_transfer_syntax(assoc: Association, context_id: int) -> str:
    """The transfer syntax accepted for presentation context *context_id* of *assoc*."""
    return str(assoc._accepted_cx[context_id].transfer_syntax[0])


def withhold_identifiers() -> None:
    """Stop pynetdicom logging C-FIND/C-MOVE identifiers (PatientID, names, dates) with its traffic."""
    _pynetdicom_config.LOG_REQUEST_IDENTIFIERS = False
    _pynetdicom_config.LOG_RESPONSE_IDENTIFIERS = False
