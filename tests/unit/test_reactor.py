"""The hand-built C-STORE response, and the commands read from bytes, equal what pynetdicom makes."""

from __future__ import annotations

from io import BytesIO
from typing import Any

import pytest
from pynetdicom.dimse_messages import C_FIND_RSP, C_MOVE_RSP, C_STORE_RQ, C_STORE_RSP, DIMSEMessage
from pynetdicom.dimse_primitives import C_FIND, C_MOVE, C_STORE
from pynetdicom.dsutils import encode

from niffler.net._pynetdicom30 import (
    SUPPORTED,
    StoreRequest,
    _command_values,
    _Incoming,
    command_to_primitive,
    encode_store_response,
)


@pytest.mark.parametrize(
    ("message_id", "status", "instance_uid"),
    [(1, 0x0000, "1.2.3.4"), (65535, 0xA700, "1.2.840.10008.99.1234567"), (7, 0xC210, "2.25.1")],
)
def test_store_response_bytes_match_pynetdicom(message_id: int, status: int, instance_uid: str) -> None:
    primitive = C_STORE()
    primitive.MessageIDBeingRespondedTo = message_id
    primitive.AffectedSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    primitive.AffectedSOPInstanceUID = instance_uid
    primitive.Status = status
    message = C_STORE_RSP()
    message.primitive_to_message(primitive)
    expected = encode(message.command_set, True, True)
    ours = encode_store_response(message_id, status, "1.2.840.10008.5.1.4.1.1.2", instance_uid)
    assert ours == expected


def test_the_installed_pynetdicom_is_the_one_the_loops_follow() -> None:
    # If this fails, pynetdicom changed: compare reactor.py's loops with its new ones, then widen SUPPORTED.
    assert SUPPORTED


def _decoded(primitive: Any, message_class: Any) -> DIMSEMessage:
    """Encode *primitive* as pynetdicom sends it, and decode it as pynetdicom receives it."""
    message = message_class()
    message.primitive_to_message(primitive)
    received = DIMSEMessage()
    complete = [received.decode_msg(p) for p in message.encode_msg(1, 16384)]
    assert complete[-1]
    return received


def _public(primitive: Any) -> dict[str, Any]:
    values = {}
    for name in dir(primitive):
        if name[:1].isupper() and not callable(getattr(type(primitive), name, None)):
            value = getattr(primitive, name)
            values[name] = value.getvalue() if isinstance(value, BytesIO) else value
    return values


def _store_request(originator: str = "") -> C_STORE:
    request = C_STORE()
    request.MessageID = 7
    request.AffectedSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    request.AffectedSOPInstanceUID = "1.2.3.4.5678"
    request.Priority = 2
    if originator:
        request.MoveOriginatorApplicationEntityTitle = originator
        request.MoveOriginatorMessageID = 3
    request.DataSet = BytesIO(b"\x08\x00\x16\x00\x04\x00\x00\x001.2\x00")
    return request


def _move_response(status: int, *, comment: str = "", identifier: bool = False) -> C_MOVE:
    response = C_MOVE()
    response.MessageIDBeingRespondedTo = 5
    response.AffectedSOPClassUID = "1.2.840.10008.5.1.4.1.2.2.2"
    response.Status = status
    response.NumberOfRemainingSuboperations = 9 if status == 0xFF00 else None
    response.NumberOfCompletedSuboperations = 1
    response.NumberOfFailedSuboperations = 0
    response.NumberOfWarningSuboperations = 0
    if comment:
        response.ErrorComment = comment
    if identifier:
        response.Identifier = BytesIO(b"\x08\x00\x52\x00\x06\x00\x00\x00STUDY ")
    return response


def _find_response() -> C_FIND:
    response = C_FIND()
    response.MessageIDBeingRespondedTo = 2
    response.AffectedSOPClassUID = "1.2.840.10008.5.1.4.1.2.2.1"
    response.Status = 0xFF00
    response.Identifier = BytesIO(b"\x10\x00\x20\x00\x06\x00\x00\x00000123")
    return response


@pytest.mark.parametrize(
    ("primitive", "message_class"),
    [
        (_store_request(), C_STORE_RQ),
        (_store_request("ORTHANC"), C_STORE_RQ),
        (_move_response(0xFF00), C_MOVE_RSP),
        (_move_response(0x0000), C_MOVE_RSP),
        (_move_response(0xB000, identifier=True), C_MOVE_RSP),
        (_move_response(0xC000, comment="no such study"), C_MOVE_RSP),  # pynetdicom's path
        (_find_response(), C_FIND_RSP),
    ],
    ids=["store", "store-from-move", "move-pending", "move-success", "move-warning", "move-comment", "find"],
)
def test_command_read_from_bytes_equals_pynetdicom_conversion(primitive: Any, message_class: Any) -> None:
    decoded = _decoded(primitive, message_class)
    fast = _command_values(decoded.encoded_command_set.getvalue()) is not None
    assert fast != bool(getattr(primitive, "ErrorComment", None))  # an error comment takes pynetdicom's path
    ours = command_to_primitive(decoded)
    theirs = _decoded(primitive, message_class).message_to_primitive()
    assert type(ours) is type(theirs)
    assert _public(ours) == _public(theirs)
    assert ours._context_id == theirs._context_id == 1
    assert _public(ours)["MessageID" if message_class is C_STORE_RQ else "Status"] is not None


def _pdvs(primitive: Any, message_class: Any, max_pdu: int = 16384) -> list[tuple[int, bytes]]:
    """The PDVs pynetdicom sends for *primitive*, fragments included."""
    message = message_class()
    message.primitive_to_message(primitive)
    return [pdv for p in message.encode_msg(1, max_pdu) for pdv in p.presentation_data_value_list]


def _read(incoming: _Incoming, pdvs: list[tuple[int, bytes]], fast: bool = True) -> list[Any]:
    return [item for context_id, data in pdvs for item in incoming.feed(context_id, data, None, fast)]


_MESSAGES = [
    (_store_request(), C_STORE_RQ),
    (_store_request("ORTHANC"), C_STORE_RQ),
    (_move_response(0xFF00), C_MOVE_RSP),
    (_move_response(0x0000), C_MOVE_RSP),
    (_move_response(0xB000, identifier=True), C_MOVE_RSP),
    (_move_response(0xC000, comment="no such study"), C_MOVE_RSP),
    (_find_response(), C_FIND_RSP),
]


@pytest.mark.parametrize("max_pdu", [16384, 20], ids=["whole", "fragmented"])
@pytest.mark.parametrize(("primitive", "message_class"), _MESSAGES)
def test_messages_assembled_from_pdvs_equal_pynetdicom_conversion(
    primitive: Any, message_class: Any, max_pdu: int
) -> None:
    items = _read(_Incoming(), _pdvs(primitive, message_class, max_pdu))
    assert len(items) == 1
    ours = items[0]
    # An error comment is not read from bytes: the message goes to pynetdicom whole.
    assert isinstance(ours, DIMSEMessage) == bool(getattr(primitive, "ErrorComment", None))
    if isinstance(ours, DIMSEMessage):
        ours = command_to_primitive(ours)
    theirs = _decoded(primitive, message_class).message_to_primitive()
    assert type(ours) is type(theirs)
    assert _public(ours) == _public(theirs)
    assert ours._context_id == 1


def test_a_store_request_with_a_handler_is_read_whole_and_unconverted() -> None:
    incoming = _Incoming()
    incoming.store = lambda assoc, request: 0
    request = _store_request("ORTHANC")
    request.DataSet = BytesIO(bytes(range(256)) * 3)
    first, second = (_read(incoming, _pdvs(request, C_STORE_RQ, 100)) for _ in range(2))
    assert (
        first
        == second
        == [StoreRequest(1, 7, "1.2.840.10008.5.1.4.1.1.2", "1.2.3.4.5678", bytes(range(256)) * 3)]
    )
    # A response on the same association is still a primitive.
    (response,) = _read(incoming, _pdvs(_move_response(0x0000), C_MOVE_RSP))
    assert isinstance(response, C_MOVE) and response.NumberOfCompletedSuboperations == 1


def test_when_something_listens_for_received_messages_pynetdicom_decodes_them() -> None:
    (item,) = _read(_Incoming(), _pdvs(_move_response(0xFF00), C_MOVE_RSP), fast=False)
    assert isinstance(item, DIMSEMessage) and item.command_set.Status == 0xFF00
