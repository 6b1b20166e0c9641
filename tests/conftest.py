"""Shared fixtures: generated corpora and real peers (Orthanc, DCMTK, SecantusDB) on loopback."""

from __future__ import annotations

import shutil
import socketserver
import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from niffler.testing.corpus import CorpusSpec, Instance, generate_corpus
from niffler.testing.peers import OrthancPACS, SecantusServer, free_port

REQUIRED_TOOLS = ("storescu", "dcmsend", "findscu", "movescu")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/integration" in str(item.path).replace("\\", "/"):
            item.add_marker(pytest.mark.integration)


@pytest.fixture(scope="session", autouse=True)
def _real_peers_installed() -> None:
    """Fail loudly, never skip, when the real peers are missing: CI must have them."""
    missing = [tool for tool in REQUIRED_TOOLS if shutil.which(tool) is None]
    if missing:
        pytest.fail(f"DCMTK tools missing: {missing}; run scripts/install.sh", pytrace=False)


@pytest.fixture
def corpus(tmp_path: Path) -> list[Instance]:
    """A small generated corpus: 2 patients x 2 studies x 2 series x 2 instances."""
    return generate_corpus(tmp_path / "corpus", CorpusSpec())


@pytest.fixture(scope="session")
def secantus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecantusServer]:
    """A real MongoDB-wire server for the whole session (it takes seconds to stop)."""
    server = SecantusServer(tmp_path_factory.mktemp("secantus") / "data").start()
    yield server
    server.stop()


@pytest.fixture
def mongo_db_name() -> str:
    """A database name unique to the test, so tests sharing the server never meet."""
    return f"t_{uuid.uuid4().hex[:12]}"


@pytest.fixture
def orthanc_factory(tmp_path: Path) -> Iterator[Callable[..., OrthancPACS]]:
    """Start real Orthanc PACS instances; every one is stopped after the test."""
    started: list[OrthancPACS] = []

    def start(
        modalities: dict[str, tuple[str, str, int]] | None = None, aet: str = "ORTHANC", **extra: Any
    ) -> OrthancPACS:
        workdir = tmp_path / f"orthanc{len(started)}"
        pacs = OrthancPACS(workdir, aet=aet, modalities=modalities or {}, extra=extra)
        started.append(pacs.start())
        return pacs

    yield start
    for pacs in started:
        pacs.stop()


class _SmtpSink(socketserver.StreamRequestHandler):
    """Just enough SMTP to accept a message and keep it (a real smtplib conversation on loopback)."""

    def handle(self) -> None:
        self.wfile.write(b"220 sink ESMTP\r\n")
        data: list[bytes] = []
        in_data = False
        for line in self.rfile:
            if in_data:
                if line == b".\r\n":
                    in_data = False
                    self.server.messages.append(b"".join(data).decode())  # type: ignore[attr-defined]
                    self.wfile.write(b"250 queued\r\n")
                else:
                    data.append(line)
                continue
            verb = line[:4].upper()
            if verb == b"DATA":
                in_data = True
                self.wfile.write(b"354 go on\r\n")
            elif verb == b"QUIT":
                self.wfile.write(b"221 bye\r\n")
                return
            else:
                self.wfile.write(b"250 ok\r\n")


@pytest.fixture
def smtp_sink() -> Iterator[tuple[int, list[str]]]:
    """An SMTP relay on loopback: yields its port and the messages it received."""
    server = socketserver.ThreadingTCPServer(("127.0.0.1", free_port()), _SmtpSink)
    server.messages = []  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1], server.messages  # type: ignore[attr-defined]
    server.shutdown()
    server.server_close()
