"""The network layer's failure paths, accelerator on and off: a peer that goes silent, one that aborts.

CI runs this file twice (scripts/test.sh: NIFFLER_NET_ACCEL=0 the second time),
so the accelerator's loops and pynetdicom's stock ones both meet each peer.
"""

from __future__ import annotations

import os
import signal
import struct
import threading
import time
from pathlib import Path

import pydicom
import pytest
from pynetdicom import AE, evt
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    CTImageStorage,
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelMove,
)

from niffler.net import accel
from niffler.net.address import AEAddress
from niffler.net.scp import StorageSCP
from niffler.net.scu import QueryRetrieveSession, RetrievalFailed
from niffler.testing.corpus import Instance
from niffler.testing.peers import OrthancPACS, free_port, storescu

LOOPBACK = "127.0.0.1"


def _aborting_pacs(port: int) -> AE:
    """A real pynetdicom Q/R SCP that aborts the association when asked anything."""
    ae = AE(ae_title="ABORTER")
    ae.add_supported_context(StudyRootQueryRetrieveInformationModelFind)
    ae.add_supported_context(StudyRootQueryRetrieveInformationModelMove)

    def on_find(event: evt.Event) -> object:
        event.assoc.abort()
        yield 0xFF00, None  # never reached the peer

    ae.start_server((LOOPBACK, port), block=False, evt_handlers=[(evt.EVT_C_FIND, on_find)])
    return ae


def test_a_pacs_that_aborts_fails_the_request_with_a_reason_and_the_next_one_reconnects() -> None:
    port = free_port()
    ae = _aborting_pacs(port)
    try:
        session = QueryRetrieveSession(
            peer=AEAddress("ABORTER", LOOPBACK, port), calling_aet="NIFFLER", mode="move", timeout=10
        )
        for _ in range(2):  # the second call opens a fresh association
            started = time.monotonic()
            with pytest.raises(RetrievalFailed, match="aborted the association"):
                session.find({"PatientID": "1"}, ["StudyInstanceUID"])
            assert time.monotonic() - started < 5  # told at once, not after the timeout
        session.close()
    finally:
        ae.shutdown()


def test_a_pacs_that_goes_silent_fails_the_request_after_the_timeout(tmp_path: Path) -> None:
    known = {"niffler": ("NIFFLER", LOOPBACK, free_port())}
    with OrthancPACS(tmp_path / "orthanc", modalities=known) as pacs:
        session = QueryRetrieveSession(
            peer=AEAddress("ORTHANC", LOOPBACK, pacs.dicom_port),
            calling_aet="NIFFLER",
            mode="move",
            timeout=2,
        )
        assert session.find({"PatientID": "nobody"}, ["StudyInstanceUID"]) == []
        assert pacs.proc is not None
        os.kill(pacs.proc.pid, signal.SIGSTOP)
        try:
            started = time.monotonic()
            with pytest.raises(RetrievalFailed, match="sent nothing for 2 s"):
                session.find({"PatientID": "nobody"}, ["StudyInstanceUID"])
            assert 1.5 < time.monotonic() - started < 10
        finally:
            os.kill(pacs.proc.pid, signal.SIGCONT)
        session.drop()


def test_a_sender_that_aborts_mid_store_leaves_the_receiver_serving(
    tmp_path: Path, corpus: list[Instance]
) -> None:
    received: list[object] = []
    with StorageSCP(tmp_path / "in", host=LOOPBACK, on_stored=received.append) as scp:
        ae = AE(ae_title="HALFWAY")
        ae.add_requested_context(CTImageStorage)
        assoc = ae.associate(LOOPBACK, scp.port, ae_title="NIFFLER")
        assert assoc.is_established
        ds = pydicom.dcmread(corpus[0].path)
        # pynetdicom's send_c_store can spin forever on an aborted association: a daemon thread.
        sender = threading.Thread(target=assoc.send_c_store, args=(ds,), daemon=True)
        sender.start()
        assoc.abort()  # while or right after the store is in flight
        sender.join(10)
        # The receiver goes on: a well-behaved sender's files all arrive.
        storescu(scp.port, corpus[0].path.parent)
        deadline = time.monotonic() + 10
        while len(received) < len(corpus) and time.monotonic() < deadline:
            time.sleep(0.05)
    files = (tmp_path / "in").rglob("*.dcm")
    stored = {pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID for p in files}
    assert stored == {i.sop_uid for i in corpus}
    assert list((tmp_path / "in" / ".niffler-incoming").iterdir()) == []
    assert accel.describe().startswith("pynetdicom accelerator")


#: A P-DATA-TF header promising a body of nearly 4 GiB, and the start of one PDV item: a peer that
#: stops here has sent a PDU it will never finish.
_PDU_NEVER_FINISHED = struct.pack(">BBL", 0x04, 0, 0xFFFFFFF0) + struct.pack(">LBB", 0xFFFFFFEC, 1, 0x03)
#: The same for a PDU of an ordinary size (64 KiB).
_SMALL_PDU_NEVER_FINISHED = struct.pack(">BBL", 0x04, 0, 0x10000) + struct.pack(">LBB", 0xFFFC, 1, 0x02)


def _peak_rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM in /proc/self/status")


@pytest.mark.skipif(not accel.ENABLED, reason="pynetdicom's reader waits for ever for the rest of a PDU")
def test_a_pacs_that_stops_mid_pdu_fails_the_request_and_lets_go() -> None:
    """A real pynetdicom Q/R SCP answers a C-FIND with the start of a PDU and then nothing.

    Requested associations have no socket timeout, so the reader used to
    wait for the rest of the PDU for ever, and the abort after the DIMSE
    timeout (or Ctrl-C's) waited for the reader: niffler-cold hung. It also
    allocated the PDU's announced length (4 GiB) before a byte of it came.
    """
    port, hold = free_port(), threading.Event()
    ae = AE(ae_title="STALLER")
    ae.add_supported_context(StudyRootQueryRetrieveInformationModelFind)

    def on_find(event: evt.Event) -> object:
        event.assoc.dul.socket.socket.sendall(_PDU_NEVER_FINISHED)
        hold.wait(30)
        yield 0x0000, None  # never reached the peer

    ae.start_server((LOOPBACK, port), block=False, evt_handlers=[(evt.EVT_C_FIND, on_find)])
    outcome: list[BaseException | None] = []
    session = QueryRetrieveSession(
        peer=AEAddress("STALLER", LOOPBACK, port), calling_aet="NIFFLER", mode="move", timeout=2
    )

    def find() -> None:
        try:
            session.find({"PatientID": "1"}, ["StudyInstanceUID"])
            outcome.append(None)
        except BaseException as exc:  # the test looks at it
            outcome.append(exc)

    rss_before = _peak_rss_mb()
    try:
        started = time.monotonic()
        worker = threading.Thread(target=find, daemon=True)
        worker.start()
        worker.join(15)
        assert not worker.is_alive(), "the request hung on a PDU that never finished"
        assert 1.5 < time.monotonic() - started < 10
        [failure] = outcome
        assert isinstance(failure, RetrievalFailed) and "sent nothing for 2 s" in str(failure)
        assert _peak_rss_mb() - rss_before < 256, "the announced PDU length was allocated up front"
        started = time.monotonic()
        session.drop()
        assert time.monotonic() - started < 2
    finally:
        hold.set()
        ae.shutdown()


def test_a_sender_that_stops_mid_pdu_does_not_hold_the_receivers_stop(tmp_path: Path) -> None:
    """A sender starts a P-DATA-TF on an established association and stops: stop() still returns."""
    received: list[object] = []
    scp = StorageSCP(tmp_path / "in", host=LOOPBACK, on_stored=received.append).start()
    ae = AE(ae_title="HALFWAY")
    ae.add_requested_context(CTImageStorage)
    assoc = ae.associate(LOOPBACK, scp.port, ae_title="NIFFLER")
    try:
        assert assoc.is_established
        assoc.dul.socket.socket.sendall(_SMALL_PDU_NEVER_FINISHED)
        time.sleep(0.3)  # the receiver is now inside the PDU
        started = time.monotonic()
        scp.stop(grace=1.0)
        assert time.monotonic() - started < 4, "the receiver's stop waited for the rest of the PDU"
    finally:
        assoc.abort()
    assert received == []
    assert list((tmp_path / "in" / ".niffler-incoming").iterdir()) == []
