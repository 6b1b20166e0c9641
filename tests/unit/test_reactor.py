"""The Storage SCP's hand-built C-STORE response equals the one pynetdicom encodes."""

from __future__ import annotations

import pytest
from pynetdicom.dimse_messages import C_STORE_RSP
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.dsutils import encode

from niffler.common.reactor import SUPPORTED, encode_store_response


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
