"""The hand-built C-STORE response, and the commands read from bytes, equal what pynetdicom makes."""

from __future__ import annotations

from io import BytesIO
from typing import Any

import pytest
from pynetdicom.dimse_messages import C_FIND_RSP, C_MOVE_RSP, C_STORE_RQ, C_STORE_RSP, DIMSEMessage
from pynetdicom.dimse_primitives import C_FIND, C_MOVE, C_STORE
from pynetdicom.dsutils import encode

from niffler.common.reactor import SUPPORTED, _command_values, command_to_primitive, encode_store_response


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
