"""The accelerator's acceptor answers a C-STORE that arrives before its association thread has caught up.

pynetdicom's acceptor sends the A-ASSOCIATE-AC (``ACSE.send_accept``), then
triggers EVT_ACCEPTED, and only then sets ``is_established``. The accelerated
DUL thread sends the AC as soon as it is queued, and serves C-STORE requests
itself; a peer that answers the AC at once with a C-STORE can therefore reach
the DUL thread while the association thread, descheduled under CPU load, is
still between those steps. Serving the request then went wrong: the handler
ran before EVT_ACCEPTED (so the Storage SCP did not count it) and
``serve_store`` dropped the response because the association was not
established yet, leaving the sender waiting (Orthanc: ``0 instance(s) in
10.0 s`` and an HTTP 500 for its store job, a few times in a thousand).

Here the association thread is held right after ``send_accept`` until the
DUL thread has taken the whole C-STORE request (served it, or queued it for
the association thread), which makes that interleaving happen every time.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pydicom.data import get_testdata_file
from pynetdicom import AE
from pynetdicom.acse import ACSE
from pynetdicom.sop_class import CTImageStorage  # type: ignore[attr-defined]

from niffler.net import accel
from niffler.net.messages import StoreRequest
from niffler.net.scp import StorageSCP
from niffler.net.writer import StoredInstance

pytestmark = pytest.mark.skipif(not accel.ENABLED, reason="the race is in the accelerator's acceptor")

LOOPBACK = "127.0.0.1"


def test_a_c_store_arriving_before_the_acceptor_is_established_is_answered_and_counted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from niffler.net import _pynetdicom30 as fast

    request_handled = threading.Event()
    completed: list[Any] = []
    held: list[bool] = []
    original_feed = fast._Incoming.feed
    original_receive = fast._receive_pdvs
    original_send_accept = ACSE.send_accept

    def feed(self: Any, *args: Any) -> list[Any]:
        items = original_feed(self, *args)
        completed.extend(item for item in items if isinstance(item, StoreRequest))
        return items

    def receive_pdvs(self: Any, pdvs: Any) -> None:
        original_receive(self, pdvs)
        if completed:  # the DUL thread has served or queued the whole request
            request_handled.set()

    def send_accept(self: ACSE) -> None:
        original_send_accept(self)
        # The association thread stalls here, as under load; the DUL thread does not.
        held.append(request_handled.wait(5))

    monkeypatch.setattr(fast._Incoming, "feed", feed)
    monkeypatch.setattr(fast, "_receive_pdvs", receive_pdvs)
    monkeypatch.setattr(ACSE, "send_accept", send_accept)

    received: list[StoredInstance] = []
    server = StorageSCP(
        tmp_path / "in", ae_title="NIFFLER", host=LOOPBACK, on_stored=received.append, log_associations=True
    )
    dataset = pydicom.dcmread(str(get_testdata_file("CT_small.dcm")))
    with caplog.at_level(logging.INFO, logger="niffler.net.scp"), server:
        ae = AE(ae_title="MODALITY")
        ae.dimse_timeout = 3
        ae.add_requested_context(CTImageStorage)
        assoc = ae.associate(LOOPBACK, server.port, ae_title="NIFFLER")
        assert assoc.is_established
        started = time.monotonic()
        status = assoc.send_c_store(dataset)
        answered_in = time.monotonic() - started
        assoc.release()
        deadline = time.monotonic() + 10
        while "association from" not in caplog.text and time.monotonic() < deadline:
            time.sleep(0.05)

    assert held == [True], "the DUL thread did not take the C-STORE request while the acceptor was held"
    assert "Status" in status, "the C-STORE got no response"
    assert status.Status == 0x0000
    assert answered_in < 2.5
    assert [r.sop_uid for r in received] == [dataset.SOPInstanceUID]
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("association from")]
    assert len(lines) == 1, lines
    assert re.match(r"association from MODALITY released: 1 instance\(s\)", lines[0]), lines[0]
